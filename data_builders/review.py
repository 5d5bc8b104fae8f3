"""The review loop: export uncertain samples for a human, import the corrections, re-split.

- **Export** (:func:`export_review`): a record is sent to review when its ``pseudo_label_confidence``
  is below ``threshold`` (``low_confidence``; a record with a pseudo-label but no confidence counts too),
  when its ground-truth label differs from its pseudo-label (``label_disputed``), when the builder's
  cues voted for different labels (``cues_disagree``), or when its reasoning
  was filtered out (``reasoning_filtered:<reason>``). Already reviewed records are left out unless
  ``include_reviewed``. Written to ``OUT/review.csv`` and ``OUT/review.jsonl`` (same rows), and beside
  them ``OUT/thumbs/<id>_peak.png`` (an id in a subfolder gets that subfolder under ``thumbs/``; the peak frame, decoded with ``emollm.media.read_frames`` at the
  record's peak index, longer side 320 px) and ``OUT/thumbs/<id>_aus.png`` (a bar chart of the AU
  intensities at the peak, in ``MERR_AUS`` order; present AUs in a darker colour). A clip whose peak
  frame cannot be decoded gets an empty ``thumbnail`` cell and a ``thumbnail_error``; the export goes on.
  So does a record whose id cannot name a file under ``thumbs/`` (``..``, absolute, NUL: someone else's
  ``annotations.jsonl``; :mod:`emollm.paths` decides): its row is kept, with the reason, and nothing is
  written outside ``OUT``.
- **Import** (:func:`import_corrections`): a CSV (header ``id,label[,note][,reviewer]``) or JSONL
  (objects with the same keys). Rows are checked one by one: an unknown id, a missing label or a label
  outside the dataset's label set is a **per-row error** (row number, id, reason) written to
  ``DATASET_DIR/review_errors.jsonl`` and returned; **valid rows are still applied** (not
  all-or-nothing), nothing is dropped silently. Each applied row is stored in
  ``DATASET_DIR/reviews.jsonl`` (one line per clip id, the latest decision with its history), the
  source of truth that :func:`apply_reviews` puts back into the records at every merge of
  ``emollm build`` — re-runs never lose a review. The record gets ``label`` = the corrected label and
  ``review {state: corrected | accepted, by, at, note, previous_label, history}`` (``accepted`` when
  the label did not change). Then the reasoning filter, the coarse / fine split and the instruction
  JSONL are redone (:mod:`data_builders.instructions`); a reasoning written for the old label now fails
  the filter (``contradicts_label``) until the next ``emollm build`` writes one for the new label.
- **Decisions** (:func:`apply_decisions`): the import's rows and the web page's decisions (``emollm
  review serve``, :mod:`emollm.web.review`) go through this one function. It runs under
  :func:`review_lock`, an exclusive ``fcntl.flock`` on ``DATASET_DIR/.review.lock``, so two reviewers
  (two pages, a page and an import, two processes) never lose each other's decisions.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emollm.dataset.io import atomic_write_text, jsonl_text, parse_jsonl, read_jsonl, write_jsonl
from emollm.dataset.record import read_annotations
from emollm.errors import ConfigError, UnsafePathError
from emollm.log import get_logger
from emollm.paths import ensure_folder, id_path, id_rel

try:
    import fcntl
except ImportError:  # Windows: review_lock uses msvcrt
    fcntl = None

log = get_logger(__name__)

REVIEWS_FILE = "reviews.jsonl"
REVIEW_ERRORS_FILE = "review_errors.jsonl"
CSV_COLUMNS = ("id", "label", "note", "reviewer", "pseudo_label", "pseudo_label_confidence", "given_label",
               "reasons", "cue_votes", "subtitle", "coarse_description", "reasoning", "media", "thumbnail", "au_chart",
               "thumbnail_error")  # fmt: skip


def _dataset_label_set(dataset_dir: Path):  # noqa: ANN202
    from emollm.dataset.label_sets import load_label_set

    name = None
    manifest = dataset_dir / "manifest.json"
    if manifest.is_file():
        name = json.loads(manifest.read_text(encoding="utf-8")).get("label_set")
    if name is None:
        from emollm import config as cfglib

        name = cfglib.load(None, []).data.label_set
    return load_label_set(name)


def review_reasons(rec: dict[str, Any], threshold: float) -> list[str]:
    """Why ``rec`` needs a human look ([] when it does not)."""
    reasons = []
    conf = rec.get("pseudo_label_confidence")
    if rec.get("pseudo_label") and (conf is None or conf < threshold):
        reasons.append("low_confidence")
    if rec.get("label") and rec.get("pseudo_label") and rec["label"] != rec["pseudo_label"]:
        reasons.append("label_disputed")
    if "cues_disagree" in (rec.get("flags") or []):
        reasons.append("cues_disagree")  # the AU rules, the expression model and the subtitle differ
    filt = rec.get("reasoning_filter")
    if filt and not filt.get("kept", True):
        reasons.append(f"reasoning_filtered:{filt.get('reason')}")
    return reasons


# ------------------------------------------------------------------------------------------ export


def _votes_cell(rec: dict[str, Any]) -> str:
    """Each cue's vote for the reviewer: ``au_rules:sad 0.08; expression:angry 0.42; tone:high``."""
    votes = rec.get("cue_votes") or {}
    parts = []
    for cue, v in votes.items():
        what = v.get("label") or (v.get("detail") or {}).get("arousal") or "?"
        parts.append(f"{cue}:{what} {v.get('strength', 0):.2f}")
    return "; ".join(parts)


