"""The training loop behind ``train.py`` / ``emollm train`` (docs/training.md).

One code path for CPU, one GPU, DDP and DeepSpeed: an :class:`accelerate.Accelerator` owns devices,
mixed precision and gradient accumulation. Batches come from :mod:`emollm.training.data` (built
dataset + feature cache, length-grouped); the sampler is not handed to accelerate, each rank builds
its own shard, so a checkpoint can record ``(epoch, batch offset)`` and a resumed run replays the
exact same batches. ``train.eval_steps`` adds periodic evaluation on ``data.eval_split``
(:class:`Evaluator`: eval loss, WAR / UAR / WAF of generated answers) without touching the training RNG.

>>> result = train(cfg)              # cfg: a validated EmollmConfig
>>> result.losses                    # per optimizer step: loss per target token of the step (all ranks)
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from emollm import config as cfglib
from emollm import safe_load
from emollm.config import EmollmConfig
from emollm.dataset.io import atomic_write_text, write_jsonl
from emollm.errors import ConfigError, CorruptCheckpointError, EmollmError
from emollm.log import get_logger

log = get_logger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
TRAINER_STATE = "trainer_state.json"
SCHEDULER_STATE = "scheduler.json"  # the LR scheduler's state_dict as JSON (never a pickle: docs/security.md)
RNG_STATE = re.compile(r"random_states_\d+\.pkl")  # accelerate's per-rank RNG files
LOG_FILE = "train_log.jsonl"


@dataclass
class TrainResult:
    output_dir: Path
    global_step: int = 0
    losses: list[float] = field(default_factory=list)  # loss per target token of every optimizer step, from step 1
    stopped_early: bool = False  # stop_after_step hit (a simulated kill)
    model: Any = None  # the unwrapped trained model (in-process callers and tests)
    processor: Any = None


# ------------------------------------------------------------------------------------------ checkpoints
def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """``checkpoint-<step>`` dirs under ``output_dir`` holding a complete trainer state, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        m = re.fullmatch(CHECKPOINT_PREFIX + r"(\d+)", path.name)
        if m and path.is_dir() and (path / TRAINER_STATE).is_file():
            found.append((int(m.group(1)), path))
    return [p for _, p in sorted(found)]


def resolve_checkpoint(ref: str | None, output_dir: str | os.PathLike, *, key: str = "train.resume",
                       unit: str = "step") -> Path | None:
    """The checkpoint a ``resume`` setting names: None (start fresh), ``latest`` (the newest complete
    ``checkpoint-<n>`` under ``output_dir``, None when there is none) or a checkpoint dir."""
    if not ref:
        return None
    if ref == "latest":
        checkpoints = list_checkpoints(output_dir)
        if not checkpoints:
            log.warning("%s=latest: no checkpoint under %s, starting from %s 0", key, output_dir, unit)
            return None
        return checkpoints[-1]
    path = Path(ref)
    if not (path / TRAINER_STATE).is_file():
        raise ConfigError(f"{key}: {path} is not a checkpoint dir (no {TRAINER_STATE})",
                          hint=f"give a <output_dir>/{CHECKPOINT_PREFIX}<{unit}> dir, or {key}=latest")
    return path


def vet_checkpoint(path: Path, *, step_key: str = "global_step") -> dict[str, Any]:
    """The checkpoint's trainer state, once every file in it is whole (the sizes recorded at save time,
    safetensors / JSON / zip structure) and every pickle in it names only allowed globals
    (:func:`emollm.safe_load.vet`): nothing in it is unpickled before that.
    Raises :class:`CorruptCheckpointError` / :class:`UnsafeCheckpointError` naming the file."""
    state_file = path / TRAINER_STATE
    state = safe_load.check_json(state_file)
    if not isinstance(state, dict) or not isinstance(state.get(step_key), int):
        raise CorruptCheckpointError(state_file, f"not a trainer state (no integer {step_key})")
    recorded = state.get("files") if isinstance(state.get("files"), dict) else {}
    sizes = {rel: n for rel, n in recorded.items()  # files inside the checkpoint only
             if isinstance(rel, str) and isinstance(n, int) and ".." not in Path(rel).parts and not Path(rel).is_absolute()
             # a missing RNG file is no corruption: train() warns that the random draws will differ
             and not (RNG_STATE.fullmatch(Path(rel).name) and not (path / rel).exists())}
    safe_load.vet(path, sizes=sizes)
    return state


def resume_checkpoint(ref: str | None, output_dir: str | os.PathLike, *, key: str = "train.resume",
                      unit: str = "step", step_key: str = "global_step") -> tuple[Path | None, dict[str, Any] | None]:
    """``(checkpoint dir, its trainer state)`` to resume from, vetted (:func:`vet_checkpoint`).

    ``latest``: the newest *complete* checkpoint; a corrupt newer one is skipped with a warning naming
    its file and the cause, and when none is complete the run stops (an error naming the newest's
    fault). An explicit dir is the user's choice: a corrupt one stops the run, naming the file.
    A refused pickle (:class:`UnsafeCheckpointError`) always stops the run: it is no accident."""
    if ref == "latest":
        skipped: list[CorruptCheckpointError] = []
        for path in reversed(list_checkpoints(output_dir)):
            try:
                state = vet_checkpoint(path, step_key=step_key)
            except CorruptCheckpointError as exc:
                log.warning("%s=latest: skipping %s, it is incomplete: %s", key, path.name, exc.message)
                skipped.append(exc)
                continue
            if skipped:
                log.warning("%s=latest: resuming from the previous complete checkpoint %s", key, path.name)
            return path, state
        if skipped:
            raise EmollmError(f"{key}=latest: no complete checkpoint under {output_dir}; the newest is corrupt: "
                              f"{skipped[0].message}", hint=f"start afresh (no {key}), or repair the file")
    path = resolve_checkpoint(ref, output_dir, key=key, unit=unit)
    if path is None:
        return None, None
    try:
        return path, vet_checkpoint(path, step_key=step_key)
    except CorruptCheckpointError as exc:
        earlier = [p.name for p in list_checkpoints(path.parent) if p != path]
        raise CorruptCheckpointError(exc.path, exc.cause, hint=(
            f"resume from an earlier checkpoint ({', '.join(earlier[-3:])}) or {key}=latest, which skips corrupt ones"
            if earlier else "this checkpoint cannot be resumed; start afresh")) from None


def prune_checkpoints(output_dir: str | os.PathLike, limit: int | None) -> list[Path]:
    """Delete all but the newest ``limit`` checkpoints; returns the deleted dirs."""
    if not limit:
        return []
    checkpoints = list_checkpoints(output_dir)
    doomed = checkpoints[: max(0, len(checkpoints) - limit)]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


