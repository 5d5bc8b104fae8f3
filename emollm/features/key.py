"""What a cached feature was computed from: the input key of one cache entry.

The encoder (weights, config, feature options) picks the cache *folder* (its fingerprint). Everything
else that changes what the encoder was fed is recorded *per entry* (safetensors metadata ``inputs``,
or the ``inputs`` field of an ``.absent`` mark) and compared on every lookup:

- the decoding and face settings that shape the encoder's input, per encoder kind
  (:func:`input_settings`): frame sampling (``media.num_frames`` / ``media.fps``), the decode
  resolution (``build.frame_max_side`` / ``media.max_side``), for face crops the face detector and
  tracker (``media.face.*``, the detection size, the builder's AU sampling, which the face is
  tracked over too), for audio ``media.sample_rate``; for ``frames: peak`` the record's peak-frame
  index; for a text encoder the record's subtitle (its SHA-256);
- the clip file's identity (:func:`clip_identity`): size, mtime_ns and a SHA-256 of sampled blocks
  (the whole file when small), computed once when the entry is written. A lookup stats the file;
  only when the size is the same and the mtime moved (a copy, a touch) are the blocks hashed
  again (once per process);
- the storage dtype (``features.dtype``).

Imported features (encoder kind ``precomputed``, :mod:`emollm.features.imported`) were not computed
from our decode of the clip: they are keyed by their source tag (``precomputed.source``) and the
dtype only, never by the clip file, and the entry records the ``.npy`` it came from (path and
SHA-256, ``inputs["imported"]``), which the import compares to reuse or rewrite the entry.

A lookup whose inputs differ is a miss (the entry is stale; ``emollm features`` recomputes it),
never a hit. Entries written before input keys existed have no ``inputs``: stale.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KEY_VERSION = 1
#: Encoder kinds whose entries are imported from files, never computed (their key: the source tag).
from emollm.config.schema import IMPORTED_KINDS  # noqa: E402  (one home: the config schema)

#: Kinds whose features do not depend on the clip file (no clip identity in their key).
NO_CLIP_KINDS = ("text", *IMPORTED_KINDS)
NO_KEY = "no input key (an older cache format, or written without a config)"
_BLOCK = 64 * 1024  # bytes hashed per sampled block
_BLOCKS = 16  # sampled blocks (head and tail included); files up to _BLOCK * _BLOCKS are hashed whole
_digests: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sampled digest, per process


def sampled_digest(path: str | os.PathLike, size: int | None = None) -> str:
    """SHA-256 of the file's size and ``_BLOCKS`` evenly spaced 64 KiB blocks (the whole file up to 1 MiB)."""
    size = os.path.getsize(path) if size is None else size
    h = hashlib.sha256(f"{size}:".encode())
    with open(path, "rb") as fh:
        if size <= _BLOCK * _BLOCKS:
            h.update(fh.read())
        else:
            step = (size - _BLOCK) / (_BLOCKS - 1)
            for k in range(_BLOCKS):
                fh.seek(int(round(k * step)))
                h.update(fh.read(_BLOCK))
    return h.hexdigest()


def _digest(path: Path, size: int, mtime_ns: int) -> str:
    key = (str(path), size, mtime_ns)
    if key not in _digests:
        _digests[key] = sampled_digest(path, size)
    return _digests[key]


def clip_identity(path: str | os.PathLike) -> dict[str, Any]:
    """``{"size", "mtime_ns", "sha256"}`` of a clip file (``{"missing": True}`` when there is none)."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        return {"missing": True}
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": _digest(path, st.st_size, st.st_mtime_ns)}


def same_clip(stored: dict[str, Any], path: str | os.PathLike) -> tuple[bool | None, str]:
    """Whether the file at ``path`` is the clip ``stored`` was computed from: ``(True, "")``,
    ``(False, why)``, or ``(None, why)`` when it cannot be told (the file is gone)."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        return None, f"clip file {path} is missing"
    if stored.get("missing"):
        return False, "clip file appeared since the entry was written"
    if stored.get("size") != st.st_size:
        return False, f"clip file changed (size {stored.get('size')} -> {st.st_size})"
    if stored.get("mtime_ns") == st.st_mtime_ns:
        return True, ""
    if stored.get("sha256") == _digest(path, st.st_size, st.st_mtime_ns):
        return True, ""  # copied or touched: same contents
    return False, "clip file contents changed"


def _decode_max_side(media: Any, build: Any) -> int | None:
    """The frames' decode size (``data_builders.analysis``): build.frame_max_side, or media.max_side when smaller."""
    if build.frame_max_side is None:
        return media.max_side
    return min(build.frame_max_side, media.max_side or build.frame_max_side)


def _sampling(media: Any) -> dict[str, Any]:
    if media.fps is not None:
        return {"media.fps": media.fps}
    return {"media.num_frames": media.num_frames}


