"""The encoder registry on the tiny offline encoders, and the learned AU encoder."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: nothing here may reach the hub

import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from emollm.dataset.aus import MERR_AUS
from emollm.errors import ConfigError, EmollmError
from emollm.modeling.au_encoder import AUEncoder
from emollm.modeling.encoders import ENCODERS, FrozenEncoder, build_encoder, feature_dim_of, uniform_indices
from emollm.testing.tiny import build_tiny_models

HIDDEN = {
    "hubert": 32,
    "wav2vec2": 48,
    "whisper_encoder": 40,
    "clip_vision": 56,
    "vit": 36,
    "vit_mae": 52,
    "videomae": 44,
}
KIND = {"hubert": "audio", "wav2vec2": "audio", "whisper_encoder": "audio", "clip_vision": "visual", "vit": "visual",
        "vit_mae": "face", "videomae": "video"}  # fmt: skip
SR = 16000


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_models(names=list(HIDDEN))


_LOADED: dict[tuple, FrozenEncoder] = {}


def load(tiny, name: str, **options) -> FrozenEncoder:
    """One load per (model, options) for the whole module: loading is most of the cost."""
    key = (name, tuple(sorted(options.items())))
    if key not in _LOADED:
        _LOADED[key] = build_encoder(KIND[name], tiny[name], **options)
    return _LOADED[key]


def audio(seconds: float, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)


def frames(n: int, h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def test_registry_kinds():
    assert {"audio", "visual", "face", "video", "au"} <= set(ENCODERS)


# ------------------------------------------------------------------------------------------ audio
@pytest.mark.parametrize("name", ["hubert", "wav2vec2", "whisper_encoder"])
def test_audio_shapes(tiny, name):
    enc = load(tiny, name, pooling="none")
    x = audio(1.5)
    feats = enc.extract(x)
    assert feats.dtype == torch.float32 and feats.device.type == "cpu"
    assert feats.shape == (enc.num_tokens(len(x)), HIDDEN[name])
    assert 70 <= feats.shape[0] <= 76  # ~49-50 frames per second
    assert enc.feature_dim == HIDDEN[name] == feature_dim_of("audio", tiny[name])
    pooled = load(tiny, name).extract(x)  # default pooling: mean
    assert pooled.shape == (1, HIDDEN[name])
    torch.testing.assert_close(pooled, feats.mean(0, keepdim=True))


def test_whisper_keeps_only_frames_of_the_real_audio(tiny):
    enc = load(tiny, "whisper_encoder", pooling="none")
    assert enc.extract(audio(1.0)).shape == (50, 40)
    assert enc.extract(audio(0.5)).shape == (25, 40)
    long = enc.extract(audio(31.0))  # two 30 s windows: 1500 + 50 frames
    assert long.shape == (1550, 40)


def test_audio_batch_equals_one_by_one(tiny):
    enc = load(tiny, "hubert", pooling="none")
    clips = [audio(1.0, 1), audio(0.7, 2), audio(1.0, 3)]
    batched = enc.extract_batch(clips, batch_size=2)
    for clip, feats in zip(clips, batched, strict=True):
        torch.testing.assert_close(feats, enc.extract(clip), atol=1e-5, rtol=1e-5)


def test_bad_audio_input(tiny):
    enc = load(tiny, "hubert")
    with pytest.raises(EmollmError, match="too short"):
        enc.extract(np.zeros(100, np.float32))
    with pytest.raises(EmollmError, match="mono"):
        enc.extract(np.zeros((2, 16000), np.float32))


# ------------------------------------------------------------------------------------------ visual
@pytest.mark.parametrize("name, patches", [("clip_vision", 16), ("vit", 9)])
def test_visual_shapes(tiny, name, patches):
    d = HIDDEN[name]
    x = frames(3)
    expected = {
        ("patch", "mean"): (patches, d), ("patch", "none"): (3 * patches, d),
        ("cls", "mean"): (1, d), ("cls", "none"): (3, d),
        ("cls+patch", "mean"): (1 + patches, d), ("mean", "none"): (3, d),
    }  # fmt: skip
    for (tokens, pooling), shape in expected.items():
        enc = load(tiny, name, tokens=tokens, frame_pooling=pooling)
        assert enc.extract(x).shape == shape == (enc.num_tokens(3), d), (tokens, pooling)
    assert load(tiny, name).extract(x).shape == (patches, d)  # default: patch tokens, mean over frames
    assert feature_dim_of("visual", tiny[name]) == d


def test_visual_batch_equals_one_by_one(tiny):
    enc = load(tiny, "clip_vision", tokens="cls", frame_pooling="none")
    clips = [frames(2, seed=1), frames(1, seed=2), frames(3, seed=3)]
    for clip, feats in zip(clips, enc.extract_batch(clips, batch_size=2), strict=True):
        torch.testing.assert_close(feats, enc.extract(clip), atol=1e-5, rtol=1e-5)


def test_full_clip_checkpoint_loads_its_vision_tower(tiny, tmp_path):
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig

    vision = CLIPVisionConfig.from_pretrained(tiny.clip_vision).to_dict()
    text = {"hidden_size": 24, "intermediate_size": 48, "num_hidden_layers": 1, "num_attention_heads": 4,
            "vocab_size": 99, "max_position_embeddings": 16, "projection_dim": 32}  # fmt: skip
    torch.manual_seed(0)
    full = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=32))
    full.save_pretrained(tmp_path)
    shutil.copy(tiny.clip_vision / "preprocessor_config.json", tmp_path)

    enc = build_encoder("visual", tmp_path, tokens="cls+patch")
    assert type(enc.model).__name__ == "CLIPVisionModel"
    assert enc.feature_dim == 56 == feature_dim_of("visual", tmp_path)
    x = frames(2)
    pixel = enc.processor(images=list(x), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        direct = full.vision_model(pixel_values=pixel).last_hidden_state.mean(0)
    torch.testing.assert_close(enc.extract(x), direct, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------ face, video
def test_face_all_patches_and_deterministic(tiny):
    enc = load(tiny, "vit_mae", crop_pooling="none")
    assert enc.model.config.mask_ratio == 0.0
    crops = frames(2, 224, 224)
    tokens, _, prefix = enc._image_tokens(crops, batch_size=8)
    assert tokens.shape == (2, 1 + 16, 52) and prefix == 1  # every patch comes back, plus CLS
    first, second = enc.extract(crops), enc.extract(crops)
    assert first.shape == (2, 52)
    assert torch.equal(first, second)
    assert load(tiny, "vit_mae").extract(crops).shape == (1, 52)
    torch.testing.assert_close(load(tiny, "vit_mae").extract(crops), first.mean(0, keepdim=True))
    assert load(tiny, "vit_mae", tokens="cls").extract(crops).shape == (1, 52)
    assert feature_dim_of("face", tiny.vit_mae) == 52


def test_video_resamples_to_checkpoint_frames(tiny):
    enc = load(tiny, "videomae")
    assert enc.num_frames == 16
    for n in (1, 5, 20):
        assert enc.extract(frames(n, 224, 224, seed=n)).shape == (1, 44)
    all_tokens = load(tiny, "videomae", tokens="all")
    assert all_tokens.extract(frames(5, 224, 224)).shape == (32, 44) == (all_tokens.num_tokens(), 44)
    assert uniform_indices(4, 8) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert uniform_indices(32, 4) == [4, 12, 20, 28]
    assert feature_dim_of("video", tiny.videomae) == 44


# ------------------------------------------------------------------------------------------ frozen, device
def test_frozen_eval_no_grad(tiny):
    enc = load(tiny, "vit")
    assert not enc.model.training
    assert not any(p.requires_grad for p in enc.model.parameters())
    with torch.enable_grad():
        out = enc.extract(frames(1))
    assert not out.requires_grad


def test_to_dtype_keeps_float32_output_and_changes_fingerprint(tiny):
    enc = build_encoder("visual", tiny.vit, tokens="cls")
    before, fp32 = enc.extract(frames(1)), enc.fingerprint()
    enc.to("cpu", torch.float64)
    after = enc.extract(frames(1))
    assert after.dtype == torch.float32
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)
    assert enc.fingerprint() != fp32


# ------------------------------------------------------------------------------------------ fingerprint
def test_fingerprint_stable_and_sensitive(tiny, tmp_path):
    from safetensors.torch import load_file, save_file

    a = build_encoder("audio", tiny.hubert).fingerprint()
    assert a == build_encoder("audio", tiny.hubert).fingerprint() == load(tiny, "hubert").fingerprint()
    assert len(a) == 64
    assert load(tiny, "hubert", pooling="none").fingerprint() != a  # an option that changes features
    assert build_encoder("audio", tiny.hubert, revision=None).fingerprint() == a  # one that does not

    copy = tmp_path / "hubert"
    shutil.copytree(tiny.hubert, copy)
    assert build_encoder("audio", copy).fingerprint() == a  # same files elsewhere: same features
    weights = load_file(copy / "model.safetensors")
    name = sorted(weights)[0]
    weights[name] = weights[name] + 1e-3
    save_file(weights, copy / "model.safetensors", metadata={"format": "pt"})
    assert build_encoder("audio", copy).fingerprint() != a


def test_fingerprint_same_in_another_process(tiny):
    code = (
        "from emollm.modeling.encoders import build_encoder; import sys; "
        "print(build_encoder('face', sys.argv[1]).fingerprint())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code, str(tiny.vit_mae)], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == load(tiny, "vit_mae").fingerprint()


# ------------------------------------------------------------------------------------------ errors
def test_missing_or_unloadable_checkpoint(tmp_path):
    missing = str(tmp_path / "no-such-encoder")
    with pytest.raises(EmollmError, match="no-such-encoder"):
        build_encoder("audio", missing)
    with pytest.raises(EmollmError, match="no-such-encoder"):
        feature_dim_of("visual", missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EmollmError, match=r"empty.*config\.json"):
        build_encoder("face", empty)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(EmollmError, match="broken"):
        build_encoder("visual", broken)
    with pytest.raises(ConfigError, match="needs a checkpoint"):
        build_encoder("video")


def test_hub_id_goes_to_transformers_and_fails_cleanly_offline(monkeypatch):
    import huggingface_hub.constants

    # the hub's offline mode: the same error at once, without five connection retries (23 s) on a machine
    # whose network is down
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(EmollmError, match="emollm-test/no-such-model") as info:
        build_encoder("audio", "emollm-test/no-such-model")
    assert not isinstance(info.value, ConfigError)  # not judged a missing path: transformers was asked
    assert info.value.__cause__ is not None and not isinstance(info.value.__cause__, EmollmError)


def test_unknown_kind_and_options_suggest_the_closest():
    with pytest.raises(ConfigError, match=r"'vidoe'.*'video'"):
        build_encoder("vidoe", "x")
    with pytest.raises(ConfigError, match=r"'pooing'.*'pooling'"):
        build_encoder("audio", "x", pooing="mean")
    with pytest.raises(ConfigError, match=r"tokens.*'clss'.*'cls'"):
        build_encoder("visual", "x", tokens="clss")
    with pytest.raises(ConfigError, match="layer"):
        build_encoder("visual", "x", layer="last")
    with pytest.raises(ConfigError, match=r"'hiden_size'.*'hidden_size'"):
        feature_dim_of("au", hiden_size=8)


def test_layer_option(tiny):
    enc = load(tiny, "vit", tokens="cls", layer=-2)
    assert enc.extract(frames(1)).shape == (1, 36)
    assert not torch.equal(enc.extract(frames(1)), load(tiny, "vit", tokens="cls").extract(frames(1)))
    with pytest.raises(ConfigError, match="layer"):
        load(tiny, "vit", tokens="cls", layer=10).extract(frames(1))


# ------------------------------------------------------------------------------------------ AU
def au_batch(batch: int, frames_: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    intensity = torch.rand(batch, frames_, 17, generator=g) * 5
    presence = (torch.rand(batch, frames_, 17, generator=g) > 0.5).float()
    return torch.cat([intensity, presence], dim=-1)


def test_merr_aus():
    assert MERR_AUS == ("AU01", "AU02", "AU04", "AU05", "AU06", "AU07", "AU09", "AU10", "AU12",
                        "AU14", "AU15", "AU17", "AU20", "AU23", "AU25", "AU26", "AU45")  # fmt: skip


def test_au_encoder_shapes_and_grads():
    torch.manual_seed(0)
    enc = AUEncoder(num_tokens=3, hidden_size=32, depth=2, num_heads=4, max_frames=8)
    x = au_batch(2, 6).requires_grad_(True)
    out = enc(x, torch.ones(2, 6, dtype=torch.bool))
    assert out.shape == (2, 3, 32)
    out.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in enc.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert enc.queries.grad.abs().sum() > 0 and enc.pos_embed.grad.abs().sum() > 0
    # longer than max_frames: the position table is interpolated, every frame is used
    assert enc(au_batch(1, 20)).shape == (1, 3, 32)


def test_au_masked_frames_do_not_matter():
    torch.manual_seed(0)
    enc = AUEncoder(num_tokens=2, hidden_size=32, depth=2, max_frames=16).eval()
    x = au_batch(2, 10)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, 6:] = False
    mask[1, ::3] = False
    garbage = x.clone()
    garbage[~mask] = torch.tensor(float("nan"))
    garbage[0, 7] = 1e6
    ref = enc(x, mask)
    torch.testing.assert_close(enc(garbage, mask), ref)
    # appending masked padding frames does not change anything either
    padded = torch.cat([x, au_batch(2, 4, seed=1)], dim=1)
    torch.testing.assert_close(enc(padded, torch.cat([mask, torch.zeros(2, 4, dtype=torch.bool)], 1)), ref)
    # ... but a valid frame does
    assert not torch.allclose(enc(x, torch.ones(2, 10, dtype=torch.bool)), ref)


def test_au_all_masked_row_is_finite():
    enc = AUEncoder(num_tokens=2, hidden_size=16, num_heads=4)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[1, :3] = True
    out = enc(au_batch(2, 5), mask)
    assert torch.isfinite(out).all()
    assert torch.equal(out[0], torch.zeros(2, 16))
    out.sum().backward()
    grads = {name: p.grad for name, p in enc.named_parameters()}
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads.values()), \
        [n for n, g in grads.items() if g is None or not torch.isfinite(g).all()]


def test_au_registry_entry():
    enc = build_encoder("au", num_tokens=4, hidden_size=24)
    assert enc.learned and enc.kind == "au" and enc.name_or_path is None
    assert enc.feature_dim == 34 == feature_dim_of("au") and enc.num_tokens() == 4
    module = enc.build_module()
    assert isinstance(module, AUEncoder)
    assert module(au_batch(1, 7)).shape == (1, 4, 24)
    assert enc.build_module(hidden_size=16)(au_batch(1, 3)).shape == (1, 4, 16)
    # the cache stores raw AUs: the module's sizes do not change the fingerprint, the AU set does
    assert enc.fingerprint() == build_encoder("au").fingerprint() != build_encoder("au", num_aus=5).fingerprint()
    with pytest.raises(ConfigError, match="learned"):
        build_encoder("au", "/some/checkpoint")
    with pytest.raises(ConfigError, match="divisible"):
        build_encoder("au", hidden_size=30, num_heads=4).build_module()


def test_visual_batch_of_clips_with_different_frame_sizes(tiny):
    encoder = build_encoder("visual", tiny.clip_vision)
    rng = np.random.default_rng(5)
    small = rng.integers(0, 255, (2, 48, 64, 3), dtype=np.uint8)
    large = rng.integers(0, 255, (3, 90, 120, 3), dtype=np.uint8)
    batched = encoder.extract_batch([small, large])
    assert [tuple(f.shape) for f in batched] == [tuple(encoder.extract(small).shape), tuple(encoder.extract(large).shape)]
    assert torch.allclose(batched[1], encoder.extract(large), atol=1e-5)


# ------------------------------------------------------------------------------------------ text
SUBTITLES = ["the woman looks happy", "he is angry today, really angry!", "I am calm."]


@pytest.fixture(scope="module")
def tiny_text():
    return build_tiny_models(names=["bert"]).bert


def test_text_encoder_pools_one_vector_per_subtitle(tiny_text):
    from transformers import AutoModel, AutoTokenizer

    enc = build_encoder("text", tiny_text)
    assert enc.kind == "text" and enc.feature_dim == 24 == feature_dim_of("text", tiny_text) and enc.num_tokens() == 1
    feats = enc.extract_batch(SUBTITLES)
    assert [tuple(f.shape) for f in feats] == [(1, 24)] * 3 and all(f.dtype == torch.float32 for f in feats)
    # cls: the first token's last hidden state, as the checkpoint computes it by itself
    tok, model = AutoTokenizer.from_pretrained(tiny_text), AutoModel.from_pretrained(tiny_text).eval()
    with torch.no_grad():
        hidden = model(**tok(SUBTITLES[1], return_tensors="pt")).last_hidden_state[0]
    torch.testing.assert_close(feats[1][0], hidden[0], atol=1e-5, rtol=1e-5)
    mean = build_encoder("text", tiny_text, tokens="mean").extract(SUBTITLES[1])
    torch.testing.assert_close(mean[0], hidden.mean(dim=0), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tokens", ["cls", "mean"])
def test_text_batch_equals_one_by_one(tiny_text, tokens):
    enc = build_encoder("text", tiny_text, tokens=tokens)
    batched = enc.extract_batch(SUBTITLES, batch_size=3)  # padded to the longest: padding must not matter
    for text, got in zip(SUBTITLES, batched, strict=True):
        torch.testing.assert_close(got, enc.extract(text), atol=1e-5, rtol=1e-5)


def test_text_truncates_long_subtitles_and_rejects_bad_input(tiny_text):
    enc = build_encoder("text", tiny_text)
    assert enc.max_length == 128  # the tokenizer's model_max_length = the model's positions
    assert build_encoder("text", tiny_text, max_length=8).max_length == 8
    assert enc.extract("happy " * 500).shape == (1, 24)  # 500 words > 128 positions: truncated, no error
    short = build_encoder("text", tiny_text, max_length=4)
    torch.testing.assert_close(short.extract("the woman looks happy and he is sad"), short.extract("the woman looks"))
    with pytest.raises(EmollmError, match="empty"):
        enc.extract("   ")
    with pytest.raises(EmollmError, match="string"):
        enc.extract(np.zeros(3))
    with pytest.raises(ConfigError, match="tokens"):
        build_encoder("text", tiny_text, tokens="patch")


def test_text_fingerprint_covers_the_tokenizer(tiny_text, tmp_path):
    from emollm.features.cache import weights_key

    fp = build_encoder("text", tiny_text).fingerprint()
    assert fp != build_encoder("text", tiny_text, tokens="mean").fingerprint()
    copy = tmp_path / "bert"
    shutil.copytree(tiny_text, copy)
    assert build_encoder("text", copy).fingerprint() == fp
    key = weights_key("text", str(copy), {})
    config = (copy / "tokenizer_config.json").read_text()
    (copy / "tokenizer_config.json").write_text(config.replace('"do_lower_case": true', '"do_lower_case": false'))
    assert build_encoder("text", copy).fingerprint() != fp  # same weights, another tokenizer: new features
    assert weights_key("text", str(copy), {}) != key  # and the cache binds another folder without loading it
