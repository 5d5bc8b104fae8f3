"""media_decode / pitch / face_detection report their ratios the protocol's way: median with its spread,
the thread settings above them (tiny runs: the shape of the report, never a timing)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def one_thread(monkeypatch):
    import torch

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY"):
        monkeypatch.delenv(var, raising=False)  # restored after the test: the scripts set them
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _spread(r: dict) -> bool:
    return r["min"] <= r["median"] <= r["max"] and r["iqr"] >= 0


def test_media_decode_reports_the_speedup_with_its_spread(tmp_path, capsys, one_thread):
    bench = _load("media_decode")
    out = tmp_path / "md.json"
    assert bench.main(["--clips", "single_face.mp4", "--frames", "4", "--rounds", "3", "--warmup", "1",
                       "--json", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert printed.startswith("protocol: interleaved rounds") and "OMP_WAIT_POLICY PASSIVE" in printed
    report = json.loads(out.read_text())
    assert report["protocol"]["threads"] == 1
    assert report["protocol"]["usable_cpus"] == 1  # both sides pinned to one CPU by default (--cpus 1)
    (row,) = report["rows"]
    assert row["clip"] == "single_face.mp4" and row["rounds"] == 3 and row["warmup"] == 1
    assert row["baseline_s"] > 0 and row["emollm_s"] > 0
    assert row["speedup_min"] <= row["speedup"] <= row["speedup_max"] and row["speedup_iqr"] >= 0


def test_pitch_speed_is_interleaved_rounds_with_ratios_to_each_library(capsys, one_thread):
    pytest.importorskip("librosa")
    bench = _load("pitch")
    audio = bench.synthetic(20.0)[0][: 2 * bench.SR]
    speed = bench.speed(audio, rounds=3, warmup=1)
    assert speed["rounds"] == 3 and speed["audio_s"] == pytest.approx(2.0)
    assert set(speed["trackers"]) == set(bench.TRACKERS)
    first = next(iter(bench.TRACKERS))
    assert set(speed["ratios"]) == {f"{first}/librosa.pyin", f"{first}/librosa.yin"}
    assert all(_spread(r) and r["n"] == 3 for r in speed["ratios"].values())
    t = speed["trackers"][first]
    assert t["seconds_min"] <= t["seconds"] <= t["seconds_max"] and t["x_real_time"] > 0
    assert "ratio ours (tone.yin_f0)/librosa.pyin" in capsys.readouterr().out


@pytest.mark.slow
def test_face_detection_speed_section_times_detectors_side_by_side(tmp_path, capsys, one_thread):
    bench = _load("face_detection")
    out = tmp_path / "fd.json"
    assert bench.main(["--speed-only", "--frames", "1", "--detectors", "dlib_hog,dlib_hog_1pass",
                       "--speed-frames", "1", "--rounds", "2", "--warmup", "1", "--json", str(out)]) == 0  # fmt: skip
    assert "time ratio dlib_hog/dlib_hog_1pass" in capsys.readouterr().out
    speed = json.loads(out.read_text())["speed"]
    assert speed["images"] == len(bench.CONDITIONS) and speed["rounds"] == 2
    assert set(speed["ms_per_frame"]) == {"dlib_hog", "dlib_hog_1pass"}
    assert _spread(speed["ratios"]["dlib_hog/dlib_hog_1pass"])


def test_face_detection_accuracy_pass_keeps_every_frames_detections(one_thread):
    # each frame is one protocol round: warm-up frames are dropped from the timing, not from the accuracy
    bench = _load("face_detection")

    class Fake:
        def __init__(self):
            self.seen = []

        def detect(self, image):
            self.seen.append(int(image[0, 0, 0]))
            return [int(image[0, 0, 0])]

    a, b = Fake(), Fake()
    images = [np.full((2, 2, 3), i, np.uint8) for i in range(5)]
    found, res = bench.detect_all({"a": a, "b": b}, images, warmup=2)
    assert found == {"a": [[0], [1], [2], [3], [4]], "b": [[0], [1], [2], [3], [4]]}
    assert a.seen == b.seen == [0, 1, 2, 3, 4]  # each image once per detector
    assert res["order"] == ["a", "b", "b", "a", "a", "b", "b", "a", "a", "b"]  # frame by frame, rotating
    assert len(res["times"]["a"]) == 3 and res["warmup"] == 2


def test_tracking_au_change_counts_flipped_presence_cells_over_shared_face_frames():
    from types import SimpleNamespace

    bench = _load("face_detection")
    presence = np.zeros((4, 5), np.uint8)
    ref = SimpleNamespace(face=np.array([True, True, True, False]), presence=presence,
                          intensity=np.zeros((4, 5), np.float32))  # fmt: skip
    other = SimpleNamespace(face=np.array([True, True, False, True]), presence=presence.copy(),
                            intensity=np.zeros((4, 5), np.float32))  # fmt: skip
    other.presence[0, :2] = 1  # 2 of the 10 cells of the 2 frames both have a face
    other.presence[3] = 1  # a frame the reference has no face in: not counted
    other.intensity[1, 0] = 2.0
    change = bench.au_change(other, ref)
    assert change == {"presence_flips": 0.2, "intensity_mae": 0.2}
    assert bench.au_change(other, SimpleNamespace(face=np.zeros(4, bool), presence=presence, intensity=presence)) is None
