"""Emotion-LLaMA's MERR files (as MER-Factory exports them) <-> emollm clip records.

**The files.** MERR comes as two pairs, coarse and fine, the names Emotion-LLaMA's ``featureface.yaml`` /
``first_face.py`` and MER-Factory's ``export.py`` (``--export_format emotion-llama`` /
``emotion-llama-fine``) use:

- ``MERR_coarse_grained.txt`` / ``MERR_fine_grained.txt``: one line per clip, ``name frames label``
  (Emotion-LLaMA also reads ``name label`` and ``name frames label valence``; it splits on spaces and
  takes column 0 as the name, column 2 -- or 1 in the 2-column form -- as the label). MER-Factory joins
  the lines with ``"\\n"`` (no newline after the last one).
- ``MERR_coarse_grained.json``: ``{name: {"AU_list": [...], "visual_prior_list": [...],
  "audio_prior_list": "<string>", "peak_index": "<string>", "peak_AU_list": [...], "pseu_emotion": str,
  "caption": str}}``; ``MERR_fine_grained.json``: the same with ``"smp_reason_caption"`` instead of
  ``"caption"``, then ``"text"``. ``json.dump(indent=4, ensure_ascii=False)``. Emotion-LLaMA's ``reason``
  task reads ``caption`` from the coarse file, ``reason_v2`` reads ``smp_reason_caption`` from the fine one.

**peak_index.** MER-Factory writes OpenFace's ``frame`` column (1-based; ``"0"`` when it had no peak).
emollm's ``peak_frame.index`` is 0-based: import subtracts ``peak_base`` (default 1), export adds it back
(an unknown peak is written ``"0"`` with base 1, ``""`` with base 0).

**Mapping** (record field <-> MERR; aliases accepted on import in brackets):

| MERR | record | notes |
|---|---|---|
| txt col 0 / json key | ``id`` | export rejects ids with whitespace (they would split the txt line) |
| txt ``frames`` | ``num_frames`` | export: ``0`` when unknown (as MER-Factory) |
| txt ``label`` | ``label`` (export: ``label``, else ``pseudo_label``) | a record with neither has no txt line |
| txt ``valence`` (4th column) | ``valence`` | written only when the record has one |
| ``AU_list`` | ``aus_present_over_frames`` | export: that field, else AUs present on a face frame of ``aus/<id>.npz``, else at the peak |
| ``visual_prior_list`` | ``expression`` | list joined / split with ``", "`` |
| ``audio_prior_list`` | ``tone`` | a string (a list is joined with ``"; "`` on import) |
| ``peak_index`` | ``peak_frame.index`` | string, ``index + peak_base`` |
| ``peak_AU_list`` | ``aus_present_at_peak`` | |
| ``pseu_emotion`` [``pseudo_label``] | ``pseudo_label`` | |
| ``caption`` [``coarse_caption``] | ``coarse_description`` | coarse file |
| ``smp_reason_caption`` [``reason_caption``, ``fine_caption``] | ``reasoning`` | fine file; ``granularity: fine`` |
| ``text`` [``sentence``, ``subtitle``, ``transcript``] | ``subtitle`` | fine file |

**Exactness.** An imported record keeps its MERR origin in ``merr`` (per file kind: the raw txt line, the
JSON entry as read with every key, their positions, and what the export would derive from the record at
import time); ``manifest.json`` keeps each file's name and layout (trailing newline, JSON indent). On
export a value whose derivation has not changed since the import is written as the original, so
MERR -> ours -> MERR gives back the same bytes; a changed field (a label corrected in review) is written
from the record. Records built by emollm (ours -> MERR -> ours) keep what MERR carries: the table.
"""

from __future__ import annotations

import json
import math
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from data_builders.instructions import record_label
from emollm.dataset.io import atomic_write_text, write_jsonl
from emollm.dataset.record import RECORD_VERSION, read_annotations
from emollm.errors import RecordSchemaError, UnsafePathError
from emollm.log import get_logger
from emollm.paths import ensure_folder, id_parts, inside

log = get_logger(__name__)

