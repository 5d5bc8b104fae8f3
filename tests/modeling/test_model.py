"""EmoLLMForConditionalGeneration on the tiny LLaMA-2 / Mistral / LLaMA-3 backbones."""

from __future__ import annotations

import pytest
import torch

from emollm.errors import MediaTokenMismatchError
from emollm.modeling import EmoLLMForConditionalGeneration
from emollm.testing.tiny import build_tiny_models

BACKBONES = ("llama2", "mistral", "llama3")
B = 2


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_models(names=BACKBONES)


def modalities(projector: str = "linear") -> dict:
    return {
        "video": {"kind": "visual", "feature_dim": 12, "num_input_tokens": 9, "projector": projector,
                  "projector_options": {"cls_token": "separate", "regroup": 4}},
        "audio": {"kind": "audio", "feature_dim": 10, "num_input_tokens": 1, "projector": projector},
        "au": {"kind": "au", "feature_dim": 34, "projector": projector,
               "au_encoder": {"num_tokens": 2, "hidden_size": 16, "num_heads": 2}},
    }  # fmt: skip


def make_model(path, projector="linear", **kwargs) -> EmoLLMForConditionalGeneration:
    torch.manual_seed(0)
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(path).vocab_size
    ids = {name: vocab + i for i, name in enumerate(modalities())}  # ids past the vocab: never embedded
    return EmoLLMForConditionalGeneration.from_backbone(path, modalities(projector), media_token_ids=ids, **kwargs)


def batch(model, *, drop: set[str] = frozenset(), answer_len: int = 3):
    """input_ids with every modality's span (minus ``drop``), features, labels on the last tokens."""
    cfg = model.config
    rows = []
    for _ in range(B):
        ids = [1, 20, 21]
        for name in cfg.modalities:
            if name not in drop:
                ids += [cfg.media_token_ids[name]] * model.num_media_tokens(name) + [22]
        ids += [30, 31, 32][:answer_len]
        rows.append(ids)
    input_ids = torch.tensor(rows)
    labels = torch.full_like(input_ids, -100)
    labels[:, -answer_len:] = input_ids[:, -answer_len:]
    torch.manual_seed(1)
    media = {
        "video": torch.randn(B, 9, 12),
        "audio": torch.randn(B, 1, 10),
        "au": torch.rand(B, 6, 34),
    }
    return input_ids, labels, {k: v for k, v in media.items() if k not in drop}


@pytest.mark.parametrize("projector", ["linear", "mlp2x_gelu"])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_forward_loss_backward_through_lora_and_projectors(tiny, backbone, projector):
    model = make_model(tiny[backbone], projector, prompt_tokens=1, fusion={"depth": 1, "num_heads": 4})
    model.add_lora(r=4, alpha=8, dropout=0.0)
    groups = model.trainable_parameters_by_group()
    assert groups["backbone"] == 0 and groups["lora"] > 0 and groups["media"] > 0  # LoRA freezes the LLM
    input_ids, labels, media = batch(model)
    out = model(input_ids=input_ids, labels=labels, media=media)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, name
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert any(p.grad.abs().sum() > 0 for p in lora_b)  # LoRA actually learns (B starts at zero)
    assert model.media.projector.projectors["video"].output_tokens(9) == 1 + 2  # CLS + 8 patches regrouped by 4


def test_media_reaches_the_logits_only_through_its_tokens(tiny):
    model = make_model(tiny.llama2).eval()
    input_ids, _, media = batch(model)
    with torch.no_grad():
        base = model(input_ids=input_ids, media=media).logits
        changed = dict(media, audio=media["audio"] + 1.0)
        moved = model(input_ids=input_ids, media=changed).logits
    first_audio = (input_ids[0] == model.config.media_token_ids["audio"]).nonzero()[0, 0]
    assert torch.allclose(base[:, :first_audio], moved[:, :first_audio])  # causal: before the span, no change
    assert not torch.allclose(base[:, first_audio:], moved[:, first_audio:])


