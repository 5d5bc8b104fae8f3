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
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import functools
import hashlib
import json
import multiprocessing
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_builders import inputs as inputs_mod
from data_builders import pool as pool_mod
from data_builders.au import AUSeries, load_aus, save_aus
from data_builders.peak import find_peak
from data_builders.record import RECORD_VERSION
from data_builders.rules import load_rules, pseudo_label
from emollm import __version__
from emollm.config import EmollmConfig, save_resolved
from emollm.errors import AUExtractionError, ConfigError, EmollmError, MediaError, UnsafePathError
from emollm.log import get_logger, progress
from emollm.modeling.au_encoder import MERR_AUS
from emollm.paths import ensure_folder, id_path, id_rel, inside
from eval.label_sets import load_label_set

log = get_logger(__name__)

PARTS_DIR = ".parts"
AUS_DIR = "aus"
BUILDER_VERSION = "merr_builder/1"


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


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def part_path(out_dir: Path, clip_id: str) -> Path:
    # a hash names the part, so any id fits; inside() still refuses a .parts symlink that leads out
    return inside(out_dir / PARTS_DIR, hashlib.sha1(clip_id.encode("utf-8", "surrogatepass")).hexdigest()[:20] + ".json",
                  name=clip_id)  # fmt: skip


def aus_rel(clip_id: str) -> str:
    """``aus/<clip_id>.npz`` (nested like the id; refused when the id would leave ``aus/``)."""
    return id_rel(clip_id, ".npz", folder=AUS_DIR)


def aus_path(out_dir: Path, clip_id: str) -> Path:
    """The AU side file of ``clip_id`` under ``out_dir/aus`` (checked, symlinks resolved)."""
    return id_path(out_dir / AUS_DIR, clip_id, ".npz")


def _stat(path: Path) -> str:
    try:
        st = path.stat()
        return f"{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        return "missing"


def au_fingerprint(cfg: EmollmConfig, clip: inputs_mod.ClipInput) -> str:
    b = cfg.build
    settings: dict[str, Any] = {"source": b.au_source, "file": _stat(clip.path), "max_duration_s": b.max_duration_s}
    if b.au_source == "builtin":
        from data_builders.au.landmark_au import VERSION

        settings.update(version=VERSION, baseline=b.baseline, percentile=b.baseline_percentile, presence=b.presence_threshold)
    else:
        settings.update(min_confidence=b.min_confidence, presence=b.presence_threshold, bin=b.openface_bin)
    # the per-clip analysis (frames, face track, voiced frames, expression votes) is part of this stage
    from data_builders.analysis import VERSION as ANALYSIS_VERSION

    settings.update(analysis=ANALYSIS_VERSION, au_fps=b.au_fps, frame_max_side=b.frame_max_side,
                    detect_max_side=b.detect_max_side, face=dataclasses.asdict(cfg.media.face),
                    speech_aware_peak=b.speech_aware_peak, silence_dbfs=b.silence_dbfs,
                    expression=_expression_version(b.expression_model))  # fmt: skip
    if b.au_source == "openface_csv":
        try:
            from data_builders.au.openface_csv import find_csv

            settings["csv"] = _stat(find_csv(b.openface_dir, clip.id))
        except AUExtractionError:
            settings["csv"] = "missing"
    return _sha(settings)


def cue_fingerprint(cfg: EmollmConfig, clip: inputs_mod.ClipInput) -> str:
    """What decides whether the audio cues (ASR subtitle, prosody tone) are recomputed."""
    b = cfg.build
    settings: dict[str, Any] = {"asr": b.asr, "tone": b.tone}
    if b.asr != "none" or b.tone != "none":
        settings.update(file=_stat(clip.path), silence_dbfs=b.silence_dbfs, sample_rate=16000)
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
    from eval.label_sets import identity

    return _sha([b.peak_frame, b.peak_top_aus, list(b.peak_ignore_aus), table.digest, identity(cfg.data.label_set)])


def _expression_model(name: str):  # noqa: ANN202
    """The loaded expression model, or None when it is off or its weights cannot be had (one
    warning per process; the build goes on with the other cues)."""
    if name == "none":
        return None
    from data_builders.expression import load_expression_model

    try:
        return load_expression_model(name)
    except EmollmError as exc:
        return _expression_unavailable(name, exc)


