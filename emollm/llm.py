"""One home for the LLM client used by the EMER judge (``eval/judges.py``) and the builder's writers.

- :class:`OpenAIBackend`: any OpenAI-compatible ``/chat/completions`` endpoint (stdlib ``urllib``),
  temperature 0, the key read from the environment variable the config names.
- :class:`HFBackend`: a local HF causal LM by path, greedy decoding (temperature 0);
  :class:`HFVisionBackend`: a local image-text-to-text model (the visual describer's).
- The backend registry: :func:`register_backend` / :func:`make_backend` (``openai``, ``hf``; ``images=True``
  for vision backends). The writer, describer and judge build their backend here and keep only their
  prompts and validators.
- :class:`ResponseCache`: replies on disk, one JSON file per ``sha256(backend kind, model, prompt)``,
  written atomically.
- :class:`Asker`: asks a backend with a validator. Cached replies are served without a call; a timeout /
  HTTP 429 or 5xx / reply the validator rejects is retried up to ``max_retries`` times with exponential
  backoff (or the server's ``Retry-After``, when longer); HTTP 400/401/403/404 are not retried, and after a
  401/403/404 (key, endpoint) the asker makes no further call, said once in the log; after that the answer is recorded *invalid* (never guessed). A rejected reply is cached as
  invalid so a re-run makes no new call (``retry_invalid`` asks again); a pure transport failure is not
  cached. Bounded concurrency is the caller's thread pool (:func:`ask_many`); the asker is thread-safe.

A *prompt* is either a string (one user message) or a list of ``{"role", "content"}`` messages; a
``content`` may also be a list of OpenAI content parts (``{"type": "text", ...}``,
``{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}``) for a vision request.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from emollm.errors import LLMError
from emollm.log import get_logger

log = get_logger(__name__)

Prompt = str | list[dict[str, Any]]


class TransportError(Exception):
    """One call failed (timeout, connection, HTTP status): retried, never shown as a user error.

    ``retryable`` is False for a status no retry can fix (4xx but 408 / 409 / 429: a bad request, key or
    endpoint); ``retry_after`` is the server's ``Retry-After`` in seconds (429 / 503), if it sent one."""

    def __init__(self, message: str, *, retryable: bool = True, retry_after: float | None = None,
                 status: int | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status


#: HTTP statuses worth a retry (with 5xx): request timeout, conflict, rate limit. Any other 4xx is the
#: request, the key or the endpoint being wrong: asked once (as the ``openai`` package does).
RETRY_STATUSES = frozenset({408, 409, 429})
#: Of those, the ones that hold for every prompt (key / endpoint): the asker stops calling after one.
FATAL_STATUSES = frozenset({401, 403, 404})
#: The longest ``Retry-After`` honoured (a server asking for an hour is waited on for this long).
MAX_RETRY_AFTER_S = 120.0


#: Largest HTTP reply body read from an OpenAI-compatible server (a chat reply is a few KiB).
MAX_REPLY_BYTES = 8 * 1024 * 1024
#: An invalid reply is cached (so a rerun makes no new call) cut to this many characters: a runaway
#: server's megabytes are not kept on disk; the cached error says how long the reply was.
MAX_CACHED_INVALID_CHARS = 16_384


def _read_quietly(exc: urllib.error.HTTPError) -> bytes:
    try:
        return exc.read(1000)
    except Exception:  # noqa: BLE001 - the status alone still says what happened
        return b""


def retry_after_s(value: str | None) -> float | None:
    """``Retry-After`` in seconds (the delta-seconds form; an HTTP date or garbage gives None)."""
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return None if seconds is None or not seconds >= 0 else min(seconds, MAX_RETRY_AFTER_S)


def _excerpt(raw: bytes, limit: int = 120) -> str:
    """The start of a reply body on one line, for an error message."""
    text = " ".join(raw[: limit * 4].decode("utf-8", "replace").split())
    return repr(text[:limit] + ("…" if len(text) > limit else "")) if text else "(empty body)"


class Backend(Protocol):
    kind: str
    model: str

    def complete(self, prompt: Prompt) -> str: ...


def as_messages(prompt: Prompt) -> list[dict[str, Any]]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": str(m["role"]), "content": [dict(p) for p in m["content"]] if isinstance(m["content"], list)
             else str(m["content"])} for m in prompt]


