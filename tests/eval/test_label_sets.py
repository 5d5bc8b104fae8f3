"""Label sets per benchmark and synonyms (shared by the builder and the evaluator)."""

import pytest

from emollm.errors import ConfigError
from eval.label_sets import available, load_label_set


def test_benchmark_sizes():
    sizes = {name: len(load_label_set(name)) for name in ("merr", "dfew", "mer2023", "meld")}
    assert sizes == {"merr": 9, "dfew": 7, "mer2023": 6, "meld": 7}
    assert set(available()) >= {"merr", "dfew", "mer2023", "meld"}


@pytest.mark.parametrize("word, merr, meld", [
    ("happy", "happy", "joy"), ("Joyful", "happy", "joy"), ("anger", "angry", "anger"),
    ("puzzled", "doubt", None), ("disgusted", None, "disgust"), ("table", None, None),
])
def test_synonyms_map_to_each_sets_own_label(word, merr, meld):
    assert load_label_set("merr").normalize(word) == merr
    assert load_label_set("meld").normalize(word) == meld


def test_every_label_is_its_own_canonical_form():
    for name in available():
        labels = load_label_set(name)
        assert all(labels.normalize(label) == label for label in labels.labels)


def test_unknown_label_set_suggests():
    with pytest.raises(ConfigError) as info:
        load_label_set("dfw")
    assert "dfew" in info.value.hint
