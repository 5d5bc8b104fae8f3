"""Judge backends for EMER scoring, a content-hashed reply cache, and retries with backoff.

The client itself (backends, cache, retry/ask logic) lives in :mod:`emollm.llm`, shared with the
dataset builder's writers; this module keeps the judge's names and its config wiring:

- :class:`OpenAIBackend`: any OpenAI-compatible ``/chat/completions`` endpoint (stdlib ``urllib``),
  temperature 0, the key read from the environment variable the config names.
- :class:`HFBackend`: a local HF causal LM by path, greedy decoding (temperature 0).
- :class:`Judge`: asks a backend with a validator. Cached replies (``sha256(backend, model, prompt)``, one
  JSON file each, written atomically) are served without a call; a timeout / HTTP error / reply the
  validator rejects is retried up to ``max_retries`` times with exponential backoff; after that the
  answer is recorded *invalid* (never guessed). A rejected reply is cached as invalid so a re-run makes
  no new call (``retry_invalid`` asks again); a pure transport failure is not cached.
"""

from __future__ import annotations

from typing import Any

from emollm import llm
from emollm.errors import JudgeError
from emollm.llm import Answer, Backend, TransportError
from emollm.llm import Asker as Judge
from emollm.llm import AskStats as JudgeStats
from emollm.llm import ResponseCache as JudgeCache


class OpenAIBackend(llm.OpenAIBackend):
    def __init__(self, base_url: str, model: str, *, api_key_env: str | None = "OPENAI_API_KEY",
                 timeout_s: float = 60.0, max_tokens: int = 256):
        super().__init__(base_url, model, api_key_env=api_key_env, timeout_s=timeout_s, max_tokens=max_tokens,
                         error_cls=JudgeError, what="judge", config_key="evaluate.judge")


class HFBackend(llm.HFBackend):
    def __init__(self, path: str, *, max_new_tokens: int = 256, trust_remote_code: bool = False):
        super().__init__(path, max_new_tokens=max_new_tokens, trust_remote_code=trust_remote_code,
                         error_cls=JudgeError, what="judge")


def make_backend(cfg: Any) -> Backend:
    """A backend from an ``evaluate.judge`` config section (any kind in :func:`emollm.llm.make_backend`)."""
    if cfg.backend == "none":
        raise JudgeError(f"no judge backend configured (evaluate.judge.backend={cfg.backend!r})")
    return llm.make_backend_from(cfg, error_cls=JudgeError, what="judge", config_key="evaluate.judge")


__all__ = ["Answer", "Backend", "HFBackend", "Judge", "JudgeCache", "JudgeStats", "OpenAIBackend",
           "TransportError", "make_backend"]