class OpenAIBackend:
    kind = "openai"

    def __init__(self, base_url: str, model: str, *, api_key_env: str | None = "OPENAI_API_KEY",
                 timeout_s: float = 60.0, max_tokens: int = 256, error_cls: type[LLMError] = LLMError,
                 what: str = "LLM", config_key: str = "the backend config", temperature: float = 0.0):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.timeout_s = timeout_s
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.api_key = None
        if api_key_env:
            self.api_key = os.environ.get(api_key_env)
            if self.api_key is None:
                raise error_cls(f"the {what}'s API key variable '{api_key_env}' is not set",
                                hint=f"export {api_key_env}=..., or set {config_key}.api_key_env=null "
                                "for an endpoint without a key")

    def complete(self, prompt: Prompt) -> str:
        body = json.dumps({"model": self.model, "temperature": self.temperature, "max_tokens": self.max_tokens,
                           "messages": as_messages(prompt)}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        raw = b""
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                raw = resp.read(MAX_REPLY_BYTES + 1)  # bounded: a runaway server cannot fill memory
            if len(raw) > MAX_REPLY_BYTES:
                raise TransportError(f"a reply from {self.url} is larger than {MAX_REPLY_BYTES} bytes")
            data = json.loads(raw.decode("utf-8"))
        except urllib.error.HTTPError as exc:
            raise TransportError(f"HTTP {exc.code} from {self.url}: {_excerpt(_read_quietly(exc))}",
                                 retryable=exc.code >= 500 or exc.code in RETRY_STATUSES, status=exc.code,
                                 retry_after=retry_after_s(exc.headers.get("Retry-After") if exc.headers else None)
                                 ) from None
        except (TimeoutError, urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(exc, TimeoutError) or isinstance(reason, TimeoutError):
                raise TransportError(f"timeout after {self.timeout_s:g}s waiting for {self.url}") from None
            raise TransportError(f"{type(exc).__name__}: {reason}") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise TransportError(f"a reply from {self.url} is not JSON: {_excerpt(raw)}") from None
        try:
            return str(data["choices"][0]["message"]["content"] or "")
        except (KeyError, IndexError, TypeError):
            raise TransportError(f"a reply from {self.url} has no choices[0].message.content") from None


class HFBackend:
    """A local causal LM by path; greedy decoding. Calls are serialised (one model, one lock)."""

    kind = "hf"

    def __init__(self, path: str, *, max_new_tokens: int = 256, trust_remote_code: bool = False,
                 error_cls: type[LLMError] = LLMError, what: str = "LLM"):
        if not Path(path).exists():
            raise error_cls(f"{what} model path '{path}' does not exist",
                            hint=f"the hf {what} backend loads a local causal LM by path (no hub access)")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model = str(path)
        self.max_new_tokens = max_new_tokens
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        self.lm = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=trust_remote_code).eval()
        self._lock = threading.Lock()

    def complete(self, prompt: Prompt) -> str:
        import torch

        tok = self.tokenizer
        messages = as_messages(prompt)
        if getattr(tok, "chat_template", None):
            ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
            input_ids = ids["input_ids"]
        else:
            text = "\n\n".join(m["content"] for m in messages)
            input_ids = tok(text, return_tensors="pt")["input_ids"]
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        with self._lock, torch.no_grad():
            out = self.lm.generate(input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                                   max_new_tokens=self.max_new_tokens, pad_token_id=pad)
        return tok.decode(out[0, input_ids.shape[1]:], skip_special_tokens=True)


def _image_from_messages(messages: list[dict[str, Any]]) -> tuple[Any, list[dict[str, Any]]]:
    """(PIL image, messages in the HF processor's content-part form) from an OpenAI vision prompt."""
    import base64
    import io

    from PIL import Image

    image = None
    out = []
    for m in messages:
        content = m["content"]
        if isinstance(content, str):
            out.append({"role": m["role"], "content": [{"type": "text", "text": content}]})
            continue
        parts = []
        for p in content:
            if p.get("type") == "image_url":
                url = p["image_url"]["url"]
                image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")
                parts.append({"type": "image"})
            else:
                parts.append({"type": "text", "text": p.get("text", "")})
        out.append({"role": m["role"], "content": parts})
    return image, out


class HFVisionBackend:
    """A local image-text-to-text model by path; greedy decoding. Calls are serialised (one model, one lock)."""

    kind = "hf"

    def __init__(self, path: str, *, max_new_tokens: int = 120, trust_remote_code: bool = False,
                 error_cls: type[LLMError] = LLMError, what: str = "describer"):
        if not Path(path).exists():
            raise error_cls(f"{what} model path '{path}' does not exist",
                            hint=f"the hf {what} loads a local image-text-to-text model by path (no hub access)")
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.model = str(path)
        self.max_new_tokens = max_new_tokens
        try:
            self.processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
            self.lm = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=trust_remote_code).eval()
        except (OSError, ValueError, KeyError) as exc:
            raise error_cls(f"{what} model '{path}' cannot be loaded as an image-text-to-text model "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
                            hint="give a folder with a processor (image processor + tokenizer with a chat "
                            "template) and an AutoModelForImageTextToText checkpoint") from None
        if not getattr(self.processor, "chat_template", None):
            raise error_cls(f"{what} model '{path}': the processor has no chat template",
                            hint="save the processor with a chat_template that places the image")
        self._lock = threading.Lock()

    def complete(self, prompt: Prompt) -> str:
        import torch

        image, messages = _image_from_messages(as_messages(prompt))
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = self.processor(images=image, text=text, return_tensors="pt")
        tok = getattr(self.processor, "tokenizer", self.processor)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        with self._lock, torch.no_grad():
            out = self.lm.generate(**inputs, do_sample=False, max_new_tokens=self.max_new_tokens, pad_token_id=pad)
        return tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


