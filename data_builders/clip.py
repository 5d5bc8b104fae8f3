"""One clip -> its record, in memory: the builder's per-clip stages, shared by ``emollm build`` and ``emollm infer``.

:func:`clip_stages` runs what the build's worker does to one clip (probe, the one
:func:`~data_builders.analysis.analyse_clip` decode, AUs, expression vote, face track, audio cues, the
record with peak frame and AU-rule label) and returns it in memory, with a failure as an error row
(stage + reason) rather than an exception. The build's runner calls it per clip and writes the part
and AU side files; :func:`finish_record` and :func:`describe_record` are the per-record steps of its
merge (cues into the record, fused pseudo-label; AU phrases, coarse description).
:func:`clip_record` chains all three for one clip with no dataset and no file written: the
:class:`~emollm.inference.Explainer` reads its record, AU series and analysis directly.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_builders import inputs as inputs_mod
from data_builders.au import AUSeries
from data_builders.au.sources import get_au_source
from data_builders.peak import find_peak
from data_builders.rules import load_rules, pseudo_label
from emollm.config import EmollmConfig
from emollm.dataset.aus import MERR_AUS
from emollm.dataset.label_sets import load_label_set
from emollm.dataset.record import RECORD_VERSION
from emollm.errors import AUExtractionError, ConfigError, EmollmError, MediaError, UnsafePathError
from emollm.log import get_logger
from emollm.paths import id_rel
from emollm.version import __version__

log = get_logger(__name__)

AUS_DIR = "aus"
BUILDER_VERSION = "merr_builder/1"


def aus_rel(clip_id: str) -> str:
    """``aus/<clip_id>.npz`` (nested like the id; refused when the id would leave ``aus/``)."""
    return id_rel(clip_id, ".npz", folder=AUS_DIR)


# ------------------------------------------------------------------------------------------ one clip, in memory


@dataclass(eq=False)
class ClipStages:
    """What the per-clip stages gave for one clip: the record as the worker makes it (before the
    merge-time cues), the AU series, the analysis (its decode; None when nothing was decoded), the
    audio cues, the expression vote and face track; or ``error`` (``id``, ``path``, ``stage``,
    ``error_type``, ``reason``: an ``errors.jsonl`` row) when the clip could not be used."""

    id: str
    record: dict[str, Any] | None = None
    series: AUSeries | None = None
    analysis: Any = None  # data_builders.analysis.ClipAnalysis
    cues: dict[str, Any] | None = None
    expression: dict[str, Any] | None = None
    face_track: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    clip_seconds: float = 0.0


def clip_stages(clip: inputs_mod.ClipInput, cfg: EmollmConfig, root: Path, *, encoder_frames: bool = False,
                overlap: bool = False, reused: dict[str, Any] | None = None, load_series: Callable[[], AUSeries] | None = None,
                old_cues: dict[str, Any] | None = None, save_series: Callable[[AUSeries], None] | None = None) -> ClipStages:
    """The build worker's stages for one clip (``root``: what the record's media path is relative to).

    ``encoder_frames``: also decode the frozen encoders' frames (and the audio) in the same pass, for a
    caller that encodes the clip next; ``overlap``: decode while the face is tracked (see
    :func:`~data_builders.analysis.analyse_clip`). Resume (the runner): ``reused`` is the clip's previous part when
    its AUs still hold (``load_series`` reads them back), ``old_cues`` its audio cues when they still
    hold; ``save_series`` writes a freshly measured series (the AU side file) before the slower stages."""
    from emollm.media import probe

    out = ClipStages(id=clip.id)
    reuse_aus = reused is not None
    stage = "probe"
    try:
        info = probe(clip.path)
        flags: list[str] = []
        if reuse_aus:
            out.expression = reused.get("expression")
            out.face_track = reused.get("face_track")
        if info.has_video and reuse_aus:
            stage = "au"
            out.series = load_series()
            flags = list(reused["record"]["flags"])
        elif not reuse_aus or old_cues is None:
            from data_builders.analysis import analyse_clip

            stage = "analysis"  # one decode of the clip: frames, face track, audio, voiced frames, AUs
            out.analysis = analyse_clip(info, cfg, video=not reuse_aus, aus=None if not reuse_aus else False,
                                        encoder_frames=encoder_frames, audio=True if encoder_frames else None,
                                        overlap=overlap)
        analysis = out.analysis
        if not info.has_video:
            flags.append("no_video")
        elif not reuse_aus:
            stage = "au"
            out.series = _extract(clip, info, cfg, analysis)
            flags = sorted(set(out.series.flags) | set(analysis.flags))
            if save_series is not None:
                save_series(out.series)
            stage = "expression"
            out.expression = _expression(analysis, cfg)
            out.face_track = _face_track(analysis)
        if not info.has_audio:
            flags.append("no_audio")
        stage = "cues"
        out.cues = old_cues if old_cues is not None else audio_cues(info, cfg, audio=analysis.audio if analysis else None)
        stage = "label"
        out.record = _make_record(clip.id, clip.path, root, info, out.series, flags, cfg)
        out.clip_seconds = 0.0 if reuse_aus else float(info.duration_s or 0.0)
    except (MediaError, AUExtractionError, UnsafePathError) as exc:
        out.error = {"id": clip.id, "path": str(clip.path), "stage": stage, "error_type": type(exc).__name__,
                     "reason": getattr(exc, "cause", None) or exc.message}  # fmt: skip
    return out


def finish_record(rec: dict[str, Any], stages: Any, cfg: EmollmConfig, *, label: dict[str, Any] | None = None,
                  csv_subtitle: str | None = None, csv_path: str | None = None) -> dict[str, Any]:
    """The merge's per-record step (in place; returns ``rec``): ground truth (``label``: the labels
    CSV row), the subtitle (the CSV's wins over ASR), the audio cues, the face track and the fused
    pseudo-label. ``stages``: a :class:`ClipStages` or a part dict (``cues``, ``face_track``, ``expression``)."""
    get = stages.get if isinstance(stages, dict) else lambda k: getattr(stages, k)
    gt = label or {}
    rec["label"] = gt.get("label")
    rec["split"] = gt.get("split") or rec["split"]
    rec["subtitle"] = csv_subtitle
    apply_cues(rec, get("cues"), csv_subtitle=rec["subtitle"], csv_path=csv_path)
    rec["face_track"] = get("face_track")
    fuse_record(rec, get("expression"), cfg)
    return rec


def describe_record(rec: dict[str, Any], cfg: EmollmConfig, phrases: Any) -> None:
    """The text stage's per-record step (in place): AU phrases (``expression``) and, with
    ``build.describe``, the coarse description; ``visual_description`` must be set (None: no describer)."""
    from data_builders.phrases import describe_expression

    b = cfg.build
    prov = rec["provenance"]
    rec["expression"] = describe_expression(rec.get("aus_present_at_peak") or [], rec.get("aus_at_peak"), phrases,
                                            rec["id"], cfg.run.seed, b.expression_max_aus)  # fmt: skip
    if rec["expression"]:
        prov["expression"] = phrases.provenance
    rec["coarse_description"] = None
    if b.describe:
        from data_builders.writers import coarse_description

        rec["coarse_description"] = coarse_description(visual=rec["visual_description"], expression=rec["expression"],
                                                       tone=rec.get("tone"), subtitle=rec.get("subtitle"))  # fmt: skip
        if rec["coarse_description"]:
            from data_builders.writers import load_writer_prompt, prompt_version

            prov["coarse_description"] = {"source": "template:coarse_description",
                                          "version": prompt_version(load_writer_prompt("coarse_description"))}  # fmt: skip


@dataclass(eq=False)
class ClipRecord:
    """:func:`clip_record`'s answer: the clip's record (as ``annotations.jsonl`` would hold it, minus
    the reasoning writer's text), its AU series and its analysis; or ``error`` (the reason)."""

    record: dict[str, Any] | None
    series: AUSeries | None = None
    analysis: Any = None
    error: str | None = None


def clip_record(path: str | os.PathLike, cfg: EmollmConfig, *, clip_id: str | None = None, subtitle: str | None = None,
                encoder_frames: bool = False, overlap: bool = False) -> ClipRecord:
    """One clip -> its record, in memory (no dataset, no file written): the build's per-clip stages
    then its merge steps, with ``cfg``'s build settings. ``subtitle`` wins over ASR, as a subtitles CSV
    row does in a build (its provenance reads ``csv:subtitles.csv``); no labels CSV, no describer, no
    reasoning writer. ``encoder_frames``: keep the encoders' frames in the analysis; ``overlap``: decode
    while the face is tracked (see :func:`clip_stages`).
    Call :func:`check_setup` once first. A clip the stages cannot use returns ``error`` (the reason)."""
    from data_builders.phrases import load_phrases

    path = Path(path)
    clip = inputs_mod.ClipInput(id=clip_id or path.stem, path=path)
    stages = clip_stages(clip, cfg, path.parent, encoder_frames=encoder_frames, overlap=overlap)
    if stages.error is not None:
        return ClipRecord(None, analysis=stages.analysis, error=stages.error["reason"])
    given = (subtitle or "").strip() or None  # as a subtitles CSV cell is read
    rec = finish_record(dict(stages.record), stages, cfg, csv_subtitle=given,
                        csv_path="subtitles.csv" if given is not None else None)
    rec["visual_description"] = None  # only a describer fills it
    describe_record(rec, cfg, load_phrases(cfg.build.phrases))
    return ClipRecord(rec, stages.series, stages.analysis)


# ------------------------------------------------------------------------------------------ the stages' parts


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


def check_setup(cfg: EmollmConfig) -> None:
    """Fail before any clip when an AU, cue or writer source cannot be had (typed errors)."""
    from data_builders.phrases import load_phrases
    from data_builders.writers import load_writer_prompt

    source = get_au_source(cfg.build.au_source)
    if source.check is not None:
        source.check(cfg)  # a missing OpenFace binary
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
            "au": {"source": src, "version": get_au_source(src).version} if src else None,
            "peak_frame": {"source": f"peak:{cfg.build.peak_frame}", "version": BUILDER_VERSION},
            "pseudo_label": label_prov,
            "builder": {"source": "emollm build", "version": __version__},
        },
        "review": {"state": "unreviewed", "by": None, "note": None},
    }


