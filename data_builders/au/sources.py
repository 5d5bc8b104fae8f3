"""AU sources: one registry entry per way of getting a clip's per-frame AUs (``build.au_source``).

An entry says where its version lives, whether the per-clip analysis measures the AUs itself (the
built-in landmark extractor: no second decode), how an external source reads them, which settings
decide whether a cached part is reused, and what to check before the first clip. The builder, the
per-clip analysis and the record's provenance read the entry; none of them branches on the name.

>>> register_au_source(AUSource("my_tool", module="my_pkg.my_tool", read=my_reader,
...                             settings=lambda cfg, clip: {"threshold": cfg.build.presence_threshold}))

(plus the name in the schema's ``build.au_source`` choices, and a test).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from data_builders.au import AUSeries
from emollm.dataset.io import file_stamp
from emollm.errors import ConfigError


@dataclass(frozen=True)
class AUSource:
    """``module``: the module whose ``VERSION`` the records' provenance names (imported when asked).
    ``from_analysis``: the per-clip analysis measures the AUs (``analysis.aus``); else ``read(clip, info,
    cfg)`` returns the :class:`AUSeries`. ``settings(cfg, clip)``: what, besides the clip file and the
    analysis settings, decides reuse of a built part. ``check(cfg)``: raise before any clip is analysed
    (a missing binary)."""

    name: str
    module: str
    from_analysis: bool = False
    read: Callable[[Any, Any, Any], AUSeries] | None = None
    settings: Callable[[Any, Any], dict[str, Any]] = field(default=lambda cfg, clip: {})
    check: Callable[[Any], None] | None = None

    @property
    def version(self) -> str:
        return importlib.import_module(self.module).VERSION


_SOURCES: dict[str, AUSource] = {}


def register_au_source(source: AUSource, *, replace: bool = False) -> AUSource:
    if source.name in _SOURCES and not replace:
        raise ValueError(f"AU source {source.name!r} is already registered (pass replace=True)")
    if not source.from_analysis and source.read is None:
        raise ValueError(f"AU source {source.name!r} needs read= (or from_analysis=True)")
    _SOURCES[source.name] = source
    return source


def get_au_source(name: str) -> AUSource:
    try:
        return _SOURCES[name]
    except KeyError:
        raise ConfigError(f"unknown build.au_source {name!r} (registered: {', '.join(au_sources())})") from None


def au_sources() -> list[str]:
    return list(_SOURCES)


# -- the shipped sources -------------------------------------------------------------------------
def _builtin_settings(cfg: Any, clip: Any) -> dict[str, Any]:
    from data_builders.au.landmark_au import VERSION

    b = cfg.build
    return {"version": VERSION, "baseline": b.baseline, "percentile": b.baseline_percentile, "presence": b.presence_threshold}


def _openface_settings(cfg: Any, clip: Any) -> dict[str, Any]:
    b = cfg.build
    return {"min_confidence": b.min_confidence, "presence": b.presence_threshold, "bin": b.openface_bin}


def _csv_settings(cfg: Any, clip: Any) -> dict[str, Any]:
    from data_builders.au.openface_csv import find_csv
    from emollm.errors import AUExtractionError

    try:
        csv = file_stamp(find_csv(cfg.build.openface_dir, clip.id))
    except AUExtractionError:
        csv = "missing"
    return {**_openface_settings(cfg, clip), "csv": csv}


def _read_csv(clip: Any, info: Any, cfg: Any) -> AUSeries:
    from data_builders.au.openface_csv import find_csv, read_openface_csv

    b = cfg.build
    return read_openface_csv(find_csv(b.openface_dir, clip.id), min_confidence=b.min_confidence,
                             presence_threshold=b.presence_threshold, fps=info.fps)  # fmt: skip


def _read_binary(clip: Any, info: Any, cfg: Any) -> AUSeries:
    from data_builders.au import openface_bin

    b = cfg.build
    return openface_bin.extract(clip.path, binary=openface_bin.find_binary(b.openface_bin), min_confidence=b.min_confidence,
                                presence_threshold=b.presence_threshold, fps=info.fps)  # fmt: skip


def _check_binary(cfg: Any) -> None:
    from data_builders.au.openface_bin import find_binary

    find_binary(cfg.build.openface_bin)


register_au_source(AUSource("builtin", module="data_builders.au.landmark_au", from_analysis=True, settings=_builtin_settings))
register_au_source(AUSource("openface_csv", module="data_builders.au.openface_csv", read=_read_csv, settings=_csv_settings))
register_au_source(AUSource("openface_bin", module="data_builders.au.openface_bin", read=_read_binary,
                            settings=_openface_settings, check=_check_binary))

__all__ = ["AUSource", "au_sources", "get_au_source", "register_au_source"]