KINDS = ("coarse", "fine")
FILE_NAMES = {"coarse": "MERR_coarse_grained", "fine": "MERR_fine_grained"}
COMMON_KEYS = ("AU_list", "visual_prior_list", "audio_prior_list", "peak_index", "peak_AU_list", "pseu_emotion")
LAYOUT = {"coarse": (*COMMON_KEYS, "caption"), "fine": (*COMMON_KEYS, "smp_reason_caption", "text")}
JSON_KEYS = (*COMMON_KEYS, "caption", "smp_reason_caption", "text")
# canonical key <- aliases accepted on import (first found wins)
ALIASES = {"pseu_emotion": ("pseu_emotion", "pseudo_label"), "caption": ("caption", "coarse_caption"),
           "smp_reason_caption": ("smp_reason_caption", "reason_caption", "fine_caption"),
           "text": ("text", "sentence", "subtitle", "transcript")}  # fmt: skip
KNOWN_KEYS = frozenset(JSON_KEYS) | {a for names in ALIASES.values() for a in names}
MER_FACTORY_RAW_KEYS = frozenset({"chronological_emotion_peaks", "overall_peak_frame_info", "coarse_descriptions_at_peak"})
DEFAULT_PEAK_BASE = 1
SOURCE = "merr"
_HINT = "see docs/builder.md, 'MERR files': MERR_{coarse,fine}_grained.{txt,json} as Emotion-LLaMA / MER-Factory write them"


def unsafe_id_reason(cid: str) -> str | None:
    """Why ``cid`` cannot be a MERR name (Emotion-LLaMA splits txt lines on spaces), or None."""
    if not cid:
        return "empty"
    if any(c.isspace() for c in cid):
        return "contains whitespace (the txt line would split into other columns)"
    return None


# ------------------------------------------------------------------------------------------ ours -> MERR


def _aus_over_frames(rec: dict[str, Any], dataset_dir: Path | None) -> list[str]:
    if rec.get("aus_present_over_frames") is not None:
        return list(rec["aus_present_over_frames"])
    aus_file = rec.get("aus_file")
    if dataset_dir is not None and isinstance(aus_file, str) and (dataset_dir / aus_file).is_file():
        try:
            with np.load(dataset_dir / aus_file, allow_pickle=False) as z:
                names = [str(n) for n in z["au_names"]]
                face = z["face"].astype(bool)
                present = z["presence"][face].any(axis=0) if face.any() else np.zeros(len(names), bool)
            return [n for n, p in zip(names, present, strict=True) if p]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:  # not a side file (someone else's record): say so, use the peak's
            log.warning("%s: aus_file %s is not a readable AU side file (%s); using the AUs at the peak",
                        rec.get("id"), aus_file, exc)  # fmt: skip
    return list(rec.get("aus_present_at_peak") or [])


def _peak_str(index: int | None, peak_base: int) -> str:
    if index is None:
        return "0" if peak_base == 1 else ""
    return str(int(index) + peak_base)


def _derive(rec: dict[str, Any], dataset_dir: Path | None, peak_base: int) -> tuple[list[str] | None, dict[str, Any]]:
    """(txt tokens or None, every known JSON key) derived from the record alone."""
    label = record_label(rec)
    tokens = None
    if label:
        tokens = [rec["id"], str(rec.get("num_frames") or 0), label]
        valence = rec.get("valence")
        if valence is not None and not (isinstance(valence, float) and math.isnan(valence)):
            tokens.append(f"{valence:g}")
    expr = rec.get("expression")
    entry = {
        "AU_list": _aus_over_frames(rec, dataset_dir),
        "visual_prior_list": expr.split(", ") if expr else [],
        "audio_prior_list": rec.get("tone") or "",
        "peak_index": _peak_str((rec.get("peak_frame") or {}).get("index"), peak_base),
        "peak_AU_list": list(rec.get("aus_present_at_peak") or []),
        "pseu_emotion": rec.get("pseudo_label") or "",
        "caption": rec.get("coarse_description") or "",
        "smp_reason_caption": rec.get("reasoning") or "",
        "text": rec.get("subtitle") or "",
    }
    return tokens, entry


def _in_fine(rec: dict[str, Any], tokens: list[str] | None) -> bool:
    if not rec.get("reasoning"):
        return False
    if rec.get("granularity") == "fine":
        return True
    origin = ((rec.get("merr") or {}).get("files") or {}).get("fine")
    return bool(origin) and origin["derived"]["txt"] == tokens  # imported fine and its label unchanged


