"""AU -> expression phrases (data in ``data_builders/phrases/au_phrases.yaml`` or ``build.phrases``).

Several phrasings per AU; the one used for a clip is chosen by ``sha256(seed, clip id, AU)``, so the
visual expression description is reproducible across runs and machines. AUs are listed by intensity at
the peak frame (strongest first, ties in MERR_AUS order).
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from emollm.config.loader import safe_load_unique, yaml_problem
from emollm.dataset.aus import MERR_AUS
from emollm.errors import CueError

DEFAULT_TABLE = Path(__file__).parent / "phrases" / "au_phrases.yaml"


@dataclass(frozen=True)
class PhraseTable:
    name: str
    version: str
    phrases: dict[str, tuple[str, ...]]
    digest: str

    @property
    def provenance(self) -> dict[str, str]:
        return {"source": f"au_phrases:{self.name}", "version": f"{self.version}+{self.digest}"}


@functools.lru_cache(maxsize=8)
def _load(path: str, _stat: str) -> PhraseTable:
    try:
        text = Path(path).read_text(encoding="utf-8")
        data = safe_load_unique(text)
    except OSError as exc:
        raise CueError(f"AU phrase table {path}: cannot be read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise CueError(f"AU phrase table {path}{yaml_problem(exc)}") from None
    table = data.get("phrases") if isinstance(data, dict) else None
    if not isinstance(table, dict):
        raise CueError(f"AU phrase table {path}: needs a 'phrases' mapping AUxx -> [phrase, ...]")
    phrases: dict[str, tuple[str, ...]] = {}
    for au, items in table.items():
        au = str(au).upper()
        if au not in MERR_AUS:
            raise CueError(f"AU phrase table {path}: unknown AU '{au}'", hint=f"AUs: {' '.join(MERR_AUS)}")
        items = [items] if isinstance(items, str) else items
        clean = tuple(str(x).strip() for x in (items or []) if str(x).strip())
        if not clean:
            raise CueError(f"AU phrase table {path}: '{au}' has no phrase")
        phrases[au] = clean
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
    return PhraseTable(str(data.get("name", Path(path).stem)), str(data.get("version", 1)), phrases, digest)


def load_phrases(path: str | os.PathLike[str] | None = None) -> PhraseTable:
    p = Path(path) if path else DEFAULT_TABLE
    try:
        st = p.stat()
    except OSError:
        raise CueError(f"AU phrase table {p} does not exist", hint="set build.phrases to a YAML file, or null for the built-in table") from None
    return _load(str(p), f"{st.st_size}:{st.st_mtime_ns}")


def choose_phrase(table: PhraseTable, au: str, clip_id: str, seed: int = 0) -> str | None:
    options = table.phrases.get(au)
    if not options:
        return None
    digest = hashlib.sha256(f"{seed}:{clip_id}:{au}".encode()).digest()
    return options[int.from_bytes(digest[:8], "big") % len(options)]


def expression_phrases(aus_present: Sequence[str], intensities: Mapping[str, float] | None, table: PhraseTable,
                       clip_id: str, seed: int = 0, max_aus: int | None = None) -> list[str]:
    """One phrase per present AU (strongest first, at most ``max_aus``); AUs without an entry in the
    table are left out."""
    order = {au: i for i, au in enumerate(MERR_AUS)}
    ints = intensities or {}
    ranked = sorted(aus_present, key=lambda au: (-float(ints.get(au, 0.0)), order.get(au, 99)))
    out = [p for p in (choose_phrase(table, au, clip_id, seed) for au in ranked) if p]
    return out[:max_aus] if max_aus else out


def describe_expression(aus_present: Sequence[str], intensities: Mapping[str, float] | None, table: PhraseTable,
                        clip_id: str, seed: int = 0, max_aus: int | None = None) -> str | None:
    """``"lip corner puller, cheeks raised, parted lips"``, or None when no AU is present."""
    phrases = expression_phrases(aus_present, intensities, table, clip_id, seed, max_aus)
    return ", ".join(phrases) if phrases else None


__all__ = ["PhraseTable", "choose_phrase", "describe_expression", "expression_phrases", "load_phrases"]
