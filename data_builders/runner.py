"""The build loop: clips -> per-clip part files (atomic) -> merged annotations / errors / manifest.

Resume: every finished clip (success or failure) is written as one part file
``<out>/.parts/<hash>.json`` (temporary name, fsync, rename) after its AU side file
``<out>/aus/<clip_id>.npz``. A later run with the same inputs reuses every part whose fingerprints
still match, so ``kill -9`` at any moment followed by the same command loses nothing and
duplicates nothing; the merged outputs are rewritten (atomically) from the parts at the end.

Two fingerprints per clip decide what a changed config recomputes:

- the **AU fingerprint**: the file's size and mtime, the AU source and its settings (sampling
  rate, frame and detection sizes, baseline, max duration, OpenFace CSV stat / confidence, face
  settings) and the extractor's version: when it changes the clip is analysed again;
- the **label fingerprint**: peak-frame method, rules table, label set, thresholds: when only it
  changes, the AUs are read back from the side file and only peak + pseudo-label are redone;
- the **cue fingerprint**: the file, the ASR settings (whisper model and its file stat, language) and
  the tone settings: when only it changes, the audio cues (whisper subtitle, prosody tone) are redone
  and the AUs are read back.

Ground-truth labels, subtitles and splits come from the CSVs at merge time (never recomputed). The
text stage also runs at merge time, from the parts: AU phrases, coarse description, the reasoning
writer (its LLM replies cached on disk, so a re-run makes no new call), the filter and the coarse /
fine split, and the instruction JSONL per task; the visual describer on each peak frame (replies cached
too); a changed writer or describer config therefore never re-runs AU extraction or the audio cues.

Where the clips run is the engine's business (:mod:`emollm.engines`: ``local``, this process or a
spawned pool; ``ray``, one Ray task per clip on a cluster): every engine runs the same
:func:`process_clip`, which writes the clip's side file and part, so the merged outputs do not depend
on it. A clip the engine gave up on (its worker died on every attempt) gets an error part with stage
``worker`` from the driver, which the next run tries again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_builders import inputs as inputs_mod
from data_builders import pool as pool_mod
from data_builders.au import AUSeries, load_aus, save_aus
from data_builders.au.sources import get_au_source
from data_builders.clip import (  # the per-clip stages (emollm infer runs them too, in memory)
    AUS_DIR,
    BUILDER_VERSION,
    _expression_version,
    check_setup,
    clip_stages,
    describe_record,
    finish_record,
)
from data_builders.rules import load_rules
from emollm.config import EmollmConfig, save_resolved
from emollm.dataset.aus import MERR_AUS
from emollm.dataset.io import atomic_write_text, file_stamp, write_jsonl
from emollm.dataset.label_sets import load_label_set
from emollm.dataset.record import RECORD_VERSION
from emollm.engines import Engine, Lost, Resources, get_engine
from emollm.errors import ConfigError, EmollmError
from emollm.log import get_logger, progress
from emollm.paths import ensure_folder, id_path, inside
from emollm.version import __version__

log = get_logger(__name__)

PARTS_DIR = ".parts"
LOST_STAGE = "worker"  # errors.jsonl stage of a clip whose worker died on every attempt (engine retries)


@dataclass
class BuildSummary:
    total: int = 0  # clips this run was responsible for (its shard)
    computed: int = 0
    relabelled: int = 0
    reused: int = 0
    failed: int = 0
    merged: bool = False
    records: int = 0
    errors: int = 0
    labels: dict[str, int] = field(default_factory=dict)
    flags: dict[str, int] = field(default_factory=dict)
    failed_by_stage: dict[str, int] = field(default_factory=dict)
    clip_seconds: float = 0.0  # media seconds analysed by this run (computed clips)
    wall_s: float = 0.0
    out_dir: str = ""
    text: dict[str, Any] = field(default_factory=dict)  # the text stage's counts (manifest "text")
    missing: list[str] = field(default_factory=list)  # clip ids without a finished part (merge waits for them)

    @property
    def clips_per_s(self) -> float:
        done = self.computed + self.relabelled + self.reused + self.failed
        return done / self.wall_s if self.wall_s > 0 else 0.0

    def table(self) -> str:
        rows = [
            ("clips", self.total), ("analysed", self.computed), ("relabelled (AUs reused)", self.relabelled),
            ("reused", self.reused), ("failed", self.failed), ("records in annotations.jsonl", self.records),
            ("lines in errors.jsonl", self.errors), ("clip seconds analysed", f"{self.clip_seconds:.1f}"),
            ("wall seconds", f"{self.wall_s:.1f}"), ("clips/s", f"{self.clips_per_s:.2f}"),
        ]  # fmt: skip
        rows += [(f"label {k}", v) for k, v in sorted(self.labels.items())]
        rows += [(f"flag {k}", v) for k, v in sorted(self.flags.items())]
        rows += [(f"failed at {k}", v) for k, v in sorted(self.failed_by_stage.items())]
        t = self.text
        if t:
            rows += [("coarse descriptions", t.get("coarse_descriptions", 0)), ("reasoning written", t.get("reasoning", 0)),
                     ("fine (reasoning kept)", t.get("fine", 0))]  # fmt: skip
            rows += [(f"instructions {k}", v) for k, v in sorted(t.get("instructions", {}).items())]
            if t.get("describer_stats"):
                ds = t["describer_stats"]
                rows += [("visual descriptions", t.get("visual_descriptions", 0)), ("describer calls", ds.get("calls", 0)),
                         ("describer cache hits", ds.get("cache_hits", 0))]  # fmt: skip
            if t.get("writer_stats"):
                ws = t["writer_stats"]
                rows += [("writer calls", ws.get("calls", 0)), ("writer cache hits", ws.get("cache_hits", 0))]
        width = max(len(r[0]) for r in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


# ------------------------------------------------------------------------------------------ helpers


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


def part_path(out_dir: Path, clip_id: str) -> Path:
    # a hash names the part, so any id fits; inside() still refuses a .parts symlink that leads out
    return inside(out_dir / PARTS_DIR, hashlib.sha1(clip_id.encode("utf-8", "surrogatepass")).hexdigest()[:20] + ".json",
                  name=clip_id)  # fmt: skip


def aus_path(out_dir: Path, clip_id: str) -> Path:
    """The AU side file of ``clip_id`` under ``out_dir/aus`` (checked, symlinks resolved)."""
    return id_path(out_dir / AUS_DIR, clip_id, ".npz")


def au_fingerprint(cfg: EmollmConfig, clip: inputs_mod.ClipInput) -> str:
    b = cfg.build
    settings: dict[str, Any] = {"source": b.au_source, "file": file_stamp(clip.path), "max_duration_s": b.max_duration_s}
    settings.update(get_au_source(b.au_source).settings(cfg, clip))  # the source's own (version, thresholds, its CSV)
    # the per-clip analysis (frames, face track, voiced frames, expression votes) is part of this stage
    from data_builders.analysis import VERSION as ANALYSIS_VERSION

    settings.update(analysis=ANALYSIS_VERSION, au_fps=b.au_fps, frame_max_side=b.frame_max_side,
                    detect_max_side=b.detect_max_side, face=dataclasses.asdict(cfg.media.face),
                    speech_aware_peak=b.speech_aware_peak, silence_dbfs=b.silence_dbfs,
                    expression=_expression_version(b.expression_model))  # fmt: skip
    return _sha(settings)


def cue_fingerprint(cfg: EmollmConfig, clip: inputs_mod.ClipInput) -> str:
    """What decides whether the audio cues (ASR subtitle, prosody tone) are recomputed."""
    b = cfg.build
    settings: dict[str, Any] = {"asr": b.asr, "tone": b.tone}
    if b.asr != "none" or b.tone != "none":
        settings.update(file=file_stamp(clip.path), silence_dbfs=b.silence_dbfs, sample_rate=16000)
    if b.asr == "whisper":
        from data_builders.subtitles import model_version

        settings.update(whisper=model_version(b.whisper_model), language=b.whisper_language)
    if b.tone != "none":
        from data_builders.tone import VERSION

        settings["tone_version"] = VERSION
    return _sha(settings)


def label_fingerprint(cfg: EmollmConfig) -> str:
    b = cfg.build
    table = load_rules(b.rules)
    from emollm.dataset.label_sets import identity

    return _sha([b.peak_frame, b.peak_top_aus, list(b.peak_ignore_aus), table.digest, identity(cfg.data.label_set)])


# ------------------------------------------------------------------------------------------ cues + text


def make_writer_for(cfg: EmollmConfig, out: Path):  # noqa: ANN201
    from data_builders.writers import make_writer

    return make_writer(cfg.build.writer, out) if cfg.build.describe else None


def make_describer_for(cfg: EmollmConfig, out: Path):  # noqa: ANN201
    from data_builders.describers import make_describer

    return make_describer(cfg.build.describer, out)


def text_stage(cfg: EmollmConfig, out: Path, records: list[dict[str, Any]], *, writer, write, describer=None) -> dict[str, Any]:  # noqa: ANN001
    """Visual description, AU phrases, coarse description, reasoning, filter + split, instruction JSONL (in place)."""
    from data_builders.instructions import filter_reasoning, record_label, write_instructions
    from data_builders.phrases import load_phrases
    from data_builders.writers import WriterItem

    b = cfg.build
    phrases = load_phrases(b.phrases)
    for rec in records:
        rec["visual_description"] = None  # only the describer fills it; never invented
    describer_stats: dict[str, Any] = {}
    if describer is not None:
        from data_builders.describers import describe_records

        describer_stats = describe_records(describer, records, out)
    for rec in records:
        describe_record(rec, cfg, phrases)  # AU phrases, coarse description (emollm infer: the same, per clip)
        rec["reasoning"] = None
        rec.setdefault("review", {"state": "unreviewed", "by": None, "note": None})
    stats: dict[str, Any] = {"coarse_descriptions": sum(1 for r in records if r["coarse_description"]), **describer_stats}
    todo = [r for r in records if r["coarse_description"] and record_label(r)] if writer is not None else []
    if todo:
        items = [WriterItem(r["id"], record_label(r), r["coarse_description"], r.get("subtitle"), r.get("expression"),
                            r.get("tone")) for r in todo]  # fmt: skip
        results = writer.write(items)
        failed = 0
        for rec, res in zip(todo, results, strict=True):
            if res.text:
                rec["reasoning"] = res.text
                rec["provenance"]["reasoning"] = {"source": f"writer:{writer.kind}", "model": writer.model,
                                                  "version": writer.version, "label": record_label(rec)}  # fmt: skip
            else:
                failed += 1
                rec["flags"] = sorted(set(rec["flags"]) | {"writer_failed"})
                rec["writer_error"] = res.error
        stats["writer"] = {"backend": writer.kind, "model": writer.model, "version": writer.version}
        stats["writer_stats"] = writer.stats.as_dict()
        stats["writer_failed"] = failed
        if failed:
            log.warning("writer: %d of %d clip(s) got no usable reasoning (flag writer_failed)", failed, len(todo))
        if failed == len(todo):  # a writer that never answered usefully is a broken setup, not bad luck: the CLI exits 2
            first = next(r for r in todo if r.get("writer_error"))
            stats["writer_all_failed"] = {"count": failed, "example_id": first["id"], "example": str(first["writer_error"])[:200]}
    label_set = load_label_set(cfg.data.label_set)
    filter_reasoning(records, label_set)
    for rec in records:
        if rec["split"] in ("coarse", "fine"):  # no split from the labels CSV
            rec["split"] = rec["granularity"]
    dropped = Counter((r["reasoning_filter"]["reason"] or "").split(":")[0] for r in records
                      if r.get("reasoning_filter") and not r["reasoning_filter"]["kept"])  # fmt: skip
    stats.update(reasoning=sum(1 for r in records if r["reasoning"]), fine=sum(1 for r in records if r["granularity"] == "fine"),
                 filtered_out=dict(sorted(dropped.items())))  # fmt: skip
    if b.instructions:
        stats["instructions"] = write_instructions(records, out, cfg.run.seed, write)
    log.info("text: %d description(s), %d reasoning, %d fine", stats["coarse_descriptions"], stats["reasoning"], stats["fine"])
    return stats


# ------------------------------------------------------------------------------------------ one clip


def process_clip(clip: inputs_mod.ClipInput, out_dir: Path, cfg: EmollmConfig, au_fp: str, label_fp: str, reuse_aus: bool = False,
                 cue_fp: str | None = None, reuse_cues: bool = False) -> dict[str, Any]:  # fmt: skip
    """Analyse one clip (:func:`data_builders.clip.clip_stages`), write its side file and part file
    (atomically); returns the part."""
    start = time.perf_counter()
    old_cues = None
    if reuse_cues:
        old = _read_part(out_dir, clip.id)
        old_cues = old.get("cues") if old else None
    part: dict[str, Any] = {"id": clip.id, "au_fingerprint": au_fp, "label_fingerprint": label_fp,
                            "cue_fingerprint": cue_fp if cue_fp is not None else cue_fingerprint(cfg, clip)}  # fmt: skip
    reused = json.loads(part_path(out_dir, clip.id).read_text(encoding="utf-8")) if reuse_aus else None

    def save(series: AUSeries) -> None:
        pool_mod.stop_if_orphaned()
        save_aus(series, aus_path(out_dir, clip.id))

    # the per-clip stages are data_builders.clip's (emollm infer runs the same ones, in memory)
    done = clip_stages(clip, cfg, out_dir, reused=reused, load_series=lambda: load_aus(aus_path(out_dir, clip.id)),
                       old_cues=old_cues, save_series=save)
    if reuse_aus:
        part["expression"], part["face_track"] = done.expression, done.face_track
    if done.error is not None:
        part["status"] = "error"
        part["error"] = done.error
    else:
        if not reuse_aus:
            part["expression"], part["face_track"] = done.expression, done.face_track
        part["cues"] = done.cues
        part["status"] = "ok"
        part["record"] = done.record
    part["clip_seconds"] = done.clip_seconds
    part["elapsed_s"] = round(time.perf_counter() - start, 4)
    part["relabelled"] = reuse_aus
    pool_mod.stop_if_orphaned()  # a part written after the build died would race a rerun
    atomic_write_text(part_path(out_dir, clip.id), json.dumps(part, ensure_ascii=False))
    return part


def _lost_part(args: tuple, lost: Lost) -> dict[str, Any]:
    """The part of a clip the engine gave up on (its worker died on every attempt: a crash in a decoder,
    memory, a lost node), written by the driver: an errors.jsonl line (stage ``worker``), retried by
    the next run."""
    clip, out_dir, _cfg, au_fp, label_fp, _reuse, cue_fp, _same_cues = args
    part = {"id": clip.id, "au_fingerprint": au_fp, "label_fingerprint": label_fp, "cue_fingerprint": cue_fp,
            "status": "error", "clip_seconds": 0.0, "elapsed_s": 0.0, "relabelled": False,
            "error": {"id": clip.id, "path": str(clip.path), "stage": LOST_STAGE, "error_type": lost.error_type,
                      "reason": f"{lost.reason} ({lost.attempts} attempt(s))"}}  # fmt: skip
    atomic_write_text(part_path(out_dir, clip.id), json.dumps(part, ensure_ascii=False))
    return part


def _read_part(out_dir: Path, clip_id: str) -> dict[str, Any] | None:
    path = part_path(out_dir, clip_id)
    try:
        part = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return part if part.get("id") == clip_id else None


def _work(args: tuple) -> dict[str, Any]:
    return process_clip(*args)


# ------------------------------------------------------------------------------------------ run


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/N"`` (0-based i) -> (i, N); None -> (0, 1) or, under ``accelerate launch`` /
    ``torchrun``, (RANK, WORLD_SIZE) from the environment."""
    if text is None:
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        return (int(os.environ.get("RANK", "0") or 0), world) if world > 1 else (0, 1)
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: expected i/N, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"--shard {text!r}: need 0 <= i < N")
    return i, n


