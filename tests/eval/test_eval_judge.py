"""The EMER judge against a real OpenAI-compatible server on 127.0.0.1 with scripted replies."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest

from emollm.errors import JudgeError
from emollm.testing.chat_server import ScriptedChatServer
from eval.emer import emer_scores, parse_score
from eval.judges import Judge, JudgeCache, OpenAIBackend

SLOW_S = 1.0
TIMEOUT_S = 0.3


class ScriptedServer(ScriptedChatServer):
    """Replies by marker in the prompt: ``ok`` -> Score: 8; ``mal`` -> garbage first, then Score: 5;
    ``slow`` -> first score call sleeps past the client timeout, then Score: 7; ``bad`` -> always garbage;
    ``http`` -> first score call is an HTTP 500, then Score: 9. Step-1 prompts get a summary naming the marker."""

    def __init__(self) -> None:
        super().__init__()
        self.auth: set = set()

    def respond(self, body, headers):  # noqa: ANN001, ANN201
        self.auth.add(headers.get("Authorization"))
        assert body["temperature"] == 0
        prompt = body["messages"][0]["content"]
        marker = re.search(r"MARK_(\w+)", prompt).group(1)
        step = "score" if "Score: N" in prompt else "step1"
        with self.lock:
            self.calls[(marker, step)] += 1
            n = self.calls[(marker, step)]
        time.sleep(0.02)
        if step == "step1":
            return f"clues of MARK_{marker}: smiles, bright voice ({len(prompt)})"
        if marker == "mal" and n == 1 or marker == "bad":
            return "I would say it is quite similar!"
        if marker == "slow" and n == 1:
            time.sleep(SLOW_S)
            return "Score: 1"
        if marker == "http" and n == 1:
            return 500
        return {"ok": "Score: 8", "mal": "score is 5/10", "slow": "Score: 7", "http": "Score: 9"}[marker]


@pytest.fixture()
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer().running() as srv:
        yield srv


ITEMS = [(m, f"Reference MARK_{m}: she smiles, she is happy.", f"Prediction MARK_{m}: joyful.")
         for m in ("ok", "mal", "slow", "bad", "http")]


def _judge(server: ScriptedServer, tmp_path, monkeypatch) -> Judge:
    monkeypatch.setenv("TEST_JUDGE_KEY", "sk-test")
    backend = OpenAIBackend(server.url, "judge-model", api_key_env="TEST_JUDGE_KEY", timeout_s=TIMEOUT_S)
    return Judge(backend, JudgeCache(tmp_path / "cache"), max_retries=2, backoff_s=0.01)


def test_emer_against_local_server_and_cache(server: ScriptedServer, tmp_path, monkeypatch) -> None:
    judge = _judge(server, tmp_path, monkeypatch)
    out = emer_scores(judge, ITEMS, concurrency=2)
    by_id = {s["id"]: s for s in out["per_sample"]}
    assert by_id["ok"]["clue_overlap"] == 8 and by_id["ok"]["label_overlap"] == 8
    assert by_id["mal"]["clue_overlap"] == 5  # malformed reply retried
    assert by_id["slow"]["clue_overlap"] == 7  # timed out, retried
    assert by_id["http"]["label_overlap"] == 9  # HTTP 500, retried
    assert by_id["bad"]["clue_overlap"] is None and "no valid answer" in by_id["bad"]["errors"]["clue_overlap"]
    assert out["clue_overlap"]["valid"] == 4 and out["clue_overlap"]["invalid"] == 1
    assert out["clue_overlap"]["mean"] == pytest.approx((8 + 5 + 7 + 9) / 4)
    # calls: 4 step-1 per sample; score calls: ok 2, mal 1+1 (first garbage), slow 1+1, bad 3+3, http 1+1
    assert server.calls[("bad", "score")] == 6
    assert server.calls[("slow", "score")] == 3 and server.calls[("mal", "score")] == 3
    stats = out["judge_stats"]
    assert stats["transport_errors"] == 2 and stats["invalid"] == 2 and stats["calls"] == server.total()
    # bounded concurrency: 2 workers; the server may still be sleeping on one abandoned (timed-out) request
    assert server.max_in_flight <= 3
    assert server.auth == {"Bearer sk-test"}

    first = server.total()
    again = emer_scores(_judge(server, tmp_path, monkeypatch), ITEMS, concurrency=2)
    assert server.total() == first  # the second run is free
    assert again["judge_stats"]["calls"] == 0 and again["judge_stats"]["cache_hits"] == 30
    assert [s["clue_overlap"] for s in again["per_sample"]] == [s["clue_overlap"] for s in out["per_sample"]]

    retry = Judge(judge.backend, JudgeCache(tmp_path / "cache"), max_retries=0, backoff_s=0, retry_invalid=True)
    emer_scores(retry, ITEMS, concurrency=2)
    assert server.total() == first + 2  # only the two invalid answers were asked again


def test_parse_score_never_guesses() -> None:
    assert parse_score("Score: 7") == 7 and parse_score("**Score:** 10") == 10 and parse_score(" 3 ") == 3
    for reply in ("", "I think 7 or 8", "Score: 0", "Score: 12", "Score: 3. Score: 9", "similar"):
        assert parse_score(reply) is None


def test_missing_key_is_a_user_error(monkeypatch) -> None:
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(JudgeError, match="NO_SUCH_KEY_VAR"):
        OpenAIBackend("http://127.0.0.1:9/v1", "m", api_key_env="NO_SUCH_KEY_VAR")


def test_unreachable_endpoint_is_invalid_not_cached(tmp_path) -> None:
    backend = OpenAIBackend("http://127.0.0.1:9/v1", "m", api_key_env=None, timeout_s=0.5)
    judge = Judge(backend, JudgeCache(tmp_path), max_retries=1, backoff_s=0.0)
    ans = judge.ask("Score: N MARK_x", parse_score)
    assert not ans.valid and ans.reply is None and judge.stats.calls == 2
    assert not list(tmp_path.rglob("*.json"))


def test_hf_backend_local_tiny_lm(tmp_path) -> None:
    from emollm.testing.tiny import build_tiny_models
    from eval.judges import HFBackend

    backend = HFBackend(str(build_tiny_models(names=["llama2"]).llama2), max_new_tokens=4)
    reply = backend.complete("Reply in the form Score: N")
    assert isinstance(reply, str) and backend.complete("Reply in the form Score: N") == reply  # greedy
    judge = Judge(backend, JudgeCache(tmp_path), max_retries=0, backoff_s=0)
    ans = judge.ask("Reply in the form Score: N", lambda r: "x" if r == reply else None)
    assert ans.valid and judge.ask("Reply in the form Score: N", lambda r: "x").cached
    with pytest.raises(JudgeError, match="does not exist"):
        HFBackend(str(tmp_path / "missing"))
