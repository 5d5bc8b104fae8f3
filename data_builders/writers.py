"""Writers: the MERR coarse description (template) and the fine reasoning (``template`` | ``openai`` | ``hf``).

The coarse description joins one clause per cue (``prompts/writers/coarse_description.yaml``):
"This person in the video is …; the person's expression and actions include …; the person's tone is …;
saying: …". A cue that was not produced is absent from the text, never invented.

Reasoning writers get, per clip, the description, the subtitle and the label, and return a paragraph
explaining "why the person feels {label}":

- ``template``: deterministic sentences from ``prompts/writers/template_reason.yaml`` (offline default);
- ``openai``: any OpenAI-compatible endpoint, ``hf``: a local causal LM by path — both through
  :mod:`emollm.llm` (retries with backoff, timeouts, bounded concurrency, content-hashed reply cache so a
  re-run makes no new call), with the MERR prompt ``prompts/writers/merr_reason.yaml``.
A reply that is empty, not prose or longer than ``MAX_REASONING_CHARS`` after the retries, or a call that
keeps failing (HTTP status, timeout, not JSON), leaves the reasoning ``None`` with its cause (the record
gets the flag ``writer_failed`` and ``writer_error``); each such clip is logged as one warning line and
written to ``<out>/writer_failures.jsonl``; nothing is guessed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from emollm import llm
from emollm.config.loader import safe_load_unique, yaml_problem
from emollm.errors import WriterError
from emollm.log import get_logger
from emollm.resources import prompts_dir

log = get_logger(__name__)

#: Per-clip writer failures of a build, one JSON line each ({"id", "cause", ...}), in the build output.
WRITER_FAILURES = "writer_failures.jsonl"


@functools.lru_cache(maxsize=16)
def load_writer_prompt(name_or_path: str) -> dict[str, Any]:
    """``prompts/writers/<name>.yaml`` or a YAML path; adds ``digest`` (of the file's text)."""
    path = Path(name_or_path)
    if not (path.suffix or "/" in name_or_path):
        path = prompts_dir() / "writers" / f"{name_or_path}.yaml"
    try:
        text = path.read_text(encoding="utf-8")
        data = safe_load_unique(text)
    except OSError:
        raise WriterError(f"writer prompt '{name_or_path}' not found ({path})",
                          hint="prompts live in prompts/writers/<name>.yaml; or give a YAML path") from None
    except yaml.YAMLError as exc:
        raise WriterError(f"writer prompt {path}{yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise WriterError(f"writer prompt {path}: expected a mapping")
    data = dict(data)
    data["digest"] = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
    data.setdefault("name", path.stem)
    return data


def prompt_version(data: dict[str, Any]) -> str:
    return f"{data['name']}/{data.get('version', 1)}+{data['digest']}"


# ------------------------------------------------------------------------------------------ coarse


def _clean(text: str | None) -> str | None:
    if text is None:
        return None
    text = " ".join(str(text).split()).strip().rstrip(".;,")
    return text or None


def coarse_description(*, visual: str | None = None, expression: str | None = None, tone: str | None = None,
                       subtitle: str | None = None, template: str = "coarse_description") -> str | None:
    """The MERR coarse description from the cues present; None when there is no cue at all."""
    clauses = load_writer_prompt(template)["clauses"]
    cues = {"visual": _clean(visual), "expression": _clean(expression), "tone": _clean(tone),
            "subtitle": _clean(subtitle)}
    parts = [clauses[k].format(**{k: v}) for k, v in cues.items() if v]
    if not parts:
        return None
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + "."


# ------------------------------------------------------------------------------------------ reasoning


@dataclass
class WriterItem:
    id: str
    label: str
    description: str | None
    subtitle: str | None = None
    expression: str | None = None
    tone: str | None = None


@dataclass
class WriterResult:
    text: str | None
    error: str | None = None
    cached: bool = False


_THINK = re.compile(r"<think>.*?</think>", re.S | re.I)


def reply_text(reply: str | None) -> str:
    """An LLM reply without reasoning-model ``<think>`` blocks and surrounding quotes."""
    return _THINK.sub("", reply or "").strip().strip('"').strip()


#: Longest reasoning paragraph accepted from an LLM writer (MERR's are 300-800 characters); a longer
#: reply is a failure ("reply too long (N chars)"), never stored as a clip's reasoning.
MAX_REASONING_CHARS = 4000


def reasoning_rejection(reply: str | None) -> str | None:
    """Why the reply is not a usable reasoning paragraph (None: it is)."""
    text = reply_text(reply)
    if len(text) > MAX_REASONING_CHARS:
        return f"reply too long ({len(text)} chars, at most {MAX_REASONING_CHARS})"
    words = re.findall(r"[A-Za-z][A-Za-z'-]*", text)
    if len(words) < 8:
        return f"refused by the reasoning filter: {len(words)} word(s), at least 8 needed"
    letters = sum(c.isalpha() or c.isspace() for c in text)
    if letters / max(1, len(text)) < 0.7 or text.lstrip().startswith(("{", "[", "<")):
        return "refused by the reasoning filter: not prose"
    return None


def validate_reasoning(reply: str) -> str | None:
    """The reply as a reasoning paragraph, or None when it is empty, too short, too long or not prose."""
    if reasoning_rejection(reply) is not None:
        return None
    return " ".join(reply_text(reply).split())


class TemplateWriter:
    kind = "template"
    model = "template_reason"

    def __init__(self, prompt: str = "template_reason"):
        self.prompt = load_writer_prompt(prompt)
        self.version = prompt_version(self.prompt)
        self.stats = llm.AskStats()

    def write(self, items: Sequence[WriterItem]) -> list[WriterResult]:
        s = self.prompt["sentences"]
        out = []
        for it in items:
            parts = [s[k].format(**{k: _clean(getattr(it, k))}) for k in ("expression", "tone", "subtitle")
                     if _clean(getattr(it, k))]
            parts.append(s["conclusion"].format(label=it.label))
            out.append(WriterResult(" ".join(parts)))
        return out


class LLMWriter:
    """The MERR reasoning prompt through an :class:`emollm.llm.Asker` (cache, retries, timeouts)."""

    def __init__(self, asker: llm.Asker, prompt: str = "merr_reason", concurrency: int = 4,
                 failures_path: str | Path | None = None):
        self.asker = asker
        self.failures_path = Path(failures_path) if failures_path is not None else None
        self.failures: list[dict[str, Any]] = []  # {"id", "cause"} of every failed clip, this writer's lifetime
        self.kind = asker.backend.kind
        self.model = asker.backend.model
        self.prompt = load_writer_prompt(prompt)
        self.version = prompt_version(self.prompt)
        self.concurrency = concurrency
        self.stats = asker.stats

    def messages(self, it: WriterItem) -> list[dict[str, str]]:
        fill = {"description": it.description or "(no description)", "subtitle": it.subtitle or "(none)",
                "label": it.label}
        return [{"role": "system", "content": self.prompt["system"].strip()},
                {"role": "user", "content": self.prompt["user"].format(**fill).strip()}]

    def write(self, items: Sequence[WriterItem]) -> list[WriterResult]:
        answers = llm.ask_many(self.asker, [self.messages(it) for it in items], validate_reasoning,
                               concurrency=self.concurrency)
        results = []
        for it, a in zip(items, answers, strict=True):
            cause = None if a.valid else failure_cause(a)
            if cause is not None:  # one line per failed clip, and a line in writer_failures.jsonl
                if cause != self.asker.fatal:  # a key / endpoint error was said once already, by the asker
                    log.warning("writer: clip %s: %s", it.id, cause)
                self.failures.append({"id": it.id, "stage": "writer", "backend": self.kind, "model": self.model,
                                      "cause": cause, "cached": a.cached})
            results.append(WriterResult(a.value, cause, a.cached))
        if self.failures_path is not None:
            self._write_failures()
        return results

    def _write_failures(self) -> None:
        from emollm.dataset.io import atomic_write_bytes

        path = self.failures_path
        if not self.failures:  # this run had none: a previous run's file would now be wrong
            path.unlink(missing_ok=True)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = "".join(json.dumps(f, ensure_ascii=False) + "\n" for f in self.failures)
        atomic_write_bytes(path, lines.encode("utf-8"))


def failure_cause(answer: llm.Answer) -> str:
    """Why an LLM writer produced no reasoning: the transport error (HTTP status and body excerpt,
    timeout, not JSON) or what was wrong with the last reply (too long, refused by the filter)."""
    error = answer.error or "invalid reply"
    if answer.reply is not None and error.startswith("no valid answer"):
        return f"{reasoning_rejection(answer.reply) or 'invalid reply'}; {error}"
    return error


def make_writer(cfg: Any, out_dir: str | Path) -> TemplateWriter | LLMWriter | None:
    """A writer from a ``build.writer`` config section (None for ``backend: none``)."""
    if cfg.backend == "none":
        return None
    if cfg.backend == "template":
        return TemplateWriter()
    # every other kind is an LLM backend of emollm.llm's registry (openai, hf, ...)
    backend = llm.make_backend_from(cfg, error_cls=WriterError, what="writer", config_key="build.writer")
    cache = llm.ResponseCache(cfg.cache_dir or Path(out_dir) / "writer_cache")
    asker = llm.Asker(backend, cache, max_retries=cfg.max_retries, backoff_s=cfg.backoff_s,
                      retry_invalid=cfg.retry_invalid)
    return LLMWriter(asker, cfg.prompt, cfg.concurrency, failures_path=Path(out_dir) / WRITER_FAILURES)


__all__ = ["MAX_REASONING_CHARS", "WRITER_FAILURES", "LLMWriter", "TemplateWriter", "WriterItem", "WriterResult", "coarse_description", "load_writer_prompt",
           "failure_cause", "make_writer", "prompt_version", "reasoning_rejection", "validate_reasoning"]
