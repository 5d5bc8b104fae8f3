"""Face detection, tracking over a clip, and aligned face crops.

- Detection: a registered detector (:mod:`emollm.media.detectors`: ``mtcnn`` by default,
  ``dlib_hog``, ``dlib_cnn``) finds boxes on a copy of the frame downscaled so its longer side is
  at most ``detect_max_side``; the boxes are mapped back to full resolution and onto dlib-HOG
  framing (each detector's measured :class:`~emollm.media.detectors.BoxMap`), and dlib's 68-point
  predictor fits the landmarks on the full-resolution frame. dlib is the optional ``faces`` extra
  (``dlib-bin`` + ``face-recognition-models``, which ships the 68-point predictor).
- Tracking: greedy IoU association frame to frame. The *main* face (the speaker in an emotion
  clip) is the track seen in the most frames, ties broken by the larger mean box. Frames the
  main track misses between two detections are re-detected in an enlarged region around the
  expected box at higher resolution, and only where that fails bridged by an interpolated box.
  Video mode (``keyframe_every`` > 1): the full-frame detector runs on keyframes only, and between
  them the main face's last box is checked by the detector's last stage (MTCNN's O-Net), searched
  around where that sees no face (full frame again where that fails too).
- Alignment: a least-squares similarity transform (Umeyama) from five landmarks (eye centres,
  nose tip, mouth corners) to a fixed template, applied with Pillow: eyes level, face centred.

Frames are uint8 (H, W, 3) RGB arrays; positions ("frame positions") are indices into the
sequence of frames given, which for :class:`~emollm.media.video.Frames` map to source frame
indices through ``FaceTrackResult.frame_indices``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from emollm.assets import AssetError
from emollm.errors import MissingDependencyError
from emollm.log import get_logger, progress
from emollm.media.detectors import (
    DEFAULT_DETECTOR,
    BoxDetector,
    DetectorSpec,
    DetectorUnavailable,
    RawFace,
    detector_spec,
)
from emollm.media.detectors.base import Box, scale_face
from emollm.media.detectors.dlib_detectors import PREDICTOR_FILENAME, face_model_path, import_dlib
from emollm.media.video import FrameRows, Frames

logger = get_logger(__name__)

# Five-point template in units of the crop size: image-left eye centre, image-right eye centre,
# nose tip, mouth corners. Proportions follow the ArcFace template, with more margin so that the
# brows and the chin (which carry expression) stay inside the crop.
FACE_TEMPLATE_5 = np.array(
    [[0.36, 0.40], [0.64, 0.40], [0.50, 0.557], [0.385, 0.72], [0.615, 0.72]],
    dtype=np.float64,
)


# --------------------------------------------------------------------------------------------
# Models (lazy, cached per process)


def predictor_path() -> Path:
    """Where ``face-recognition-models`` keeps the 68-point predictor (found without importing
    the package, which needs ``pkg_resources``)."""
    return face_model_path(PREDICTOR_FILENAME, "face landmarks")


@functools.lru_cache(maxsize=1)
def _dlib_models():
    """(dlib module, 68-point shape predictor), loaded once per process."""
    dlib = import_dlib("face detection")
    path = predictor_path()
    logger.debug("loading the dlib 68-point predictor %s", path)
    return dlib, dlib.shape_predictor(str(path))


_warned_fallbacks: set[str] = set()


def _build_backend(spec: DetectorSpec, threshold: float | None, fallback: bool) -> tuple[DetectorSpec, BoxDetector]:
    """(the spec actually used, its backend): ``spec``'s, else its fallback's with one warning."""
    try:
        return spec, spec.build(threshold)
    except (AssetError, DetectorUnavailable, MissingDependencyError) as e:
        if not fallback or spec.fallback is None:
            raise
        if spec.name not in _warned_fallbacks:
            _warned_fallbacks.add(spec.name)
            logger.warning(
                "face detector %r is unavailable (%s); using %r instead%s",
                spec.name, e, spec.fallback, f" ({e.hint})" if getattr(e, "hint", None) else "",
            )  # fmt: skip
        return _build_backend(detector_spec(spec.fallback), None, fallback)


# --------------------------------------------------------------------------------------------
# Detection


@dataclass(eq=False)
class FaceDetection:
    """One face in one frame: ``box`` (left, top, right, bottom; dlib-HOG framing, the box the
    landmarks were fitted on), ``landmarks`` float32 (68, 2) as (x, y) in full-resolution pixels
    (dlib / iBUG 300-W order), ``score`` the detector's own score (dlib: margin, MTCNN:
    probability; 0 for a bridged frame). ``points5`` (5, 2) are the detector's own landmarks
    where it has them (MTCNN: eyes, nose, mouth corners, image-left first), in the same pixel
    convention; ``bridged`` marks a box interpolated over a gap in a track (no detection there)."""

    box: Box
    landmarks: np.ndarray
    score: float
    points5: np.ndarray | None = None
    bridged: bool = False

    @property
    def area(self) -> float:
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])


def _as_frame_list(frames: Frames | np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    if isinstance(frames, Frames):
        frames = frames.array
    if isinstance(frames, FrameRows):
        return frames  # type: ignore[return-value]  # read lazily, row by row, while it decodes
    if isinstance(frames, np.ndarray):
        if frames.ndim == 3:  # a single frame
            return [frames]
        return list(frames)
    return list(frames)


def _check_frame(frame: np.ndarray) -> np.ndarray:
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3:
        shape = getattr(frame, "shape", None)
        raise ValueError(f"a frame must be a (H, W, 3) RGB array, got shape {shape}")
    if frame.dtype != np.uint8:
        raise ValueError(f"a frame must be uint8, got {frame.dtype}")
    return np.ascontiguousarray(frame)


def _clip_box(box: Box, w: int, h: int) -> Box:
    return (max(0.0, box[0]), max(0.0, box[1]), min(float(w), box[2]), min(float(h), box[3]))


def _takes_min_face(backend: BoxDetector) -> bool:
    """Whether ``backend.detect`` takes the optional ``min_face`` hint (MTCNN does)."""
    try:
        return "min_face" in inspect.signature(backend.detect).parameters
    except (TypeError, ValueError):
        return False


class FaceDetector:
    """A registered face detector + dlib's 68-point landmarks.

    ``detector`` is a name from :func:`emollm.media.detectors.detector_names` (None: the default,
    ``mtcnn``). ``detect_max_side`` bounds the detection resolution (None: full resolution);
    ``upsample`` doubles it that many times (finds faces half as small per step, about 4x the
    cost; MTCNN halves its minimum face size instead). ``threshold`` is the detector's own score
    threshold (dlib: ``adjust_threshold``, 0; MTCNN: O-Net probability, 0.7; None: its default).
    When the detector cannot be had (MTCNN's weights not downloadable) and ``fallback`` is true,
    its registered fallback (``dlib_hog``) is used after one warning; :attr:`active` says which.
    """

    def __init__(
        self,
        detector: str | None = None,
        *,
        upsample: int = 0,
        detect_max_side: int | None = 640,
        threshold: float | None = None,
        fallback: bool = True,
    ):
        if upsample < 0:
            raise ValueError(f"upsample must be >= 0, got {upsample}")
        if detect_max_side is not None and detect_max_side < 1:
            raise ValueError(f"detect_max_side must be a positive number of pixels, got {detect_max_side}")
        self.spec = detector_spec(detector or DEFAULT_DETECTOR)
        self.upsample = int(upsample)
        self.detect_max_side = detect_max_side
        self.threshold = None if threshold is None else float(threshold)
        self.fallback = fallback
        self._active: tuple[DetectorSpec, BoxDetector] | None = None

    @property
    def name(self) -> str:
        """The detector asked for."""
        return self.spec.name

    @property
    def active(self) -> str:
        """The detector in use: :attr:`name`, or its fallback where that one is unavailable."""
        return self._backend()[0].name

    def __repr__(self) -> str:
        return (
            f"FaceDetector({self.name!r}, upsample={self.upsample}, detect_max_side={self.detect_max_side}, "
            f"threshold={self.threshold})"
        )

    def _backend(self) -> tuple[DetectorSpec, BoxDetector]:
        if self._active is None:
            self._active = _build_backend(self.spec, self.threshold, self.fallback)
        return self._active

    def fit_landmarks(self, frame: np.ndarray, box: Box) -> np.ndarray:
        """dlib's 68 landmarks fitted on ``box`` (dlib-HOG framing) in the full-resolution frame."""
        dlib, predictor = _dlib_models()
        rect = dlib.rectangle(int(box[0]), int(box[1]), int(round(box[2])) - 1, int(round(box[3])) - 1)
        shape = predictor(frame, rect)
        return np.array([(pt.x, pt.y) for pt in shape.parts()], dtype=np.float32)

    def _finish(self, frame: np.ndarray, raw: list[RawFace], spec: DetectorSpec) -> list[FaceDetection]:
        h, w = frame.shape[:2]
        found = []
        for face in raw:
            box = _clip_box(spec.box_map.apply(face.box), w, h)
            if box[2] - box[0] < 2 or box[3] - box[1] < 2:
                continue
            points = None if face.points is None else (face.points - 0.5).astype(np.float32)
            landmarks = self.fit_landmarks(frame, box)
            found.append(FaceDetection(box=box, landmarks=landmarks, score=face.score, points5=points))
        found.sort(key=lambda d: -d.score)
        return found

    def detect(self, frame: np.ndarray) -> list[FaceDetection]:
        """Faces in one uint8 RGB frame, best score first."""
        frame = _check_frame(frame)
        _dlib_models()  # the landmarks need dlib whichever detector runs: fail before detecting
        spec, backend = self._backend()
        raw = backend.detect(frame, max_side=self.detect_max_side, upsample=self.upsample)
        return self._finish(frame, raw, spec)

    def detect_in_region(self, frame: np.ndarray, region: Box, *, face_px: float = 160.0) -> list[FaceDetection]:
        """Faces inside ``region`` of the full-resolution frame, searched at full resolution on a
        crop resized so that a face filling 40 % of the region (an expected box enlarged 2.5x) is
        about ``face_px`` wide: how a frame a track missed is looked at again, closer. Boxes and
        landmarks in full-frame coordinates."""
        side = max(region[2] - region[0], region[3] - region[1])
        return self._detect_crop(frame, region, face_px / (0.4 * side) if side > 0 else 1.0)

    def detect_around(
        self, frame: np.ndarray, box: Box, *, grow: float, face_px: float, min_face: float | None = None
    ) -> list[FaceDetection]:
        """Faces near an expected ``box`` (full-frame coordinates): the box enlarged ``grow``
        times is cropped and resized so that a face the size of ``box`` is ``face_px`` wide, and
        searched there (:func:`bridge_gaps` on a missed frame, :func:`track_faces` between
        keyframes). ``min_face``: the smallest face looked for on that crop, px (a hint: detectors
        that take one, MTCNN, then skip the smaller scales; None: the detector's own). Boxes and
        landmarks in full-frame coordinates."""
        side = max(box[2] - box[0], box[3] - box[1])
        return self._detect_crop(frame, _grow_box(box, grow), face_px / side if side > 0 else 1.0, min_face)

    def _detect_crop(
        self, frame: np.ndarray, region: Box, zoom: float, min_face: float | None = None
    ) -> list[FaceDetection]:
        """Faces in ``region`` (clipped to the frame), detected on the crop resized by ``zoom``."""
        frame = _check_frame(frame)
        _dlib_models()
        h, w = frame.shape[:2]
        left, top = max(0, int(np.floor(region[0]))), max(0, int(np.floor(region[1])))
        right, bottom = min(w, int(np.ceil(region[2]))), min(h, int(np.ceil(region[3])))
        if right - left < 8 or bottom - top < 8:
            return []
        crop = frame[top:bottom, left:right]
        cw, ch = max(1, round((right - left) * zoom)), max(1, round((bottom - top) * zoom))
        image = np.ascontiguousarray(Image.fromarray(crop).resize((cw, ch), Image.Resampling.BILINEAR))
        spec, backend = self._backend()
        if min_face is not None and _takes_min_face(backend):
            raw = backend.detect(image, max_side=None, upsample=0, min_face=min_face)  # type: ignore[call-arg]
        else:
            raw = backend.detect(image, max_side=None, upsample=0)
        sx, sy = (right - left) / cw, (bottom - top) / ch
        return self._finish(frame, [scale_face(f, sx, sy, left, top) for f in raw], spec)

    def check(self, frame: np.ndarray, box: Box) -> FaceDetection | None:
        """The face at ``box`` (dlib-HOG framing, full-frame coordinates) as the detector's last
        stage sees it: its box refined there and the landmarks fitted on it, or None where that
        stage sees no face, or the backend has no such stage (``verify``: MTCNN's O-Net)."""
        spec, backend = self._backend()
        verify = getattr(backend, "verify", None)
        if verify is None:
            return None
        frame = _check_frame(frame)
        raw = verify(frame, [spec.box_map.invert(box)])[0]
        found = self._finish(frame, [raw], spec) if raw is not None else []
        return found[0] if found else None

    def detect_frames(self, frames: Frames | np.ndarray | Sequence[np.ndarray]) -> list[list[FaceDetection]]:
        """Faces in every frame (a progress bar on stderr for long runs)."""
        frame_list = _as_frame_list(frames)
        return [
            self.detect(frame)
            for frame in progress(frame_list, desc="face detection", total=len(frame_list), unit="frame")
        ]


# --------------------------------------------------------------------------------------------
# Tracking


@dataclass(eq=False)
class FaceTrack:
    """One face followed over frames: the frame positions where it was seen and its detections."""

    track_id: int
    positions: list[int] = field(default_factory=list)
    detections: list[FaceDetection] = field(default_factory=list)

    @property
    def num_frames(self) -> int:
        return len(self.positions)

    @property
    def mean_area(self) -> float:
        return float(np.mean([d.area for d in self.detections])) if self.detections else 0.0

    def at(self, position: int) -> FaceDetection | None:
        """The detection at frame ``position``, or None where the face was not seen."""
        try:
            return self.detections[self.positions.index(position)]
        except ValueError:
            return None


@dataclass(eq=False)
class FaceTrackResult:
    """Faces tracked over ``num_frames`` frames.

    ``tracks`` are ordered main first (most frames, then largest mean box); ``main`` is
    ``tracks[0]`` or None when no face was found. ``boxes`` / ``landmarks`` give the main face per
    frame position (None where it is absent) and ``no_face_frames`` lists those positions (every
    position when there is no main track). ``frame_indices`` maps positions to source frame
    indices when the frames came from :class:`Frames`. ``detections`` keeps every face the
    detection pass found: the full-frame detector's, except at ``roi_frames`` (keyframe mode,
    :func:`track_faces`), where the main face was found by a search around its last box and is
    the only one listed. ``redetected`` lists the positions where the main face was missed by
    that pass but found again in a closer look around its expected box, and ``bridged`` those
    where it was found neither way and the box is interpolated between its neighbours (landmarks
    fitted there): treat those with less confidence (their detections have ``bridged=True``).
    """

    num_frames: int
    tracks: list[FaceTrack]
    main: FaceTrack | None
    boxes: list[Box | None]
    landmarks: list[np.ndarray | None]
    no_face_frames: list[int]
    detections: list[list[FaceDetection]]
    frame_indices: list[int] | None = None
    redetected: list[int] = field(default_factory=list)
    bridged: list[int] = field(default_factory=list)
    roi_frames: list[int] = field(default_factory=list)

    @property
    def num_tracks(self) -> int:
        return len(self.tracks)

    @property
    def face_frames(self) -> list[int]:
        """Positions where the main face is present."""
        return [i for i, box in enumerate(self.boxes) if box is not None]


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two (left, top, right, bottom) boxes."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class _Linker:
    """Greedy IoU association of per-frame detections into tracks, one frame at a time (what
    :func:`associate_tracks` runs; :func:`track_faces` asks it which face to follow next)."""

    def __init__(self, iou_threshold: float, max_gap: int):
        if max_gap < 0:
            raise ValueError(f"max_gap must be >= 0, got {max_gap}")
        self.iou_threshold, self.max_gap = iou_threshold, max_gap
        self.tracks: list[FaceTrack] = []
        self._area: list[float] = []  # per track: the sum of its box areas (for the mean)

    def add(self, pos: int, dets: Sequence[FaceDetection]) -> None:
        live = [t for t in self.tracks if pos - t.positions[-1] - 1 <= self.max_gap]
        pairs = sorted(
            ((box_iou(t.detections[-1].box, d.box), ti, di) for ti, t in enumerate(live) for di, d in enumerate(dets)),
            key=lambda x: -x[0],
        )
        used_tracks: set[int] = set()
        used_dets: set[int] = set()
        for iou, ti, di in pairs:
            if iou < self.iou_threshold:
                break
            if ti in used_tracks or di in used_dets:
                continue
            live[ti].positions.append(pos)
            live[ti].detections.append(dets[di])
            self._area[live[ti].track_id] += dets[di].area
            used_tracks.add(ti)
            used_dets.add(di)
        for di, d in enumerate(dets):
            if di not in used_dets:
                self.tracks.append(FaceTrack(track_id=len(self.tracks), positions=[pos], detections=[d]))
                self._area.append(d.area)

    def leader_at(self, pos: int) -> FaceDetection | None:
        """The main face so far among the tracks seen at ``pos`` (most frames, then largest mean
        box): its detection there, or None when no track was seen at ``pos``."""
        seen = [t for t in self.tracks if t.positions[-1] == pos]
        if not seen:
            return None
        best = min(seen, key=lambda t: (-t.num_frames, -self._area[t.track_id] / t.num_frames, t.track_id))
        return best.detections[-1]


def associate_tracks(
    detections: Sequence[Sequence[FaceDetection]],
    *,
    iou_threshold: float = 0.3,
    max_gap: int = 5,
    min_frames: int = 1,
    frame_indices: Sequence[int] | None = None,
) -> FaceTrackResult:
    """Link per-frame detections into tracks (no detector needed: used by :func:`track_faces`).

    Greedy: at each frame, the (track, detection) pairs with the highest IoU against the track's
    last box are linked first, while IoU >= ``iou_threshold``; a track may miss up to ``max_gap``
    frames in a row and still continue; unlinked detections start new tracks. The main track must
    be seen in at least ``min_frames`` frames.
    """
    linker = _Linker(iou_threshold, max_gap)
    for pos, dets in enumerate(detections):
        linker.add(pos, dets)
    tracks = linker.tracks
    tracks.sort(key=lambda t: (-t.num_frames, -t.mean_area, t.track_id))
    main = tracks[0] if tracks and tracks[0].num_frames >= min_frames else None
    result = FaceTrackResult(
        num_frames=len(detections),
        tracks=tracks,
        main=main,
        boxes=[],
        landmarks=[],
        no_face_frames=[],
        detections=[list(d) for d in detections],
        frame_indices=list(frame_indices) if frame_indices is not None else None,
    )
    _fill_main(result)
    return result


def _fill_main(result: FaceTrackResult) -> None:
    """Set the per-position ``boxes`` / ``landmarks`` / ``no_face_frames`` from ``result.main``."""
    n = result.num_frames
    result.boxes = [None] * n
    result.landmarks = [None] * n
    if result.main is not None:
        for pos, det in zip(result.main.positions, result.main.detections, strict=True):
            result.boxes[pos] = det.box
            result.landmarks[pos] = det.landmarks
    result.no_face_frames = [i for i in range(n) if result.boxes[i] is None]


def _lerp_box(a: Box, b: Box, t: float) -> Box:
    return tuple(float(x + (y - x) * t) for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


def _grow_box(box: Box, factor: float) -> Box:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    hw, hh = (box[2] - box[0]) * factor / 2, (box[3] - box[1]) * factor / 2
    return (cx - hw, cy - hh, cx + hw, cy + hh)


BRIDGE_REGION = 2.5  # a missed frame is searched again in the expected box enlarged this much
BRIDGE_FACE_PX = 160.0  # ... on the crop resized so that a face the expected size is this wide (closer)
BRIDGE_MIN_IOU = 0.3  # a face found there must overlap the expected box this much
# ... so it is at least sqrt(0.3) ~ 0.55 of the box's side: faces under this fraction of it are not
# looked for (MTCNN skips the pyramid's finer scales, ~3x faster; the same face is found, its box
# within a few px of the full search's)
BRIDGE_MIN_FACE = 0.4


def find_near(frame: np.ndarray, box: Box, detector: FaceDetector) -> FaceDetection | None:
    """The face at about ``box`` in ``frame``, looked for as a missed frame of a track is: in the box
    enlarged :data:`BRIDGE_REGION` times, closer (:meth:`FaceDetector.detect_around`, for faces from
    :data:`BRIDGE_MIN_FACE` of the box's size); the one overlapping ``box`` most, if by IoU >=
    :data:`BRIDGE_MIN_IOU`, else None."""
    found = detector.detect_around(
        frame, box, grow=BRIDGE_REGION, face_px=BRIDGE_FACE_PX, min_face=BRIDGE_MIN_FACE * BRIDGE_FACE_PX
    )
    best = max(found, key=lambda d: box_iou(d.box, box), default=None)
    return best if best is not None and box_iou(best.box, box) >= BRIDGE_MIN_IOU else None


def follow(frame: np.ndarray, box: Box, detector: FaceDetector) -> FaceDetection | None:
    """The face at about ``box`` in ``frame`` (a frame close in time to the one ``box`` was found
    in), as :func:`find_near` answers, cheaper: a backend with a ``verify`` stage (MTCNN's O-Net)
    checks the box itself and refines it (one 48x48 crop instead of a pyramid search); where it
    sees no face there, or its face overlaps ``box`` by IoU < :data:`BRIDGE_MIN_IOU`, the search
    :func:`find_near` decides."""
    found = detector.check(frame, box)
    if found is not None and box_iou(found.box, box) >= BRIDGE_MIN_IOU:
        return found
    return find_near(frame, box, detector)


def bridge_gaps(
    result: FaceTrackResult,
    frames: Frames | np.ndarray | Sequence[np.ndarray],
    detector: FaceDetector,
    *,
    max_gap: int = 5,
) -> FaceTrackResult:
    """Fill the main track's gaps of at most ``max_gap`` frames between two detections, in place.

    Each missed frame is searched again in the expected box (interpolated between the
    neighbouring detections) enlarged :data:`BRIDGE_REGION` times, at higher resolution
    (:meth:`FaceDetector.detect_in_region`); a face there overlapping the expected box by IoU >=
    :data:`BRIDGE_MIN_IOU` joins the track (``result.redetected``). Where none is found the box is
    interpolated and the landmarks fitted on it (``result.bridged``; the detection has
    ``bridged=True`` and score 0). Frames before the first or after the last detection are left
    alone: a face that leaves is not invented.
    """
    main = result.main
    if main is None or len(main.positions) < 2:
        return result
    frame_list = _as_frame_list(frames)
    if len(frame_list) != result.num_frames:
        raise ValueError(f"{len(frame_list)} frames for a track result over {result.num_frames}")
    by_pos = dict(zip(main.positions, main.detections, strict=True))
    known = sorted(by_pos)
    for a, b in zip(known[:-1], known[1:], strict=True):
        if b - a - 1 > max_gap:
            continue
        for pos in range(a + 1, b):
            expected = _lerp_box(by_pos[a].box, by_pos[b].box, (pos - a) / (b - a))
            frame = _check_frame(frame_list[pos])
            best = find_near(frame, expected, detector)
            if best is not None:
                by_pos[pos] = best
                result.redetected.append(pos)
            else:
                box = _clip_box(expected, frame.shape[1], frame.shape[0])
                by_pos[pos] = FaceDetection(
                    box=box, landmarks=detector.fit_landmarks(frame, box), score=0.0, bridged=True
                )
                result.bridged.append(pos)
    main.positions = sorted(by_pos)
    main.detections = [by_pos[p] for p in main.positions]
    _fill_main(result)
    return result


ROI_GROW = 2.0  # between keyframes the main face is searched in its last box enlarged this much,
ROI_FACE_PX = 64.0  # ... on the crop resized so that a face that size is this wide,
ROI_MIN_FACE = 0.5  # ... for faces from this fraction of that size (MTCNN skips the smaller scales)


def _detect_video(
    frame_list: list[np.ndarray],
    detector: FaceDetector,
    *,
    keyframe_every: int,
    iou_threshold: float,
    max_gap: int,
) -> tuple[list[list[FaceDetection]], list[int]]:
    """Per-frame detections in keyframe mode (see :func:`track_faces`). Returns (detections, the
    positions served by a search around the face's box)."""
    linker = _Linker(iou_threshold, max_gap)
    detections: list[list[FaceDetection] | None] = [None] * len(frame_list)  # None: not searched
    roi: list[int] = []

    def near(pos: int, box: Box) -> FaceDetection | None:
        """The face around ``box`` in frame ``pos`` (IoU >= iou_threshold with it), or None: the
        detector's last stage on the box itself first (MTCNN's O-Net, one 48x48 crop: a face 0.2 s
        away has barely moved), the search around it where that sees no face there."""
        checked = detector.check(frame_list[pos], box)
        if checked is not None and box_iou(checked.box, box) >= iou_threshold:
            return checked
        found = detector.detect_around(
            frame_list[pos], box, grow=ROI_GROW, face_px=ROI_FACE_PX, min_face=ROI_MIN_FACE * ROI_FACE_PX
        )
        best = max(found, key=lambda d: box_iou(d.box, box), default=None)
        return best if best is not None and box_iou(best.box, box) >= iou_threshold else None

    last_seen = -1  # the last position with a detection (all of them linked)
    for pos in progress(range(len(frame_list)), desc="face detection", total=len(frame_list), unit="frame"):
        if pos % keyframe_every:  # between keyframes: follow the main face, if the last frame had it
            previous = linker.leader_at(pos - 1)
            if previous is None:
                continue  # nothing to follow: the next keyframe searches back
            best = near(pos, previous.box)
            if best is not None:
                detections[pos] = [best]
                roi.append(pos)
                linker.add(pos, detections[pos])
                last_seen = pos
                continue
        dets = detections[pos] = detector.detect(frame_list[pos])  # a keyframe, or the search failed
        if not dets:
            continue
        # A face after frames without one: follow the largest back while it is found there.
        box, back = max(dets, key=lambda d: d.area).box, []
        for q in range(pos - 1, last_seen, -1):
            best = near(q, box)
            if best is None:
                break
            back.append(q)
            detections[q], box = [best], best.box
        for q in reversed(back):
            linker.add(q, detections[q])  # type: ignore[arg-type]
        roi += reversed(back)
        linker.add(pos, dets)
        last_seen = pos
    return [d or [] for d in detections], sorted(roi)


def track_faces(
    frames: Frames | np.ndarray | Sequence[np.ndarray],
    detector: FaceDetector | None = None,
    *,
    iou_threshold: float = 0.3,
    max_gap: int = 5,
    min_frames: int = 1,
    bridge: bool = True,
    keyframe_every: int = 1,
) -> FaceTrackResult:
    """Detect faces in every frame and keep the main speaker's face (see :func:`associate_tracks`).

    A clip with no face gives ``main=None`` and every position in ``no_face_frames``; that is a
    result, not an error. ``max_gap`` counts frames of the sequence given: with 16 frames sampled
    from a 3 s clip a gap of 5 is about one second. ``bridge``: fill the main track's gaps
    (:func:`bridge_gaps`; ``result.redetected`` / ``result.bridged``).

    ``keyframe_every`` > 1 is the video mode, for frames close in time (the builder's 5 fps): the
    full-frame detector runs on every ``keyframe_every``-th frame (the first included). On the
    frames between, the main face so far, if the previous frame had it, is followed from its last
    box: the detector's last stage checks the box itself (:meth:`FaceDetector.check`, MTCNN's O-Net),
    and where that sees no face there it is searched only around the box (enlarged :data:`ROI_GROW`
    times, the face ~:data:`ROI_FACE_PX` px on the crop: :meth:`FaceDetector.detect_around`); where
    neither finds a face overlapping the last box (IoU >= ``iou_threshold``) the full-frame detector
    runs on that frame (a face that moved far is still
    found; a frame without a face is still "no face"). Frames with no face to follow wait for the
    next keyframe: where it (or a fallback) finds a face, the largest is followed back the same way
    over the frames before it, while it is found. Positions served by a check of or a search around a box are in
    ``result.roi_frames``, and their ``detections`` hold that one face: a new face (a second
    person) appears on a keyframe or a fallback frame only. 1 (the default): every frame full-frame.
    """
    if keyframe_every < 1:
        raise ValueError(f"keyframe_every must be >= 1, got {keyframe_every}")
    detector = detector or FaceDetector()
    roi: list[int] = []
    if keyframe_every == 1:
        detections = detector.detect_frames(frames)
    else:
        detections, roi = _detect_video(
            _as_frame_list(frames), detector, keyframe_every=keyframe_every, iou_threshold=iou_threshold,
            max_gap=max_gap,
        )  # fmt: skip
    result = associate_tracks(
        detections,
        iou_threshold=iou_threshold,
        max_gap=max_gap,
        min_frames=min_frames,
        frame_indices=frames.indices if isinstance(frames, (Frames, FrameRows)) else None,
    )
    result.roi_frames = roi
    if bridge:
        bridge_gaps(result, frames, detector, max_gap=max_gap)
    logger.debug(
        "face tracking (%s): %d frames (%d by region search), %d tracks, main face in %d (%d found again, "
        "%d bridged), absent in %d",
        detector.active,
        result.num_frames,
        len(result.roi_frames),
        result.num_tracks,
        result.num_frames - len(result.no_face_frames),
        len(result.redetected),
        len(result.bridged),
        len(result.no_face_frames),
    )
    return result


# --------------------------------------------------------------------------------------------
# Alignment


def five_points(landmarks68: np.ndarray) -> np.ndarray:
    """(5, 2) eye centres, nose tip, mouth corners from 68 dlib landmarks (image-left eye first)."""
    lm = np.asarray(landmarks68, dtype=np.float64)
    if lm.shape != (68, 2):
        raise ValueError(f"expected 68 (x, y) landmarks, got shape {lm.shape}")
    return np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 matrix of the similarity (rotation, uniform scale, translation; no reflection)
    mapping ``src`` points to ``dst`` points in the least-squares sense (Umeyama, 1991)."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s_c, d_c = src - mu_s, dst - mu_d
    var_s = (s_c**2).sum() / len(src)
    if var_s <= 0:
        raise ValueError("cannot align: the landmarks are all at one point")
    cov = d_c.T @ s_c / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1.0
    rot = u @ np.diag(d) @ vt
    scale = (sig * d).sum() / var_s
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rot
    matrix[:, 2] = mu_d - scale * rot @ mu_s
    return matrix


def _continuous_similarity(landmarks68: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(A, b) with crop = A @ frame + b in *continuous* coordinates, where pixel i covers [i, i+1).

    dlib landmarks are pixel indices (pixel centres), hence the + 0.5; the template is continuous.
    """
    m = similarity_transform(five_points(landmarks68) + 0.5, FACE_TEMPLATE_5 * size)
    return m[:, :2], m[:, 2]


def alignment_matrix(landmarks68: np.ndarray, size: int = 224) -> np.ndarray:
    """2x3 matrix mapping full-frame pixel coordinates (as landmarks are given) to pixel
    coordinates in the ``size`` aligned crop. Use it with :func:`transform_points` to bring
    landmarks into the crop."""
    a, b = _continuous_similarity(landmarks68, size)
    return np.concatenate([a, (a @ np.array([0.5, 0.5]) + b - 0.5)[:, None]], axis=1)


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to (N, 2) points."""
    pts = np.asarray(points, dtype=np.float64)
    return pts @ matrix[:, :2].T + matrix[:, 2]


def align_face(frame: np.ndarray, landmarks68: np.ndarray, size: int = 224) -> np.ndarray:
    """An aligned face crop, uint8 (size, size, 3): eyes level at 40% of the height, face centred.

    Areas outside the frame are black.
    """
    frame = _check_frame(frame)
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    a, b = _continuous_similarity(landmarks68, size)
    # Pillow's AFFINE data is the inverse map (crop -> frame) in continuous coordinates.
    inv = np.linalg.inv(a)
    off = -inv @ b
    data = (inv[0, 0], inv[0, 1], off[0], inv[1, 0], inv[1, 1], off[1])
    image = Image.fromarray(frame).transform(
        (size, size), Image.Transform.AFFINE, data, resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0)
    )
    return np.asarray(image, dtype=np.uint8)


@dataclass(eq=False)
class FaceCrops:
    """Aligned crops of one track: ``images`` uint8 (N, size, size, 3) for the frame ``positions``
    where the face was seen (frames without it are left out, not zero-filled)."""

    images: np.ndarray
    positions: list[int]

    def __len__(self) -> int:
        return len(self.positions)


def face_crops(
    frames: Frames | np.ndarray | Sequence[np.ndarray],
    track: FaceTrackResult | FaceTrack | None,
    size: int = 224,
) -> FaceCrops:
    """Aligned crops of the main face (a FaceTrackResult) or of a given track, in frame order."""
    if isinstance(track, FaceTrackResult):
        track = track.main
    frame_list = _as_frame_list(frames)
    if track is None:
        return FaceCrops(images=np.zeros((0, size, size, 3), np.uint8), positions=[])
    images = [
        align_face(frame_list[pos], det.landmarks, size)
        for pos, det in zip(track.positions, track.detections, strict=True)
    ]
    return FaceCrops(images=np.stack(images), positions=list(track.positions))
