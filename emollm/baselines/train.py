"""Train and run a baseline (`emollm baseline train|predict`): a seeded torch loop over the method's
stages, checkpoints with exact resume, eval-split metrics each epoch, a run dir, predictions that
`emollm evaluate` scores.

>>> result = train_baseline(cfg, "data/meld")            # run dir: cfg.run.output_dir
>>> predict("runs/hlm12erc", "data/meld", "preds.jsonl")  # {"id", "label", "probs"} per clip

Run dir (``run.output_dir``)::

    model.safetensors      the trained weights (safetensors, no pickle)
    baseline.json          method, feature widths, classes, options (what rebuilds the model), label
                           set, modalities with their encoder and cache fingerprint, split sizes
    config.yaml            the resolved config
    train_log.jsonl        one line per epoch: stage, loss and its parts, then the eval metrics
    eval_metrics.json      the last eval-split metrics
    checkpoint-<epoch>/    model.safetensors, optimizer.pt, rng.safetensors, trainer_state.json (last)

Resume (``baseline.resume=latest`` or a checkpoint dir) restores weights, optimizer, the stage and
epoch, the RNG state and the log up to that checkpoint: batches are a function of (run.seed, epoch),
so a resumed run ends with the same weights as one that never stopped.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from emollm import config as cfglib
from emollm.baselines.base import BaselineBatch, BaselineModel, build_baseline
from emollm.baselines.data import (
    BaselineSplit,
    ClassAwareBatchSampler,
    ModalityInfo,
    load_split,
    shuffled_batches,
    split_names,
)
from emollm.dataset.io import atomic_write_bytes
from emollm.errors import ConfigError, EmollmError, FeatureCacheError
from emollm.log import get_logger
from emollm.training.loop import (
    CHECKPOINT_PREFIX,
    LOG_FILE,
    TRAINER_STATE,
    list_checkpoints,
    prune_checkpoints,
    resume_checkpoint,
)

log = get_logger(__name__)

RUN_FILE = "baseline.json"
WEIGHTS_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng.safetensors"
EVAL_FILE = "eval_metrics.json"
RUN_KIND = "emollm-baseline"


@dataclass
class BaselineTrainResult:
    output_dir: Path
    epochs: int = 0  # epochs done over all stages (a resumed run counts from the start)
    losses: list[float] = field(default_factory=list)  # mean training loss of each epoch this call ran
    eval_metrics: dict[str, Any] | None = None  # the last eval-split metrics
    stopped_early: bool = False  # stop_after_epoch hit (a simulated kill, for tests)
    model: BaselineModel | None = None


# ------------------------------------------------------------------------------------------ helpers
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"baseline.device: '{name}' is not a torch device", hint="auto, cpu, cuda, cuda:1 ...") from None


def stage_epochs(epochs: int | dict[str, int], stages: tuple[str, ...], method: str) -> list[tuple[str, int]]:
    """``[(stage, epochs), ...]`` in stage order from ``baseline.epochs`` (an int for every stage, or
    {stage: epochs} naming every stage)."""
    if isinstance(epochs, int):
        return [(stage, epochs) for stage in stages]
    unknown = sorted(set(epochs) - set(stages))
    missing = [s for s in stages if s not in epochs]
    if unknown or missing:
        raise ConfigError(f"baseline.epochs names stages {sorted(epochs)}; '{method}' has {list(stages)}",
                          hint="give one number for every stage, or {stage: epochs} for each of them")
    return [(stage, int(epochs[stage])) for stage in stages]


def _write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, json.dumps(data, indent=2, ensure_ascii=False, default=str).encode())


def _save_weights(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save

    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, save(state, metadata={"format": "pt"}))


def _load_weights(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except FileNotFoundError:
        raise EmollmError(f"{path}: no such weights file") from None
    except Exception as err:  # safetensors boundary: a truncated or foreign file
        raise EmollmError(f"{path}: unreadable weights ({err})") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise EmollmError(f"{path}: weights do not match the model (missing {missing[:5]}, unexpected {unexpected[:5]})",
                          hint="the run dir's baseline.json and model.safetensors come from different runs")


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


# ------------------------------------------------------------------------------------------ scoring
@torch.no_grad()
def run_model(model: BaselineModel, batch: BaselineBatch, batch_size: int, device: torch.device) -> dict[str, Any]:
    """Outputs over a whole split in ``eval()`` mode: ``logits`` (N, C) or ``prediction`` (N,), and the
    mean ``loss`` when the batch has labels."""
    was_training = model.training
    model.eval()
    logits, predictions, losses, sizes = [], [], [], []
    try:
        for start in range(0, len(batch.ids), batch_size):
            part = batch.select(range(start, min(start + batch_size, len(batch.ids)))).to(device)
            out = model(part)
            if out.logits is not None:
                logits.append(out.logits.float().cpu())
            if out.prediction is not None:
                predictions.append(out.prediction.float().cpu())
            if out.loss is not None:
                losses.append(float(out.loss))
                sizes.append(len(part))
    finally:
        model.train(was_training)
    result: dict[str, Any] = {}
    if logits:
        result["logits"] = torch.cat(logits)
    if predictions:
        result["prediction"] = torch.cat(predictions)
    if losses:
        result["loss"] = sum(loss * n for loss, n in zip(losses, sizes, strict=True)) / sum(sizes)
    return result


def split_metrics(model: BaselineModel, data: BaselineSplit, batch_size: int, device: torch.device, *,
                  combine_sources: bool = False) -> dict[str, Any]:
    """The eval metrics of ``model`` on a labelled split: WAR / UAR / WAF / macro F1 (classification,
    ``eval.classification``) or the MOSI metrics (regression, ``eval.regression``), and the loss.
    Classification names its references (``reference_source``: the headline's, ``references``: counts
    per source) and scores a second source apart (``by_reference``; ``combine_sources``: also pooled)."""
    out = run_model(model, data.batch, batch_size, device)
    metrics: dict[str, Any] = {"n": len(data)}
    if "loss" in out:
        metrics["loss"] = out["loss"]
    if model.task == "classification":
        from eval import references
        from eval.classification import classification_metrics

        if "logits" not in out:
            raise EmollmError(f"baseline '{model.name}' returned no logits for a classification task")
        predicted = out["logits"].argmax(dim=-1).tolist()
        gold = data.batch.labels.tolist()  # type: ignore[union-attr]
        # each reference source on its own: the headline against human labels when any (eval/references.py)
        grouped = references.groups(list(data.sources) or [references.LABEL] * len(gold), combine_sources)
        head = references.headline(grouped)
        metrics.update(reference_source=head, references={s: len(i) for s, i in grouped.items() if s != references.ALL})
        for source, idx in grouped.items():
            full = classification_metrics([data.labels[gold[i]] for i in idx], [data.labels[predicted[i]] for i in idx],
                                          data.labels)
            scores = {k: full[k] for k in ("war", "uar", "waf", "macro_f1")}
            if source == head:
                metrics.update(scores)
            else:
                metrics.setdefault("by_reference", {})[source] = {"n": len(idx), **scores}
    else:
        from eval.regression import regression_metrics

        if "prediction" not in out:
            raise EmollmError(f"baseline '{model.name}' returned no prediction for a regression task")
        metrics.update(regression_metrics(data.batch.labels.tolist(), out["prediction"].tolist()))  # type: ignore[union-attr]
    return metrics


# ------------------------------------------------------------------------------------------ training
def _resume_dir(cfg: cfglib.EmollmConfig) -> tuple[Path | None, dict[str, Any] | None]:
    """The checkpoint to resume and its state, vetted as the LLM loop's are (complete files, no pickle
    global outside the allowlist; ``latest`` skips a corrupt newest one)."""
    return resume_checkpoint(cfg.baseline.resume, cfg.run.output_dir, key="baseline.resume", unit="epoch",
                             step_key="epoch")


def _truncate_log(path: Path, lines: int) -> None:
    """Keep the first ``lines`` lines of the log: what a resumed run logged after its checkpoint goes."""
    if not path.is_file():
        return
    kept = path.read_text(encoding="utf-8").splitlines(keepends=True)[:lines]
    atomic_write_bytes(path, "".join(kept).encode())


def _log_line(path: Path, entry: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry, default=float) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _count_lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines()) if path.is_file() else 0


def _rng_state() -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            state[f"cuda{i}"] = s
    return state


def _set_rng_state(path: Path) -> None:
    from safetensors.torch import load_file

    state = load_file(str(path))
    torch.set_rng_state(state["cpu"])
    if torch.cuda.is_available():
        cuda = [state[k] for k in sorted(k for k in state if k.startswith("cuda"))]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def _save_checkpoint(out: Path, epoch: int, model: BaselineModel, optimizer: torch.optim.Optimizer,
                     state: dict[str, Any], limit: int | None) -> Path:
    from safetensors.torch import save

    path = out / f"{CHECKPOINT_PREFIX}{epoch}"
    path.mkdir(parents=True, exist_ok=True)
    (path / TRAINER_STATE).unlink(missing_ok=True)  # incomplete until the state is written back, last
    _save_weights(model, path / WEIGHTS_FILE)
    buf = io.BytesIO()
    torch.save(optimizer.state_dict(), buf)
    atomic_write_bytes(path / OPTIMIZER_FILE, buf.getvalue())
    atomic_write_bytes(path / RNG_FILE, save(_rng_state()))
    _write_json(path / TRAINER_STATE, state)
    prune_checkpoints(out, limit)
    return path


def _run_info(cfg: cfglib.EmollmConfig, model: BaselineModel, train: BaselineSplit, evaluation: BaselineSplit | None,
              dataset_dir: Path) -> dict[str, Any]:
    from emollm.dataset.label_sets import load_label_set
    from emollm.version import __version__

    return {
        "kind": RUN_KIND, "version": 1, "emollm_version": __version__,
        "model": model.config_dict(),
        "task": model.task, "target_field": cfg.baseline.target_field,
        "label_set": {**load_label_set(cfg.eval_label_set).describe(), "labels": list(train.labels)}
        if train.labels else None,
        "modalities": {name: info.to_dict() for name, info in train.modalities.items()},
        "dataset_dir": str(dataset_dir),
        "splits": {"train": {"name": train.split, "n": len(train), "skipped": dict(train.skipped)},
                   "eval": None if evaluation is None else {"name": evaluation.split, "n": len(evaluation),
                                                            "skipped": dict(evaluation.skipped)}},
    }  # fmt: skip


def train_baseline(cfg: cfglib.EmollmConfig, dataset_dir: str | os.PathLike | None = None, *,
                   stop_after_epoch: int | None = None) -> BaselineTrainResult:
    """Train ``cfg.baseline`` on ``dataset_dir`` (default ``data.dataset_dir``): the train split
    (``data.train_split``) trains, the eval split (``data.eval_split``, when the dataset has it)
    is scored after epochs. ``stop_after_epoch`` ends the run right after that epoch's checkpoint,
    without the final save (a kill, for resume tests)."""
    bcfg = cfg.baseline
    if not (dataset_dir or cfg.data.dataset_dir):
        raise ConfigError("no dataset folder given", hint="emollm baseline train --config FILE DATASET_DIR")
    dataset = Path(dataset_dir or cfg.data.dataset_dir)  # type: ignore[arg-type]
    out = Path(cfg.run.output_dir)
    device = resolve_device(bcfg.device)
    t0 = time.perf_counter()

    train = load_split(cfg, dataset, cfg.data.train_split)
    evaluation = None
    if cfg.data.eval_split in split_names(dataset):
        evaluation = load_split(cfg, dataset, cfg.data.eval_split, modalities=train.modalities, require_any=False,
                                policy=cfg.evaluate.reference_source)
        if not len(evaluation):
            log.warning("baseline: no clip of the '%s' split has a target: no eval metrics", cfg.data.eval_split)
            evaluation = None
    else:
        log.warning("baseline: the dataset has no '%s' split (data.eval_split): no eval metrics", cfg.data.eval_split)
    num_classes = len(train.labels) if bcfg.task == "classification" else 1

    torch.manual_seed(cfg.run.seed)  # the initial weights depend on run.seed alone
    model = build_baseline(bcfg.method, train.feature_dims, num_classes, task=bcfg.task, **bcfg.options)
    model.to(device)
    plan = stage_epochs(bcfg.epochs, model.stages, model.name)
    total_epochs = sum(n for _, n in plan)
    log.info("baseline %s: %d train / %s eval clip(s), modalities %s, stages %s, %d parameter(s), on %s",
             model.name, len(train), len(evaluation) if evaluation else "no", train.feature_dims,
             [f"{s}x{n}" for s, n in plan], sum(p.numel() for p in model.parameters()), device)

    out.mkdir(parents=True, exist_ok=True)
    log_file = out / LOG_FILE
    resume, resume_state = _resume_dir(cfg)
    done_epochs = 0
    if resume is not None and resume_state is not None:
        if resume_state.get("method") != model.name:
            raise ConfigError(f"baseline.resume: {resume} is a '{resume_state.get('method')}' checkpoint, "
                              f"this run trains '{model.name}'")
        _load_weights(model, resume / WEIGHTS_FILE)
        _set_rng_state(resume / RNG_FILE)  # dropout draws continue where the checkpoint left them
        done_epochs = int(resume_state["epoch"])
        _truncate_log(log_file, int(resume_state.get("log_lines", 0)))
        log.info("baseline: resumed from %s (epoch %d of %d)", resume, done_epochs, total_epochs)
    else:  # a fresh run: what an earlier run left in this folder would mix in (its log, its checkpoints)
        stale = list_checkpoints(out)
        if stale:
            log.warning("baseline: removing %d checkpoint(s) of an earlier run in %s (pass --resume to continue "
                        "it instead)", len(stale), out)
            for path in stale:
                shutil.rmtree(path)
        log_file.unlink(missing_ok=True)
    cfglib.save_resolved(cfg, out, command="baseline train")
    info = _run_info(cfg, model, train, evaluation, dataset)
    _write_json(out / RUN_FILE, info)

    result = BaselineTrainResult(out, done_epochs, model=model)
    epoch = 0  # global epoch counter over all stages
    last_eval: dict[str, Any] | None = None
    for stage_index, (stage, n_epochs) in enumerate(plan):
        if epoch + n_epochs <= done_epochs:  # a stage a resumed run already finished
            epoch += n_epochs
            continue
        model.set_stage(stage)
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise EmollmError(f"baseline '{model.name}', stage '{stage}': no parameter to train")
        optimizer = torch.optim.AdamW(params, lr=bcfg.lr, weight_decay=bcfg.weight_decay)
        start = 0
        if resume is not None and epoch < done_epochs:  # resuming inside this stage: its optimizer goes on
            start = done_epochs - epoch
            optimizer.load_state_dict(torch.load(resume / OPTIMIZER_FILE, weights_only=True))
            epoch = done_epochs
        pk = model.class_aware_batches()
        if pk is not None and bcfg.task != "classification":
            raise ConfigError(f"baseline '{model.name}' asks for class-aware batches, which need class labels")
        log.info("baseline stage '%s': %d epoch(s), %d trainable parameter(s)%s", stage, n_epochs,
                 sum(p.numel() for p in params), ", class-aware batches (P classes x K samples)" if pk else "")
        for stage_epoch in range(start, n_epochs):
            epoch_t0 = time.perf_counter()
            model.train()
            if pk is not None:
                classes = min(pk[0], len(set(train.batch.labels.tolist())))  # type: ignore[union-attr]
                per_class = pk[1] or max(2, bcfg.batch_size // classes)
                sampler = ClassAwareBatchSampler(train.batch.labels, classes, per_class, seed=cfg.run.seed)  # type: ignore[arg-type]
                sampler.set_epoch(epoch)
                batches = list(sampler)
            else:
                batches = shuffled_batches(len(train), bcfg.batch_size, seed=cfg.run.seed, epoch=epoch)
            losses: list[float] = []
            parts: dict[str, list[float]] = {}
            for indices in batches:
                batch = train.batch.select(indices).to(device)
                out_ = model(batch)
                if out_.loss is None:
                    raise EmollmError(f"baseline '{model.name}' returned no loss for a labelled batch (stage {stage})")
                if not torch.isfinite(out_.loss):
                    raise EmollmError(f"baseline '{model.name}': the loss is {float(out_.loss)} at epoch {epoch + 1} "
                                      f"(stage {stage})", hint="lower baseline.lr, or check the features for NaN")
                optimizer.zero_grad(set_to_none=True)
                out_.loss.backward()
                if bcfg.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(params, bcfg.max_grad_norm)
                optimizer.step()
                losses.append(float(out_.loss.detach()))
                for name, value in out_.parts.items():
                    parts.setdefault(name, []).append(float(value))
            epoch += 1
            entry: dict[str, Any] = {"epoch": epoch, "stage": stage, "stage_epoch": stage_epoch + 1,
                                     "loss": _mean(losses), "parts": {k: _mean(v) for k, v in parts.items()},
                                     "batches": len(batches), "lr": bcfg.lr,
                                     "epoch_s": round(time.perf_counter() - epoch_t0, 3)}  # fmt: skip
            result.losses.append(entry["loss"])
            last_of_run = epoch == total_epochs
            if evaluation is not None and ((bcfg.eval_every and epoch % bcfg.eval_every == 0) or last_of_run):
                last_eval = split_metrics(model, evaluation, max(bcfg.batch_size, 256), device,
                                          combine_sources=cfg.evaluate.combine_sources)
                entry["eval"] = last_eval
            _log_line(log_file, entry)
            log.info("epoch %d/%d (%s): loss %.4f %s%s", epoch, total_epochs, stage, entry["loss"],
                     " ".join(f"{k} {v:.4f}" for k, v in entry["parts"].items()),
                     "" if "eval" not in entry else "  eval " + " ".join(
                         f"{k} {v:.4f}" for k, v in entry["eval"].items() if k != "n" and isinstance(v, float)))
            result.epochs = epoch
            if epoch % bcfg.checkpoint_every == 0 or stage_epoch + 1 == n_epochs or epoch == stop_after_epoch:
                _save_checkpoint(out, epoch, model, optimizer, {
                    "epoch": epoch, "stage": stage, "stage_index": stage_index, "stage_epoch": stage_epoch + 1,
                    "method": model.name, "seed": cfg.run.seed, "log_lines": _count_lines(log_file),
                }, bcfg.save_total_limit)  # fmt: skip
            if stop_after_epoch is not None and epoch >= stop_after_epoch:
                result.stopped_early = True
                result.eval_metrics = last_eval
                return result
    model.set_stage(model.stages[-1])
    _save_weights(model, out / WEIGHTS_FILE)
    if evaluation is not None and last_eval is None:  # every epoch was done before this call (resume at the end)
        last_eval = split_metrics(model, evaluation, max(bcfg.batch_size, 256), device,
                                  combine_sources=cfg.evaluate.combine_sources)
    if last_eval is not None:
        _write_json(out / EVAL_FILE, last_eval)
    result.eval_metrics = last_eval
    log.info("baseline %s: %d epoch(s) in %.1f s -> %s", model.name, epoch, time.perf_counter() - t0, out)
    return result


# ------------------------------------------------------------------------------------------ predicting
def load_baseline(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[BaselineModel, dict[str, Any]]:
    """The trained model of a run dir (in its last stage, ``eval()``) and its ``baseline.json``."""
    run = Path(run_dir)
    try:
        info = json.loads((run / RUN_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EmollmError(f"{run} holds no {RUN_FILE}: not a baseline run dir",
                          hint="train one first: emollm baseline train --method NAME --config FILE DATASET_DIR") from None
    except ValueError as err:
        raise EmollmError(f"{run / RUN_FILE}: not valid JSON ({err})") from None
    if info.get("kind") != RUN_KIND:
        raise EmollmError(f"{run / RUN_FILE}: not an emollm baseline run (kind {info.get('kind')!r})")
    if not (run / WEIGHTS_FILE).is_file():
        raise EmollmError(f"{run} holds no {WEIGHTS_FILE}: the run did not finish",
                          hint="resume it: emollm baseline train ... baseline.resume=latest")
    spec = info["model"]
    model = build_baseline(spec["method"], spec["feature_dims"], spec["num_classes"], task=spec["task"],
                           **spec["options"])
    _load_weights(model, run / WEIGHTS_FILE)
    model.set_stage(model.stages[-1])
    return model.to(device).eval(), info


@dataclass
class PredictSummary:
    out: Path
    n: int
    split: str | None
    task: str
    skipped: dict[str, int] = field(default_factory=dict)
    references: dict[str, int] = field(default_factory=dict)  # rows with a gt per source (label, pseudo_label, score)


def predict(run_dir: str | os.PathLike, dataset_dir: str | os.PathLike, out: str | os.PathLike, *,
            split: str | None = None, overrides: list[str] | tuple[str, ...] = (),
            batch_size: int = 256) -> PredictSummary:
    """Predict every record of ``split`` (None: every record) of ``dataset_dir`` with the baseline of
    ``run_dir``; write JSONL rows ``{"id", "label", "probs"}`` (classification) or ``{"id", "score"}``
    (regression) to ``out``, which ``emollm evaluate --predictions`` reads. Rows carry the clip's
    reference like ``emollm predict``'s: ``gt`` / ``gt_source`` (its human label, else its pseudo-label)
    or ``gt_score`` (the record's ``baseline.target_field``), so they score without ``--references``.

    The features come from the dataset's feature cache as configured by the run's ``config.yaml``
    (plus ``overrides``, e.g. ``features.cache_dir=...``); each modality's cache fingerprint must be
    the one the model was trained on."""
    run = Path(run_dir)
    cfg = cfglib.load(run / cfglib.RESOLVED_CONFIG_NAME, list(overrides)) if (run / cfglib.RESOLVED_CONFIG_NAME).is_file() \
        else cfglib.load(None, list(overrides))
    device = resolve_device(cfg.baseline.device)
    model, info = load_baseline(run, device)
    trained = {name: ModalityInfo(**spec) for name, spec in info["modalities"].items()}
    data = load_split(cfg, dataset_dir, split, targets=False, modalities=trained)
    for name, spec in trained.items():
        now = data.modalities[name].fingerprint
        if spec.fingerprint and now != spec.fingerprint:
            raise FeatureCacheError(
                f"modality '{name}': the dataset's cached features come from another encoder (fingerprint "
                f"{str(now)[:16]}) than the model was trained on ({spec.fingerprint[:16]})",
                hint=f"run `emollm features` on {dataset_dir} with the run's config ({run / 'config.yaml'})")
    outputs = run_model(model, data.batch, batch_size, device)
    rows = []
    sources: Counter[str] = Counter()
    if model.task == "classification":
        labels = info["label_set"]["labels"]
        probs = outputs["logits"].softmax(dim=-1)
        for clip_id, p, gt, source in zip(data.batch.ids, probs, data.references, data.sources, strict=True):
            best = int(p.argmax())
            row = {"id": clip_id, "label": labels[best],
                   "probs": {lab: round(float(v), 6) for lab, v in zip(labels, p, strict=True)}}
            if gt:  # the reference, as `emollm predict` rows carry it: evaluate needs no --references
                row.update(gt=gt, gt_source=source)
                sources[source] += 1
            rows.append(row)
    else:
        field_name = cfg.baseline.target_field or info.get("target_field")
        targets = {r["id"]: r.get(field_name) for r in _records(dataset_dir, split)} if field_name else {}
        for clip_id, score in zip(data.batch.ids, outputs["prediction"].tolist(), strict=True):
            row = {"id": clip_id, "score": float(score)}
            gt = targets.get(clip_id)
            if isinstance(gt, int | float) and not isinstance(gt, bool) or (isinstance(gt, str) and gt.strip()):
                row["gt_score"] = gt
                sources["score"] += 1
            rows.append(row)
    path = Path(out)
    atomic_write_bytes(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
    log.info("baseline %s: %d prediction(s) -> %s", model.name, len(rows), path)
    return PredictSummary(path, len(rows), split, model.task, dict(data.skipped), dict(sources))


def _records(dataset_dir: str | os.PathLike, split: str | None) -> list[dict[str, Any]]:
    from emollm.dataset.record import read_annotations

    return [r for r in read_annotations(Path(dataset_dir) / "annotations.jsonl") if split is None or r.get("split") == split]


__all__ = ["BaselineTrainResult", "PredictSummary", "load_baseline", "predict", "resolve_device", "run_model",
           "split_metrics", "stage_epochs", "train_baseline"]
