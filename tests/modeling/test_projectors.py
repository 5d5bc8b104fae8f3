"""Projector registry, token options, modality prompts, cross-modal fusion and MediaProjector."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from emollm.errors import ConfigError
from emollm.modeling.fusion import CrossModalFusion, ModalityPrompts
from emollm.modeling.projectors import (
    PROJECTORS,
    MediaProjector,
    build_projector,
    list_projectors,
    register_projector,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ---------------------------------------------------------------- registry and projectors


def test_registry_lists_the_builtin_projectors():
    assert {"linear", "mlp2x_gelu", "identity"} <= set(list_projectors())
    assert list_projectors() == sorted(list_projectors())


@pytest.mark.parametrize("name", ["linear", "mlp2x_gelu"])
def test_shapes_and_output_tokens(name):
    proj = build_projector(name, 6, 10)
    y = proj(torch.randn(2, 7, 6))
    assert y.shape == (2, 7, 10)
    assert proj.output_tokens(7) == 7


def test_linear_is_one_matmul():
    proj = build_projector("linear", 3, 2)
    linears = [m for m in proj.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 1
    w, b = linears[0].weight, linears[0].bias
    x = torch.randn(2, 4, 3)
    expected = torch.einsum("btd,od->bto", x, w) + b
    torch.testing.assert_close(proj(x), expected)


def test_mlp2x_gelu_structure():
    proj = build_projector("mlp2x_gelu", 4, 6)
    layer = proj.layer
    assert (layer.fc1.in_features, layer.fc1.out_features, layer.fc2.out_features) == (4, 6, 6)
    x = torch.randn(1, 3, 4)
    torch.testing.assert_close(proj(x), layer.fc2(nn.functional.gelu(layer.fc1(x))))
    assert build_projector("mlp2x_gelu", 4, 6, hidden_dim=9).layer.fc1.out_features == 9


def test_identity_needs_equal_dims():
    x = torch.randn(2, 3, 5)
    assert torch.equal(build_projector("identity", 5, 5)(x), x)
    with pytest.raises(ConfigError, match="in_dim == out_dim"):
        build_projector("identity", 5, 6)


def test_regroup_concatenates_neighbours_in_order():
    k, d = 4, 3
    proj = build_projector("identity", d, k * d, regroup=k)  # identity on the regrouped tokens
    x = torch.arange(2 * 8 * d, dtype=torch.float32).reshape(2, 8, d)
    y = proj(x)
    assert y.shape == (2, 2, k * d)
    for b in range(2):
        for i in range(2):
            torch.testing.assert_close(y[b, i], torch.cat([x[b, i * k + j] for j in range(k)]))
    assert proj.output_tokens(8) == 2


def test_regroup_linear_in_dim():
    proj = build_projector("linear", 8, 5, regroup=4)
    assert proj.layer.proj.in_features == 32
    assert proj(torch.randn(1, 12, 8)).shape == (1, 3, 5)


def test_emotion_llama_cls_separate_regroup_4():
    # CLS + 256 patches of dim 8, regroup 4 -> 1 + 64 tokens; the patch Linear reads 4 x 8 = 32.
    proj = build_projector("linear", 8, 16, regroup=4, cls_token="separate", num_input_tokens=257)
    assert proj.layer.proj.in_features == 32
    assert proj.cls_layer.proj.in_features == 8
    x = torch.randn(2, 257, 8)
    y = proj(x)
    assert y.shape == (2, 65, 16)
    assert proj.output_tokens(257) == 65
    torch.testing.assert_close(y[:, 0], proj.cls_layer(x[:, 0]))  # CLS first, through its own layer
    torch.testing.assert_close(y[:, 1], proj.layer(x[:, 1:5].reshape(2, 32)))


def test_cls_drop():
    proj = build_projector("identity", 2, 4, regroup=2, cls_token="drop")
    x = torch.randn(1, 5, 2)
    y = proj(x)
    assert y.shape == (1, 2, 4) and proj.output_tokens(5) == 2
    torch.testing.assert_close(y[0, 0], x[0, 1:3].reshape(4))


def test_regroup_not_dividing_tokens():
    with pytest.raises(ConfigError, match=r"T=255 .*regroup k=4"):
        build_projector("linear", 8, 16, regroup=4, cls_token="separate", num_input_tokens=256)
    proj = build_projector("linear", 8, 16, regroup=4)  # T unknown at build time
    with pytest.raises(ValueError, match=r"T=10 .*k=4"):
        proj(torch.randn(1, 10, 8))
    with pytest.raises(ValueError, match="k=4"):
        proj.output_tokens(10)


def test_registry_errors_suggest_the_closest():
    with pytest.raises(ConfigError, match="unknown projector 'lineer'; did you mean 'linear'"):
        build_projector("lineer", 4, 4)
    with pytest.raises(ConfigError, match="unknown option 'regrup'.*did you mean 'regroup'"):
        build_projector("linear", 4, 4, regrup=2)
    with pytest.raises(ConfigError, match="did you mean 'separate'"):
        build_projector("linear", 4, 4, cls_token="seperate")


@pytest.mark.parametrize(
    ("in_dim", "out_dim", "options"),
    [
        (0, 4, {}),
        (4, 0, {}),
        (-1, 4, {}),
        (4.0, 4, {}),
        (True, 4, {}),
        (4, 4, {"regroup": 0}),
        (4, 4, {"num_input_tokens": 0}),
    ],
)
def test_bad_dims_fail_at_build(in_dim, out_dim, options):
    with pytest.raises(ConfigError):
        build_projector("linear", in_dim, out_dim, **options)


def test_wrong_feature_dim_at_forward():
    with pytest.raises(ValueError, match=r"\(B, T, 4\)"):
        build_projector("linear", 4, 4)(torch.randn(1, 2, 5))


def test_register_custom_projector():
    @register_projector("_test_double")
    class Double(nn.Module):
        def __init__(self, in_dim, out_dim, scale: float = 2.0):
            super().__init__()
            self.proj = nn.Linear(in_dim, out_dim)
            self.scale = scale

        def output_tokens(self, n):
            return n

        def forward(self, x):
            return self.proj(x) * self.scale

    try:
        assert "_test_double" in list_projectors()
        proj = build_projector("_test_double", 2, 3, scale=3.0, regroup=2)
        assert proj(torch.randn(1, 4, 2)).shape == (1, 2, 3)
        with pytest.raises(ValueError, match="already registered"):
            register_projector("_test_double")(nn.Identity)
    finally:
        PROJECTORS.pop("_test_double", None)


# ---------------------------------------------------------------- modality prompts


def test_prompts_prepended_and_trainable():
    prompts = ModalityPrompts(["audio", "video"], num_tokens=3, hidden_size=4)
    assert prompts.extra_tokens == 3
    a, v = torch.randn(2, 5, 4), torch.randn(2, 1, 4)
    out = prompts({"audio": a, "video": v})
    assert out["audio"].shape == (2, 8, 4) and out["video"].shape == (2, 4, 4)
    torch.testing.assert_close(out["audio"][:, 3:], a)
    for b in range(2):
        torch.testing.assert_close(out["audio"][b, :3], prompts.prompts["audio"])
        torch.testing.assert_close(out["video"][b, :3], prompts.prompts["video"])
    assert not torch.equal(prompts.prompts["audio"], prompts.prompts["video"])
    out["audio"].sum().backward()
    assert prompts.prompts["audio"].requires_grad
    assert prompts.prompts["audio"].grad is not None and prompts.prompts["audio"].grad.abs().sum() > 0


def test_prompts_zero_tokens_is_identity():
    prompts = ModalityPrompts(["audio"], num_tokens=0, hidden_size=4)
    x = torch.randn(1, 2, 4)
    assert prompts.extra_tokens == 0 and not list(prompts.parameters())
    assert torch.equal(prompts({"audio": x})["audio"], x)
    with pytest.raises(ValueError, match="'video'"):
        prompts({"video": x})


# ---------------------------------------------------------------- cross-modal fusion

H = 8
MODS = ["audio", "face", "video"]


def _tokens(batch=3):
    return {"audio": torch.randn(batch, 2, H), "face": torch.randn(batch, 3, H), "video": torch.randn(batch, 1, H)}


def _randomise_out_proj(fusion: CrossModalFusion) -> None:
    with torch.no_grad():
        nn.init.normal_(fusion.out_proj.weight, std=0.5)
        nn.init.normal_(fusion.out_proj.bias, std=0.5)


def test_fusion_depth_zero_is_identity():
    fusion = CrossModalFusion(H, depth=0, num_heads=2, modalities=MODS)
    assert not list(fusion.parameters())
    toks = _tokens()
    out = fusion(toks)
    assert all(torch.equal(out[k], toks[k]) for k in toks)


def test_fusion_zero_init_is_identity_at_init():
    fusion = CrossModalFusion(H, depth=2, num_heads=2, modalities=MODS)
    toks = _tokens()
    out = fusion(toks, {k: torch.tensor([True, False, True]) for k in toks})
    for k in toks:
        assert out[k].shape == toks[k].shape
        assert torch.equal(out[k], toks[k])
    changed = CrossModalFusion(H, depth=1, num_heads=2, modalities=MODS, zero_init=False)
    assert not torch.equal(changed(toks)["audio"], toks["audio"])


@pytest.mark.parametrize("train", [True, False])
def test_absent_modality_does_not_influence_present_ones(train):
    fusion = CrossModalFusion(H, depth=2, num_heads=2, modalities=MODS)
    _randomise_out_proj(fusion)
    fusion.train(train)
    toks = _tokens()
    present = {
        "audio": torch.tensor([True, True, False]),
        "face": torch.tensor([False, True, True]),
        "video": torch.ones(3, dtype=torch.bool),
    }
    with torch.no_grad():
        out1 = fusion(toks, present)
        changed = dict(toks)
        changed["face"] = toks["face"].clone()
        changed["face"][0] = 100 * torch.randn(3, H)  # row 0 has no face
        changed["audio"] = toks["audio"].clone()
        changed["audio"][2] = -50.0  # row 2 has no audio
        out2 = fusion(changed, present)
    # present tokens of rows 0 and 2 unchanged
    torch.testing.assert_close(out1["audio"][0], out2["audio"][0])
    torch.testing.assert_close(out1["video"][0], out2["video"][0])
    torch.testing.assert_close(out1["face"][2], out2["face"][2])
    torch.testing.assert_close(out1["video"][2], out2["video"][2])
    # the present modalities are actually mixed (fusion is not a no-op)
    assert not torch.allclose(out1["video"][0], toks["video"][0])
    # absent tokens keep their input
    assert torch.equal(out2["face"][0], changed["face"][0])


@pytest.mark.parametrize("train", [True, False])
def test_all_absent_row_has_no_nan(train):
    fusion = CrossModalFusion(H, depth=2, num_heads=2, modalities=MODS)
    _randomise_out_proj(fusion)
    fusion.train(train)
    masks = []
    fusion.layers[0].register_forward_pre_hook(
        lambda _m, _a, kw: masks.append(kw["src_key_padding_mask"]), with_kwargs=True
    )
    toks = _tokens(batch=2)
    present = {k: torch.tensor([True, False]) for k in toks}
    with torch.set_grad_enabled(train):  # eval + no_grad takes PyTorch's fast path (NaN on all-masked rows)
        out = fusion(toks, present)
    # no row of the key-padding mask is all masked (some attention kernels give NaN there)
    assert not masks[0].all(dim=1).any()
    for k in toks:
        assert torch.isfinite(out[k]).all()
        assert torch.equal(out[k][1], toks[k][1])
    if train:
        sum(o.sum() for o in out.values()).backward()
        grads = {name: p.grad for name, p in fusion.named_parameters()}
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads.values()), \
            [n for n, g in grads.items() if g is None or not torch.isfinite(g).all()]


def test_gradients_reach_fusion_params():
    fusion = CrossModalFusion(H, depth=1, num_heads=2, modalities=MODS)
    toks = _tokens()
    sum(o.pow(2).sum() for o in fusion(toks).values()).backward()
    assert fusion.out_proj.weight.grad.abs().sum() > 0  # zero-init: only the output projection at step 0
    fusion.zero_grad()
    _randomise_out_proj(fusion)  # as after some training steps
    sum(o.pow(2).sum() for o in fusion(toks).values()).backward()
    for name, p in fusion.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_fusion_config_errors():
    with pytest.raises(ConfigError, match="divisible"):
        CrossModalFusion(10, depth=1, num_heads=3, modalities=MODS)
    with pytest.raises(ConfigError, match="repeat"):
        CrossModalFusion(H, depth=1, num_heads=2, modalities=["audio", "audio"])


# ---------------------------------------------------------------- MediaProjector

SPEC = {
    "video": {"in_dim": 8, "num_input_tokens": 257, "projector": "linear", "regroup": 4, "cls_token": "separate"},
    "audio": {"in_dim": 6, "num_input_tokens": 3, "projector": "mlp2x_gelu"},
    "au": {"in_dim": 4, "num_input_tokens": 5},
}


def test_media_projector_num_tokens():
    mp = MediaProjector.from_spec(SPEC, hidden_size=H, prompt_tokens=2)
    assert [mp.num_tokens(n) for n in ("video", "audio", "au")] == [67, 5, 7]
    assert MediaProjector.from_spec(SPEC, hidden_size=H).num_tokens("video") == 65
    assert mp.projectors["video"].layer.proj.in_features == 32
    assert MediaProjector.from_spec(**mp.to_spec()).num_tokens("video") == 67


def test_media_projector_spec_errors():
    with pytest.raises(ConfigError, match="modality 'video'.*regroup k=4"):
        MediaProjector.from_spec({"video": {**SPEC["video"], "num_input_tokens": 256}}, hidden_size=H)
    with pytest.raises(ConfigError, match="modality 'audio'.*did you mean 'mlp2x_gelu'"):
        MediaProjector.from_spec({"audio": {**SPEC["audio"], "projector": "mlp2x_gelu_"}}, hidden_size=H)
    with pytest.raises(ConfigError, match="needs 'num_input_tokens'"):
        MediaProjector.from_spec({"au": {"in_dim": 4}}, hidden_size=H)
    with pytest.raises(ConfigError, match="did you mean 'num_heads'"):
        MediaProjector.from_spec(SPEC, hidden_size=H, fusion={"depth": 1, "num_head": 2})


def test_media_projector_zero3_rule_and_absent_rows():
    mp = MediaProjector.from_spec(SPEC, hidden_size=H, prompt_tokens=2, fusion={"depth": 1, "num_heads": 2})
    _randomise_out_proj(mp.fusion)
    features = {"video": torch.randn(3, 257, 8), "audio": torch.randn(3, 3, 6)}  # 'au' missing entirely
    present = {"video": torch.tensor([True, False, True]), "audio": torch.tensor([True, True, False])}
    out = mp(features, present)
    assert {k: tuple(v.shape) for k, v in out.items()} == {"video": (3, 67, H), "audio": (3, 5, H), "au": (3, 7, H)}
    assert torch.count_nonzero(out["au"]) == 0
    assert torch.count_nonzero(out["video"][1]) == 0 and torch.count_nonzero(out["audio"][2]) == 0
    assert torch.count_nonzero(out["video"][0]) > 0 and torch.count_nonzero(out["audio"][1]) > 0
    sum(v.sum() for v in out.values()).backward()
    for name, p in mp.named_parameters():
        assert p.grad is not None, f"{name} got no gradient (ZeRO-3 would hang)"
    assert all(torch.count_nonzero(p.grad) == 0 for p in mp.projectors["au"].parameters())


def test_media_projector_missing_everything_needs_batch_size():
    mp = MediaProjector.from_spec(SPEC, hidden_size=H)
    with pytest.raises(ValueError, match="batch_size"):
        mp({})
    out = mp({}, batch_size=2)
    assert all(torch.count_nonzero(v) == 0 for v in out.values()) and out["au"].shape == (2, 5, H)
    with pytest.raises(ValueError, match=r"\(2, 3, 6\)"):
        mp({"audio": torch.randn(2, 4, 6)})


def test_media_projector_bf16():
    mp = MediaProjector.from_spec(SPEC, hidden_size=H, prompt_tokens=1, fusion={"depth": 1, "num_heads": 2})
    mp = mp.to(torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in mp.parameters())
    features = {"video": torch.randn(2, 257, 8, dtype=torch.float16), "audio": torch.randn(2, 3, 6)}
    out = mp(features, {"video": torch.tensor([True, False]), "audio": torch.ones(2, dtype=torch.bool)})
    assert all(v.dtype == torch.bfloat16 for v in out.values())
    assert all(torch.isfinite(v.float()).all() for v in out.values())
    ident = build_projector("identity", 4, 4).to(torch.bfloat16)
    assert ident(torch.randn(1, 2, 4)).dtype == torch.bfloat16
