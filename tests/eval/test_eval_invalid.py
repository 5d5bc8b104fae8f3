"""Invalid answers are never hidden: an all-invalid run fails, and the invalid rate stands beside every
metric a fallback label could raise (metrics.json, report.md, the printed summary)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import emollm.cli.main as cli
from emollm.config import load as load_config
from emollm.errors import EvaluationInputError
from emollm.testing.chat_server import ScriptedChatServer
from eval.runner import evaluate_run


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


class GarbageJudge(ScriptedChatServer):
    """A judge that summarises (step 1) but never gives a score (step 2)."""

    def respond(self, body, headers):  # noqa: ANN001, ANN201
        prompt = body["messages"][0]["content"]
        return "I would say they are quite similar!" if "Score: N" in prompt else "clues: a smile, a bright voice"


def test_every_judge_answer_invalid_exits_non_zero_with_an_example(tmp_path, capsys) -> None:
    refs = _write(tmp_path / "r.jsonl", [{"id": "a", "label": "happy", "reasoning": "she smiles, she is happy"},
                                         {"id": "b", "label": "sad", "reasoning": "tears, she is sad"}])
    preds = _write(tmp_path / "p.jsonl", [{"id": "a", "text": "happy: a smile"}, {"id": "b", "text": "sad: tears"}])
    with GarbageJudge().running() as srv:
        rc = cli.main(["evaluate", "--predictions", str(preds), "--references", str(refs), "--out", str(tmp_path / "o"),
                       "--no-plots", "evaluate.judge.backend=openai", f"evaluate.judge.base_url={srv.url}",
                       "evaluate.judge.model=j", "evaluate.judge.api_key_env=null", "evaluate.judge.backoff_s=0",
                       "evaluate.judge.max_retries=0"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "every EMER judge answer was invalid" in err and "4 invalid answer(s)" in err
    assert "I would say they are quite similar!" in err  # one raw reply, so the user sees what went wrong
    assert "bug" not in err
    # the report is still written, and says it
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    emer = m["reasoning"]["emer"]
    assert emer["all_invalid"] and emer["clue_overlap"]["valid"] == 0 and emer["clue_overlap"]["invalid_rate"] == 1.0
    assert "Every judge answer was invalid" in (tmp_path / "o" / "report.md").read_text()


def test_all_given_labels_invalid_is_an_error_not_a_fallback_score(tmp_path) -> None:
    # with the neutral fallback these would score UAR 50% (neutral is one of the two reference classes)
    preds = _write(tmp_path / "p.jsonl", [{"id": "a", "label": "bored"}, {"id": "b", "label": "sleepy"}])
    refs = _write(tmp_path / "r.jsonl", [{"id": "a", "label": "neutral"}, {"id": "b", "label": "happy"}])
    with pytest.raises(EvaluationInputError, match=r"all 2 predicted label\(s\) are invalid.*out_of_set.*a: 'bored'"):
        evaluate_run(load_config(), [preds], refs, tmp_path / "o", plots=False)
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_all_unparsable_texts_show_one_raw_answer(tmp_path) -> None:
    long = "Well, " + "it is hard to tell " * 20
    preds = _write(tmp_path / "p.jsonl", [{"id": "a", "text": long}, {"id": "b", "text": "no idea"}])
    refs = _write(tmp_path / "r.jsonl", [{"id": "a", "label": "neutral"}, {"id": "b", "label": "happy"}])
    with pytest.raises(EvaluationInputError, match="no label found in any of the 2") as info:
        evaluate_run(load_config(), [preds], refs, tmp_path / "o", plots=False)
    assert "a: 'Well, it is hard to tell" in info.value.message and "…'" in info.value.message  # cut to one line


def test_invalid_rate_stands_beside_every_inflatable_metric(tmp_path, capsys) -> None:
    preds = _write(tmp_path / "p.jsonl", [{"id": "a", "text": "happy", "fold": "f1"},
                                          {"id": "b", "text": "hmm", "fold": "f1"},
                                          {"id": "c", "text": "no clue", "fold": "f2"},
                                          {"id": "d", "text": "sad", "fold": "f2"}])
    refs = _write(tmp_path / "r.jsonl", [{"id": i, "label": lab} for i, lab in
                                         (("a", "happy"), ("b", "neutral"), ("c", "neutral"), ("d", "sad"))])
    out = tmp_path / "o"
    assert cli.main(["evaluate", "--predictions", str(preds), "--references", str(refs), "--out", str(out),
                     "--no-plots", "evaluate.folds=2"]) == 0
    printed = capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())
    # the fallback made both invalid answers right (references neutral): every metric is 100%
    assert m["classification"]["uar"] == 1.0 and m["classification"]["invalid_rate"] == 0.5
    assert {f: fm["invalid_rate"] for f, fm in m["folds"]["per_fold"].items()} == {"f1": 0.5, "f2": 0.5}
    md = (out / "report.md").read_text()
    for name in ("UAR", "WAR (accuracy)", "WAF (weighted F1)"):
        assert f"| {name} | 100.00 | 50.00% (2/4, mapped to 'neutral') |" in md
    assert "| invalid % |" in md
    assert "UAR=100.00" in printed and "(invalid answers 50.00%, mapped to 'neutral')" in printed