def _thumbnail(dataset_dir: Path, rec: dict[str, Any], path: Path) -> None:
    from PIL import Image

    from emollm.media import read_frames

    peak = rec.get("peak_frame") or {}
    if peak.get("index") is None:
        raise ValueError("no peak frame (no face)")
    frames = read_frames(dataset_dir / rec["media"]["path"], [int(peak["index"])], max_side=320)
    Image.fromarray(frames.array[0]).save(path)


def _au_chart(rec: dict[str, Any], path: Path, *, figsize: tuple[float, float] = (6, 2.6), dpi: int = 80) -> None:
    """The AU bar chart PNG (``figsize`` inches at ``dpi``: the export's 480 x 208 px by default; the web
    page asks for more pixels, so its labels stay legible at the size it shows the chart)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from emollm.dataset.aus import AU_INTENSITY_MAX, MERR_AUS

    at_peak = rec.get("aus_at_peak") or {}
    present = set(rec.get("aus_present_at_peak") or [])
    values = [float(at_peak.get(au, 0.0)) for au in MERR_AUS]
    fig, ax = plt.subplots(figsize=figsize, dpi=dpi)
    ax.bar(range(len(MERR_AUS)), values, color=["#c0392b" if au in present else "#95a5a6" for au in MERR_AUS])
    ax.set_xticks(range(len(MERR_AUS)), [au.replace("AU", "") for au in MERR_AUS], fontsize=7)
    ax.set_ylim(0, AU_INTENSITY_MAX)
    ax.set_xlabel("AU (MERR order; red: present at peak)", fontsize=8)
    ax.set_title(f"{rec['id']}: {rec.get('pseudo_label')} ({rec.get('pseudo_label_confidence')})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def thumb_path(clip_id: str, suffix: str) -> str:
    """``thumbs/<id><suffix>``, relative to the review folder, ``/``-separated: an id in a subfolder
    (``sub/clip1``) gets the same subfolder under ``thumbs/``. Ids that would leave ``thumbs/`` (absolute,
    ``..``, NUL, empty) are refused (:class:`~emollm.errors.UnsafePathError`, via :mod:`emollm.paths`)."""
    return id_rel(clip_id, suffix, folder="thumbs")


def _prepared(out: Path, clip_id: str, suffix: str) -> Path:
    """The thumbnail file for ``clip_id`` under ``out/thumbs`` (checked to stay there, symlinks
    resolved), its folder created."""
    path = id_path(out / "thumbs", clip_id, suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class ReviewExport:
    rows: list[dict[str, Any]]
    csv_path: Path
    jsonl_path: Path


def export_review(dataset_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, threshold: float = 0.5,
                  include_reviewed: bool = False, images: bool = True) -> ReviewExport:  # fmt: skip
    """Write the samples that need review to ``out_dir`` (CSV + JSONL + PNGs); see the module docstring."""
    dataset_dir, out = Path(dataset_dir), Path(out_dir)
    records = read_annotations(dataset_dir / "annotations.jsonl")
    ensure_folder(out, "review --out")
    ensure_folder(out / "thumbs", "review --out")
    rows = []
    for rec in records:
        reasons = review_reasons(rec, threshold)
        state = (rec.get("review") or {}).get("state", "unreviewed")
        if not reasons or (state != "unreviewed" and not include_reviewed):
            continue
        row = {"id": rec["id"], "label": rec.get("label") or rec.get("pseudo_label") or "", "note": "", "reviewer": "",
               "pseudo_label": rec.get("pseudo_label"), "pseudo_label_confidence": rec.get("pseudo_label_confidence"),
               "given_label": rec.get("label"), "reasons": ";".join(reasons), "cue_votes": _votes_cell(rec),
               "subtitle": rec.get("subtitle"),
               "coarse_description": rec.get("coarse_description"), "reasoning": rec.get("reasoning"),
               "media": rec["media"]["path"], "thumbnail": "", "au_chart": "", "thumbnail_error": ""}  # fmt: skip
        if images:
            try:
                thumb_path(rec["id"], "")
            except UnsafePathError as exc:  # someone else's annotations.jsonl: no file for it, the row says why
                log.warning("review: record %r gets no thumbnails: %s", rec["id"], exc.message)
                row["thumbnail_error"] = f"UnsafePathError: {exc.message}"
                rows.append(row)
                continue
            try:
                rel = thumb_path(rec["id"], "_peak.png")
                _thumbnail(dataset_dir, rec, _prepared(out, rec["id"], "_peak.png"))
                row["thumbnail"] = rel
            except Exception as exc:  # noqa: BLE001 - a reviewer still gets the row; the reason is in the cell
                row["thumbnail_error"] = f"{type(exc).__name__}: {getattr(exc, 'message', exc)}"
            if rec.get("aus_at_peak"):
                try:
                    rel = thumb_path(rec["id"], "_aus.png")
                    _au_chart(rec, _prepared(out, rec["id"], "_aus.png"))
                    row["au_chart"] = rel
                except Exception as exc:  # noqa: BLE001 - as above
                    row["thumbnail_error"] = "; ".join(filter(None, [row["thumbnail_error"],
                                                                     f"au_chart: {type(exc).__name__}: {exc}"]))  # fmt: skip
        rows.append(row)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    atomic_write_text(out / "review.csv", buf.getvalue())
    write_jsonl(out / "review.jsonl", rows)
    log.info("review: %d of %d record(s) exported to %s", len(rows), len(records), out)
    return ReviewExport(rows, out / "review.csv", out / "review.jsonl")


# ------------------------------------------------------------------------------------------ import


@dataclass
class ImportResult:
    applied: list[str] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    rows: int = 0


def read_corrections(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a corrections CSV (header with ``id`` and ``label``) or JSONL file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"corrections file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"corrections file {path}: not UTF-8 text ({exc.reason} at byte {exc.start})",
                          hint="save it as UTF-8 (spreadsheet apps: 'CSV UTF-8')") from None  # fmt: skip
    except OSError as exc:
        raise ConfigError(f"corrections file {path}: cannot read it ({exc.strerror or exc})") from None
    if path.suffix.lower() in (".jsonl", ".json"):
        objs = parse_jsonl(text.splitlines(), where=path, error=ConfigError)
        return [obj if isinstance(obj, dict) else {"_invalid": obj} for obj in objs]
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "id" not in reader.fieldnames or "label" not in reader.fieldnames:
        raise ConfigError(f"corrections CSV {path} needs the columns id,label (got {reader.fieldnames})",
                          hint="header: id,label,note,reviewer (note and reviewer optional)")  # fmt: skip
    try:
        return list(reader)
    except csv.Error as exc:  # a NUL byte, a broken quote at the end
        raise ConfigError(f"corrections CSV {path}: not a readable CSV ({exc})") from None


def _load_reviews(dataset_dir: Path) -> dict[str, dict[str, Any]]:
    path = dataset_dir / REVIEWS_FILE
    return {entry["id"]: entry for entry in read_jsonl(path)} if path.is_file() else {}


def apply_reviews(dataset_dir: str | os.PathLike[str], records: Sequence[dict[str, Any]]) -> int:
    """Put the stored reviews (``reviews.jsonl``) back into ``records`` (in place): the corrected
    ``label`` and the ``review`` state. Called by the build's merge, after the labels CSV. Returns the
    number of records touched."""
    reviews = _load_reviews(Path(dataset_dir))
    n = 0
    for rec in records:
        entry = reviews.get(rec["id"])
        if entry is None:
            continue
        rec["label"] = entry["label"]
        rec["review"] = {k: entry[k] for k in ("state", "by", "at", "note", "previous_label", "history")}
        rec.setdefault("provenance", {})["label"] = {"source": "review", "version": None, "by": entry["by"], "at": entry["at"]}
        n += 1
    return n


def resplit(dataset_dir: Path, records: list[dict[str, Any]]) -> dict[str, int]:
    """Filter, coarse / fine split and instruction JSONL again, from the records as they are."""
    from data_builders.instructions import filter_reasoning, write_instructions

    seed = 0
    cfg_path = dataset_dir / "config.yaml"
    if cfg_path.is_file():
        import yaml

        seed = int(((yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}).get("run") or {}).get("seed", 0) or 0)
    filter_reasoning(records, _dataset_label_set(dataset_dir))
    for rec in records:
        if rec.get("split") in ("coarse", "fine"):
            rec["split"] = rec["granularity"]
    return write_instructions(records, dataset_dir, seed, atomic_write_text)


LOCK_FILE = ".review.lock"


@contextmanager
def review_lock(dataset_dir: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the dataset's exclusive review lock (``fcntl.flock`` on ``DATASET_DIR/.review.lock``) for
    the duration: every read-modify-write of ``reviews.jsonl`` / ``annotations.jsonl`` by a review
    (the CSV import, the web page, several reviewers, several processes) runs under it, one at a time,
    so no decision overwrites another's. Blocks until the lock is free."""
    path = Path(dataset_dir) / LOCK_FILE
    try:
        fh = open(path, "a+b")  # noqa: SIM115 - closed below, after the unlock
    except OSError as exc:
        raise ConfigError(f"cannot open the review lock {path} ({exc.strerror or exc})",
                          hint="the dataset folder must be writable to record reviews") from None  # fmt: skip
    try:
        if fcntl is not None:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        else:  # Windows: a lock on the file's first byte (retried: LK_LOCK gives up after ~10 s)
            import msvcrt

            fh.seek(0)
            while True:
                try:
                    msvcrt.locking(fh.fileno(), msvcrt.LK_LOCK, 1)
                    break
                except OSError:
                    continue
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            else:
                import msvcrt

                fh.seek(0)
                msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)
    finally:
        fh.close()


