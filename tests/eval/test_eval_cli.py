"""`emollm evaluate` end to end: report, confusion PNG, folds, bad input, compare, the judge, proxies."""

from __future__ import annotations

import importlib.util
import json
import threading
from pathlib import Path

import pytest

import emollm.cli.main as cli
from emollm.config import load as load_config
from emollm.errors import EvaluationInputError
from eval.proxies import emotion_word_set_metrics, emotion_words
from eval.runner import evaluate_run


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


REFS = "id,label,reasoning\n" + "\n".join([
    'a,happy,"She smiles broadly; she is happy."',
    'b,angry,"He frowns and shouts: he is angry."',
    'c,neutral,"A calm face and a flat voice."',
    'd,sad,"Tears and a low voice: she is sad."',
]) + "\n"
PREDS = [{"id": "a", "text": "The person is joyful, so happy."}, {"id": "b", "text": "I think he is sad."},
         {"id": "c", "text": ""}, {"id": "d", "text": "Looks like nothing in particular."}]


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "refs.csv").write_text(REFS, encoding="utf-8")
    return {"refs": tmp_path / "refs.csv", "preds": _write(tmp_path / "preds.jsonl", PREDS)}


def test_evaluate_writes_report_and_png(files, tmp_path, capsys) -> None:
    out = tmp_path / "run_a"
    rc = cli.main(["evaluate", "--predictions", str(files["preds"]), "--references", str(files["refs"]),
                   "--out", str(out), "evaluate.label_set=merr"])
    assert rc == 0, capsys.readouterr().err
    m = json.loads((out / "metrics.json").read_text())
    assert m["classification"]["war"] == pytest.approx(0.5)  # a right, b wrong, c/d -> neutral fallback
    assert m["parsing"]["invalid"] == 2 and m["parsing"]["invalid_rate"] == 0.5
    assert m["parsing"]["invalid_by_reason"] == {"empty": 1, "no_label": 1}
    assert m["versions"]["scikit-learn"] and m["config"]["evaluate"]["label_set"] == "merr"
    assert (out / "config.yaml").is_file() and (out / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    md = (out / "report.md").read_text()
    assert "invalid rate 50.00%" in md and "PROXY" in md and "confusion.png" in md
    assert m["reasoning"]["proxy_emotion_word_set"]["kind"] == "proxy"
    assert "WAR=50.00" in capsys.readouterr().out

    # counted wrong instead of fallback; compare both runs side by side
    out_b = tmp_path / "run_b"
    assert cli.main(["evaluate", "--predictions", str(files["preds"]), "--references", str(files["refs"]),
                     "--out", str(out_b), "evaluate.fallback_label=null", "--no-plots"]) == 0
    mb = json.loads((out_b / "metrics.json").read_text())
    assert mb["classification"]["war"] == pytest.approx(0.25) and mb["parsing"]["invalid_handling"] == "counted wrong"
    capsys.readouterr()
    assert cli.main(["evaluate", "--compare", str(out / "metrics.json"), str(out_b / "metrics.json"),
                     "--out", str(tmp_path / "cmp")]) == 0
    table = capsys.readouterr().out
    assert "| metric | run_a | run_b |" in table and "| WAR (accuracy) | 50.00 | 25.00 |" in table
    assert (tmp_path / "cmp" / "compare.md").is_file()


def test_folds(tmp_path, files) -> None:
    f1 = _write(tmp_path / "fold1.jsonl", [{"id": "a", "label": "happy"}, {"id": "b", "label": "angry"}])
    f2 = _write(tmp_path / "fold2.jsonl", [{"id": "c", "label": "sad"}, {"id": "d", "label": "sad"}])
    cfg = load_config(None, ["evaluate.folds=2", "evaluate.proxies=false"])
    m = evaluate_run(cfg, [f1, f2], files["refs"], tmp_path / "out")
    s = m["folds"]["summary"]
    assert s["folds"] == ["fold1", "fold2"]
    assert s["war"]["mean"] == pytest.approx(0.75) and s["war"]["std"] == pytest.approx(0.25)
    assert (tmp_path / "out" / "confusion_fold1.png").is_file()
    assert "mean ± std" in (tmp_path / "out" / "report.md").read_text()


def test_bad_inputs(tmp_path, files, capsys) -> None:
    preds = _write(tmp_path / "p.jsonl", [*PREDS[:3], {"id": "zz", "text": "happy"}])
    argv = ["evaluate", "--predictions", str(preds), "--references", str(files["refs"]), "--out", str(tmp_path / "o")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "e.g. d" in err and "e.g. zz" in err and "--allow-missing" in err
    assert cli.main([*argv, "--allow-missing", "--no-plots"]) == 0
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["counts"]["missing_predictions"] == 1 and m["counts"]["extra_predictions"] == 1
    assert m["counts"]["paired"] == 3

    bad_ref = tmp_path / "r.jsonl"
    _write(bad_ref, [{"id": "a", "label": "bored"}])
    with pytest.raises(EvaluationInputError, match="outside the 'merr' set.*a='bored'"):
        evaluate_run(load_config(), [_write(tmp_path / "q.jsonl", [{"id": "a", "text": "x"}])], bad_ref, tmp_path / "x")
    out_of_set = _write(tmp_path / "q2.jsonl", [{"id": "a", "label": "bored"}, {"id": "b", "label": "sad"}])
    m = evaluate_run(load_config(None, ["evaluate.fallback_label=null"]), [out_of_set],
                     _write(tmp_path / "r2.jsonl", [{"id": "a", "label": "happy"}, {"id": "b", "label": "happy"}]),
                     tmp_path / "y", plots=False)
    assert m["parsing"]["invalid_by_reason"] == {"out_of_set": 1} and m["classification"]["war"] == 0.0
    (tmp_path / "broken.jsonl").write_text('{"id": "a"\n')
    assert cli.main(["evaluate", "--predictions", str(tmp_path / "broken.jsonl"), "--out", str(tmp_path / "z")]) == 2
    assert "broken.jsonl:1: not a JSON line" in capsys.readouterr().err


def test_help_shows_defaults(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--help"])
    out = capsys.readouterr().out
    assert "--allow-missing" in out and "(default: None)" in out


def test_emotion_llama_style_results_file(tmp_path) -> None:
    res = _write(tmp_path / "results.jsonl", [{"video_name": "s1", "answer": "happy", "gt": "happy"},
                                              {"video_name": "s2", "answer": "angry", "gt": "worried"}])
    m = evaluate_run(load_config(), [res], None, tmp_path / "o", plots=False)
    assert m["classification"]["n"] == 2 and m["classification"]["war"] == 0.5


def test_word_set_proxy() -> None:
    assert emotion_words("She is joyful but a bit anxious; no emotion otherwise") == {"happy", "worried", "neutral"}
    m = emotion_word_set_metrics(["she is happy and worried", "the weather report"], ["joyful", "angry"])
    assert m["n"] == 1 and m["skipped_no_reference_emotion"] == 1
    assert m["precision"] == 1.0 and m["recall"] == 0.5 and m["hit_rate"] == 1.0


def test_judge_through_the_runner(tmp_path, files, monkeypatch) -> None:
    spec = importlib.util.spec_from_file_location("_judge_server", Path(__file__).with_name("test_eval_judge.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    srv = mod.ScriptedServer()
    thread = threading.Thread(target=srv.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        refs = _write(tmp_path / "r.jsonl", [{"id": "a", "label": "happy", "reasoning": "MARK_ok she smiles"},
                                             {"id": "b", "label": "sad", "reasoning": "MARK_bad she cries"},
                                             {"id": "c", "label": "sad", "reasoning": "MARK_ok tears"}])
        preds = _write(tmp_path / "p.jsonl", [{"id": "a", "text": "MARK_ok happy"}, {"id": "b", "text": "MARK_bad sad"},
                                              {"id": "c", "text": ""}])
        over = ["evaluate.judge.backend=openai", f"evaluate.judge.base_url={srv.url}", "evaluate.judge.model=j",
                "evaluate.judge.api_key_env=null", "evaluate.judge.backoff_s=0", "evaluate.judge.max_retries=1"]
        m = evaluate_run(load_config(None, over), [preds], refs, tmp_path / "o", plots=False)
        e = m["reasoning"]["emer"]
        assert e["clue_overlap"] == {"mean": 8.0, "valid": 1, "invalid": 2, "invalid_rate": pytest.approx(2 / 3)}  # garbage judge + empty prediction
        calls = srv.total()
        evaluate_run(load_config(None, over), [preds], refs, tmp_path / "o", plots=False)
        assert srv.total() == calls  # cached under <out>/judge_cache
        assert "EMER" in (tmp_path / "o" / "report.md").read_text()
    finally:
        srv.httpd.shutdown()
        srv.httpd.server_close()
        thread.join(timeout=5)


def test_embedding_similarity_proxy_with_tiny_local_model(tmp_path) -> None:
    from emollm.testing.tiny import build_tiny_models
    from eval.proxies import embedding_similarity

    path = build_tiny_models(names=["llama2"]).llama2  # a local model by path; AutoModel + mean pooling
    refs, preds = ["she is happy", "he is sad and very tired today"], ["she is happy", "he is angry"]
    out = embedding_similarity(refs, preds, path)
    assert out["kind"] == "proxy" and out["per_sample"][0] == pytest.approx(1.0, abs=1e-5)
    assert out["per_sample"][1] < 0.999  # different sentences are not scored as the same
    assert out["mean_cosine"] == pytest.approx(sum(out["per_sample"]) / 2, abs=1e-6)
    # padding does not leak into the pooled embedding: one sentence per batch (no padding) scores the same
    alone = embedding_similarity(refs, preds, path, batch_size=1)
    assert alone["per_sample"] == pytest.approx(out["per_sample"], abs=1e-5)
    with pytest.raises(EvaluationInputError, match="does not exist"):
        embedding_similarity(["a"], ["b"], tmp_path / "nope")


# -- references: human labels and pseudo-labels named, scored apart; nothing to score fails
def _dataset(root: Path, records: list[dict]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    _write(root / "annotations.jsonl", [{"split": "test", **r} for r in records])
    return root


MIXED = [  # a-c: a person's label (and a pseudo-label); d-f: the builder's pseudo-label only
    {"id": "a", "label": "happy", "pseudo_label": "happy"}, {"id": "b", "label": "sad", "pseudo_label": "sad"},
    {"id": "c", "label": "angry", "pseudo_label": "neutral"}, {"id": "d", "label": None, "pseudo_label": "happy"},
    {"id": "e", "label": None, "pseudo_label": "neutral"}, {"id": "f", "label": None, "pseudo_label": "sad"},
]
MIXED_PREDS = [{"id": "a", "label": "happy"}, {"id": "b", "label": "happy"}, {"id": "c", "label": "neutral"},
               {"id": "d", "label": "happy"}, {"id": "e", "label": "neutral"}, {"id": "f", "label": "angry"}]


def test_mixed_references_are_named_and_scored_apart(tmp_path, capsys) -> None:
    data = _dataset(tmp_path / "ds", MIXED)
    preds = _write(tmp_path / "p.jsonl", MIXED_PREDS)
    out = tmp_path / "o"
    assert cli.main(["evaluate", "--predictions", str(preds), "--references", str(data), "--out", str(out),
                     "evaluate.proxies=false"]) == 0
    shown = capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())
    assert m["references"]["counts"] == {"label": 3, "pseudo_label": 3} and m["references"]["headline"] == "label"
    # the headline: human labels only (a right, b wrong, c wrong); pseudo-labels apart (d, e right; f wrong)
    assert m["classification"]["n"] == 3 and m["classification"]["war"] == pytest.approx(1 / 3)
    assert set(m["by_reference"]) == {"label", "pseudo_label"}
    assert m["by_reference"]["pseudo_label"]["classification"]["war"] == pytest.approx(2 / 3)
    assert "references: human labels (3) and pseudo-labels (3; the dataset builder's, not human ground truth), " \
           "scored separately" in shown
    assert "merr vs human labels: n=3 WAR=33.33" in shown and "merr vs pseudo-labels: n=3 WAR=66.67" in shown
    md = (out / "report.md").read_text()
    assert "## Classification: against human labels (3)" in md
    assert "## Classification: against pseudo-labels (3; the dataset builder's, not human ground truth)" in md
    assert (out / "confusion_pseudo_label.png").read_bytes()[:4] == b"\x89PNG"
    rows = [json.loads(x) for x in (out / "predictions_parsed.jsonl").read_text().splitlines()]
    assert [r["reference_source"] for r in rows] == ["label"] * 3 + ["pseudo_label"] * 3

    # pooled only when asked; the headline stays the human labels
    pooled = evaluate_run(load_config(None, ["evaluate.combine_sources=true", "evaluate.proxies=false"]), [preds],
                          data, tmp_path / "pooled", plots=False)
    assert pooled["by_reference"]["all"]["classification"]["war"] == pytest.approx(3 / 6)
    assert pooled["classification"]["war"] == pytest.approx(1 / 3)
    assert pooled["references"]["scored_against"].endswith("scored separately and pooled")
    # one source only
    human = evaluate_run(load_config(None, ["evaluate.reference_source=label", "evaluate.proxies=false"]), [preds],
                         data, tmp_path / "human", plots=False)
    assert "by_reference" not in human and human["classification"]["n"] == 3
    assert human["references"]["without_reference"] == 3 and human["references"]["available"] == {
        "label": 3, "pseudo_label": 6}
    pseudo = evaluate_run(load_config(None, ["evaluate.reference_source=pseudo_label", "evaluate.proxies=false"]),
                          [preds], data, tmp_path / "pseudo", plots=False)  # a, c, d, e right; b, f wrong
    assert pseudo["references"]["counts"] == {"pseudo_label": 6} and pseudo["classification"]["war"] == 4 / 6

    # --compare names what each run was scored against, and warns when they differ
    capsys.readouterr()
    assert cli.main(["evaluate", "--compare", str(tmp_path / "human"), str(tmp_path / "pseudo")]) == 0
    table = capsys.readouterr().out
    assert "| references | human labels | pseudo-labels (the dataset builder's, not human ground truth) |" in table
    assert "scored against different references" in table


def test_prediction_rows_carry_their_references(tmp_path) -> None:
    """`emollm predict` / `emollm baseline predict` rows: gt + gt_source, scored without --references."""
    rows = [{"id": "a", "text": "happy", "gt": "happy", "gt_source": "label"},
            {"id": "b", "text": "sad", "gt": "happy", "gt_source": "label"},
            {"id": "c", "text": "sad", "gt": "sad", "gt_source": "pseudo_label"},
            {"id": "d", "text": "angry", "gt": "happy"}]  # no gt_source: a person's label
    m = evaluate_run(load_config(), [_write(tmp_path / "p.jsonl", rows)], None, tmp_path / "o", plots=False)
    assert m["references"]["counts"] == {"label": 3, "pseudo_label": 1}
    assert m["classification"]["war"] == pytest.approx(1 / 3)
    assert m["by_reference"]["pseudo_label"]["classification"]["war"] == 1.0
    rows[0]["gt_source"] = "robot"
    with pytest.raises(EvaluationInputError, match="'a': unknown reference source 'robot'"):
        evaluate_run(load_config(), [_write(tmp_path / "q.jsonl", rows)], None, tmp_path / "o2", plots=False)


def test_a_dataset_without_human_labels(tmp_path, capsys) -> None:
    data = _dataset(tmp_path / "ds", [r for r in MIXED if r["label"] is None])
    preds = _write(tmp_path / "p.jsonl", MIXED_PREDS[3:])
    argv = ["evaluate", "--predictions", str(preds), "--references", str(data), "--no-plots"]
    assert cli.main([*argv, "--out", str(tmp_path / "auto")]) == 0  # auto: the pseudo-labels, said out loud
    shown = capsys.readouterr().out
    assert "references: pseudo-labels (3; the dataset builder's, not human ground truth)" in shown
    assert "merr vs pseudo-labels: n=3 WAR=66.67" in shown and "note: pseudo-labels are the dataset builder's" in shown
    assert "agreement with the dataset builder's pseudo-labels" in (tmp_path / "auto" / "report.md").read_text()

    assert cli.main([*argv, "--out", str(tmp_path / "human"), "evaluate.reference_source=label"]) == 2
    err = capsys.readouterr().err
    assert "nothing to score" in err and "hint: 3 clip(s) have a pseudo-label only; " \
           "evaluate.reference_source=auto" in err
    assert not (tmp_path / "human" / "metrics.json").exists()

    bare = _dataset(tmp_path / "bare", [{"id": r["id"], "label": None, "pseudo_label": None} for r in MIXED[3:]])
    assert cli.main(["evaluate", "--predictions", str(preds), "--references", str(bare), "--out",
                     str(tmp_path / "bare_out")]) == 2
    assert "nothing to score" in capsys.readouterr().err


def test_a_label_set_file_through_evaluate(tmp_path, capsys) -> None:
    own = tmp_path / "lab.yaml"
    own.write_text("name: lab\nlabels: [calm, joy, annoyed]\nsynonyms: {annoyed: [grumpy]}\n", encoding="utf-8")
    refs = tmp_path / "r.csv"
    refs.write_text("id,label\na,calm\nb,joy\nc,annoyed\nd,grumpy\n", encoding="utf-8")
    preds = _write(tmp_path / "p.jsonl", [{"id": "a", "text": "She is calm."}, {"id": "b", "text": "joy"},
                                          {"id": "c", "text": "He is grumpy."}, {"id": "d", "text": "calm"}])
    out = tmp_path / "o"
    assert cli.main(["evaluate", "--predictions", str(preds), "--references", str(refs), "--out", str(out),
                     "--label-set", str(own), "--no-plots", "evaluate.parse=synonym", "evaluate.fallback_label=null"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["label_set"] == {"name": "lab", "labels": ["calm", "joy", "annoyed"], "path": str(own)}
    assert m["classification"]["war"] == pytest.approx(3 / 4)  # d: 'grumpy' is annoyed, the answer calm
    assert m["classification"]["per_class"]["annoyed"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3),
                                                           "support": 2}
    assert f"from `{own}`" in (out / "report.md").read_text()
    assert "lab vs human labels: n=4 WAR=75.00" in capsys.readouterr().out
    assert cli.main(["evaluate", "--predictions", str(preds), "--references", str(refs), "--out", str(out),
                     "--label-set", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert "'evaluate.label_set' (from command line)" in err and "shipped label sets: caer, dfew" in err
