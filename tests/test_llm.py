"""The shared LLM client (emollm.llm): which HTTP failures are retried, Retry-After, and the backend registry."""

from __future__ import annotations

import logging
import re
import time

import pytest

from emollm import llm
from emollm.errors import JudgeError, LLMError, WriterError
from emollm.testing.chat_server import ScriptedChatServer

OK = "The person smiles; the voice is bright."


class StatusServer(ScriptedChatServer):
    """Replies by the marker in the last message: ``s401`` -> HTTP 401 with a body, ``s429_7`` -> 429 with
    ``Retry-After: 7`` on the first call then OK, ``s503`` -> 503 on the first call then OK, ``slow`` -> past the
    client's timeout on the first call then OK, ``ok``."""

    def respond(self, body, headers):  # noqa: ANN001, ANN201
        marker = re.search(r"MARK_(\w+)", body["messages"][-1]["content"]).group(1)
        with self.lock:
            self.calls[marker] += 1
            n = self.calls[marker]
        code = re.fullmatch(r"s(\d{3})(?:_(\w+))?", marker)
        if code:
            status = int(code.group(1))
            if status in (429, 500, 502, 503) and n > 1:
                return OK
            return (status, b'{"error": "nope"}', {"Retry-After": code.group(2)} if code.group(2) else {})
        if marker == "slow" and n == 1:
            time.sleep(1.0)
        return OK


@pytest.fixture
def server():
    with StatusServer().running() as s:
        yield s


def _asker(server: StatusServer, sleeps: list[float], max_retries: int = 3) -> llm.Asker:
    backend = llm.OpenAIBackend(server.url, "m", api_key_env=None, timeout_s=0.3)
    return llm.Asker(backend, None, max_retries=max_retries, backoff_s=0.01, sleep=sleeps.append)


def _errors_logged() -> tuple[list[str], logging.Handler]:
    lines: list[str] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("emollm").addHandler(handler)  # the CLI's setup_logging stops propagation
    return lines, handler


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_client_errors_are_not_retried(server, status) -> None:
    sleeps: list[float] = []
    asker = _asker(server, sleeps)
    a = asker.ask(f"MARK_s{status}", lambda r: r)
    assert not a.valid and server.calls[f"s{status}"] == 1 and sleeps == []  # asked once, no backoff
    assert a.error == f"HTTP {status} from {server.url}/chat/completions: '{{\"error\": \"nope\"}}'"
    assert asker.stats.as_dict() == {"calls": 1, "cache_hits": 0, "retries": 0, "transport_errors": 1,
                                     "rejected_replies": 0, "invalid": 1}


def test_a_key_or_endpoint_error_is_said_once_and_stops_the_calls(server) -> None:
    lines, handler = _errors_logged()
    try:
        asker = _asker(server, [])
        answers = llm.ask_many(asker, ["MARK_s401"] * 12, lambda r: r, concurrency=3)
    finally:
        logging.getLogger("emollm").removeHandler(handler)
    assert server.calls["s401"] <= 3  # at most the calls already in flight; then none
    assert all(not a.valid and a.error.startswith(f"HTTP 401 from {server.url}/chat/completions") for a in answers)
    assert len(lines) == 1 and "HTTP 401 from" in lines[0] and "API key" in lines[0]
    # a 400 is about one request (e.g. too long a prompt): the next prompt is still asked
    other = _asker(server, [])
    other.ask("MARK_s400", lambda r: r)
    assert other.ask("MARK_ok", lambda r: r).value == OK and other.fatal is None


def test_429_and_5xx_are_retried_honouring_retry_after(server) -> None:
    sleeps: list[float] = []
    asker = _asker(server, sleeps)
    assert asker.ask("MARK_s429_7", lambda r: r).value == OK
    assert sleeps == [7.0] and server.calls["s429_7"] == 2  # the server's 7 s, not the 0.01 s backoff
    sleeps.clear()
    assert asker.ask("MARK_s503", lambda r: r).value == OK
    assert sleeps == [0.01] and server.calls["s503"] == 2  # no Retry-After: exponential backoff
    sleeps.clear()
    asker.ask("MARK_s429_99999", lambda r: r)
    assert sleeps == [llm.MAX_RETRY_AFTER_S]  # a server asking for a day is waited on for a bounded time