def build(
    cfg: EmollmConfig,
    clips_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    workers: int | None = None,
    shard: tuple[int, int] = (0, 1),
    merge: bool = True,
    merge_only: bool = False,
    engine: str | Engine | None = None,
    cpus_per_task: float = 1.0,
) -> BuildSummary:
    """Build (or resume) a dataset from ``clips_dir`` into ``out_dir``; see the module docstring.

    ``engine`` runs the clips (:mod:`emollm.engines`): None / ``"local"`` this process or ``workers``
    spawned processes; ``"ray"`` one Ray task per clip asking ``cpus_per_task`` CPUs (a local Ray
    instance of ``workers`` CPUs), or an :class:`~emollm.engines.Engine` made by the caller (e.g.
    ``get_engine("ray", address=...)``; the caller closes it). Every engine writes the same part files
    and the merge is the same, so the outputs are too."""
    t0 = time.perf_counter()
    out = ensure_folder(out_dir, "build --out").resolve()  # a file or a loop there: one line, not a traceback
    ensure_folder(out / PARTS_DIR, "build --out")
    asked_workers, workers = workers, workers or cfg.build.workers
    check_setup(cfg)  # fail before any clip: AU source (OpenFace binary), whisper model, phrase table, writer prompt
    load_label_set(cfg.data.label_set)
    labels = inputs_mod.read_labels(cfg.data.labels_csv)
    subtitles = inputs_mod.read_subtitles(cfg.data.subtitles_csv)
    problems: list[dict[str, Any]] = []  # unreadable folders, broken links, unusable names: errors.jsonl
    clips = inputs_mod.discover_clips(clips_dir, problems)
    if not clips:
        raise ConfigError(f"no clips found under {clips_dir}", hint=f"supported: {' '.join(inputs_mod.CLIP_EXTENSIONS)}")
    index, count = shard
    mine = [] if merge_only else [c for k, c in enumerate(clips) if k % count == index]
    summary = BuildSummary(total=len(mine), out_dir=str(out))
    label_fp = label_fingerprint(cfg)
    writer = make_writer_for(cfg, out) if merge else None
    describer = make_describer_for(cfg, out) if merge else None
    cue_fps = {c.id: cue_fingerprint(cfg, c) for c in clips}

    todo: list[tuple] = []
    for clip in mine:
        au_fp = au_fingerprint(cfg, clip)
        cue_fp = cue_fps[clip.id]
        part = _read_part(out, clip.id)
        if part and part["status"] == "error" and part["error"].get("stage") == LOST_STAGE:
            part = None  # its worker died on every attempt (memory, a lost node): not the file's fault, so again
        same_aus = bool(part and part["au_fingerprint"] == au_fp)
        if same_aus and part["status"] == "error":
            summary.reused += 1  # failed before labelling: labels and cues cannot change that
            continue
        same_cues = bool(same_aus and part.get("cue_fingerprint") == cue_fp and "cues" in part)
        if same_aus and part["label_fingerprint"] == label_fp and same_cues:
            summary.reused += 1
            continue
        reuse = same_aus and (not part["record"].get("aus_file") or aus_path(out, clip.id).is_file())
        todo.append((clip, out, cfg, au_fp, label_fp, reuse, cue_fp, same_cues))
    own_engine = not isinstance(engine, Engine)
    # build.workers is the local pool's default; a local Ray instance takes all CPUs unless told
    runner = (get_engine(engine, workers=workers if engine in (None, "local") else asked_workers) if own_engine
              else engine)

    def account(part: dict[str, Any]) -> None:
        if part["status"] == "error":
            summary.failed += 1
            log.warning("%s: failed at %s: %s", part["id"], part["error"]["stage"], part["error"]["reason"])
        elif part.get("relabelled"):
            summary.relabelled += 1
        else:
            summary.computed += 1
        summary.clip_seconds += part.get("clip_seconds", 0.0)

    try:
        log.info("build: %d clip(s) in shard %d/%d, %d already done, %d to process (%s)", len(mine), index, count,
                 summary.reused, len(todo), runner.describe() if todo else runner.name)  # fmt: skip
        # the same per-clip function on every engine: it writes the clip's side file and part (atomically)
        done = runner.map(_work, todo, resources=Resources(cpus=cpus_per_task), setup=pool_mod.worker_init,
                          label="emollm-build")
        for k, part in progress(done, desc="build", total=len(todo), unit="clip"):
            account(_lost_part(todo[k], part) if isinstance(part, Lost) else part)
    finally:
        if own_engine:
            runner.close()

    # failures already on disk from a previous run count too
    if merge:
        parts = [_read_part(out, c.id) for c in clips]
        summary.missing = [c.id for c, p in zip(clips, parts, strict=True)
                           if not (p and (p["status"] == "error" or (p["label_fingerprint"] == label_fp
                                                                     and p.get("cue_fingerprint") == cue_fps[c.id])))]  # fmt: skip
        if not summary.missing:
            merge_outputs(cfg, out, clips, parts, labels, subtitles, summary, writer=writer, describer=describer,  # type: ignore[arg-type]
                          problems=problems)
        else:
            log.info("shard %d/%d done; the merge runs once every shard has finished (rerun any shard, or --merge)", index, count)
    summary.wall_s = time.perf_counter() - t0
    if summary.merged:
        atomic_write_text(out / "summary.txt", summary.table() + "\n")
    return summary