# ------------------------------------------------------------------------------------------ setup
def _check_trackers(report_to: list[str]) -> list[str]:
    import importlib.util

    for name in report_to:
        if name == "tensorboard" and not (importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX")):
            raise EmollmError("train.report_to lists 'tensorboard', which is not installed",
                              hint="pip install tensorboard, or drop it from train.report_to (train_log.jsonl is always written)")
        if name in ("wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive") and importlib.util.find_spec(name) is None:
            raise EmollmError(f"train.report_to lists '{name}', which is not installed", hint=f"pip install {name}")
    return list(report_to)


def build_model(cfg: EmollmConfig, *, zero3: bool = False):
    """Model + processor for training: fresh (+ LoRA per config) or from ``train.init_from``.
    ``zero3``: the model will be partitioned by DeepSpeed ZeRO-3 (chooses the checkpointing kind)."""
    from emollm.modeling import quantization
    from emollm.modeling.factory import build_model_and_processor, load_run

    t = cfg.train
    if t.quantization != "none":  # QLoRA: bitsandbytes runs on CUDA and (>= 0.45) on CPU; said before any load
        quantization.check_backend("train.quantization", t.quantization)
    if t.init_from:
        model, processor = load_run(t.init_from, is_trainable=True)
        processor.max_length = t.max_length
        saved = (model.config.quantization or {}).get("bits")
        if saved != quantization.KINDS.get(t.quantization):
            raise ConfigError(f"train.quantization={t.quantization}, but the train.init_from run {t.init_from} was "
                              f"trained with quantization {quantization.describe(model.config.quantization)}",
                              hint="a run keeps the backbone of the run it starts from: set train.quantization to match")
        if model.is_quantized:
            model.prepare_for_kbit_training()  # freezes everything: the adapter and media are re-enabled below
        if model.is_lora:
            for name, p in model.named_parameters():
                p.requires_grad_(name.startswith("media.") or "lora_" in name)
            model.set_lora_dropout(t.lora.dropout)  # this run's setting (the adapter's shape stays the run's)
        log.info("initialised from %s", t.init_from)
    else:
        model, processor = build_model_and_processor(cfg)  # train.quantization: the backbone 4-bit / 8-bit
        if t.lora.enabled:  # on a quantised backbone, after peft.prepare_model_for_kbit_training
            model.add_lora(r=t.lora.r, alpha=t.lora.alpha, dropout=t.lora.dropout, target_modules=t.lora.target_modules)
        elif not t.full_finetune:
            for p in model.language_model.parameters():  # media modules only
                p.requires_grad_(False)
    if model.is_quantized:
        log.info("QLoRA: backbone %s (bitsandbytes), media modules %s", quantization.describe(model.config.quantization),
                 model.media_dtype)
    if t.gradient_checkpointing:
        lm = model.language_model
        lm.config.use_cache = False
        reentrant = t.gradient_checkpointing_reentrant
        if reentrant is None:
            # ZeRO-3 re-partitions frozen weights during a non-reentrant recompute, which then fails its
            # metadata check (deepspeedai/DeepSpeed#4332, fixed only in recent DeepSpeed): reentrant there,
            # as TRL does. Elsewhere non-reentrant (DDP rejects reentrant checkpointing of shared params).
            reentrant = zero3 and any(not p.requires_grad for p in model.parameters())
        if hasattr(lm, "activation_checkpointing_enable"):  # transformers >= 5.2x; the old name is deprecated
            lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})
        else:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
        # The embeddings are frozen: with their output requiring grad, a reentrant checkpoint still
        # back-propagates into the LoRA weights inside it (non-reentrant needs no such help).
        if hasattr(lm, "enable_input_require_grads"):
            lm.enable_input_require_grads()
        log.info("gradient checkpointing: %s", "reentrant" if reentrant else "non-reentrant")
    model.train()
    return model, processor


def param_groups(model, cfg: EmollmConfig) -> list[dict[str, Any]]:
    """Two AdamW groups: backbone/LoRA at ``train.lr``, media modules at ``train.projector_lr or lr``."""
    t = cfg.train
    backbone, media = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (media if name.startswith("media.") else backbone).append(p)
    groups = []
    if backbone:
        groups.append({"params": backbone, "lr": t.lr, "weight_decay": t.weight_decay, "name": "backbone"})
    if media:
        groups.append({"params": media, "lr": t.projector_lr or t.lr, "weight_decay": t.weight_decay, "name": "media"})
    if not groups:
        raise EmollmError("nothing to train: every parameter is frozen")
    return groups


@contextlib.contextmanager
def _without_zero3_init():
    """transformers builds models under ``deepspeed.zero.Init`` while accelerate's ZeRO-3 config is
    registered; turn that off for the duration (the engine partitions the whole model afterwards)."""
    from transformers.integrations import deepspeed as hf_ds

    saved = hf_ds._hf_deepspeed_config_weak_ref
    hf_ds._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_ds._hf_deepspeed_config_weak_ref = saved


def _process_group_kwargs(ds_plugin) -> list:
    """DeepSpeed without CUDA (2-process CPU runs in CI): accelerate finds no backend by itself, so
    ask for gloo; else it would fall back to one process per rank."""
    if ds_plugin is None or torch.cuda.is_available() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return []
    from accelerate.utils import InitProcessGroupKwargs

    return [InitProcessGroupKwargs(backend="gloo")]


def _dataset(cfg: EmollmConfig, model, processor):
    from emollm.dataset.hf import source_dataset_dir
    from emollm.features.cache import FeatureCache
    from emollm.training.data import EmotionDataset

    dataset_dir = cfg.data.dataset_dir
    if not dataset_dir:
        raise ConfigError("data.dataset_dir is not set", hint="train.py --config FILE data.dataset_dir=DIR")
    if not Path(dataset_dir).is_dir():
        raise ConfigError(f"data.dataset_dir: {dataset_dir} is not a folder")
    frozen = any(s["kind"] != "au" for s in model.config.modalities.values())
    # an `emollm export --to hf` folder trains on its records; its features are its source dataset's
    cache = FeatureCache.from_config(cfg, source_dataset_dir(dataset_dir)) if frozen else None
    ds = EmotionDataset(dataset_dir, processor, cache, model.config.modalities, split=cfg.data.train_split,
                        tasks=cfg.train.tasks, seed=cfg.run.seed)
    if len(ds) == 0:
        splits = sorted({str(r.get("split")) for r in ds.records.values()})
        raise ConfigError(f"no training sample in split '{cfg.data.train_split}' of {dataset_dir} (tasks {cfg.train.tasks})",
                          hint=f"the dataset's splits are {splits}: set data.train_split")
    return ds


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    def move(x):
        if isinstance(x, torch.Tensor):
            return x.to(device, non_blocking=True)
        if isinstance(x, dict):
            return {k: move(v) for k, v in x.items()}
        return x

    return {k: move(v) for k, v in batch.items() if k not in ("ids", "tasks")}


