"""Builder review loop: export (CSV / JSONL / PNGs), import corrections (per-row errors), re-split, re-runs keep reviews."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from data_builders.review import export_review, import_corrections, review_reasons
from data_builders.runner import build
from emollm import config
from emollm.cli.main import main
from emollm.errors import UnsafePathError


def _records(out: Path) -> dict[str, dict]:
    return {json.loads(line)["id"]: json.loads(line) for line in (out / "annotations.jsonl").open(encoding="utf-8")}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]


@pytest.fixture(scope="module")
def built(sample_dir, tmp_path_factory) -> tuple[Path, Path, list[str]]:
    root = tmp_path_factory.mktemp("review")
    clips = root / "clips"
    clips.mkdir()
    for name in ("a", "b"):
        shutil.copy(sample_dir / "single_face.mp4", clips / f"{name}.mp4")
    shutil.copy(sample_dir / "no_face.mp4", clips / "c.mp4")
    subs = root / "subs.csv"
    subs.write_text("id,subtitle\na,I cannot believe it.\nb,What a day.\nc,Hello.\n", encoding="utf-8")
    over = ["build.au_fps=1", "build.tone=none", f"data.subtitles_csv={subs}"]
    out = root / "ds"
    build(config.load(None, over), clips, out)
    return clips, out, over


def test_review_reasons() -> None:
    rec = {"pseudo_label": "happy", "pseudo_label_confidence": 0.9, "label": None, "reasoning_filter": None}
    assert review_reasons(rec, 0.5) == []
    assert review_reasons(rec | {"pseudo_label_confidence": 0.3}, 0.5) == ["low_confidence"]
    assert review_reasons(rec | {"label": "sad"}, 0.5) == ["label_disputed"]
    filt = {"kept": False, "reason": "duplicate_of:x"}
    assert review_reasons(rec | {"reasoning_filter": filt}, 0.5) == ["reasoning_filtered:duplicate_of:x"]
    assert review_reasons(rec | {"flags": ["cues_disagree"]}, 0.5) == ["cues_disagree"]
    assert review_reasons({"pseudo_label": None, "label": None}, 0.5) == []  # nothing to review without a label


def test_export_csv_jsonl_thumbnails_and_au_charts(built, tmp_path) -> None:
    _, out, _ = built
    recs = _records(out)
    res = export_review(out, tmp_path / "rv", threshold=1.01)  # every pseudo-labelled clip is "low confidence"
    want = sorted(i for i, r in recs.items() if r["pseudo_label"])
    assert want and sorted(r["id"] for r in res.rows) == want
    rows = list(csv.DictReader((tmp_path / "rv" / "review.csv").open(encoding="utf-8")))
    assert [r["id"] for r in rows] == [r["id"] for r in _jsonl(tmp_path / "rv" / "review.jsonl")] == [r["id"] for r in res.rows]
    for row in rows:
        assert row["reasons"].startswith("low_confidence") and row["label"] == recs[row["id"]]["pseudo_label"]
        assert row["cue_votes"].startswith("au_rules:")  # each cue's vote, for the reviewer to weigh
        with Image.open(tmp_path / "rv" / row["thumbnail"]) as im:
            assert max(im.size) == 320 and im.mode == "RGB"
        with Image.open(tmp_path / "rv" / row["au_chart"]) as im:
            assert im.size[0] > 200
    # the thumbnail is the peak frame: compare with a decode at the record's peak index
    from emollm.media import read_frames

    a = recs["a"]
    frame = read_frames(out / a["media"]["path"], [a["peak_frame"]["index"]], max_side=320).array[0]
    with Image.open(tmp_path / "rv" / "thumbs" / "a_peak.png") as im:
        assert (abs(frame.astype(int) - __import__("numpy").asarray(im).astype(int)).max()) == 0
    # at the default threshold only genuinely low ones are exported
    low = [i for i, r in recs.items() if r["pseudo_label"] and r["pseudo_label_confidence"] < 0.5]
    assert sorted(r["id"] for r in export_review(out, tmp_path / "rv2", images=False).rows) == sorted(low)


def test_import_errors_resplit_and_rebuild_keeps_reviews(built, tmp_path) -> None:
    clips, src, over = built
    out = tmp_path / "ds"
    shutil.copytree(src, out)
    before = _records(out)
    old = before["a"]["pseudo_label"]
    new = "sad" if old != "sad" else "angry"
    assert before["a"]["granularity"] == "fine"  # the template writer wrote a reasoning for the pseudo-label
    corr = tmp_path / "corrections.csv"
    corr.write_text(f"id,label,note,reviewer\na,{new},looks {new} to me,ann\nzzz,happy,,\nb,ecstatic,,\nb,,,\n",
                    encoding="utf-8")
    res = import_corrections(out, corr, now="2026-01-01T00:00:00+00:00")
    assert res.applied == ["a"] and res.rows == 4
    errs = _jsonl(out / "review_errors.jsonl")
    assert [(e["row"], e["id"]) for e in errs] == [(2, "zzz"), (3, "b"), (4, "b")]
    assert "unknown id" in errs[0]["error"] and "not in the label set" in errs[1]["error"] and errs[2]["error"] == "missing label"
    a = _records(out)["a"]
    assert a["label"] == new
    assert a["review"]["state"] == "corrected" and a["review"]["by"] == "ann" and a["review"]["previous_label"] == old
    assert a["review"]["note"] == f"looks {new} to me" and a["review"]["at"] == "2026-01-01T00:00:00+00:00"
    # re-split: the reasoning was written for the old label -> filtered, coarse; instructions regenerated
    assert a["reasoning_filter"]["kept"] is False and a["granularity"] == "coarse" == a["split"]
    emotion = {s["id"]: s for s in _jsonl(out / "instructions" / "emotion.jsonl")}
    assert emotion["a"]["target"] == new
    assert "a" not in {s["id"] for s in _jsonl(out / "instructions" / "reason.jsonl")}
    assert _records(out)["b"]["review"]["state"] == "unreviewed"

    # build again (same clips, same config): the review and the corrected label are still there, and the
    # writer now reasons for the corrected label -> fine again
    build(config.load(None, over), clips, out)
    a2 = _records(out)["a"]
    assert a2["label"] == new and a2["review"]["state"] == "corrected" and a2["review"]["by"] == "ann"
    assert a2["provenance"]["label"]["source"] == "review"
    assert a2["provenance"]["reasoning"]["label"] == new and a2["granularity"] == "fine"
    assert {s["id"]: s for s in _jsonl(out / "instructions" / "emotion.jsonl")}["a"]["target"] == new

    # a second review round keeps the history; accepting keeps the label
    corr2 = tmp_path / "c2.jsonl"
    corr2.write_text(json.dumps({"id": "a", "label": new}) + "\n", encoding="utf-8")
    import_corrections(out, corr2, reviewer="bob")
    a3 = _records(out)["a"]
    assert a3["review"]["state"] == "accepted" and a3["review"]["by"] == "bob" and len(a3["review"]["history"]) == 2
    assert a3["review"]["previous_label"] == old


def test_review_cli(built, tmp_path, capsys) -> None:
    _, src, _ = built
    out = tmp_path / "ds"
    shutil.copytree(src, out)
    assert main(["--quiet", "review", "export", str(out), "--out", str(tmp_path / "rv"), "--threshold", "1.01"]) == 0
    rows = list(csv.DictReader((tmp_path / "rv" / "review.csv").open(encoding="utf-8")))
    rows[0]["label"] = "surprise"
    with (tmp_path / "edited.csv").open("w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows([rows[0], {**rows[0], "id": "nope"}])
    assert main(["--quiet", "review", "import", str(out), str(tmp_path / "edited.csv"), "--reviewer", "cli"]) == 2
    err = capsys.readouterr().err
    assert "row 2 (nope): unknown id" in err
    rec = _records(out)[rows[0]["id"]]
    assert rec["label"] == "surprise" and rec["review"]["by"] == "cli"
    bad = tmp_path / "bad.csv"
    bad.write_text("clip,emotion\na,happy\n", encoding="utf-8")
    assert main(["--quiet", "review", "import", str(out), str(bad)]) == 2
    assert "needs the columns id,label" in capsys.readouterr().err


@pytest.fixture(scope="module")
def built_odd_ids(sample_dir, tmp_path_factory) -> Path:
    """Clips in a subfolder and with spaces / unicode in their names (ids the builder accepts)."""
    root = tmp_path_factory.mktemp("review_ids")
    clips = root / "clips"
    (clips / "sub").mkdir(parents=True)
    shutil.copy(sample_dir / "single_face.mp4", clips / "sub" / "clip1.mp4")
    shutil.copy(sample_dir / "single_face.mp4", clips / "sub" / "été à Zürich 1.mp4")
    out = root / "ds"
    build(config.load(None, ["build.au_fps=1", "build.tone=none"]), clips, out)
    return out


def test_review_export_import_with_subfolder_and_unicode_ids(built_odd_ids, tmp_path) -> None:
    src = built_odd_ids
    out = tmp_path / "ds"
    shutil.copytree(src, out)
    recs = _records(out)
    assert set(recs) == {"sub/clip1", "sub/été à Zürich 1"}
    # export from the built dataset (its media paths are relative to it), import into the copy
    assert main(["--quiet", "review", "export", str(src), "--out", str(tmp_path / "rv"), "--threshold", "1.01"]) == 0
    rows = list(csv.DictReader((tmp_path / "rv" / "review.csv").open(encoding="utf-8", newline="")))
    assert sorted(r["id"] for r in rows) == sorted(recs)
    for row in rows:
        assert row["thumbnail"] == f"thumbs/{row['id']}_peak.png" and not row["thumbnail_error"]
        with Image.open(tmp_path / "rv" / row["thumbnail"]) as im:
            assert max(im.size) == 320
        assert row["au_chart"] == f"thumbs/{row['id']}_aus.png" and (tmp_path / "rv" / row["au_chart"]).is_file()
    assert (tmp_path / "rv" / "thumbs" / "sub" / "été à Zürich 1_peak.png").is_file()
    assert [r["id"] for r in _jsonl(tmp_path / "rv" / "review.jsonl")] == [r["id"] for r in rows]
    # edit the exported CSV itself and import it: the ids (spaces, unicode, subfolder) match their records
    for row in rows:
        row["label"] = "surprise"
    with (tmp_path / "edited.csv").open("w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    res = import_corrections(out, tmp_path / "edited.csv", reviewer="ann")
    assert sorted(res.applied) == sorted(recs) and not res.errors
    for rec in _records(out).values():
        assert rec["label"] == "surprise" and rec["review"]["by"] == "ann"


def test_thumb_path_refuses_ids_leaving_the_folder() -> None:
    from data_builders.review import thumb_path

    assert thumb_path("sub/a b", "_peak.png") == "thumbs/sub/a b_peak.png"
    for bad in ("../x", "/abs", "a/../../x", "", ".", "a/\x00"):
        with pytest.raises(UnsafePathError):
            thumb_path(bad, "_peak.png")


def test_review_export_of_a_traversal_id_writes_nothing_outside(built, tmp_path, capsys) -> None:
    # someone else's annotations.jsonl: a record id that walks out of --out (and one absolute)
    _, src, _ = built
    ds = tmp_path / "data" / "ds"
    shutil.copytree(src, ds, ignore=shutil.ignore_patterns("review*"))
    recs = [json.loads(line) for line in (ds / "annotations.jsonl").open(encoding="utf-8")]
    for rec in recs:  # the copy reads the same clips
        rec["media"] = {**rec["media"], "path": os.path.relpath(src / rec["media"]["path"], ds)}
    evil = [dict(recs[0], id="../../../../outside/x"), dict(recs[0], id="/tmp/abs_evil")]
    (ds / "annotations.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs + evil),
                                          encoding="utf-8")  # fmt: skip
    out = tmp_path / "data" / "ds" / "rv" / "a" / "b"
    before = {p for p in tmp_path.rglob("*")}
    assert main(["--quiet", "review", "export", str(ds), "--out", str(out), "--threshold", "1.01"]) == 0
    written = {p for p in tmp_path.rglob("*")} - before
    assert written and all(p == out or out in p.parents or p in out.parents for p in written), \
        sorted(str(p) for p in written if out not in p.parents)  # fmt: skip
    assert not list(tmp_path.rglob("x_peak.png")) and not os.path.exists("/tmp/abs_evil_peak.png")
    rows = {r["id"]: r for r in csv.DictReader((out / "review.csv").open(encoding="utf-8", newline=""))}
    for rec in evil:  # reported, not dropped: the row is there and says why it has no picture
        row = rows[rec["id"]]
        assert row["thumbnail"] == "" and row["au_chart"] == "" and "UnsafePathError" in row["thumbnail_error"]
        assert repr(rec["id"]) in row["thumbnail_error"]
    assert any(r["thumbnail"] for r in rows.values())  # the honest records still get theirs