def _expression_unavailable(name: str, exc: EmollmError) -> None:
    if name not in _EXPRESSION_WARNED:
        _EXPRESSION_WARNED.add(name)
        log.warning("expression model %s unavailable, pseudo-labels without it: %s", name, exc.message)


_EXPRESSION_WARNED: set[str] = set()


@functools.lru_cache(maxsize=4)
def _expression_version(name: str) -> str | None:
    """The expression model's version for the fingerprint, from its spec and weights file (no torch
    here: the parent of forked or spawned workers must not start torch's thread pool). Cached: the
    fingerprint loop asks once per clip, the weights are hashed once per process."""
    if name == "none":
        return None
    from data_builders.expression import model_version

    try:
        return model_version(name)
    except EmollmError as exc:
        return _expression_unavailable(name, exc)


# ------------------------------------------------------------------------------------------ cues + text


def check_setup(cfg: EmollmConfig) -> None:
    """Fail before any clip when a cue or writer source cannot be had (typed errors)."""
    from data_builders.phrases import load_phrases
    from data_builders.writers import load_writer_prompt

    load_phrases(cfg.build.phrases)
    if cfg.build.expression_model != "none":
        from data_builders.expression import EXPRESSION_MODELS

        if cfg.build.expression_model not in EXPRESSION_MODELS:
            raise ConfigError(f"unknown build.expression_model {cfg.build.expression_model!r}",
                              hint=f"one of: none, {', '.join(sorted(EXPRESSION_MODELS))}")  # fmt: skip
    if cfg.build.asr == "whisper":
        from data_builders.subtitles import check_whisper

        check_whisper(cfg.build.whisper_model)  # each worker loads it (torch is not fork-safe once used)
    if cfg.build.describe:
        load_writer_prompt("coarse_description")
    if cfg.build.writer.backend in ("openai", "hf"):
        load_writer_prompt(cfg.build.writer.prompt)


def make_writer_for(cfg: EmollmConfig, out: Path):  # noqa: ANN201
    from data_builders.writers import make_writer

    return make_writer(cfg.build.writer, out) if cfg.build.describe else None


def make_describer_for(cfg: EmollmConfig, out: Path):  # noqa: ANN201
    from data_builders.describers import make_describer

    return make_describer(cfg.build.describer, out)


def audio_cues(info, cfg: EmollmConfig, audio=None) -> dict[str, Any]:  # noqa: ANN001
    """Per clip, in the worker: whisper subtitle and prosody tone from the 16 kHz mono audio
    (``audio``: the clip analysis' decode; None: decoded here).
    Silent audio gets the flag ``silent_audio`` and neither cue; an unreadable audio stream the flag
    ``audio_unreadable`` (the clip's AUs and labels still count)."""
    b = cfg.build
    cues: dict[str, Any] = {"subtitle": None, "language": None, "tone": None, "prosody": None, "flags": [],
                            "provenance": {}}  # fmt: skip
    if (b.asr == "none" and b.tone == "none") or not info.has_audio:
        return cues
    from data_builders import subtitles, tone
    from emollm.media.audio import load_audio_from

    try:
        audio = load_audio_from(info, 16000) if audio is None else audio
    except MediaError as exc:
        log.warning("%s: audio unreadable, no audio cues: %s", info.path, getattr(exc, "cause", exc))
        cues["flags"].append("audio_unreadable")
        return cues
    if subtitles.is_silent(audio, b.silence_dbfs):
        cues["flags"].append("silent_audio")
        return cues
    if b.tone != "none":
        res = tone.DESCRIBERS[b.tone](audio, 16000, silence_dbfs=b.silence_dbfs)
        cues["tone"] = res.tone
        cues["prosody"] = res.prosody.as_dict() if res.prosody is not None else None
        cues["flags"] += res.flags
        if res.tone:
            cues["provenance"]["tone"] = {"source": b.tone, "version": tone.VERSION}
    if b.asr == "whisper":
        tr = subtitles.transcribe(audio, b.whisper_model, language=b.whisper_language)
        cues["subtitle"], cues["language"] = tr.text, tr.language
        cues["flags"] += [f for f in tr.flags if f not in cues["flags"]]
        if tr.text:
            import whisper

            cues["provenance"]["subtitle"] = {"source": "whisper", "model": b.whisper_model,
                                              "version": f"openai-whisper/{whisper.__version__}"}  # fmt: skip
    return cues


