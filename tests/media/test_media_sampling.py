"""sample_frame_indices(): uniform / fps / explicit indices."""

from __future__ import annotations

import pytest

from emollm.errors import EmollmError, FrameSamplingError
from emollm.media import sample_frame_indices


def test_uniform_takes_segment_centres():
    assert sample_frame_indices(72, num_frames=8) == [4, 13, 22, 31, 40, 49, 58, 67]
    assert sample_frame_indices(10, num_frames=2) == [2, 7]
    assert sample_frame_indices(5, num_frames=1) == [2]


@pytest.mark.parametrize("total", [1, 7, 16, 95, 169, 472, 10_000])
@pytest.mark.parametrize("n", [1, 8, 16, 32])
def test_uniform_count_bounds_order_determinism(total, n):
    got = sample_frame_indices(total, num_frames=n)
    assert len(got) == n
    assert all(0 <= i < total for i in got)
    assert got == sorted(got)
    assert got == sample_frame_indices(total, num_frames=n)
    if n <= total:
        assert len(set(got)) == n  # no repeats when the clip is long enough


def test_uniform_repeats_frames_of_short_clips():
    assert sample_frame_indices(3, num_frames=6) == [0, 0, 1, 1, 2, 2]


def test_fps_sampling():
    assert sample_frame_indices(72, fps=10, src_fps=30) == list(range(0, 72, 3))
    # 23.67 / 5 = 4.734 source frames per step: floor(k * 4.734) while < 95
    got = sample_frame_indices(95, fps=5, src_fps=23.67)
    assert got[:6] == [0, 4, 9, 14, 18, 23] and got[-1] == 94 and len(got) == 21
    # Asking for more than the source rate gives every frame once.
    assert sample_frame_indices(12, fps=60, src_fps=10) == list(range(12))


def test_fps_sampling_count_matches_duration():
    got = sample_frame_indices(472, fps=2, src_fps=24000 / 1001)  # 19.69 s clip
    assert len(got) == 40
    assert len(set(got)) == len(got)


def test_explicit_indices_returned_as_given():
    assert sample_frame_indices(72, indices=[5, 0, 71, 5]) == [5, 0, 71, 5]


def test_out_of_range_indices_are_named():
    with pytest.raises(FrameSamplingError) as info:
        sample_frame_indices(72, indices=[0, 72, 100, -1])
    message = str(info.value)
    assert "72" in message and "100" in message and "-1" in message
    assert isinstance(info.value, ValueError) and isinstance(info.value, EmollmError)


def test_path_named_in_sampling_errors(tmp_path):
    with pytest.raises(FrameSamplingError, match="clip.mp4"):
        sample_frame_indices(10, indices=[10], path=tmp_path / "clip.mp4")


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"num_frames": 4, "fps": 2, "src_fps": 30},
        {"num_frames": 4, "indices": [1]},
        {"num_frames": 0},
        {"num_frames": 2.5},
        {"fps": 0, "src_fps": 30},
        {"fps": 5},  # no source rate
        {"indices": []},
        {"indices": [1.5]},
    ],
)
def test_invalid_requests(kwargs):
    with pytest.raises(FrameSamplingError):
        sample_frame_indices(72, **kwargs)


def test_empty_clip_cannot_be_sampled():
    with pytest.raises(FrameSamplingError):
        sample_frame_indices(0, num_frames=4)
