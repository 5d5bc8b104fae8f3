"""`emollm features`: each frozen encoder once per clip of a built dataset, into the feature cache.

Per batch of ``features.batch_size`` clips: each clip is decoded once (``cfg.media``), its main face
tracked and cropped once, then each encoder runs once over the batch (``extract_batch``); a ``text``
encoder reads the record's subtitle (a clip without one: absent, like a clip without a face). Resumable:
entries already in the cache (features or an ``absent`` mark) whose inputs are this config's are
skipped, stale ones recomputed (:mod:`emollm.features.key`), and every file is renamed into place,
so ``kill -9`` loses at most the batch in flight. Shardable: ``shard=(i, N)`` takes every N-th record
from i (under ``accelerate launch``: RANK / WORLD_SIZE). A clip that fails is written to ``.errors/``
(merged into ``errors.jsonl``) and the run goes on. The AU modality is not extracted here: the
training dataset reads the builder's AU side file. Nor are imported modalities (encoder kind
``precomputed``: they cannot be computed): their entries are looked up and counted, present or
missing (``emollm import emotion-llama-features`` fills them); a missing one fails no clip.
"""

from __future__ import annotations

import functools
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_builders.pool import stop_if_orphaned  # light: no torch
from emollm.dataset.io import atomic_write_bytes
from emollm.errors import EmollmError
from emollm.features.cache import FeatureCache, safe_name
from emollm.features.key import IMPORTED_KINDS
from emollm.log import get_logger, progress

log = get_logger(__name__)

ERRORS_DIR = ".errors"
FACE_KINDS = ("face", "video")
TEXT_KINDS = ("text",)  # read from the record (its subtitle), not from the media


