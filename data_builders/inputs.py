"""Clip discovery and the optional label / subtitle CSVs.

Clip id = the file's path relative to the clips folder, without its extension, with ``/``
separators (``sub dir/clip 01.mp4`` -> ``sub dir/clip 01``). Spaces and non-ASCII characters are
kept as they are (UTF-8 in every output). Files that would share an id (``a.mp4`` and ``a.jpg``)
keep their extension in the id instead (``a.mp4``, ``a.jpg``; a warning says so). Hidden files and
folders (starting with ``.``) are skipped. Symlinked folders are followed (each real folder once, so a
link loop ends); a folder that cannot be listed, a broken link or a name that cannot be an id is
reported (``errors.jsonl``, stage ``discover``), never dropped silently. CSV ids may be written with or without the extension.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from emollm.errors import ConfigError, UnsafePathError
from emollm.log import get_logger
from emollm.paths import id_parts

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


def discover_clips(root: str | os.PathLike[str], problems: list[dict] | None = None) -> list[ClipInput]:
    """Every clip under ``root`` (recursive, symlinked folders followed, each real folder once), sorted by id.

    Nothing under ``root`` goes missing silently: a folder that cannot be listed, a broken link, a
    name that is not valid UTF-8 or cannot be a clip id (emollm.paths) is appended to ``problems``
    (errors.jsonl entries: ``id, path, stage="discover", error_type, reason``); without a list they are
    logged as warnings."""
    try:
        root = Path(root).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise ConfigError(f"clips folder {root}: cannot resolve it ({exc})") from None
    if not root.is_dir():
        raise ConfigError(f"clips folder {root} does not exist or is not a folder")
    try:
        os.listdir(root)
    except OSError as exc:
        raise ConfigError(f"clips folder {root} cannot be read ({exc.strerror or exc})") from None
    found_problems: list[dict] = []

    def problem(path: Path, error_type: str, reason: str) -> None:
        def text(p: str) -> str:  # a name that is not UTF-8 shows its bytes (\\xe9): errors.jsonl is UTF-8
            return os.fsencode(p).decode("utf-8", "backslashreplace")

        rel = text(os.path.relpath(path, root).replace(os.sep, "/"))
        found_problems.append({"id": rel, "path": text(str(path)), "stage": "discover", "error_type": error_type,
                               "reason": reason})  # fmt: skip

    def unreadable(exc: OSError) -> None:
        problem(Path(exc.filename), type(exc).__name__, f"cannot list the folder ({exc.strerror or exc}); its clips are not in the dataset")

    groups: dict[str, list[Path]] = {}
    visited = {os.path.realpath(root)}  # real folders already walked: a link loop or a second link is walked once
    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=True):
        keep = []
        # real folders claim their place before links to them (the ids follow the real path where both are here)
        for d in sorted((d for d in dirnames if not d.startswith(".")), key=lambda d: (os.path.islink(os.path.join(dirpath, d)), d)):
            real = os.path.realpath(os.path.join(dirpath, d))
            if real in visited:
                log.warning("%s: a link to a folder walked once already (%s): its clips are counted there",
                            os.path.join(dirpath, d), real)  # fmt: skip
                continue
            visited.add(real)
            keep.append(d)
        dirnames[:] = sorted(keep)
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            if not name.lower().endswith(CLIP_EXTENSIONS):
                if "." not in name and path.is_symlink() and not path.exists():  # maybe a folder on a missing drive
                    problem(path, "BrokenLink", f"a symbolic link to {os.readlink(path)!r} that cannot be followed")
                continue
            cid = clip_id(path, root)
            try:
                cid.encode("utf-8")
                id_parts(cid)
            except UnicodeEncodeError:
                problem(path, "UnsafePathError", "the file name is not valid UTF-8; rename it")
                continue
            except UnsafePathError as exc:
                problem(path, "UnsafePathError", exc.cause)
                continue
            groups.setdefault(cid, []).append(path)
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
    for p in found_problems:
        log.warning("%s: not in the dataset: %s", p["path"], p["reason"])
    if problems is not None:
        problems.extend(found_problems)
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
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})", hint="save the CSV as UTF-8") from None
    except csv.Error as e:
        raise ConfigError(f"{path}: not a readable CSV ({e})") from None
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
