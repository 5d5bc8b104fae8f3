"""Builder writers: coarse description, template / openai reasoning (local scripted server), filter, instructions."""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator

import pytest

from data_builders.instructions import check_reasoning, filter_reasoning, instruction_samples
from data_builders.runner import build
from data_builders.writers import LLMWriter, TemplateWriter, WriterItem, coarse_description, validate_reasoning
from emollm import config, llm
from emollm.dataset.label_sets import load_label_set
from emollm.errors import WriterError
from emollm.testing.chat_server import ScriptedChatServer

TIMEOUT_S = 0.3


class WriterServer(ScriptedChatServer):
    """Scripted replies by marker in the user message: ``ok`` -> a good reasoning; ``mal`` -> garbage
    first; ``nojson`` -> a non-JSON body first; ``slow`` -> first call sleeps past the timeout; ``bad`` ->
    always garbage; ``wrong`` -> a fluent reasoning that names another emotion."""

    def __init__(self) -> None:
        super().__init__()
        self.systems: set = set()

    def respond(self, body, headers):  # noqa: ANN001, ANN201
        msgs = body["messages"]
        self.systems.add(msgs[0]["content"] if msgs[0]["role"] == "system" else None)
        user = msgs[-1]["content"]
        marker = re.search(r"MARK_(\w+)", user).group(1)
        label = re.search(r"why the person feels (\w+)", user).group(1)
        with self.lock:
            self.calls[marker] += 1
            n = self.calls[marker]
        time.sleep(0.02)
        if marker == "nojson" and n == 1:
            return b"<html>oops</html>"
        if marker == "slow" and n == 1:
            time.sleep(1.0)
        if marker == "bad" or (marker == "mal" and n == 1):
            return "{}" if n % 2 else "??"
        if marker == "wrong":
            other = "sad" if label != "sad" else "happy"
            return f"The clues of MARK_{marker} show tears and a low voice, so the person feels {other}."
        return (f"The person smiles and the voice is bright (MARK_{marker}); "
                f"these emotional clues show why the person feels {label}.")


@pytest.fixture()
def server() -> Iterator[WriterServer]:
    with WriterServer().running() as srv:
        yield srv


# ------------------------------------------------------------------------------------------ offline


def test_coarse_description_leaves_absent_cues_out() -> None:
    full = coarse_description(visual="a woman in a red coat", expression="jaw drop, eyes widened",
                              tone="speaks loudly with a rising, excited pitch", subtitle="No way!")
    assert full.startswith("This person in the video is a woman in a red coat; the person's expression and actions include jaw drop")
    assert "the person's tone is" in full and full.endswith('saying: "No way!".')
    only = coarse_description(expression="smiling mouth")
    assert only == "The person's expression and actions include smiling mouth."
    assert "tone" not in only and "saying" not in only and "This person" not in only
    assert coarse_description() is None


