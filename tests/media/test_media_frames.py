"""read_frames(): the frames asked for come back, decoded right, as uint8 RGB."""

from __future__ import annotations

import dataclasses

import av
import numpy as np
import pytest

from emollm.errors import CorruptMediaError, FrameSamplingError
from emollm.media import probe, read_frames, read_frames_from


def _reference_frames(path, wanted):
    """Frames decoded independently with plain PyAV (no threads, no early stop)."""
    out = {}
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                out[i] = frame.to_ndarray(format="rgb24")
    return out


@pytest.mark.parametrize(("name", "indices"), [("single_face.mp4", [5, 40, 71]), ("noface_face.mov", [0, 83, 168])])
def test_frames_by_index_match_a_full_decode(sample_dir, name, indices):
    path = sample_dir / name
    frames = read_frames(path, indices)
    ref = _reference_frames(path, set(indices))
    assert frames.indices == indices
    for row, i in enumerate(indices):
        np.testing.assert_array_equal(frames.array[row], ref[i])
    # and different frames really differ (the index is not ignored)
    assert not np.array_equal(frames.array[0], frames.array[-1])


def test_downscaled_frames_are_the_per_frame_conversion(sample_dir):
    """The decoder's one reused swscale context gives the pixels of frame.to_ndarray(width=..., AREA),
    frame by frame (960x540 -> 640x360)."""
    path = sample_dir / "noface_face.mov"
    indices = [0, 3, 83, 168]
    frames = read_frames(path, indices, max_side=640)
    with av.open(str(path)) as container:
        ref = {i: f.to_ndarray(format="rgb24", width=640, height=360, interpolation="AREA")
               for i, f in enumerate(container.decode(video=0)) if i in indices}  # fmt: skip
    assert frames.array.shape == (4, 360, 640, 3)
    for row, i in enumerate(indices):
        np.testing.assert_array_equal(frames.array[row], ref[i])


def test_uniform_frames_shape_dtype_timestamps(sample_dir):
    frames = read_frames(sample_dir / "single_face.mp4", num_frames=16)
    assert frames.array.shape == (16, 360, 640, 3)
    assert frames.array.dtype == np.uint8
    assert len(frames) == 16 and len(frames.timestamps_s) == 16
    # 30 fps constant: timestamp = index / 30
    assert frames.timestamps_s == pytest.approx([i / 30 for i in frames.indices], abs=1e-3)
    assert frames.array.std() > 10  # a real picture, not a blank buffer


def test_request_order_and_repeats_preserved(sample_dir):
    path = sample_dir / "single_face.mp4"
    frames = read_frames(path, [50, 10, 50])
    assert frames.indices == [50, 10, 50]
    np.testing.assert_array_equal(frames.array[0], frames.array[2])
    np.testing.assert_array_equal(frames.array[1], read_frames(path, [10]).array[0])


def test_fps_sampling_on_a_real_clip(sample_dir):
    frames = read_frames(sample_dir / "single_face.mp4", fps=5)
    assert frames.indices == list(range(0, 72, 6))
    steps = np.diff(frames.timestamps_s)
    assert np.allclose(steps, 0.2, atol=1e-3)


def test_all_frames_when_nothing_asked(broken):
    frames = read_frames(broken["video_only"])
    assert frames.array.shape == (12, 120, 160, 3)
    assert frames.indices == list(range(12))
    # The generated clip's green channel ramps with the frame number.
    greens = frames.array[:, 60, 80:, 1].mean(axis=1)
    assert np.all(np.diff(greens) > 0)


def test_max_side_downscales_keeping_aspect(sample_dir):
    frames = read_frames(sample_dir / "face_noface.mov", num_frames=4, max_side=320)
    assert frames.array.shape == (4, 180, 320, 3)
    small = read_frames(sample_dir / "single_face.mp4", num_frames=2, max_side=1000)
    assert small.array.shape[1:3] == (360, 640)  # never enlarged


def test_image_is_a_one_frame_clip(sample_dir):
    frames = read_frames(sample_dir / "single_face.jpg", num_frames=16)
    assert frames.array.shape == (1, 562, 572, 3)
    assert frames.indices == [0] and frames.timestamps_s == [0.0]
    assert read_frames(sample_dir / "multi_face.jpg", max_side=500).array.shape == (1, 334, 500, 3)
    with pytest.raises(FrameSamplingError, match="single_face.jpg"):
        read_frames(sample_dir / "single_face.jpg", [1])


def test_out_of_range_index_names_file_and_index(sample_dir):
    with pytest.raises(FrameSamplingError) as info:
        read_frames(sample_dir / "single_face.mp4", [3, 72])
    assert "single_face.mp4" in str(info.value) and "72" in str(info.value)


def test_decoding_fewer_frames_than_listed_is_an_error(sample_dir):
    # A container whose listed count the decoder cannot meet (simulated: the real file has 72).
    info = dataclasses.replace(probe(sample_dir / "single_face.mp4"), num_frames=100)
    assert len(read_frames_from(info, [0, 71])) == 2
    with pytest.raises(CorruptMediaError, match=r"single_face\.mp4.*90"):
        read_frames_from(info, [0, 90])
    with pytest.raises(CorruptMediaError):
        read_frames_from(info, num_frames=16)  # uniform sampling reaches past frame 72


def test_decode_error_mid_stream_is_corrupt(broken):
    # Frames before the damage are readable; reading across it raises, never returns short.
    assert len(read_frames(broken["garbled"], [0, 10, 27])) == 3
    with pytest.raises(CorruptMediaError, match="garbled.mp4"):
        read_frames(broken["garbled"], num_frames=8)
