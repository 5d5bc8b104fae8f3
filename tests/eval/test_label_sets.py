"""Label sets per benchmark and synonyms (shared by the builder and the evaluator)."""

import pytest

from emollm.dataset.label_sets import available, load_label_set
from emollm.errors import ConfigError


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


SHIPPED = {
    "merr": ("neutral", "happy", "sad", "worried", "angry", "surprise", "fear", "contempt", "doubt"),
    "dfew": ("happy", "sad", "neutral", "angry", "surprise", "disgust", "fear"),
    "mer2023": ("neutral", "angry", "happy", "sad", "worried", "surprise"),
    "meld": ("neutral", "joy", "sadness", "anger", "surprise", "fear", "disgust"),
    "iemocap4": ("neutral", "happy", "sad", "angry"),
    "iemocap6": ("neutral", "happy", "sad", "angry", "excited", "frustrated"),
    "mafw": ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise", "contempt", "anxiety", "helplessness",
             "disappointment"),
    "caer": ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"),
}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_each_shipped_set_loads_with_its_labels(name):
    labels = load_label_set(name)
    assert labels.labels == SHIPPED[name] and labels.name == name and labels.shipped
    assert labels.describe() == {"name": name, "labels": list(SHIPPED[name])}  # no path for a shipped set
    assert load_label_set(name.upper()) == labels
    assert sorted(available()) == sorted(SHIPPED)


@pytest.mark.parametrize("word, expected", [
    # IEMOCAP-4 merges excited into happy and drops frustrated; IEMOCAP-6 keeps both apart
    ("excited", {"iemocap4": "happy", "iemocap6": "excited", "merr": "happy", "mafw": "happy"}),
    ("thrilled", {"iemocap4": "happy", "iemocap6": "excited", "merr": "happy", "mafw": "happy"}),
    ("glad", {"iemocap4": "happy", "iemocap6": "happy", "merr": "happy", "mafw": "happy"}),
    ("frustrated", {"iemocap4": None, "iemocap6": "frustrated", "merr": "angry", "mafw": "angry"}),
    ("furious", {"iemocap4": "angry", "iemocap6": "angry", "merr": "angry", "mafw": "angry"}),
    # the corpus's own abbreviations
    ("exc", {"iemocap4": "happy", "iemocap6": "excited", "merr": None, "mafw": None}),
    ("fru", {"iemocap4": None, "iemocap6": "frustrated", "merr": None, "mafw": None}),
    # MAFW's finer classes; its own spellings of the basic ones
    ("anxious", {"iemocap4": None, "iemocap6": None, "merr": "worried", "mafw": "anxiety"}),
    ("nervous", {"iemocap4": None, "iemocap6": None, "merr": "worried", "mafw": "anxiety"}),
    ("disappointed", {"iemocap4": "sad", "iemocap6": "sad", "merr": "sad", "mafw": "disappointment"}),
    ("unhappy", {"iemocap4": "sad", "iemocap6": "sad", "merr": "sad", "mafw": "sad"}),
    ("helpless", {"iemocap4": None, "iemocap6": None, "merr": None, "mafw": "helplessness"}),
    ("happiness", {"iemocap4": "happy", "iemocap6": "happy", "merr": "happy", "mafw": "happy"}),
    ("anger", {"iemocap4": "angry", "iemocap6": "angry", "merr": "angry", "mafw": "angry"}),
])
def test_finer_emotions_go_to_the_finer_label_only_where_the_set_has_one(word, expected):
    assert {name: load_label_set(name).normalize(word) for name in expected} == expected