def to_merr(rec: dict[str, Any], dataset_dir: Path | None = None, *, peak_base: int = DEFAULT_PEAK_BASE,
            layout: dict[str, Any] | None = None) -> dict[str, tuple[str | None, dict[str, Any] | None]]:  # fmt: skip
    """Per file kind the record belongs to: (txt line or None, JSON entry or None); originals kept (module doc).
    ``layout``: the imported files (``manifest.json``'s ``merr_files``); a file kind that was not imported is
    written fresh."""
    layout = layout or {}
    tokens, full = _derive(rec, dataset_dir, peak_base)
    origins = (rec.get("merr") or {}).get("files") or {}
    out: dict[str, tuple[str | None, dict[str, Any] | None]] = {}
    for kind in KINDS:
        if kind == "fine" and not _in_fine(rec, tokens):
            continue
        origin = origins.get(kind)
        line = " ".join(tokens) if tokens else None
        if not origin:
            out[kind] = (line, {k: full[k] for k in LAYOUT[kind]})
            continue
        then = origin["derived"]
        if tokens == then["txt"] and (origin.get("txt_line") is not None or f"{kind}_txt" in layout):
            line = origin.get("txt_line")  # unchanged: the original line (or still none)
        entry = None
        if origin.get("json") is not None:
            entry = dict(origin["json"])  # original key order, spelling and unknown keys
            for key in JSON_KEYS:
                if full[key] != then["json"][key]:  # changed since the import: written from the record
                    present = next((a for a in ALIASES.get(key, (key,)) if a in entry), None)
                    if present is not None or key in LAYOUT[kind]:
                        entry[present or key] = full[key]
        elif full != then["json"] or f"{kind}_json" not in layout:
            entry = {k: full[k] for k in LAYOUT[kind]}
        out[kind] = (line, entry)
    return out


def _layout(dataset_dir: Path) -> dict[str, Any]:
    manifest = dataset_dir / "manifest.json"
    if manifest.is_file():
        return (json.loads(manifest.read_text(encoding="utf-8")).get("merr_files")) or {}
    return {}


def export_merr(dataset_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, name: str = "MERR",
                peak_base: int = DEFAULT_PEAK_BASE) -> dict[str, Any]:  # fmt: skip
    """``out_dir/<name>_coarse_grained.{txt,json}`` (every record) and ``<name>_fine_grained.{txt,json}``
    (records with a kept reasoning) from ``dataset_dir/annotations.jsonl``; see the module doc."""
    dataset_dir, out = Path(dataset_dir), Path(out_dir)
    records = read_annotations(dataset_dir / "annotations.jsonl")
    bad = [(r["id"], why) for r in records if (why := unsafe_id_reason(r["id"]))]
    if bad:
        shown = "; ".join(f"{cid!r}: {why}" for cid, why in bad[:10])
        raise RecordSchemaError(f"{len(bad)} clip id(s) cannot be written as MERR names: {shown}",
                                hint="rename those clips (no spaces, tabs or newlines in file names) and rebuild")  # fmt: skip
    layout = _layout(dataset_dir)
    rows: dict[str, list[tuple[tuple, str | None, str, dict[str, Any] | None]]] = {k: [] for k in KINDS}
    for n, rec in enumerate(records):
        files = (rec.get("merr") or {}).get("files") or {}
        for kind, (line, entry) in to_merr(rec, dataset_dir, peak_base=peak_base, layout=layout).items():
            origin = files.get(kind) or {}
            rows[kind].append(((origin.get("txt_pos"), origin.get("json_pos"), n), line, rec["id"], entry))
    res: dict[str, Any] = {}
    ensure_folder(out, "MERR export folder")
    for kind in KINDS:
        base = f"{name}_{kind}_grained"
        txt_fmt = layout.get(f"{kind}_txt") or {}
        json_fmt = layout.get(f"{kind}_json") or {}
        by_txt = sorted(rows[kind], key=lambda r: (r[0][0] is None, r[0][0] or 0, r[0][2]))
        lines = [line for _, line, _, _ in by_txt if line is not None]
        by_json = sorted(rows[kind], key=lambda r: (r[0][1] is None, r[0][1] or 0, r[0][2]))
        entries = {cid: entry for _, _, cid, entry in by_json if entry is not None}
        txt = "\n".join(lines) + ("\n" if lines and txt_fmt.get("trailing_newline") else "")
        indent = json_fmt.get("indent", 4)
        body = json.dumps(entries, indent=indent, ensure_ascii=json_fmt.get("ensure_ascii", False))
        txt_path, json_path = inside(out, f"{base}.txt", name=name), inside(out, f"{base}.json", name=name)  # --name is text too
        atomic_write_text(txt_path, txt)
        atomic_write_text(json_path, body + ("\n" if json_fmt.get("trailing_newline") else ""))
        res[kind] = {"txt": str(txt_path), "json": str(json_path), "lines": len(lines),
                     "entries": len(entries)}  # fmt: skip
    log.info("merr: coarse %d line(s) / %d entr(ies), fine %d / %d -> %s", res["coarse"]["lines"],
             res["coarse"]["entries"], res["fine"]["lines"], res["fine"]["entries"], out)  # fmt: skip
    return res


