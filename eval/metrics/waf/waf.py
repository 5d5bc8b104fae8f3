"""WAF (support-weighted F1) as a local `evaluate` metric: ``evaluate.load("<repo>/eval/metrics/waf")`` (no hub).

Inputs are label strings: ``compute(predictions=[...], references=[...], labels=[...])``; ``labels`` (a
label set's labels, fixing the class order) defaults to the sorted labels seen in the references and
predictions. A prediction outside ``labels`` (e.g. ``"<invalid>"``) is wrong.
"""

import datasets
import evaluate

from eval.classification import classification_metrics

_DESCRIPTION = "WAF (support-weighted F1)"
_KWARGS = "predictions: list of str; references: list of str; labels: optional list of str (class order)."


class Waf(evaluate.Metric):
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
        return {"waf": m["waf"]}