def encoder_inputs(encoders: dict[str, Any], clip: Any, crops: Any, *,
                   subtitle: str | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """What each frozen modality's encoder reads from a decoded clip: ``visual`` the sampled frames,
    ``face`` / ``video`` the aligned face crops, ``audio`` the 16 kHz samples, ``text`` the clip's
    ``subtitle`` (the record's field). ``encoders`` is ``cfg.model.encoders``; ``clip`` may be None
    when only text is asked for. Returns ``(inputs, absent)``: absent maps a modality to why it has
    no input. The AU modality is never here (its sequence comes from the dataset builder), nor an
    imported (``precomputed``) one (no encoder input: its features come from the cache)."""
    face_images = crops.images if crops is not None and len(crops) else None
    by_kind = {"visual": getattr(clip, "frames", None), "face": face_images, "video": face_images,
               "audio": getattr(clip, "audio", None),
               "text": subtitle if isinstance(subtitle, str) and subtitle.strip() else None}  # fmt: skip
    why = {"visual": "no frames", "face": "no face", "video": "no face", "audio": "no audio", "text": "no subtitle"}
    inputs, absent = {}, {}
    for name, enc in encoders.items():
        if enc.modality == "au" or enc.modality in IMPORTED_KINDS:
            continue
        if by_kind[enc.modality] is None:
            absent[name] = why[enc.modality]
            continue
        inputs[name] = by_kind[enc.modality]
    return inputs, absent


def decode_for_encoders(cfg: Any, path: str | os.PathLike, *, audio: bool = True,
                        faces: bool = True) -> tuple[Any, Any]:
    """(decoded clip, face crops or None) with the config's media settings: one decode, one face track.

    The clip analysis of the builder (``data_builders.analysis``) does it: the encoders' frames are
    decoded with the AU frames and the main face is tracked over both with the builder's detector
    settings, so the face the encoders see is the face the builder measured."""
    from data_builders.analysis import analyse_clip
    from emollm.media import probe

    analysis = analyse_clip(probe(path), cfg, faces=faces, audio=bool(audio), aus=False, encoder_frames=True)
    return encoder_view(cfg, analysis, faces=faces)


def encoder_view(cfg: Any, analysis: Any, *, faces: bool = True) -> tuple[Any, Any]:
    """(clip, face crops or None) for the frozen encoders from a ClipAnalysis decoded with
    ``encoder_frames=True`` (no second decode, no second face detection)."""
    clip = analysis.encoder_clip()
    if clip.audio is not None and cfg.media.sample_rate != analysis.sample_rate:
        from emollm.media.audio import load_audio_from

        clip.audio, clip.sample_rate = load_audio_from(analysis.info, cfg.media.sample_rate), cfg.media.sample_rate
    crops = analysis.encoder_crops(cfg.media.face.crop_size) if faces else None
    return clip, crops


def peak_frame_input(cfg: Any, dataset: Path, record: dict[str, Any], clip: Any) -> Any:
    """The record's peak frame (the builder's) as a one-frame batch ``(1, H, W, 3)`` for a
    ``frames: peak`` visual encoder; the middle sampled frame when the builder found no peak (no face)."""
    from emollm.media.video import read_frames

    index = (record.get("peak_frame") or {}).get("index")
    if index is None or clip.info.kind == "image":
        middle = len(clip.frames) // 2
        return clip.frames[middle : middle + 1]
    return read_frames(dataset / record["media"]["path"], [int(index)], max_side=cfg.media.max_side).array


@dataclass
class FeaturesSummary:
    clips: int = 0  # records in this shard
    entries_computed: int = 0  # (clip, modality) features written
    entries_absent: int = 0  # (clip, modality) recorded as absent (no face / no audio)
    entries_reused: int = 0  # already in the cache
    entries_stale: int = 0  # in the cache but made from other inputs: recomputed (counted in computed / absent)
    entries_corrupt: int = 0  # in the cache but damaged (unreadable, another clip's, checksum, NaN): recomputed
    clips_decoded: int = 0
    failed: int = 0
    wall_s: float = 0.0
    cache_dir: str = ""
    shard: str = "0/1"
    imported: list[str] = field(default_factory=list)  # modalities of kind precomputed: looked up, never computed
    imported_present: int = 0  # (clip, imported modality) entries in the cache, fresh
    imported_missing: int = 0  # ... missing, stale or damaged: to import (not failed clips)

    def table(self) -> str:
        rate = self.clips_decoded / self.wall_s if self.wall_s > 0 else 0.0
        rows = [("cache", self.cache_dir), ("shard", self.shard), ("clips", self.clips),
                ("decoded", self.clips_decoded), ("features written", self.entries_computed),
                ("absent (no input)", self.entries_absent), ("reused", self.entries_reused),
                ("stale (recomputed)", self.entries_stale), ("corrupt (recomputed)", self.entries_corrupt),
                ("failed clips", self.failed), ("wall s", f"{self.wall_s:.1f} ({rate:.2f} clips/s)")]  # fmt: skip
        if self.imported:
            rows[-1:-1] = [("imported present", f"{self.imported_present} ({', '.join(self.imported)}: "
                                                 "imported features, never computed here)"),
                           ("imported missing", f"{self.imported_missing}" + (
                               " (import them: emollm import emotion-llama-features --config CFG DATASET_DIR "
                               "--from ROOT)" if self.imported_missing else ""))]
        return "\n".join(f"{k:<20} {v}" for k, v in rows)


def _device(cfg: Any) -> str:
    import torch

    if cfg.features.device:
        return cfg.features.device
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0') or 0)}"
    return "cpu"


def _error_path(cache: FeatureCache, clip_id: str) -> Path:
    from emollm.paths import inside  # flat safe_name, and no symlink in the cache leading out

    return inside(cache.root / ERRORS_DIR, safe_name(clip_id) + ".json", name=clip_id)


def _record_error(cache: FeatureCache, clip_id: str, stage: str, err: Exception) -> dict[str, str]:
    """Write the clip's ``.errors/`` file; returns it (the driver logs it: it may run on another node)."""
    reason = getattr(err, "cause", None) or (err.message if isinstance(err, EmollmError) else str(err))
    data = {"id": clip_id, "stage": stage, "error": type(err).__name__, "reason": reason}
    stop_if_orphaned()
    atomic_write_bytes(_error_path(cache, clip_id), json.dumps(data, ensure_ascii=False).encode())
    return data


def _merge_errors(cache: FeatureCache) -> int:
    folder = cache.root / ERRORS_DIR
    lines = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            lines.append(json.dumps(json.loads(path.read_text(encoding="utf-8")), ensure_ascii=False))
        except (OSError, ValueError):
            continue
    atomic_write_bytes(cache.root / "errors.jsonl", "".join(line + "\n" for line in lines).encode())
    return len(lines)


def _same_size_groups(items: list[tuple[str, Any]]) -> list[list[tuple[str, Any]]]:
    """Items grouped by image size ((N, H, W, 3) inputs); audio and other inputs stay in one group."""
    groups: dict[Any, list[tuple[str, Any]]] = {}
    for clip_id, x in items:
        shape = getattr(x, "shape", ())
        groups.setdefault(tuple(shape[1:]) if len(shape) == 4 else None, []).append((clip_id, x))
    return list(groups.values())


@dataclass(frozen=True)
class FeatureJob:
    """What a worker needs to extract a batch of clips, shipped once per run: the config, the dataset,
    the encoders' fingerprints as the driver computed them (a worker whose weights differ stops the
    run instead of writing under another folder), the device and the run's key."""

    cfg: Any
    dataset: str
    fingerprints: dict[str, str]
    device: str
    key: str


class _Extractor:
    """One process's encoders and cache for a run: extracts batches of clips (the per-clip work of every
    engine: the driver's own for the local engine, each worker's for Ray)."""

    def __init__(self, cfg: Any, dataset: Path, cache: FeatureCache, frozen: dict[str, Any], encoders: dict[str, Any]):
        self.cfg, self.dataset, self.cache, self.frozen, self.encoders = cfg, dataset, cache, frozen, encoders

    @classmethod
    def load(cls, job: FeatureJob) -> _Extractor:
        """In a worker: the encoders built from the config on the job's device, checked against the driver's."""
        from emollm.modeling.encoders import build_encoder

        dataset = Path(job.dataset)
        cache = FeatureCache.from_config(job.cfg, dataset)  # records read from annotations.jsonl when needed
        frozen = _frozen(job.cfg)
        encoders = {}
        for name, enc in frozen.items():
            encoders[name] = build_encoder(enc.modality, enc.name_or_path, **enc.options).to(job.device)
            fp = cache.register(name, encoders[name])
            if fp != job.fingerprints.get(name):
                import socket

                raise EmollmError(f"encoder '{name}' ({enc.name_or_path}) on {socket.gethostname()} has fingerprint "
                                  f"{fp[:16]}, the driver's {str(job.fingerprints.get(name))[:16]}: other weights or code",
                                  hint="every node must see the same encoder files and emollm version")  # fmt: skip
        return cls(job.cfg, dataset, cache, frozen, encoders)

    def run(self, chunk: list[tuple[dict[str, Any], list[str]]]) -> dict[str, Any]:
        """Extract one batch of ``(record, modalities needed)``: each clip decoded once, each encoder once
        over the batch; features, absent marks and error files written (atomically). Returns the counts
        and the errors."""
        cfg, dataset, cache, frozen, encoders = self.cfg, self.dataset, self.cache, self.frozen, self.encoders
        out: dict[str, Any] = {"computed": 0, "absent": 0, "decoded": 0, "failed": 0, "errors": []}
        decoded: list[tuple[dict, dict[str, Any]]] = []  # (record, inputs per needed modality)
        for record, needed in chunk:
            clip_id = record["id"]
            kinds = {frozen[n].modality for n in needed}
            clip = crops = None
            if kinds - set(TEXT_KINDS):  # a clip whose only missing entries are text needs no decoding
                try:
                    clip, crops = decode_for_encoders(
                        cfg, dataset / record["media"]["path"],
                        audio="audio" in kinds and record.get("has_audio", True),
                        faces=bool(kinds & set(FACE_KINDS)),
                    )
                except EmollmError as err:
                    out["failed"] += 1
                    out["errors"].append(_record_error(cache, clip_id, "decode", err))
                    continue
                out["decoded"] += 1
            inputs, absent = encoder_inputs({n: frozen[n] for n in needed}, clip, crops,
                                            subtitle=record.get("subtitle"))
            try:
                for name in inputs:
                    if frozen[name].options.get("frames") == "peak":
                        inputs[name] = peak_frame_input(cfg, dataset, record, clip)
            except EmollmError as err:
                out["failed"] += 1
                out["errors"].append(_record_error(cache, clip_id, "decode peak frame", err))
                continue
            for name, reason in absent.items():
                stop_if_orphaned()  # a worker whose driver died writes nothing more (a rerun may be running)
                cache.put_absent(clip_id, name, reason)
                out["absent"] += 1
            decoded.append((record, inputs))
        batch_size = cfg.features.batch_size
        failed: set[str] = set()
        for name in frozen:
            items = [(r["id"], inp[name]) for r, inp in decoded if name in inp and r["id"] not in failed]
            if not items:
                continue
            try:
                results = []
                for group in _same_size_groups(items):  # frames of different sizes cannot share a batch
                    feats = encoders[name].extract_batch([x for _, x in group], batch_size=batch_size)
                    results += list(zip([i for i, _ in group], feats, strict=True))
            except EmollmError:  # find the clip at fault: one by one
                results = []
                for clip_id, x in items:
                    try:
                        results.append((clip_id, encoders[name].extract(x)))
                    except EmollmError as err:
                        failed.add(clip_id)
                        out["errors"].append(_record_error(cache, clip_id, f"encoder {name}", err))
            for clip_id, tensor in results:
                if clip_id not in failed:
                    try:
                        stop_if_orphaned()
                        cache.put(clip_id, name, tensor)
                    except EmollmError as err:  # NaN / inf features: refused, the clip is an error
                        failed.add(clip_id)
                        out["errors"].append(_record_error(cache, clip_id, f"encoder {name}", err))
                        continue
                    out["computed"] += 1
        out["failed"] += len(failed)
        for record, _ in decoded:
            if record["id"] not in failed:
                _error_path(cache, record["id"]).unlink(missing_ok=True)
        return out


def _lost_batch(cache: FeatureCache, chunk: list, lost: Any) -> dict[str, Any]:
    """A batch the engine gave up on (its worker died on every attempt): each clip an error (stage
    ``worker``); their entries are still missing, so the next run extracts them again."""
    errors = []
    for record, _ in chunk:
        data = {"id": record["id"], "stage": "worker", "error": lost.error_type,
                "reason": f"{lost.reason} ({lost.attempts} attempt(s))"}
        atomic_write_bytes(_error_path(cache, record["id"]), json.dumps(data, ensure_ascii=False).encode())
        errors.append(data)
    return {"computed": 0, "absent": 0, "decoded": 0, "failed": len(chunk), "errors": errors}


_IN_HAND: dict[str, _Extractor] = {}  # this process's extractor of the run in progress (one run at a time)


def extract_chunk(job: FeatureJob, chunk: list[tuple[dict[str, Any], list[str]]]) -> dict[str, Any]:
    """The engines' task: one batch of clips with this process's extractor for ``job`` (the driver's own
    encoders when it runs here; loaded once per worker process elsewhere)."""
    extractor = _IN_HAND.get(job.key)
    if extractor is None:
        _IN_HAND.clear()  # a worker kept from an earlier run: free its encoders first
        extractor = _IN_HAND[job.key] = _Extractor.load(job)
    return extractor.run(chunk)


def _frozen(cfg: Any) -> dict[str, Any]:
    return {name: enc for name, enc in cfg.model.encoders.items() if enc.modality != "au" and enc.modality not in IMPORTED_KINDS}


def task_resources(cfg: Any, engine: Any, *, cpus_per_task: float = 1.0, gpus_per_task: float | None = None) -> Any:
    """The request of one feature task: ``cpus_per_task`` CPUs and ``gpus_per_task`` GPUs (None: one GPU
    when ``features.device`` names cuda, else none). The local engine runs on this process's device."""
    from emollm.engines import Resources

    device = cfg.features.device or ""
    gpus = gpus_per_task if gpus_per_task is not None else (1.0 if device.startswith("cuda") else 0.0)
    if engine.name != "local" and device.startswith("cuda") and not gpus:
        from emollm.errors import ConfigError

        raise ConfigError(f"features.device={device} with --gpus-per-task 0: the engine's workers would see no GPU",
                          hint="drop --gpus-per-task (one GPU per task), give a fraction (0.25: four tasks share one), "
                               "or set features.device=cpu")  # fmt: skip
    return Resources(cpus=cpus_per_task, gpus=gpus)


def extract_features(cfg: Any, dataset_dir: str | os.PathLike, *, shard: tuple[int, int] = (0, 1),
                     encoders: dict[str, Any] | None = None, engine: Any = None, cpus_per_task: float = 1.0,
                     gpus_per_task: float | None = None) -> FeaturesSummary:
    """Fill the feature cache of ``cfg`` for the records of ``dataset_dir`` in this shard.

    ``encoders`` ({modality: loaded encoder}) is for tests and callers that already hold them;
    by default every frozen encoder of ``cfg.model.encoders`` is built and moved to the device.
    Imported (``precomputed``) modalities are not computed: their entries are counted, present or
    missing (``summary.imported_present`` / ``imported_missing``; missing ones fail no clip).

    ``engine`` (:mod:`emollm.engines`; None: ``local``, this process) runs the batches of
    ``features.batch_size`` clips: ``"ray"`` or a Ray engine makes each batch a task asking
    ``cpus_per_task`` CPUs and ``gpus_per_task`` GPUs (:func:`task_resources`), whose worker builds the
    encoders once (on its GPU when it has one) and checks their fingerprints against this process's.
    The batches, and so the features, are the same on every engine.
    """
    import uuid

    from emollm.config import save_resolved
    from emollm.dataset.record import read_dataset
    from emollm.engines import Engine, Lost, get_engine
    from emollm.modeling.encoders import build_encoder, encoder_options

    t0 = time.perf_counter()
    dataset = Path(dataset_dir)
    records = read_dataset(dataset)
    index, count = shard
    mine = [r for k, r in enumerate(records) if k % count == index]
    own_engine = not isinstance(engine, Engine)
    runner = get_engine(engine) if own_engine else engine  # nothing started until it describes or maps
    resources = task_resources(cfg, runner, cpus_per_task=cpus_per_task, gpus_per_task=gpus_per_task)
    cache = FeatureCache.from_config(cfg, dataset, records=records)
    cache.root.mkdir(parents=True, exist_ok=True)
    summary = FeaturesSummary(clips=len(mine), cache_dir=str(cache.root), shard=f"{index}/{count}")
    if index == 0:
        save_resolved(cfg, cache.root, command="features")

    frozen = _frozen(cfg)
    imported = {name: enc for name, enc in cfg.model.encoders.items() if enc.modality in IMPORTED_KINDS}
    for name, enc in imported.items():
        cache.bind(name, enc.modality, enc.name_or_path, encoder_options(
            enc.modality, enc.options, feature_dim=enc.feature_dim, num_input_tokens=enc.num_input_tokens))
    summary.imported = list(imported)
    local = runner.name == "local"
    # the local engine extracts with these; another engine's workers build their own on their device
    # (these, on the CPU, only fingerprint the encoders: which entries are fresh, and the workers' check)
    device = _device(cfg) if local else ("cuda" if resources.gpus else "cpu")
    if encoders is None:
        encoders = {}
        for name, enc in frozen.items():
            encoders[name] = build_encoder(enc.modality, enc.name_or_path, **enc.options).to(device if local else "cpu")
    for name in frozen:
        cache.register(name, encoders[name])
    log.info("features: %d clip(s) in shard %d/%d, encoders %s -> %s", len(mine), index, count,
             ", ".join(f"{n} ({cache.fingerprints[n][:16]})" for n in frozen) or "none", cache.root)

    for record in mine:  # imported features: looked up as a reader would, never computed
        for name in imported:
            entry = cache.check(record["id"], name, verify=True)
            if entry.state in ("present", "absent"):
                summary.imported_present += 1
                continue
            summary.imported_missing += 1  # stale ones are logged by the cache (once per modality)
            if entry.state == "corrupt":
                log.warning("%s: %s: not served; import it again", entry.file, entry.reason)
    if imported and summary.imported_missing:
        log.warning("features: %d of %d imported entries (%s) are not in the cache: `emollm import "
                    "emotion-llama-features --config CFG %s --from ROOT` imports them", summary.imported_missing,
                    len(mine) * len(imported), ", ".join(imported), dataset)

    todo = []
    for record in mine:
        # verify: each reused entry passes what a reader checks (header, clip id, encoder, checksum,
        # finite values); one read of the cache, the price of never reusing a damaged file
        entries = {n: cache.check(record["id"], n, verify=True) for n in frozen}
        needed = [n for n, entry in entries.items() if entry.state in ("missing", "stale", "corrupt")]
        summary.entries_reused += len(frozen) - len(needed)
        summary.entries_stale += sum(entry.state == "stale" for entry in entries.values())
        for entry in entries.values():
            if entry.state == "corrupt":
                summary.entries_corrupt += 1
                log.warning("%s: %s: recomputed", entry.file, entry.reason)
        if needed:
            todo.append((record, needed))

    batch_size = cfg.features.batch_size
    chunks = [todo[start : start + batch_size] for start in range(0, len(todo), batch_size)]
    job = FeatureJob(cfg, str(dataset), {n: cache.fingerprints[n] for n in frozen}, device, uuid.uuid4().hex)
    _IN_HAND.clear()
    _IN_HAND[job.key] = _Extractor(cfg, dataset, cache, frozen, encoders)  # what a batch run here uses
    try:
        if chunks:
            log.info("features: %d batch(es) of up to %d clip(s) (%s)", len(chunks), batch_size, runner.describe())
        from data_builders.pool import worker_init  # a worker's torch and decoder threads: its CPUs

        done = runner.map(functools.partial(extract_chunk, job), chunks, resources=resources, setup=worker_init,
                          label="emollm-features")
        for k, result in progress(done, desc="features", total=len(chunks), unit="batch"):
            if isinstance(result, Lost):  # the worker died on every attempt: the batch's clips failed, retried next run
                result = _lost_batch(cache, chunks[k], result)
            for err in result["errors"]:
                log.warning("%s: failed at %s: %s", err["id"], err["stage"], err["reason"])
            summary.entries_computed += result["computed"]
            summary.entries_absent += result["absent"]
            summary.clips_decoded += result["decoded"]
            summary.failed += result["failed"]
    finally:
        _IN_HAND.clear()
        if own_engine:
            runner.close()
    _merge_errors(cache)
    summary.wall_s = time.perf_counter() - t0
    log.info("features: %d written, %d absent, %d reused (%d stale, %d corrupt recomputed), %d clip(s) failed "
             "in %.1f s", summary.entries_computed, summary.entries_absent, summary.entries_reused,
             summary.entries_stale, summary.entries_corrupt, summary.failed, summary.wall_s)
    if imported:
        log.info("features: imported (%s): %d present, %d missing", ", ".join(imported), summary.imported_present,
                 summary.imported_missing)
    return summary


__all__ = ["FeatureJob", "FeaturesSummary", "decode_for_encoders", "encoder_inputs", "encoder_view", "extract_chunk",
           "extract_features", "peak_frame_input", "task_resources"]