def test_a_timeout_is_retried_with_its_message(server) -> None:
    sleeps: list[float] = []
    asker = _asker(server, sleeps, max_retries=0)
    a = asker.ask("MARK_slow", lambda r: r)
    assert a.error == f"timeout after 0.3s waiting for {server.url}/chat/completions"
    time.sleep(0.8)  # let the server's slow reply finish before the retrying asker calls again
    assert _asker(server, sleeps, max_retries=1).ask("MARK_slow", lambda r: r).value == OK


def test_retry_after_parsing() -> None:
    assert llm.retry_after_s("3") == 3.0 and llm.retry_after_s("0.5") == 0.5
    assert llm.retry_after_s("Wed, 21 Oct 2026 07:28:00 GMT") is None  # the date form: backoff instead
    assert llm.retry_after_s("-1") is None and llm.retry_after_s(None) is None and llm.retry_after_s("nan") is None
    assert llm.retry_after_s("86400") == llm.MAX_RETRY_AFTER_S


class EchoBackend:
    kind = "echo"

    def __init__(self, model: str):
        self.model = model

    def complete(self, prompt: llm.Prompt) -> str:
        return str(llm.as_messages(prompt)[-1]["content"])


def test_a_registered_backend_is_made_by_name(monkeypatch) -> None:
    monkeypatch.setitem(llm._BACKENDS, ("echo", False), lambda o: EchoBackend(o.model))
    backend = llm.make_backend("echo", model="m1")
    assert isinstance(backend, EchoBackend) and backend.model == "m1" and "echo" in llm.backend_kinds()
    assert llm.Asker(backend, None).ask("hello", lambda r: r).value == "hello"
    with pytest.raises(WriterError, match="unknown writer backend 'nope'") as exc:
        llm.make_backend("nope", model="m", error_cls=WriterError, what="writer")
    assert "echo" in exc.value.hint and "openai" in exc.value.hint
    with pytest.raises(LLMError, match="unknown LLM backend 'echo'"):  # text-only: not a vision backend
        llm.make_backend("echo", images=True, model="m")


@pytest.mark.parametrize("user", ["writer", "describer", "judge"])
def test_writer_describer_and_judge_build_their_backend_from_the_registry(user, monkeypatch, tmp_path) -> None:
    """Replacing the registry's ``openai`` entry changes what each of them gets: one factory for all."""
    from emollm import config

    made: list[llm.BackendOptions] = []

    def fake(o: llm.BackendOptions) -> llm.Backend:
        made.append(o)
        return EchoBackend(o.model)

    monkeypatch.setitem(llm._BACKENDS, ("openai", user == "describer"), fake)
    if user == "writer":
        from data_builders.writers import make_writer

        cfg = config.load(None, ["build.writer.backend=openai", "build.writer.model=w"]).build.writer
        got = make_writer(cfg, tmp_path).asker.backend
    elif user == "describer":
        from data_builders.describers import make_describer

        cfg = config.load(None, ["build.describer.backend=openai", "build.describer.model=w"]).build.describer
        got = make_describer(cfg, tmp_path).asker.backend
    else:
        from eval.judges import make_backend

        cfg = config.load(None, ["evaluate.judge.backend=openai", "evaluate.judge.model=w"]).evaluate.judge
        got = make_backend(cfg)
    assert isinstance(got, EchoBackend) and got.model == "w"
    errors = {"writer": WriterError, "describer": WriterError, "judge": JudgeError}
    assert made[0].error_cls is errors[user] and made[0].what == user
    assert made[0].max_new_tokens == cfg.max_new_tokens and made[0].timeout_s == cfg.timeout_s
