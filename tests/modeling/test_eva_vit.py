"""EVA-CLIP ViT-g as a transformers model: a tiny LAVIS-format checkpoint, converted and loaded by the
``visual`` encoder, against a plain-torch reference of LAVIS's math and Emotion-LLaMA's PIL preprocessing."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: nothing here may reach the hub

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

from emollm.errors import EmollmError
from emollm.modeling.encoders import build_encoder
from emollm.modeling.eva_vit import EvaViTImageProcessor, EvaViTModel, convert_eva_vit
from emollm.testing.tiny.encoders import EVA_TINY
from emollm.testing.tiny.encoders import eva_vit_state_dict as lavis_state_dict

D, DEPTH, HEADS, PATCH, MLP, SRC_GRID = (EVA_TINY[k] for k in ("hidden", "depth", "heads", "patch", "mlp", "grid"))
SIZE, GRID = 56, 4
BLOCK_KEYS = sorted(k.split(".", 2)[2] for k in lavis_state_dict() if k.startswith("blocks.0."))
MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


def pil_pixels(frame: np.ndarray) -> torch.Tensor:
    """Emotion-LLaMA's transform: Resize((S, S), BICUBIC) on a PIL image, ToTensor, Normalize(CLIP)."""
    resized = np.asarray(Image.fromarray(frame).resize((SIZE, SIZE), Image.BICUBIC), dtype=np.float32) / 255.0
    return torch.from_numpy(((resized - MEAN) / STD).transpose(2, 0, 1).copy())[None]