def input_settings(media: Any, build: Any, kind: str, options: dict[str, Any],
                   record: dict[str, Any], *, source: str | None = None) -> dict[str, Any]:
    """The settings that shape what an encoder of ``kind`` reads for this clip (config names; a name
    without ``media.`` / ``build.`` is a value derived from several settings, see docs/features.md).
    ``source``: the entry's ``name_or_path``, the key of imported (``precomputed``) features, which
    depend on nothing of ours (no decoding, no face settings)."""
    if kind in IMPORTED_KINDS:
        return {"precomputed.source": source}
    still = (record.get("media") or {}).get("kind") == "image"
    if kind == "text":
        subtitle = record.get("subtitle")
        text = subtitle if isinstance(subtitle, str) and subtitle.strip() else None
        return {"subtitle.sha256": hashlib.sha256(text.encode()).hexdigest() if text is not None else None}
    if kind == "audio":
        return {"media.sample_rate": media.sample_rate}
    frames = {"frames.max_side": _decode_max_side(media, build), **({} if still else _sampling(media))}
    if kind == "visual":
        if options.get("frames") != "peak" or still:
            return frames
        index = (record.get("peak_frame") or {}).get("index")
        if index is None:  # no peak (no face): the middle sampled frame
            return {"peak.index": None, **frames}
        return {"peak.index": int(index), "media.max_side": media.max_side}
    # face / video: aligned crops of the main face, tracked over the AU frames and the encoder frames
    from data_builders.analysis import VERSION

    face = dataclasses.asdict(media.face)
    detect = face.pop("detect_max_side")
    if still:  # one frame: detected and cropped, nothing tracked
        face = {k: face[k] for k in ("detector", "upsample", "crop_size")}
    out = {**frames, **{f"media.face.{k}": v for k, v in face.items()}, "analysis": VERSION}
    if still:
        out["face.detect_max_side"] = detect
    else:
        out.update({"face.detect_max_side": min(detect, build.detect_max_side), "build.au_fps": build.au_fps,
                    "build.max_duration_s": build.max_duration_s})  # fmt: skip
    return out


# settings derived from several config values, or not from the config: where they come from
_SOURCES = {"frames.max_side": "build.frame_max_side / media.max_side",
            "face.detect_max_side": "media.face.detect_max_side / build.detect_max_side (videos)",
            "peak.index": "the record's peak_frame.index", "analysis": "emollm's clip analysis version"}  # fmt: skip


def describe_diff(stored: dict[str, Any], expected: dict[str, Any], *, absent: bool = False) -> str | None:
    """Why an entry's stored inputs are not the expected ones (None: the same; the clip file is compared
    separately with :func:`same_clip`)."""
    if not isinstance(stored, dict) or "version" not in stored:
        return NO_KEY
    if stored["version"] != expected["version"]:
        return f"input key version {stored['version']} -> {expected['version']}"
    reasons = []
    if not absent and stored.get("dtype") != expected.get("dtype"):
        reasons.append(f"features.dtype {stored.get('dtype')} -> {expected.get('dtype')}")
    old, new = stored.get("settings") or {}, expected.get("settings") or {}
    for key in sorted(set(old) | set(new)):
        if old.get(key, "unset") != new.get(key, "unset"):
            if key == "subtitle.sha256":
                reasons.append("subtitle changed")
            else:
                source = f" ({_SOURCES[key]})" if key in _SOURCES else ""
                was, now = json.dumps(old.get(key, "unset")), json.dumps(new.get(key, "unset"))
                reasons.append(f"{key} {was} -> {now}{source}")
    return ", ".join(reasons) or None


@dataclass
class InputContext:
    """What a :class:`~emollm.features.cache.FeatureCache` needs to key and check entries: the
    config's ``media`` / ``build`` settings and the dataset's records (read from
    ``<dataset>/annotations.jsonl`` when first needed, unless given)."""

    media: Any
    build: Any
    dataset: Path | None = None
    records: dict[str, dict[str, Any]] | None = None
    _loaded: bool = field(default=False, repr=False)

    @classmethod
    def from_config(cls, cfg: Any, dataset: str | os.PathLike | None = None,
                    records: list[dict[str, Any]] | None = None) -> InputContext:
        return cls(cfg.media, cfg.build, Path(dataset) if dataset else None,
                   {r["id"]: r for r in records} if records is not None else None)  # fmt: skip

    def record(self, clip_id: str) -> dict[str, Any] | None:
        if self.records is None and not self._loaded:
            self._loaded = True
            annotations = self.dataset / "annotations.jsonl" if self.dataset is not None else None
            if annotations is not None and annotations.is_file():
                from emollm.dataset.record import read_annotations

                self.records = {r["id"]: r for r in read_annotations(annotations)}
        return (self.records or {}).get(clip_id)

    def clip_path(self, record: dict[str, Any]) -> Path:
        return (self.dataset or Path(".")) / record["media"]["path"]

    def inputs(self, kind: str, options: dict[str, Any], record: dict[str, Any], dtype: str,
               *, identity: bool = True, source: str | None = None) -> dict[str, Any]:
        """The input key of an entry of this encoder for this record (``identity``: with the clip
        file's identity, hashed; False for comparisons, which stat the file instead; never for kinds
        that do not read the clip file: text, imported). ``source``: the encoder's name_or_path."""
        out: dict[str, Any] = {"version": KEY_VERSION, "dtype": dtype,
                               "settings": input_settings(self.media, self.build, kind, options, record,
                                                          source=source)}  # fmt: skip
        if kind not in NO_CLIP_KINDS and identity:
            path = self.clip_path(record)
            out["clip"] = {"path": str(record["media"]["path"]), **clip_identity(path)}
        return out


__all__ = ["IMPORTED_KINDS", "KEY_VERSION", "NO_CLIP_KINDS", "NO_KEY", "InputContext", "clip_identity", "describe_diff",
           "input_settings", "same_clip", "sampled_digest"]