def test_template_writer_filter_and_instructions() -> None:
    items = [WriterItem("a", "happy", "d", "Hi!", "smiling mouth", "speaks loudly"),
             WriterItem("b", "happy", "d", "Hi!", "smiling mouth", "speaks loudly"),
             WriterItem("c", "sad", "d", None, "lip corners pulled down", None)]
    w = TemplateWriter()
    texts = [r.text for r in w.write(items)]
    assert texts == [r.text for r in TemplateWriter().write(items)]  # deterministic
    assert texts[0].endswith("the person feels happy.") and "smiling mouth" in texts[0] and "Hi!" in texts[0]
    assert "voice" not in texts[2] and "say" not in texts[2]  # absent cues absent
    ls = load_label_set("merr")
    assert check_reasoning("…so she feels joyful.", "happy", ls) is None  # synonyms count
    assert check_reasoning("tears; the person feels sad.", "happy", ls).startswith("contradicts_label")
    assert check_reasoning("the person has feelings.", "happy", ls) == "label_not_mentioned"
    # What a small real LLM writes (SmolLM2-135M, benchmarks/writer_reasoning.py): hedged, cut off, looping.
    mixed = "They are not just happy but also a mix of sadness and joy."
    assert check_reasoning(mixed, "happy", ls) == "mixed_emotions:sad"
    assert check_reasoning("There is no sign of anger; she smiles, so she feels happy.", "happy", ls) is None
    assert check_reasoning("She smiles broadly, so the person feels happy and the person's emotional", "happy",
                           ls) == "truncated"  # fmt: skip
    loop = "The tone is low and even. The tone is low and even. So the person feels happy."
    assert check_reasoning("A calm voice and a broad smile: the person feels happy.", "happy", ls) is None
    assert check_reasoning(loop, "happy", ls) == "repetitive"
    listed = "Clues: - lips apart with a soft voice - lips apart with a soft voice - lips apart with a soft voice. So the person feels happy."
    assert check_reasoning(listed, "happy", ls) == "repetitive"
    recs = [{"id": it.id, "label": None, "pseudo_label": it.label, "reasoning": t, "subtitle": it.subtitle,
             "split": "coarse", "media": {"path": f"{it.id}.mp4"}} for it, t in zip(items, texts, strict=True)]
    recs.append({"id": "d", "label": "angry", "pseudo_label": "happy", "reasoning": "He smiles warmly, the person feels happy.",
                 "subtitle": None, "split": "test", "media": {"path": "d.mp4"}})
    filter_reasoning(recs, ls)
    kept = {r["id"]: r["reasoning_filter"] for r in recs}
    assert kept["a"]["kept"] and kept["c"]["kept"]
    assert kept["b"] == {"kept": False, "reason": "duplicate_of:a"}
    assert kept["d"]["reason"] == "contradicts_label:happy"  # the ground truth (angry) wins over the pseudo-label
    samples = instruction_samples(recs, seed=3)
    assert {s["id"] for s in samples["emotion"]} == {"a", "b", "c", "d"}
    assert {s["id"] for s in samples["reason"]} == {"a", "c"}
    s = next(s for s in samples["reason"] if s["id"] == "a")
    assert s["task"] == "reason" and "[reason]" in s["messages"][0]["content"] and s["target"] == texts[0]
    assert "The person in video says: Hi!" in s["messages"][0]["content"] and s["label"] == "happy"
    assert next(s for s in samples["emotion"] if s["id"] == "d")["target"] == "angry"


def test_validate_reasoning_rejects_garbage() -> None:
    assert validate_reasoning("") is None and validate_reasoning("{}") is None and validate_reasoning("??") is None
    assert validate_reasoning('{"reasoning": "x"}') is None
    assert validate_reasoning("<think>hmm</think> The smile and bright voice show why the person feels happy.")


# ------------------------------------------------------------------------------------------ openai


def _writer(server: WriterServer, tmp_path, monkeypatch, concurrency: int = 2) -> LLMWriter:
    monkeypatch.setenv("TEST_WRITER_KEY", "sk-test")
    backend = llm.OpenAIBackend(server.url, "scripted", api_key_env="TEST_WRITER_KEY", timeout_s=TIMEOUT_S)
    asker = llm.Asker(backend, llm.ResponseCache(tmp_path / "cache"), max_retries=2, backoff_s=0.01)
    return LLMWriter(asker, "merr_reason", concurrency=concurrency)


def test_openai_writer_retries_then_caches(server, tmp_path, monkeypatch) -> None:
    markers = ("ok", "mal", "nojson", "slow", "bad")
    items = [WriterItem(m, "happy", f"Description MARK_{m}.", "I won!") for m in markers]
    w = _writer(server, tmp_path, monkeypatch)
    res = dict(zip(markers, w.write(items), strict=True))
    assert all(res[m].text and "feels happy" in res[m].text for m in ("ok", "mal", "nojson", "slow"))
    assert res["bad"].text is None and "no valid answer" in res["bad"].error
    assert server.calls["ok"] == 1 and server.calls["mal"] == 2 and server.calls["bad"] == 3
    assert server.calls["nojson"] == 2 and server.calls["slow"] == 2
    assert server.max_in_flight <= 2
    assert any(s and "emotion analysis" in s for s in server.systems)
    assert w.stats.transport_errors >= 2 and w.stats.retries >= 4
    before = server.total()
    again = _writer(server, tmp_path, monkeypatch).write(items)
    assert server.total() == before  # second run: no calls at all (the bad one is cached as invalid)
    assert [r.text for r in again] == [res[m].text for m in markers] and all(r.cached for r in again)


