"""`emollm export --model`: a run dir -> a self-contained, movable model directory that round-trips
through from_pretrained (unmerged: identical logits; merged: within float rounding)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from emollm import config as cfglib
from emollm.cli.main import main
from emollm.errors import EmollmError
from emollm.exporting import export_model
from emollm.modeling import EmoLLMConfig, EmoLLMForConditionalGeneration
from emollm.modeling.factory import build_model_and_processor, load_run, save_run
from emollm.processing import EmoProcessor
from emollm.prompts import emotion_llama_sample
from emollm.testing.tiny import build_tiny_models

ALL = ("video", "face", "temporal", "audio", "au")
SPLITS = {"train": 3, "test": 2}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A LoRA run (B non-zero, so merging changes the weights) and a full fine-tune run, with the files
    `emollm train` writes beside the model (config.yaml, logs) and a real `emollm evaluate` metrics.json."""
    from eval.runner import evaluate_run

    tiny = build_tiny_models()
    root = tmp_path_factory.mktemp("export")
    dataset = root / "dataset"
    dataset.mkdir()
    rows = [{"id": f"{split}{i}", "split": split} for split, n in SPLITS.items() for i in range(n)]
    (dataset / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = cfglib.load("tiny_cpu", [f"data.dataset_dir={dataset}", f"run.output_dir={root / 'lora'}"])
    torch.manual_seed(0)
    model, processor = build_model_and_processor(cfg)
    save_run(model, processor, root / "full")  # no adapter: full weights

    model.add_lora(r=4, alpha=8)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    save_run(model, processor, root / "lora")
    cfglib.save_resolved(cfg, root / "lora", command="train")
    (root / "lora" / "logs").mkdir()
    (root / "lora" / "logs" / "train_log.jsonl").write_text(
        json.dumps({"step": 10, "loss": 2.5}) + "\n" + json.dumps({"step": 20, "loss": 1.25}) + "\n")

    refs = root / "refs.csv"
    refs.write_text("id,label\na,happy\nb,angry\nc,sad\nd,sad\n")
    preds = root / "preds.jsonl"
    preds.write_text("".join(json.dumps({"id": i, "label": lab}) + "\n"
                             for i, lab in zip("abcd", ("happy", "sad", "sad", "sad"), strict=True)))
    evaluate_run(cfglib.load(None, ["evaluate.proxies=false"]), [preds], refs, root / "eval", plots=False)
    return {"tiny": tiny, "root": root, "lora": root / "lora", "full": root / "full",
            "metrics": root / "eval" / "metrics.json", "processor": processor}


@pytest.fixture(scope="module")
def exported(runs):
    """The LoRA run exported twice: unmerged and merged (with the metrics file)."""
    out = runs["root"] / "exports"
    return {
        "lora": export_model(runs["lora"], out / "plain"),
        "merged": export_model(runs["lora"], out / "merged", merge=True, metrics=runs["metrics"]),
    }


def logits_of(model, processor) -> torch.Tensor:
    sample = emotion_llama_sample("clip-7", "emotion", "I can't believe it", target="happy", modalities=ALL)
    batch = processor.collate([processor.encode(sample, {"video", "face", "audio"}), processor.encode(sample)])
    torch.manual_seed(3)
    media = {n: torch.randn(2, s["num_input_tokens"], s["feature_dim"])
             for n, s in model.config.modalities.items() if s["kind"] != "au"}
    media["au"] = torch.rand(2, 8, 34)
    model.eval()
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], media=media,
                     media_present=batch["media_present"]).logits


@pytest.fixture(scope="module")
def reference_logits(runs):
    model, processor = load_run(runs["lora"])
    with model.language_model.disable_adapter():
        base_only = logits_of(model, processor)
    return {"run": logits_of(model, processor), "without_adapter": base_only}


