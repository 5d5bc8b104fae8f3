"""The one implementation behind the local ``evaluate`` metric modules in ``eval/metrics/<name>/``.

Each module file there only names its metric and the keys it returns; ``evaluate.load(path)`` finds the
``evaluate.Metric`` subclass this factory makes. Inputs are label strings:
``compute(predictions=[...], references=[...], labels=[...])``; ``labels`` (a label set's labels, fixing
the class order) defaults to the sorted labels seen in references and predictions; a prediction outside
``labels`` (e.g. ``"<invalid>"``) counts as wrong.
"""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import evaluate

from eval.classification import classification_metrics

_KWARGS = "predictions: list of str; references: list of str; labels: optional list of str (class order)."


def classification_metric(class_name: str, description: str, keys: Sequence[str]) -> type[evaluate.Metric]:
    """An ``evaluate.Metric`` subclass returning ``keys`` of :func:`classification_metrics`."""

    def _info(self):
        return evaluate.MetricInfo(
            description=description,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, labels=None):
        labels = list(labels) if labels is not None else sorted(set(references) | set(predictions))
        preds = [p if p in labels else None for p in predictions]
        m = classification_metrics(references, preds, labels)
        return {k: m[k] for k in keys}

    return type(class_name, (evaluate.Metric,), {"_info": _info, "_compute": _compute, "__doc__": description})