def merge_outputs(cfg: EmollmConfig, out: Path, clips, parts, labels, subtitles, summary: BuildSummary, *, writer=None,  # noqa: ANN001
                  describer=None, problems: list[dict[str, Any]] | None = None) -> None:  # noqa: ANN001
    """Write annotations.jsonl, errors.jsonl, manifest.json and config.yaml from the part files
    (and, from the records, the text stage: descriptions, reasoning, filter, instructions/).
    ``problems``: what clip discovery could not use (unreadable folders...), one errors.jsonl line each."""
    records, errors = [], []
    for prob in problems or []:
        errors.append(prob | {"path": os.path.relpath(prob["path"], out).replace(os.sep, "/")})
    for clip, part in zip(clips, parts, strict=True):
        if part["status"] == "error":
            errors.append(part["error"] | {"path": os.path.relpath(clip.path, out).replace(os.sep, "/")})
            continue
        rec = finish_record(dict(part["record"]), part, cfg, label=inputs_mod.lookup(labels, clip),
                            csv_subtitle=inputs_mod.lookup(subtitles, clip), csv_path=cfg.data.subtitles_csv)
        records.append(rec)
    from data_builders.review import apply_reviews

    apply_reviews(out, records)  # human corrections (reviews.jsonl) win over the labels CSV, on every re-run
    text_stats = text_stage(cfg, out, records, writer=writer, write=atomic_write_text, describer=describer)
    write_jsonl(out / "annotations.jsonl", records)
    write_jsonl(out / "errors.jsonl", errors)
    by_label = Counter(r["pseudo_label"] or "(none)" for r in records)
    by_split: dict[str, Counter] = {}
    for r in records:
        by_split.setdefault(r["split"], Counter())[r["pseudo_label"] or "(none)"] += 1
    flags = Counter(f for r in records for f in r["flags"])
    table = load_rules(cfg.build.rules)
    manifest = {
        "schema_version": RECORD_VERSION,
        "clips": len(clips),
        "records": len(records),
        "errors": len(errors),
        "pseudo_labels": dict(sorted(by_label.items())),
        "ground_truth_labels": dict(sorted(Counter(str(r["label"]) for r in records if r["label"]).items())),
        "splits": {s: {"count": sum(c.values()), "pseudo_labels": dict(sorted(c.items()))} for s, c in sorted(by_split.items())},
        "flags": dict(sorted(flags.items())),
        "errors_by_stage": dict(sorted(Counter(e["stage"] for e in errors).items())),
        "label_set": cfg.data.label_set,
        "au_source": cfg.build.au_source,
        "au_order": list(MERR_AUS),
        "text": text_stats,
        "config": "config.yaml",
        "versions": {"emollm": __version__, "builder": BUILDER_VERSION, "record": RECORD_VERSION,
                     "au": get_au_source(cfg.build.au_source).version, "rules": f"{table.name}/{table.version}+{table.digest}"},
    }  # fmt: skip
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    save_resolved(cfg, out, command="build")
    summary.merged = True
    summary.records, summary.errors = len(records), len(errors)
    summary.labels = dict(by_label)
    summary.flags = dict(flags)
    summary.failed_by_stage = manifest["errors_by_stage"]
    summary.failed = len(errors)  # the dataset's failures, whichever run found them
    summary.text = text_stats


__all__ = ["BuildSummary", "EmollmError", "build", "merge_outputs", "parse_shard", "process_clip"]
