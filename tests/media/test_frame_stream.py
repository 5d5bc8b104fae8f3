"""FrameStream: a clip's frames decoded in a background thread, read row by row while it decodes."""

from __future__ import annotations

import numpy as np
import pytest

from emollm.errors import MediaError
from emollm.media import probe
from emollm.media.video import FrameStream, read_frames_from


def test_the_stream_gives_the_frames_a_plain_decode_gives(sample_dir):
    info = probe(sample_dir / "face_noface.mov")
    wanted = list(range(0, info.num_frames, 5))
    plain = read_frames_from(info, wanted, max_side=320)
    with FrameStream(info, wanted, max_side=320) as stream:
        rows = stream.rows([0, 3, 7])
        assert [r.shape for r in rows] == [plain.array[0].shape] * 3
        assert all(np.array_equal(a, plain.array[p]) for a, p in zip(rows, [0, 3, 7], strict=True))
        streamed = stream.result()
    assert streamed.indices == plain.indices and streamed.timestamps_s == plain.timestamps_s
    assert np.array_equal(streamed.array, plain.array)


def test_a_decode_error_reaches_the_reader_waiting_for_the_missing_frame(broken):
    info = probe(broken["garbled"])  # probes fine, decoding fails after frame 27
    with FrameStream(info, list(range(0, info.num_frames, 4))) as stream:
        assert stream[0].ndim == 3  # the frames before the damage are read as they arrive
        with pytest.raises(MediaError) as raised:
            list(stream)
        with pytest.raises(MediaError) as again:
            stream.result()
    assert again.value is raised.value


def test_closing_the_stream_ends_the_decode(sample_dir):
    import threading

    release = threading.Event()

    class Held(FrameStream):
        def _put(self, index, frame):  # the decode waits after its first frame until released
            super()._put(index, frame)
            release.wait()

    info = probe(sample_dir / "face_noface.mov")
    stream = Held(info, list(range(info.num_frames)))
    stream[0]
    threading.Timer(0.05, release.set).start()
    stream.close()  # the next frame ends the decode
    assert not stream._thread.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        stream[1]


def test_a_build_worker_decodes_on_its_share_of_the_cores_with_the_same_frames(sample_dir, monkeypatch):
    import torch

    from data_builders import pool
    from emollm.media import video

    info = probe(sample_dir / "single_face.mp4")
    default = read_frames_from(info, [0, 7, 30, 71])
    monkeypatch.setattr(video, "decode_threads", video.decode_threads)  # restored after the test
    threads = torch.get_num_threads()
    try:
        pool.worker_init(1)  # one core per worker: torch and FFmpeg's decoder each one thread
        assert video.decode_threads == 1 and torch.get_num_threads() == 1
        one = read_frames_from(info, [0, 7, 30, 71])
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(one.array, default.array)
    assert one.timestamps_s == default.timestamps_s
    with pytest.raises(ValueError, match=">= 0"):
        video.set_decode_threads(-1)
