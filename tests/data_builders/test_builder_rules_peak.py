"""Peak frame (both definitions) and AU-rule pseudo-labels (rules as data, label-set mapping)."""

from __future__ import annotations

import numpy as np
import pytest

from data_builders.au import AUSeries
from data_builders.peak import find_peak
from data_builders.rules import load_rules, pseudo_label
from emollm.dataset.aus import MERR_AUS
from emollm.dataset.label_sets import load_label_set


def _aus(**kw: float) -> dict[str, float]:
    out = dict.fromkeys(MERR_AUS, 0.0)
    out.update(kw)
    return out


def _series(rows: list[dict[str, float]], face: list[bool] | None = None) -> AUSeries:
    inten = np.array([[r.get(a, 0.0) for a in MERR_AUS] for r in rows], dtype=np.float32)
    return AUSeries(
        intensity=inten, presence=(inten >= 1).astype(np.uint8), frame_indices=np.arange(len(rows)) * 6,
        timestamps_s=np.arange(len(rows)) * 0.2, face=np.array(face or [True] * len(rows)), source="test",
    )  # fmt: skip


def test_peak_definitions_differ_as_documented():
    # AU12 is present in most frames; frame 3 has a big but one-off AU26+AU25 (talking), frame 1 the strongest smile.
    rows = [{"AU12": 1.5}, {"AU12": 3.0, "AU06": 2.0}, {"AU12": 1.2}, {"AU26": 5.0, "AU25": 5.0, "AU12": 1.0}, {"AU45": 5}]
    s = _series(rows)
    assert find_peak(s, "intensity_sum").frame_index == 18
    fa = find_peak(s, "frequent_aus", top_k=1)
    assert fa.frame_index == 6 and fa.aus == ("AU12",) and fa.timestamp_s == pytest.approx(0.2)
    assert find_peak(_series(rows, face=[True, False, True, True, True]), "frequent_aus", top_k=1).frame_index == 0
    assert find_peak(_series(rows, face=[False] * 5)) is None


def test_rules_label_confidence_and_neutral():
    table, merr = load_rules(), load_label_set("merr")
    happy = pseudo_label(_aus(AU06=3, AU12=4, AU14=2), table, merr)
    assert happy.label == "happy" and 0 < happy.confidence <= 1
    weaker = pseudo_label(_aus(AU06=1, AU12=1.2, AU14=1), table, merr)
    assert weaker.label == "happy" and weaker.confidence < happy.confidence
    assert pseudo_label(_aus(AU01=3, AU02=3, AU05=2, AU26=4), table, merr).label == "surprise"
    # contempt is EMFACS's one-sided R12 + R14: a symmetric smile is no contempt, a one-sided one is
    assert pseudo_label(_aus(AU12=3, AU14=3), table, merr).label == "happy"
    one_sided = pseudo_label(_aus(AU12=3, AU14=3), table, merr, evidence={"mouth_asymmetry": 2.5})
    assert one_sided.label == "contempt"
    neutral = pseudo_label(_aus(AU25=0.5), table, merr)
    assert neutral.label == "neutral" and neutral.rule == "neutral" and neutral.confidence == pytest.approx(0.9)


def test_a_label_outside_the_set_falls_back_to_the_best_rule_inside_it():
    table = load_rules()
    aus = _aus(AU12=3, AU14=3)  # contempt fires; happy (2 of 3) fires too, lower score
    assert pseudo_label(aus, table, load_label_set("dfew")).label == "happy"  # DFEW has no contempt
    assert pseudo_label(aus, table, load_label_set("meld")).label == "joy"  # MELD names happy "joy"
    assert pseudo_label(_aus(AU09=3, AU15=3), table, load_label_set("merr")).label == "neutral"  # MERR has no disgust
    assert pseudo_label(_aus(AU09=3, AU15=3), table, load_label_set("dfew")).label == "disgust"


def test_rules_are_data(tmp_path):
    custom = tmp_path / "rules.yaml"
    custom.write_text("version: 7\nname: mine\npresence_threshold: 2.5\nrules:\n  happy: {aus: [AU12]}\n")
    table = load_rules(custom)
    assert table.provenance == "mine/7"
    assert pseudo_label(_aus(AU12=2.0), table, load_label_set("merr")).label == "neutral"
    assert pseudo_label(_aus(AU12=3.0), table, load_label_set("merr")).label == "happy"


def test_a_talking_mouth_never_makes_the_peak():
    """At voiced frames the speech AUs (lips part, jaw drop, ...) count as absent; the smile still counts."""
    rows = [{"AU12": 2.0, "AU06": 1.5}, {"AU25": 5.0, "AU26": 5.0, "AU10": 3.0}, {"AU25": 4.0, "AU26": 4.0}, {"AU12": 1.0}]
    silent = _series(rows)
    assert find_peak(silent, "intensity_sum").frame_index == 6  # without audio the open mouth wins
    talking = _series(rows)
    talking.voiced = np.array([True, True, True, True])
    peak = find_peak(talking, "intensity_sum")
    assert peak.frame_index == 0  # speaking frames: the mouth is speech, the smile is expression
    assert find_peak(talking, "frequent_aus").frame_index == 0


def test_openface_presence_flags_are_honoured_below_intensity_one():
    """OpenFace marks most present AUs at intensity < 1: its AUxx_c decides, not the intensity."""
    table, merr = load_rules(None), load_label_set("merr")
    weak = _aus(AU01=0.6, AU02=0.5, AU05=0.4, AU26=0.7)
    assert pseudo_label(weak, table, merr).label == "neutral"  # by intensity alone: nothing active
    present = pseudo_label(weak, table, merr, present=["AU01", "AU02", "AU05", "AU26"])
    assert present.label == "surprise" and present.confidence > 0
    # a rule whose `absent` AU the source marks present does not fire, whatever the intensity
    worried = _aus(AU01=2, AU04=2, AU20=2, AU23=2, AU15=0.3)
    assert pseudo_label(worried, table, merr).label == "worried"
    assert pseudo_label(worried, table, merr, present=["AU01", "AU04", "AU20", "AU23", "AU15"]).label != "worried"


def test_a_smile_alone_is_happy_but_no_smile_is_never_happy():
    table, merr = load_rules(None), load_label_set("merr")
    assert pseudo_label(_aus(AU12=3.5), table, merr).label == "happy"  # EMFACS: AU12 alone predicts happiness
    assert pseudo_label(_aus(AU06=3, AU14=3), table, merr).label != "happy"  # cheeks + dimple without the smile
