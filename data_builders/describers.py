"""Visual objective describers: the peak frame -> "a young woman with raised brows, looking left, ...".

MERR's MiniGPT-v2 step. The reply fills the coarse description's first clause ("This person in the video
is {visual}"); it describes what the person looks like and does, never an emotion
(``prompts/writers/visual_description.yaml``).

Backends (``build.describer.backend``; the vision backends of :func:`emollm.llm.make_backend`, ``images=True``):

- ``none`` (default): no visual description — ``visual_description`` stays null and the clause is absent;
- ``openai``: any OpenAI-compatible ``/chat/completions`` endpoint with vision: the user message's content
  is ``[{"type": "text", ...}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}]``;
- ``hf``: a local image-text-to-text model by path (``AutoProcessor`` + ``AutoModelForImageTextToText``,
  the processor's chat template with the image and the prompt, greedy decoding).

Both go through :mod:`emollm.llm` (timeouts, retries with backoff, bounded concurrency, a content-hashed
reply cache keyed by the prompt *and* the PNG bytes, so a re-run makes no new call). The describer runs at
merge time from the part files (one frame decoded per clip), so a changed describer config recomputes no
AU extraction. An empty / garbage reply after the retries, a timeout, or an unreadable peak frame leaves
``visual_description`` null with the flag ``describer_failed`` (and ``describer_error``); nothing is guessed.
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data_builders.writers import WriterResult, load_writer_prompt, prompt_version, reply_text
from emollm import llm
from emollm.errors import WriterError
from emollm.llm import HFVisionBackend  # noqa: F401 - its home is emollm.llm; kept importable from here
from emollm.log import get_logger

log = get_logger(__name__)


# A description, or the reason there is none, and whether it came from the cache: a writer's result.
DescriberResult = WriterResult
_LEAD = re.compile(r"^(?:this|the) person (?:in the (?:video|image|picture) )?is\s+", re.I)


def validate_description(reply: str) -> str | None:
    """The reply as one objective clause, or None when it is empty, too short or not prose."""
    text = reply_text(reply)
    if not text or text.lstrip().startswith(("{", "[", "<")):
        return None
    text = " ".join(text.split())
    text = _LEAD.sub("", text).rstrip(".;, ")
    words = re.findall(r"[A-Za-z][A-Za-z'-]*", text)
    if len(words) < 3:
        return None
    letters = sum(c.isalpha() or c.isspace() for c in text)
    if letters / max(1, len(text)) < 0.7:
        return None
    first = text.split()[0]
    return text if len(first) > 1 and first.isupper() else text[0].lower() + text[1:]  # continues "... is"


def encode_png(image: np.ndarray, max_side: int | None = None) -> bytes:
    """An RGB uint8 (H, W, 3) frame as PNG bytes, downscaled to ``max_side`` (deterministic)."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), "RGB")
    if max_side and max(img.size) > max_side:
        scale = max_side / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


class VisualDescriber:
    """The visual-description prompt with one image through an :class:`emollm.llm.Asker`."""

    def __init__(self, asker: llm.Asker, prompt: str = "visual_description", concurrency: int = 4,
                 image_max_side: int | None = 512):
        self.asker = asker
        self.kind = asker.backend.kind
        self.model = asker.backend.model
        self.prompt = load_writer_prompt(prompt)
        self.version = prompt_version(self.prompt)
        self.concurrency = concurrency
        self.image_max_side = image_max_side
        self.stats = asker.stats

    def messages(self, png: bytes) -> list[dict[str, Any]]:
        url = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        msgs: list[dict[str, Any]] = []
        if self.prompt.get("system"):
            msgs.append({"role": "system", "content": self.prompt["system"].strip()})
        msgs.append({"role": "user", "content": [{"type": "text", "text": self.prompt["user"].strip()},
                                                 {"type": "image_url", "image_url": {"url": url}}]})
        return msgs

    def describe(self, images: Sequence[np.ndarray]) -> list[DescriberResult]:
        prompts = [self.messages(encode_png(im, self.image_max_side)) for im in images]
        answers = llm.ask_many(self.asker, prompts, validate_description, concurrency=self.concurrency)
        return [DescriberResult(a.value, None if a.valid else (a.error or "invalid reply"), a.cached) for a in answers]


def make_describer(cfg: Any, out_dir: str | Path) -> VisualDescriber | None:
    """A describer from a ``build.describer`` config section (None for ``backend: none``)."""
    if cfg.backend == "none":
        return None
    if cfg.backend not in llm.backend_kinds(images=True):  # before any model is loaded or prompt read
        raise WriterError(f"unknown describer backend '{cfg.backend}'",
                          hint=f"one of none, {', '.join(llm.backend_kinds(images=True))}")
    load_writer_prompt(cfg.prompt)  # a missing prompt stops the run before any call
    cache = llm.ResponseCache(cfg.cache_dir or Path(out_dir) / "describer_cache")
    backend = llm.make_backend_from(cfg, images=True, error_cls=WriterError, what="describer",
                                    config_key="build.describer")
    asker = llm.Asker(backend, cache, max_retries=cfg.max_retries, backoff_s=cfg.backoff_s,
                      retry_invalid=cfg.retry_invalid)
    return VisualDescriber(asker, cfg.prompt, cfg.concurrency, cfg.image_max_side)


def peak_frame(rec: dict[str, Any], root: Path, max_side: int | None = None) -> np.ndarray:
    """The record's peak frame (RGB uint8) from ``media.path`` (relative to the dataset root)."""
    from emollm.media import read_frames

    index = int(rec["peak_frame"]["index"])
    return read_frames(root / rec["media"]["path"], [index], max_side=max_side).array[0]


def describe_records(describer: VisualDescriber, records: list[dict[str, Any]], root: Path) -> dict[str, Any]:
    """Fill ``visual_description`` (+ provenance) on records with a peak frame; flag the failures."""
    todo, images, failed = [], [], 0

    def fail(rec: dict[str, Any], why: str) -> None:
        rec["flags"] = sorted(set(rec["flags"]) | {"describer_failed"})
        rec["describer_error"] = why

    for rec in records:
        if not rec.get("has_video") or (rec.get("peak_frame") or {}).get("index") is None:
            continue
        try:
            images.append(peak_frame(rec, root, describer.image_max_side))
        except Exception as exc:  # noqa: BLE001 - an unreadable frame is a flagged record, the run goes on
            failed += 1
            fail(rec, f"peak frame unreadable: {type(exc).__name__}: {exc}")
            continue
        todo.append(rec)
    for rec, res in zip(todo, describer.describe(images) if images else [], strict=True):
        if res.text:
            rec["visual_description"] = res.text
            rec["provenance"]["visual_description"] = {"source": f"describer:{describer.kind}", "model": describer.model,
                                                       "version": describer.version,
                                                       "frame": rec["peak_frame"]["index"]}  # fmt: skip
        else:
            failed += 1
            fail(rec, res.error or "invalid reply")
    if failed:
        log.warning("describer: %d clip(s) got no visual description (flag describer_failed)", failed)
    return {"describer": {"backend": describer.kind, "model": describer.model, "version": describer.version},
            "describer_stats": describer.stats.as_dict(), "describer_failed": failed,
            "visual_descriptions": sum(1 for r in todo if r.get("visual_description"))}


__all__ = ["DescriberResult", "HFVisionBackend", "VisualDescriber", "describe_records", "encode_png",
           "make_describer", "peak_frame", "validate_description"]
