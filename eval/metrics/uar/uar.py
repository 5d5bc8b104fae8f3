"""UAR (unweighted average recall: mean per-class recall) as a local `evaluate` metric: ``evaluate.load("<repo>/eval/metrics/uar")`` (no hub).

Inputs are label strings: ``compute(predictions=[...], references=[...], labels=[...])``; ``labels`` (a
label set's labels, fixing the class order) defaults to the sorted labels seen in the references and
predictions. A prediction outside ``labels`` (e.g. ``"<invalid>"``) is wrong.
"""

from eval.metric_modules import classification_metric

Uar = classification_metric("Uar", "UAR (unweighted average recall: mean per-class recall)", ("uar",))
