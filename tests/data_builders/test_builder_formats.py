"""Builder formats: MERR txt/json import + export (round trips), LLaMA-Factory ShareGPT export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from data_builders.formats.merr import LAYOUT, export_merr, import_merr
from data_builders.formats.sharegpt import export_sharegpt
from data_builders.runner import build
from emollm import config
from emollm.cli.main import main
from emollm.errors import RecordSchemaError

# A small MERR sample written exactly as MER-Factory's export.py writes it (``--export_format emotion-llama``
# and ``emotion-llama-fine``): MERR_{coarse,fine}_grained.{txt,json}, txt lines "name frames label" joined
# with "\n" (no final newline), json.dump(indent=4, ensure_ascii=False), audio_prior_list a string,
# peak_index a string holding OpenFace's 1-based frame number ("0": no peak), fine entries with
# smp_reason_caption then text. Plus what a hand-edited release has: an unknown key, a Chinese subtitle,
# a clip only in the coarse files and a json entry without a txt line.
COARSE_JSON = {
    "sample_00000047": {
        "AU_list": ["AU06", "AU12", "AU25"],
        "visual_prior_list": ["cheek raiser", "lip corner puller", "lips part"],
        "audio_prior_list": "The speaker talks quickly with a rising pitch",
        "peak_index": "15",
        "peak_AU_list": ["AU06", "AU12"],
        "pseu_emotion": "happy",
        "caption": "This person in the video is smiling; the person's expression and actions include cheek raiser.",
    },
    "sample_00000153": {
        "AU_list": ["AU01", "AU04", "AU15"],
        "visual_prior_list": ["inner brow raiser", "brow lowerer"],
        "audio_prior_list": "",
        "peak_index": "31",
        "peak_AU_list": ["AU04"],
        "pseu_emotion": "sad",
        "caption": "",
        "source_db": "MER2023",
    },
    "sample_00000200": {
        "AU_list": [],
        "visual_prior_list": [],
        "audio_prior_list": "",
        "peak_index": "0",
        "peak_AU_list": [],
        "pseu_emotion": "neutral",
        "caption": "A calm person.",
    },
    "sample_00000999": {
        "AU_list": [],
        "visual_prior_list": [],
        "audio_prior_list": "speaks softly",
        "peak_index": "1",
        "peak_AU_list": [],
        "pseu_emotion": "neutral",
        "caption": "A calm person.",
    },
}
COARSE_TXT = "sample_00000047 31 happy\nsample_00000153 67 worried\nsample_00000200 12 neutral"
FINE_JSON = {
    "sample_00000153": {
        "AU_list": ["AU01", "AU04", "AU15"],
        "visual_prior_list": ["inner brow raiser", "brow lowerer"],
        "audio_prior_list": "",
        "peak_index": "31",
        "peak_AU_list": ["AU04"],
        "pseu_emotion": "sad",
        "smp_reason_caption": "Her lowered brows and the words show that she is worried about the result.",
        "text": "我不知道结果会怎样。",
    },
    "sample_00000047": {
        "AU_list": ["AU06", "AU12", "AU25"],
        "visual_prior_list": ["cheek raiser", "lip corner puller", "lips part"],
        "audio_prior_list": "The speaker talks quickly with a rising pitch",
        "peak_index": "15",
        "peak_AU_list": ["AU06", "AU12"],
        "pseu_emotion": "happy",
        "smp_reason_caption": "Her raised cheeks and the excited words show that she feels happy about the news.",
        "text": "I got the job!",
    },
}
FINE_TXT = "sample_00000153 67 worried\nsample_00000047 31 happy"
NAMES = ("MERR_coarse_grained.txt", "MERR_coarse_grained.json", "MERR_fine_grained.txt", "MERR_fine_grained.json")


def _merr_dir(root: Path, name: str = "merr_in") -> Path:
    d = root / name
    d.mkdir()
    (d / "MERR_coarse_grained.txt").write_text(COARSE_TXT, encoding="utf-8")
    (d / "MERR_coarse_grained.json").write_text(json.dumps(COARSE_JSON, indent=4, ensure_ascii=False), encoding="utf-8")
    (d / "MERR_fine_grained.txt").write_text(FINE_TXT, encoding="utf-8")
    (d / "MERR_fine_grained.json").write_text(json.dumps(FINE_JSON, indent=4, ensure_ascii=False), encoding="utf-8")
    return d


def _records(out: Path) -> dict[str, dict]:
    return {json.loads(line)["id"]: json.loads(line) for line in (out / "annotations.jsonl").open(encoding="utf-8")}


def _write_records(out: Path, recs: list[dict]) -> None:
    (out / "annotations.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")


def test_merr_to_ours_to_merr_is_identical(tmp_path) -> None:
    src = _merr_dir(tmp_path)
    res = import_merr(src, tmp_path / "ds")
    assert res["records"] == 4 and res["txt_lines"] == 5 and res["json_entries"] == 6
    recs = _records(tmp_path / "ds")
    assert list(recs) == ["sample_00000047", "sample_00000153", "sample_00000200", "sample_00000999"]
    r = recs["sample_00000047"]
    assert r["label"] == "happy" and r["num_frames"] == 31 and r["valence"] is None and r["pseudo_label"] == "happy"
    assert r["peak_frame"]["index"] == 14  # OpenFace frame 15 (1-based) -> index 14
    assert r["aus_present_at_peak"] == ["AU06", "AU12"] and r["aus_present_over_frames"] == ["AU06", "AU12", "AU25"]
    assert r["expression"] == "cheek raiser, lip corner puller, lips part" and r["subtitle"] == "I got the job!"
    assert r["tone"] == "The speaker talks quickly with a rising pitch" and r["reasoning"].startswith("Her raised cheeks")
    assert r["coarse_description"].startswith("This person") and r["granularity"] == "fine"
    assert r["media"]["path"] == "video/sample_00000047.mp4"
    s153 = recs["sample_00000153"]
    assert s153["subtitle"] == "我不知道结果会怎样。" and s153["tone"] is None and s153["coarse_description"] is None
    assert recs["sample_00000200"]["peak_frame"] is None  # "0": MER-Factory had no peak frame
    assert recs["sample_00000200"]["granularity"] == "coarse" and recs["sample_00000200"]["reasoning"] is None
    assert recs["sample_00000999"]["label"] is None and recs["sample_00000999"]["peak_frame"]["index"] == 0
    emotion = [json.loads(line) for line in (tmp_path / "ds" / "instructions" / "emotion.jsonl").open(encoding="utf-8")]
    assert {s["id"] for s in emotion} == set(recs)

    res = export_merr(tmp_path / "ds", tmp_path / "merr_out")
    assert res["coarse"]["lines"] == 3 and res["fine"]["entries"] == 2
    for name in NAMES:  # byte for byte: values, types, key order, entry order, layout
        assert (tmp_path / "merr_out" / name).read_bytes() == (src / name).read_bytes(), name
    # what Emotion-LLaMA's FeatureFaceDataset does with them
    rows = [x.strip().split(" ") for x in open(tmp_path / "merr_out" / "MERR_fine_grained.txt", encoding="utf-8")]
    fine = json.loads((tmp_path / "merr_out" / "MERR_fine_grained.json").read_text(encoding="utf-8"))
    assert [fine[t[0]]["smp_reason_caption"] for t in rows] and {t[2] for t in rows} == {"worried", "happy"}


def test_emotion_llama_layouts_round_trip(tmp_path) -> None:
    """Emotion-LLaMA also reads 'name label' and 'name frames label valence' lines; files with a final newline,
    another indent and aliased keys come back as they were."""
    d = tmp_path / "el"
    d.mkdir()
    txt = "sample_1 35 angry -1.174107\nsample_2 happy\n"
    coarse = {"sample_1": {"AU_list": ["AU04"], "visual_prior_list": ["brow lowerer"], "audio_prior_list": "shouts",
                           "peak_index": "7", "peak_AU_list": ["AU04"], "pseudo_label": "angry", "caption": "Angry."},
              "sample_2": {"peak_index": "3", "coarse_caption": "A smile.", "sentence": "Ça va très bien"}}  # fmt: skip
    (d / "MERR_coarse_grained.txt").write_text(txt, encoding="utf-8")
    (d / "MERR_coarse_grained.json").write_text(json.dumps(coarse, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    import_merr(d, tmp_path / "ds")
    recs = _records(tmp_path / "ds")
    assert recs["sample_1"]["valence"] == -1.174107 and recs["sample_1"]["label"] == "angry"
    assert recs["sample_1"]["pseudo_label"] == "angry" and recs["sample_1"]["peak_frame"]["index"] == 6
    assert recs["sample_2"]["label"] == "happy" and recs["sample_2"]["num_frames"] is None
    assert recs["sample_2"]["coarse_description"] == "A smile." and recs["sample_2"]["subtitle"] == "Ça va très bien"
    export_merr(tmp_path / "ds", tmp_path / "o")
    assert (tmp_path / "o" / "MERR_coarse_grained.txt").read_text(encoding="utf-8") == txt
    assert (tmp_path / "o" / "MERR_coarse_grained.json").read_bytes() == (d / "MERR_coarse_grained.json").read_bytes()
    assert json.loads((tmp_path / "o" / "MERR_fine_grained.json").read_text(encoding="utf-8")) == {}
    # 0-based files: --peak-base 0
    import_merr(d, tmp_path / "ds0", peak_base=0)
    assert _records(tmp_path / "ds0")["sample_1"]["peak_frame"]["index"] == 7


def test_merr_export_reflects_changes_and_cli(tmp_path) -> None:
    src = _merr_dir(tmp_path)
    assert main(["--quiet", "export", "--from", "merr", str(src), "--out", str(tmp_path / "ds")]) == 0
    # a review changes one label, a subtitle is edited, a peak moves: those values follow, nothing else
    recs = list(_records(tmp_path / "ds").values())
    recs[1]["label"] = "sad"
    recs[0]["subtitle"] = "I got it!"
    recs[0]["peak_frame"]["index"] = 20
    _write_records(tmp_path / "ds", recs)
    assert main(["--quiet", "export", "--to", "merr", str(tmp_path / "ds"), "--out", str(tmp_path / "o")]) == 0
    o = tmp_path / "o"
    coarse_lines = (o / "MERR_coarse_grained.txt").read_text(encoding="utf-8").split("\n")
    assert coarse_lines == ["sample_00000047 31 happy", "sample_00000153 67 sad", "sample_00000200 12 neutral"]
    assert (o / "MERR_fine_grained.txt").read_text(encoding="utf-8") == "sample_00000153 67 sad\nsample_00000047 31 happy"
    fine = json.loads((o / "MERR_fine_grained.json").read_text(encoding="utf-8"))
    assert fine["sample_00000047"]["text"] == "I got it!" and fine["sample_00000047"]["peak_index"] == "21"
    coarse = json.loads((o / "MERR_coarse_grained.json").read_text(encoding="utf-8"))
    assert coarse["sample_00000047"]["peak_index"] == "21" and "text" not in coarse["sample_00000047"]
    assert coarse["sample_00000153"] == COARSE_JSON["sample_00000153"] and fine["sample_00000153"] == FINE_JSON["sample_00000153"]
    assert main(["--quiet", "export", "--to", "merr", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2


def test_legacy_single_merr_json_is_read_and_written_as_the_real_files(tmp_path) -> None:
    d = tmp_path / "old"
    d.mkdir()
    (d / "MERR.txt").write_text("s1 10 happy 0.5\n", encoding="utf-8")
    entry = {"AU_list": ["AU12"], "audio_prior_list": ["quick", "loud"], "peak_index": 3, "caption": "A smile.",
             "smp_reason_caption": "Her smile and quick, loud voice show that she is happy about it.", "text": "Yes!"}  # fmt: skip
    (d / "MERR.json").write_text(json.dumps({"s1": entry}), encoding="utf-8")
    import_merr(d, tmp_path / "ds")
    r = _records(tmp_path / "ds")["s1"]
    assert (r["tone"], r["coarse_description"], r["subtitle"], r["peak_frame"]["index"]) == ("quick; loud", "A smile.", "Yes!", 2)
    export_merr(tmp_path / "ds", tmp_path / "o")
    coarse = json.loads((tmp_path / "o" / "MERR_coarse_grained.json").read_text(encoding="utf-8"))
    assert list(coarse["s1"]) == list(LAYOUT["coarse"]) and coarse["s1"]["audio_prior_list"] == "quick; loud"
    assert coarse["s1"]["peak_index"] == "3" and coarse["s1"]["caption"] == "A smile."
    assert (tmp_path / "o" / "MERR_coarse_grained.txt").read_text(encoding="utf-8") == "s1 10 happy 0.5\n"


@pytest.mark.parametrize("bad_id", ["clip one", "clip\none", "clip\tone"])
def test_merr_export_rejects_ids_that_would_split(tmp_path, bad_id) -> None:
    import_merr(_merr_dir(tmp_path), tmp_path / "ds")
    recs = list(_records(tmp_path / "ds").values())
    recs[0]["id"] = bad_id
    recs[1]["id"] = "sub/clip_ü"  # a subfolder id and unicode are fine (Emotion-LLaMA joins vis_root/name.mp4)
    _write_records(tmp_path / "ds", recs)
    with pytest.raises(RecordSchemaError, match="cannot be written as MERR names") as exc:
        export_merr(tmp_path / "ds", tmp_path / "o")
    assert repr(bad_id) in str(exc.value) and "whitespace" in str(exc.value)
    assert not (tmp_path / "o" / "MERR_coarse_grained.txt").exists()  # nothing half-written
    del recs[0]
    _write_records(tmp_path / "ds", recs)
    export_merr(tmp_path / "ds", tmp_path / "o")
    assert "sub/clip_ü 67 worried" in (tmp_path / "o" / "MERR_coarse_grained.txt").read_text(encoding="utf-8")


def test_unrecognised_merr_files_say_what_they_saw(tmp_path) -> None:
    d = tmp_path / "a"
    d.mkdir()
    (d / "MERR_coarse_grained.txt").write_text("sample_1 35 angry -1.1 extra\n", encoding="utf-8")
    with pytest.raises(RecordSchemaError, match=r"saw 5 column\(s\) \['sample_1', '35', 'angry', '-1.1', 'extra'\]"):
        import_merr(d, tmp_path / "ds")
    (d / "MERR_coarse_grained.txt").write_text("sample_1 many angry\n", encoding="utf-8")
    with pytest.raises(RecordSchemaError, match="frames an integer"):
        import_merr(d, tmp_path / "ds")
    b = tmp_path / "b"
    b.mkdir()
    (b / "labels.json").write_text(json.dumps({"s1": {"emotion": "happy", "clip": "x.mp4"}}), encoding="utf-8")
    with pytest.raises(RecordSchemaError, match=r"saw keys \['clip', 'emotion'\]"):
        import_merr(b, tmp_path / "ds")
    c = tmp_path / "c"
    c.mkdir()  # MER-Factory's raw per-clip output, not its MERR export
    (c / "s1_merr_data.json").write_text(json.dumps({"video_id": "s1", "overall_peak_frame_info": {"frame_number": 3},
                                                     "final_summary": "x"}), encoding="utf-8")  # fmt: skip
    with pytest.raises(RecordSchemaError, match="per-clip output") as exc:
        import_merr(c, tmp_path / "ds")
    assert "emotion-llama" in exc.value.hint


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
    lines = (tmp_path / "m" / "MERR_coarse_grained.txt").read_text(encoding="utf-8").split("\n")
    assert lines[0] == f"face {ours['face']['num_frames']} surprise"  # 3 columns; no valence column without one
    coarse = json.loads((tmp_path / "m" / "MERR_coarse_grained.json").read_text(encoding="utf-8"))
    entry = coarse["face"]
    assert list(entry) == list(LAYOUT["coarse"]) and set(coarse) == set(ours)
    assert isinstance(entry["audio_prior_list"], str) and entry["peak_index"] == str(ours["face"]["peak_frame"]["index"] + 1)
    fine = json.loads((tmp_path / "m" / "MERR_fine_grained.json").read_text(encoding="utf-8"))
    assert set(fine) == {i for i, r in ours.items() if r["granularity"] == "fine"}
    for e in fine.values():
        assert list(e) == list(LAYOUT["fine"])
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
        for key in ("pseudo_label", "aus_present_at_peak", "expression", "tone", "coarse_description"):
            assert b[key] == rec[key], (cid, key)
        if rec["granularity"] == "fine":  # reasoning and subtitle travel in the fine file
            assert (b["reasoning"], b["subtitle"]) == (rec["reasoning"], rec["subtitle"]), cid
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