def test_openai_writer_needs_its_key(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("NO_SUCH_WRITER_KEY", raising=False)
    cfg = config.load(None, ["build.writer.backend=openai", "build.writer.model=m",
                             "build.writer.api_key_env=NO_SUCH_WRITER_KEY"])
    from data_builders.writers import make_writer

    with pytest.raises(WriterError, match="NO_SUCH_WRITER_KEY"):
        make_writer(cfg.build.writer, tmp_path)


def test_build_with_openai_writer_second_run_makes_no_calls(server, sample_dir, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TEST_WRITER_KEY", "sk-test")
    clips = tmp_path / "clips"
    clips.mkdir()
    for name in ("ok", "bad", "wrong"):
        shutil.copy(sample_dir / "single_face.mp4", clips / f"{name}.mp4")
    subs = tmp_path / "subs.csv"
    subs.write_text("id,subtitle\n" + "".join(f"{n},This is MARK_{n}.\n" for n in ("ok", "bad", "wrong")), encoding="utf-8")
    labels = tmp_path / "labels.csv"
    labels.write_text("id,label\nok,happy\nbad,happy\nwrong,happy\n", encoding="utf-8")
    over = ["build.au_fps=1", "build.tone=none", f"data.subtitles_csv={subs}", f"data.labels_csv={labels}",
            "build.writer.backend=openai", "build.writer.model=scripted", f"build.writer.base_url={server.url}",
            "build.writer.api_key_env=TEST_WRITER_KEY", "build.writer.backoff_s=0.01", "build.writer.concurrency=2"]
    out = tmp_path / "ds"
    s1 = build(config.load(None, over), clips, out)
    assert s1.failed == 0 and s1.text["writer_stats"]["calls"] == 5  # ok 1, wrong 1, bad 3
    recs = {json.loads(line)["id"]: json.loads(line) for line in (out / "annotations.jsonl").open(encoding="utf-8")}
    ok, bad, wrong = recs["ok"], recs["bad"], recs["wrong"]
    assert ok["reasoning_filter"]["kept"] and ok["split"] == "fine" and ok["granularity"] == "fine"
    assert ok["provenance"]["reasoning"] == {"source": "writer:openai", "model": "scripted",
                                             "version": ok["provenance"]["reasoning"]["version"], "label": "happy"}
    assert ok["provenance"]["reasoning"]["version"].startswith("merr_reason/1+")
    assert "MARK_ok" in ok["coarse_description"] and ok["provenance"]["coarse_description"]["source"].startswith("template:")
    assert bad["reasoning"] is None and "writer_failed" in bad["flags"] and bad["split"] == "coarse"
    assert wrong["reasoning_filter"] == {"kept": False, "reason": "contradicts_label:sad"} and wrong["split"] == "coarse"
    reason = [json.loads(line) for line in (out / "instructions" / "reason.jsonl").open(encoding="utf-8")]
    emotion = [json.loads(line) for line in (out / "instructions" / "emotion.jsonl").open(encoding="utf-8")]
    assert [r["id"] for r in reason] == ["ok"] and len(emotion) == 3
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["text"]["filtered_out"] == {"contradicts_label": 1} and manifest["text"]["writer_failed"] == 1
    failures = [json.loads(line) for line in (out / "writer_failures.jsonl").open(encoding="utf-8")]
    assert [(f["id"], f["cause"]) for f in failures] == [("bad", bad["writer_error"])]
    assert bad["writer_error"].startswith("refused by the reasoning filter")

    before = server.total()
    s2 = build(config.load(None, over), clips, out)
    assert server.total() == before and s2.reused == 3 and s2.text["writer_stats"]["calls"] == 0
    assert s2.text["writer_stats"]["cache_hits"] == 3


def test_a_build_where_every_writer_answer_fails_exits_2(server, sample_dir, tmp_path, monkeypatch, capsys) -> None:
    from emollm.cli.main import main

    monkeypatch.setenv("TEST_WRITER_KEY", "sk-test")
    clips = tmp_path / "clips"
    clips.mkdir()
    shutil.copy(sample_dir / "single_face.mp4", clips / "bad.mp4")
    subs = tmp_path / "subs.csv"
    subs.write_text("id,subtitle\nbad,This is MARK_bad.\n", encoding="utf-8")
    labels = tmp_path / "labels.csv"
    labels.write_text("id,label\nbad,happy\n", encoding="utf-8")
    out = tmp_path / "ds"
    status = main(["build", str(clips), "--out", str(out), "--labels", str(labels), "--subtitles", str(subs),
                   "build.au_fps=1", "build.tone=none", "build.writer.backend=openai", "build.writer.model=scripted",
                   f"build.writer.base_url={server.url}", "build.writer.api_key_env=TEST_WRITER_KEY",
                   "build.writer.backoff_s=0.01", "build.writer.max_retries=0"])  # fmt: skip
    err = capsys.readouterr().err
    assert status == 2 and "every writer answer was unusable (1 of 1); e.g. bad: refused by the reasoning filter" in err
    assert json.loads((out / "annotations.jsonl").read_text(encoding="utf-8"))["id"] == "bad"  # the record is kept


def test_hf_writer_local_tiny_lm(tmp_path) -> None:
    from data_builders.writers import make_writer
    from emollm.testing.tiny import build_tiny_models

    path = build_tiny_models(names=["llama2"]).llama2
    cfg = config.load(None, ["build.writer.backend=hf", f"build.writer.model={path}", "build.writer.max_new_tokens=6",
                             "build.writer.max_retries=0"])  # fmt: skip
    items = [WriterItem("a", "happy", "The person's expression and actions include smiling mouth.", "Hi!")]
    w = make_writer(cfg.build.writer, tmp_path)
    first = w.write(items)[0]
    assert w.kind == "hf" and w.stats.calls == 1
    assert first.text is not None or "no valid answer" in first.error  # a random LM: garbage is flagged, not used
    again = make_writer(cfg.build.writer, tmp_path)
    assert again.write(items)[0].text == first.text and again.stats.calls == 0 and again.stats.cache_hits == 1
    with pytest.raises(WriterError, match="does not exist"):
        make_writer(config.load(None, ["build.writer.backend=hf", f"build.writer.model={tmp_path / 'nope'}"]).build.writer,
                    tmp_path)


class FailingServer(ScriptedChatServer):
    """One failure mode per clip marker: ``http500`` (with a body), ``garbage`` (not JSON), ``huge``
    (a 1.3 MB reply), ``slow`` (past the timeout), ``short`` (a reply the filter refuses), ``ok``."""

    def respond(self, body, headers):  # noqa: ANN001, ANN201
        marker = re.search(r"MARK_(\w+)", body["messages"][-1]["content"]).group(1)
        with self.lock:
            self.calls[marker] += 1
        if marker == "http500":
            return 500, b'{"error": "model overloaded"}'
        if marker == "garbage":
            return b"<html>upstream exploded</html>"
        if marker == "huge":
            return "The person smiles, so the person feels happy. " * 29_000  # about 1.3 MB
        if marker == "slow":
            time.sleep(1.0)
        if marker == "short":
            return "happy"
        return "The person smiles and the voice is bright; these clues show why the person feels happy."


def test_every_writer_failure_is_logged_and_written_with_its_cause(tmp_path, monkeypatch) -> None:
    import logging

    from data_builders.writers import MAX_REASONING_CHARS, WRITER_FAILURES

    markers = ("ok", "http500", "garbage", "huge", "slow", "short")
    items = [WriterItem(f"clip_{m}", "happy", f"Description MARK_{m}.", "Hi") for m in markers]
    lines: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("emollm")  # its own handler: the CLI's setup_logging stops propagation
    logger.addHandler(handler)
    try:
        with FailingServer().running() as server:
            monkeypatch.setenv("TEST_WRITER_KEY", "sk-test")
            backend = llm.OpenAIBackend(server.url, "scripted", api_key_env="TEST_WRITER_KEY", timeout_s=TIMEOUT_S)
            asker = llm.Asker(backend, llm.ResponseCache(tmp_path / "cache"), max_retries=1, backoff_s=0.01)
            w = LLMWriter(asker, "merr_reason", concurrency=3, failures_path=tmp_path / "out" / WRITER_FAILURES)
            res = dict(zip(markers, w.write(items), strict=True))
    finally:
        logger.removeHandler(handler)
    assert res["ok"].text and res["ok"].error is None
    assert all(res[m].text is None for m in markers[1:])  # a 1.3 MB reply is never taken as reasoning
    assert res["http500"].error.startswith("HTTP 500 from ") and "model overloaded" in res["http500"].error
    assert "not JSON" in res["garbage"].error and "upstream exploded" in res["garbage"].error
    assert res["huge"].error.startswith("reply too long (") and f"at most {MAX_REASONING_CHARS}" in res["huge"].error
    assert int(re.search(r"\((\d+) chars", res["huge"].error).group(1)) > 1_000_000
    assert res["slow"].error.startswith("timeout after 0.3s")
    assert res["short"].error.startswith("refused by the reasoning filter")
    lines = [line for line in lines if line.startswith("writer: clip ")]
    assert len(lines) == 5 and all("\n" not in line for line in lines)
    for m in markers[1:]:
        assert sum(f"clip_{m}:" in line and res[m].error in line for line in lines) == 1
    rows = [json.loads(line) for line in (tmp_path / "out" / WRITER_FAILURES).read_text(encoding="utf-8").splitlines()]
    assert {r["id"]: r["cause"] for r in rows} == {f"clip_{m}": res[m].error for m in markers[1:]}
    # the runaway reply is not kept on disk: the cache holds its first characters and says how long it was
    assert max(p.stat().st_size for p in (tmp_path / "cache").rglob("*.json")) < 64_000
    again = LLMWriter(llm.Asker(backend, llm.ResponseCache(tmp_path / "cache"), max_retries=0), "merr_reason")
    cached = again.write(items[3:4])[0]
    assert cached.cached and cached.text is None and re.search(r"a reply of 1\d{6} chars", cached.error)


class RejectingServer(ScriptedChatServer):
    """Every call: HTTP 401 (a wrong key), as a real endpoint answers it."""

    def respond(self, body, headers):  # noqa: ANN001, ANN201
        with self.lock:
            self.calls["401"] += 1
        return 401, b'{"error": {"message": "Incorrect API key provided"}}'


def test_a_wrong_key_is_said_once_and_asked_once(sample_dir, tmp_path, monkeypatch, capsys) -> None:
    """HTTP 401 is not retried, and the run stops calling: one error line, not one per clip and attempt."""
    from emollm.cli.main import main

    monkeypatch.setenv("TEST_WRITER_KEY", "sk-wrong")
    clips = tmp_path / "clips"
    clips.mkdir()
    names = ("a", "b", "c")
    for name in names:
        shutil.copy(sample_dir / "single_face.mp4", clips / f"{name}.mp4")
    subs = tmp_path / "subs.csv"
    subs.write_text("id,subtitle\n" + "".join(f"{n},Hello there.\n" for n in names), encoding="utf-8")
    labels = tmp_path / "labels.csv"
    labels.write_text("id,label\n" + "".join(f"{n},happy\n" for n in names), encoding="utf-8")
    out = tmp_path / "ds"
    with RejectingServer().running() as server:
        status = main(["build", str(clips), "--out", str(out), "--labels", str(labels), "--subtitles", str(subs),
                       "build.au_fps=1", "build.tone=none", "build.writer.backend=openai",
                       "build.writer.model=scripted", f"build.writer.base_url={server.url}",
                       "build.writer.api_key_env=TEST_WRITER_KEY", "build.writer.backoff_s=0.01",
                       "build.writer.max_retries=3", "build.writer.concurrency=1"])  # fmt: skip
    err = capsys.readouterr().err
    assert status == 2 and server.total() == 1  # no retry, and no call for the other clips
    said = [line for line in err.splitlines() if "HTTP 401 from" in line]
    assert len(said) == 2 and f"HTTP 401 from {server.url}/chat/completions" in said[0] and "API key" in said[0]
    assert said[1].startswith("every writer answer was unusable (3 of 3)")  # the run's one-line summary
    failures = [json.loads(line) for line in (out / "writer_failures.jsonl").open(encoding="utf-8")]
    assert sorted(f["id"] for f in failures) == list(names) and all("HTTP 401" in f["cause"] for f in failures)
