"""Clip discovery and the optional label / subtitle CSVs.

Clip id = the file's path relative to the clips folder, without its extension, with ``/``
separators (``sub dir/clip 01.mp4`` -> ``sub dir/clip 01``). Spaces and non-ASCII characters are
kept as they are (UTF-8 in every output). Files that would share an id (``a.mp4`` and ``a.jpg``)
keep their extension in the id instead (``a.mp4``, ``a.jpg``; a warning says so). Hidden files and
folders (starting with ``.``) are skipped. CSV ids may be written with or without the extension.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from emollm.errors import ConfigError
from emollm.log import get_logger

log = get_logger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm")
AUDIO_EXTENSIONS = (".wav", ".flac")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
CLIP_EXTENSIONS = VIDEO_EXTENSIONS + AUDIO_EXTENSIONS + IMAGE_EXTENSIONS


@dataclass(frozen=True)
class ClipInput:
    id: str
    path: Path  # absolute


def clip_id(path: Path, root: Path) -> str:
    return path.relative_to(root).with_suffix("").as_posix()


def discover_clips(root: str | os.PathLike[str]) -> list[ClipInput]:
    """Every clip under ``root`` (recursive), sorted by id."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise ConfigError(f"clips folder {root} does not exist or is not a folder")
    groups: dict[str, list[Path]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or not name.lower().endswith(CLIP_EXTENSIONS):
                continue
            path = Path(dirpath) / name
            groups.setdefault(clip_id(path, root), []).append(path)
    found: dict[str, ClipInput] = {}
    for cid, paths in groups.items():
        if len(paths) == 1:
            found[cid] = ClipInput(cid, paths[0])
            continue
        log.warning("%d files share the clip id '%s': their ids keep the extension (%s)", len(paths), cid,
                    ", ".join(p.name for p in paths))  # fmt: skip
        for path in paths:
            full = path.relative_to(root).as_posix()
            found[full] = ClipInput(full, path)
    return [found[k] for k in sorted(found)]


class CsvTable(dict):
    """id -> value; ``from_ext`` holds the ids that were written with a clip extension in the CSV."""

    from_ext: set[str]

    def __init__(self) -> None:
        super().__init__()
        self.from_ext = set()


def lookup(table: dict, clip: ClipInput):  # noqa: ANN201
    """A CSV row for ``clip``: by its id; for an id that kept its extension (clashing stems), also by
    the bare stem when the CSV wrote it without extension (``x`` matches ``x.mp4`` but ``x.mp4`` never ``x.jpg``)."""
    if clip.id in table:
        return table[clip.id]
    if Path(clip.id).suffix.lower() in CLIP_EXTENSIONS:
        stem = Path(clip.id).with_suffix("").as_posix()
        if stem in table and stem not in getattr(table, "from_ext", set()):
            return table[stem]
    return None


def _read_csv(path: str | os.PathLike[str], value_columns: tuple[str, ...]) -> list[dict[str, str]]:
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            fields = [f.strip().lower() for f in (reader.fieldnames or [])]
            rows = [{k.strip().lower(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None
    id_col = next((c for c in ("id", "clip_id", "name") if c in fields), None)
    value = next((c for c in value_columns if c in fields), None)
    if id_col is None or value is None:
        raise ConfigError(
            f"{path}: needs an id column (id / clip_id / name) and one of {list(value_columns)}; found {fields}"
        )
    for row in rows:
        row["_raw"] = row[id_col].replace("\\", "/")
        row["_value"] = row[value]
    return rows


def _table(rows: list[dict[str, str]], value) -> CsvTable:  # noqa: ANN001
    table = CsvTable()
    for row in rows:
        raw = row["_raw"]
        table[raw] = value(row)
        if Path(raw).suffix.lower() in CLIP_EXTENSIONS:  # `clip.mp4` also names the clip `clip`
            stripped = Path(raw).with_suffix("").as_posix()
            table.setdefault(stripped, value(row))
            table.from_ext.add(stripped)
    return table


def read_labels(path: str | os.PathLike[str] | None) -> dict[str, dict[str, str | None]]:
    """Ground-truth labels CSV: ``id,label[,split]`` -> {id: {"label", "split"}}."""
    if not path:
        return {}
    return _table(_read_csv(path, ("label", "emotion")), lambda r: {"label": r["_value"] or None, "split": r.get("split") or None})


def read_subtitles(path: str | os.PathLike[str] | None) -> dict[str, str]:
    """Subtitles CSV: ``id,subtitle`` (or ``text`` / ``sentence``) -> {id: text}."""
    if not path:
        return {}
    return _table(_read_csv(path, ("subtitle", "text", "sentence", "transcript")), lambda r: r["_value"])
