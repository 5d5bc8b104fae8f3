"""The whole Emotion-LLaMA path as docs/emotion_llama.md runs it, on real clips with tiny models: EVA
converted from LAVIS's format, the checkpoint imported, its .npy features imported, EVA features computed
on the peak frames, answers predicted and scored, and the imported run trained further."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from emollm.cli import main as cli
from emollm.dataset.record import read_dataset
from emollm.testing.emotion_llama import TINY, released_state, save_checkpoint
from emollm.testing.tiny import build_tiny_models
from emollm.testing.tiny.encoders import eva_vit_state_dict

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(sample_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("emotion_llama_e2e")
    clips = tmp / "clips"
    clips.mkdir()
    for name in ("single_face.mp4", "single_face.jpg"):
        shutil.copy(sample_dir / name, clips / name)
    (tmp / "labels.csv").write_text("id,label,split\nsingle_face.mp4,happy,train\nsingle_face.jpg,sad,train\n")
    dataset = tmp / "data"
    assert cli.main(["--quiet", "build", str(clips), "--out", str(dataset), "--labels", str(tmp / "labels.csv"),
                     "build.au_fps=3"]) == 0
    torch.save(eva_vit_state_dict(), tmp / "eva_vit_g.pth")
    assert cli.main(["--quiet", "import", "eva-vit", str(tmp / "eva_vit_g.pth"), "--out", str(tmp / "eva"),
                     "--image-size", "56", "--num-heads", "2", "--num-layers", "0"]) == 0
    ckpt = save_checkpoint(tmp / "Emotion_LLaMA.pth", released_state())
    run = tmp / "run"
    backbone = build_tiny_models(names=["llama2"]).llama2
    assert cli.main(["--quiet", "import", "emotion-llama", str(ckpt), "--backbone", str(backbone), "--eva",
                     str(tmp / "eva"), "--out", str(run), "model.encoders.video.num_input_tokens=17",
                     "model.backbone.torch_dtype=float32", "media.num_frames=4", "predict.max_new_tokens=3"]) == 0
    return tmp, dataset, run


def test_predict_and_evaluate_an_imported_run(setup, capsys):
    tmp, dataset, run = setup
    ids = sorted(record["id"] for record in read_dataset(dataset))
    rng = np.random.default_rng(0)
    for folder in ("mae_340_UTT", "maeV_399_UTT", "HL-UTT"):  # its per-clip .npy files, 1-D as it ships them
        (tmp / "mer" / folder).mkdir(parents=True)
        for clip in ids:
            np.save(tmp / "mer" / folder / f"{clip}.npy", rng.standard_normal(TINY["feature"]).astype(np.float32))
    config = str(run / "config.yaml")
    assert cli.main(["import", "emotion-llama-features", str(dataset), "--from", str(tmp / "mer"),
                     "--config", config]) == 0
    assert cli.main(["features", "--config", config, str(dataset)]) == 0  # EVA on the peak frames; the rest imported
    printed = capsys.readouterr().out
    assert "imported" in printed and "failed clips         0" in printed

    preds = tmp / "preds.jsonl"
    assert cli.main(["predict", "--model", str(run), str(dataset), "--split", "train", "--out", str(preds)]) == 0
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == ids
    # the tiny backbone is random: its answers name no label, which evaluate says instead of scoring noise
    code = cli.main(["evaluate", "--predictions", str(preds), "--references", str(dataset), "--out",
                     str(tmp / "eval"), "evaluate.parse=emotion_llama"])
    assert code == 2 and "no label found in any of the 2 answer(s)" in capsys.readouterr().err


def test_train_further_from_the_imported_run(setup):
    tmp, dataset, run = setup
    if not any((dataset / "features").glob("*/*/*.safetensors")):
        pytest.skip("needs the features of test_predict_and_evaluate_an_imported_run")
    out = tmp / "run_more"
    assert cli.main(["--quiet", "train", "--config", str(run / "config.yaml"), f"data.dataset_dir={dataset}",
                     f"train.init_from={run}", f"run.output_dir={out}", "train.max_steps=2", "train.tasks=[emotion]",
                     "train.per_device_batch_size=2", "train.gradient_accumulation_steps=1", "train.bf16=false",
                     "train.eval_steps=0", "train.lr=1e-2"]) == 0
    before = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    after = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the imported adapter trained on


def test_explain_a_raw_clip_with_an_imported_run(setup, sample_dir, capsys):
    """On a raw clip the imported features cannot be computed: the error says so and how to go on;
    with the modalities that can (the EVA encoder on the peak frame), the clip is explained."""
    _, _, run = setup
    clip = str(sample_dir / "single_face.mp4")
    assert cli.main(["infer", "--model", str(run), clip, "--task", "emotion"]) == 2
    err = capsys.readouterr().err
    assert "'face'" in err and "emollm predict" in err
    assert cli.main(["infer", "--model", str(run), clip, "--task", "emotion", "--modalities", "video", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert answer["error"] is None and answer["text"] and answer["task"] == "emotion"
