"""What a score was computed against: human labels, pseudo-labels, or both, scored apart.

A clip's reference label has a *source*: ``label`` (a person's: the dataset's ground truth, a references
file's label column) or ``pseudo_label`` (the dataset builder's, fused from AUs and cues: not ground
truth). ``evaluate.reference_source`` picks which count: ``auto`` (a human label where the clip has one,
else its pseudo-label), ``label`` (human labels only) or ``pseudo_label`` (pseudo-labels only). Sources
are never pooled silently: each is scored on its own (:func:`groups`); the pooled ``all`` group is added
only when asked (``evaluate.combine_sources=true``). The headline (``classification`` in metrics.json,
``eval_war`` ... in a training log) is the human-label group when there is one, else the pseudo-label one.

Shared by ``emollm evaluate`` (:mod:`eval.runner`), evaluation during training (LLM and baselines)
and ``emollm predict`` / ``emollm baseline predict`` rows (``gt`` + ``gt_source``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from emollm.errors import EvaluationInputError

LABEL, PSEUDO, ALL = "label", "pseudo_label", "all"
SOURCES = (LABEL, PSEUDO)
POLICIES = ("auto", LABEL, PSEUDO)
NAMES = {LABEL: "human labels", PSEUDO: "pseudo-labels", ALL: "human labels and pseudo-labels pooled"}
NOTES = {PSEUDO: "the dataset builder's, not human ground truth"}
_ALIASES = {"label": LABEL, "human": LABEL, "gt": LABEL, "ground_truth": LABEL, "manual": LABEL, "reviewed": LABEL,
            "pseudo_label": PSEUDO, "pseudo": PSEUDO, "pseudo-label": PSEUDO, "builder": PSEUDO}


def source_of(value: Any, where: str = "") -> str:
    """A declared source (``gt_source``: label, human, pseudo_label, pseudo, ...) as ``label`` / ``pseudo_label``;
    none declared: ``label`` (a reference given by the user is taken as a person's)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return LABEL
    found = _ALIASES.get(str(value).strip().lower())
    if found is None:
        raise EvaluationInputError(f"{where}unknown reference source {value!r}",
                                   hint="gt_source is 'label' (a person's label) or 'pseudo_label' (the builder's)")
    return found


def pick(label: str | None, source: str | None, pseudo: str | None, policy: str = "auto") -> tuple[str | None, str | None]:
    """The reference label a clip is scored against under ``policy`` and its source, or (None, None).

    ``label`` / ``source``: the clip's reference label and where it came from; ``pseudo``: a separate
    pseudo-label (a built dataset's record has both fields)."""
    label = label if label is not None and str(label).strip() else None
    pseudo = pseudo if pseudo is not None and str(pseudo).strip() else None
    source = source or LABEL
    if policy == PSEUDO:
        if pseudo is not None:
            return pseudo, PSEUDO
        return (label, PSEUDO) if label is not None and source == PSEUDO else (None, None)
    if label is not None and (policy == "auto" or source == LABEL):
        return label, source
    if label is None and pseudo is not None and policy == "auto":
        return pseudo, PSEUDO
    return None, None


def of_record(record: Mapping[str, Any], policy: str = "auto") -> tuple[str | None, str | None]:
    """A built dataset record's reference (``label``: a person's; ``pseudo_label``: the builder's)."""
    return pick(record.get("label"), LABEL, record.get("pseudo_label"), policy)


def available(label: str | None, source: str | None, pseudo: str | None) -> set[str]:
    """The sources a clip has a reference label from, whatever the policy."""
    out = set()
    if label is not None and str(label).strip():
        out.add(source or LABEL)
    if pseudo is not None and str(pseudo).strip():
        out.add(PSEUDO)
    return out


def groups(sources: Sequence[str | None], combine: bool = False) -> dict[str, list[int]]:
    """Indices of the scored items per source (human labels first; sources without items left out),
    plus ``all`` (every item) when there are several sources and ``combine``."""
    out = {s: [i for i, x in enumerate(sources) if x == s] for s in SOURCES}
    out = {s: idx for s, idx in out.items() if idx}
    if combine and len(out) > 1:
        out[ALL] = [i for i, x in enumerate(sources) if x in SOURCES]
    return out


def headline(grouped: Mapping[str, Any]) -> str | None:
    """The group a single number reports: human labels when scored, else pseudo-labels."""
    return next((s for s in SOURCES if s in grouped), None)


def name(source: str, n: int | None = None) -> str:
    """``human labels (12)``, ``pseudo-labels (5; the dataset builder's, not human ground truth)``."""
    inside = "; ".join(x for x in (None if n is None else str(n), NOTES.get(source)) if x)
    return NAMES[source] + (f" ({inside})" if inside else "")


def describe(counts: Mapping[str, int], combined: bool = False) -> str:
    """One phrase naming what was scored against, e.g. ``human labels (12) and pseudo-labels (5; ...),
    scored separately``; ``no reference label`` when none."""
    parts = [name(s, counts[s]) for s in SOURCES if counts.get(s)]
    if not parts:
        return "no reference label"
    if len(parts) == 1:
        return parts[0]
    return " and ".join(parts) + (", scored separately" + (" and pooled" if combined else ""))


def nothing_scored_hint(policy: str, present: Mapping[str, int]) -> str:
    """What to do when no reference label was usable under ``policy``, given the sources the clips have."""
    if policy == LABEL and present.get(PSEUDO):
        return (f"{present[PSEUDO]} clip(s) have a pseudo-label only; evaluate.reference_source=auto (or "
                "pseudo_label) scores against the builder's pseudo-labels, reported as such")
    if policy == PSEUDO and present.get(LABEL):
        return (f"{present[LABEL]} clip(s) have a human label; evaluate.reference_source=auto (or label) "
                "scores against them")
    return ("give references with a label: --references FILE (CSV/JSONL with id,label) or a built dataset whose "
            "records have a label or pseudo_label (emollm build --labels CSV, emollm review)")


__all__ = ["ALL", "LABEL", "NAMES", "POLICIES", "PSEUDO", "SOURCES", "available", "describe", "groups", "headline",
           "name", "nothing_scored_hint", "of_record", "pick", "source_of"]