def reference_forward(sd, pixels, ln_weight=None, ln_bias=None):
    """LAVIS create_eva_vit_g + interpolate_pos_embed + MiniGPT-v2 ln_vision, in plain torch ops.
    Returns (after ln_vision, [embeddings, block 1, ..., block N])."""
    pos = sd["pos_embed"]
    grid_src = int(round((pos.shape[1] - 1) ** 0.5))
    grid = pixels.shape[-1] // PATCH
    patch_pos = pos[:, 1:].reshape(1, grid_src, grid_src, D).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(patch_pos, size=(grid, grid), mode="bicubic", align_corners=False)
    pos = torch.cat([pos[:, :1], patch_pos.permute(0, 2, 3, 1).reshape(1, grid * grid, D)], dim=1)

    x = F.conv2d(pixels, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=PATCH)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd["cls_token"].expand(x.shape[0], -1, -1), x], dim=1) + pos
    b, n, _ = x.shape
    hidden = [x]
    for i in range(DEPTH):
        w = {k: sd[f"blocks.{i}.{k}"] for k in BLOCK_KEYS}
        h = F.layer_norm(x, (D,), w["norm1.weight"], w["norm1.bias"], eps=1e-6)
        qkv_bias = torch.cat([w["attn.q_bias"], torch.zeros(D), w["attn.v_bias"]])
        q, k, v = F.linear(h, w["attn.qkv.weight"], qkv_bias).reshape(b, n, 3, HEADS, -1).permute(2, 0, 3, 1, 4)
        attn = ((q * (D // HEADS) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        h = (attn @ v).transpose(1, 2).reshape(b, n, D)
        x = x + F.linear(h, w["attn.proj.weight"], w["attn.proj.bias"])
        h = F.layer_norm(x, (D,), w["norm2.weight"], w["norm2.bias"], eps=1e-6)
        x = x + F.linear(F.gelu(F.linear(h, w["mlp.fc1.weight"], w["mlp.fc1.bias"])), w["mlp.fc2.weight"], w["mlp.fc2.bias"])
        hidden.append(x)
    return F.layer_norm(x, (D,), ln_weight, ln_bias, eps=1e-5), hidden


def frame(seed: int = 0, h: int = 37, w: int = 45) -> np.ndarray:
    """One uint8 (H, W, 3) frame, not square: the resize must squash it, never crop."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(original state dict, converted dir, report) of the plain torch.save'd checkpoint."""
    root = tmp_path_factory.mktemp("eva")
    sd = lavis_state_dict()
    torch.save(sd, root / "eva_vit_tiny.pth")
    report = convert_eva_vit(root / "eva_vit_tiny.pth", root / "hf", image_size=SIZE, num_heads=HEADS)
    return sd, root / "hf", report


_ENCODERS: dict = {}


def encoder(path: Path, **options):
    key = (str(path), tuple(sorted(options.items())))
    if key not in _ENCODERS:
        _ENCODERS[key] = build_encoder("visual", path, **options)
    return _ENCODERS[key]


def nothing_written(parent: Path, out: Path) -> bool:
    return not out.exists() and not any(p.name.startswith(f".{out.name}.") for p in parent.iterdir())


# ------------------------------------------------------------------------------------------ conversion
def test_report_describes_the_conversion(converted):
    _, out, report = converted
    assert report["tokens"] == 1 + GRID * GRID == 17
    assert (report["hidden_size"], report["num_layers"], report["num_heads"], report["patch_size"]) == (D, DEPTH, HEADS, PATCH)
    assert report["intermediate_size"] == MLP
    assert report["pos_embed_grid"] == {"from": SRC_GRID, "to": GRID}
    assert report["keys_copied"] == 4 + DEPTH * len(BLOCK_KEYS) and report["keys_ignored"] == 0
    assert report["ln_vision"].startswith("default") and report["saved_dtype"] == "float32"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]


def test_processor_is_emotion_llamas_pil_resize_and_clip_normalisation(converted):
    from transformers import AutoImageProcessor

    _, out, _ = converted
    processor = AutoImageProcessor.from_pretrained(out)
    assert isinstance(processor, EvaViTImageProcessor)  # the PIL one, whatever backends are installed
    img = frame(1)
    got = processor(images=[img], return_tensors="pt")["pixel_values"]
    assert got.shape == (1, 3, SIZE, SIZE)  # squashed to S x S: no aspect keep, no centre crop
    assert (got - pil_pixels(img)).abs().max().item() < 1e-5


# ------------------------------------------------------------------------------------------ the visual encoder
def test_visual_encoder_cls_plus_patch_matches_lavis_reference(converted):
    sd, out, _ = converted
    enc = encoder(out, tokens="cls+patch", frames="peak")
    img = frame(2)
    feats = enc.extract(img)
    assert feats.shape == (17, D) and enc.num_tokens() == 17 and enc.feature_dim == D
    expected, _ = reference_forward(sd, pil_pixels(img))
    assert torch.allclose(feats, expected[0], atol=1e-5), (feats - expected[0]).abs().max()


def test_visual_encoder_patch_tokens(converted):
    sd, out, _ = converted
    img = frame(3)
    feats = encoder(out, tokens="patch", frames="peak").extract(img)
    assert feats.shape == (GRID * GRID, D)
    expected, _ = reference_forward(sd, pil_pixels(img))
    assert torch.allclose(feats, expected[0, 1:], atol=1e-5)


def test_layer_minus_2_is_the_raw_output_of_block_1(converted):
    sd, out, _ = converted
    img = frame(4)
    feats = encoder(out, tokens="cls+patch", frames="peak", layer=-2).extract(img)
    after_ln, hidden = reference_forward(sd, pil_pixels(img))
    assert torch.allclose(feats, hidden[1][0], atol=1e-5)  # block 1 of 2, before ln_vision
    assert not torch.allclose(feats, after_ln[0], atol=1e-3)


def test_fingerprint_is_stable_and_follows_the_weights(converted, tmp_path):
    _, out, _ = converted
    assert build_encoder("visual", out, tokens="cls+patch").fingerprint() == build_encoder(
        "visual", out, tokens="cls+patch").fingerprint()  # fmt: skip
    changed = tmp_path / "changed"
    shutil.copytree(out, changed)
    weights = load_file(changed / "model.safetensors")
    weights["blocks.1.attn.v_bias"] = weights["blocks.1.attn.v_bias"] + 1e-3
    save_file(weights, changed / "model.safetensors", metadata={"format": "pt"})
    assert build_encoder("visual", changed, tokens="cls+patch").fingerprint() != build_encoder(
        "visual", out, tokens="cls+patch").fingerprint()  # fmt: skip


def test_save_load_round_trip_through_automodel(converted, tmp_path):
    from transformers import AutoModel

    _, out, _ = converted
    first = AutoModel.from_pretrained(out)  # no trust_remote_code: registered by importing emollm.modeling
    assert isinstance(first, EvaViTModel)
    first.save_pretrained(tmp_path / "again")
    second = AutoModel.from_pretrained(tmp_path / "again")
    pixels = pil_pixels(frame(5))
    with torch.inference_mode():
        a, b = first(pixels, output_hidden_states=True), second(pixels, output_hidden_states=True)
    assert torch.equal(a.last_hidden_state, b.last_hidden_state) and torch.equal(a.pooler_output, b.pooler_output)
    assert len(a.hidden_states) == DEPTH + 1
    assert all(torch.equal(x, y) for x, y in zip(a.hidden_states, b.hidden_states, strict=True))


# ------------------------------------------------------------------------------------------ input layouts
def test_full_minigpt_checkpoint_gives_the_same_weights(converted, tmp_path):
    sd, out, _ = converted
    full = {"model": {**{"visual_encoder." + k: v for k, v in sd.items()}, "llama_proj.weight": torch.zeros(4, D)},
            "optimizer": {}, "epoch": 3}  # fmt: skip
    torch.save(full, tmp_path / "minigpt.pth")
    report = convert_eva_vit(tmp_path / "minigpt.pth", tmp_path / "hf", image_size=SIZE, num_heads=HEADS)
    assert report["keys_ignored"] == 1
    got, want = load_file(tmp_path / "hf" / "model.safetensors"), load_file(out / "model.safetensors")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_trained_ln_vision_is_copied_and_used(converted, tmp_path):
    sd, _, _ = converted
    weight, bias = 1 + 0.3 * torch.randn(D), 0.3 * torch.randn(D)
    torch.save({"state_dict": {**sd, "ln_vision.weight": weight, "ln_vision.bias": bias}}, tmp_path / "ln.pth")
    report = convert_eva_vit(tmp_path / "ln.pth", tmp_path / "hf", image_size=SIZE, num_heads=HEADS)
    assert report["ln_vision"] == "copied"
    img = frame(6)
    feats = build_encoder("visual", tmp_path / "hf", tokens="cls+patch").extract(img)
    expected, _ = reference_forward(sd, pil_pixels(img), weight, bias)
    assert torch.allclose(feats, expected[0], atol=1e-5)


def test_safetensors_source(converted, tmp_path):
    sd, out, _ = converted
    save_file({k: v.half() for k, v in sd.items()}, tmp_path / "eva.safetensors")
    report = convert_eva_vit(tmp_path / "eva.safetensors", tmp_path / "hf", image_size=SIZE, num_heads=HEADS)
    assert report["source_dtype"] == "float16"
    weights = load_file(tmp_path / "hf" / "model.safetensors")
    assert weights["cls_token"].dtype == torch.float32  # fp16 -> fp32 is exact
    assert torch.equal(weights["blocks.0.attn.qkv.weight"], sd["blocks.0.attn.qkv.weight"].half().float())


# ------------------------------------------------------------------------------------------ refusals
class Opaque:
    """Any custom class: its pickle names code (the class) that unpickling would import."""

    def __init__(self):
        self.note = "not a tensor"


class RunsCode:
    """A pickle that calls os.makedirs when loaded: the marker folder appears if it ever runs."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.makedirs, (str(self.marker),)


@pytest.mark.parametrize("payload", ["custom_class", "reduce"])
def test_a_pickle_that_needs_code_is_refused_and_nothing_is_written(payload, tmp_path):
    marker = tmp_path / "code_ran"
    extra = Opaque() if payload == "custom_class" else RunsCode(marker)
    torch.save({"model": lavis_state_dict(), "extra": extra}, tmp_path / "evil.pth")
    with pytest.raises(EmollmError, match="would execute code"):
        convert_eva_vit(tmp_path / "evil.pth", tmp_path / "hf", image_size=SIZE, num_heads=HEADS)
    assert not marker.exists()
    assert nothing_written(tmp_path, tmp_path / "hf")


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda sd: sd.pop("blocks.1.attn.v_bias"), "missing keys: blocks.1.attn.v_bias"),
        (lambda sd: sd.pop("pos_embed"), "missing keys: pos_embed"),
        (lambda sd: sd.update({"blocks.0.attn.k_bias": torch.zeros(D)}), "unknown keys: blocks.0.attn.k_bias"),
        (lambda sd: sd.update({"norm.weight": torch.ones(D)}), "unknown keys: norm.weight"),
        (lambda sd: sd.update({"blocks.1.mlp.fc1.bias": torch.zeros(MLP + 1)}), "blocks.1.mlp.fc1.bias (49,)"),
    ],
    ids=["missing_block_key", "missing_top_key", "unknown_block_key", "unknown_top_key", "wrong_shape"],
)
def test_a_bad_state_dict_is_an_error_naming_the_key(edit, named, tmp_path):
    sd = lavis_state_dict()
    edit(sd)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(EmollmError, match=named.replace("(", r"\(").replace(")", r"\)")):
        convert_eva_vit(tmp_path / "bad.pth", tmp_path / "hf", image_size=SIZE, num_heads=HEADS)
    assert nothing_written(tmp_path, tmp_path / "hf")


def test_default_heads_are_eva_g_head_width_and_must_divide(converted, tmp_path):
    _, out, _ = converted
    with pytest.raises(EmollmError, match="num_heads"):  # 32 // 88 = 0 heads: the tiny model needs num_heads
        convert_eva_vit(out.parent / "eva_vit_tiny.pth", tmp_path / "hf", image_size=SIZE)
    with pytest.raises(EmollmError, match="not empty"):
        convert_eva_vit(out.parent / "eva_vit_tiny.pth", out, image_size=SIZE, num_heads=HEADS)


def test_num_layers_keeps_the_first_blocks(converted, tmp_path):
    sd, out, _ = converted
    report = convert_eva_vit(out.parent / "eva_vit_tiny.pth", tmp_path / "hf", image_size=SIZE, num_heads=HEADS,
                             num_layers=1)  # fmt: skip
    assert report["num_layers"] == 1 and report["blocks_dropped"] == 1
    img = frame(7)
    feats = build_encoder("visual", tmp_path / "hf", tokens="cls+patch", layer=-1).extract(img)
    _, hidden = reference_forward(sd, pil_pixels(img))
    assert torch.allclose(feats, F.layer_norm(hidden[1], (D,), eps=1e-5)[0], atol=1e-5)
