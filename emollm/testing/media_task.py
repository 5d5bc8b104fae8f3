"""A task whose label only the media carry: the proof that a trained model reads its media tokens.

>>> task = write_media_task("work/", clips=160, n_test=40)
>>> result = run_media_task("work/", backbone="tiny", steps=120)   # train.py -> emollm predict -> emollm evaluate
>>> result["uar_with_media"], result["uar_media_zeroed"], result["chance"]

**The data.** ``clips`` clip records in the built-dataset format (``annotations.jsonl``, schema 1, and a
per-frame AU side file ``aus/<id>.npz`` per clip, exactly what ``emollm build`` writes and what the
learned ``au`` encoder reads). Each clip's label is drawn first, balanced over :data:`LABELS`; then
its AU sequence is drawn from that class: the class's FACS prototype (:data:`PATTERNS`, e.g. happy =
AU06 cheek raiser + AU12 lip corner puller) at a random strength, rising to and falling from a
random apex frame, plus what every class shares (speech-like AU25/AU26 movement, blinks, a random
low-intensity distractor AU, Gaussian noise). Presence is intensity >= 1 (the builder's
``presence_threshold``). The text is the same for every clip: one neutral subtitle
(:data:`SUBTITLE`), and the instruction is drawn from the shipped ``emotion`` pool by clip id, which
is independent of the label. Clip ids are ``clip_0000``... in random order. So the label is
recoverable from the AU tokens and from nothing else in the prompt.

**The splits.** ``train`` and ``test`` (held out: different clips, balanced per class). A second
dataset, ``dataset_zeroed``, holds the same test clips with every AU intensity and presence set to
zero (the face frames stay marked, so the AU encoder runs and sees zeros: the media are zeroed, not
dropped).

**The run** (:func:`run_media_task`), as a user runs it: ``train.py --config CONFIG`` (a config with
the ``au`` encoder alone, :func:`write_config`), ``emollm predict --model RUN DATASET --split test``
on both datasets, ``emollm evaluate --predictions P --out DIR`` on both, and the UARs read back from
the ``metrics.json`` files ``evaluate`` writes. Chance UAR is ``1 / len(LABELS)``: a model that
cannot see the label predicts independently of it, and its expected recall per class is the share of
answers that name that class, whose mean over the classes is at most ``1 / len(LABELS)``.

``media_informative=False`` draws each clip's AUs from a class chosen independently of its label
(a control: then nothing in a clip carries its label, and the trained model must sit at chance).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emollm.errors import EmollmError

#: The classes (MERR label names; the prompt's instruction lists all nine of MERR's).
LABELS: tuple[str, ...] = ("happy", "sad", "angry", "surprise")
#: Each class's prototype: AU -> apex intensity (0-5), after the FACS / EMFACS prototypes.
PATTERNS: dict[str, dict[str, float]] = {
    "happy": {"AU06": 3.0, "AU12": 3.5},  # cheek raiser, lip corner puller
    "sad": {"AU01": 2.5, "AU04": 2.0, "AU15": 3.0},  # inner brow raiser, brow lowerer, lip corner depressor
    "angry": {"AU04": 3.5, "AU05": 2.0, "AU07": 2.5, "AU23": 3.0},  # brow lowerer, upper lid raiser, lid / lip tighteners
    "surprise": {"AU01": 3.0, "AU02": 3.0, "AU05": 2.5, "AU26": 3.0},  # brow raisers, upper lid raiser, jaw drop
}
#: The one subtitle of every clip: the text carries no label.
SUBTITLE = "I heard about it this morning."
#: The splits the task writes.
TRAIN_SPLIT, TEST_SPLIT = "train", "test"
TASK_VERSION = "1"


@dataclass
class MediaTask:
    """What :func:`write_media_task` wrote."""

    root: Path
    dataset: Path  # annotations.jsonl + aus/: the train and test splits
    zeroed: Path  # the test clips, every AU input zero
    n_train: int
    n_test: int
    labels: tuple[str, ...]

    @property
    def chance(self) -> float:
        return 1.0 / len(self.labels)


# ------------------------------------------------------------------------------------------ the data
def _draw_aus(rng: np.random.Generator, label: str, frames: int, noise: float) -> np.ndarray:
    """``(frames, len(MERR_AUS))`` intensities on 0-5 for one clip of class ``label``."""
    from emollm.dataset.aus import AU_INTENSITY_MAX, MERR_AUS

    index = {au: i for i, au in enumerate(MERR_AUS)}
    t = np.arange(frames, dtype=np.float64)
    apex = rng.uniform(0.25, 0.75) * (frames - 1)
    envelope = np.exp(-0.5 * ((t - apex) / max(frames / 4.0, 1.0)) ** 2)  # onset, apex, offset
    strength = rng.uniform(0.6, 1.0)
    intensity = np.zeros((frames, len(MERR_AUS)))
    for au, value in PATTERNS[label].items():
        intensity[:, index[au]] += strength * value * envelope
    # shared by every class: talking (lips part, jaw), blinks, one distractor AU at low intensity
    intensity[:, index["AU25"]] += rng.uniform(0.0, 2.0, frames)
    intensity[:, index["AU26"]] += rng.uniform(0.0, 1.0, frames)
    intensity[rng.random(frames) < 0.15, index["AU45"]] += 3.0
    intensity[:, rng.integers(len(MERR_AUS))] += rng.uniform(0.0, 1.5) * envelope
    intensity += noise * rng.standard_normal(intensity.shape)
    return np.clip(intensity, 0.0, AU_INTENSITY_MAX).astype(np.float32)


def _record(clip_id: str, label: str, split: str, intensity: np.ndarray, fps: float) -> dict[str, Any]:
    from emollm.dataset.aus import MERR_AUS

    frames = intensity.shape[0]
    peak = int(intensity.sum(axis=1).argmax())
    at_peak = {au: round(float(v), 3) for au, v in zip(MERR_AUS, intensity[peak], strict=True)}
    source = {"source": "emollm.testing.media_task", "version": TASK_VERSION}
    return {
        "schema_version": 1, "id": clip_id, "media": {"path": f"clips/{clip_id}.mp4", "kind": "video"},
        "duration_s": round(frames / fps, 3), "fps": fps, "num_frames": frames, "has_video": True,
        "has_audio": False, "aus_file": f"aus/{clip_id}.npz", "au_source": "synthetic",
        "frames_analysed": frames, "face_frames": frames,
        "peak_frame": {"index": peak, "timestamp_s": round(peak / fps, 3), "method": "intensity_sum", "aus": at_peak},
        "aus_at_peak": at_peak, "aus_present_at_peak": [au for au, v in at_peak.items() if v >= 1.0],
        "pseudo_label": None, "pseudo_label_confidence": None, "label": label, "subtitle": SUBTITLE,
        "split": split, "flags": ["synthetic"], "provenance": {"label": source, "aus_file": source, "subtitle": source},
        "review": {"state": "accepted", "by": "synthetic", "note": None},
    }  # fmt: skip


def _write_dataset(root: Path, rows: Sequence[tuple[str, str, str, np.ndarray]], fps: float) -> None:
    from data_builders.au import AUSeries, save_aus

    root.mkdir(parents=True, exist_ok=True)
    records = []
    for clip_id, label, split, intensity in rows:
        frames = intensity.shape[0]
        series = AUSeries(intensity=intensity, presence=(intensity >= 1.0).astype(np.uint8),
                          frame_indices=np.arange(frames), timestamps_s=np.arange(frames) / fps,
                          face=np.ones(frames, dtype=bool), source="synthetic")  # fmt: skip
        save_aus(series, root / "aus" / f"{clip_id}.npz")
        records.append(_record(clip_id, label, split, intensity, fps))
    (root / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def write_media_task(root: str | os.PathLike, *, clips: int = 160, n_test: int | None = None, frames: int = 8,
                     noise: float = 0.3, seed: int = 0, media_informative: bool = True,
                     labels: Sequence[str] = LABELS) -> MediaTask:
    """Write ``root/dataset`` (splits ``train`` / ``test``) and ``root/dataset_zeroed`` (the test clips,
    AUs zeroed). ``clips`` and ``n_test`` (default a quarter) are rounded down to whole classes."""
    labels = tuple(labels)
    unknown = [lab for lab in labels if lab not in PATTERNS]
    if unknown or len(labels) < 2:
        raise EmollmError(f"media task labels must be at least two of {list(PATTERNS)}, got {list(labels)}")
    k = len(labels)
    per_class = clips // k
    test_per_class = (n_test if n_test is not None else clips // 4) // k
    if test_per_class < 1 or per_class - test_per_class < 1:
        raise EmollmError(f"media task: {clips} clips with {n_test} for test leave a split without a clip of "
                          f"each of the {k} classes", hint="give more clips")
    rng = np.random.default_rng(seed)
    # ids in random order: nothing about a clip's label or split is in its id
    order = rng.permutation(per_class * k)
    rows, zeroed = [], []
    for n, slot in enumerate(order):
        label = labels[slot % k]
        split = TEST_SPLIT if slot // k < test_per_class else TRAIN_SPLIT
        drawn_from = label if media_informative else labels[int(rng.integers(k))]
        clip_id = f"clip_{n:04d}"
        intensity = _draw_aus(rng, drawn_from, frames, noise)
        rows.append((clip_id, label, split, intensity))
        if split == TEST_SPLIT:
            zeroed.append((clip_id, label, split, np.zeros_like(intensity)))
    root = Path(root)
    fps = 5.0
    _write_dataset(root / "dataset", rows, fps)
    _write_dataset(root / "dataset_zeroed", zeroed, fps)
    return MediaTask(root, root / "dataset", root / "dataset_zeroed", n_train=(per_class - test_per_class) * k,
                     n_test=test_per_class * k, labels=labels)


# ------------------------------------------------------------------------------------------ the run
#: Training recipes. ``real``: LoRA for a real ~100M-1B chat model (SmolLM2-135M-Instruct here):
#: r 16 on every attention and MLP projection (the family default), lr 5e-4 with 10 % warmup + cosine,
#: the AU encoder and projector trained fully at 1e-3; 50 steps of 4 (1.25 epochs of 160 clips) take the
#: loss to ~0.001. ``tiny``: the random-weight tiny LLaMA of emollm.testing.tiny. Its frozen output layer
#: is random with small weights, so its logits stay nearly flat (the loss ends ~5.7 of ln 1000 = 6.9) and
#: only the argmax moves; with 4 AU tokens the media's share of its near-uniform attention was too small
#: (2 seeds of 4 collapsed to 2-3 labels), with 16 every seed tried reached UAR >= 0.9 at 100 steps.
RECIPES: dict[str, dict[str, Any]] = {
    "real": {"steps": 50, "batch_size": 4, "lr": 5e-4, "projector_lr": 1e-3, "warmup_ratio": 0.1,
             "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05},
    "tiny": {"steps": 150, "batch_size": 8, "lr": 3e-3, "projector_lr": 3e-3, "warmup_ratio": 0.05,
             "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "au_options": {"num_tokens": 16}},
}  # fmt: skip
AU_ENCODER_OPTIONS = {"num_tokens": 4, "hidden_size": 64, "num_heads": 4, "depth": 1}


def resolve_backbone(backbone: str | os.PathLike | None) -> tuple[str, str]:
    """``(path, recipe)``: ``tiny`` is the tiny local LLaMA (built once), None / ``smollm2`` the real
    SmolLM2-135M-Instruct (``emollm.real_models.model_dir``), anything else a checkpoint path or hub id."""
    if backbone is not None and str(backbone) == "tiny":
        from emollm.testing.tiny import build_tiny_models

        return str(build_tiny_models(names=["llama2"])["llama2"]), "tiny"
    if backbone is None or str(backbone) in ("smollm2", "smollm2-135m-instruct"):
        try:
            from emollm.real_models import model_dir
        except ImportError as err:
            raise EmollmError(f"the real SmolLM2 backbone needs emollm.real_models ({err})",
                              hint="pass --backbone PATH (an HF folder) or --backbone tiny") from None
        return str(model_dir("smollm2-135m-instruct")), "real"
    return str(backbone), "real"


def write_config(path: str | os.PathLike, task: MediaTask, backbone: str, run_dir: str | os.PathLike, *,
                 recipe: Mapping[str, Any], steps: int, seed: int = 0, template: str | None = None) -> Path:
    """A run config with the learned ``au`` encoder alone (extends the shipped ``base``)."""
    import yaml

    config = {
        "extends": "base",
        "run": {"name": "learns_from_media", "output_dir": str(run_dir), "seed": seed},
        "data": {"dataset_dir": str(task.dataset), "label_set": "merr", "train_split": TRAIN_SPLIT,
                 "eval_split": TEST_SPLIT},
        "model": {
            "backbone": {"name_or_path": backbone, "torch_dtype": "float32", "attn_implementation": "sdpa",
                         "template": template},
            "encoders": {"au": {"options": {**AU_ENCODER_OPTIONS, **recipe.get("au_options", {})}}},
        },
        "train": {
            "tasks": ["emotion"], "max_steps": steps, "per_device_batch_size": recipe["batch_size"],
            "lr": recipe["lr"], "projector_lr": recipe["projector_lr"], "warmup_ratio": recipe["warmup_ratio"],
            "lr_scheduler": "cosine", "weight_decay": 0.0, "max_length": 256, "logging_steps": 10,
            "save_steps": steps + 1,  # no intermediate checkpoint: the final run dir is all we need
            "lora": {"r": recipe["lora_r"], "alpha": recipe["lora_alpha"], "dropout": recipe["lora_dropout"],
                     "target_modules": recipe.get("lora_targets")},  # None: every attention and MLP projection
        },
        "predict": {"max_new_tokens": 8, "temperature": 0.0, "batch_size": 16},
        "evaluate": {"parse": "last_word", "fallback_label": "neutral"},
    }  # fmt: skip
    path = Path(path)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def _entry(argv: Sequence[str], *, subprocess_run: bool, repo: Path | None) -> None:
    """One user command: ``train.py ...`` or ``emollm ...``, in a child process or in this one."""
    argv = list(argv)
    is_train = argv[0] == "train.py"
    if subprocess_run:
        if is_train and repo is not None and (repo / "train.py").is_file():
            cmd = [sys.executable, str(repo / "train.py"), *argv[1:]]
        else:  # `emollm train` is the same entry as train.py
            cmd = [sys.executable, "-m", "emollm.cli.main", *(["train"] if is_train else []), *argv[1:]]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise EmollmError(f"`{' '.join(argv)}` failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        return
    from emollm.cli import main as cli

    rc = cli.main(["--quiet", *(["train"] if is_train else []), *argv[1:]])
    if rc != 0:
        raise EmollmError(f"`{' '.join(argv)}` failed (exit {rc})")


def _read_metrics(eval_dir: Path) -> dict[str, Any]:
    metrics = json.loads((eval_dir / "metrics.json").read_text(encoding="utf-8"))
    cls = metrics["classification"]
    columns, counts = cls["confusion"]["columns"], np.asarray(cls["confusion"]["counts"])
    predicted = {lab: int(c) for lab, c in zip(columns, counts.sum(axis=0), strict=True) if c}
    return {"uar": cls["uar"], "war": cls["war"], "invalid_rate": metrics["parsing"]["invalid_rate"],
            "predicted": predicted}


def run_media_task(work: str | os.PathLike, *, backbone: str | os.PathLike | None = None, steps: int | None = None,
                   clips: int = 160, n_test: int | None = None, seed: int = 0, media_informative: bool = True,
                   subprocess_run: bool = True, template: str | None = None,
                   recipe: Mapping[str, Any] | None = None,
                   report: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write the task under ``work``, train on its train split with ``train.py``, predict its test split
    with and without media (``emollm predict``) and score both (``emollm evaluate``).

    ``subprocess_run``: each command in its own process, as a user runs it (else in this process, through
    the same CLI entry). Returns the figures (``uar_with_media``, ``uar_media_zeroed``, ``chance``, WARs,
    the labels predicted, per-stage seconds, paths)."""
    report = report or (lambda line: None)
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    repo = Path(__file__).resolve().parents[2]
    stages: dict[str, float] = {}

    t0 = time.perf_counter()
    path, kind = resolve_backbone(backbone)
    recipe = {**RECIPES[kind], **(recipe or {})}
    steps = int(steps or recipe["steps"])
    task = write_media_task(work / "data", clips=clips, n_test=n_test, seed=seed, media_informative=media_informative)
    run_dir = work / "run"
    config = write_config(work / "config.yaml", task, path, run_dir, recipe=recipe, steps=steps, seed=seed,
                          template=template)
    stages["data_s"] = time.perf_counter() - t0
    report(f"data: {task.n_train} train / {task.n_test} test clips of {list(task.labels)} -> {task.root} "
           f"({stages['data_s']:.1f} s)")

    t0 = time.perf_counter()
    _entry(["train.py", "--config", str(config)], subprocess_run=subprocess_run, repo=repo)
    stages["train_s"] = time.perf_counter() - t0
    log_rows = [json.loads(line) for line in (run_dir / "logs" / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log_rows if r.get("kind", "train") == "train" and "loss" in r]
    report(f"train: {steps} steps, batch {recipe['batch_size']}, loss {losses[0]:.3f} -> {losses[-1]:.3f} "
           f"({stages['train_s']:.1f} s, {stages['train_s'] / steps:.2f} s/step)")

    results = {}
    for name, dataset in (("with_media", task.dataset), ("media_zeroed", task.zeroed)):
        preds, eval_dir = work / f"predictions_{name}.jsonl", work / f"eval_{name}"
        preds.unlink(missing_ok=True)  # predict appends (resumable): start clean
        t0 = time.perf_counter()
        _entry(["emollm", "predict", "--model", str(run_dir), str(dataset), "--split", TEST_SPLIT,
                "--task", "emotion", "--out", str(preds)], subprocess_run=subprocess_run, repo=repo)
        stages[f"predict_{name}_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        _entry(["emollm", "evaluate", "--predictions", str(preds), "--out", str(eval_dir), "--config", str(config),
                "--no-plots"], subprocess_run=subprocess_run, repo=repo)
        stages[f"evaluate_{name}_s"] = time.perf_counter() - t0
        results[name] = _read_metrics(eval_dir)
        report(f"{name}: UAR {results[name]['uar']:.3f}  WAR {results[name]['war']:.3f}  predicted "
               f"{results[name]['predicted']}  (predict {stages[f'predict_{name}_s']:.1f} s, "
               f"evaluate {stages[f'evaluate_{name}_s']:.1f} s)")

    return {
        "uar_with_media": round(results["with_media"]["uar"], 4),
        "uar_media_zeroed": round(results["media_zeroed"]["uar"], 4),
        "chance": round(task.chance, 4),
        "war_with_media": round(results["with_media"]["war"], 4),
        "war_media_zeroed": round(results["media_zeroed"]["war"], 4),
        "predicted_with_media": results["with_media"]["predicted"],
        "predicted_media_zeroed": results["media_zeroed"]["predicted"],
        "invalid_rate_with_media": results["with_media"]["invalid_rate"],
        "invalid_rate_media_zeroed": results["media_zeroed"]["invalid_rate"],
        "backbone": path, "recipe": kind, "steps": steps, "batch_size": recipe["batch_size"],
        "n_train": task.n_train, "n_test": task.n_test, "media_informative": media_informative,
        "final_loss": round(losses[-1], 4) if losses else None,
        "seconds": {k: round(v, 1) for k, v in stages.items()}, "run_dir": str(run_dir),
    }  # fmt: skip


__all__ = ["LABELS", "PATTERNS", "RECIPES", "SUBTITLE", "MediaTask", "resolve_backbone", "run_media_task",
           "write_config", "write_media_task"]
