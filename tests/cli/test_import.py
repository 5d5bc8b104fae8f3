"""``emollm import``: the three importers as a user runs them, output and exit codes."""

from __future__ import annotations

import os

import torch

from emollm.cli import main as cli
from emollm.inference import run_config
from emollm.modeling.encoders import build_encoder
from emollm.testing.emotion_llama import TINY_OVERRIDES, released_state, save_checkpoint
from emollm.testing.tiny import build_tiny_models
from emollm.testing.tiny.encoders import EVA_TINY, eva_vit_state_dict


def test_eva_vit_converts_lavis_weights_for_the_visual_encoder(tmp_path, capsys):
    src = tmp_path / "eva_vit_g.pth"
    torch.save(eva_vit_state_dict(), src)
    out = tmp_path / "eva"
    code = cli.main(["import", "eva-vit", str(src), "--out", str(out), "--image-size", "56", "--num-heads", "2",
                     "--num-layers", "0"])
    assert code == 0
    assert '"tokens": 17' in capsys.readouterr().out
    features = build_encoder("visual", str(out), tokens="cls+patch", frames="peak").extract(
        torch.randint(0, 255, (1, 40, 30, 3), dtype=torch.uint8).numpy())
    assert tuple(features.shape) == (17, EVA_TINY["hidden"])


def test_eva_vit_keeps_minigpt_v2s_39_blocks_by_default(tmp_path, capsys):
    torch.save(eva_vit_state_dict(), tmp_path / "eva.pth")  # 2 blocks: fewer than 39
    code = cli.main(["import", "eva-vit", str(tmp_path / "eva.pth"), "--out", str(tmp_path / "o"), "--num-heads", "2"])
    assert code == 2
    assert "num_layers 39 must be between 1 and the checkpoint's 2 blocks" in capsys.readouterr().err


class _Payload:
    def __reduce__(self):
        return (os.makedirs, ("/tmp/emollm-should-not-exist",))


def test_emotion_llama_checkpoint_becomes_a_run_dir(tmp_path, capsys):
    backbone = str(build_tiny_models(names=["llama2"]).llama2)
    ckpt = save_checkpoint(tmp_path / "Emotion_LLaMA.pth", released_state())
    out = tmp_path / "run"
    code = cli.main(["import", "emotion-llama", str(ckpt), "--backbone", backbone, "--out", str(out),
                     "--eva", "/models/eva_vit_g", *TINY_OVERRIDES])
    printed = capsys.readouterr().out
    assert code == 0
    assert "keys mapped      18 (projectors 10, LoRA 8)" in printed
    assert "LoRA             r=4 alpha=16 on ['q_proj', 'v_proj'] of 2 layers" in printed
    assert "MiniGPT-v2's Attention head" in printed and "next: emollm import emotion-llama-features" in printed
    assert run_config(out).model.backbone.template == "emotion_llama"


def test_a_checkpoint_naming_code_is_one_error_line(tmp_path, capsys):
    ckpt = tmp_path / "evil.pth"
    torch.save({"model": released_state(), "x": _Payload()}, ckpt)
    code = cli.main(["import", "emotion-llama", str(ckpt), "--backbone", "x", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "refused pickle global 'os.makedirs'" in err
    assert not os.path.exists("/tmp/emollm-should-not-exist") and not (tmp_path / "run").exists()