class _TaskCollator:
    """The training collator plus ``tasks`` (each row's task), for the per-task losses."""

    def __init__(self, collator: Any):
        self.collator = collator

    def __call__(self, items: list[dict[str, Any] | None]) -> dict[str, Any]:
        batch = self.collator(items)
        batch["tasks"] = [item.get("task") for item in items if item is not None]
        return batch


def target_tokens(labels: torch.Tensor) -> int:
    """Tokens the loss is taken over: positions 1.. whose label is not -100 (the shifted targets)."""
    return int((labels[:, 1:] != -100).sum())


def target_positions(labels: torch.Tensor) -> torch.Tensor:
    """Sequence positions whose logits predict a target in some row (``labels[:, t + 1] != -100``), sorted;
    never empty (position 0 when nothing is a target, so the graph still reaches every trained weight)."""
    positions = (labels[:, 1:] != -100).any(0).nonzero().squeeze(1)
    return positions if len(positions) else positions.new_zeros(1)


def token_losses(logits: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token cross-entropy ``(B, L-1)`` in float32 of the next-token targets, 0 where the label is
    -100. Summed and divided by the accumulated batch's :func:`target_tokens`, it is the loss per
    target token that transformers' Trainer computes with ``num_items_in_batch``. With ``positions``
    (:func:`target_positions`), ``logits`` are those positions' only ``(B, K, V)`` and the result is ``(B, K)``
    (the same row sums: every other position holds no target)."""
    if positions is None:
        labels, logits = labels[:, 1:].to(logits.device), logits[:, :-1]
    else:
        labels = labels[:, positions.to(labels.device) + 1].to(logits.device)
    keep = labels != -100
    # Only the target positions are upcast (prompts with hundreds of media tokens would double the logits' memory)
    losses = torch.zeros(labels.shape, dtype=torch.float32, device=logits.device)
    return losses.masked_scatter(keep, torch.nn.functional.cross_entropy(logits[keep].float(), labels[keep],
                                                                         reduction="none"))


def micro_batch_losses(model, inputs: dict[str, Any], labels: torch.Tensor) -> torch.Tensor:
    """One micro-batch's forward: per-token losses ``(B, K)`` (:func:`token_losses`). The LM head runs on
    the K positions that predict a target only (``logits_to_keep``): prompts with hundreds of media
    tokens would otherwise spend a full-vocabulary matmul, forward and backward, on every prompt token."""
    positions = target_positions(labels)  # from the batch's CPU labels: no device sync
    logits = model(**inputs, logits_to_keep=positions.to(inputs["input_ids"].device)).logits
    return token_losses(logits, labels, positions)


def make_optimizer(model, cfg: EmollmConfig, *, deepspeed: bool = False) -> torch.optim.Optimizer:
    """AdamW over :func:`param_groups`; fused (one kernel for all tensors, transformers Trainer's default
    ``adamw_torch_fused``) unless DeepSpeed wraps it, or a trained tensor is not on a fused device."""
    groups = param_groups(model, cfg)
    fused_devices = ("cpu", "cuda", "xpu", "mps")
    fused = not deepspeed and all(p.device.type in fused_devices and p.is_floating_point()
                                  for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=cfg.train.lr, **({"fused": True} if fused else {}))


# ------------------------------------------------------------------------------------------ resume
LAYOUT_KEYS = ("world_size", "per_device_batch_size", "gradient_accumulation_steps")
# Settings that change what a resumed run computes (the model's shape, the data, the optimisation),
# recorded in each checkpoint's trainer state and compared on resume (run length is not: extending
# train.max_steps / epochs is what a resume is for; nor are checkpoint paths, "*name_or_path", which
# differ when a run moves to another machine: a different model there fails to load, named).
RESULT_KEYS = ("model", "train.stage", "train.tasks", "train.lr", "train.projector_lr",
               "train.weight_decay", "train.lr_scheduler", "train.warmup_ratio", "train.max_grad_norm",
               "train.max_length", "train.full_finetune", "train.quantization", "train.bnb_4bit_quant_type",
               "train.bnb_4bit_compute_dtype", "train.bnb_4bit_use_double_quant", "train.lora", "run.seed",
               "data.train_split")


def result_config(cfg: EmollmConfig) -> dict[str, Any]:
    """``{dotted key: value}`` of :data:`RESULT_KEYS`, flattened to leaves, as JSON gives it back."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}", v)
        else:
            flat[prefix] = value

    tree = cfglib.to_dict(cfg)
    for key in RESULT_KEYS:
        node: Any = tree
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        walk(key, node)
    return json.loads(json.dumps({k: v for k, v in flat.items() if not k.endswith("name_or_path")}, default=str))


def check_resume_layout(saved: dict[str, Any], now: dict[str, int], checkpoint: Path, *, allow: bool,
                        config: dict[str, Any] | None = None) -> bool:
    """Compare the checkpoint's batch layout (world size, per-device batch, accumulation) and, given
    ``config`` (this run's :func:`result_config`), the recorded settings that change the result (LoRA
    shape, modalities, lr ...) with this run's. A change is refused (:class:`ConfigError` naming the
    keys) unless ``allow`` (``train.allow_resume_change``); returns True when the batch layout changed
    (and was allowed)."""
    changed = [f"{key} {saved[key]} -> {now[key]}" for key in LAYOUT_KEYS
               if saved.get(key) is not None and saved[key] != now[key]]
    missing = [key for key in LAYOUT_KEYS if saved.get(key) is None]
    settings: list[str] = []
    if config is not None:
        before = saved.get("config")
        if not isinstance(before, dict):
            missing.append("config")
        else:
            settings = [f"{key} {before.get(key)!r} -> {config.get(key)!r}" for key in sorted({*before, *config})
                        if before.get(key) != config.get(key)]
    if missing:
        log.warning("resume: %s records no %s (an older emollm): not compared", checkpoint, ", ".join(missing))
    if not changed and not settings:
        return False
    what = "; ".join(part for part in (f"the batch layout changed ({', '.join(changed)})" if changed else "",
                                       f"the config changed ({', '.join(settings)})" if settings else "") if part)
    if not allow:
        raise ConfigError(f"cannot resume from {checkpoint}: {what}",
                          hint="resume with the checkpoint's settings, or set train.allow_resume_change=true to "
                               "continue anyway (the result then differs from an uninterrupted run; a changed "
                               "model shape cannot load)")
    log.warning("resume from %s: %s, allowed by train.allow_resume_change: the result differs from an "
                "uninterrupted run", checkpoint, what)
    return bool(changed)


