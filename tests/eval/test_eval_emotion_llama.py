"""Emotion-LLaMA's own files, read as-is: its parsing rule, its EMER CSV, its printed result summary."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, recall_score

from emollm.dataset.label_parsing import parse_label
from emollm.dataset.label_sets import load_label_set
from eval.io import read_emotion_llama_result, read_predictions
from eval.report import compare_runs


@pytest.mark.parametrize("text, expected", [
    ("The emotion is happy", "happy"), ("happy.", "neutral"), ("Happy", "neutral"), ("sad and happy", "happy"),
])
def test_emotion_llama_strategy_is_its_last_token_rule(text, expected):
    parsed = parse_label(text, load_label_set("mer2023"), "emotion_llama", fallback="neutral")
    assert parsed.label == expected and parsed.valid == (expected != "neutral")


def test_emer_csv_columns_names_and_chi_reasons(tmp_path):
    path = tmp_path / "output_Emotion-LLaMA.csv"
    path.write_text("names,chi_reasons\nsample_1,\"He frowns, so he is angry.\"\n", encoding="utf-8")
    (pred,) = read_predictions(path)
    assert pred.id == "sample_1" and pred.text == "He frowns, so he is angry."


def test_result_summary_reads_as_a_run_and_compares(tmp_path):
    refs = np.array([0] * 5 + [1] * 3 + [2] * 2)
    preds = np.array([0, 0, 0, 1, 2, 1, 1, 0, 2, 2])
    cm = np.zeros((3, 3), int)
    for r, p in zip(refs, preds, strict=True):
        cm[r, p] += 1
    acc, waf = float((refs == preds).mean()), f1_score(refs, preds, average="weighted")
    body = "\n".join(" ".join(str(v) for v in row) for row in cm)
    matrix = "[[" + body.replace("\n", "]\n [") + "]]"
    (tmp_path / "MER2023.txt").write_text(
        f"Accuracy: {acc}\nPrecision: 0.5\nRecall: {acc}\nF1 Score: {waf}\n{matrix}", encoding="utf-8")
    m = read_emotion_llama_result(tmp_path / "MER2023.txt")
    cl = m["classification"]
    assert cl["war"] == pytest.approx(acc) and cl["waf"] == pytest.approx(waf) and cl["n"] == 10
    assert cl["uar"] == pytest.approx(recall_score(refs, preds, average="macro"))
    assert cl["macro_f1"] == pytest.approx(f1_score(refs, preds, average="macro"))
    table = compare_runs([tmp_path / "MER2023.txt"], out=tmp_path / "cmp")
    assert "MER2023" in table and f"{100 * acc:.2f}" in table
