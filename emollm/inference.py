"""Explain clips and predict datasets with a trained run: prompts + media in, generated text out.

>>> explainer = emollm.load("runs/my_run")                # the run dir `train.py` wrote
>>> result = explainer.explain("clip.mp4")                 # task "reason" by default
>>> result.label, result.reasoning, result.cues["aus_present_at_peak"]

Three entry points share one generation path (:func:`generate`: left-padded batches, KV cache,
the template's stop tokens):

- :func:`predict_dataset` (``emollm predict``): every record of a built dataset's split, media read
  from the feature cache (entries the cache lacks are computed first with the run's encoders),
  length-sorted batches, one JSON line per sample appended as soon as its batch is done, so a killed
  run resumes where it stopped; the file feeds ``emollm evaluate`` directly.
- :class:`Explainer` (``emollm infer`` and the Python API): each raw clip is analysed in memory by the
  builder's per-clip stages (:func:`data_builders.clip.clip_record`: one decode, face track, AUs, peak
  frame, pseudo-label, whisper subtitle, tone; no dataset, no file written), every modality the model
  was trained with is encoded live from that same decode (the visual encoder on the peak frame where
  the model's config says ``frames: peak``), then generated in batches. A clip that fails anywhere gets
  an error result; the others go on.
- :func:`generate` for callers holding a collated batch (evaluation during training).
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from emollm import config as cfglib
from emollm.errors import ConfigError, EmollmError, MediaTokenMismatchError
from emollm.log import get_logger, progress

log = get_logger(__name__)

TASKS = ("emotion", "reason")


# ------------------------------------------------------------------------------------------ generation
def generation_kwargs(settings: cfglib.PredictConfig, **overrides: Any) -> dict[str, Any]:
    """``model.generate`` keyword arguments from the ``predict`` config (temperature 0: greedy).

    ``overrides`` (None: keep the config's) are checked as the config is: an unknown name or a bad
    value is a :class:`ConfigError`, never silently ignored. ``num_beams > 1``: beam search (with
    ``temperature > 0``: beam sampling); ``temperature > 0``: sampling with ``top_p`` (seed it with
    ``torch.manual_seed`` / ``--seed``).
    """
    values = {k: v for k, v in asdict(settings).items() if k != "batch_size"}
    unknown = sorted(set(overrides) - set(values))
    if unknown:
        raise ConfigError(f"unknown generation option '{unknown[0]}' (valid: {', '.join(values)})")
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        replace(settings, **values).validate()
    except cfglib.ConfigCheck as exc:
        raise ConfigError(f"generation option '{exc.key}': {exc.message}") from None
    sample = values["temperature"] > 0
    kwargs: dict[str, Any] = {"max_new_tokens": values["max_new_tokens"], "num_beams": values["num_beams"],
                              "do_sample": sample}
    if sample:
        kwargs.update(temperature=values["temperature"], top_p=values["top_p"])
    return kwargs


def _move(value: Any, device: torch.device, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device, dtype=dtype if value.is_floating_point() else None)
    if isinstance(value, Mapping):
        return {k: _move(v, device, dtype) for k, v in value.items()}
    return value


@torch.no_grad()  # not inference_mode: mid-training (ZeRO-3) its tensors would poison the next backward
def generate(model: Any, processor: Any, batch: Mapping[str, Any], gen_kwargs: Mapping[str, Any], *,
             streamer: Any = None) -> list[str]:
    """Generated answers (decoded, stripped) for a left-padded batch from
    :class:`~emollm.training.data.EmotionCollator` (``padding_side="left"``).

    ``gen_kwargs`` go to ``model.generate`` (see :func:`generation_kwargs`): greedy, beam search or
    sampling, the media expanded per beam and merged once into the KV cache at prefill. With
    ``num_return_sequences=n`` the list holds ``n`` answers per sample, sample by sample.

    ``streamer``: a transformers streamer (``TextIteratorStreamer(processor.tokenizer, skip_prompt=True,
    skip_special_tokens=True)``) that receives the answer's tokens as they are generated; one sample,
    no beam search (transformers' rule). The returned answer is the same with or without one."""
    if batch["attention_mask"][:, -1].min() == 0:
        raise EmollmError("generate() needs a left-padded batch (EmotionCollator(..., padding_side='left'))")
    extra: dict[str, Any] = {}
    if streamer is not None:
        if len(batch["input_ids"]) != 1 or gen_kwargs.get("num_beams", 1) > 1 or gen_kwargs.get("num_return_sequences", 1) > 1:
            raise ConfigError("streaming the answer needs one clip and one sequence (num_beams 1)",
                              hint="drop the streamer, or generate greedily / by sampling one clip at a time")
        extra["streamer"] = streamer
    device = next(model.parameters()).device
    dtype = next(model.media.parameters(), next(model.parameters())).dtype
    inputs = {k: _move(v, device, dtype) for k, v in batch.items() if k not in ("ids", "labels")}
    stop = processor.template.stop_token_ids(processor.tokenizer)
    out = model.generate(**inputs, eos_token_id=stop, pad_token_id=processor.pad_token_id, **gen_kwargs, **extra)
    new = out[:, inputs["input_ids"].shape[1]:]
    return [text.strip() for text in processor.tokenizer.batch_decode(new, skip_special_tokens=True)]


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices in batches of similar prompt length, longest first (little padding; memory peaks first)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


# ------------------------------------------------------------------------------------------ runs
def run_config(run_dir: str | os.PathLike, overrides: Sequence[str] = ()) -> cfglib.EmollmConfig:
    """The resolved config a run was trained with (``RUN_DIR/config.yaml``), with overrides.

    An export (``emollm export --model``) holds one too, naming its own copies relatively
    (``backbone``, ``encoders/<name>``): model paths that exist under ``run_dir`` are resolved
    against it, as ``config.json``'s are, so a run dir and an export load alike from anywhere.
    """
    from emollm.modeling.configuration import resolve_local_path

    path = Path(run_dir) / cfglib.RESOLVED_CONFIG_NAME
    if not path.is_file():
        raise EmollmError(f"{run_dir}: no {cfglib.RESOLVED_CONFIG_NAME} (the resolved config train.py writes)",
                          hint="pass the run dir that `train.py` / `emollm train` wrote (run.output_dir), or "
                               "an `emollm export --model` of it")
    cfg = cfglib.load(path, overrides)
    model = cfg.model
    model.backbone.name_or_path = resolve_local_path(run_dir, model.backbone.name_or_path)
    for encoder in model.encoders.values():
        encoder.name_or_path = resolve_local_path(run_dir, encoder.name_or_path)
    return cfg


def load_model(run_dir: str | os.PathLike, *, device: str | None = None, dtype: str | None = None) -> tuple[Any, Any]:
    """Model (eval mode, on ``device``) and processor of a run dir; clear errors for missing files."""
    from emollm.modeling.factory import load_run

    path = Path(run_dir)
    if not path.is_dir():
        raise EmollmError(f"run dir {path} does not exist")
    from emollm.exporting import inspect_run

    try:  # a missing adapter / weights / processor file is named, not reported as HF's "no model.safetensors"
        inspect_run(path)
    except EmollmError as err:
        raise EmollmError(err.message, hint="is the run dir complete? (see docs/training.md)") from None
    kwargs = {}
    if dtype and dtype != "auto":
        kwargs["dtype"] = getattr(torch, dtype)
    try:
        model, processor = load_run(path, **kwargs)
    except (OSError, FileNotFoundError) as err:
        raise EmollmError(f"cannot load the run in {path}: {err}", hint="is the run dir complete? (see docs/training.md)") from None
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), processor


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ConfigError(f"unknown task '{task}' (valid: {', '.join(TASKS)})")


def infer_instruction(cfg: cfglib.EmollmConfig, task: str) -> str:
    """The instruction every clip of ``task`` is asked with (:func:`emollm.prompts.configured_instruction`):
    the same clip under two names gets the same prompt, and the same answer."""
    from emollm.prompts import configured_instruction

    return configured_instruction(task, cfg.predict.instruction)


# ------------------------------------------------------------------------------------------ predict
@dataclass
class PredictSummary:
    out: str
    samples: int = 0  # samples of the split
    written: int = 0  # predictions written by this call
    reused: int = 0  # already in the output file (resume)
    features_computed: int = 0  # cache entries computed first (the cache lacked them)
    new_tokens: int = 0
    wall_s: float = 0.0

    def table(self) -> str:
        rate = self.written / self.wall_s if self.wall_s > 0 else 0.0
        rows = [("predictions", self.out), ("samples", self.samples), ("written", self.written),
                ("reused (resume)", self.reused), ("features computed", self.features_computed),
                ("wall s", f"{self.wall_s:.1f} ({rate:.2f} samples/s)")]  # fmt: skip
        return "\n".join(f"{k:<18} {v}" for k, v in rows)


def _done_ids(out: Path) -> set[str]:
    """Ids already predicted in ``out``; a torn last line (killed mid-write) is cut off."""
    if not out.is_file():
        return set()
    data = out.read_bytes()
    keep = data if data.endswith(b"\n") or not data else data[: data.rfind(b"\n") + 1]
    from emollm.dataset.io import parse_jsonl

    ids = {row["id"] for row in parse_jsonl(keep.decode("utf-8").splitlines(), where=out)}
    if keep != data:
        log.warning("%s: dropped a partly written last line (the previous run was killed)", out)
        out.write_bytes(keep)
    return ids


def live_encoders_on_device(model: Any, names: Sequence[str], device: torch.device) -> dict[str, Any]:
    """The model's live encoders of ``names`` (loaded once per model, kept) on ``device``, moved only when
    they are elsewhere (not on every clip)."""
    live = model.load_encoders(list(names))
    for encoder in live.values():
        if hasattr(encoder, "to") and getattr(encoder, "device", None) != device:
            encoder.to(device)
    return live


def _fill_cache(cfg: cfglib.EmollmConfig, model: Any, dataset: Path, records: Iterable[dict]) -> tuple[Any, int]:
    """The feature cache bound to the model's encoders; entries it lacks are computed first (not imported
    ones, kind ``precomputed``: they cannot be; a missing one is the dataset's error, with its hint)."""
    from emollm.features.cache import FeatureCache
    from emollm.features.extract import extract_features
    from emollm.features.key import IMPORTED_KINDS

    if not any(s["kind"] != "au" for s in model.config.modalities.values()):
        return None, 0
    cache = FeatureCache.from_config(cfg, dataset)
    cache.bind_specs(model.config.modalities)
    frozen = [n for n, s in model.config.modalities.items() if s["kind"] != "au" and s["kind"] not in IMPORTED_KINDS]
    missing = sum(cache.status(r["id"], n) == "missing" for r in records for n in frozen)
    if missing:
        log.info("predict: the feature cache lacks %d entries for this run's encoders: computing them", missing)
        # the model's own live encoders (loaded once per model, kept), not a second copy built per call
        live = live_encoders_on_device(model, frozen, next(model.parameters()).device)
        summary = extract_features(cfg, dataset, encoders=live)
        missing = summary.entries_computed + summary.entries_absent
        cache.bind_specs(model.config.modalities)  # bound before the folders existed: bind again
    return cache, missing


def predict_dataset(cfg: cfglib.EmollmConfig, model: Any, processor: Any, dataset_dir: str | os.PathLike,
                    out: str | os.PathLike, *, task: str = "emotion", split: str | None = None,
                    batch_size: int | None = None, limit: int | None = None, **gen_overrides: Any) -> PredictSummary:
    """Generate an answer for every record of ``split`` (None: all) of a built dataset into ``out``
    (JSONL: ``id``, ``task``, ``text`` and, when the record has them, ``gt`` / ``gt_source`` /
    ``gt_reason`` so ``emollm evaluate --predictions out`` needs no references). Resumable."""
    from data_builders.record import read_dataset
    from emollm.training.data import EmotionCollator, EmotionDataset

    _check_task(task)
    t0 = time.perf_counter()
    dataset, out = Path(dataset_dir), Path(out)
    records = [r for r in read_dataset(dataset) if split is None or r.get("split") == split]
    if not records:
        raise EmollmError(f"no record in split '{split}' of {dataset}", hint="choose the split with --split")
    cache, computed = _fill_cache(cfg, model, dataset, records)
    ds = EmotionDataset(dataset, processor, cache, model.config.modalities, split=split, tasks=[task],
                        instruction=cfg.predict.instruction,
                        prompt_only=True)
    summary = PredictSummary(out=str(out), samples=len(ds), features_computed=computed)
    done = _done_ids(out)
    todo = [i for i, s in enumerate(ds.samples) if s["id"] not in done]
    summary.reused = len(ds) - len(todo)
    if limit is not None:
        todo = todo[:limit]
    by_id = {r["id"]: r for r in records}
    collator = EmotionCollator(processor, model.config.modalities, padding_side="left")
    gen_kwargs = generation_kwargs(cfg.predict, **gen_overrides)
    lengths = ds.lengths
    batches = length_sorted_batches([lengths[i] for i in todo], batch_size or cfg.predict.batch_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a", encoding="utf-8") as fh:
        for batch_pos in progress(batches, desc="predict", total=len(batches), unit="batch"):
            items = [ds[todo[p]] for p in batch_pos]
            batch = collator(items)
            texts = generate(model, processor, batch, gen_kwargs)
            for sample_id, text in zip(batch["ids"], texts, strict=True):
                fh.write(json.dumps(_prediction_row(sample_id, task, text, by_id.get(sample_id, {})), ensure_ascii=False) + "\n")
                summary.new_tokens += len(processor.tokenizer(text, add_special_tokens=False)["input_ids"])
            fh.flush()
            os.fsync(fh.fileno())  # a batch written is a batch kept, whatever happens next
            summary.written += len(texts)
    summary.wall_s = time.perf_counter() - t0
    log.info("predict: %d written, %d reused, %.1f s -> %s", summary.written, summary.reused, summary.wall_s, out)
    return summary


def _prediction_row(sample_id: str, task: str, text: str, record: Mapping[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"id": sample_id, "task": task, "text": text}
    if record.get("label"):
        row.update(gt=record["label"], gt_source="label")
    elif record.get("pseudo_label"):
        row.update(gt=record["pseudo_label"], gt_source="pseudo_label")
    if task == "reason" and record.get("reasoning"):
        row["gt_reason"] = record["reasoning"]
    return row


# ------------------------------------------------------------------------------------------ explain
@dataclass
class Explanation:
    """What :meth:`Explainer.explain` returns for one clip."""

    clip: str
    id: str
    task: str
    text: str = ""  # the model's answer, as generated
    label: str | None = None  # the emotion parsed from the answer (None: no label of the set in it)
    cues: dict[str, Any] = field(default_factory=dict)  # what the model was shown, and the builder's cues
    timings_s: dict[str, float] = field(default_factory=dict)
    error: str | None = None  # set when the clip could not be explained (the others still are)

    @property
    def reasoning(self) -> str:
        return self.text

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "reasoning": self.reasoning}


# The builder's cues of a clip that an explanation reports beside the answer.
CUE_FIELDS = ("pseudo_label", "pseudo_label_confidence", "aus_present_at_peak", "expression", "tone", "subtitle",
              "coarse_description", "visual_description", "flags")


class Explainer:
    """A trained run, ready to explain raw clips (see the module docstring).

    ``overlap_decode`` (True): each clip's frames decode in a background thread while its face is
    tracked, which shortens one clip's wall time and changes no result; False runs the stages one
    after the other (a per-stage profile, as ``benchmarks/infer_latency.py`` takes)."""

    overlap_decode = True

    def __init__(self, model: Any, processor: Any, cfg: cfglib.EmollmConfig, run_dir: str | os.PathLike | None = None):
        from eval.label_sets import load_label_set

        self.model, self.processor, self.cfg = model, processor, cfg
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.label_set = load_label_set(cfg.eval_label_set)
        self.modalities = dict(model.config.modalities)

    @classmethod
    def load(cls, run_dir: str | os.PathLike, *, device: str | None = None, dtype: str | None = None,
             overrides: Sequence[str] = ()) -> Explainer:
        cfg = run_config(run_dir, overrides)
        model, processor = load_model(run_dir, device=device, dtype=dtype)
        return cls(model, processor, cfg, run_dir)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- public ----------------------------------------------------------------------------
    def explain(self, clip: str | os.PathLike, *, task: str = "reason", subtitle: str | None = None,
                modalities: Sequence[str] | None = None, streamer: Any = None,
                on_analysis: Callable[[Explanation, Any], None] | None = None, **gen: Any) -> Explanation:
        """One clip -> :class:`Explanation`; raises when the clip cannot be explained.

        ``streamer`` and ``on_analysis``: see :meth:`explain_many`."""
        result = self.explain_many([clip], task=task, subtitles=None if subtitle is None else [subtitle],
                                   modalities=modalities, streamer=streamer, on_analysis=on_analysis, **gen)[0]
        if result.error:
            raise EmollmError(f"{clip}: {result.error}")
        return result

    def explain_many(self, clips: Sequence[str | os.PathLike], *, task: str = "reason",
                     subtitles: Sequence[str | None] | None = None, modalities: Sequence[str] | None = None,
                     workdir: str | os.PathLike | None = None, batch_size: int | None = None,
                     streamer: Any = None, on_analysis: Callable[[Explanation, Any], None] | None = None,
                     **gen: Any) -> list[Explanation]:
        """Explain each clip, in order; a clip that fails gets ``error`` set and the rest go on.

        ``subtitles``: one per clip (None: whisper when ``build.asr`` is set, else no subtitle);
        ``modalities``: feed only these (each must be one the model was trained with);
        ``workdir``: also write the clips' analysis there, for a look afterwards (``annotations.jsonl``
        with each record, ``aus/<id>.npz``); nothing is read back from it;
        ``streamer``: a transformers streamer passed to ``model.generate`` (one clip, no beam search;
        see :func:`generate`): the answer's text as it is generated, the results unchanged;
        ``on_analysis(result, clip_record)``: called for each clip the analysis could use, right after it,
        before the encoders (``clip_record`` is its :class:`~data_builders.clip.ClipRecord`: the record,
        the AU series and the decode with the frames and the face track, for a look at what the model
        is fed; ``emollm serve`` draws the frames and face crops from it). Never keep the decode.
        """
        _check_task(task)
        if streamer is not None and len(clips) != 1:
            raise ConfigError(f"a streamer takes one clip's answer ({len(clips)} clips given)",
                              hint="explain the clips one at a time to stream each answer")
        infer_instruction(self.cfg, task)  # a bad predict.instruction fails once, not once per clip
        use = self._check_modalities(modalities)
        self._check_computable(use)
        if subtitles is not None and len(subtitles) != len(clips):
            raise ConfigError(f"{len(subtitles)} subtitles for {len(clips)} clips: give one per clip")
        return self._explain(clips, task, subtitles, use, None if workdir is None else Path(workdir), batch_size, gen,
                             streamer=streamer, on_analysis=on_analysis)

    # -- stages ----------------------------------------------------------------------------
    def _check_modalities(self, modalities: Sequence[str] | None) -> list[str]:
        if modalities is None:
            return list(self.modalities)
        unknown = [m for m in modalities if m not in self.modalities]
        if unknown:
            raise ConfigError(f"the model was trained without modality '{unknown[0]}' "
                              f"(it has: {', '.join(self.modalities)})", hint="choose among the model's modalities")
        return list(modalities)

    def _check_computable(self, use: list[str]) -> None:
        """Imported features (kind ``precomputed``) cannot be computed from a raw clip, and this path reads
        no feature cache (a raw clip's name is no dataset id): one error naming the modality and the way out."""
        from emollm.features.key import IMPORTED_KINDS

        imported = [n for n in use if self.modalities[n]["kind"] in IMPORTED_KINDS]
        if imported:
            tag = (self.modalities[imported[0]].get("encoder") or {}).get("name_or_path")
            rest = [n for n in use if n not in imported]
            hint = ("predict a dataset whose features were imported instead (`emollm import emotion-llama-features "
                    "--config CFG DATASET_DIR --from ROOT`, then `emollm predict`)")
            if rest:
                hint += f", or explain the clip without them (--modalities {','.join(rest)})"
            raise EmollmError(
                f"modality '{imported[0]}' reads imported features ('{tag}', encoder kind 'precomputed'): they "
                "cannot be computed from a raw clip" + (f" (nor can {', '.join(imported[1:])})" if imported[1:] else ""),
                hint=hint)

    def _explain(self, clips, task, subtitles, use, workdir: Path | None, batch_size, gen, *, streamer: Any = None,
                 on_analysis: Callable[[Explanation, Any], None] | None = None) -> list[Explanation]:
        from emollm.training.data import EmotionCollator

        gen_kwargs = generation_kwargs(self.cfg.predict, **gen)  # a bad option fails before any clip is analysed
        t0 = time.perf_counter()
        results, analysed, errors = self.analyse(clips, subtitles)
        per_clip_build = (time.perf_counter() - t0) / max(len(clips), 1)
        if workdir is not None:
            _dump_analysis(workdir, analysed.values())
        # Each clip's encoder inputs, then every clip's inputs of a modality through its live encoder in
        # batches (as `emollm features` does), then the prompts.
        staged: list[tuple[int, Any, dict[str, Any], dict[str, str]]] = []
        for i, result in enumerate(results):
            result.timings_s["analyse"] = per_clip_build
            if result.id in errors:
                result.error = errors[result.id]
                continue
            result.task = task
            if on_analysis is not None:
                on_analysis(result, analysed[result.id])
            t1 = time.perf_counter()
            try:
                done = analysed.pop(result.id)
                staged.append((i, done, *self._encoder_inputs(done, Path(result.clip), use)))
            except EmollmError as err:
                result.error = err.message
            result.timings_s["encoders"] = time.perf_counter() - t1
        t1 = time.perf_counter()
        features = self._encode_live([inputs for _, _, inputs, _ in staged])
        shared = (time.perf_counter() - t1) / max(len(staged), 1)
        instruction = infer_instruction(self.cfg, task)
        items: list[tuple[int, dict[str, Any]]] = []
        for (i, done, _, absent), feats in zip(staged, features, strict=True):
            result = results[i]
            t1 = time.perf_counter()
            try:
                if isinstance(feats, EmollmError):
                    raise feats
                items.append((i, self._item(done, Path(result.clip), task, use, result, live=(feats, absent),
                                            instruction=instruction)))
            except EmollmError as err:
                result.error = err.message
            result.timings_s["encoders"] += shared + time.perf_counter() - t1
        collator = EmotionCollator(self.processor, self.modalities, padding_side="left")
        lengths = [len(item["input_ids"]) for _, item in items]
        if streamer is not None and not items:  # the clip failed before generation: the stream ends empty
            streamer.end()
        for batch_pos in length_sorted_batches(lengths, batch_size or self.cfg.predict.batch_size):
            t2 = time.perf_counter()
            chosen = [items[p] for p in batch_pos]
            try:
                texts = generate(self.model, self.processor, collator([item for _, item in chosen]), gen_kwargs,
                                 streamer=streamer)
            except BaseException:
                if streamer is not None:  # whoever reads the stream stops waiting
                    streamer.end()
                raise
            spent = (time.perf_counter() - t2) / len(chosen)
            for (i, _), text in zip(chosen, texts, strict=True):
                results[i].text = text
                results[i].label = self._parse(text)
                results[i].timings_s["generate"] = spent
        return results

    def analyse(self, clips: Sequence[str | os.PathLike], subtitles: Sequence[str | None] | None = None
                ) -> tuple[list[Explanation], dict[str, Any], dict[str, str]]:
        """The builder's per-clip stages on each clip, in memory (:func:`data_builders.clip.clip_record`):
        one result per clip, each analysed clip's :class:`~data_builders.clip.ClipRecord` (record, AU
        series, the decode the encoders read next) by id, and the reasons of the clips it could not use."""
        from data_builders.clip import check_setup, clip_record
        from data_builders.inputs import CLIP_EXTENSIONS

        results, taken = [], set()
        for n, clip in enumerate(clips):
            path = Path(clip)
            stem = path.stem if path.stem not in taken else f"{path.stem}_{n}"
            taken.add(stem)
            results.append(Explanation(clip=str(clip), id=stem, task=""))
        errors: dict[str, str] = {r.id: f"no such file: {r.clip}" for r in results if not Path(r.clip).exists()}
        errors.update({r.id: f"{r.clip}: not a clip type emollm reads ({Path(r.clip).suffix or 'no extension'}; "
                             f"supported: {' '.join(CLIP_EXTENSIONS)})"
                       for r in results if r.id not in errors and Path(r.clip).suffix.lower() not in CLIP_EXTENSIONS})
        analysed: dict[str, Any] = {}
        if all(r.id in errors for r in results):
            return results, analysed, errors
        # The run's config, minus what belongs to its training data or costs calls: no labels, no
        # subtitles table (a given subtitle wins, as such a table's would), no describer, no writer.
        cfg = copy.deepcopy(self.cfg)
        cfg.data.labels_csv, cfg.data.subtitles_csv = None, None
        cfg.build.writer.backend, cfg.build.describer.backend, cfg.build.instructions = "template", "none", False
        check_setup(cfg)  # AU source, whisper model, phrase table: one error for all clips, not one per clip
        for k, r in enumerate(results):
            if r.id in errors:
                continue
            given = subtitles[k] if subtitles is not None else None
            done = clip_record(r.clip, cfg, clip_id=r.id, subtitle=given, encoder_frames=True,
                               overlap=self.overlap_decode)
            if done.error is not None:
                errors[r.id] = done.error
            else:
                analysed[r.id] = done
        return results, analysed, errors

    def _encoder_inputs(self, analysed: Any, path: Path, use: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
        """(raw input per frozen encoder, reason per modality left out) of one analysed clip, read from
        its :class:`~data_builders.clip.ClipRecord`'s decode (nothing decoded twice)."""
        from emollm.features.extract import decode_for_encoders, encoder_inputs, encoder_view, peak_frame_input

        record, analysis = analysed.record, analysed.analysis
        frozen = {n: e for n, e in self.cfg.model.encoders.items() if e.modality != "au" and n in use}
        if not frozen:
            return {}, {}
        kinds = {e.modality for e in frozen.values()}
        # the clip analysis is the one judge of whether there is a face: none found there, none fed here
        face_seen = bool(record.get("face_frames"))
        wants_faces = bool(kinds & {"face", "video"}) and face_seen
        if analysis is not None:  # the builder's own decode and face track
            clip, crops = encoder_view(self.cfg, analysis, faces=wants_faces)
        else:
            clip, crops = decode_for_encoders(self.cfg, path, audio="audio" in kinds and record.get("has_audio", True),
                                              faces=wants_faces)  # fmt: skip
        inputs, absent = encoder_inputs(frozen, clip, crops, subtitle=record.get("subtitle"))
        for name in [n for n, e in frozen.items() if e.modality in ("face", "video") and not face_seen]:
            absent[name] = "no face in the clip analysis"
        for name in list(inputs):
            if frozen[name].options.get("frames") == "peak":
                peak = (record.get("peak_frame") or {}).get("index")
                decoded = analysis.frame_at(int(peak)) if analysis is not None and peak is not None else None
                inputs[name] = decoded if decoded is not None else peak_frame_input(self.cfg, path.parent, record, clip)
        return inputs, absent

    def _encode_live(self, per_clip: list[dict[str, Any]]) -> list[dict[str, torch.Tensor] | EmollmError]:
        """Features ``(T, D)`` per clip and modality: each live encoder once over all the clips' inputs,
        in batches of ``features.batch_size`` of one image size (as ``emollm features``), checked as
        ``model.encode_media`` checks them. A batch that fails is redone clip by clip, so only the clip
        at fault gets the error (in its slot)."""
        from emollm.features.extract import _same_size_groups

        out: list[dict[str, torch.Tensor] | EmollmError] = [{} for _ in per_clip]
        names = [n for n in self.modalities if any(n in inputs for inputs in per_clip)]
        if not names:
            return out
        live = live_encoders_on_device(self.model, names, self.device)
        size = self.cfg.features.batch_size
        for name in names:
            spec = self.modalities[name]
            items = [(k, inputs[name]) for k, inputs in enumerate(per_clip) if name in inputs and isinstance(out[k], dict)]
            try:
                for group in _same_size_groups(items):
                    for (k, _), feats in zip(group, live[name].extract_batch([x for _, x in group], batch_size=size),
                                             strict=True):
                        out[k][name] = feats
            except EmollmError:  # find the clip at fault: one by one
                for k, x in items:
                    try:
                        feats = live[name].extract(x)
                        out[k][name] = feats
                    except EmollmError as err:
                        out[k] = err
            expected = (spec["num_input_tokens"], spec["feature_dim"])
            for k, _ in items:
                got = out[k].get(name) if isinstance(out[k], dict) else None
                if got is not None and tuple(got.shape) != expected:
                    out[k] = MediaTokenMismatchError(f"modality '{name}': the encoder gave features of shape "
                                                     f"{tuple(got.shape)}, the model was built for {expected}")
        return out

    def _item(self, analysed: Any, path: Path, task: str, use: list[str], result: Explanation, *,
              live: tuple[dict[str, torch.Tensor], dict[str, str]] | None = None,
              instruction: str | None = None) -> dict[str, Any]:
        """Prompt ids + media features of one analysed clip (the EmotionDataset item layout):
        ``analysed`` is its :class:`~data_builders.clip.ClipRecord`; ``live``: its live encoders'
        features and absent modalities when already computed (else computed here)."""
        from emollm.prompts import emotion_llama_sample

        record = analysed.record
        result.task = task
        if live is None:
            inputs, absent = self._encoder_inputs(analysed, path, use)
            feats = self._encode_live([inputs])[0]
            if isinstance(feats, EmollmError):
                raise feats
        else:
            feats, absent = live
        absent = dict(absent)
        media: dict[str, torch.Tensor] = {name: f.float() for name, f in feats.items()}
        masks: dict[str, torch.Tensor] = {}
        for name in (n for n in use if self.modalities[n]["kind"] == "au"):
            au = analysed.series.model_input() if analysed.series is not None else None
            if au is None or not au[1].any():
                absent[name] = "no face frames for AUs"
                continue
            media[name], masks[name] = torch.from_numpy(au[0]), torch.from_numpy(au[1])
        present = set(media)
        sample = emotion_llama_sample(record["id"], task, record.get("subtitle"), modalities=tuple(self.processor.placeholders),
                                      pool=[instruction or infer_instruction(self.cfg, task)])
        encoded = self.processor.encode(sample, present=present)
        if encoded is None:
            raise EmollmError(f"the prompt is longer than max_length {self.processor.max_length}")
        result.cues = {
            "modalities_fed": sorted(present), "modalities_absent": absent,
            "peak_frame": (record.get("peak_frame") or {}).get("index"),
            "subtitle_source": ((record.get("provenance") or {}).get("subtitle") or {}).get("source"),
            **{k: record.get(k) for k in CUE_FIELDS if record.get(k) not in (None, [], "")},
            "prompt": self.processor.render(sample, present=present),
        }  # fmt: skip
        return {**encoded, "media": media, "media_masks": masks}


    def _parse(self, text: str) -> str | None:
        from emollm.dataset.label_parsing import parse_label

        return parse_label(text, self.label_set, self.cfg.evaluate.parse, None).label


def _dump_analysis(workdir: Path, analysed: Iterable[Any]) -> None:
    """``explain_many(workdir=...)``: the clips' records and AU series, for a look (never read back)."""
    from data_builders.au import save_aus
    from emollm.paths import ensure_folder, id_path

    ensure_folder(workdir, "infer --workdir")
    lines = []
    for done in analysed:
        lines.append(json.dumps(done.record, ensure_ascii=False) + "\n")
        if done.series is not None and done.record.get("aus_file"):
            save_aus(done.series, id_path(workdir / "aus", done.record["id"], ".npz"))
    (workdir / "annotations.jsonl").write_text("".join(lines), encoding="utf-8")


def load(run_dir: str | os.PathLike, **kwargs: Any) -> Explainer:
    """``emollm.load(RUN_DIR)``: an :class:`Explainer` for the run."""
    return Explainer.load(run_dir, **kwargs)


__all__ = ["Explainer", "Explanation", "PredictSummary", "generate", "generation_kwargs", "length_sorted_batches",
           "live_encoders_on_device",
           "load", "load_model", "predict_dataset", "run_config"]