# ------------------------------------------------------------------------------------------ MERR -> ours


def _kind_of(path: Path, data: dict[str, Any] | None = None) -> str:
    """coarse / fine by the file name; else by content: reasoning captions -> fine, and both captions ->
    ``legacy`` (an older single MERR.json: its values are read, the export writes the two real files)."""
    stem = path.stem.lower()
    if "fine" in stem:
        return "fine"
    if "coarse" in stem:
        return "coarse"
    if data is not None:
        entries = [e for e in data.values() if isinstance(e, dict)]
        fine = any(any(a in e for a in ALIASES["smp_reason_caption"]) for e in entries)
        coarse = any(any(a in e for a in ALIASES["caption"]) for e in entries)
        return "legacy" if fine and coarse else "fine" if fine else "coarse"
    return "coarse"


def _find_files(src: Path) -> tuple[list[Path], list[Path]]:
    if src.is_file():
        return ([src], []) if src.suffix.lower() == ".txt" else ([], [src])
    if not src.is_dir():
        raise RecordSchemaError(f"MERR source {src} does not exist", hint=_HINT)
    return sorted(src.glob("*.txt")), sorted(src.glob("*.json"))


def _read_text(path: Path) -> str:
    with open(path, encoding="utf-8-sig", newline="") as fh:
        return fh.read()


def _read_txt(path: Path) -> tuple[dict[str, tuple[int, str]], bool]:
    """``{name: (position, raw line)}`` and whether the file ends with a newline."""
    text = _read_text(path)
    out: dict[str, tuple[int, str]] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        ok = len(parts) == 2 or (len(parts) in (3, 4) and re.fullmatch(r"-?\d+", parts[1]))
        if not ok:
            raise RecordSchemaError(
                f"{path}:{n}: not a MERR txt line: saw {len(parts)} column(s) {parts!r}; expected 'name label', "
                "'name frames label' or 'name frames label valence' (frames an integer)", hint=_HINT)  # fmt: skip
        if parts[0] in out:
            raise RecordSchemaError(f"{path}:{n}: name {parts[0]!r} appears twice", hint=_HINT)
        out[parts[0]] = (len(out), line)
    return out, text.endswith(("\n", "\r"))


def _json_indent(text: str) -> int | None:
    m = re.match(r"\s*[{\[]\r?\n( *)\S", text)
    return len(m.group(1)) if m else None


