"""Atomic file writes and JSONL, the one implementation every writer and reader of emollm uses.

A file is written beside its target under a hidden temporary name (``.NAME.PID.THREAD.tmp``) and
renamed into place, so a killed process leaves the old file or the new one, never half of one; a
failed write removes its temporary file. ``fsync=True`` (the default) flushes it to disk before the
rename (a power cut then still finds whole files); cheap report files may pass ``fsync=False``.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (its folder is created when missing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str, *, fsync: bool = True) -> None:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def jsonl_text(rows: Iterable[Any]) -> str:
    """One compact JSON value a line (non-ASCII kept as is), each line ending in a newline."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[Any], *, fsync: bool = True) -> None:
    """Write ``rows`` as JSONL to ``path`` atomically."""
    atomic_write_text(path, jsonl_text(rows), fsync=fsync)


def parse_jsonl(lines: Iterable[str], *, where: str | os.PathLike[str], error: type[Exception] | None = None,
                skip_bad: bool = False, numbered: bool = False) -> Iterator[Any]:
    """The JSON value of each non-blank line (``numbered``: ``(line number, value)`` pairs). A line
    that is not JSON (a torn last line, a stray text line) is skipped with ``skip_bad``, else raises ``error`` with ``WHERE:LINE: not a JSON line
    (why)``; without ``error`` the :class:`json.JSONDecodeError` itself propagates."""
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as exc:
            if skip_bad:
                continue
            if error is None:
                raise
            raise error(f"{os.fspath(where)}:{n}: not a JSON line ({exc})") from None
        yield (n, value) if numbered else value


def read_jsonl(path: str | os.PathLike[str], *, error: type[Exception] | None = None,
               skip_bad: bool = False) -> list[Any]:
    """Every JSON value of the JSONL file ``path`` (see :func:`parse_jsonl`); read as UTF-8 text."""
    with open(path, encoding="utf-8") as fh:
        return list(parse_jsonl(fh, where=path, error=error, skip_bad=skip_bad))


def file_stamp(path: str | os.PathLike[str]) -> str:
    """``size:mtime_ns`` of a file ("missing" when it cannot be read): what a fingerprint records of an
    input file, so a changed file is a cache miss without hashing its bytes."""
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}"


__all__ = ["atomic_write_bytes", "atomic_write_text", "file_stamp", "jsonl_text", "parse_jsonl", "read_jsonl",
           "write_jsonl"]
