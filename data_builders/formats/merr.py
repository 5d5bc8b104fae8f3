"""Emotion-LLaMA's MERR files <-> emollm clip records.

MERR ships a txt file (one line per clip: ``name frames label valence``) and a JSON file (one entry per
clip, keyed by name; a folder of ``<name>.json`` files is read too). Mapping, record field <-> MERR:

| MERR | record | notes |
|---|---|---|
| txt ``name`` / json key | ``id`` | |
| txt ``frames`` | ``num_frames`` | |
| txt ``label`` | ``label`` (export: ``label``, else ``pseudo_label``) | a record with neither is left out of the txt |
| txt ``valence`` | ``valence`` | emollm computes no valence: export writes ``nan`` when unknown (``float("nan")`` reads it) |
| ``AU_list`` | ``aus_present_over_frames`` | export: that field, else the AUs present on any face frame of the side file ``aus/<id>.npz``, else those at the peak |
| ``visual_prior_list`` | ``expression`` | the list joined with ``", "`` / the phrase split on ``", "`` |
| ``audio_prior_list`` | ``tone`` | a list joined with ``"; "`` (a string taken as is) / ``[tone]`` or ``[]`` |
| ``peak_index`` | ``peak_frame.index`` | ``null`` without a peak |
| ``peak_AU_list`` | ``aus_present_at_peak`` | |
| ``pseu_emotion`` | ``pseudo_label`` | |
| ``caption`` | ``coarse_description`` | ``""`` when absent |
| ``text`` | ``subtitle`` | ``""`` when absent |
| ``smp_reason_caption`` | ``reasoning`` | ``""`` when absent |

**Exactness.** An imported record keeps its MERR origin in ``merr``: the raw txt line, the JSON entry
as read (every key, also keys emollm does not know) and what the export would derive from the record
at import time. On export, a value whose derivation has not changed since the import is written as
the original (so MERR -> ours -> MERR gives back every field, types and spelling included); a changed
field (e.g. a label corrected in review) is written from the record. Records built by emollm
(ours -> MERR -> ours) keep what MERR carries: the fields in the table.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from data_builders.instructions import record_label
from data_builders.record import RECORD_VERSION, read_annotations
from emollm.errors import RecordSchemaError
from emollm.log import get_logger

log = get_logger(__name__)

JSON_KEYS = ("AU_list", "visual_prior_list", "audio_prior_list", "peak_index", "peak_AU_list", "pseu_emotion",
             "caption", "text", "smp_reason_caption")  # fmt: skip
UNKNOWN_VALENCE = "nan"
SOURCE = "merr"


def _atomic_write(path: Path, text: str) -> None:
    from data_builders.runner import _atomic_write as write

    write(Path(path), text)


# ------------------------------------------------------------------------------------------ ours -> MERR


def _aus_over_frames(rec: dict[str, Any], dataset_dir: Path | None) -> list[str]:
    if rec.get("aus_present_over_frames") is not None:
        return list(rec["aus_present_over_frames"])
    if dataset_dir is not None and rec.get("aus_file") and (dataset_dir / rec["aus_file"]).is_file():
        with np.load(dataset_dir / rec["aus_file"], allow_pickle=False) as z:
            names = [str(n) for n in z["au_names"]]
            face = z["face"].astype(bool)
            present = z["presence"][face].any(axis=0) if face.any() else np.zeros(len(names), bool)
        return [n for n, p in zip(names, present, strict=True) if p]
    return list(rec.get("aus_present_at_peak") or [])


def _derive(rec: dict[str, Any], dataset_dir: Path | None) -> tuple[list[str] | None, dict[str, Any]]:
    """(txt tokens or None, json entry) derived from the record alone."""
    label = record_label(rec)
    tokens = None
    if label:
        valence = rec.get("valence")
        v = UNKNOWN_VALENCE if valence is None or (isinstance(valence, float) and math.isnan(valence)) else f"{valence:g}"
        tokens = [rec["id"], str(rec.get("num_frames") or 0), label, v]
    expr, tone = rec.get("expression"), rec.get("tone")
    entry = {
        "AU_list": _aus_over_frames(rec, dataset_dir),
        "visual_prior_list": expr.split(", ") if expr else [],
        "audio_prior_list": [tone] if tone else [],
        "peak_index": (rec.get("peak_frame") or {}).get("index"),
        "peak_AU_list": list(rec.get("aus_present_at_peak") or []),
        "pseu_emotion": rec.get("pseudo_label"),
        "caption": rec.get("coarse_description") or "",
        "text": rec.get("subtitle") or "",
        "smp_reason_caption": rec.get("reasoning") or "",
    }
    return tokens, entry


def to_merr(rec: dict[str, Any], dataset_dir: Path | None = None) -> tuple[str | None, dict[str, Any]]:
    """The txt line (or None: no label) and the JSON entry of one record, originals kept (module doc)."""
    tokens, entry = _derive(rec, dataset_dir)
    origin = rec.get("merr")
    if not origin:
        return (" ".join(tokens) if tokens else None), entry
    then = origin["derived"]
    line = " ".join(tokens) if tokens else None
    if origin.get("txt_line") is not None and tokens == then["txt"]:
        line = origin["txt_line"]
    elif origin.get("txt_line") is None and tokens == then["txt"]:
        line = None  # the clip had no txt line and nothing changed
    if origin.get("json") is None:
        return line, entry if entry != then["json"] else {}
    out = dict(origin["json"])  # original key order and unknown keys
    for key in JSON_KEYS:
        if entry[key] != then["json"][key]:  # changed since the import: written from the record
            out[key] = entry[key]
    return line, out


def export_merr(dataset_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, name: str = "MERR") -> dict[str, Any]:
    """``out_dir/<name>.txt`` and ``out_dir/<name>.json`` from ``dataset_dir/annotations.jsonl``."""
    dataset_dir, out = Path(dataset_dir), Path(out_dir)
    records = read_annotations(dataset_dir / "annotations.jsonl")
    lines, entries = [], {}
    for rec in records:
        line, entry = to_merr(rec, dataset_dir)
        if line is not None:
            lines.append(line)
        if entry:
            entries[rec["id"]] = entry
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / f"{name}.txt", "".join(line + "\n" for line in lines))
    _atomic_write(out / f"{name}.json", json.dumps(entries, indent=4, ensure_ascii=False) + "\n")
    log.info("merr: %d txt line(s), %d json entr(ies) -> %s", len(lines), len(entries), out)
    return {"txt": str(out / f"{name}.txt"), "json": str(out / f"{name}.json"), "lines": len(lines), "entries": len(entries)}


# ------------------------------------------------------------------------------------------ MERR -> ours


def _find_files(src: Path) -> tuple[list[Path], list[Path]]:
    if src.is_file():
        return ([src], []) if src.suffix == ".txt" else ([], [src])
    if not src.is_dir():
        raise RecordSchemaError(f"MERR source {src} does not exist")
    return sorted(src.glob("*.txt")), sorted(src.glob("*.json"))


def _read_txt(path: Path) -> dict[str, str]:
    out = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) < 3:
            raise RecordSchemaError(f"{path}:{n}: a MERR txt line is 'name frames label valence', got {line!r}")
        out[parts[0]] = line
    return out


def _read_json(paths: list[Path]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for path in paths:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise RecordSchemaError(f"{path}: not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise RecordSchemaError(f"{path}: a MERR json holds an object (name -> entry, or one clip's entry)")
        if any(k in data for k in JSON_KEYS):  # one clip per file, named by the file
            data = {path.stem: data}
        for name, entry in data.items():
            if not isinstance(entry, dict):
                raise RecordSchemaError(f"{path}: entry {name!r} is not an object")
            out[name] = entry
    return out


def _joined(value: Any, sep: str) -> str | None:
    if value is None or value == [] or value == "":
        return None
    return sep.join(str(v) for v in value) if isinstance(value, list) else str(value)


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def from_merr(name: str, txt_line: str | None, entry: dict[str, Any] | None, *, media_dir: str = "video",
              media_ext: str = ".mp4", source: str = "merr") -> dict[str, Any]:  # fmt: skip
    """One clip record from its MERR txt line and / or JSON entry (module doc's mapping)."""
    entry = entry or {}
    tokens = txt_line.split() if txt_line else []
    valence = None
    if len(tokens) > 3:
        try:
            valence = float(tokens[3])
            valence = None if math.isnan(valence) else valence
        except ValueError:
            valence = None
    peak_aus = list(entry.get("peak_AU_list") or [])
    peak_index = _int_or_none(entry.get("peak_index"))
    prov_src = {"source": f"merr:{source}", "version": None}
    fields = {"subtitle": _joined(entry.get("text"), " "), "expression": _joined(entry.get("visual_prior_list"), ", "),
              "tone": _joined(entry.get("audio_prior_list"), "; "), "coarse_description": _joined(entry.get("caption"), " "),
              "reasoning": _joined(entry.get("smp_reason_caption"), " ")}  # fmt: skip
    rec: dict[str, Any] = {
        "schema_version": RECORD_VERSION, "id": name,
        "media": {"path": f"{media_dir.rstrip('/')}/{name}{media_ext}" if media_dir else f"{name}{media_ext}", "kind": "video"},
        "duration_s": None, "fps": None, "num_frames": _int_or_none(tokens[1]) if len(tokens) > 1 else None,
        "has_video": True, "has_audio": True, "aus_file": None, "au_source": SOURCE if entry else None,
        "frames_analysed": 0, "face_frames": 0,
        "peak_frame": {"index": peak_index, "timestamp_s": None, "method": "merr", "aus": peak_aus} if peak_index is not None else None,
        "aus_at_peak": None, "aus_present_at_peak": peak_aus,
        "aus_present_over_frames": list(entry["AU_list"]) if isinstance(entry.get("AU_list"), list) else None,
        "pseudo_label": entry.get("pseu_emotion"), "pseudo_label_confidence": None, "rule_label": None, "rule_scores": None,
        "label": tokens[2] if len(tokens) > 2 else None, "valence": valence,
        **fields, "subtitle_language": None, "prosody": None, "visual_description": None,
        "reasoning_filter": None, "granularity": "fine" if fields["reasoning"] else "coarse",
        "split": "fine" if fields["reasoning"] else "coarse", "flags": ["imported_merr"],
        "provenance": {k: prov_src for k, v in [("label", tokens), ("pseudo_label", entry.get("pseu_emotion")), *fields.items()] if v},
        "review": {"state": "unreviewed", "by": None, "note": None},
    }  # fmt: skip
    txt_then, json_then = _derive(rec, None)
    rec["merr"] = {"txt_line": txt_line, "json": entry or None, "derived": {"txt": txt_then, "json": json_then}}
    return rec


def import_merr(src: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, media_dir: str = "video",
                media_ext: str = ".mp4", label_set: str = "merr") -> dict[str, Any]:  # fmt: skip
    """Read MERR txt + json (a file or a folder holding them) into ``out_dir/annotations.jsonl`` (plus
    ``manifest.json`` and the instruction JSONL via the usual filter / split)."""
    src, out = Path(src), Path(out_dir)
    txts, jsons = _find_files(src)
    if not txts and not jsons:
        raise RecordSchemaError(f"no MERR .txt or .json under {src}")
    lines: dict[str, str] = {}
    for path in txts:
        lines.update(_read_txt(path))
    entries = _read_json(jsons)
    names = list(lines) + [n for n in entries if n not in lines]
    records = [from_merr(n, lines.get(n), entries.get(n), media_dir=media_dir, media_ext=media_ext, source=src.name) for n in names]
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / "manifest.json", json.dumps({"schema_version": RECORD_VERSION, "records": len(records), "label_set": label_set,
                                                     "source": f"merr:{src}"}, indent=2) + "\n")  # fmt: skip
    from data_builders.review import resplit

    counts = resplit(out, records)
    _atomic_write(out / "annotations.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    log.info("merr: %d record(s) imported from %s -> %s", len(records), src, out)
    return {"records": len(records), "txt_lines": len(lines), "json_entries": len(entries), "instructions": counts}


__all__ = ["JSON_KEYS", "UNKNOWN_VALENCE", "export_merr", "from_merr", "import_merr", "to_merr"]
