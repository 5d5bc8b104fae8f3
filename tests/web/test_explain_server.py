"""`emollm serve`: the explain page's API (upload -> label, streamed answer, cues, frames, timings), its
refusals (bad files, busy, names outside --clips, no token), one model load per server, the CLI, and
one real-browser run of the page."""

from __future__ import annotations

import base64
import functools
import io
import json
import random
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("multipart")

from fastapi.testclient import TestClient  # noqa: E402

import emollm  # noqa: E402
from emollm import config as cfglib  # noqa: E402
from emollm.cli import main as cli  # noqa: E402
from emollm.errors import ConfigError  # noqa: E402
from emollm.web import install_guards, running  # noqa: E402
from emollm.web.explain import explain_app, explain_app_for  # noqa: E402

ANSWER_TOKENS = 16


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A tiny_cpu run dir (backbone + LoRA + media modules + processor + resolved config), as train.py
    writes one, not trained: its greedy answers are many words long (a run overfit on the labels
    answers one word, which leaves nothing to stream)."""
    from emollm.modeling.factory import build_model_and_processor, save_run
    from emollm.testing.tiny import build_tiny_models

    build_tiny_models()
    cfg = cfglib.load("tiny_cpu", ["media.num_frames=4", f"predict.max_new_tokens={ANSWER_TOKENS}"])
    torch.manual_seed(0)
    model, processor = build_model_and_processor(cfg)
    out = save_run(model, processor, tmp_path_factory.mktemp("serve") / "run")
    cfglib.save_resolved(cfg, out, command="test")
    return out


@pytest.fixture(scope="module")
def explainer(run_dir):
    return emollm.load(run_dir, device="cpu")


@pytest.fixture(scope="module")
def client(explainer):
    app = explain_app_for(explainer)
    install_guards(app, None)  # as `emollm.web.serve` does
    with TestClient(app) as c:
        yield c


@pytest.fixture
def scratch(monkeypatch):
    """The temporary folders the server makes for uploads during a test."""
    made: list[Path] = []
    real = tempfile.mkdtemp

    def spy(*args, **kwargs):
        made.append(Path(real(*args, **kwargs)))
        return str(made[-1])

    monkeypatch.setattr(tempfile, "mkdtemp", spy)
    return made


def upload(path: Path, name: str | None = None) -> dict:
    return {"file": (name or path.name, path.read_bytes(), "application/octet-stream")}


def events_of(response) -> list[tuple[str, dict]]:
    """The Server-Sent Events of a streamed answer, in order."""
    out = []
    for block in response.text.split("\n\n"):
        lines = [line for line in block.splitlines() if line and not line.startswith(":")]
        if lines:
            event = next(line[6:].strip() for line in lines if line.startswith("event:"))
            data = "\n".join(line[5:].lstrip() for line in lines if line.startswith("data:"))
            out.append((event, json.loads(data)))
    return out


def decode_image(src: str):
    from PIL import Image

    head, data = src.split(",", 1)
    assert head == "data:image/jpeg;base64"
    return Image.open(io.BytesIO(base64.b64decode(data)))


# ------------------------------------------------------------------------------------------ the streamer
def test_explainer_streams_the_same_answer_it_returns(explainer, sample_dir):
    """inference.py's `streamer` hook: the chunks are the answer, and the answer does not change."""
    from transformers import TextIteratorStreamer

    clip = sample_dir / "single_face.mp4"
    plain = explainer.explain(clip, task="reason")
    streamer = TextIteratorStreamer(explainer.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    seen: list = []
    box: dict = {}
    worker = threading.Thread(target=lambda: box.update(r=explainer.explain(
        clip, task="reason", streamer=streamer, on_analysis=lambda result, done: seen.append((result.id, done)))))
    worker.start()
    chunks = [c for c in streamer if c]
    worker.join()
    assert len(chunks) > 3 and "".join(chunks).strip() == plain.text == box["r"].text
    assert box["r"].label == plain.label and box["r"].cues == plain.cues
    (clip_id, done), = seen
    assert clip_id == "single_face" and done.analysis.frames is not None and done.record["peak_frame"]
    with pytest.raises(ConfigError, match="one clip"):
        explainer.explain_many([clip, clip], streamer=streamer)


def test_a_clip_that_fails_ends_the_stream(explainer, tmp_path):
    from transformers import TextIteratorStreamer

    bad = tmp_path / "bad.mp4"
    bad.write_bytes(random.Random(0).randbytes(4000))
    streamer = TextIteratorStreamer(explainer.processor.tokenizer, skip_prompt=True, timeout=60)
    (result,) = explainer.explain_many([bad], streamer=streamer)
    assert result.error and "".join(streamer) == ""  # ended (empty), not left waiting


# ------------------------------------------------------------------------------------------ the API
def test_upload_gives_label_answer_cues_timings_and_images(client, explainer, sample_dir, scratch):
    clip = sample_dir / "single_face.mp4"
    response = client.post("/api/explain", files=upload(clip, "my clip.mp4"), data={"task": "reason"})
    assert response.status_code == 200, response.text
    got = response.json()
    expected = explainer.explain(clip, task="reason")
    assert got["clip"] == "my clip.mp4" and got["id"] == "my clip" and got["task"] == "reason"
    assert got["text"] == got["reasoning"] == expected.text and got["label"] == expected.label
    assert got["text"] and got["error"] is None
    cues = got["cues"]
    assert set(cues["modalities_fed"]) == set(explainer.model.config.modalities) and not cues["modalities_absent"]
    assert cues["aus_present_at_peak"] and cues["peak_frame"] == expected.cues["peak_frame"]
    assert cues["pseudo_label"] == expected.cues["pseudo_label"] and "<|emo_" in cues["prompt"]
    assert set(got["timings_s"]) == {"analyse", "encoders", "generate"} and got["wall_s"] > 0
    images = got["images"]
    assert images["peak"]["is_peak"] and images["peak"]["frame"] == cues["peak_frame"]
    peak = decode_image(images["peak"]["src"])
    assert peak.format == "JPEG" and max(peak.size) <= 640
    size = explainer.cfg.media.face.crop_size
    assert decode_image(images["face"]["src"]).size == (min(size, 224),) * 2
    assert 1 <= len(images["frames"]) <= 8 and len(images["crops"]) == sum(f["face"] for f in images["frames"])
    assert got["feeds"]["crops"] == ["face"]
    # the upload went to a server-named file in a fresh folder, gone once answered; no trace of it in the answer
    (folder,) = scratch
    assert not folder.exists() and str(folder) not in response.text and "upload.mp4" not in response.text


def test_a_still_and_a_faceless_clip(client, sample_dir):
    still = client.post("/api/explain", files=upload(sample_dir / "single_face.jpg"), data={"task": "emotion"}).json()
    assert still["task"] == "emotion" and still["images"]["peak"]["src"] and len(still["images"]["frames"]) == 1
    faceless = client.post("/api/explain", files=upload(sample_dir / "no_face.mp4")).json()
    assert faceless["task"] == "reason" and "face" not in faceless["images"] and faceless["images"]["crops"] == []
    assert not faceless["images"]["peak"]["is_peak"] and "face" in faceless["cues"]["modalities_absent"]


def test_the_stream_is_the_answer_chunk_by_chunk(client, explainer, sample_dir, scratch):
    clip = sample_dir / "single_face.mp4"
    response = client.post("/api/explain/stream", files=upload(clip), data={"task": "reason"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = events_of(response)
    kinds = [kind for kind, _ in events]
    assert kinds[:2] == ["start", "analysed"] and kinds[-1] == "result"
    assert set(kinds[2:-1]) == {"token"}
    chunks = [data["text"] for kind, data in events if kind == "token"]
    result = events[-1][1]
    expected = explainer.explain(clip, task="reason")  # greedy: the same answer without a streamer
    assert len(chunks) >= 3 and "".join(chunks).strip() == result["text"] == expected.text
    assert result["label"] == expected.label and result["stream"]["chunks"] == len(chunks)
    assert set(result["timings_s"]) == {"analyse", "encoders", "generate"} and result["cues"]["modalities_fed"]
    assert decode_image(events[1][1]["images"]["peak"]["src"]).format == "JPEG"
    assert not any(folder.exists() for folder in scratch)


def test_the_answer_streams_while_it_is_generated_and_a_second_clip_is_told_busy(explainer, sample_dir,
                                                                                  monkeypatch):
    import httpx

    forward = explainer.model.forward

    @functools.wraps(forward)  # generate reads forward's signature
    def slow(*args, **kwargs):  # 16 decode steps of 0.1 s: the answer takes long enough to watch
        time.sleep(0.1)
        return forward(*args, **kwargs)

    monkeypatch.setattr(explainer.model, "forward", slow)
    app = explain_app_for(explainer)
    clip = sample_dir / "single_face.jpg"
    with running(app) as url, httpx.Client(base_url=url, timeout=60) as http:
        with http.stream("POST", "/api/explain/stream", files=upload(clip)) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            while next(lines) != "event: token":
                pass
            first = json.loads(next(lines).removeprefix("data: "))["text"]
            # mid-answer: the model is still generating, and says so
            assert http.get("/api/info").json()["busy"] is True
            other = http.post("/api/explain", files=upload(clip))
            assert other.status_code == 503 and other.json()["error"].startswith("busy")
            assert other.json()["hint"] and other.headers["retry-after"]
            rest = "\n".join(lines)
        assert first and "event: result" in rest and rest.count("event: token") >= 2
        assert http.get("/api/info").json()["busy"] is False
        assert http.post("/api/explain", files=upload(clip)).status_code == 200


@pytest.fixture(scope="module")
def bad_files(sample_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad_uploads")
    files = {"notes.txt": b"not a clip at all", "empty.mp4": b"", "random.mp4": random.Random(0).randbytes(50_000)}
    video = (sample_dir / "single_face.mp4").read_bytes()
    files["truncated.mp4"] = video[: len(video) * 4 // 10]
    for name, data in files.items():
        (root / name).write_bytes(data)
    return {name: root / name for name in files}


@pytest.mark.parametrize(("name", "status", "says"), [
    ("notes.txt", 415, "notes.txt: not a clip type emollm reads (.txt)"),
    ("empty.mp4", 400, "empty.mp4: the file is empty"),
    ("random.mp4", 422, "random.mp4: cannot open"),
    ("truncated.mp4", 422, "truncated.mp4: "),
])
def test_a_bad_file_is_a_clear_json_error(client, bad_files, name, status, says, scratch):
    response = client.post("/api/explain", files=upload(bad_files[name]), data={"task": "emotion"})
    body = response.json()
    assert response.status_code == status and body["error"].startswith(says), body
    assert body["hint"] and "Traceback" not in response.text and "emollm-serve-" not in response.text
    assert not any(folder.exists() for folder in scratch)


def test_a_bad_file_on_the_stream_ends_it_with_the_error(client, bad_files, scratch):
    response = client.post("/api/explain/stream", files=upload(bad_files["random.mp4"]))
    assert response.status_code == 200  # the stream had begun: the error is its last event
    (kind, error), = [e for e in events_of(response) if e[0] != "start"]
    assert kind == "error" and error["error"].startswith("random.mp4: ") and error["hint"] and error["status"] == 422
    refused = client.post("/api/explain/stream", files=upload(bad_files["notes.txt"]))
    assert refused.status_code == 415 and refused.json()["hint"]  # refused before it began: plain JSON
    assert not any(folder.exists() for folder in scratch)


def test_requests_the_page_never_sends(client):
    assert client.post("/api/explain", data={"task": "emotion"}).json()["error"] == "no clip given"
    bad_task = client.post("/api/explain", data={"clip": "x.mp4", "task": "poem"})
    assert bad_task.status_code == 400 and "unknown task 'poem'" in bad_task.json()["error"]
    assert client.post("/api/explain", content=b"{}", headers={"content-type": "application/json"}).status_code == 415


def test_an_upload_over_the_limit_is_refused(explainer, sample_dir, scratch):
    app = explain_app_for(explainer, max_upload_mb=0.05)  # 51 kB
    install_guards(app, None)
    with TestClient(app) as small:
        assert small.get("/api/info").json()["max_upload_mb"] == 0.05
        # 1.6 MB: refused from its Content-Length, before the body is read (nothing saved)
        response = small.post("/api/explain", files=upload(sample_dir / "WolfgangLanger_Pexels.mp4"))
        assert response.status_code == 413 and "0.05 MB" in response.json()["error"]
        assert "--max-upload-mb" in response.json()["hint"] and not scratch
        # 208 kB: within the form's allowance, over the limit: counted as it is saved, and dropped
        for endpoint in ("/api/explain", "/api/explain/stream"):
            response = small.post(endpoint, files=upload(sample_dir / "single_face.mp4"))
            assert response.status_code == 413 and "0.05 MB" in response.json()["error"]
    assert len(scratch) == 2 and not any(folder.exists() for folder in scratch)


def test_one_model_load_serves_every_request(run_dir, sample_dir, monkeypatch):
    import emollm.inference as inference

    loads = []
    real = inference.load_model

    def counted(*args, **kwargs):
        loads.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(inference, "load_model", counted)
    app = explain_app(run_dir, device="cpu", clips_dir=sample_dir)
    assert len(loads) == 1
    with TestClient(app) as c:
        assert c.post("/api/explain", files=upload(sample_dir / "single_face.jpg")).status_code == 200
        assert c.post("/api/explain", data={"clip": "single_face.jpg", "task": "emotion"}).status_code == 200
        assert c.post("/api/explain/stream", data={"clip": "no_face.mp4"}).status_code == 200
        assert c.get("/api/info").json()["load_s"] > 0
    assert len(loads) == 1


def test_clips_are_picked_by_name_from_the_folder_only(explainer, sample_dir, tmp_path):
    folder = tmp_path / "clips"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(sample_dir / "single_face.jpg", folder / "face.jpg")
    shutil.copy(sample_dir / "no_face.mp4", folder / "Street.MP4")
    shutil.copy(sample_dir / "single_face.jpg", folder / "sub" / "inner.jpg")
    shutil.copy(sample_dir / "single_face.jpg", folder / ".hidden.jpg")
    (folder / "notes.txt").write_text("not a clip")
    (tmp_path / "outside.jpg").write_bytes((sample_dir / "single_face.jpg").read_bytes())
    app = explain_app_for(explainer, clips_dir=folder)
    install_guards(app, None)
    with TestClient(app) as c:
        listed = c.get("/api/clips").json()
        assert listed["folder"] and [(x["name"], x["kind"]) for x in listed["clips"]] == [("face.jpg", "image"),
                                                                                           ("Street.MP4", "video")]
        assert c.get("/api/clips/face.jpg").content == (folder / "face.jpg").read_bytes()
        picked = c.post("/api/explain", data={"clip": "face.jpg", "task": "emotion"})
        assert picked.status_code == 200 and picked.json()["clip"] == "face.jpg" and picked.json()["id"] == "face"
        for name in ("../outside.jpg", "../x", "sub/inner.jpg", "/etc/passwd", ".hidden.jpg", "notes.txt",
                     str(folder / "face.jpg")):
            refused = c.post("/api/explain", data={"clip": name})
            assert refused.status_code == 404 and refused.json()["error"].startswith("no clip named"), name
        for path in ("/api/clips/..%2Foutside.jpg", "/api/clips/.hidden.jpg", "/api/clips/notes.txt"):
            assert c.get(path).status_code == 404, path
        both = c.post("/api/explain", data={"clip": "face.jpg"}, files=upload(sample_dir / "single_face.jpg"))
        assert both.status_code == 400
    # without --clips: no list, and a name is refused
    app = explain_app_for(explainer)
    install_guards(app, None)
    with TestClient(app) as c:
        assert c.get("/api/clips").json() == {"clips": [], "folder": False}
        refused = c.post("/api/explain", data={"clip": "face.jpg"})
        assert refused.status_code == 404 and "--clips" in refused.json()["hint"]


def test_a_token_guards_every_request(explainer, sample_dir):
    token = "s3cret-token-for-tests"
    app = explain_app_for(explainer)
    install_guards(app, token)
    with TestClient(app) as c:
        for method, path in (("get", "/"), ("get", "/api/info"), ("get", "/static/explain.js"),
                             ("post", "/api/explain"), ("post", "/api/explain/stream")):
            response = getattr(c, method)(path)
            assert response.status_code == 401 and response.json()["error"] == "a token is required", path
        assert c.get("/api/info", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert c.get("/api/info", headers={"Authorization": "Bearer wrong-token-of-length"}).status_code == 401
        page = c.get(f"/?token={token}")  # the URL the server prints: then a cookie
        assert page.status_code == 200 and "explain.js" in page.text
        answer = c.post("/api/explain", files=upload(sample_dir / "single_face.jpg"), data={"task": "emotion"})
        assert answer.status_code == 200 and answer.json()["text"]


def test_the_page_and_only_its_own_files(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'src="static/explain.js"' in page.text and "http" not in page.text.split("<body")[0]  # no CDN
    for name, kind in (("explain.js", "javascript"), ("explain.css", "text/css")):
        response = client.get(f"/static/{name}")
        assert response.status_code == 200 and kind in response.headers["content-type"]
    for name in ("review.js", "explain.html", "..%2Fexplain.py", "__init__.py"):
        assert client.get(f"/static/{name}").status_code == 404, name
    assert client.get("/docs").status_code == 404 and client.get("/openapi.json").status_code == 404
    info = client.get("/api/info").json()
    assert info["tasks"] == ["emotion", "reason"] and info["streaming"] and not info["busy"] and "happy" in info["label_set"]


# ------------------------------------------------------------------------------------------ the command
def test_serve_command_loads_the_run_and_serves_it(run_dir, sample_dir, monkeypatch):
    import emollm.web as web

    served = {}
    monkeypatch.setattr(web, "serve", lambda app, **kw: served.update(app=app, **kw))
    code = cli.main(["--quiet", "serve", "--model", str(run_dir), "--clips", str(sample_dir), "--device", "cpu",
                     "--host", "0.0.0.0", "--port", "8123", "--max-new-tokens", "3", "--max-upload-mb", "5"])
    assert code == 0 and served["host"] == "0.0.0.0" and served["port"] == 8123 and served["what"] == "explain"
    assert len(served["token"]) >= 16  # off loopback: a token, generated
    service = served["app"].state.service
    assert service.max_upload_mb == 5 and service.generation == {"max_new_tokens": 3}
    assert service.clips_dir == sample_dir


def test_serve_command_errors_are_one_line(tmp_path, run_dir, capsys):
    assert cli.main(["serve", "--model", str(tmp_path / "nope")]) == 2
    assert "--model: no such folder" in capsys.readouterr().err
    assert cli.main(["serve", "--model", str(run_dir), "--clips", str(tmp_path / "none")]) == 2
    assert "--clips: no such folder" in capsys.readouterr().err
    assert cli.main(["serve", "--model", str(run_dir), "--token", "short"]) == 2
    err = capsys.readouterr().err
    assert "at least 16 characters" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------ a real browser
@pytest.mark.slow
def test_the_page_in_a_browser(chromium, artifacts, explainer, sample_dir, bad_files):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    clip = sample_dir / "single_face.mp4"
    expected = explainer.explain(clip, task="reason")
    app = explain_app_for(explainer, clips_dir=sample_dir)
    driver = chromium
    driver.set_window_size(1360, 1500)
    wait = WebDriverWait(driver, 120)
    with running(app) as url:
        driver.get(url + "/")
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "idle")
        assert not driver.find_element(By.ID, "clips-block").get_attribute("hidden")
        driver.find_element(By.ID, "file").send_keys(str(clip))
        wait.until(lambda d: d.find_element(By.ID, "go").is_enabled())
        driver.save_screenshot(str(artifacts / "explain_chosen.png"))
        driver.find_element(By.ID, "go").click()
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("done", "error"))
        assert driver.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done", \
            driver.find_element(By.ID, "message").text
        driver.save_screenshot(str(artifacts / "explain_answer.png"))
        label = driver.find_element(By.ID, "label")
        reasoning = driver.find_element(By.ID, "reasoning")
        assert label.get_attribute("data-label") == (expected.label or "none")
        assert reasoning.get_attribute("textContent") == expected.text
        assert int(reasoning.get_attribute("data-chunks")) >= 3 and reasoning.get_attribute("data-streamed-matches") == "1"
        assert driver.find_element(By.ID, "peak").get_attribute("naturalWidth") != "0"
        assert len(driver.find_elements(By.CSS_SELECTOR, "#frames img")) == 4
        cues = driver.find_element(By.ID, "cues").text
        assert "AU12" in cues and "Modalities fed" in cues
        assert [r.get_attribute("data-stage") for r in driver.find_elements(By.CSS_SELECTOR, "#timings .row")] == [
            "analyse", "encoders", "generate"]

        # a clip from the folder, task emotion
        Select(driver.find_element(By.ID, "clips")).select_by_value("single_face.jpg")
        driver.find_element(By.CSS_SELECTOR, "input[name='task'][value='emotion']").click()
        driver.find_element(By.ID, "go").click()
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("done", "error"))
        still = explainer.explain(sample_dir / "single_face.jpg", task="emotion")
        assert driver.find_element(By.ID, "reasoning").get_attribute("textContent") == still.text
        driver.save_screenshot(str(artifacts / "explain_folder_clip.png"))

        # another clip is being explained: the page says busy, and the next try works
        service = app.state.service
        service.lock.acquire()
        try:
            driver.find_element(By.ID, "go").click()
            wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "busy")
            assert "busy" in driver.find_element(By.ID, "message").text
            driver.save_screenshot(str(artifacts / "explain_busy.png"))
        finally:
            service.lock.release()
        driver.find_element(By.ID, "go").click()
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done")
        assert not driver.find_element(By.ID, "message").is_displayed()

        # a file that is no clip: the message and its hint, no trace
        driver.find_element(By.ID, "file").send_keys(str(bad_files["random.mp4"]))
        driver.find_element(By.ID, "go").click()
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "error")
        message = driver.find_element(By.ID, "message").text
        assert "random.mp4: cannot open" in message and "complete, playable" in message
        assert "Traceback" not in driver.page_source
        driver.save_screenshot(str(artifacts / "explain_error.png"))