def apply_cues(rec: dict[str, Any], cues: dict[str, Any] | None, *, csv_subtitle: str | None, csv_path: str | None) -> None:
    """Put a part's audio cues into its record (a subtitle from the CSV wins over ASR)."""
    cues = cues or {}
    prov = rec.setdefault("provenance", {})
    if csv_subtitle:
        rec["subtitle"] = csv_subtitle
        prov["subtitle"] = {"source": f"csv:{os.path.basename(csv_path or 'subtitles.csv')}", "version": None}
    elif cues.get("subtitle"):
        rec["subtitle"] = cues["subtitle"]
        prov["subtitle"] = cues["provenance"]["subtitle"]
    rec["subtitle_language"] = cues.get("language")
    rec["tone"] = cues.get("tone")
    rec["prosody"] = cues.get("prosody")
    if cues.get("tone"):
        prov["tone"] = cues["provenance"]["tone"]
    rec["flags"] = sorted(set(rec["flags"]) | set(cues.get("flags", [])))


def text_stage(cfg: EmollmConfig, out: Path, records: list[dict[str, Any]], *, writer, write, describer=None) -> dict[str, Any]:  # noqa: ANN001
    """Visual description, AU phrases, coarse description, reasoning, filter + split, instruction JSONL (in place)."""
    from data_builders.instructions import filter_reasoning, record_label, write_instructions
    from data_builders.phrases import describe_expression, load_phrases
    from data_builders.writers import WriterItem, coarse_description

    b = cfg.build
    phrases = load_phrases(b.phrases)
    for rec in records:
        rec["visual_description"] = None  # only the describer fills it; never invented
    describer_stats: dict[str, Any] = {}
    if describer is not None:
        from data_builders.describers import describe_records

        describer_stats = describe_records(describer, records, out)
    for rec in records:
        prov = rec["provenance"]
        rec["expression"] = describe_expression(rec.get("aus_present_at_peak") or [], rec.get("aus_at_peak"),
                                                phrases, rec["id"], cfg.run.seed, b.expression_max_aus)  # fmt: skip
        if rec["expression"]:
            prov["expression"] = phrases.provenance
        rec["coarse_description"] = None
        if b.describe:
            rec["coarse_description"] = coarse_description(visual=rec["visual_description"], expression=rec["expression"],
                                                           tone=rec.get("tone"), subtitle=rec.get("subtitle"))  # fmt: skip
            if rec["coarse_description"]:
                from data_builders.writers import load_writer_prompt, prompt_version

                prov["coarse_description"] = {"source": "template:coarse_description",
                                              "version": prompt_version(load_writer_prompt("coarse_description"))}  # fmt: skip
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


def _label_fields(series: AUSeries | None, cfg: EmollmConfig) -> dict[str, Any]:
    """Peak frame and the AU-rule label there (the fused pseudo-label is made at merge time, when
    every cue is known: :func:`fuse_record`)."""
    from data_builders.peak import speech_masked

    b = cfg.build
    table = load_rules(b.rules)
    label_set = load_label_set(cfg.data.label_set)
    fields: dict[str, Any] = {
        "peak_frame": None, "aus_at_peak": None, "aus_present_at_peak": [], "pseudo_label": None,
        "pseudo_label_confidence": None, "rule_label": None, "rule_confidence": None, "rule_scores": None,
    }  # fmt: skip
    peak = find_peak(series, b.peak_frame, top_k=b.peak_top_aus, ignore=b.peak_ignore_aus) if series is not None else None
    if peak is not None:
        at_peak = {au: round(float(series.intensity[peak.position, j]), 3) for j, au in enumerate(MERR_AUS)}
        _, presence = speech_masked(series)
        present = [au for j, au in enumerate(MERR_AUS) if presence[peak.position, j]]
        evidence = {k: float(v[peak.position]) for k, v in series.extra.items()}
        result = pseudo_label(at_peak, table, label_set, present=present, evidence=evidence)
        voiced = bool(series.voiced[peak.position]) if series.voiced is not None else False
        fields.update(
            peak_frame={"index": peak.frame_index, "timestamp_s": round(peak.timestamp_s, 4), "method": peak.method,
                        "aus": list(peak.aus), "voiced": voiced},
            aus_at_peak=at_peak,
            aus_present_at_peak=present,
            pseudo_label=result.label,
            pseudo_label_confidence=result.confidence,
            rule_label=result.label,
            rule_confidence=result.confidence,
            rule_scores=result.scores,
        )  # fmt: skip
    fields["_label_provenance"] = {"source": f"rules:{table.name}", "version": f"{table.version}+{table.digest}"}
    return fields


