"""The face-detector registry and what every detector returns.

A detector (a *backend*) finds face boxes in a frame; :class:`emollm.media.faces.FaceDetector`
maps those boxes onto the framing dlib's 68-point predictor was trained on and fits the
landmarks. Backends are registered by name with :func:`register_detector`; nothing else in
emollm names a backend (the config validates ``media.face.detector`` against
:func:`detector_names`).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image

from emollm.errors import EmollmError

Box = tuple[float, float, float, float]  # left, top, right, bottom: pixel edges (continuous), full resolution


class DetectorUnavailable(EmollmError):
    """A registered detector cannot be used here (its weights or package cannot be had)."""


@dataclass(frozen=True)
class RawFace:
    """One face as a backend finds it, in the coordinates of the frame it was given.

    ``box`` in continuous pixel coordinates (pixel ``i`` covers ``[i, i + 1)``); ``score`` in the
    detector's own units (dlib: SVM / MMOD margin, MTCNN: O-Net face probability); ``points`` (5, 2)
    eye centres (image-left first), nose tip, mouth corners (image-left first), continuous
    coordinates, where the detector gives them.
    """

    box: Box
    score: float
    points: np.ndarray | None = None


class BoxDetector(Protocol):
    """What a registered backend builds: full-resolution ``frame`` in, raw faces out."""

    def detect(self, frame: np.ndarray, *, max_side: int | None, upsample: int) -> list[RawFace]:
        """Faces in a uint8 RGB frame: search at most at ``max_side`` (longer side; None: full
        resolution), ``upsample`` doublings of that resolution. Boxes in the frame's coordinates.

        A backend may also take an optional ``min_face`` keyword (px at detection resolution: the
        smallest face worth searching for in this call, a hint it may use to skip work; MTCNN
        does). :class:`~emollm.media.faces.FaceDetector` passes it only to backends whose
        ``detect`` names it.

        A backend may also have ``verify(frame, boxes) -> list[RawFace | None]``: its last stage
        run on given boxes (one answer per box: the face there, its box refined, or None), how a
        face followed from a nearby frame is checked cheaply (MTCNN's O-Net does it;
        :meth:`~emollm.media.faces.FaceDetector.check`, ``faces.follow``)."""
        ...


@dataclass(frozen=True)
class BoxMap:
    """Maps a detector's box onto dlib-HOG framing, the boxes dlib's 68-point predictor was
    trained on: a square box of side ``scale * s`` centred at ``(cx + dx * s, cy + dy * s)``, where
    ``(cx, cy)`` is the box's centre and ``s`` the mean of its width and height. ``None`` fields
    mean "the identity" (dlib's own HOG boxes are returned unchanged)."""

    dx: float | None = None
    dy: float | None = None
    scale: float | None = None

    @property
    def is_identity(self) -> bool:
        return self.dx is None and self.dy is None and self.scale is None

    def apply(self, box: Box) -> Box:
        if self.is_identity:
            return box
        left, top, right, bottom = box
        s = ((right - left) + (bottom - top)) / 2
        cx = (left + right) / 2 + (self.dx or 0.0) * s
        cy = (top + bottom) / 2 + (self.dy or 0.0) * s
        half = (self.scale if self.scale is not None else 1.0) * s / 2
        return (cx - half, cy - half, cx + half, cy + half)

    def invert(self, box: Box) -> Box:
        """The square detector box that :meth:`apply` maps onto ``box`` (dlib-HOG framing) (a box
        tracked in dlib framing, handed back to the detector to check)."""
        if self.is_identity:
            return box
        left, top, right, bottom = box
        s = ((right - left) + (bottom - top)) / 2 / (self.scale if self.scale is not None else 1.0)
        cx = (left + right) / 2 - (self.dx or 0.0) * s
        cy = (top + bottom) / 2 - (self.dy or 0.0) * s
        return (cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2)


@dataclass(frozen=True)
class DetectorSpec:
    """One registered detector.

    ``build(threshold)`` makes the backend (``threshold``: the detector's own score threshold,
    None for its default) and raises :class:`DetectorUnavailable` (or an ``AssetError`` /
    ``MissingDependencyError``) when it cannot be had; ``fallback`` names the detector used then
    (one warning, never a crash). ``box_map`` brings its boxes to dlib-HOG framing (measured by
    ``benchmarks/face_detection.py --calibrate``).
    """

    name: str
    build: Callable[[float | None], BoxDetector]
    summary: str
    box_map: BoxMap = BoxMap()
    fallback: str | None = None
    points: bool = False  # gives 5 landmarks of its own


_REGISTRY: dict[str, DetectorSpec] = {}


def register_detector(spec: DetectorSpec, *, replace: bool = False) -> DetectorSpec:
    """Add ``spec`` to the registry (``replace=True`` to override an entry of the same name)."""
    if not spec.name or not spec.name.isidentifier():
        raise ValueError(f"a detector name is an identifier, got {spec.name!r}")
    if spec.name in _REGISTRY and not replace:
        raise ValueError(f"a face detector named {spec.name!r} is already registered")
    if spec.fallback is not None and spec.fallback == spec.name:
        raise ValueError(f"detector {spec.name!r} cannot be its own fallback")
    _REGISTRY[spec.name] = spec
    return spec


def detector_names() -> tuple[str, ...]:
    """The registered detector names, in registration order."""
    return tuple(_REGISTRY)


def unknown_detector_message(name: object) -> tuple[str, str | None]:
    """(message, hint) for a name that is not registered (shared by the config and the API)."""
    names = detector_names()
    close = difflib.get_close_matches(str(name), names, n=1)
    return f"{name!r} is not a face detector; registered: {list(names)}", (
        f"did you mean '{close[0]}'?" if close else None
    )


def detector_spec(name: str) -> DetectorSpec:
    """The registered detector ``name`` (ValueError naming the registered ones otherwise)."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        message, hint = unknown_detector_message(name)
        raise ValueError(message + (f" ({hint})" if hint else "")) from None


def detection_image(frame: np.ndarray, max_side: int | None, upsample: int = 0) -> tuple[np.ndarray, float, float]:
    """``frame`` resized for detection: longer side at most ``max_side`` (never enlarged by that),
    then enlarged ``2 ** upsample`` times, always from the full-resolution pixels. Returns
    (image, sx, sy) with full-resolution x = image x * sx."""
    h, w = frame.shape[:2]
    scale = 1.0 if max_side is None or max(w, h) <= max_side else max_side / max(w, h)
    scale *= 2.0**upsample
    if scale == 1.0:
        return frame, 1.0, 1.0
    dw, dh = max(1, round(w * scale)), max(1, round(h * scale))
    # reducing_gap: a large downscale first averages whole pixel blocks (3x faster, same result to the eye).
    image = np.asarray(Image.fromarray(frame).resize((dw, dh), Image.Resampling.BILINEAR, reducing_gap=3.0))
    return image, w / dw, h / dh


def scale_face(face: RawFace, sx: float, sy: float, ox: float = 0.0, oy: float = 0.0) -> RawFace:
    """``face`` from detection-image coordinates to frame ones (x * sx + ox, y * sy + oy)."""
    left, top, right, bottom = face.box
    box = (left * sx + ox, top * sy + oy, right * sx + ox, bottom * sy + oy)
    points = None if face.points is None else face.points * np.array([sx, sy]) + np.array([ox, oy])
    return RawFace(box=box, score=face.score, points=points)
