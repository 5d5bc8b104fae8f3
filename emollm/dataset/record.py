"""The versioned clip record (one ``annotations.jsonl`` line; DESIGN.md's clip record contract).

Fields (schema 1): ``schema_version, id, media {path, kind}`` (path relative to the dataset root,
``/`` separators), ``duration_s, fps, num_frames, has_video, has_audio, aus_file`` (the per-frame
side file, relative), ``au_source, frames_analysed, face_frames, peak_frame {index, timestamp_s,
method, aus}`` (None without a face), ``aus_at_peak`` {AUxx: intensity} (None without a face),
``aus_present_at_peak`` [AUxx], ``pseudo_label, pseudo_label_confidence, rule_label, rule_scores``,
``label`` (ground truth or None), ``subtitle`` (or None), ``split``, ``flags`` [str],
``provenance`` {field: {source, version}}, ``review`` {state, by, note}.

Added by the clip analysis and the cue fusion (still schema 1: optional fields): ``face_track`` (which
face the record speaks of, or None), ``peak_frame.voiced``, ``rule_confidence``, ``cue_votes`` {voter:
{label, strength, weight}}, ``cue_agreement``, ``pseudo_label_distribution``, ``confidence_penalties``;
``pseudo_label`` / ``pseudo_label_confidence`` are then the fused ones (docs/builder.md, "Pseudo-labels").

Added by the text stage (still schema 1: new optional fields, old readers ignore them):
``subtitle_language`` (whisper's), ``tone`` (prosody phrase or None), ``prosody`` {duration_s, active_s,
voiced_s, peak_dbfs, energy_dbfs, pitch_hz, pitch_range_st, pitch_slope_st_s, syllable_rate, pauses,
pause_ratio} (or None), ``expression`` (AU phrases or None), ``visual_description`` (None until a VLM
describer fills it), ``coarse_description``, ``reasoning``, ``reasoning_filter`` {kept, reason} (or
None), ``granularity`` ("coarse" | "fine"), ``writer_error`` (only when the writer failed). Each
generated field present has a ``provenance`` entry: ``subtitle`` {source: whisper | csv:<file>, model,
version}, ``tone``, ``expression``, ``coarse_description``, ``reasoning`` {source: writer:<backend>,
model, version, label}. A cue that was not produced is None, never guessed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from emollm.dataset.io import parse_jsonl, read_jsonl
from emollm.errors import EmollmError, RecordSchemaError

RECORD_VERSION = 1
SUPPORTED_VERSIONS = (1,)
REQUIRED = ("schema_version", "id", "media", "au_source", "pseudo_label", "provenance", "review")
REVIEW_STATES = ("unreviewed", "accepted", "corrected", "rejected")


def check_record(record: dict[str, Any], *, where: str = "record") -> dict[str, Any]:
    """Return ``record`` when this emollm can read it; raise RecordSchemaError otherwise."""
    if not isinstance(record, dict):
        raise RecordSchemaError(f"{where}: a clip record is a JSON object, not {type(record).__name__}")
    version = record.get("schema_version")
    if version not in SUPPORTED_VERSIONS:
        raise RecordSchemaError(
            f"{where}: clip record schema_version {version!r} is not one this emollm reads ({list(SUPPORTED_VERSIONS)})"
        )
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise RecordSchemaError(f"{where}: clip record '{record.get('id')}' lacks {missing}")
    # ids and media paths are used as text and joined to folders: they must be strings (emollm.paths
    # decides, per writer, whether an id may name a file)
    if not isinstance(record["id"], str) or not record["id"]:
        raise RecordSchemaError(f"{where}: clip record id {record['id']!r} is not a non-empty string")
    media = record["media"]
    if not isinstance(media, dict) or not isinstance(media.get("path"), str) or "\x00" in media["path"]:
        raise RecordSchemaError(f"{where}: clip record '{record['id']}' has no media.path string (got {media!r})")
    return record


def read_build_errors(dataset_dir: str | os.PathLike[str]) -> dict[str, str]:
    """``errors.jsonl`` of a built dataset: the reason per clip id the builder could not use (empty when none)."""
    path = Path(dataset_dir) / "errors.jsonl"
    if not path.is_file():
        return {}
    return {e["id"]: e.get("reason") or e.get("error") or "failed" for e in read_jsonl(path)}


def read_dataset(dataset_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every record of a built dataset (``DATASET_DIR/annotations.jsonl``, checked); a folder without
    one is an error that says how to build it."""
    annotations = Path(dataset_dir) / "annotations.jsonl"
    if not annotations.is_file():
        raise EmollmError(f"{dataset_dir} holds no annotations.jsonl: not a built dataset",
                          hint="build it first: emollm build CLIPS_DIR --out DATASET_DIR")
    return read_annotations(annotations)


def read_annotations(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every record of an ``annotations.jsonl``, checked; a torn or non-JSON line is an error naming file:line."""
    try:
        with open(path, encoding="utf-8") as fh:
            rows = parse_jsonl(fh, where=path, error=RecordSchemaError, numbered=True)
            return [check_record(record, where=f"{path}:{n}") for n, record in rows]
    except OSError as exc:
        raise RecordSchemaError(f"{path}: cannot read it ({exc.strerror or exc})",
                                hint="give a dataset folder built by `emollm build` (it holds annotations.jsonl)") from None  # fmt: skip
    except UnicodeDecodeError as exc:
        raise RecordSchemaError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None