def test_caer_reads_its_own_capitalised_names():
    caer = load_label_set("caer")
    assert [caer.normalize(w) for w in ("Anger", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise")] == [
        "angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]


def test_a_label_set_file(tmp_path):
    path = tmp_path / "lab.yaml"
    path.write_text("labels: [Calm, joy, annoyed, bored]\nsynonyms: {bored: [uninterested, meh]}\n"
                    "outside: [frustrated]\n", encoding="utf-8")
    own = load_label_set(str(path))
    assert own.name == "lab" and own.labels == ("calm", "joy", "annoyed", "bored") and not own.shipped
    assert own.describe() == {"name": "lab", "labels": ["calm", "joy", "annoyed", "bored"], "path": str(path)}
    assert [own.normalize(w) for w in ("meh", "glad", "calm", "Bored", "frustration", "table")] == [
        "bored", "joy", "calm", "bored", None, None]
    # a label that is a synonym of a canonical emotion takes that emotion's words ('calm' means neutral)
    assert own.normalize("neutral") == own.normalize("expressionless") == "calm"
    path.write_text("name: lab2\nlabels: [calm, joy]\n", encoding="utf-8")  # an edited file is read again
    assert load_label_set(path).labels == ("calm", "joy") and load_label_set(path).name == "lab2"


@pytest.mark.parametrize("content, message", [
    ("labels: [a, b\n", "invalid YAML"),
    ("- a\n- b\n", "expected a mapping"),
    ("", "an empty file"),
    ("name: x\n", "'labels' must be a non-empty list"),
    ("labels: []\n", "'labels' must be a non-empty list"),
    ("labels: [a, A]\n", "repeated label"),
    ("labels: [a, b]\nsynonym: {a: [x]}\n", "unknown key"),
    ("labels: [a, b]\nsynonyms: {c: [x]}\n", "synonyms of 'c'"),
])
def test_bad_label_set_files_say_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match=message) as info:
        load_label_set(str(path))
    assert str(path) in info.value.message and "shipped label sets: caer, dfew," in info.value.hint


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ConfigError, match="not found") as info:
        load_label_set(str(tmp_path / "nope.yaml"))
    assert "iemocap4" in info.value.hint
    with pytest.raises(ConfigError, match="it is a folder"):
        load_label_set(str(tmp_path) + "/")


# -- config: data.label_set / evaluate.label_set take a shipped name or a YAML path, checked at load
def test_config_takes_a_shipped_name_or_a_yaml_path(tmp_path, monkeypatch):
    from emollm import config as cfglib

    (tmp_path / "sets").mkdir()
    (tmp_path / "sets" / "mine.yaml").write_text("labels: [calm, joy]\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    cfg = cfglib.load(None, ["data.label_set=IEMOCAP6", "evaluate.label_set=sets/mine.yaml"])
    assert cfg.data.label_set == "iemocap6"
    assert cfg.evaluate.label_set == str(tmp_path / "sets" / "mine.yaml")  # made absolute
    assert cfg.eval_label_set == str(tmp_path / "sets" / "mine.yaml")
    saved = cfglib.save_resolved(cfg, tmp_path / "run")
    monkeypatch.chdir(tmp_path / "run")  # the saved config reads the same file from elsewhere
    assert load_label_set(cfglib.load(saved).eval_label_set).labels == ("calm", "joy")
    config_file = tmp_path / "run.yaml"
    config_file.write_text("data: {label_set: mafw}\n", encoding="utf-8")
    assert cfglib.load(config_file).eval_label_set == "mafw"


@pytest.mark.parametrize("override, key, message", [
    ("data.label_set=dfw", "data.label_set", "unknown label set 'dfw'"),
    ("evaluate.label_set=iemocap", "evaluate.label_set", "unknown label set 'iemocap'"),
    ("evaluate.label_set=missing/set.yaml", "evaluate.label_set", "not found"),
])
def test_config_rejects_a_bad_label_set_naming_the_key(override, key, message):
    from emollm import config as cfglib

    with pytest.raises(ConfigError) as info:
        cfglib.load(None, [override])
    assert f"'{key}' (from command line)" in info.value.message and message in info.value.message
    assert "shipped label sets: caer, dfew, iemocap4, iemocap6, mafw, meld, mer2023, merr" in info.value.hint


def test_config_rejects_an_invalid_label_set_file(tmp_path):
    from emollm import config as cfglib

    bad = tmp_path / "bad.yaml"
    bad.write_text("labels: [a, a]\n", encoding="utf-8")
    config_file = tmp_path / "run.yaml"
    config_file.write_text(f"data: {{label_set: '{bad}'}}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        cfglib.load(config_file)
    assert f"'data.label_set' (from {config_file})" in info.value.message and "repeated label" in info.value.message


def test_a_label_set_file_with_a_duplicate_key_is_refused(tmp_path):
    from emollm.dataset.label_sets import load_label_set

    path = tmp_path / "dup.yaml"
    path.write_text("name: mine\nlabels: [happy, sad]\nlabels: [angry]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"dup.yaml \(line 3, column 1\): invalid YAML: duplicate key 'labels'"):
        load_label_set(str(path))