def _read_json(path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    text = _read_text(path)
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise RecordSchemaError(f"{path}: not JSON ({exc})", hint=_HINT) from None
    if not isinstance(data, dict):
        raise RecordSchemaError(f"{path}: a MERR json holds an object (name -> entry); saw a {type(data).__name__}",
                                hint=_HINT)  # fmt: skip
    if MER_FACTORY_RAW_KEYS & set(data):
        raise RecordSchemaError(
            f"{path}: this is MER-Factory's per-clip output (keys {sorted(data)}), not a MERR export",
            hint="export it first: python export.py --output_folder OUT --file_type mer --export_format emotion-llama "
                 "(and emotion-llama-fine), then import the MERR_*_grained files")  # fmt: skip
    if KNOWN_KEYS & set(data):  # one clip per file, named by the file
        data = {path.stem: data}
    seen: set[str] = set()
    for name, entry in data.items():
        if not isinstance(entry, dict):
            raise RecordSchemaError(f"{path}: entry {name!r} is a {type(entry).__name__}, not an object", hint=_HINT)
        seen |= set(entry)
    if data and not (KNOWN_KEYS & seen):
        raise RecordSchemaError(f"{path}: no MERR field in its entries: saw keys {sorted(seen)[:20]}; expected some of "
                                f"{list(JSON_KEYS)} (aliases: {sorted(KNOWN_KEYS - set(JSON_KEYS))})", hint=_HINT)  # fmt: skip
    fmt = {"name": path.name, "indent": _json_indent(text), "ensure_ascii": not re.search(r"[^\x00-\x7f]", text)
           and bool(re.search(r"\\u[0-9a-fA-F]{4}", text)), "trailing_newline": text.endswith("\n")}  # fmt: skip
    return data, fmt


def _get(entry: dict[str, Any], key: str) -> Any:
    for alias in ALIASES.get(key, (key,)):
        if alias in entry:
            return entry[alias]
    return None


def _joined(value: Any, sep: str) -> str | None:
    if value is None or value == [] or value == "":
        return None
    return sep.join(str(v) for v in value) if isinstance(value, list) else str(value)


def _int_or_none(value: Any) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def from_merr(name: str, parts: dict[str, dict[str, Any]], *, media_dir: str = "video", media_ext: str = ".mp4",
              source: str = "merr", peak_base: int = DEFAULT_PEAK_BASE) -> dict[str, Any]:  # fmt: skip
    """One clip record from its MERR pieces: ``parts[kind] = {"txt_line", "json", "txt_pos", "json_pos"}``
    for ``kind`` in coarse / fine (module doc's mapping; fine values win over coarse ones)."""
    txt_line = next((p["txt_line"] for k in ("fine", "coarse") if (p := parts.get(k)) and p.get("txt_line")), None)
    entry: dict[str, Any] = {}
    for kind in ("legacy", *KINDS):  # a legacy combined file, then coarse, fine on top
        for key, value in ((parts.get(kind) or {}).get("json") or {}).items():
            if value not in (None, "", []) or key not in entry:
                entry[key] = value
    tokens = txt_line.split() if txt_line else []
    label = tokens[1] if len(tokens) == 2 else tokens[2] if len(tokens) > 2 else None
    valence = None
    if len(tokens) > 3:
        try:
            valence = float(tokens[3])
            valence = None if math.isnan(valence) else valence
        except ValueError:
            valence = None
    peak_aus = list(_get(entry, "peak_AU_list") or [])
    raw_peak = _int_or_none(_get(entry, "peak_index"))
    peak_index = raw_peak - peak_base if raw_peak is not None and raw_peak >= peak_base else None
    prov_src = {"source": f"merr:{source}", "version": None}
    au_list = _get(entry, "AU_list")
    fields = {"subtitle": _joined(_get(entry, "text"), " "), "expression": _joined(_get(entry, "visual_prior_list"), ", "),
              "tone": _joined(_get(entry, "audio_prior_list"), "; "), "coarse_description": _joined(_get(entry, "caption"), " "),
              "reasoning": _joined(_get(entry, "smp_reason_caption"), " ")}  # fmt: skip
    pseudo = _get(entry, "pseu_emotion") or None
    rec: dict[str, Any] = {
        "schema_version": RECORD_VERSION, "id": name,
        "media": {"path": f"{media_dir.rstrip('/')}/{name}{media_ext}" if media_dir else f"{name}{media_ext}", "kind": "video"},
        "duration_s": None, "fps": None, "num_frames": _int_or_none(tokens[1]) if len(tokens) > 2 else None,
        "has_video": True, "has_audio": True, "aus_file": None, "au_source": SOURCE if entry else None,
        "frames_analysed": 0, "face_frames": 0,
        "peak_frame": {"index": peak_index, "timestamp_s": None, "method": "merr", "aus": peak_aus} if peak_index is not None else None,
        "aus_at_peak": None, "aus_present_at_peak": peak_aus,
        "aus_present_over_frames": list(au_list) if isinstance(au_list, list) else None,
        "pseudo_label": pseudo, "pseudo_label_confidence": None, "rule_label": None, "rule_scores": None,
        "label": label, "valence": valence,
        **fields, "subtitle_language": None, "prosody": None, "visual_description": None,
        "reasoning_filter": None, "granularity": "fine" if fields["reasoning"] else "coarse",
        "split": "fine" if fields["reasoning"] else "coarse", "flags": ["imported_merr"],
        "provenance": {k: prov_src for k, v in [("label", label), ("pseudo_label", pseudo), *fields.items()] if v},
        "review": {"state": "unreviewed", "by": None, "note": None},
    }  # fmt: skip
    txt_then, json_then = _derive(rec, None, peak_base)
    rec["merr"] = {"peak_base": peak_base, "files": {  # a legacy combined file is read, not kept: written anew
        kind: {**p, "derived": {"txt": txt_then, "json": json_then}} for kind, p in parts.items() if kind in KINDS}}  # fmt: skip
    return rec


def import_merr(src: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, media_dir: str = "video",
                media_ext: str = ".mp4", label_set: str = "merr", peak_base: int = DEFAULT_PEAK_BASE) -> dict[str, Any]:  # fmt: skip
    """Read MERR txt + json files (a file or a folder holding ``MERR_{coarse,fine}_grained.{txt,json}``, or
    any ``*.txt`` / ``*.json`` in that layout) into ``out_dir/annotations.jsonl`` (plus ``manifest.json`` and
    the instruction JSONL via the usual filter / split)."""
    src, out = Path(src), Path(out_dir)
    txts, jsons = _find_files(src)
    if not txts and not jsons:
        raise RecordSchemaError(f"no MERR .txt or .json under {src}", hint=_HINT)
    parts: dict[str, dict[str, dict[str, Any]]] = {}
    order: list[str] = []
    layout: dict[str, Any] = {}
    n_lines = n_entries = 0

    def piece(name: str, kind: str) -> dict[str, Any]:
        if name not in parts:
            parts[name] = {}
            order.append(name)
        return parts[name].setdefault(kind, {"txt_line": None, "json": None, "txt_pos": None, "json_pos": None})

    txt_kinds = sorted(((_kind_of(p), p) for p in txts), key=lambda kp: KINDS.index(kp[0]))
    for kind, path in txt_kinds:
        lines, trailing = _read_txt(path)
        layout[f"{kind}_txt"] = {"name": path.name, "trailing_newline": trailing}
        for name, (pos, line) in lines.items():
            p = piece(name, kind)
            p["txt_line"], p["txt_pos"] = line, pos
        n_lines += len(lines)
    loaded = [(path, *_read_json(path)) for path in jsons]
    order_of = {"legacy": 0, "coarse": 1, "fine": 2}
    for path, data, fmt in sorted(loaded, key=lambda x: order_of[_kind_of(x[0], x[1])]):
        kind = _kind_of(path, data)
        if kind in KINDS:
            layout.setdefault(f"{kind}_json", fmt)
        for pos, (name, entry) in enumerate(data.items()):
            p = piece(name, kind)
            p["json"], p["json_pos"] = entry, pos
        n_entries += len(data)
    bad = []
    for n in order:  # someone else's names become our ids, and ids become file names later (emollm.paths)
        try:
            id_parts(n)
        except UnsafePathError as exc:
            bad.append(f"{n!r}: {exc.cause}")
    if bad:
        raise RecordSchemaError(f"{src}: {len(bad)} MERR name(s) cannot be clip ids: {'; '.join(bad[:10])}",
                                hint="names must be relative file names (no '..', no leading '/'); fix the files")  # fmt: skip
    records = [from_merr(n, parts[n], media_dir=media_dir, media_ext=media_ext, source=src.name, peak_base=peak_base)
               for n in order]  # fmt: skip
    ensure_folder(out, "MERR import folder")
    atomic_write_text(out / "manifest.json", json.dumps({"schema_version": RECORD_VERSION, "records": len(records), "label_set": label_set,
                                                     "source": f"merr:{src}", "merr_files": layout}, indent=2) + "\n")  # fmt: skip
    from data_builders.review import resplit

    counts = resplit(out, records)
    write_jsonl(out / "annotations.jsonl", records)
    log.info("merr: %d record(s) imported from %s -> %s", len(records), src, out)
    return {"records": len(records), "txt_lines": n_lines, "json_entries": n_entries, "instructions": counts}


__all__ = ["DEFAULT_PEAK_BASE", "FILE_NAMES", "JSON_KEYS", "LAYOUT", "export_merr", "from_merr", "import_merr", "to_merr",
           "unsafe_id_reason"]  # fmt: skip
