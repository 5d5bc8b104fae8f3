"""``EmoLLMForConditionalGeneration.generate``: beam search and sampling with media, the KV cache, and
the cache API of the installed transformers (tiny LLaMA-3 / LLaMA-2 backbones, random weights)."""

from __future__ import annotations

import warnings

import pytest
import torch

from emollm.modeling import EmoLLMForConditionalGeneration
from emollm.modeling.modeling_emollm import CACHE_KWARG
from emollm.testing.tiny import build_tiny_models

NEW = 5  # new tokens per answer; min == max, so no row stops early at a random EOS
FIXED = {"min_new_tokens": NEW, "max_new_tokens": NEW, "pad_token_id": 0}
PAD = 0


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_models(names=("llama3", "llama2"))


@pytest.fixture(scope="module")
def model(tiny):
    torch.manual_seed(0)
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(tiny.llama3).vocab_size
    modalities = {
        "video": {"kind": "visual", "feature_dim": 12, "num_input_tokens": 9,
                  "projector_options": {"cls_token": "separate", "regroup": 4}},
        "audio": {"kind": "audio", "feature_dim": 10, "num_input_tokens": 1},
        "au": {"kind": "au", "feature_dim": 34, "au_encoder": {"num_tokens": 2, "hidden_size": 16, "num_heads": 2}},
    }  # fmt: skip
    ids = {name: vocab + i for i, name in enumerate(modalities)}
    return EmoLLMForConditionalGeneration.from_backbone(tiny.llama3, modalities, media_token_ids=ids).eval()


def samples(model, n: int = 3) -> list[tuple[list[int], dict[str, torch.Tensor]]]:
    """``n`` prompts of different lengths, each with every modality's span and its own features."""
    cfg = model.config
    out = []
    gen = torch.Generator().manual_seed(7)
    for i in range(n):
        ids = [1, 20 + i] + [40 + k for k in range(2 * i)]  # sample i is 2 tokens longer than sample i-1
        for name in cfg.modalities:
            ids += [cfg.media_token_ids[name]] * model.num_media_tokens(name) + [22]
        ids += [30, 31]
        media = {"video": torch.randn(1, 9, 12, generator=gen), "audio": torch.randn(1, 1, 10, generator=gen) * 3,
                 "au": torch.rand(1, 6, 34, generator=gen)}  # fmt: skip
        out.append((ids, media))
    return out


def left_padded(items) -> dict:
    """A left-padded batch of ``samples`` (what EmotionCollator(padding_side="left") makes)."""
    width = max(len(ids) for ids, _ in items)
    input_ids = torch.tensor([[PAD] * (width - len(ids)) + ids for ids, _ in items])
    attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids, _ in items])
    media = {name: torch.cat([m[name] for _, m in items]) for name in items[0][1]}
    return {"input_ids": input_ids, "attention_mask": attention_mask, "media": media}