# flag -> factor on the fused confidence: several people (the main one may not be the speaker), a head
# turned too far to measure in some frames, a face that leaves the frame
CONFIDENCE_PENALTIES = {"multiple_faces": 0.7, "face_turned_away": 0.6, "face_partly_absent": 0.85}


def fuse_record(rec: dict[str, Any], expression: dict[str, Any] | None, cfg: EmollmConfig) -> None:
    """The record's pseudo-label from every cue's vote (in place; docs/builder.md, "Pseudo-labels").

    The AU rules, the expression model (``expression``: the part's clip-level probabilities), the
    subtitle and the tone vote; each vote, the agreement and the fused confidence are kept in
    ``cue_votes`` and the label's provenance; disagreeing cues flag ``cues_disagree`` (review)."""
    from data_builders import fusion

    label_set = load_label_set(cfg.data.label_set)
    still = (rec.get("media") or {}).get("kind") == "image"
    votes: list[fusion.Vote | None] = []
    if rec.get("rule_label") is not None:
        votes.append(fusion.rule_vote(rec["rule_label"], rec.get("rule_confidence") or 0.0, label_set, still=still))
    if expression and expression.get("probabilities"):
        votes.append(fusion.expression_vote(expression["probabilities"], label_set, model=expression.get("model", "?")))
    votes.append(fusion.subtitle_vote(rec.get("subtitle"), label_set))
    votes.append(fusion.tone_vote(rec.get("prosody"), label_set))
    prov = rec.setdefault("provenance", {})
    if expression and expression.get("probabilities"):
        prov["expression_model"] = {"source": expression.get("model"), "version": expression.get("version"),
                                    "frames": expression.get("frames_used")}  # fmt: skip
    if not cfg.build.fusion or rec.get("peak_frame") is None and not (expression and expression.get("probabilities")):
        rec["cue_votes"] = None
        rec["cue_agreement"] = None
        return
    fused = fusion.fuse([v for v in votes if v is not None], label_set)
    if fused is None:
        return
    # what makes the face evidence less sure lowers the confidence (never a confident wrong label)
    penalties = {f: CONFIDENCE_PENALTIES[f] for f in rec.get("flags") or [] if f in CONFIDENCE_PENALTIES}
    confidence = fused.confidence
    for factor in penalties.values():
        confidence *= factor
    rec["pseudo_label"] = fused.label
    rec["pseudo_label_confidence"] = round(confidence, 4)
    rec["confidence_penalties"] = penalties or None
    rec["cue_votes"] = {name: v.as_dict() for name, v in fused.votes.items()}
    rec["cue_agreement"] = fused.agreement
    rec["pseudo_label_distribution"] = fused.distribution
    prov["pseudo_label"] = {"source": "fusion:" + "+".join(sorted(fused.votes)), "version": fusion.VERSION,
                            "rules": prov.get("pseudo_label", {}).get("version")}  # fmt: skip
    flags = set(rec.get("flags") or [])
    flags.discard("cues_disagree")
    if fused.disagree:
        flags.add("cues_disagree")
    rec["flags"] = sorted(flags)


def _au_version(source: str) -> str:
    if source == "builtin":
        from data_builders.au.landmark_au import VERSION
    elif source == "openface_csv":
        from data_builders.au.openface_csv import VERSION
    else:
        from data_builders.au.openface_bin import VERSION
    return VERSION


