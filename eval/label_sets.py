"""Label sets per benchmark (MERR 9, DFEW 7, MER2023 6, MELD 7) and emotion synonyms, as data files.

One home for both the dataset builder (pseudo-labels) and the evaluator (label parsing): the YAML
files beside this module. ``LabelSet.normalize("joyful")`` gives the set's own label for a word
(``"happy"`` in MERR, ``"joy"`` in MELD) or None when the word is no emotion of the set.
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass
from pathlib import Path

import yaml

from emollm.errors import ConfigError

DATA_DIR = Path(__file__).resolve().parent / "label_sets"


@functools.lru_cache(maxsize=1)
def synonyms() -> dict[str, str]:
    """word -> canonical emotion."""
    table = yaml.safe_load((DATA_DIR / "synonyms.yaml").read_text(encoding="utf-8"))
    out: dict[str, str] = {}
    for canonical, words in table.items():
        for word in [canonical, *words]:
            word = str(word).strip().lower()
            if word in out and out[word] != canonical:
                raise ValueError(f"synonyms.yaml: '{word}' is listed under both '{out[word]}' and '{canonical}'")
            out[word] = canonical
    return out


@dataclass(frozen=True)
class LabelSet:
    name: str
    labels: tuple[str, ...]

    @property
    def by_canonical(self) -> dict[str, str]:
        table = synonyms()
        return {table.get(label, label): label for label in self.labels}

    def normalize(self, word: str) -> str | None:
        """This set's label for ``word`` (a label, or a synonym of one), else None."""
        word = word.strip().lower()
        if word in self.labels:
            return word
        canonical = synonyms().get(word)
        return self.by_canonical.get(canonical) if canonical else None

    def __contains__(self, label: object) -> bool:
        return label in self.labels

    def __len__(self) -> int:
        return len(self.labels)


def available() -> list[str]:
    return sorted(p.stem for p in DATA_DIR.glob("*.yaml") if p.stem != "synonyms")


@functools.cache
def load_label_set(name_or_path: str) -> LabelSet:
    """A shipped label set by name (``merr``, ``dfew``, ``mer2023``, ``meld``) or a YAML file by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = DATA_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        close = difflib.get_close_matches(str(name_or_path), available(), n=1)
        raise ConfigError(
            f"unknown label set '{name_or_path}'",
            hint=f"did you mean '{close[0]}'?" if close else f"available: {', '.join(available())}",
        )
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    labels = tuple(str(label).strip().lower() for label in data.get("labels", ()))
    if not labels or len(set(labels)) != len(labels):
        raise ConfigError(f"{path}: 'labels' must be a non-empty list without repeats")
    return LabelSet(name=str(data.get("name", path.stem)), labels=labels)