def test_unmerged_export_gives_identical_logits_and_still_loads_when_moved(runs, exported, reference_logits,
                                                                           tmp_path, monkeypatch):
    out = Path(exported["lora"]["out_dir"])
    assert exported["lora"]["kind"] == "lora"
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and (out / "backbone" / "model.safetensors").is_file()
    assert json.loads((out / "config.json").read_text())["backbone_name_or_path"] == "backbone"
    model = EmoLLMForConditionalGeneration.from_pretrained(out)
    assert model.is_lora
    assert torch.equal(logits_of(model, EmoProcessor.from_pretrained(out)), reference_logits["run"])

    moved = tmp_path / "elsewhere" / "renamed"
    moved.parent.mkdir()
    shutil.copytree(out, moved)  # a copy: the module's export stays for the other tests
    monkeypatch.chdir(moved.parent)  # loaded by a relative name from another working directory
    loaded, processor = load_run("renamed")
    assert torch.equal(logits_of(loaded, processor), reference_logits["run"])
    assert loaded.config.backbone_name_or_path == str(moved / "backbone")
    assert loaded.config.modalities["video"]["encoder"]["name_or_path"] == str(moved / "encoders" / "video")
    features = loaded.encode_media({"video": np.zeros((2, 48, 64, 3), dtype=np.uint8),
                                    "audio": np.zeros(16000, dtype=np.float32)})  # live encoders: the copies
    assert features["video"].shape == (1, 17, 56) and features["audio"].shape == (1, 1, 32)


def test_merged_export_matches_within_float_rounding(exported, reference_logits):
    out = Path(exported["merged"]["out_dir"])
    assert exported["merged"]["kind"] == "merged"
    assert (out / "model.safetensors").is_file()
    assert not (out / "adapter").exists() and not (out / "backbone").exists()
    model = EmoLLMForConditionalGeneration.from_pretrained(out)
    assert not model.is_lora
    merged = logits_of(model, EmoProcessor.from_pretrained(out))
    torch.testing.assert_close(merged, reference_logits["run"], atol=1e-4, rtol=0)
    assert (merged - reference_logits["without_adapter"]).abs().max() > 1e-2  # the adapter is really in there


def test_an_export_is_a_run_dir_too(exported, reference_logits, tmp_path):
    again = export_model(exported["lora"]["out_dir"], tmp_path / "again", merge=True)  # backbone/ is found inside
    assert again["kind"] == "merged"
    model, processor = load_run(tmp_path / "again")
    torch.testing.assert_close(logits_of(model, processor), reference_logits["run"], atol=1e-4, rtol=0)


