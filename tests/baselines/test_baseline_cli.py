"""`emollm baseline train|predict` end to end: on a feature cache written through FeatureCache (a fusion task
the baseline must learn) and on the real output of `emollm build` + `emollm features` (with the text
encoder), then `emollm evaluate` and `emollm evaluate --compare` beside an LLM run's metrics."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from emollm import config as cfglib
from emollm.baselines.train import train_baseline
from emollm.cli import main as cli

FAST = ["baseline.lr=3e-3", "baseline.options={fusion: concat, hidden_size: 64, dropout: 0.0}"]



def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _train(ds, out: Path, *extra: str, method: str = "hlm12erc") -> int:
    return cli.main(["--quiet", "baseline", "train", "--method", method, "--config", str(ds.config), str(ds.root),
                     "--out", str(out), *FAST, *extra])


def test_train_predict_evaluate_and_compare_with_an_llm_run(synthetic_dataset, tmp_path, capsys):
    ds = synthetic_dataset
    run = tmp_path / "hlm12erc"
    assert _train(ds, run, "baseline.epochs=30", "baseline.eval_every=10") == 0
    assert "trained hlm12erc: 30 epoch(s)" in capsys.readouterr().out
    for name in ("model.safetensors", "baseline.json", "config.yaml", "train_log.jsonl", "eval_metrics.json"):
        assert (run / name).is_file(), name
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-29", "checkpoint-30"]  # save_total_limit 2
    info = json.loads((run / "baseline.json").read_text())
    assert info["model"]["method"] == "hlm12erc" and info["model"]["feature_dims"] == {"text": 24, "audio": 32}
    assert info["label_set"]["name"] == "meld" and info["splits"]["train"]["n"] == 300
    assert all(len(m["fingerprint"]) == 64 for m in info["modalities"].values())
    log = _rows(run / "train_log.jsonl")
    assert [e["epoch"] for e in log] == list(range(1, 31)) and [e["epoch"] for e in log if "eval" in e] == [10, 20, 30]
    assert log[-1]["loss"] < log[0]["loss"] and set(log[0]["parts"]) == {"ce"}
    saved = cfglib.load(run / "config.yaml")
    assert saved.baseline.method == "hlm12erc" and saved.run.output_dir == str(run)

    preds = tmp_path / "preds.jsonl"
    assert cli.main(["--quiet", "baseline", "predict", "--model", str(run), str(ds.root), "--out", str(preds)]) == 0
    rows = _rows(preds)
    assert [r["id"] for r in rows] == [r["id"] for r in ds.records if r["split"] == "test"]
    assert all(r["label"] in r["probs"] and sum(r["probs"].values()) == pytest.approx(1, abs=1e-4) for r in rows)
    labels = {r["id"]: r["label"] for r in ds.records}
    assert all(r["gt"] == labels[r["id"]] and r["gt_source"] == "label" for r in rows)  # like `emollm predict`'s rows
    printed = capsys.readouterr()
    assert "references (gt, gt_source): human labels (100)" in printed.out
    command = shlex.split(printed.err.split("score it with: ")[1])  # the command it prints scores the file as is
    assert command[:2] == ["emollm", "evaluate"] and "--references" not in command
    assert cli.main(["--quiet", *command[1:], "--no-plots"]) == 0
    printed_eval = json.loads((Path(command[command.index("--out") + 1]) / "metrics.json").read_text())

    evaluation = tmp_path / "eval_baseline"
    assert cli.main(["--quiet", "evaluate", "--predictions", str(preds), "--references", str(ds.root), "--out",
                     str(evaluation), "--no-plots", "evaluate.split=test", "evaluate.label_set=meld"]) == 0
    metrics = json.loads((evaluation / "metrics.json").read_text())
    cl = metrics["classification"]
    assert cl["n"] == 100 and "reasoning" not in metrics  # label-only predictions: no reasoning scored
    at_train = json.loads((run / "eval_metrics.json").read_text())
    assert cl["waf"] == pytest.approx(at_train["waf"]) and cl["war"] == pytest.approx(at_train["war"])
    assert cl["war"] > 0.75, cl["war"]  # chance 0.5: the label needs text and audio together (measured 0.84)
    assert metrics["references"]["counts"] == {"label": 100} and at_train["references"] == {"label": 100}
    assert printed_eval["classification"] == cl and printed_eval["references"]["counts"] == {"label": 100}
    assert cl["war"] == pytest.approx(sum(r["label"] == r["gt"] for r in rows) / 100)  # WAR: the rows agreeing

    # An LLM run's answers on the same clips (free text, parsed by evaluate), then both side by side.
    llm = tmp_path / "llm_preds.jsonl"
    llm.write_text("".join(json.dumps({"id": r["id"], "text": f"The speaker feels {r['label']}."
                                       if i % 2 else "They sound joyful."}) + "\n"
                           for i, r in enumerate(ds.records) if r["split"] == "test"), encoding="utf-8")
    llm_eval = tmp_path / "eval_llm"
    assert cli.main(["--quiet", "evaluate", "--predictions", str(llm), "--references", str(ds.root), "--out",
                     str(llm_eval), "--no-plots", "evaluate.split=test", "evaluate.label_set=meld"]) == 0
    capsys.readouterr()
    compare = tmp_path / "compare"
    assert cli.main(["evaluate", "--compare", str(evaluation / "metrics.json"), str(llm_eval / "metrics.json"),
                     "--out", str(compare)]) == 0
    table = capsys.readouterr().out
    assert "| metric | eval_baseline | eval_llm |" in table and "WAF (weighted F1)" in table
    waf_row = next(line for line in table.splitlines() if line.startswith("| WAF"))
    assert f"{100 * cl['waf']:.2f}" in waf_row
    side = json.loads((compare / "compare.json").read_text())["headline"]
    assert set(side) == {"eval_baseline", "eval_llm"}


@pytest.mark.parametrize("method, stages", [("telme", ["teacher", "students", "fusion"]), ("dmd", ["main"])])
def test_every_method_trains_predicts_and_evaluates_through_the_cli(synthetic_dataset, tmp_path, method, stages):
    ds = synthetic_dataset
    run = tmp_path / method
    assert cli.main(["--quiet", "baseline", "train", "--method", method, "--config", str(ds.config), str(ds.root),
                     "--out", str(run), "baseline.epochs=2", "baseline.options={hidden: 32}"]) == 0
    log = _rows(run / "train_log.jsonl")
    assert [e["stage"] for e in log] == [s for s in stages for _ in range(2)]  # stage after stage
    assert json.loads((run / "baseline.json").read_text())["model"]["method"] == method
    preds = tmp_path / f"{method}.jsonl"
    assert cli.main(["--quiet", "baseline", "predict", "--model", str(run), str(ds.root), "--out", str(preds)]) == 0
    out = tmp_path / f"{method}_eval"
    assert cli.main(["--quiet", "evaluate", "--predictions", str(preds), "--references", str(ds.root), "--out",
                     str(out), "--no-plots", "evaluate.split=test", "evaluate.label_set=meld"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())["classification"]
    assert metrics["n"] == 100
    assert metrics["waf"] == pytest.approx(json.loads((run / "eval_metrics.json").read_text())["waf"])


HLM12ERC_RESUME = ("baseline.options={fusion: attention, hidden_size: 32, dropout: 0.2, triplet_weight: 0.1, "
                   "triplet_samples_per_class: 8}")


@pytest.mark.parametrize("method, options, epochs, stop", [
    ("hlm12erc", HLM12ERC_RESUME, 4, 2),  # dropout + class-aware batches: the RNG and the sampler epoch
    ("telme", "baseline.options={hidden: 32}", 2, 2),  # killed at a stage boundary (teacher done)
    ("telme", "baseline.options={hidden: 32}", 2, 3),  # killed inside a stage (students, optimizer state)
], ids=["hlm12erc", "telme-boundary", "telme-inside"])
def test_resume_ends_with_the_same_weights_and_log(synthetic_dataset, tmp_path, method, options, epochs, stop):
    ds = synthetic_dataset
    overrides = [f"baseline.method={method}", f"baseline.epochs={epochs}", "baseline.lr=3e-3", options,
                 "baseline.save_total_limit=null"]
    whole = tmp_path / "whole"
    cfg = cfglib.load(ds.config, [*overrides, f"run.output_dir={whole}"])
    straight = train_baseline(cfg, ds.root)
    total = epochs * (3 if method == "telme" else 1)
    assert straight.epochs == total and not straight.stopped_early

    resumed = tmp_path / "resumed"
    cfg = cfglib.load(ds.config, [*overrides, f"run.output_dir={resumed}"])
    killed = train_baseline(cfg, ds.root, stop_after_epoch=stop)
    assert killed.stopped_early and not (resumed / "model.safetensors").exists()
    with open(resumed / "train_log.jsonl", "a", encoding="utf-8") as fh:  # an epoch logged after the checkpoint
        fh.write(json.dumps({"epoch": stop + 1, "stage": "main", "loss": 9.9}) + "\n")
    assert cli.main(["--quiet", "baseline", "train", "--config", str(ds.config), str(ds.root), "--out", str(resumed),
                     "--resume", *overrides]) == 0
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log_a, log_b = _rows(whole / "train_log.jsonl"), _rows(resumed / "train_log.jsonl")
    assert [e["epoch"] for e in log_b] == list(range(1, total + 1))  # nothing lost, nothing twice
    assert [e["loss"] for e in log_a] == [e["loss"] for e in log_b]
    if method == "hlm12erc":
        assert {"ce", "triplet"} <= set(log_b[-1]["parts"])
    # a fresh run in the same folder starts over: the earlier run's checkpoints do not linger
    assert train_baseline(cfglib.load(ds.config, [*overrides, f"run.output_dir={resumed}", "baseline.epochs=1"]),
                          ds.root).epochs == (3 if method == "telme" else 1)
    assert sorted(p.name for p in resumed.glob("checkpoint-*")) == [
        f"checkpoint-{i}" for i in range(1, (3 if method == "telme" else 1) + 1)]


def test_regression_scores_through_evaluate(synthetic_dataset, tmp_path):
    ds = synthetic_dataset
    run = tmp_path / "reg"
    assert _train(ds, run, "baseline.task=regression", "baseline.target_field=sentiment", "baseline.epochs=20") == 0
    assert "acc7" in _rows(run / "train_log.jsonl")[-1]["eval"]
    preds = tmp_path / "reg.jsonl"
    assert cli.main(["--quiet", "baseline", "predict", "--model", str(run), str(ds.root), "--out", str(preds)]) == 0
    rows = _rows(preds)
    sentiment = {r["id"]: r["sentiment"] for r in ds.records}
    assert len(rows) == 100 and all(set(r) == {"id", "score", "gt_score"} for r in rows)
    assert all(r["gt_score"] == sentiment[r["id"]] for r in rows)  # the reference rides along
    out = tmp_path / "reg_eval"
    assert cli.main(["--quiet", "evaluate", "--predictions", str(preds), "--references", str(ds.root), "--out",
                     str(out), "--no-plots", "evaluate.split=test", "evaluate.score_field=sentiment"]) == 0
    alone = tmp_path / "reg_eval_rows"  # scored from the rows' gt_score alone
    assert cli.main(["--quiet", "evaluate", "--predictions", str(preds), "--out", str(alone), "--no-plots"]) == 0
    assert json.loads((alone / "metrics.json").read_text())["regression"] == json.loads(
        (out / "metrics.json").read_text())["regression"]
    metrics = json.loads((out / "metrics.json").read_text())
    reg = metrics["regression"]
    assert reg["n"] == 100 and "classification" not in metrics
    at_train = json.loads((run / "eval_metrics.json").read_text())
    assert reg["mae"] == pytest.approx(at_train["mae"], rel=1e-5) and reg["corr"] > 0.3
    assert "## Regression" in (out / "report.md").read_text()
    assert cli.main(["evaluate", "--compare", str(out / "metrics.json")]) == 0


def test_a_label_set_file_and_mixed_references_through_train_predict_evaluate(synthetic_dataset, tmp_path, capsys):
    """A lab's own label set (a YAML path) and an eval split where half the clips have only the builder's
    pseudo-label: the training log, the prediction rows and `emollm evaluate` all say which references
    they scored against, and score the two sources apart."""
    ds = synthetic_dataset
    own = tmp_path / "sets" / "lab3.yaml"
    own.parent.mkdir()
    own.write_text("name: lab3\nlabels: [joy, sadness, neutral]\nsynonyms: {neutral: [meh]}\n", encoding="utf-8")
    copy = tmp_path / "ds"
    shutil.copytree(ds.root, copy)
    records = [dict(r) for r in ds.records]
    test_ids = [r["id"] for r in records if r["split"] == "test"]
    pseudo_only = set(test_ids[::2])  # 50 clips: label removed, pseudo_label 'neutral' left; one spelled 'meh'
    for r in records:
        if r["id"] in pseudo_only:
            r["label"] = None
    records[-2]["pseudo_label"] = "meh"
    (copy / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")

    retrained = tmp_path / "run"
    assert cli.main(["--quiet", "baseline", "train", "--method", "hlm12erc", "--config", str(ds.config), str(copy),
                     "--out", str(retrained), *FAST, "baseline.epochs=2", f"evaluate.label_set={own}"]) == 0
    printed = capsys.readouterr().out
    assert "eval vs human labels war=" in printed and "; vs pseudo-labels war=" in printed
    info = json.loads((retrained / "baseline.json").read_text())
    assert info["label_set"] == {"name": "lab3", "labels": ["joy", "sadness", "neutral"], "path": str(own)}
    evaluated = json.loads((retrained / "eval_metrics.json").read_text())
    assert evaluated["reference_source"] == "label" and evaluated["references"] == {"label": 50, "pseudo_label": 50}
    assert set(evaluated["by_reference"]) == {"pseudo_label"} and evaluated["by_reference"]["pseudo_label"]["n"] == 50
    assert _rows(retrained / "train_log.jsonl")[-1]["eval"] == evaluated

    preds = tmp_path / "preds.jsonl"
    capsys.readouterr()
    assert cli.main(["--quiet", "baseline", "predict", "--model", str(retrained), str(copy), "--out", str(preds)]) == 0
    rows = _rows(preds)
    assert set(rows[0]["probs"]) == {"joy", "sadness", "neutral"}
    assert {r["id"] for r in rows if r["gt_source"] == "pseudo_label"} == pseudo_only
    printed = capsys.readouterr()
    assert "human labels (50) and pseudo-labels (50; the dataset builder's, not human ground truth), scored " \
           "separately" in printed.out
    command = shlex.split(printed.err.split("score it with: ")[1])
    assert f"evaluate.label_set={own}" in command
    assert cli.main([*command[1:], "--no-plots"]) == 0
    shown = capsys.readouterr().out
    m = json.loads((Path(command[command.index("--out") + 1]) / "metrics.json").read_text())
    assert m["label_set"]["path"] == str(own) and m["references"]["counts"] == {"label": 50, "pseudo_label": 50}
    human = [r for r in rows if r["gt_source"] == "label"]
    pseudo = [r for r in rows if r["gt_source"] == "pseudo_label"]
    war_human = sum(r["label"] == r["gt"] for r in human) / 50
    war_pseudo = sum(r["label"] == "neutral" for r in pseudo) / 50  # 'meh' is the set's own word for neutral
    assert m["classification"]["war"] == pytest.approx(war_human) and m["classification"]["n"] == 50
    assert m["by_reference"]["pseudo_label"]["classification"]["war"] == pytest.approx(war_pseudo)
    assert evaluated["war"] == pytest.approx(war_human)
    assert evaluated["by_reference"]["pseudo_label"]["war"] == pytest.approx(war_pseudo)
    assert f"lab3 vs human labels: n=50 WAR={100 * war_human:.2f}" in shown
    assert f"lab3 vs pseudo-labels: n=50 WAR={100 * war_pseudo:.2f}" in shown


def test_predict_refuses_features_of_another_encoder_and_bad_runs(synthetic_dataset, tmp_path, capsys):
    ds = synthetic_dataset
    run = tmp_path / "run"
    assert _train(ds, run, "baseline.epochs=1") == 0
    info = json.loads((run / "baseline.json").read_text())
    info["modalities"]["audio"]["fingerprint"] = "0" * 64  # trained on features of another audio encoder
    (run / "baseline.json").write_text(json.dumps(info))
    capsys.readouterr()
    assert cli.main(["baseline", "predict", "--model", str(run), str(ds.root), "--out", str(tmp_path / "p.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "modality 'audio'" in err and "another encoder" in err and "hint: run `emollm features`" in err
    assert cli.main(["baseline", "predict", "--model", str(tmp_path), str(ds.root), "--out", str(tmp_path / "p")]) == 2
    assert "not a baseline run dir" in capsys.readouterr().err
    assert cli.main(["baseline", "train", "--method", "hlm12ecr", "--config", str(ds.config), str(ds.root),
                     "--out", str(tmp_path / "x")]) == 2
    assert "did you mean 'hlm12erc'" in capsys.readouterr().err
    assert cli.main(["baseline", "train", "--config", str(ds.config), "--out", str(tmp_path / "x")]) == 2
    assert "no dataset folder" in capsys.readouterr().err
    assert cli.main(["baseline", "train", "--config", str(ds.config), str(ds.root), "baseline.optoins={}"]) == 2
    assert "did you mean 'baseline.options'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        cli.main(["baseline", "train", "--help"])
    assert exit_.value.code == 0 and "--resume" in capsys.readouterr().out


def test_default_run_dir_is_beside_not_inside_the_llm_run(synthetic_dataset, tmp_path, capsys):
    ds = synthetic_dataset
    assert cli.main(["baseline", "train", "--config", str(ds.config), str(ds.root), "--check",
                     f"run.output_dir={tmp_path / 'llm'}"]) == 0
    assert f"output_dir: {tmp_path / 'llm' / 'baseline_hlm12erc'}" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ real features
def _build_real(sample_dir: Path, text_ckpt: Path, audio_ckpt: Path, root: Path) -> tuple[Path, Path]:
    clips = root / "clips"
    clips.mkdir(parents=True)
    for name, source in (("a", "single_face.mp4"), ("b", "single_face.jpg"), ("c", "no_face.mp4"),
                         ("d", "single_face.mp4")):
        shutil.copy(sample_dir / source, clips / f"{name}{Path(source).suffix}")
    (root / "labels.csv").write_text("id,label,split\na,joy,train\nb,sadness,train\nc,joy,test\nd,sadness,test\n")
    (root / "subs.csv").write_text("id,subtitle\na,I am so happy today\nc,what a lovely day\nd,this is terrible\n")
    dataset = root / "dataset"
    assert cli.main(["--quiet", "build", str(clips), "--out", str(dataset), "build.au_fps=3",
                     f"data.labels_csv={root / 'labels.csv'}", f"data.subtitles_csv={root / 'subs.csv'}"]) == 0
    config = root / "real.yaml"
    config.write_text("\n".join([
        "extends: base", "data: {label_set: meld, train_split: train, eval_split: test}", "media: {num_frames: 4}",
        "model:", "  encoders:", f"    text: {{name_or_path: '{text_ckpt}'}}",
        f"    audio: {{name_or_path: '{audio_ckpt}'}}", "    au: {}", ""]), encoding="utf-8")
    assert cli.main(["--quiet", "features", "--config", str(config), str(dataset)]) == 0
    return dataset, config


@pytest.fixture(scope="module")
def real_dataset(sample_dir, baseline_encoders, tmp_path_factory):
    """Four real clips built by `emollm build` (labels, splits and subtitles from CSVs) and their features
    from `emollm features`: text (subtitles; clip b has none), audio (the still b has none), AU side files."""
    text_ckpt, audio_ckpt = baseline_encoders
    return _build_real(sample_dir, text_ckpt, audio_ckpt, tmp_path_factory.mktemp("baseline_real"))


def test_on_the_real_features_of_built_clips(real_dataset, tmp_path, capsys):
    dataset, config = real_dataset
    run = tmp_path / "run"
    assert cli.main(["--quiet", "baseline", "train", "--method", "hlm12erc", "--config", str(config), str(dataset),
                     "--out", str(run), "baseline.epochs=3", "baseline.batch_size=2",
                     "baseline.modalities=[text,audio,au]"]) == 0
    info = json.loads((run / "baseline.json").read_text())
    assert info["model"]["feature_dims"] == {"text": 24, "audio": 32, "au": 34}
    assert info["splits"]["train"]["n"] == 2 and info["splits"]["eval"]["n"] == 2
    assert info["modalities"]["au"]["fingerprint"] is None and len(info["modalities"]["text"]["fingerprint"]) == 64

    from emollm.baselines.data import ModalityInfo, load_split

    trained = {name: ModalityInfo(**spec) for name, spec in info["modalities"].items()}
    data = load_split(cfglib.load(run / "config.yaml"), dataset, None, targets=False, modalities=trained)
    present = {name: dict(zip(data.batch.ids, mask.tolist(), strict=True)) for name, mask in data.batch.present.items()}
    assert present["text"] == {"a": True, "b": False, "c": True, "d": True}  # b: no subtitle
    assert present["audio"] == {"a": True, "b": False, "c": True, "d": True}  # b: a still, no audio
    assert present["au"]["a"] and not present["au"]["c"]  # c: no face, no AU frame

    preds = tmp_path / "preds.jsonl"
    assert cli.main(["--quiet", "baseline", "predict", "--model", str(run), str(dataset), "--out", str(preds),
                     "--split", "all"]) == 0
    assert sorted(r["id"] for r in _rows(preds)) == ["a", "b", "c", "d"]
    evaluation = tmp_path / "baseline_eval"
    assert cli.main(["--quiet", "evaluate", "--predictions", str(preds), "--references", str(dataset), "--out",
                     str(evaluation), "--no-plots", "evaluate.label_set=meld"]) == 0
    assert json.loads((evaluation / "metrics.json").read_text())["classification"]["n"] == 4
    llm = tmp_path / "llm.jsonl"
    llm.write_text("".join(json.dumps({"id": i, "text": "She looks joyful."}) + "\n" for i in "abcd"))
    llm_eval = tmp_path / "llm_eval"
    assert cli.main(["--quiet", "evaluate", "--predictions", str(llm), "--references", str(dataset), "--out",
                     str(llm_eval), "--no-plots", "evaluate.label_set=meld"]) == 0
    capsys.readouterr()
    assert cli.main(["evaluate", "--compare", str(evaluation / "metrics.json"), str(llm_eval / "metrics.json")]) == 0
    assert "| metric | baseline_eval | llm_eval |" in capsys.readouterr().out