# ---------------------------------------------------------------------------------------------- registry


@dataclass
class BackendOptions:
    """What a backend factory gets: the shared config fields (``build.writer``, ``build.describer``,
    ``evaluate.judge`` all have them) and who is asking, for the user-error messages."""

    model: str
    base_url: str = "http://127.0.0.1:8000/v1"
    api_key_env: str | None = "OPENAI_API_KEY"
    timeout_s: float = 60.0
    max_new_tokens: int = 256
    trust_remote_code: bool = False
    error_cls: type[LLMError] = LLMError
    what: str = "LLM"  # "writer", "describer", "judge": named in the error messages
    config_key: str = "the backend config"  # the config section, named in the hints


BackendFactory = Callable[[BackendOptions], Backend]
#: (kind, images) -> factory. ``images``: the backend takes image content parts (a vision model).
_BACKENDS: dict[tuple[str, bool], BackendFactory] = {}


def register_backend(kind: str, *, images: bool = False) -> Callable[[BackendFactory], BackendFactory]:
    """Register ``factory(options) -> Backend`` as backend ``kind`` (``images=True``: a vision backend).
    The backend's ``kind`` attribute is part of every cache key: a new kind has its own cache entries."""

    def add(factory: BackendFactory) -> BackendFactory:
        _BACKENDS[(kind, images)] = factory
        return factory

    return add


def backend_kinds(*, images: bool = False) -> list[str]:
    return [k for (k, img) in _BACKENDS if img == images]


def make_backend(kind: str, *, images: bool = False, **options: Any) -> Backend:
    """The backend ``kind`` (``openai``, ``hf``, ...) built from :class:`BackendOptions` fields."""
    opts = BackendOptions(**options)
    factory = _BACKENDS.get((kind, images))
    if factory is None:
        raise opts.error_cls(f"unknown {opts.what} backend '{kind}'",
                             hint=f"one of {', '.join(backend_kinds(images=images))}")
    return factory(opts)


def make_backend_from(cfg: Any, *, images: bool = False, error_cls: type[LLMError] = LLMError, what: str = "LLM",
                      config_key: str = "the backend config") -> Backend:
    """The backend of a config section with ``backend``, ``model``, ``base_url``, ... fields."""
    fields = {f: getattr(cfg, f) for f in ("model", "base_url", "api_key_env", "timeout_s", "max_new_tokens",
                                           "trust_remote_code") if hasattr(cfg, f)}
    return make_backend(cfg.backend, images=images, error_cls=error_cls, what=what, config_key=config_key, **fields)


@register_backend("openai")
@register_backend("openai", images=True)  # the same client: image parts travel as OpenAI content parts
def _openai(o: BackendOptions) -> Backend:
    return OpenAIBackend(o.base_url, o.model, api_key_env=o.api_key_env, timeout_s=o.timeout_s,
                         max_tokens=o.max_new_tokens, error_cls=o.error_cls, what=o.what, config_key=o.config_key)


@register_backend("hf")
def _hf(o: BackendOptions) -> Backend:
    return HFBackend(o.model, max_new_tokens=o.max_new_tokens, trust_remote_code=o.trust_remote_code,
                     error_cls=o.error_cls, what=o.what)


@register_backend("hf", images=True)
def _hf_vision(o: BackendOptions) -> Backend:
    return HFVisionBackend(o.model, max_new_tokens=o.max_new_tokens, trust_remote_code=o.trust_remote_code,
                           error_cls=o.error_cls, what=o.what)