def _replace_lines(path: Path, lines: list[str]) -> None:
    atomic_write_text(path, "".join(lines), fsync=False)  # a kill leaves the old or the new file, never half of one


def prepare_log(log_dir: Path, resumed_step: int | None) -> None:
    """``logs/train_log.jsonl`` before the first step (main process). Resumed at step N: rows of
    later steps (written by the run after its checkpoint) and their ``eval_predictions-<step>``
    files are dropped, so redone steps appear once. Fresh (None): an earlier run's log and
    predictions are removed and a new log starts (as ``emollm baseline train`` does)."""
    path = log_dir / LOG_FILE
    if resumed_step is None:
        old = [p for p in (path, *log_dir.glob(EVAL_PREDICTIONS.format(step="*"))) if p.is_file()]
        if old:
            log.warning("a fresh run in %s: removing the earlier run's %s (resume it with --resume instead)",
                        log_dir.parent, ", ".join(p.name for p in old))
            for p in old:
                p.unlink()
        return
    if path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = []
        for line in lines:
            try:
                row_step = json.loads(line).get("step")
            except ValueError:
                continue  # a line cut by the kill
            if not isinstance(row_step, int) or row_step <= resumed_step:
                kept.append(line if line.endswith("\n") else line + "\n")
        if len(kept) != len(lines):
            _replace_lines(path, kept)
            log.info("resume at step %d: dropped %d row(s) of later steps from %s", resumed_step,
                     len(lines) - len(kept), path)
    for old in log_dir.glob(EVAL_PREDICTIONS.format(step="*")):
        m = re.fullmatch(EVAL_PREDICTIONS.format(step=r"(\d+)").replace(".", r"\."), old.name)
        if m and int(m.group(1)) > resumed_step:
            old.unlink()


# ------------------------------------------------------------------------------------------ evaluation
EVAL_PREDICTIONS = "eval_predictions-{step}.jsonl"


def check_eval_split(cfg: EmollmConfig) -> None:
    """``train.eval_steps`` needs records in ``data.eval_split``: checked before the model is built, so
    a wrong split costs no training step."""
    if not cfg.train.eval_steps or not cfg.data.dataset_dir:
        return
    from emollm.dataset.record import read_annotations

    annotations = Path(cfg.data.dataset_dir) / "annotations.jsonl"
    if not annotations.is_file():
        return  # _dataset() reports the missing dataset
    splits = sorted({str(r.get("split")) for r in read_annotations(annotations)})
    if cfg.data.eval_split not in splits:
        raise ConfigError(f"train.eval_steps={cfg.train.eval_steps}: no record in data.eval_split "
                          f"'{cfg.data.eval_split}' of {cfg.data.dataset_dir}",
                          hint=f"the dataset's splits are {splits}: set data.eval_split, or train.eval_steps=0")