def test_merged_weights_shard_with_save_pretrained(runs, tmp_path):
    out = tmp_path / "sharded"
    export_model(runs["lora"], out, merge=True, include_encoders=False, max_shard_size="300KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    EmoLLMForConditionalGeneration.from_pretrained(out)


def test_no_path_outside_the_export_is_named(runs, exported):
    outside = (str(runs["tiny"].root), str(runs["lora"]), str(runs["root"]))
    for result in exported.values():
        out = Path(result["out_dir"])
        for path in [*out.rglob("*.json"), out / "README.md"]:
            text = path.read_text()
            assert not any(p in text for p in outside), path
        config = json.loads((out / "config.json").read_text())
        assert {n: s["encoder"]["name_or_path"] for n, s in config["modalities"].items() if "encoder" in s} == {
            n: f"encoders/{n}" for n in ("video", "face", "temporal", "audio")}


def test_encoder_copies_keep_their_fingerprint(runs, exported):
    from emollm.modeling.encoders import build_encoder

    out = Path(exported["lora"]["out_dir"])
    original = build_encoder("audio", str(runs["tiny"].hubert)).fingerprint()
    assert build_encoder("audio", str(out / "encoders" / "audio")).fingerprint() == original  # cached features stay valid


def test_auto_classes_load_the_export(exported, reference_logits):
    from transformers import AutoConfig, AutoModelForCausalLM

    for result in exported.values():
        out = result["out_dir"]
        assert isinstance(AutoConfig.from_pretrained(out), EmoLLMConfig)
    model = AutoModelForCausalLM.from_pretrained(exported["lora"]["out_dir"])
    assert isinstance(model, EmoLLMForConditionalGeneration)
    assert torch.equal(logits_of(model, EmoProcessor.from_pretrained(exported["lora"]["out_dir"])),
                       reference_logits["run"])


def test_processor_travels_with_its_template(runs, exported):
    sample = emotion_llama_sample("x", "reason", "hm", modalities=ALL)
    for result in exported.values():
        processor = EmoProcessor.from_pretrained(result["out_dir"])
        assert processor.template.name == "llama2"
        assert processor.render(sample) == runs["processor"].render(sample)
        assert processor.encode(sample) == runs["processor"].encode(sample)
        assert processor.media_token_ids == runs["processor"].media_token_ids


def test_model_card_names_base_data_config_and_metrics(exported):
    card = (Path(exported["merged"]["out_dir"]) / "README.md").read_text()
    front = card.split("---")[1]
    for field in ("library_name: emollm", 'base_model: "llama2"', "pipeline_tag: any-to-any", "- emotion-recognition"):
        assert field in front
    assert "**This is a tiny test model**" in card
    assert "| `<video>` | visual | `encoders/video` (copy of `clip_vision`) | 17 × 56 | 5 | linear |" in card
    assert "<|emo_video|>×5" in card  # the rendered template
    assert "dataset: `dataset`; train split `train`" in card and "clips per split: test 2, train 3" in card
    assert "20 optimizer steps" in card and "LoRA r=4 alpha=8 dropout=0.05 targets down_proj" in card
    assert "| WAR (accuracy) % | 75.00 |" in card and "label set `merr`" in card
    assert 'load_run("merged")' in card
    plain = (Path(exported["lora"]["out_dir"]) / "README.md").read_text()
    assert "base_model_relation: adapter" in plain and "**not merged**" in plain
    assert "From `metrics.json`" not in plain  # the metrics file lies outside the run dir: only --metrics adds it
    assert "The whole resolved config is in `config.yaml`" in plain


def test_the_export_carries_a_run_config_naming_its_own_copies(runs, exported, tmp_path):
    """config.yaml (what `emollm infer` / `predict` read) names the export's copies, resolved wherever it lies."""
    from emollm.inference import run_config

    for kind, backbone in (("lora", "backbone"), ("merged", "")):
        out = Path(exported[kind]["out_dir"])
        raw = cfglib.load(out / "config.yaml")  # as written: relative names only
        assert raw.model.backbone.name_or_path == backbone
        assert {n: e.name_or_path for n, e in raw.model.encoders.items() if e.modality != "au"} == {
            n: f"encoders/{n}" for n in ("video", "face", "temporal", "audio")}
        moved = tmp_path / f"moved-{kind}"
        shutil.copytree(out, moved)
        cfg = run_config(moved)
        assert cfg.model.encoders["audio"].name_or_path == str(moved / "encoders" / "audio")
        assert cfg.model.backbone.name_or_path == (str(moved / "backbone") if backbone else "")
        # everything else is the run's own config
        assert cfg.train.lora.r == cfglib.load(runs["lora"] / "config.yaml").train.lora.r


def test_full_finetune_is_copied_with_a_note(runs, tmp_path):
    result = export_model(runs["full"], tmp_path / "full", merge=True)
    assert result["kind"] == "full" and "full fine-tune" in result["notes"][0]
    reference, processor = load_run(runs["full"])
    loaded, _ = load_run(tmp_path / "full")
    assert torch.equal(logits_of(loaded, processor), logits_of(reference, processor))
    assert "its weights were copied" in (tmp_path / "full" / "README.md").read_text()


def test_without_encoders_the_model_reads_cached_features_only(runs, tmp_path):
    result = export_model(runs["lora"], tmp_path / "bare", merge=True, include_encoders=False)
    assert not (tmp_path / "bare" / "encoders").exists()
    assert set(result["encoders"].values()) == {None}  # local encoders are named nowhere
    model = EmoLLMForConditionalGeneration.from_pretrained(tmp_path / "bare")
    with pytest.raises(EmollmError, match="can only read cached features"):
        model.load_encoders(["video"])
    assert "reads cached features only" in (tmp_path / "bare" / "README.md").read_text()


def _broken_run(runs, tmp_path, change) -> Path:
    run = tmp_path / "run"
    shutil.copytree(runs["lora"], run)
    change(run)
    return run


def _set_config(run: Path, edit) -> None:
    config = json.loads((run / "config.json").read_text())
    edit(config)
    (run / "config.json").write_text(json.dumps(config))


BROKEN = {
    "adapter weights": (lambda r: (r / "adapter" / "adapter_model.safetensors").unlink(),
                        "lacks adapter/adapter_model.safetensors"),
    "adapter": (lambda r: shutil.rmtree(r / "adapter"), "lacks adapter/adapter_config.json"),
    "media weights": (lambda r: (r / "media_modules.safetensors").unlink(), "lacks media_modules.safetensors"),
    "processor": (lambda r: (r / "emollm_processor.json").unlink(), "lacks emollm_processor.json"),
    "config": (lambda r: (r / "config.json").unlink(), "not an emollm run dir"),
    "base model": (lambda r: _set_config(r, lambda c: c.update(backbone_name_or_path="/nowhere/llama")),
                   "base model '/nowhere/llama'.*not found"),
    "encoder": (lambda r: _set_config(r, lambda c: c["modalities"]["audio"]["encoder"].update(name_or_path="/nowhere/hubert")),
                "encoder '/nowhere/hubert' of modality 'audio' not found"),
}


@pytest.mark.parametrize("what", list(BROKEN))
def test_a_broken_run_dir_is_one_clear_error_line(runs, tmp_path, capsys, what):
    change, message = BROKEN[what]
    run = _broken_run(runs, tmp_path, change)
    assert main(["--quiet", "export", "--model", str(run), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("error: ") and sum(line.startswith("error:") for line in err) == 1
    assert re.search(message, err[0]), err[0]
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("out.tmp-*"))
    if what == "encoder":
        assert "--no-encoders" in err[1]
        assert main(["--quiet", "export", "--model", str(run), "--out", str(tmp_path / "out"), "--no-encoders"]) == 0


def test_cli_merge_end_to_end_refuses_to_overwrite_unless_asked(runs, tmp_path, capsys):
    out = tmp_path / "exported"
    args = ["--quiet", "export", "--model", str(runs["lora"]), "--out", str(out), "--merge", "--metrics", str(runs["metrics"])]
    assert main(args) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out} (merged, ")
    assert "| UAR % |" in (out / "README.md").read_text()
    (out / "marker").write_text("old")
    assert main(args) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    assert not (out / "marker").exists() and not list(tmp_path.glob("exported.*"))
    model, processor = load_run(out)
    assert not model.is_lora and processor.template.name == "llama2"


def test_a_failed_export_leaves_no_directory_under_the_final_name(runs, tmp_path, monkeypatch):
    import emollm.exporting as exporting

    def fail(*args, **kwargs):
        raise RuntimeError("killed half way")

    monkeypatch.setattr(exporting, "copy_checkpoint", fail)
    with pytest.raises(RuntimeError, match="half way"):
        export_model(runs["lora"], tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_out_must_not_overlap_the_run(runs):
    with pytest.raises(EmollmError, match="overlaps the run dir"):
        export_model(runs["lora"], runs["lora"] / "export", overwrite=True)


def test_dataset_export_modes_still_need_source(capsys):
    assert main(["export", "--to", "merr", "--out", "x"]) == 2
    assert "--to needs SOURCE" in capsys.readouterr().err
    assert main(["export", "--to", "merr", "ds", "--out", "x", "--merge"]) == 2
    assert "--merge: only for --model" in capsys.readouterr().err