class ResponseCache:
    """Replies on disk, one JSON file per ``sha256(backend kind, model, prompt)``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @staticmethod
    def key(kind: str, model: str, prompt: Prompt) -> str:
        return hashlib.sha256(json.dumps([kind, model, prompt], ensure_ascii=True).encode("utf-8")).hexdigest()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        path = self._path(key)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def put(self, key: str, entry: dict) -> None:
        from emollm.dataset.io import atomic_write_text

        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(entry, ensure_ascii=False), fsync=False)  # a cache: a lost reply is asked again


@dataclass
class Answer:
    reply: str | None  # the last reply (None: no reply came)
    value: Any  # what the validator made of it (None: invalid)
    cached: bool
    error: str | None = None  # why invalid: "no valid answer ...", "timeout ..."

    @property
    def valid(self) -> bool:
        return self.value is not None


@dataclass
class AskStats:
    calls: int = 0  # backend calls made (attempts, including failed ones)
    cache_hits: int = 0
    retries: int = 0
    transport_errors: int = 0
    rejected_replies: int = 0
    invalid: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **kw: int) -> None:
        with self._lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("calls", "cache_hits", "retries", "transport_errors",
                                             "rejected_replies", "invalid")}


class Asker:
    """Ask a backend with a validator: cache, retries with exponential backoff, invalid never guessed."""

    def __init__(self, backend: Backend, cache: ResponseCache | None, *, max_retries: int = 2,
                 backoff_s: float = 1.0, retry_invalid: bool = False, sleep: Callable[[float], None] = time.sleep):
        self.backend = backend
        self.cache = cache
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.retry_invalid = retry_invalid
        self.sleep = sleep
        self.stats = AskStats()
        self.fatal: str | None = None  # set by a 401/403/404: every later ask fails with it, making no call
        self._fatal_lock = threading.Lock()

    def _give_up(self, exc: TransportError) -> None:
        """A key / endpoint error holds for every prompt: say it once, then stop calling."""
        with self._fatal_lock:
            if self.fatal is not None:
                return
            self.fatal = str(exc)
        log.error("%s; no further calls to this endpoint in this run (check the API key, base_url and model)", exc)

    def ask(self, prompt: Prompt, validate: Callable[[str], Any]) -> Answer:
        """The validated answer to ``prompt`` (``validate`` returns None for a reply it rejects)."""
        key = ResponseCache.key(self.backend.kind, self.backend.model, prompt)
        if self.cache is not None:
            entry = self.cache.get(key)
            if entry is not None and (entry.get("valid") or not self.retry_invalid):
                value = validate(entry["reply"]) if entry.get("valid") else None
                if value is not None or not entry.get("valid"):
                    self.stats.add(cache_hits=1, invalid=int(value is None))
                    return Answer(entry["reply"], value, True, None if value is not None else entry.get("error"))
        if self.fatal is not None:
            self.stats.add(invalid=1)
            return Answer(None, None, False, self.fatal)
        reply, error, wait = None, None, 0.0
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.stats.add(retries=1)
                self.sleep(max(self.backoff_s * 2 ** (attempt - 1), wait))  # the server's Retry-After, if longer
            self.stats.add(calls=1)
            try:
                reply = self.backend.complete(prompt)
            except TransportError as exc:
                error = str(exc)
                self.stats.add(transport_errors=1)
                log.debug("LLM call failed (attempt %d): %s", attempt + 1, exc)
                if not exc.retryable:  # a bad request / key / endpoint: the same answer every time
                    if exc.status in FATAL_STATUSES:
                        self._give_up(exc)
                    break
                wait = exc.retry_after or 0.0
                continue
            value = validate(reply)
            if value is not None:
                if self.cache is not None:
                    self.cache.put(key, {"backend": self.backend.kind, "model": self.backend.model,
                                         "prompt": prompt, "reply": reply, "valid": True})
                return Answer(reply, value, False)
            error = f"no valid answer in the reply after {attempt + 1} attempt(s)"
            self.stats.add(rejected_replies=1)
        self.stats.add(invalid=1)
        if reply is not None and self.cache is not None and error and error.startswith("no valid"):
            kept = reply[:MAX_CACHED_INVALID_CHARS]
            cut = f" (a reply of {len(reply)} chars; the cache keeps the first {len(kept)})" if len(kept) < len(reply) else ""
            self.cache.put(key, {"backend": self.backend.kind, "model": self.backend.model, "prompt": prompt,
                                 "reply": kept, "valid": False, "error": error + cut})
        return Answer(reply, None, False, error)


def ask_many(asker: Asker, prompts: Sequence[Prompt], validate: Callable[[str], Any], *,
             concurrency: int = 4) -> list[Answer]:
    """Answers in the order of ``prompts``, at most ``concurrency`` calls in flight."""
    if concurrency <= 1 or len(prompts) <= 1:
        return [asker.ask(p, validate) for p in prompts]
    with cf.ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(pool.map(lambda p: asker.ask(p, validate), prompts))


__all__ = ["FATAL_STATUSES", "MAX_REPLY_BYTES", "RETRY_STATUSES", "Answer", "AskStats", "Asker", "Backend",
           "BackendOptions", "HFBackend", "HFVisionBackend", "OpenAIBackend", "Prompt", "ResponseCache",
           "TransportError", "as_messages", "ask_many", "backend_kinds", "make_backend", "make_backend_from",
           "register_backend", "retry_after_s"]
