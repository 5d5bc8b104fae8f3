"""AU -> emotion pseudo-labels from a rules table (YAML data: ``merr_au_rules.yaml`` beside this file).

For each rule (emotion -> AU set, optional ``absent`` AUs that veto it, optional ``unilateral``), with
the AUs active at the peak frame: the source's own presence flags where it has them (OpenFace's
``AUxx_c``, honoured even below intensity 1), else intensity >= the table's ``presence_threshold``:

- ``fraction`` = active rule AUs / rule AUs; the rule *fires* when ``fraction >= min_fraction``,
  at least ``min(min_active, len(aus))`` AUs are active and no ``absent`` AU is active;
- a rule may ``require`` AUs (happy: AU12) and override ``min_fraction`` / ``min_active``;
- ``unilateral`` rules (contempt: R12 + R14, EMFACS) also need one-sided evidence at the peak
  (``evidence["mouth_asymmetry"]`` >= the presence threshold); a source that cannot tell sides never
  fires them;
- ``score`` = fraction x mean intensity of the rule's active AUs / 5 (0-1); an AU the source marks
  present below intensity 1 counts as 1 (a trace, FACS "A").

The label is the fired rule with the highest score whose emotion exists in the run's label set
(``emollm.dataset.label_sets``; rules for emotions outside the set are skipped, so the next best fired rule
inside it wins), ties to the table order; ``neutral`` when none fires. Confidence (0-1):
``score1 x (0.5 + 0.5 x (score1 - score2) / score1)`` with score2 the runner-up in the set: a
clear winner keeps its score, a tie halves it. Neutral: ``1 - max intensity at the peak / 5``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from emollm.config.loader import safe_load_unique, yaml_problem
from emollm.dataset.aus import AU_INTENSITY_MAX, MERR_AUS
from emollm.dataset.label_sets import LabelSet
from emollm.errors import ConfigError

DEFAULT_RULES = Path(__file__).resolve().parent / "merr_au_rules.yaml"


@dataclass(frozen=True)
class Rule:
    emotion: str
    aus: tuple[str, ...]
    absent: tuple[str, ...] = ()
    unilateral: bool = False
    require: tuple[str, ...] = ()  # AUs that must be active (happy: AU12)
    min_fraction: float | None = None  # per-rule override of the table's
    min_active: int | None = None


@dataclass(frozen=True)
class RuleTable:
    name: str
    version: int
    presence_threshold: float
    min_fraction: float
    min_active: int
    rules: tuple[Rule, ...]
    digest: str

    @property
    def provenance(self) -> str:
        return f"{self.name}/{self.version}"


@functools.lru_cache(maxsize=8)
def load_rules(path: str | os.PathLike[str] | None = None) -> RuleTable:
    """The rules table at ``path`` (default: the shipped MERR table); bad tables raise ConfigError."""
    path = Path(path) if path else DEFAULT_RULES
    try:
        text = path.read_text(encoding="utf-8")
        data = safe_load_unique(text) or {}
    except OSError as e:
        raise ConfigError(f"cannot read the AU rules table {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"AU rules table {path}{yaml_problem(e)}") from None
    rules = []
    for emotion, spec in (data.get("rules") or {}).items():
        spec = spec if isinstance(spec, dict) else {"aus": spec}
        aus = tuple(str(a).upper() for a in spec.get("aus", ()))
        absent = tuple(str(a).upper() for a in spec.get("absent", ()))
        unknown = [a for a in (*aus, *absent) if a not in MERR_AUS]
        if not aus or unknown:
            raise ConfigError(f"{path}: rule '{emotion}' needs AUs from {list(MERR_AUS)}; unknown: {unknown or 'none given'}")
        require = tuple(str(a).upper() for a in spec.get("require", ()))
        if any(a not in aus for a in require):
            raise ConfigError(f"{path}: rule '{emotion}': require {list(require)} must be among its aus {list(aus)}")
        rules.append(Rule(str(emotion).lower(), aus, absent, bool(spec.get("unilateral", False)), require,
                          float(spec["min_fraction"]) if "min_fraction" in spec else None,
                          int(spec["min_active"]) if "min_active" in spec else None))  # fmt: skip
    if not rules:
        raise ConfigError(f"{path}: no rules")
    return RuleTable(
        name=str(data.get("name", path.stem)),
        version=int(data.get("version", 1)),
        presence_threshold=float(data.get("presence_threshold", 1.0)),
        min_fraction=float(data.get("min_fraction", 0.5)),
        min_active=int(data.get("min_active", 2)),
        rules=tuple(rules),
        digest=hashlib.sha256(text.encode()).hexdigest()[:16],
    )


@dataclass(frozen=True)
class PseudoLabel:
    label: str  # in the label set
    rule: str  # the rule's own emotion (or "neutral")
    confidence: float
    scores: dict[str, float]  # every rule's score (0 when it did not fire)


def pseudo_label(aus_at_peak: dict[str, float], table: RuleTable, label_set: LabelSet, *,
                 present: Iterable[str] | None = None, evidence: dict[str, float] | None = None) -> PseudoLabel:
    """The rule label at the peak. ``present``: the AUs the source marks present there (None: by
    the table's threshold); ``evidence``: extra measurements (``mouth_asymmetry``, 0-5)."""
    if present is None:
        active = {au for au, v in aus_at_peak.items() if v >= table.presence_threshold}
    else:
        active = set(present)
    evidence = evidence or {}
    one_sided = float(evidence.get("mouth_asymmetry", 0.0)) >= table.presence_threshold
    scores: dict[str, float] = {}
    fired: list[tuple[float, int, str]] = []
    for order, rule in enumerate(table.rules):
        hits = [au for au in rule.aus if au in active]
        fraction = len(hits) / len(rule.aus)
        min_fraction = table.min_fraction if rule.min_fraction is None else rule.min_fraction
        min_active = table.min_active if rule.min_active is None else rule.min_active
        fires = (
            fraction >= min_fraction
            and len(hits) >= min(min_active, len(rule.aus))
            and all(au in active for au in rule.require)
            and not any(au in active for au in rule.absent)
            and (one_sided or not rule.unilateral)
        )
        level = [max(float(aus_at_peak.get(a, 0.0)), 1.0) for a in hits]
        score = fraction * (sum(level) / len(hits) / AU_INTENSITY_MAX) if fires else 0.0
        scores[rule.emotion] = round(score, 4)
        if fires and label_set.normalize(rule.emotion) is not None:
            fired.append((score, order, rule.emotion))
    fired.sort(key=lambda t: (-t[0], t[1]))
    neutral = label_set.normalize("neutral") or label_set.labels[0]
    if not fired:
        peak_max = max(aus_at_peak.values(), default=0.0)
        return PseudoLabel(neutral, "neutral", round(1.0 - peak_max / AU_INTENSITY_MAX, 4), scores)
    s1, _, emotion = fired[0]
    s2 = fired[1][0] if len(fired) > 1 else 0.0
    conf = s1 * (0.5 + 0.5 * (s1 - s2) / s1) if s1 > 0 else 0.0
    return PseudoLabel(label_set.normalize(emotion) or neutral, emotion, round(conf, 4), scores)


def rules_fingerprint(table: RuleTable) -> str:
    return json.dumps([table.name, table.version, table.digest])