def apply_decisions(dataset_dir: str | os.PathLike[str], decisions: Sequence[Mapping[str, Any]], *,
                    reviewer: str | None = None, now: str | None = None, source: str = "decisions",
                    append_errors: bool = False) -> ImportResult:  # fmt: skip
    """Apply review decisions to the dataset: the one code path of ``review import`` (a corrections
    file, :func:`import_corrections`) and of the web page (``emollm review serve``, one decision at a
    time). Each decision is a mapping with ``id``, ``label`` and optionally ``note``, ``reviewer``
    (else ``reviewer``); an object that is not a mapping may be given as ``{"_invalid": obj}``.

    Valid decisions are applied, invalid ones are per-row errors (``row`` = 1-based position,
    ``file`` = ``source``) written to ``review_errors.jsonl``: replacing it (an import: the file lists
    that import's errors), or, with ``append_errors``, added to it and only when there are any (the web
    page: one decision at a time). Then ``reviews.jsonl``, the records' ``label`` / ``review``, the
    reasoning filter, the split and the instruction files are rewritten (atomic writes), all under
    :func:`review_lock`, so concurrent reviewers never lose each other's decisions."""
    dataset_dir = Path(dataset_dir)
    when = now or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    result = ImportResult(rows=len(decisions))
    with review_lock(dataset_dir):
        records = read_annotations(dataset_dir / "annotations.jsonl")
        by_id = {r["id"]: r for r in records}
        label_set = _dataset_label_set(dataset_dir)
        reviews = _load_reviews(dataset_dir)
        for n, row in enumerate(decisions, 1):
            if not isinstance(row, Mapping):
                row = {"_invalid": row}
            cid = str(row.get("id") or "")
            if cid not in by_id:  # ids may hold spaces: exact first, then without surrounding whitespace
                cid = cid.strip()
            raw = str(row.get("label") or "").strip()
            err = None
            if "_invalid" in row:
                err = "not a JSON object"
            elif not cid:
                err = "missing id"
            elif cid not in by_id:
                err = f"unknown id {cid!r} (not in annotations.jsonl)"
            elif not raw:
                err = "missing label"
            elif label_set.normalize(raw) is None:
                err = f"label {raw!r} is not in the label set {list(label_set.labels)}"
            if err:
                result.errors.append({"row": n, "id": cid or None, "label": raw or None, "error": err, "file": source})
                continue
            label = label_set.normalize(raw)
            rec = by_id[cid]
            old = rec.get("label") or rec.get("pseudo_label")
            by = str(row.get("reviewer") or "").strip() or reviewer
            note = str(row.get("note") or "").strip() or None
            prev = reviews.get(cid)
            history = list(prev["history"]) if prev else []
            decision = {"label": label, "previous_label": old, "by": by, "at": when, "note": note}
            history.append(decision)
            state = "accepted" if label == old else "corrected"
            first_previous = prev["previous_label"] if prev else old
            reviews[cid] = {"id": cid, "label": label, "state": state, "by": by, "at": when, "note": note,
                            "previous_label": first_previous, "history": history}  # fmt: skip
            rec["label"] = label  # the next row of the same id sees this one as its previous label
            result.applied.append(cid)
        errors_path = dataset_dir / REVIEW_ERRORS_FILE
        if append_errors:
            if result.errors:
                with open(errors_path, "a", encoding="utf-8") as fh:
                    fh.write(jsonl_text(result.errors))
        else:
            write_jsonl(errors_path, result.errors)
        for e in result.errors:
            log.warning("review decision %d (%s): %s", e["row"], e["id"], e["error"])
        if result.applied:
            atomic_write_text(dataset_dir / REVIEWS_FILE, jsonl_text(reviews[k] for k in sorted(reviews)))
            apply_reviews(dataset_dir, records)
            resplit(dataset_dir, records)
            write_jsonl(dataset_dir / "annotations.jsonl", records)
    log.info("review: %d row(s) applied, %d error(s) (see %s)", len(result.applied), len(result.errors), errors_path)
    return result


def import_corrections(dataset_dir: str | os.PathLike[str], corrections: str | os.PathLike[str], *,
                       reviewer: str | None = None, now: str | None = None) -> ImportResult:  # fmt: skip
    """Apply a corrections file to the dataset (:func:`apply_decisions`); see the module docstring
    (valid rows applied, invalid rows reported per row in ``review_errors.jsonl``)."""
    rows = read_corrections(corrections)
    return apply_decisions(dataset_dir, rows, reviewer=reviewer, now=now, source=str(corrections))


__all__ = ["LOCK_FILE", "REVIEWS_FILE", "REVIEW_ERRORS_FILE", "ImportResult", "ReviewExport", "apply_decisions",
           "apply_reviews", "export_review", "import_corrections", "review_lock", "read_corrections", "resplit", "review_reasons", "thumb_path"]  # fmt: skip
