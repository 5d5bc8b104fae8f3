"""Builder formats: MERR txt/json import + export (round trips), LLaMA-Factory ShareGPT export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from data_builders.formats.merr import JSON_KEYS, export_merr, import_merr
from data_builders.formats.sharegpt import export_sharegpt
from data_builders.runner import build
from emollm import config
from emollm.cli.main import main

# A hand-made MERR sample in Emotion-LLaMA's layout: types and spellings as MERR has them (string peak
# index, float valence, lists of phrases), a json entry with a key emollm does not know, a txt line
# without a json entry and a json entry without a txt line.
MERR_TXT = """sample_00000047 31 happy 0.75
sample_00000153 67 worried -0.5
sample_00000200 12 neutral 0
"""
MERR_JSON = {
    "sample_00000047": {
        "AU_list": ["AU06", "AU12", "AU25"],
        "visual_prior_list": ["cheek raiser", "lip corner puller", "lips part"],
        "audio_prior_list": ["speaks quickly with a rising pitch"],
        "peak_index": "14",
        "peak_AU_list": ["AU06", "AU12"],
        "pseu_emotion": "happy",
        "caption": "This person in the video is smiling; the person's expression and actions include cheek raiser.",
        "text": "I got the job!",
        "smp_reason_caption": "Her raised cheeks and the excited words show that she feels happy about the news.",
        "source_db": "MER2023",
    },
    "sample_00000153": {
        "AU_list": ["AU01", "AU04", "AU15"],
        "visual_prior_list": ["inner brow raiser", "brow lowerer"],
        "audio_prior_list": [],
        "peak_index": 30,
        "peak_AU_list": ["AU04"],
        "pseu_emotion": "sad",
        "caption": "",
        "text": "",
        "smp_reason_caption": "",
    },
    "sample_00000999": {
        "AU_list": [],
        "visual_prior_list": [],
        "audio_prior_list": ["speaks softly"],
        "peak_index": 0,
        "peak_AU_list": [],
        "pseu_emotion": "neutral",
        "caption": "A calm person.",
        "text": "Okay.",
        "smp_reason_caption": "The flat voice suggests a neutral state.",
    },
}


def _merr_dir(root: Path) -> Path:
    d = root / "merr_in"
    d.mkdir()
    (d / "MERR.txt").write_text(MERR_TXT, encoding="utf-8")
    (d / "MERR.json").write_text(json.dumps(MERR_JSON, indent=2), encoding="utf-8")
    return d


def _records(out: Path) -> dict[str, dict]:
    return {json.loads(line)["id"]: json.loads(line) for line in (out / "annotations.jsonl").open(encoding="utf-8")}


def test_merr_to_ours_to_merr_keeps_every_field(tmp_path) -> None:
    res = import_merr(_merr_dir(tmp_path), tmp_path / "ds")
    assert res["records"] == 4 and res["txt_lines"] == 3 and res["json_entries"] == 3
    recs = _records(tmp_path / "ds")
    r = recs["sample_00000047"]
    assert r["label"] == "happy" and r["num_frames"] == 31 and r["valence"] == 0.75 and r["pseudo_label"] == "happy"
    assert r["peak_frame"]["index"] == 14 and r["aus_present_at_peak"] == ["AU06", "AU12"]
    assert r["expression"] == "cheek raiser, lip corner puller, lips part" and r["subtitle"] == "I got the job!"
    assert r["tone"] == "speaks quickly with a rising pitch" and r["reasoning"].startswith("Her raised cheeks")
    assert r["media"]["path"] == "video/sample_00000047.mp4" and r["granularity"] == "fine"
    assert recs["sample_00000153"]["subtitle"] is None and recs["sample_00000153"]["tone"] is None
    assert recs["sample_00000200"]["pseudo_label"] is None  # txt only
    assert recs["sample_00000999"]["label"] is None  # json only
    emotion = [json.loads(line) for line in (tmp_path / "ds" / "instructions" / "emotion.jsonl").open(encoding="utf-8")]
    assert {s["id"] for s in emotion} == set(recs)

    export_merr(tmp_path / "ds", tmp_path / "merr_out")
    assert (tmp_path / "merr_out" / "MERR.txt").read_text(encoding="utf-8") == MERR_TXT
    back = json.loads((tmp_path / "merr_out" / "MERR.json").read_text(encoding="utf-8"))
    assert back == MERR_JSON
    for name, entry in MERR_JSON.items():  # also the key order of each entry
        assert list(back[name]) == list(entry)


def test_merr_export_reflects_changes_and_cli(tmp_path) -> None:
    src = _merr_dir(tmp_path)
    assert main(["--quiet", "export", "--from", "merr", str(src), "--out", str(tmp_path / "ds")]) == 0
    # a review changes one label: the txt line and nothing else follows it
    path = tmp_path / "ds" / "annotations.jsonl"
    recs = [json.loads(line) for line in path.open(encoding="utf-8")]
    recs[1]["label"] = "sad"
    recs[0]["subtitle"] = "I got it!"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    assert main(["--quiet", "export", "--to", "merr", str(tmp_path / "ds"), "--out", str(tmp_path / "o")]) == 0
    lines = (tmp_path / "o" / "MERR.txt").read_text(encoding="utf-8").splitlines()
    assert lines == ["sample_00000047 31 happy 0.75", "sample_00000153 67 sad -0.5", "sample_00000200 12 neutral 0"]
    back = json.loads((tmp_path / "o" / "MERR.json").read_text(encoding="utf-8"))
    assert back["sample_00000047"]["text"] == "I got it!" and back["sample_00000047"]["peak_index"] == "14"
    assert back["sample_00000153"] == MERR_JSON["sample_00000153"]
    assert main(["--quiet", "export", "--to", "merr", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2


@pytest.fixture(scope="module")
def built(sample_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("formats")
    clips = root / "clips"
    clips.mkdir()
    shutil.copy(sample_dir / "single_face.mp4", clips / "face.mp4")
    shutil.copy(sample_dir / "no_face.mp4", clips / "noface.mp4")
    subs = root / "subs.csv"
    subs.write_text("id,subtitle\nface,I cannot believe it.\nnoface,Fine.\n", encoding="utf-8")
    labels = root / "labels.csv"
    labels.write_text("id,label\nface,surprise\n", encoding="utf-8")
    out = root / "ds"
    build(config.load(None, ["build.au_fps=1", f"data.subtitles_csv={subs}", f"data.labels_csv={labels}"]), clips, out)
    return out


def test_ours_to_merr_to_ours_keeps_what_merr_carries(built, tmp_path) -> None:
    export_merr(built, tmp_path / "m")
    ours = _records(built)
    lines = (tmp_path / "m" / "MERR.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == f"face {ours['face']['num_frames']} surprise nan"  # no valence in emollm: "nan"
    entry = json.loads((tmp_path / "m" / "MERR.json").read_text(encoding="utf-8"))["face"]
    assert set(entry) == set(JSON_KEYS)
    with np.load(built / ours["face"]["aus_file"], allow_pickle=False) as z:
        over = [str(n) for n, p in zip(z["au_names"], z["presence"][z["face"].astype(bool)].any(0), strict=True) if p]
    assert entry["AU_list"] == over and set(ours["face"]["aus_present_at_peak"]) <= set(over)
    import_merr(tmp_path / "m", tmp_path / "back", media_dir="", label_set="merr")
    back = _records(tmp_path / "back")
    assert set(back) == set(ours)
    for cid, rec in ours.items():
        b = back[cid]
        if rec["label"] or rec["pseudo_label"]:  # only labelled clips have a txt line (frames)
            assert b["num_frames"] == rec["num_frames"]
        for key in ("pseudo_label", "aus_present_at_peak", "expression", "tone", "coarse_description",
                    "subtitle", "reasoning"):
            assert b[key] == rec[key], (cid, key)
        assert b["label"] == (rec["label"] or rec["pseudo_label"])
        assert (b["peak_frame"] or {}).get("index") == (rec["peak_frame"] or {}).get("index")


def test_sharegpt_export(built, tmp_path) -> None:
    counts = export_sharegpt(built, tmp_path / "lf")
    ours = _records(built)
    emotion = json.loads((tmp_path / "lf" / "emollm_emotion.json").read_text(encoding="utf-8"))
    reason = json.loads((tmp_path / "lf" / "emollm_reason.json").read_text(encoding="utf-8"))
    assert counts == {"emotion": len(emotion), "reason": len(reason)}
    assert len(emotion) == sum(1 for r in ours.values() if r["label"] or r["pseudo_label"])
    assert [s["id"] for s in reason] == [i for i, r in ours.items() if r["granularity"] == "fine"]
    face = next(s for s in emotion if s["id"] == "face")
    human, gpt = face["conversations"]
    assert human["from"] == "human" and human["value"].startswith("<video><audio>") and "[emotion]" in human["value"]
    assert "I cannot believe it." in human["value"] and "<feature>" not in human["value"]
    assert gpt == {"from": "gpt", "value": "surprise"}
    assert face["videos"] == face["audios"] == [str((built / ours["face"]["media"]["path"]).resolve())]
    assert Path(face["videos"][0]).is_file()
    for s in reason:
        assert s["conversations"][1]["value"] == ours[s["id"]]["reasoning"] and "[reason]" in s["conversations"][0]["value"]
    info = json.loads((tmp_path / "lf" / "dataset_info.json").read_text(encoding="utf-8"))
    assert info["emollm_reason"]["formatting"] == "sharegpt" and info["emollm_reason"]["columns"]["videos"] == "videos"
    rel = export_sharegpt(built, tmp_path / "lf2", relative_to=built)
    assert rel == counts
    assert json.loads((tmp_path / "lf2" / "emollm_emotion.json").read_text(encoding="utf-8"))[0]["videos"][0].startswith("../")
