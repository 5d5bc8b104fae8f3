"""Ids (and any other outside text) -> file paths that stay inside an output folder.

Clip ids come from file names, CSV cells and other people's ``annotations.jsonl``; every writer that
turns one into a path goes through :func:`id_path` (or :func:`inside` for a name it built itself), so
``../../x``, ``/etc/x``, NUL, empty or ``.`` parts, and symlinks inside the output folder that lead out
are refused with :class:`~emollm.errors.UnsafePathError` naming the id, before anything is written.

Two layouts: ``nest=True`` keeps ``/`` in an id as subfolders (``speaker1/clip03`` ->
``ROOT/speaker1/clip03.npz``, how the builder's ``aus/`` and the review thumbnails are laid out);
``nest=False`` flattens the id into one reversible file name (:func:`flat_name`, percent-encoding).
A component longer than the file system allows (255 bytes) is shortened with a hash of the whole id,
so two long ids never share a file. This module imports nothing from emollm but its errors.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from urllib.parse import quote

from emollm.errors import ConfigError, EmollmError, UnsafePathError

MAX_COMPONENT_BYTES = 255  # ext4, xfs, apfs, ntfs (in UTF-16 units, so bytes is the stricter bound here)
_DRIVE = re.compile(r"^[A-Za-z]:")


def _fit(component: str, suffix: str, whole: str) -> str:
    """``component + suffix``, the component cut (at a character boundary) and tagged with a hash of
    ``whole`` when the result would exceed MAX_COMPONENT_BYTES."""
    name = component + suffix
    if len(name.encode("utf-8")) <= MAX_COMPONENT_BYTES:
        return name
    tag = "~" + hashlib.sha1(whole.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    room = MAX_COMPONENT_BYTES - len((tag + suffix).encode("utf-8"))
    if room < 1:
        raise UnsafePathError(whole, "", f"the suffix {suffix!r} alone is too long for a file name")
    cut = component.encode("utf-8")[:room].decode("utf-8", "ignore")
    return cut + tag + suffix


def id_parts(name: str, root: str | os.PathLike[str] = "") -> list[str]:
    """The ``/``-separated parts of ``name`` once checked: a non-empty string, no NUL, not absolute
    (``/x``, ``C:x``), no backslash (a Windows separator), no empty / ``.`` / ``..`` part."""
    if not isinstance(name, str):
        raise UnsafePathError(repr(name), root, f"an id must be text, not {type(name).__name__}")
    if not name:
        raise UnsafePathError(name, root, "the id is empty")
    if "\x00" in name:
        raise UnsafePathError(name, root, "the id holds a NUL character")
    if name.startswith("/") or _DRIVE.match(name):
        raise UnsafePathError(name, root, "the id is an absolute path")
    if "\\" in name:
        raise UnsafePathError(name, root, "the id holds a backslash (a path separator on Windows)")
    parts = name.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            what = repr(part) if part else "empty (a leading, trailing or double /)"
            raise UnsafePathError(name, root, f"the id has a {what} part")
    return parts


def flat_name(name: str) -> str:
    """A one-component, reversible file name for any id (percent-encoded; never hidden, never ``.``/``..``)."""
    flat = quote(name, safe="")
    if flat.startswith("."):
        flat = "%2E" + flat[1:]
    return flat


def inside(root: str | os.PathLike[str], parts: list[str] | str, *, name: str | None = None) -> Path:
    """``root / parts`` after checking it stays under ``root`` once symlinks are resolved (a link
    inside the output folder that points out is refused too). ``name``: the id to name in the error."""
    root = Path(root)
    parts = [parts] if isinstance(parts, str) else list(parts)
    shown = name if name is not None else "/".join(parts)
    for part in parts:
        if part in ("", ".", "..") or "/" in part or "\x00" in part or os.sep in part:
            raise UnsafePathError(shown, root, f"the file name part {part!r} is not a plain name")
    path = root.joinpath(*parts)
    try:
        real_root = root.resolve()
        real = path.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop on the way
        raise UnsafePathError(shown, root, f"the path cannot be resolved ({exc})") from None
    if real != real_root and real_root not in real.parents:
        raise UnsafePathError(shown, root, f"it would be written at {real}, outside the folder (a symlink?)")
    return path


def id_path(root: str | os.PathLike[str], name: str, suffix: str = "", *, nest: bool = True) -> Path:
    """The file for id ``name`` (+ ``suffix``) under ``root``: nested (``/`` = subfolders) or flat
    (:func:`flat_name`); raises UnsafePathError when it would leave ``root``. Creates nothing."""
    if nest:
        parts = id_parts(name, root)
        parts = [_fit(p, "", name) for p in parts[:-1]] + [_fit(parts[-1], suffix, name)]
    else:
        if not isinstance(name, str) or not name:
            raise UnsafePathError(str(name), root, "the id is empty" if name == "" else "an id must be text")
        parts = [_fit(flat_name(name), suffix, name)]
    return inside(root, parts, name=name)


def id_rel(name: str, suffix: str = "", *, folder: str = "") -> str:
    """The ``/``-separated relative form of :func:`id_path` (nested), for a path stored in a record
    or a CSV cell (``folder/<id><suffix>``)."""
    parts = id_parts(name, folder)
    parts = [_fit(p, "", name) for p in parts[:-1]] + [_fit(parts[-1], suffix, name)]
    return "/".join([folder, *parts] if folder else parts)


def ensure_folder(path: str | os.PathLike[str], what: str = "output folder") -> Path:
    """``path`` as an existing folder (created with its parents); a file (or a link to one) in the way,
    a symlink loop or a permission problem is a one-line ConfigError naming ``what`` and the path."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        why = "is a broken symbolic link (or a link loop)" if path.is_symlink() else "exists and is not a folder"
        raise ConfigError(f"{what} {path} {why}", hint="give a folder (new or existing) as the output") from None
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot create the folder ({exc.strerror or exc})") from None
    if not path.is_dir():
        raise ConfigError(
            f"{what} {path} exists and is not a folder", hint="give a folder (new or existing) as the output"
        )
    return path


def check_new_output(out: Path, source: Path, *, source_name: str, outside_hint: str, overwrite: bool) -> None:
    """An export's ``--out``: not a file, not inside (or holding) ``source``, and empty unless ``overwrite``."""
    if out.exists() and not out.is_dir():
        raise EmollmError(f"--out {out} is a file", hint="give a folder path")
    resolved_out, resolved_src = out.resolve(), source.resolve()
    if resolved_out == resolved_src or resolved_src in resolved_out.parents or resolved_out in resolved_src.parents:
        raise EmollmError(f"--out {out} overlaps the {source_name} {source}", hint=outside_hint)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise EmollmError(f"--out {out} exists and is not empty", hint="choose another folder, or pass --overwrite")


__all__ = ["check_new_output", "ensure_folder", "MAX_COMPONENT_BYTES", "flat_name", "id_parts", "id_path", "id_rel", "inside"]