def new_tokens(model, batch, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        out = model.generate(**batch, **FIXED, **kwargs)
    return out[:, batch["input_ids"].shape[1]:]


@pytest.mark.parametrize("num_beams", [1, 2, 3])
def test_beam_search_with_media_equals_the_backbone_on_merged_embeddings(model, num_beams):
    """The reference: HF's own beam search on the bare backbone, fed the media-merged embeddings."""
    batch = left_padded(samples(model))
    ours = new_tokens(model, batch, num_beams=num_beams, do_sample=False)
    with torch.no_grad():
        embeds = model.embed(batch["input_ids"], batch["media"])
        reference = model.language_model.generate(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                                                  num_beams=num_beams, do_sample=False, **FIXED)
    assert ours.shape == (3, NEW)
    assert torch.equal(ours, reference)
    if num_beams == 1:
        assert torch.equal(ours, new_tokens(model, batch, do_sample=False))  # one beam is greedy


@pytest.mark.parametrize("kwargs", [{"num_beams": 1}, {"num_beams": 2}, {"num_beams": 3, "num_return_sequences": 2}],
                         ids=["greedy", "beams2", "beams3x2"])
def test_a_left_padded_batch_generates_what_each_sample_generates_alone(model, kwargs):
    items = samples(model)
    together = new_tokens(model, left_padded(items), do_sample=False, **kwargs)
    alone = torch.cat([new_tokens(model, left_padded([item]), do_sample=False, **kwargs) for item in items])
    assert together.shape == alone.shape == (3 * kwargs.get("num_return_sequences", 1), NEW)
    assert torch.equal(together, alone)
    # the media matter (else expanding them for beams in the wrong order would go unnoticed)
    swapped = left_padded(items)
    swapped["media"] = {k: v.flip(0) for k, v in swapped["media"].items()}
    assert not torch.equal(new_tokens(model, swapped, do_sample=False, **kwargs), together)


def test_sampling_is_reproducible_with_a_seed_and_honours_top_p(model):
    batch = left_padded(samples(model))
    greedy = new_tokens(model, batch, do_sample=False)

    def sample(seed, **kwargs):
        torch.manual_seed(seed)
        return new_tokens(model, batch, do_sample=True, **kwargs)

    first, again, other = sample(3, temperature=1.5), sample(3, temperature=1.5), sample(4, temperature=1.5)
    assert torch.equal(first, again)  # same seed, same answers
    assert not torch.equal(first, other) and not torch.equal(first, greedy)  # a random tiny LM: sampling shows
    # top_p ~ 0 keeps the most likely token only: sampling collapses to greedy, for every returned sequence,
    # and each sample's sequences follow its own media (expanded in order: sample 0, 0, 0, 1, 1, 1, ...)
    narrow = sample(5, temperature=0.7, top_p=1e-9, num_return_sequences=3)
    assert torch.equal(narrow, greedy.repeat_interleave(3, dim=0))
    assert not torch.equal(sample(5, temperature=0.7, num_return_sequences=3)[0::3], sample(6, temperature=0.7, num_return_sequences=3)[0::3])


@pytest.mark.parametrize("num_beams", [1, 2])
def test_the_kv_cache_is_used_and_media_merged_once(model, num_beams, monkeypatch):
    batch = left_padded(samples(model, 2))
    width = batch["input_ids"].shape[1]
    seen, merged = [], []
    hook = model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((tuple(kwargs["inputs_embeds"].shape[:2]), kwargs.get(CACHE_KWARG) is not None)),
        with_kwargs=True,
    )
    merge = model.merge_media
    monkeypatch.setattr(model, "merge_media", lambda ids, *a, **k: merged.append(ids.shape) or merge(ids, *a, **k))
    try:
        new_tokens(model, batch, num_beams=num_beams, do_sample=False)
    finally:
        hook.remove()
    rows = 2 * num_beams
    assert seen[0][0] == (rows, width)  # prefill: the whole prompt, once per beam
    assert [shape for shape, _ in seen[1:]] == [(rows, 1)] * (NEW - 1)  # then one new token per step
    assert all(has_cache for _, has_cache in seen[1:])
    assert merged == [torch.Size([rows, width])]  # media merged once, at prefill, expanded for the beams


def test_no_deprecation_warning_from_our_code(model):
    """generate (greedy, beams, sampling) and forward with either cache name warn about nothing of ours."""
    from transformers import DynamicCache

    batch = left_padded(samples(model, 2))
    keys = []
    hook = model.language_model.register_forward_pre_hook(lambda m, a, kwargs: keys.append(set(kwargs)), with_kwargs=True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            new_tokens(model, batch, do_sample=False)
            new_tokens(model, batch, num_beams=2, num_return_sequences=2, do_sample=False)
            torch.manual_seed(0)
            new_tokens(model, batch, do_sample=True, temperature=0.8, top_p=0.9)
            with torch.no_grad():
                for name in ("cache", "past_key_values"):  # the older name is still taken, silently
                    cache = DynamicCache(config=model.config.text_config)
                    out = model(**batch, use_cache=True, **{name: cache})
                    assert out.logits.shape[:2] == batch["input_ids"].shape
                    assert cache.get_seq_length() == batch["input_ids"].shape[1]  # the backbone filled it
    finally:
        hook.remove()
    ours = [w for w in caught if "/emollm/" in w.filename.replace("\\", "/")
            or "past_key_values" in str(w.message) or issubclass(w.category, (FutureWarning, DeprecationWarning))
            and "cache" in str(w.message).lower()]  # fmt: skip
    assert not ours, [f"{w.category.__name__} {w.filename}: {w.message}" for w in ours]
    assert keys and all(CACHE_KWARG in k for k in keys[1:])  # the backbone gets its cache by its current name
    if CACHE_KWARG != "past_key_values":
        assert not any("past_key_values" in k for k in keys)


def test_a_llama2_backbone_beam_searches_with_media_too(tiny):
    """Another backbone family (sentencepiece LLaMA-2): beams with media run and match greedy at 1 beam."""
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(tiny.llama2).vocab_size
    torch.manual_seed(0)
    mods = {"audio": {"kind": "audio", "feature_dim": 10, "num_input_tokens": 1}}
    model = EmoLLMForConditionalGeneration.from_backbone(tiny.llama2, mods, media_token_ids={"audio": vocab}).eval()
    batch = {"input_ids": torch.tensor([[1, 20, vocab, 22, 30], [PAD, 1, vocab, 22, 31]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [0, 1, 1, 1, 1]]),
             "media": {"audio": torch.randn(2, 1, 10)}}  # fmt: skip
    beams = new_tokens(model, batch, num_beams=2, do_sample=False)
    with torch.no_grad():
        embeds = model.embed(batch["input_ids"], batch["media"])
        reference = model.language_model.generate(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                                                  num_beams=2, do_sample=False, **FIXED)
    assert torch.equal(beams, reference)
