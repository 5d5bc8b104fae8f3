"""Emotion classification: WAR, UAR, WAF, macro F1 and per-class scores as a local `evaluate` metric: ``evaluate.load("<repo>/eval/metrics/emotion_classification")`` (no hub).

Inputs are label strings: ``compute(predictions=[...], references=[...], labels=[...])``; ``labels`` (a
label set's labels, fixing the class order) defaults to the sorted labels seen in the references and
predictions. A prediction outside ``labels`` (e.g. ``"<invalid>"``) is wrong. Returns war, uar, waf, macro_f1 and per_class.
"""

import datasets
import evaluate

from eval.classification import classification_metrics

_DESCRIPTION = "Emotion classification: WAR, UAR, WAF, macro F1 and per-class scores"
_KWARGS = "predictions: list of str; references: list of str; labels: optional list of str (class order)."


class EmotionClassification(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, labels=None):
        if labels is None:
            labels = sorted(set(references) | set(predictions))
        labels = list(labels)
        preds = [p if p in labels else None for p in predictions]
        m = classification_metrics(references, preds, labels)
        return {k: m[k] for k in ("war", "uar", "waf", "macro_f1", "per_class")}
