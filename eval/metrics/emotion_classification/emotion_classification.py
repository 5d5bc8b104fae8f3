"""Emotion classification: WAR, UAR, WAF, macro F1 and per-class scores as a local `evaluate` metric: ``evaluate.load("<repo>/eval/metrics/emotion_classification")`` (no hub).

Inputs are label strings: ``compute(predictions=[...], references=[...], labels=[...])``; ``labels`` (a
label set's labels, fixing the class order) defaults to the sorted labels seen in the references and
predictions. A prediction outside ``labels`` (e.g. ``"<invalid>"``) is wrong. Returns war, uar, waf, macro_f1 and per_class.
"""

from eval.metric_modules import classification_metric

EmotionClassification = classification_metric("EmotionClassification", "Emotion classification: WAR, UAR, WAF, macro F1 and per-class scores", ("war", "uar", "waf", "macro_f1", "per_class"))
