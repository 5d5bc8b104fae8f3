"""Label sets per benchmark and emotion synonyms, as data files.

Shipped sets (the YAML files beside this module): MERR 9, DFEW 7, MER2023 6, MELD 7, IEMOCAP 4 and 6,
MAFW 11, CAER 7. A lab's own set is a YAML file given by path wherever a set is named
(``data.label_set``, ``evaluate.label_set``)::

    name: mylab                        # optional (default: the file name)
    labels: [calm, joy, annoyed, bored]
    synonyms: {bored: [uninterested]}  # optional: words of this set only, per label
    outside: [frustrated]              # optional: emotions not folded into a label by synonyms.yaml

One home for both the dataset builder (pseudo-labels) and the evaluator (label parsing).
``LabelSet.normalize("joyful")`` gives the set's own label for a word (``"happy"`` in MERR, ``"joy"``
in MELD) or None when the word is no emotion of the set. ``synonyms.yaml`` maps words to a canonical
emotion; a few finer emotions (IEMOCAP's excited / frustrated, MAFW's anxiety, helplessness,
disappointment) sit under a coarser one: a set that has the finer label gets their words, a set
without it gets the coarser emotion (IEMOCAP-4's happy takes "excited").
"""

from __future__ import annotations

import difflib
import functools
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from emollm.config.loader import safe_load_unique, yaml_problem  # a key written twice is an error, not a silent loss
from emollm.errors import ConfigError

DATA_DIR = Path(__file__).resolve().parent / "label_sets"
NOT_SETS = frozenset({"synonyms", "synonyms_zh"})  # YAML files beside the sets that are no set
# the emotion-word tables, one per language; every table maps onto the same canonical emotions
SYNONYM_FILES = {"en": "synonyms.yaml", "zh": "synonyms_zh.yaml"}
FILE_FORMAT = ("a label set file holds `labels: [a, b, ...]` (optional `name:`, `synonyms: {label: [words]}`, "
               "`outside: [words]`)")


def _add(table: dict[str, str], word: str, emotion: str) -> None:
    word = str(word).strip().lower()
    if word in table and table[word] != emotion:
        raise ValueError(f"synonyms.yaml: '{word}' is listed under both '{table[word]}' and '{emotion}'")
    table[word] = emotion


@functools.lru_cache(maxsize=1)
def _tables() -> tuple[dict[str, str], dict[str, str]]:
    """(word -> canonical emotion, word -> finer emotion) from ``synonyms.yaml``.

    A plain entry ``happy: [joy, glad, ...]`` names a canonical emotion; a mapping entry
    ``excited: {within: happy, words: [...]}`` names a finer emotion whose words also mean the
    canonical one (``within``; none: the finer emotion is canonical itself)."""
    coarse: dict[str, str] = {}
    fine: dict[str, str] = {}
    for language, file in SYNONYM_FILES.items():
        _read_table(yaml.safe_load((DATA_DIR / file).read_text(encoding="utf-8")), coarse, fine, language)
    return coarse, fine


def _read_table(data: dict, coarse: dict[str, str], fine: dict[str, str], language: str) -> None:
    if language != "en":
        unknown = sorted(str(e) for e in data if str(e).strip().lower() not in coarse and str(e).strip().lower() not in fine)
        if unknown:  # another language's table names the same emotions as the English one, never new ones
            raise ValueError(f"{SYNONYM_FILES[language]}: emotion(s) {', '.join(unknown)} not in synonyms.yaml")
    for emotion, entry in data.items():
        emotion = str(emotion).strip().lower()
        if isinstance(entry, dict):
            within = str(entry.get("within") or emotion).strip().lower()
            for word in [emotion, *entry.get("words", ())]:
                _add(fine, word, emotion)
                _add(coarse, word, within)
        else:
            for word in [emotion, *entry]:
                _add(coarse, word, emotion)


def synonyms() -> dict[str, str]:
    """word -> canonical emotion (finer emotions read as the canonical one they sit under), every
    language's table (``synonyms.yaml``: English, ``synonyms_zh.yaml``: Chinese) together."""
    return _tables()[0]