def _shard(indices: list[int], world: int, rank: int) -> list[tuple[int, bool]]:
    """This rank's part of ``indices`` as ``(index, real)``. Every rank gets the same count (the list
    wraps around; repeats are not real and are dropped from results): ranks then run the same number
    of forwards, which DDP (buffer broadcast) and ZeRO-3 (parameter gathers) need to not deadlock."""
    if not indices:
        return []
    n = -(-len(indices) // world) * world
    return [(indices[i % len(indices)], i < len(indices)) for i in range(n)][rank::world]


def _rng_state() -> dict[str, Any]:
    import random

    import numpy as np

    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


class Evaluator:
    """Evaluation on ``data.eval_split`` during training (``train.eval_steps``, docs/training.md).

    A fixed, seeded subset of the split's clips (``train.eval_max_samples``) is chosen once; each
    call gives (a) the teacher-forced loss of their ``emotion`` samples (``train.eval_loss``) and
    (b) answers (``predict`` settings, greedy by default) to their prompt-only ``emotion`` samples, parsed per ``evaluate.parse`` /
    ``fallback_label`` and scored against the record's human label, else its pseudo-label
    (``evaluate.reference_source``): WAR, UAR, WAF, macro F1 and the invalid rate, each reference source
    apart (``eval_war`` ...: human labels when any; ``eval_pseudo_label_war`` ...; the row's
    ``eval_reference_source`` / ``eval_references`` say which and how many). Each rank runs its shard;
    results are gathered on every rank.
    """

    def __init__(self, cfg: EmollmConfig, accelerator: Any, model: Any, processor: Any, cache: Any):
        from emollm.dataset.label_parsing import check_fallback
        from emollm.dataset.label_sets import load_label_set
        from emollm.inference import generation_kwargs
        from emollm.training.data import EmotionCollator, EmotionDataset
        from eval.classification import classification_metrics  # imported now (sklearn: seconds), not in the first eval

        self.classification_metrics = classification_metrics
        t = cfg.train
        self.cfg, self.accelerator, self.processor = cfg, accelerator, processor
        self.label_set = load_label_set(cfg.eval_label_set)
        self.fallback = check_fallback(self.label_set, cfg.evaluate.fallback_label)
        modalities = model.config.modalities
        split, root = cfg.data.eval_split, cfg.data.dataset_dir
        self.prompts = EmotionDataset(root, processor, cache, modalities, split=split, tasks=["emotion"],
                                      seed=cfg.run.seed, prompt_only=True, instruction=cfg.predict.instruction)
        clips = sorted({s["clip_id"] for s in self.prompts.samples})
        if t.eval_max_samples and len(clips) > t.eval_max_samples:
            # Seeded by run.seed alone: the same clips at every evaluation and in a resumed run.
            order = torch.randperm(len(clips), generator=torch.Generator().manual_seed(cfg.run.seed)).tolist()
            clips = sorted(clips[i] for i in order[: t.eval_max_samples])
        self.clips = clips
        chosen = set(clips)
        world, rank = accelerator.num_processes, accelerator.process_index
        prompts = [i for i, s in enumerate(self.prompts.samples) if s["clip_id"] in chosen]
        self.gen_shard = _shard(prompts, world, rank)
        self.targets = None
        targets: list[int] = []
        if t.eval_loss:  # samples with an answer (label or pseudo-label) for the teacher-forced loss
            self.targets = EmotionDataset(root, processor, cache, modalities, split=split, tasks=["emotion"],
                                          seed=cfg.run.seed, check=False)
            targets = [i for i, s in enumerate(self.targets.samples) if s["clip_id"] in chosen]
        self.loss_shard = _shard(targets, world, rank)
        self.right = EmotionCollator(processor, modalities)
        self.left = EmotionCollator(processor, modalities, padding_side="left")
        self.gen_kwargs = generation_kwargs(cfg.predict, max_new_tokens=t.eval_max_new_tokens)
        # Training may run with use_cache off (gradient checkpointing); generation wants the KV cache.
        self.gen_kwargs["use_cache"] = True
        plugin = accelerator.state.deepspeed_plugin
        if plugin is not None and plugin.zero_stage == 3 and world > 1:
            # ZeRO-3: each decoding step gathers parameters collectively; a rank done early must keep stepping.
            self.gen_kwargs["synced_gpus"] = True
        log.info("evaluation every %d steps on split '%s': %d clips, %d prompts, %d loss samples", t.eval_steps,
                 split, len(clips), len(prompts), len(targets))

    @staticmethod
    def _batches(ds: Any, shard: list[tuple[int, bool]], batch_size: int) -> list[list[tuple[int, bool]]]:
        """Length-sorted batches of the shard (little padding); same count on every rank."""
        from emollm.inference import length_sorted_batches

        lengths = [ds.length(i) for i, _ in shard]
        return [[shard[p] for p in batch] for batch in length_sorted_batches(lengths, batch_size)]

    def _reference(self, clip_id: str) -> tuple[str | None, str | None]:
        """(label of the set, source): the record's human label, else its pseudo-label, per
        ``evaluate.reference_source`` (eval/references.py)."""
        from eval.references import of_record

        given, source = of_record(self.prompts.records[clip_id], self.cfg.evaluate.reference_source)
        return (self.label_set.normalize(str(given)), source) if given else (None, None)

    def _loss(self, model: Any) -> tuple[float, int]:
        """Summed token loss and target-token count over this rank's real samples (repeats weigh 0)."""
        total, count = 0.0, 0
        for batch_items in self._batches(self.targets, self.loss_shard, self.cfg.train.per_device_batch_size):
            batch = self.right([self.targets[i] for i, _ in batch_items])
            labels = batch["labels"]
            inputs = _to_device({k: v for k, v in batch.items() if k != "labels"}, self.accelerator.device)
            logits = model(**inputs).logits
            for row, (_, real) in enumerate(batch_items):
                target = labels[row, 1:].to(logits.device)
                keep = target != -100
                if not real or not keep.any():
                    continue
                row_loss = torch.nn.functional.cross_entropy(logits[row, :-1][keep].float(), target[keep], reduction="sum")
                total += float(row_loss)
                count += int(keep.sum())
        return total, count

    def _generate(self, model: Any) -> list[dict[str, Any]]:
        from emollm.dataset.label_parsing import parse_label
        from emollm.inference import generate

        rows = []
        for batch_items in self._batches(self.prompts, self.gen_shard, self.cfg.predict.batch_size):
            batch = self.left([self.prompts[i] for i, _ in batch_items])
            texts = generate(model, self.processor, batch, self.gen_kwargs)
            for (i, real), text in zip(batch_items, texts, strict=True):
                if not real:
                    continue
                clip_id = self.prompts.samples[i]["clip_id"]
                parsed = parse_label(text, self.label_set, self.cfg.evaluate.parse, self.fallback)
                reference, source = self._reference(clip_id)
                rows.append({"id": self.prompts.samples[i]["id"], "text": text, "label": parsed.label,
                             "valid": parsed.valid, "reference": reference, "reference_source": source})
        return rows

    def __call__(self, model: Any, step: int, log_dir: Path) -> dict[str, Any]:
        """Evaluate the prepared ``model`` at ``step``; logs and writes the predictions; returns the row."""
        from accelerate.utils import gather_object

        from eval import references

        t0 = time.perf_counter()
        rng = _rng_state()  # evaluation must not shift training's random draws (dropout): resume stays exact
        torch.manual_seed(self.cfg.run.seed)  # sampled generation (predict.temperature > 0) repeats per eval
        model.eval()
        try:
            with torch.no_grad():
                loss_sum, loss_n = self._loss(model) if self.targets is not None else (0.0, 0)
                rows = self._generate(self.accelerator.unwrap_model(model))
        finally:
            model.train()
            _set_rng_state(rng)
        sums = gather_object([(loss_sum, loss_n)])
        rows = sorted(gather_object(rows), key=lambda r: r["id"])
        metrics: dict[str, Any] = {"step": step, "kind": "eval", "eval_samples": len(rows)}
        tokens = sum(n for _, n in sums)
        if tokens:
            metrics["eval_loss"] = sum(s for s, _ in sums) / tokens
        scored = [r for r in rows if r["reference"] is not None]
        # Human labels and pseudo-labels are scored apart: eval_war ... against the headline source (human
        # labels when any), eval_pseudo_label_war ... for the other, eval_all_* pooled (evaluate.combine_sources).
        grouped = references.groups([r["reference_source"] for r in scored], self.cfg.evaluate.combine_sources)
        head = references.headline(grouped)
        if grouped:
            counts = {s: len(idx) for s, idx in grouped.items() if s != references.ALL}
            metrics.update(eval_reference_source=head, eval_references=counts)
            for source, idx in grouped.items():
                m = self.classification_metrics([scored[i]["reference"] for i in idx], [scored[i]["label"] for i in idx],
                                                self.label_set.labels)
                prefix = "eval_" if source == head else f"eval_{source}_"
                metrics.update({f"{prefix}{k}": m[k] for k in ("war", "uar", "waf", "macro_f1")})
        elif rows:
            log.warning("evaluation at step %d: no eval sample has a reference label of the '%s' set "
                        "(evaluate.reference_source=%s): no classification metrics", step, self.label_set.name,
                        self.cfg.evaluate.reference_source)
        metrics["eval_invalid_rate"] = sum(not r["valid"] for r in rows) / max(len(rows), 1)
        metrics["eval_s"] = time.perf_counter() - t0
        log.info("eval step %d (references: %s): %s", step, references.describe(metrics.get("eval_references", {})),
                 "  ".join(f"{k[5:]} {v:.4f}" for k, v in metrics.items() if k.startswith("eval_") and isinstance(v, float)))
        if self.accelerator.is_main_process:
            log_dir.mkdir(parents=True, exist_ok=True)
            with open(log_dir / LOG_FILE, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(metrics) + "\n")
            path = log_dir / EVAL_PREDICTIONS.format(step=step)
            write_jsonl(path, rows, fsync=False)  # a killed run leaves no half-written predictions file
        if self.accelerator.trackers:
            self.accelerator.log({k: v for k, v in metrics.items() if k.startswith("eval_")
                                  and isinstance(v, int | float) and not isinstance(v, bool)}, step=step)
        return metrics


# ------------------------------------------------------------------------------------------ the loop
def make_accelerator(cfg: EmollmConfig, out: Path, trackers: list[str]):
    """The run's :class:`accelerate.Accelerator` (the SFT and GRPO loops): precision, accumulation, trackers and,
    with ``train.deepspeed``, its DeepSpeed plugin (the config's ``auto`` batch sizes filled from ours)."""
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin, ProjectConfiguration

    t = cfg.train
    ds_plugin = None
    if t.deepspeed:
        if not Path(t.deepspeed).is_file():
            raise ConfigError(f"train.deepspeed: {t.deepspeed} is not a file")
        ds_plugin = DeepSpeedPlugin(hf_ds_config=t.deepspeed, gradient_accumulation_steps=t.gradient_accumulation_steps,
                                    gradient_clipping=t.max_grad_norm)
    accelerator = Accelerator(
        mixed_precision="bf16" if t.bf16 else "fp16" if t.fp16 else "no",
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        log_with=trackers or None,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
        deepspeed_plugin=ds_plugin,
        kwargs_handlers=_process_group_kwargs(ds_plugin),
    )
    if ds_plugin is not None:
        # accelerate fills these from a prepared dataloader; ours stays unprepared (own sampler shards)
        ds_cfg = accelerator.state.deepspeed_plugin.deepspeed_config
        if ds_cfg.get("train_micro_batch_size_per_gpu") == "auto":
            ds_cfg["train_micro_batch_size_per_gpu"] = t.per_device_batch_size
        if ds_cfg.get("train_batch_size") == "auto":
            ds_cfg["train_batch_size"] = (ds_cfg["train_micro_batch_size_per_gpu"] * t.gradient_accumulation_steps
                                          * accelerator.num_processes)
    return accelerator


def is_zero3(accelerator) -> bool:
    plugin = accelerator.state.deepspeed_plugin
    return plugin is not None and plugin.zero_stage == 3


def build_model_for(accelerator, cfg: EmollmConfig):
    """:func:`build_model` for this accelerator: under ZeRO-3 built whole, partitioned later by
    ``deepspeed.initialize`` (zero.Init would also catch the frozen encoders that the model loads for their
    specs; weight-norm convs break under it)."""
    if not is_zero3(accelerator):
        return build_model(cfg)
    with _without_zero3_init():
        return build_model(cfg, zero3=True)


def checkpoint_kwargs(accelerator) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(save_state kwargs, load_state kwargs)``. DeepSpeed saves through its engine and hands accelerate's
    pre-save hook nothing: it is told to leave out the frozen weights itself (else every checkpoint holds
    the whole backbone), and loads them non-strictly."""
    if accelerator.state.deepspeed_plugin is not None:
        return {"exclude_frozen_parameters": True}, {"load_module_strict": False}
    return {}, {"strict": False}


def save_checkpoint(accelerator, out: Path, at_step: int, scheduler, save_kwargs: dict[str, Any],
                    save_total_limit: int | None, state: dict[str, Any]) -> Path:
    """``out/checkpoint-<at_step>`` (the SFT and GRPO loops): accelerate's state (every rank), ``scheduler.json``
    and, written last (a checkpoint without it is incomplete), the vetted ``trainer_state.json``: ``state``
    plus the size of every file; then the oldest checkpoints beyond ``save_total_limit`` go."""
    path = out / f"{CHECKPOINT_PREFIX}{at_step}"
    if accelerator.is_main_process and path.exists():
        # a checkpoint of this step left by a run that was resumed from an earlier one (e.g. skipped as
        # corrupt): none of its files may linger into the new one
        shutil.rmtree(path)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(path), **save_kwargs)
    if accelerator.is_main_process:
        (path / SCHEDULER_STATE).write_text(json.dumps(scheduler.state_dict()))
    accelerator.wait_for_everyone()  # every rank's files are written: their sizes go in the trainer state
    if accelerator.is_main_process:
        files = {rel: n for rel, n in safe_load.file_sizes(path).items() if not rel.startswith(TRAINER_STATE)}
        atomic_write_text(path / TRAINER_STATE, json.dumps({**state, "files": files}, indent=1), fsync=False)
        for gone in prune_checkpoints(out, save_total_limit):
            log.info("save_total_limit=%d: removed %s", save_total_limit, gone.name)
    accelerator.wait_for_everyone()
    return path


def train(cfg: EmollmConfig, *, stop_after_step: int | None = None) -> TrainResult:
    """Train per ``cfg``; checkpoints, resume, final run dir. ``stop_after_step`` ends the run right
    after that step's checkpoint without the final save (a kill, for resume tests)."""
    if cfg.train.stage == "grpo":  # reinforcement learning after SFT: its own loop on this one's machinery
        raise ConfigError("train.stage=grpo runs in emollm.training.grpo.train_grpo (emollm train / train.py "
                          "dispatch there), not in the supervised loop", hint="call grpo.train_grpo(cfg)")
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    from emollm.config.paths import check_input_paths
    from emollm.modeling.factory import save_run
    from emollm.training.data import EmotionCollator, LengthGroupedBatchSampler

    check_input_paths(cfg, "train")  # the Python API too: a missing folder is named before any model loads
    t = cfg.train
    out = Path(cfg.run.output_dir)
    trackers = _check_trackers(t.report_to)
    check_eval_split(cfg)
    resume_dir, saved_state = resume_checkpoint(t.resume, out)  # vetted: complete, no refused pickle
    accelerator = make_accelerator(cfg, out, trackers)
    ds_plugin = accelerator.state.deepspeed_plugin
    layout = {"world_size": accelerator.num_processes, "per_device_batch_size": t.per_device_batch_size,
              "gradient_accumulation_steps": t.gradient_accumulation_steps}
    run_config = result_config(cfg)
    layout_changed = saved_state is not None and check_resume_layout(saved_state, layout, resume_dir,
                                                                     allow=t.allow_resume_change, config=run_config)
    set_seed(cfg.run.seed)

    model, processor = build_model_for(accelerator, cfg)
    groups = model.trainable_parameters_by_group()
    total_params = sum(p.numel() for p in model.parameters())
    log.info("trainable parameters: %s (of %s in all, %.3f%%)", ", ".join(f"{k} {v:,}" for k, v in groups.items()),
             f"{total_params:,}", 100.0 * sum(groups.values()) / max(total_params, 1))

    ds = _dataset(cfg, model, processor)
    sampler = LengthGroupedBatchSampler(ds.lengths, t.per_device_batch_size, seed=cfg.run.seed,
                                        num_replicas=accelerator.num_processes, rank=accelerator.process_index)
    collator = _TaskCollator(EmotionCollator(processor, model.config.modalities))
    task_names = sorted({str(s.get("task")) for s in ds.samples})  # the same on every rank: one reduce per step
    batches_per_epoch = len(sampler)
    steps_per_epoch = max(1, batches_per_epoch // t.gradient_accumulation_steps)
    total_steps = t.max_steps or max(1, math.ceil(t.epochs * steps_per_epoch))
    log.info("training data: %d samples, %d batches per epoch per rank, %d optimizer steps, %d process(es)",
             len(ds), batches_per_epoch, total_steps, accelerator.num_processes)

    evaluator = Evaluator(cfg, accelerator, model, processor, ds.cache) if t.eval_steps else None

    optimizer = make_optimizer(model, cfg, deepspeed=ds_plugin is not None)
    scheduler = get_scheduler(t.lr_scheduler if t.lr_scheduler != "constant" else "constant_with_warmup", optimizer,
                              num_warmup_steps=math.ceil(t.warmup_ratio * total_steps), num_training_steps=total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    # The scheduler is not registered with accelerate (which would pickle it and unpickle it with
    # weights_only=False): its state_dict goes to scheduler.json in each checkpoint.
    legacy = sorted(resume_dir.glob("custom_checkpoint_*.pkl")) if resume_dir is not None else []
    holders = [_StateHolder() for _ in legacy]  # an older emollm's pickled scheduler: vetted, read as data
    if holders:
        accelerator.register_for_checkpointing(*holders)

    trainable = {n for n, p in accelerator.unwrap_model(model).named_parameters() if p.requires_grad}

    def keep_trainable(models, weights, output_dir):  # checkpoints hold trainable weights only
        for i, state in enumerate(weights):
            weights[i] = {k: v for k, v in state.items() if k in trainable}

    accelerator.register_save_state_pre_hook(keep_trainable)  # DDP / one process: the hook gets the weights
    save_kwargs, load_kwargs = checkpoint_kwargs(accelerator)

    step, epoch, offset, losses = 0, 0, 0, []
    if resume_dir is not None:
        rng_file = resume_dir / f"random_states_{accelerator.process_index}.pkl"
        if not rng_file.is_file():
            log.warning("resume: %s is missing: random draws (dropout) start from run.seed, so losses differ from "
                        "an uninterrupted run", rng_file)
        try:
            accelerator.load_state(str(resume_dir), **load_kwargs)
        except (RuntimeError, KeyError, ValueError) as exc:  # vetted files that do not fit this model
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EmollmError(f"cannot load checkpoint {resume_dir} into this model: {first}",
                              hint="resume with the config the checkpoint was trained with (its model / LoRA "
                                   "shape), or start afresh") from None
        accelerator.step = 0  # checkpoints are taken on accumulation boundaries
        state = saved_state
        step, epoch, offset, losses = state["global_step"], state["epoch"], state["batch_offset"], state["losses"]
        _restore_scheduler(scheduler, resume_dir, holders, step)
        if layout_changed:  # same epoch, about the same number of samples consumed
            before = state.get("per_device_batch_size", t.per_device_batch_size) * state.get("world_size", 1)
            offset = min(len(sampler), round(offset * before / (t.per_device_batch_size * accelerator.num_processes)))
        log.info("resumed from %s: step %d, epoch %d, batch %d", resume_dir, step, epoch, offset)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        cfglib.save_resolved(cfg, out, command="train")
        if resume_dir is None:  # a fresh run: an earlier run's checkpoints would mix in (and --resume would pick them)
            stale = [p for p in out.glob(CHECKPOINT_PREFIX + "*") if re.fullmatch(CHECKPOINT_PREFIX + r"\d+", p.name)]
            if stale:
                log.warning("removing %d checkpoint(s) of an earlier run in %s (pass --resume to continue it instead)",
                            len(stale), out)
                for path in stale:
                    shutil.rmtree(path)
        prepare_log(out / "logs", step if resume_dir is not None else None)
    if trackers:
        accelerator.init_trackers(cfg.run.name, config={"lr": t.lr, "max_steps": total_steps})

    def checkpoint(at_step: int) -> None:
        save_checkpoint(accelerator, out, at_step, scheduler, save_kwargs, t.save_total_limit,
                        {"global_step": at_step, "epoch": epoch, "batch_offset": offset, "losses": losses,
                         "total_steps": total_steps, **layout, "config": run_config})

    log_file = out / "logs" / LOG_FILE
    window = {"loss": 0.0, "n": 0, "tokens": 0, "padded": 0, "samples": 0, "t0": time.perf_counter(),
              "task_sums": torch.zeros(2 * len(task_names), dtype=torch.float64), "grad_norms": []}
    gas, world = t.gradient_accumulation_steps, accelerator.num_processes

    def micro_batches():
        """``(epoch, position after it, batch)`` from the resume point on, epoch after epoch."""
        e, start = epoch, offset
        while True:
            sampler.set_epoch(e)
            batches = list(sampler)[start:]  # resume: skip what this epoch already consumed
            # The loader draws its worker seed from its own generator, never from the global RNG (which
            # LoRA dropout uses and checkpoints restore): a resumed run then replays the same random draws.
            loader = torch.utils.data.DataLoader(ds, batch_sampler=batches, collate_fn=collator,
                                                 num_workers=t.dataloader_num_workers,
                                                 generator=torch.Generator().manual_seed(cfg.run.seed + e))
            for position, batch in enumerate(loader, start + 1):
                yield e, position, batch
            e, start = e + 1, 0

    stream = micro_batches()
    model.train()
    stopped = False
    while step < total_steps:
        # One optimizer step = gas micro-batches on every rank. Its loss is the mean over all their target
        # tokens (summed across ranks first, as transformers' Trainer does with num_items_in_batch), so a
        # one-word answer weighs one token, not as much as a long reasoning; each micro-batch contributes
        # its summed token loss / that count. ``scale`` undoes the 1/gas of accelerate / DeepSpeed's backward
        # and the 1/world of the gradient averaging across ranks.
        group = [next(stream) for _ in range(gas)]
        n_tokens = int(_sum_across(torch.tensor([sum(target_tokens(b["labels"]) for _, _, b in group)],
                                                dtype=torch.float64), accelerator.device)[0])
        scale = gas * world / max(n_tokens, 1)
        sums = torch.zeros(1 + 2 * len(task_names), dtype=torch.float64)  # loss; per task: loss, tokens
        for at_epoch, position, batch in group:
            ids, tasks = batch["ids"], batch["tasks"]
            inputs = _to_device({k: v for k, v in batch.items() if k != "labels"}, accelerator.device)
            labels = batch["labels"]  # stays on the CPU: target positions and token counts need no device sync
            with accelerator.accumulate(model):
                per_token = micro_batch_losses(model, inputs, labels)
                loss_sum = per_token.sum()
                # checked before the backward: under DeepSpeed, accelerator.backward also steps the weights
                if not torch.isfinite(loss_sum.detach()):
                    raise EmollmError(
                        f"loss is {loss_sum.item()} at step {step + 1} (epoch {at_epoch}, batch {position}); "
                        f"sample ids: {', '.join(map(str, ids))}",
                        hint="lower train.lr, check these samples' features, or use bf16 instead of fp16",
                    )
                accelerator.backward(loss_sum * scale)
                if accelerator.sync_gradients and t.max_grad_norm:
                    norm = accelerator.clip_grad_norm_(model.parameters(), t.max_grad_norm)  # before clipping
                    if norm is not None:
                        window["grad_norms"].append(float(norm))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            row_loss = per_token.detach().sum(1).double().cpu()
            row_tokens = (labels[:, 1:] != -100).sum(1).double().cpu()
            sums[0] += row_loss.sum()
            for row, task in enumerate(tasks):
                k = task_names.index(str(task))
                sums[1 + 2 * k] += row_loss[row]
                sums[2 + 2 * k] += row_tokens[row]
            mask = batch["attention_mask"]  # the CPU copy
            window["tokens"] += int(mask.sum())
            window["padded"] += mask.numel()
            window["samples"] += mask.shape[0]
        if not accelerator.sync_gradients:
            raise EmollmError(f"internal: no optimizer step after {gas} micro-batches (accelerate's step counter "
                              f"is {accelerator.step})")
        epoch, offset = group[-1][0], group[-1][1]
        if offset >= len(sampler):
            epoch, offset = epoch + 1, 0
        scheduler.step()
        step += 1
        sums = _sum_across(sums, accelerator.device)
        step_loss = float(sums[0]) / max(n_tokens, 1)
        losses.append(step_loss)
        window["loss"] += step_loss
        window["n"] += 1
        window["task_sums"] += sums[1:]
        if step % t.logging_steps == 0 or step == total_steps:
            _log_window(accelerator, window, step, total_steps, scheduler, log_file, task_names)
        if step % t.save_steps == 0 or step == stop_after_step:
            checkpoint(step)
        if step == stop_after_step:
            stopped = True
            break
        if evaluator is not None and (step % t.eval_steps == 0 or step == total_steps):
            spent = evaluator(model, step, log_file.parent)["eval_s"]
            window["t0"] += spent  # training throughput leaves the evaluation's time out
    stream.close()

    result = TrainResult(output_dir=out, global_step=step, losses=losses, stopped_early=stopped)
    unwrapped = accelerator.unwrap_model(model)
    result.model, result.processor = unwrapped, processor
    if not stopped:
        _save_final(accelerator, model, processor, out, save_run)
    if trackers:
        accelerator.end_training()
    return result


class _StateHolder:
    """Receives a ``custom_checkpoint_<i>.pkl`` of an older emollm (the pickled scheduler state) as data."""

    state: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return self.state or {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = state


def _restore_scheduler(scheduler, resume_dir: Path, holders: list[_StateHolder], step: int) -> None:
    """The LR scheduler as it was at the checkpoint: ``scheduler.json``, an older emollm's pickled state
    (vetted), or else stepped ``step`` times (the schedule is a function of the step alone)."""
    import warnings

    path = resume_dir / SCHEDULER_STATE
    if path.is_file():
        scheduler.load_state_dict(safe_load.check_json(path))
    elif holders and holders[0].state:
        scheduler.load_state_dict(holders[0].state)
    else:
        log.warning("resume: %s has no %s: the LR schedule is replayed to step %d", resume_dir, SCHEDULER_STATE, step)
        with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": intended here
            warnings.simplefilter("ignore")
            for _ in range(step):
                scheduler.step()


def _sum_across(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``values`` summed over all processes, back on the CPU (reduced on ``device``: gloo or NCCL)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    summed = values.to(device)
    dist.all_reduce(summed, op=dist.ReduceOp.SUM)
    return summed.cpu()


def _log_window(accelerator, window: dict[str, Any], step: int, total: int, scheduler, log_file: Path,
                task_names: list[str]) -> None:
    elapsed = max(time.perf_counter() - window["t0"], 1e-9)
    world = accelerator.num_processes
    sums = window["task_sums"]
    # per task: the loss per target token of its samples over the window (all ranks)
    per_task = {f"loss_{name}": float(sums[2 * k] / sums[2 * k + 1])
                for k, name in enumerate(task_names) if sums[2 * k + 1] > 0}
    metrics = {
        "step": step,
        "kind": "train",
        "loss": window["loss"] / max(window["n"], 1),
        **per_task,
        **({"grad_norm": sum(window["grad_norms"]) / len(window["grad_norms"])} if window["grad_norms"] else {}),
        "lr": scheduler.get_last_lr()[0],
        "tokens_per_s": window["tokens"] * world / elapsed,
        "samples_per_s": window["samples"] * world / elapsed,
        "real_token_fraction": window["tokens"] / max(window["padded"], 1),
    }
    tasks = ", ".join(f"{k[5:]} {v:.4f}" for k, v in per_task.items())
    log.info("step %d/%d  loss %.4f%s  lr %.2e  %.0f tok/s  %.2f samples/s  real tokens %.1f%%", step, total,
             metrics["loss"], f" ({tasks})" if len(per_task) > 1 else "", metrics["lr"], metrics["tokens_per_s"],
             metrics["samples_per_s"], 100 * metrics["real_token_fraction"])
    if accelerator.is_main_process:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(metrics) + "\n")
    if accelerator.trackers:
        accelerator.log({k: v for k, v in metrics.items() if k not in ("step", "kind")}, step=step)
    window.update(loss=0.0, n=0, tokens=0, padded=0, samples=0, t0=time.perf_counter(), task_sums=torch.zeros_like(sums),
                  grad_norms=[])


def _save_final(accelerator, model, processor, out: Path, save_run) -> None:
    """The run dir: config.json + adapter + media weights (or full weights) + processor + config.yaml.

    Under ZeRO-3 every rank holds a shard of each parameter: the trainable ones (adapter, media
    modules) are gathered in full on every rank for the save (else adapters save empty), then
    partitioned back, so the live model stays usable (``result.model`` forwards collectively).
    """
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    sharded = [p for p in unwrapped.parameters() if hasattr(p, "ds_id")]
    if sharded:
        import deepspeed

        trainable = [p for p in sharded if p.requires_grad]
        if not unwrapped.is_lora:
            trainable = sharded  # full weights: gather everything
        with deepspeed.zero.GatheredParameters(trainable, modifier_rank=None):
            if accelerator.is_main_process:
                save_run(unwrapped, processor, out)
    elif accelerator.is_main_process:
        save_run(unwrapped, processor, out)
    if accelerator.is_main_process:
        log.info("saved the run to %s", out)
    accelerator.wait_for_everyone()


__all__ = ["LAYOUT_KEYS", "Evaluator", "TrainResult", "build_model", "check_eval_split", "check_resume_layout",
           "list_checkpoints", "param_groups", "prepare_log", "prune_checkpoints", "result_config", "resume_checkpoint",
           "make_optimizer", "micro_batch_losses", "target_positions", "target_tokens", "token_losses", "train",
           "vet_checkpoint"]
