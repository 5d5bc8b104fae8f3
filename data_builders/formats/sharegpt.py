"""Export to LLaMA-Factory's ShareGPT format (multimodal: ``videos`` / ``audios`` columns).

One JSON file per task (``emotion``, ``reason``) in ``OUT``: a list of
``{"id", "conversations": [{"from": "human", "value": "<video><audio>…"}, {"from": "gpt", "value": target}],
"videos": [path], "audios": [path], "label", "split"}``. The human turn is Emotion-LLaMA's prompt
(subtitle sentence, ``[task]`` tag and the instruction chosen from ``prompts/instructions/<task>.txt``
by id and ``run.seed``, as in ``instructions/<task>.jsonl``) with LLaMA-Factory's ``<video><audio>``
placeholders in front instead of emollm's own. The audio is read from the video file itself (LLaMA-Factory
decodes the audio track of the path given), so ``audios`` repeats the media path; records without video or
audio drop that placeholder and column entry. Paths are absolute unless ``relative_to`` is given (e.g.
LLaMA-Factory's ``media_dir``). ``dataset_info.json`` beside them registers ``emollm_<task>`` with the
column mapping.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from data_builders.instructions import TASKS, record_label
from emollm.dataset.io import atomic_write_text
from emollm.dataset.record import read_annotations
from emollm.paths import ensure_folder
from emollm.prompts import build_emotion_llama_prompt, choose_instruction, load_instruction_pool


def _seed(dataset_dir: Path) -> int:
    cfg = dataset_dir / "config.yaml"
    if not cfg.is_file():
        return 0
    import yaml

    return int(((yaml.safe_load(cfg.read_text(encoding="utf-8")) or {}).get("run") or {}).get("seed", 0) or 0)


def sharegpt_sample(rec: dict[str, Any], task: str, target: str, media_path: str, seed: int = 0) -> dict[str, Any]:
    instruction = choose_instruction(load_instruction_pool(task), rec["id"], seed)
    text = build_emotion_llama_prompt(rec.get("subtitle"), task, instruction, modalities=())
    video, audio = rec.get("has_video", True), rec.get("has_audio", True)
    placeholders = ("<video>" if video else "") + ("<audio>" if audio else "")
    return {
        "id": rec["id"],
        "conversations": [{"from": "human", "value": placeholders + text}, {"from": "gpt", "value": target}],
        "videos": [media_path] if video else [],
        "audios": [media_path] if audio else [],
        "label": record_label(rec),
        "split": rec.get("split"),
    }


def export_sharegpt(dataset_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
                    relative_to: str | os.PathLike[str] | None = None, tasks: tuple[str, ...] = TASKS) -> dict[str, int]:  # fmt: skip
    """``OUT/emollm_<task>.json`` per task + ``OUT/dataset_info.json``; counts per task."""
    dataset_dir, out = Path(dataset_dir).resolve(), Path(out_dir)
    records = read_annotations(dataset_dir / "annotations.jsonl")
    seed = _seed(dataset_dir)
    rows: dict[str, list[dict[str, Any]]] = {t: [] for t in tasks}
    for rec in records:
        media = (dataset_dir / rec["media"]["path"]).resolve()
        path = os.path.relpath(media, relative_to).replace(os.sep, "/") if relative_to else str(media)
        label = record_label(rec)
        if not label:
            continue
        if "emotion" in rows:
            rows["emotion"].append(sharegpt_sample(rec, "emotion", label, path, seed))
        if "reason" in rows and rec.get("granularity") == "fine" and rec.get("reasoning"):
            rows["reason"].append(sharegpt_sample(rec, "reason", rec["reasoning"], path, seed))
    ensure_folder(out, "ShareGPT export folder")
    info = {}
    for task, samples in rows.items():
        atomic_write_text(out / f"emollm_{task}.json", json.dumps(samples, indent=2, ensure_ascii=False) + "\n")
        info[f"emollm_{task}"] = {"file_name": f"emollm_{task}.json", "formatting": "sharegpt",
                                  "columns": {"messages": "conversations", "videos": "videos", "audios": "audios"},
                                  "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human",
                                           "assistant_tag": "gpt"}}  # fmt: skip
    atomic_write_text(out / "dataset_info.json", json.dumps(info, indent=2) + "\n")
    return {t: len(v) for t, v in rows.items()}


__all__ = ["export_sharegpt", "sharegpt_sample"]
