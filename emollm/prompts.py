"""Instruction pools (``prompts/instructions/<name>.txt``) and the Emotion-LLaMA prompt preset.

A pool file holds one instruction per line; blank lines and lines starting with ``#`` are ignored.
:func:`choose_instruction` picks one per sample id, the same one on every run and machine.

Emotion-LLaMA's user text is
``<video><VideoHere></video> <feature><FeatureHere></feature> The person in video says: {subtitle}. [{task}] {instruction}``.
In emollm's placeholder form (docs/templates.md):

- the global visual modality (``video``) is the placeholder ``<video>``; its span carries the
  ``<video>`` / ``</video>`` wrapper as prefix/suffix (:func:`emotion_llama_spans`), so a dropped
  video modality takes its wrapper with it, and the literal ``<video>`` never collides with the
  placeholder;
- the other modalities (``face``, ``temporal``, ``audio``, ...) are placeholders side by side inside
  one literal ``<feature>…</feature>`` wrapper (``feature`` is not a modality, so it stays text).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

from emollm.errors import EmollmError
from emollm.processing import ModalitySpan, escape_placeholders
from emollm.resources import prompts_dir

EMOTION_LLAMA_MODALITIES = ("video", "face", "temporal", "audio")


def instructions_dir() -> Path:
    return prompts_dir() / "instructions"


def list_instruction_pools() -> list[str]:
    folder = instructions_dir()
    return sorted(p.stem for p in folder.glob("*.txt")) if folder.is_dir() else []


def load_instruction_pool(name_or_path: str | Path) -> list[str]:
    """A pool by name (``emotion``, ``reason``: ``prompts/instructions/<name>.txt``) or by path."""
    text = str(name_or_path)
    path = Path(text)
    if not (path.suffix or "/" in text or "\\" in text):
        path = instructions_dir() / f"{text}.txt"
    if not path.is_file():
        raise EmollmError(
            f"instruction pool {text!r} not found ({path})",
            hint=f"available pools: {', '.join(list_instruction_pools()) or 'none'}; or give a file path",
        )
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    pool = [line for line in lines if line and not line.startswith("#")]
    if not pool:
        raise EmollmError(f"instruction pool {path} holds no instruction (only blank or # lines)")
    return pool


def configured_instruction(task: str, index: int) -> str:
    """Entry ``index`` (``predict.instruction``) of the task's pool: the one prompt every clip is asked
    with at prediction time (``infer``, ``predict``, evaluation during training), chosen by the config,
    never by a clip's name or id."""
    from emollm.errors import ConfigError

    pool = load_instruction_pool(task)
    if not 0 <= index < len(pool):
        raise ConfigError(f"predict.instruction={index}, but the '{task}' instruction pool holds {len(pool)} entries",
                          hint=f"choose 0..{len(pool) - 1} (prompts/instructions/{task}.txt, one per line)")
    return pool[index]


def choose_instruction(pool: Sequence[str], sample_id: str, seed: int = 0) -> str:
    """One instruction of the pool for this sample: deterministic in (seed, sample id)."""
    if not pool:
        raise EmollmError("empty instruction pool")
    digest = hashlib.sha256(f"{seed}:{sample_id}".encode()).digest()
    return pool[int.from_bytes(digest[:8], "big") % len(pool)]


def build_emotion_llama_prompt(
    subtitle: str | None,
    task: str,
    instruction: str,
    modalities: Sequence[str] = EMOTION_LLAMA_MODALITIES,
    video_modality: str = "video",
) -> str:
    """Emotion-LLaMA's user text, character for character, with emollm placeholders, e.g.
    ``<video> <feature><face><temporal><audio><video_cls></feature> The person in video says: Hi.  [emotion] Please ... ``.

    Its dataset writes ``"<video><VideoHere></video> <feature><FeatureHere></feature> {} [{}] {} "``
    with ``"The person in video says: {subtitle}. "`` as the first field: a period always follows
    the subtitle, two spaces precede the task tag and one space ends the text (templates that strip
    the user text, such as ``llama2``, drop it; ``emotion_llama`` keeps it, as MiniGPT-v2 did).

    ``modalities``: the placeholders to include, in order; ``video_modality`` goes first on its own,
    the others inside ``<feature>…</feature>`` (left out when there are none); a span's tail
    placeholder (``video_cls``) is listed last. An empty subtitle leaves the field empty (Emotion-LLaMA's
    clips always had one).
    """
    head = []
    if video_modality in modalities:
        head.append(f"<{video_modality}>")
    features = [m for m in modalities if m != video_modality]
    if features:
        head.append("<feature>" + "".join(f"<{m}>" for m in features) + "</feature>")
    subtitle = (subtitle or "").strip()
    said = f"The person in video says: {subtitle}. " if subtitle else ""
    return f"{' '.join(head)} {said} [{task}] {instruction.strip()} ".lstrip()


def emotion_llama_spans(num_tokens: Mapping[str, int], video_modality: str = "video") -> dict[str, ModalitySpan]:
    """Spans for the preset: ``video`` wrapped in ``<video>…</video>``, the others bare."""
    return {
        name: ModalitySpan(name, count, *(("<video>", "</video>") if name == video_modality else ("", "")))
        for name, count in num_tokens.items()
    }


def emotion_llama_sample(
    sample_id: str,
    task: str,
    subtitle: str | None,
    target: str | None = None,
    label: str | None = None,
    pool: str | Sequence[str] | None = None,
    modalities: Sequence[str] = EMOTION_LLAMA_MODALITIES,
    seed: int = 0,
) -> dict:
    """An instruction sample in the preset's form; the instruction comes from the pool named like
    the task (``emotion``, ``reason``) unless ``pool`` names or holds another. ``<word>`` in the
    subtitle and the target is escaped (``\\<word>``): clip text never adds a media slot."""
    instructions = load_instruction_pool(pool or task) if pool is None or isinstance(pool, str) else list(pool)
    instruction = choose_instruction(instructions, sample_id, seed)
    # the subtitle and the target are clip content: a "<video>" in them is text, never a media slot
    # (the pool's instruction is the user's own prompt text and keeps its placeholders)
    subtitle = escape_placeholders(subtitle) if subtitle else subtitle
    sample = {
        "id": sample_id,
        "task": task,
        "messages": [{"role": "user", "content": build_emotion_llama_prompt(subtitle, task, instruction, modalities)}],
    }
    if target is not None:
        sample["target"] = escape_placeholders(str(target))
    if label is not None:
        sample["label"] = label
    return sample
