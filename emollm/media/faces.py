"""Face detection, tracking over a clip, and aligned face crops.

- Detection: dlib's HOG frontal-face detector, run on a copy of the frame downscaled so its longer
  side is at most ``detect_max_side`` (speed), boxes mapped back to full resolution; the 68 dlib
  landmarks are then fitted on the full-resolution frame. dlib is the optional ``faces`` extra
  (``dlib-bin`` + ``face-recognition-models``, which ships the 68-point predictor).
- Tracking: greedy IoU association frame to frame. The *main* face (the speaker in an emotion
  clip) is the track seen in the most frames, ties broken by the larger mean box.
- Alignment: a least-squares similarity transform (Umeyama) from five landmarks (eye centres,
  nose tip, mouth corners) to a fixed template, applied with Pillow: eyes level, face centred.

Frames are uint8 (H, W, 3) RGB arrays; positions ("frame positions") are indices into the
sequence of frames given, which for :class:`~emollm.media.video.Frames` map to source frame
indices through ``FaceTrackResult.frame_indices``.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from emollm.errors import EmollmError, MissingDependencyError
from emollm.log import get_logger, progress
from emollm.media._io import scaled_size
from emollm.media.video import Frames

logger = get_logger(__name__)

Box = tuple[float, float, float, float]  # left, top, right, bottom in pixels (full resolution)

PREDICTOR_FILENAME = "shape_predictor_68_face_landmarks.dat"

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
    """Where ``face-recognition-models`` keeps the 68-point predictor.

    The package itself cannot be imported on new setuptools (it needs ``pkg_resources``), so its
    folder is found without importing it.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("face-recognition-models", "faces", "face landmarks")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / PREDICTOR_FILENAME
    if not path.is_file():
        raise EmollmError(
            f"the face-recognition-models package is installed but {path} is missing",
            hint="pip install --force-reinstall face-recognition-models",
        )
    return path


@functools.lru_cache(maxsize=1)
def _dlib_models():
    """(dlib module, frontal face detector, 68-point shape predictor), loaded once per process."""
    try:
        import dlib
    except ImportError as e:
        raise MissingDependencyError("dlib-bin", "faces", "face detection") from e
    path = predictor_path()
    logger.debug("loading dlib HOG detector and %s", path)
    return dlib, dlib.get_frontal_face_detector(), dlib.shape_predictor(str(path))


# --------------------------------------------------------------------------------------------
# Detection


@dataclass(eq=False)
class FaceDetection:
    """One face in one frame: ``box`` (left, top, right, bottom), ``landmarks`` float32 (68, 2) as
    (x, y) in full-resolution pixels (dlib / iBUG 300-W order), ``score`` the detector margin."""

    box: Box
    landmarks: np.ndarray
    score: float

    @property
    def area(self) -> float:
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])


