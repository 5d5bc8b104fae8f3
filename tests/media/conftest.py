"""Shared by the face-tracking tests."""

from __future__ import annotations

import pytest

from emollm.media import FaceDetector


class MissesAt(FaceDetector):
    """The default detector, except that its full-frame pass misses the face on the given calls
    (as a detector does on a blurred or half-turned face)."""

    def __init__(self, miss: set[int], **kwargs):
        super().__init__(**kwargs)
        self.miss, self.calls = miss, 0

    def detect(self, frame):
        self.calls += 1
        return [] if self.calls - 1 in self.miss else super().detect(frame)


@pytest.fixture
def misses_at() -> type[MissesAt]:
    """``misses_at({1, 2}, **detector_kwargs)``: a detector whose full-frame calls 1 and 2 find nothing."""
    return MissesAt
