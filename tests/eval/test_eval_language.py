"""Chinese throughout evaluation, the field's files read as they are, and runs that can score nothing."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from emollm.config import load as load_config
from emollm.errors import EvaluationInputError
from emollm.testing.chat_server import ScriptedChatServer
from eval import io
from eval.emer import load_prompts, parse_score
from eval.proxies import emotion_word_set_metrics, emotion_words
from eval.runner import evaluate_run


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


# AffectGPT EMER v1 (dataset-v1/gt-eng.csv, gt-chi.csv: names, emotions, subtitles, reasons) and v2
# (dataset-v2/final-EMER-reason.csv: names/name, chinese, english), as their README documents them
GT_ENG = ("names,emotions,subtitles,reasons\n"
          'sample_00000001,happy,"I passed!","She smiles broadly and her voice is bright, so she is happy."\n'
          'sample_00000002,angry,"Get out!","He frowns and shouts; he is angry."\n')
GT_CHI = ("names,emotions,subtitles,reasons\n"
          'sample_00000001,happy,我考上了,她面带笑容，语气轻快，情绪是开心。\n'
          'sample_00000002,angry,出去,他眉头紧皱，大声呵斥，表现出愤怒。\n')
V2 = ("name,chinese,english\n"
      'sample_00000001,她面带笑容，语气轻快，情绪是开心。,"She smiles, her voice is light: she is happy."\n'
      'sample_00000002,他眉头紧皱，大声呵斥，表现出愤怒。,"He frowns and shouts: he is angry."\n')


def test_affectgpt_emer_files_read_as_they_are(tmp_path) -> None:
    (tmp_path / "gt-eng.csv").write_text(GT_ENG, encoding="utf-8")
    refs = io.read_references(tmp_path / "gt-eng.csv")
    assert [(r.id, r.label) for r in refs] == [("sample_00000001", "happy"), ("sample_00000002", "angry")]
    assert refs[0].reasoning.startswith("She smiles")
    (tmp_path / "final-EMER-reason.csv").write_text(V2, encoding="utf-8")
    en = io.read_references(tmp_path / "final-EMER-reason.csv", language="en")
    zh = io.read_references(tmp_path / "final-EMER-reason.csv", language="zh")
    assert en[0].reasoning.startswith("She smiles") and zh[0].reasoning.startswith("她面带笑容")
    assert en[0].label is None  # v2 has no label column
    # an AffectGPT-style Chinese baseline output (names, reasons) reads as predictions
    (tmp_path / "baseline-chi.csv").write_text(GT_CHI, encoding="utf-8")
    preds = io.read_predictions(tmp_path / "baseline-chi.csv")
    assert preds[1].text.endswith("表现出愤怒。")


def test_unrecognised_files_name_the_columns_they_have(tmp_path) -> None:
    odd = tmp_path / "odd.csv"
    odd.write_text("clipname,caption\nx,hello\n", encoding="utf-8")
    with pytest.raises(EvaluationInputError, match="columns seen: clipname, caption"):
        io.read_references(odd)
    odd2 = tmp_path / "odd2.csv"
    odd2.write_text("names,caption\nx,hello\n", encoding="utf-8")
    with pytest.raises(EvaluationInputError, match="no reference column.*columns seen: names, caption"):
        io.read_references(odd2)
    with pytest.raises(EvaluationInputError, match="columns seen: names, caption"):
        io.read_predictions(odd2)


def test_chinese_run_end_to_end_reports_its_language(tmp_path) -> None:
    (tmp_path / "gt-chi.csv").write_text(GT_CHI, encoding="utf-8")
    preds = _jsonl(tmp_path / "p.jsonl", [{"id": "sample_00000001", "text": "她笑得很开心，并不难过，综上情绪为高兴。"},
                                          {"id": "sample_00000002", "text": "他没有开心的样子，而是非常生气。"}])
    m = evaluate_run(load_config(None, ["evaluate.label_set=mer2023"]), [preds], tmp_path / "gt-chi.csv",
                     tmp_path / "o", plots=False)
    assert m["parsing"]["strategy"] == "reasoning" and m["parsing"]["invalid"] == 0
    assert m["classification"]["war"] == 1.0
    assert m["language"]["scored"] == "zh" and m["language"]["predictions"] == {"zh": 2}
    ws = m["reasoning"]["proxy_emotion_word_set"]
    assert ws["n"] == 2 and ws["skipped_no_reference_emotion"] == 0 and ws["f1"] == 1.0
    report = (tmp_path / "o" / "report.md").read_text(encoding="utf-8")
    assert "Language scored: **Chinese**" in report and "scored in Chinese" in report


def test_final_emer_reason_column_follows_the_predictions_language(tmp_path) -> None:
    (tmp_path / "final-EMER-reason.csv").write_text(V2, encoding="utf-8")
    zh = _jsonl(tmp_path / "zh.jsonl", [{"id": "sample_00000001", "text": "她很开心。"},
                                        {"id": "sample_00000002", "text": "他很生气。"}])
    m = evaluate_run(load_config(), [zh], tmp_path / "final-EMER-reason.csv", tmp_path / "o", plots=False)
    assert m["language"]["reference_reasoning"] == {"zh": 2} and m["reasoning"]["language"] == "zh"
    m = evaluate_run(load_config(None, ["evaluate.language=en"]), [zh], tmp_path / "final-EMER-reason.csv",
                     tmp_path / "o2", plots=False)
    assert m["language"]["reference_reasoning"] == {"en": 2} and m["reasoning"]["language"] == "en"


def test_all_skipped_emer_input_fails_with_a_hint(tmp_path) -> None:
    refs = _jsonl(tmp_path / "r.jsonl", [{"id": "a", "reasoning": "She looks at the camera and talks."},
                                         {"id": "b", "reasoning": "他在说话。"}])
    preds = _jsonl(tmp_path / "p.jsonl", [{"id": "a", "text": "She is happy."}, {"id": "b", "text": "他很开心。"}])
    with pytest.raises(EvaluationInputError, match="no reasoning scored") as err:
        evaluate_run(load_config(), [preds], refs, tmp_path / "o", plots=False)
    assert "judge" in err.value.hint
    empty = _jsonl(tmp_path / "e.jsonl", [{"id": "a", "text": ""}, {"id": "b", "text": " "}])
    refs2 = _jsonl(tmp_path / "r2.jsonl", [{"id": "a", "reasoning": "she is happy"}, {"id": "b", "reasoning": "他很生气"}])
    with pytest.raises(EvaluationInputError, match="empty text"):
        evaluate_run(load_config(), [empty], refs2, tmp_path / "o2", plots=False)
    # with labels to score, the run goes on and the report carries the warning
    refs3 = _jsonl(tmp_path / "r3.jsonl", [{"id": "a", "label": "happy", "reasoning": "She talks."},
                                           {"id": "b", "label": "happy", "reasoning": "他在说话。"}])
    m = evaluate_run(load_config(), [preds], refs3, tmp_path / "o3", plots=False)
    assert "no reasoning scored" in m["reasoning"]["warning"]
    assert "**Warning:** no reasoning scored" in (tmp_path / "o3" / "report.md").read_text(encoding="utf-8")


def test_no_label_in_any_answer_fails_with_a_hint(tmp_path) -> None:
    refs = _jsonl(tmp_path / "r.jsonl", [{"id": "a", "label": "happy"}, {"id": "b", "label": "sad"}])
    preds = _jsonl(tmp_path / "p.jsonl", [{"id": "a", "text": "I cannot tell."}, {"id": "b", "text": "She is joyful."}])
    with pytest.raises(EvaluationInputError, match="no label found in any of the 2 answer") as err:
        evaluate_run(load_config(None, ["evaluate.parse=last_word"]), [preds], refs, tmp_path / "o", plots=False)
    assert "exact" in err.value.hint
    m = evaluate_run(load_config(), [preds], refs, tmp_path / "o", plots=False)  # reasoning reads "joyful"
    assert m["parsing"]["invalid"] == 1


def test_proxies_read_chinese_and_negation() -> None:
    assert emotion_words("她并不开心，而是很焦虑") == {"worried"}
    assert emotion_words("She is not angry; she is worried.") == {"worried"}
    out = emotion_word_set_metrics(["他非常愤怒。"], ["他很生气，没有害怕。"])
    assert out["f1"] == 1.0 and out["languages"] == {"references": {"zh": 1}, "predictions": {"zh": 1}}


class _ChineseJudge(ScriptedChatServer):
    def __init__(self) -> None:
        super().__init__()
        self.prompts: list[str] = []

    def respond(self, body, headers):  # noqa: ANN001, ANN201, ARG002
        prompt = body["messages"][0]["content"]
        with self.lock:
            self.prompts.append(prompt)
        return "分数：7" if "Score: N" in prompt else "微笑，语气轻快"


def test_judge_prompts_in_chinese_chosen_by_language(tmp_path) -> None:
    en, zh = load_prompts(), load_prompts(language="zh")
    assert set(en) == set(zh) and all("{text}" in zh[k] for k in ("clue_summary", "emotion_words"))
    assert all("{reference}" in zh[k] and "{prediction}" in zh[k] and "Score: N" in zh[k]
               for k in ("clue_score", "label_score"))
    assert parse_score("分数：7") == 7.0 and parse_score("得分为 6 分") == 6.0
    srv = _ChineseJudge()
    thread = threading.Thread(target=srv.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        refs = _jsonl(tmp_path / "r.jsonl", [{"id": "a", "reasoning": "她面带笑容，情绪是开心。"}])
        preds = _jsonl(tmp_path / "p.jsonl", [{"id": "a", "text": "她笑了，很高兴。"}])
        over = ["evaluate.judge.backend=openai", f"evaluate.judge.base_url={srv.url}", "evaluate.judge.model=j",
                "evaluate.judge.api_key_env=null", "evaluate.judge.backoff_s=0"]
        m = evaluate_run(load_config(None, over), [preds], refs, tmp_path / "o", plots=False)
        assert m["reasoning"]["emer"]["language"] == "zh" and m["reasoning"]["emer"]["clue_overlap"]["mean"] == 7.0
        assert srv.prompts and all("请" in p for p in srv.prompts)
        srv.prompts.clear()
        m = evaluate_run(load_config(None, [*over, "evaluate.language=en"]), [preds], refs, tmp_path / "o2",
                         plots=False)
        assert m["reasoning"]["emer"]["language"] == "en" and all("Rate" in p or "Summarise" in p or "Extract" in p
                                                                  for p in srv.prompts)
    finally:
        srv.httpd.shutdown()
        srv.httpd.server_close()
        thread.join(timeout=5)