def _as_frame_list(frames: Frames | np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    if isinstance(frames, Frames):
        frames = frames.array
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


class FaceDetector:
    """dlib HOG face detector + 68-point landmarks.

    ``upsample`` makes dlib look for faces smaller than ~80 px (at detection resolution) at about
    4x the cost per step; 0 finds the faces in ordinary talking-head clips. ``detect_max_side``
    bounds the detection resolution (None: full resolution). ``threshold`` is dlib's
    ``adjust_threshold``: raise it to drop weak detections.
    """

    def __init__(self, *, upsample: int = 0, detect_max_side: int | None = 640, threshold: float = 0.0):
        if upsample < 0:
            raise ValueError(f"upsample must be >= 0, got {upsample}")
        self.upsample = int(upsample)
        self.detect_max_side = detect_max_side
        self.threshold = float(threshold)

    def __repr__(self) -> str:
        return (
            f"FaceDetector(upsample={self.upsample}, detect_max_side={self.detect_max_side}, "
            f"threshold={self.threshold})"
        )

    def detect(self, frame: np.ndarray) -> list[FaceDetection]:
        """Faces in one uint8 RGB frame, best score first."""
        frame = _check_frame(frame)
        dlib, detector, predictor = _dlib_models()
        h, w = frame.shape[:2]
        dw, dh = scaled_size(w, h, self.detect_max_side)
        small = frame if (dw, dh) == (w, h) else np.asarray(Image.fromarray(frame).resize((dw, dh), Image.BILINEAR))
        sx, sy = w / dw, h / dh
        rects, scores, _ = detector.run(small, self.upsample, self.threshold)
        found = []
        for rect, score in zip(rects, scores, strict=True):
            # dlib rectangles are inclusive pixel indices; map the edges to full resolution.
            box = (
                max(0.0, rect.left() * sx),
                max(0.0, rect.top() * sy),
                min(float(w), (rect.right() + 1) * sx),
                min(float(h), (rect.bottom() + 1) * sy),
            )
            full = dlib.rectangle(int(box[0]), int(box[1]), int(round(box[2])) - 1, int(round(box[3])) - 1)
            shape = predictor(frame, full)
            landmarks = np.array([(pt.x, pt.y) for pt in shape.parts()], dtype=np.float32)
            found.append(FaceDetection(box=box, landmarks=landmarks, score=float(score)))
        found.sort(key=lambda d: -d.score)
        return found

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
    indices when the frames came from :class:`Frames`. ``detections`` keeps every face found.
    """

    num_frames: int
    tracks: list[FaceTrack]
    main: FaceTrack | None
    boxes: list[Box | None]
    landmarks: list[np.ndarray | None]
    no_face_frames: list[int]
    detections: list[list[FaceDetection]]
    frame_indices: list[int] | None = None

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
    if max_gap < 0:
        raise ValueError(f"max_gap must be >= 0, got {max_gap}")
    tracks: list[FaceTrack] = []
    for pos, dets in enumerate(detections):
        live = [t for t in tracks if pos - t.positions[-1] - 1 <= max_gap]
        pairs = sorted(
            ((box_iou(t.detections[-1].box, d.box), ti, di) for ti, t in enumerate(live) for di, d in enumerate(dets)),
            key=lambda x: -x[0],
        )
        used_tracks: set[int] = set()
        used_dets: set[int] = set()
        for iou, ti, di in pairs:
            if iou < iou_threshold:
                break
            if ti in used_tracks or di in used_dets:
                continue
            live[ti].positions.append(pos)
            live[ti].detections.append(dets[di])
            used_tracks.add(ti)
            used_dets.add(di)
        for di, d in enumerate(dets):
            if di not in used_dets:
                tracks.append(FaceTrack(track_id=len(tracks), positions=[pos], detections=[d]))

    tracks.sort(key=lambda t: (-t.num_frames, -t.mean_area, t.track_id))
    main = tracks[0] if tracks and tracks[0].num_frames >= min_frames else None
    n = len(detections)
    boxes: list[Box | None] = [None] * n
    landmarks: list[np.ndarray | None] = [None] * n
    if main is not None:
        for pos, det in zip(main.positions, main.detections, strict=True):
            boxes[pos] = det.box
            landmarks[pos] = det.landmarks
    return FaceTrackResult(
        num_frames=n,
        tracks=tracks,
        main=main,
        boxes=boxes,
        landmarks=landmarks,
        no_face_frames=[i for i in range(n) if boxes[i] is None],
        detections=[list(d) for d in detections],
        frame_indices=list(frame_indices) if frame_indices is not None else None,
    )


def track_faces(
    frames: Frames | np.ndarray | Sequence[np.ndarray],
    detector: FaceDetector | None = None,
    *,
    iou_threshold: float = 0.3,
    max_gap: int = 5,
    min_frames: int = 1,
) -> FaceTrackResult:
    """Detect faces in every frame and keep the main speaker's face (see :func:`associate_tracks`).

    A clip with no face gives ``main=None`` and every position in ``no_face_frames``; that is a
    result, not an error. ``max_gap`` counts frames of the sequence given: with 16 frames sampled
    from a 3 s clip a gap of 5 is about one second.
    """
    detector = detector or FaceDetector()
    detections = detector.detect_frames(frames)
    result = associate_tracks(
        detections,
        iou_threshold=iou_threshold,
        max_gap=max_gap,
        min_frames=min_frames,
        frame_indices=frames.indices if isinstance(frames, Frames) else None,
    )
    logger.debug(
        "face tracking: %d frames, %d tracks, main face in %d, absent in %d",
        result.num_frames,
        result.num_tracks,
        result.num_frames - len(result.no_face_frames),
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