def finer_synonyms() -> dict[str, str]:
    """word -> finer emotion (``excited``, ``frustrated``, ``anxiety``, ...), for the words that have one."""
    return _tables()[1]


@dataclass(frozen=True)
class LabelSet:
    name: str
    labels: tuple[str, ...]
    words: tuple[tuple[str, str], ...] = ()  # the set's own synonyms: (word, label), checked first
    path: str | None = None  # the YAML file it was read from
    outside: tuple[str, ...] = ()  # emotions the synonym table would fold into a label, kept out (IEMOCAP-4: frustrated)

    @functools.cached_property
    def _lookup(self) -> dict[str, str]:
        """word -> this set's label, for every word of the synonym tables that reaches one."""
        coarse, fine = _tables()
        fine_of = {label: fine.get(label) for label in self.labels}
        coarse_of = {label: coarse.get(label, label) for label in self.labels}
        by_fine = {f: label for label, f in reversed(fine_of.items()) if f}
        by_coarse: dict[str, str] = {}
        for c in dict.fromkeys(coarse_of.values()):
            members = [label for label in self.labels if coarse_of[label] == c]
            plain = [label for label in members if fine_of[label] is None or fine_of[label] == c]
            if plain or len(members) == 1:  # several finer labels and no plain one: ambiguous, left out
                by_coarse[c] = (plain or members)[0]
        table = {word: by_coarse[c] for word, c in coarse.items() if c in by_coarse}
        table |= {word: by_fine[f] for word, f in fine.items() if f in by_fine}
        out = set(self.outside)
        table = {w: label for w, label in table.items() if w not in out and fine.get(w) not in out}
        table |= dict(self.words)
        table |= {label: label for label in self.labels}
        return table

    @property
    def lookup(self) -> dict[str, str]:
        """word (any language's table, the set's own synonyms, its labels) -> this set's label."""
        return self._lookup

    @property
    def by_canonical(self) -> dict[str, str]:
        """canonical emotion -> this set's label."""
        return {c: self._lookup[c] for c in dict.fromkeys(synonyms().values()) if c in self._lookup}

    @property
    def shipped(self) -> bool:
        return self.path is not None and Path(self.path).parent == DATA_DIR

    def describe(self) -> dict:
        """What reports record: name, labels and, for a set read from a file, its path."""
        out: dict = {"name": self.name, "labels": list(self.labels)}
        if self.path and not self.shipped:
            out["path"] = self.path
        return out

    def normalize(self, word: str) -> str | None:
        """This set's label for ``word`` (a label, or a synonym of one), else None."""
        return self._lookup.get(word.strip().lower())

    def __contains__(self, label: object) -> bool:
        return label in self.labels

    def __len__(self) -> int:
        return len(self.labels)


def available() -> list[str]:
    """The names of the shipped label sets."""
    return sorted(p.stem for p in DATA_DIR.glob("*.yaml") if p.stem not in NOT_SETS)


def is_path(name_or_path: str | os.PathLike) -> bool:
    """A YAML file path (``*.yaml`` / ``*.yml``, or anything with a folder in it), not a shipped name."""
    text = os.fspath(name_or_path)
    return text.lower().endswith((".yaml", ".yml")) or "/" in text or os.sep in text or text.startswith("~")


def resolve(name_or_path: str | os.PathLike) -> str:
    """A shipped set's name as is; a file path made absolute (so a saved config reads it from anywhere)."""
    if not is_path(name_or_path):
        return os.fspath(name_or_path).strip().lower()
    return str(Path(os.path.expanduser(os.fspath(name_or_path))).resolve())


def identity(name_or_path: str | os.PathLike) -> str | dict:
    """What a cache key holds for a label set: a shipped set's name; for a file, its name and contents as
    read (so editing the file changes the key)."""
    if not is_path(name_or_path):
        return resolve(name_or_path)
    s = load_label_set(name_or_path)
    return {"name": s.name, "labels": list(s.labels), "synonyms": [list(w) for w in s.words], "outside": list(s.outside)}