def _make_record(clip_id: str, path: Path, out_dir: Path, info, series: AUSeries | None, flags: list[str], cfg: EmollmConfig) -> dict[str, Any]:  # noqa: ANN001
    fields = _label_fields(series, cfg)
    label_prov = fields.pop("_label_provenance")
    src = cfg.build.au_source if series is not None else None
    return {
        "schema_version": RECORD_VERSION,
        "id": clip_id,
        "media": {"path": os.path.relpath(path, out_dir).replace(os.sep, "/"), "kind": info.kind},
        "duration_s": round(float(info.duration_s or 0.0), 4),
        "fps": info.fps,
        "num_frames": info.num_frames,
        "has_video": bool(info.has_video),
        "has_audio": bool(info.has_audio),
        "aus_file": aus_rel(clip_id) if series is not None else None,
        "au_source": src,
        "frames_analysed": series.num_frames if series is not None else 0,
        "face_frames": series.face_frames if series is not None else 0,
        **fields,
        "label": None,
        "subtitle": None,
        "split": "coarse",
        "flags": sorted(set(flags)),
        "provenance": {
            "au": {"source": src, "version": _au_version(src)} if src else None,
            "peak_frame": {"source": f"peak:{cfg.build.peak_frame}", "version": BUILDER_VERSION},
            "pseudo_label": label_prov,
            "builder": {"source": "emollm build", "version": __version__},
        },
        "review": {"state": "unreviewed", "by": None, "note": None},
    }


def _extract(clip: inputs_mod.ClipInput, info, cfg: EmollmConfig, analysis) -> AUSeries:  # noqa: ANN001
    """The clip's AUs: the analysis' own (built-in source) or OpenFace's, aligned to its voiced frames."""
    b = cfg.build
    if b.au_source == "builtin":
        return analysis.aus
    if b.au_source == "openface_csv":
        from data_builders.au.openface_csv import find_csv, read_openface_csv

        series = read_openface_csv(find_csv(b.openface_dir, clip.id), min_confidence=b.min_confidence,
                                   presence_threshold=b.presence_threshold, fps=info.fps)  # fmt: skip
    else:
        from data_builders.au import openface_bin

        series = openface_bin.extract(clip.path, binary=openface_bin.find_binary(b.openface_bin), min_confidence=b.min_confidence,
                                      presence_threshold=b.presence_threshold, fps=info.fps)  # fmt: skip
    if info.kind != "image" and info.duration_s and info.duration_s > b.max_duration_s:
        keep = series.timestamps_s < b.max_duration_s
        for name in ("intensity", "presence", "frame_indices", "timestamps_s", "face"):
            setattr(series, name, getattr(series, name)[keep])
        series.flags.append("truncated_to_max_duration")
    if analysis is not None and analysis.audio is not None and b.speech_aware_peak and info.kind != "image":
        from data_builders.tone import voiced_at

        series.voiced = voiced_at(analysis.audio, series.timestamps_s, silence_dbfs=b.silence_dbfs)
    return series


def _face_track(analysis) -> dict[str, Any] | None:  # noqa: ANN001
    """Which face the clip's record speaks of, and why: the main track (seen in the most sampled
    frames, then the largest mean box) among all tracks found."""
    track = getattr(analysis, "track", None)
    if track is None or track.main is None:
        return None
    main = track.main
    sizes = [max(d.box[2] - d.box[0], d.box[3] - d.box[1]) for d in main.detections]
    return {"tracks": track.num_tracks, "main_frames": main.num_frames, "frames": track.num_frames,
            "main_face_px": round(float(sum(sizes) / len(sizes)), 1),
            "other_tracks_frames": [t.num_frames for t in track.tracks[1:]][:8],
            "bridged": len(getattr(track, "bridged", []) or []), "redetected": len(getattr(track, "redetected", []) or []),
            "rule": "main speaker = the track seen in the most frames, then the largest face"}  # fmt: skip