def test_count_mismatch_names_the_modality_and_both_counts(tiny):
    model = make_model(tiny.llama2)
    input_ids, _, media = batch(model)
    audio_id = model.config.media_token_ids["audio"]
    video_pos = (input_ids[0] == model.config.media_token_ids["video"]).nonzero()[0, 0]
    input_ids[0, video_pos] = audio_id  # one video token too few, one audio token too many
    with pytest.raises(MediaTokenMismatchError) as info:
        model(input_ids=input_ids, media=media)
    message = str(info.value)
    assert "modality 'video'" in message and "2 media tokens" in message and "3 rows" in message


def test_tokens_without_features_is_an_error(tiny):
    model = make_model(tiny.llama2)
    input_ids, _, media = batch(model)
    del media["audio"]
    with pytest.raises(MediaTokenMismatchError, match="no 'audio' features"):
        model(input_ids=input_ids, media=media)


def test_missing_modality_zero_policy_and_drop_policy(tiny):
    model = make_model(tiny.llama2).eval()
    input_ids, _, media = batch(model)
    present = {"audio": torch.tensor([True, False])}
    with torch.no_grad():
        a = model(input_ids=input_ids, media=media, media_present=present).logits
        noisy = dict(media, audio=torch.randn(B, 1, 10) * 100)
        b = model(input_ids=input_ids, media=noisy, media_present=present).logits
    assert torch.allclose(a[1], b[1])  # row 1 lacks audio: its (zeroed) span ignores whatever is passed
    assert not torch.allclose(a[0], b[0])

    # drop: the processor left no audio tokens; the batch has no audio at all and still trains
    input_ids, labels, media = batch(model, drop={"audio"})
    model.train()
    out = model(input_ids=input_ids, labels=labels, media=media)
    out.loss.backward()
    audio_proj = model.media.projector.projectors["audio"]
    assert all(p.grad is not None for p in audio_proj.parameters())  # ZeRO-3 rule: it still ran


def test_generate_uses_the_kv_cache_and_merges_media_once(tiny):
    model = make_model(tiny.llama3).eval()
    input_ids, _, media = batch(model, answer_len=0)
    calls = []
    original = model.merge_media
    model.merge_media = lambda *a, **k: calls.append(1) or original(*a, **k)
    with torch.no_grad():
        cached = model.generate(input_ids=input_ids, media=media, max_new_tokens=6, do_sample=False, use_cache=True)
        n_cached = len(calls)
        uncached = model.generate(input_ids=input_ids, media=media, max_new_tokens=6, do_sample=False, use_cache=False)
    assert n_cached == 1  # media merged at prefill only
    assert torch.equal(cached, uncached)
    assert cached.shape[1] == input_ids.shape[1] + 6


@pytest.mark.parametrize("lora", [False, True])
def test_save_and_load_round_trip_identical_logits(tiny, tmp_path, lora):
    model = make_model(tiny.mistral, prompt_tokens=2, fusion={"depth": 1, "num_heads": 2})
    if lora:
        model.add_lora(r=4, alpha=8)
        with torch.no_grad():  # make the adapter non-trivial, as after training
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_()
    model.eval()
    input_ids, _, media = batch(model)
    with torch.no_grad():
        before = model(input_ids=input_ids, media=media).logits
    model.save_pretrained(tmp_path / "run")
    if lora:
        assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()
        assert not (tmp_path / "run" / "model.safetensors").exists()  # the backbone is not copied
    loaded = EmoLLMForConditionalGeneration.from_pretrained(tmp_path / "run").eval()
    # in the same order too (config.json sorts keys): prompts list the modalities, fusion concatenates them, in it
    assert list(loaded.config.modalities.items()) == list(model.config.modalities.items()) != sorted(
        model.config.modalities.items())
    with torch.no_grad():
        after = loaded(input_ids=input_ids, media=media).logits
    assert torch.equal(before, after)


def test_a_text_only_training_batch_still_runs_every_media_module(tiny):
    model = make_model(tiny.llama2, prompt_tokens=1, fusion={"depth": 1, "num_heads": 4}).train()
    input_ids = torch.tensor([[1, 20, 21, 30, 31]])
    out = model(input_ids=input_ids, labels=input_ids)  # no media, no media tokens (ZeRO-3 rank with text only)
    out.loss.backward()
    assert all(p.grad is not None for p in model.media.parameters())