def _hint(extra: str | None = None) -> str:
    shipped = f"shipped label sets: {', '.join(available())}; or the path of a YAML file ({FILE_FORMAT})"
    return (f"{extra} {shipped}" if extra.endswith("?") else f"{extra}; {shipped}") if extra else shipped


def load_label_set(name_or_path: str | os.PathLike) -> LabelSet:
    """A shipped label set by name (``merr``, ``dfew``, ``iemocap4``, ...) or a YAML file by path.

    Errors (:class:`ConfigError`, its hint listing the shipped names): an unknown name, a missing or
    unreadable file, invalid YAML, no ``labels`` list, repeated labels, synonyms of unknown labels."""
    if isinstance(name_or_path, LabelSet):
        return name_or_path
    text = os.fspath(name_or_path).strip()
    if not is_path(text):
        if text.lower() not in available():
            close = difflib.get_close_matches(text.lower(), available(), n=1)
            raise ConfigError(f"unknown label set '{text}'", hint=_hint(f"did you mean '{close[0]}'?" if close else None))
        path = DATA_DIR / f"{text.lower()}.yaml"
    else:
        path = Path(resolve(text))
    if not path.is_file():
        raise ConfigError(f"label set file {path} not found" + (" (it is a folder)" if path.is_dir() else ""),
                          hint=_hint("relative paths are read from the working directory"))
    try:
        mtime = path.stat().st_mtime_ns
    except OSError as exc:
        raise ConfigError(f"cannot read label set file {path}: {exc.strerror or exc}", hint=_hint()) from None
    return _load(str(path), mtime)


@functools.lru_cache(maxsize=64)
def _load(path_text: str, mtime: int) -> LabelSet:  # mtime: an edited file is read again
    path = Path(path_text)
    try:
        data = safe_load_unique(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read label set file {path}: {exc.strerror or exc}", hint=_hint()) from None
    except UnicodeDecodeError:
        raise ConfigError(f"label set file {path} is not UTF-8 text", hint=_hint()) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"label set file {path}{yaml_problem(exc)}", hint=_hint()) from None
    if not isinstance(data, dict):
        raise ConfigError(f"label set file {path}: expected a mapping with 'labels', found "
                          f"{type(data).__name__ if data is not None else 'an empty file'}", hint=_hint())
    unknown = sorted(set(data) - {"name", "labels", "synonyms", "outside", "description"})
    if unknown:
        raise ConfigError(f"label set file {path}: unknown key(s) {', '.join(map(str, unknown))}", hint=_hint())
    raw = data.get("labels")
    if not isinstance(raw, list) or not raw or not all(isinstance(x, str | int | float) and str(x).strip() for x in raw):
        raise ConfigError(f"label set file {path}: 'labels' must be a non-empty list of words", hint=_hint())
    labels = tuple(str(label).strip().lower() for label in raw)
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ConfigError(f"label set file {path}: repeated label(s) {', '.join(repeated)}", hint=_hint())
    own = data.get("synonyms") or {}
    if not isinstance(own, dict):
        raise ConfigError(f"label set file {path}: 'synonyms' must map a label to a list of words", hint=_hint())
    words: list[tuple[str, str]] = []
    for label, extra in own.items():
        label = str(label).strip().lower()
        if label not in labels:
            raise ConfigError(f"label set file {path}: synonyms of '{label}', which is not one of its labels "
                              f"({', '.join(labels)})", hint=_hint())
        words += [(str(w).strip().lower(), label) for w in ([extra] if isinstance(extra, str) else extra or [])]
    outside = data.get("outside") or []
    if not isinstance(outside, list):
        raise ConfigError(f"label set file {path}: 'outside' must be a list of words", hint=_hint())
    return LabelSet(name=str(data.get("name") or path.stem), labels=labels, words=tuple(words), path=str(path),
                    outside=tuple(str(w).strip().lower() for w in outside))