def _expression(analysis, cfg: EmollmConfig) -> dict[str, Any] | None:  # noqa: ANN001
    """The expression model's clip-level vote on the analysis' face frames (None: off or no face)."""
    model = _expression_model(cfg.build.expression_model)
    if model is None or analysis is None or not analysis.face_positions:
        return None
    import numpy as np

    from data_builders.expression import expression_cue

    au = analysis.au_positions  # the frames the AUs were measured on, not the encoders' extra ones
    landmarks = [None if np.isnan(analysis.landmarks[p, 0, 0]) else analysis.landmarks[p] for p in au]
    if not any(lm is not None for lm in landmarks):
        return None
    cue = expression_cue(analysis.frames.array[au], landmarks, load_label_set(cfg.data.label_set), model=model)
    # canonical emotions, not the run's label set: a relabel with another set reuses this vote
    mean = cue.frame_probabilities.mean(axis=0)
    probs: dict[str, float] = {}
    for cls, p in zip(cue.classes, mean.tolist(), strict=True):
        key = model.spec.canonical_of(cls)
        probs[key] = round(probs.get(key, 0.0) + float(p), 5)
    return {"probabilities": probs, "frames_used": cue.vote.frames_used, "model": model.name, "version": model.version}


def process_clip(clip: inputs_mod.ClipInput, out_dir: Path, cfg: EmollmConfig, au_fp: str, label_fp: str, reuse_aus: bool = False,
                 cue_fp: str | None = None, reuse_cues: bool = False, keep: dict | None = None) -> dict[str, Any]:  # fmt: skip
    """Analyse one clip, write its side file and part file (atomically); returns the part. ``keep``: a
    dict that receives the clip's :class:`~data_builders.analysis.ClipAnalysis` (with the encoders'
    frames decoded in the same pass), for a caller that encodes the clip next (``emollm infer``)."""
    from emollm.media import probe

    start = time.perf_counter()
    stage = "probe"
    old_cues = None
    if reuse_cues:
        old = _read_part(out_dir, clip.id)
        old_cues = old.get("cues") if old else None
    part: dict[str, Any] = {"id": clip.id, "au_fingerprint": au_fp, "label_fingerprint": label_fp,
                            "cue_fingerprint": cue_fp if cue_fp is not None else cue_fingerprint(cfg, clip)}  # fmt: skip
    try:
        info = probe(clip.path)
        series: AUSeries | None = None
        flags: list[str] = []
        analysis = None
        if reuse_aus:
            old = json.loads(part_path(out_dir, clip.id).read_text(encoding="utf-8"))
            part["expression"] = old.get("expression")
            part["face_track"] = old.get("face_track")
        if info.has_video and reuse_aus:
            stage = "au"
            series = load_aus(aus_path(out_dir, clip.id))
            flags = list(old["record"]["flags"])
        elif not reuse_aus or old_cues is None:
            from data_builders.analysis import analyse_clip

            stage = "analysis"  # one decode of the clip: frames, face track, audio, voiced frames, AUs
            analysis = analyse_clip(info, cfg, video=not reuse_aus, aus=None if not reuse_aus else False,
                                    encoder_frames=keep is not None, audio=True if keep is not None else None)
            if keep is not None:
                keep[clip.id] = analysis
        if not info.has_video:
            flags.append("no_video")
        elif not reuse_aus:
            stage = "au"
            series = _extract(clip, info, cfg, analysis)
            flags = sorted(set(series.flags) | set(analysis.flags))
            pool_mod.stop_if_orphaned()
            save_aus(series, aus_path(out_dir, clip.id))
            stage = "expression"
            part["expression"] = _expression(analysis, cfg)
            part["face_track"] = _face_track(analysis)
        if not info.has_audio:
            flags.append("no_audio")
        stage = "cues"
        part["cues"] = old_cues if old_cues is not None else audio_cues(info, cfg, audio=analysis.audio if analysis else None)
        stage = "label"
        part["status"] = "ok"
        part["record"] = _make_record(clip.id, clip.path, out_dir, info, series, flags, cfg)
        part["clip_seconds"] = 0.0 if reuse_aus else float(info.duration_s or 0.0)
    except (MediaError, AUExtractionError, UnsafePathError) as exc:
        part["status"] = "error"
        part["error"] = {"id": clip.id, "path": str(clip.path), "stage": stage, "error_type": type(exc).__name__,
                         "reason": getattr(exc, "cause", None) or exc.message}  # fmt: skip
        part["clip_seconds"] = 0.0
    part["elapsed_s"] = round(time.perf_counter() - start, 4)
    part["relabelled"] = reuse_aus
    pool_mod.stop_if_orphaned()  # a part written after the build died would race a rerun
    _atomic_write(part_path(out_dir, clip.id), json.dumps(part, ensure_ascii=False))
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
    analyses: dict | None = None,
) -> BuildSummary:
    """Build (or resume) a dataset from ``clips_dir`` into ``out_dir``; see the module docstring.
    ``analyses``: a dict that receives each analysed clip's ClipAnalysis (in-process, one worker)."""
    t0 = time.perf_counter()
    out = ensure_folder(out_dir, "build --out").resolve()  # a file or a loop there: one line, not a traceback
    ensure_folder(out / PARTS_DIR, "build --out")
    workers = workers or cfg.build.workers
    if cfg.build.au_source == "openface_bin":
        from data_builders.au.openface_bin import find_binary

        find_binary(cfg.build.openface_bin)  # fail before any clip
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
    check_setup(cfg)  # fail before any clip: whisper model, phrase table, writer prompt
    writer = make_writer_for(cfg, out) if merge else None
    describer = make_describer_for(cfg, out) if merge else None
    cue_fps = {c.id: cue_fingerprint(cfg, c) for c in clips}

    todo: list[tuple] = []
    for clip in mine:
        au_fp = au_fingerprint(cfg, clip)
        cue_fp = cue_fps[clip.id]
        part = _read_part(out, clip.id)
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
    log.info("build: %d clip(s) in shard %d/%d, %d already done, %d to process with %d worker(s)",
             len(mine), index, count, summary.reused, len(todo), workers)  # fmt: skip

    def account(part: dict[str, Any]) -> None:
        if part["status"] == "error":
            summary.failed += 1
            log.warning("%s: failed at %s: %s", part["id"], part["error"]["stage"], part["error"]["reason"])
        elif part.get("relabelled"):
            summary.relabelled += 1
        else:
            summary.computed += 1
        summary.clip_seconds += part.get("clip_seconds", 0.0)

    if workers <= 1 or len(todo) <= 1 or analyses is not None:
        for args in progress(todo, desc="build", total=len(todo), unit="clip"):
            account(process_clip(*args, keep=analyses))
    else:
        # The workers run torch (the MTCNN detector, the expression model, whisper), whose thread pool
        # hangs in a forked child once the parent used it: spawn, always (each worker imports once).
        ctx = multiprocessing.get_context("spawn")
        threads = max(1, (os.cpu_count() or 1) // workers)
        with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=pool_mod.worker_init,
                                    initargs=(threads, os.getpid())) as pool:
            futures = [pool.submit(_work, args) for args in todo]
            for fut in progress(cf.as_completed(futures), desc="build", total=len(futures), unit="clip"):
                account(fut.result())

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
        _atomic_write(out / "summary.txt", summary.table() + "\n")
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
        rec = dict(part["record"])
        gt = inputs_mod.lookup(labels, clip) or {}
        rec["label"] = gt.get("label")
        rec["split"] = gt.get("split") or rec["split"]
        rec["subtitle"] = inputs_mod.lookup(subtitles, clip)
        apply_cues(rec, part.get("cues"), csv_subtitle=rec["subtitle"], csv_path=cfg.data.subtitles_csv)
        rec["face_track"] = part.get("face_track")
        fuse_record(rec, part.get("expression"), cfg)
        records.append(rec)
    from data_builders.review import apply_reviews

    apply_reviews(out, records)  # human corrections (reviews.jsonl) win over the labels CSV, on every re-run
    text_stats = text_stage(cfg, out, records, writer=writer, write=_atomic_write, describer=describer)
    _atomic_write(out / "annotations.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    _atomic_write(out / "errors.jsonl", "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in errors))
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
                     "au": _au_version(cfg.build.au_source), "rules": f"{table.name}/{table.version}+{table.digest}"},
    }  # fmt: skip
    _atomic_write(out / "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    save_resolved(cfg, out, command="build")
    summary.merged = True
    summary.records, summary.errors = len(records), len(errors)
    summary.labels = dict(by_label)
    summary.flags = dict(flags)
    summary.failed_by_stage = manifest["errors_by_stage"]
    summary.failed = len(errors)  # the dataset's failures, whichever run found them
    summary.text = text_stats


__all__ = ["BuildSummary", "EmollmError", "build", "merge_outputs", "parse_shard", "process_clip"]