def _extract(clip: inputs_mod.ClipInput, info, cfg: EmollmConfig, analysis) -> AUSeries:  # noqa: ANN001
    """The clip's AUs: the analysis' own (a source that measures them there) or the source's reader's,
    aligned to the analysis' voiced frames."""
    b = cfg.build
    source = get_au_source(b.au_source)
    if source.from_analysis:
        return analysis.aus
    series = source.read(clip, info, cfg)
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
    cue = expression_cue([analysis.frames.array[p] for p in au], landmarks, load_label_set(cfg.data.label_set), model=model)
    # canonical emotions, not the run's label set: a relabel with another set reuses this vote
    mean = cue.frame_probabilities.mean(axis=0)
    probs: dict[str, float] = {}
    for cls, p in zip(cue.classes, mean.tolist(), strict=True):
        key = model.spec.canonical_of(cls)
        probs[key] = round(probs.get(key, 0.0) + float(p), 5)
    return {"probabilities": probs, "frames_used": cue.vote.frames_used, "model": model.name, "version": model.version}


__all__ = ["AUS_DIR", "BUILDER_VERSION", "ClipRecord", "ClipStages", "apply_cues", "audio_cues", "aus_rel",
           "check_setup", "clip_record", "clip_stages", "describe_record", "finish_record", "fuse_record"]
