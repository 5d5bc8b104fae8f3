"""`emollm probe`: reports real clips, keeps going past a broken one."""

from __future__ import annotations

import json

from emollm.cli import main as cli


def test_probe_reports_streams_frames_audio_and_faces(sample_dir, capsys):
    clips = [str(sample_dir / "single_face.mp4"), str(sample_dir / "no_face.mp4")]
    code = cli.main(["probe", "--faces", "--json", *clips, "media.num_frames=6"])
    assert code == 0
    reports = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    face, noface = reports
    assert face["info"]["kind"] == "video" and face["frames"]["count"] == 6
    assert face["audio"]["sample_rate"] == 16000 and abs(face["audio"]["seconds"] - 2.42) < 0.1
    assert face["faces"]["tracks"] == 1 and face["faces"]["main_face_frames"] == 6
    assert noface["faces"]["main_face_frames"] == 0
    assert noface["faces"]["no_face_frames"] == noface["frames"]["indices"]


def test_a_broken_clip_is_reported_and_the_rest_still_run(sample_dir, broken, capsys):
    code = cli.main(["probe", str(broken["empty"]), str(sample_dir / "single_face.jpg"), str(broken["random"])])
    assert code == 2
    out = capsys.readouterr().out
    assert f"{broken['empty']}: cannot read:" in out
    assert f"{broken['random']}: cannot read:" in out
    assert "single_face.jpg: image" in out and "sampled frames: 1 at [0]" in out
