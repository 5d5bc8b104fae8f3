"""MTCNN (Zhang et al., "Joint Face Detection and Alignment Using Multitask Cascaded
Convolutional Networks", IEEE SPL 2016), written for emollm in torch.

Three networks in cascade:

1. **P-Net**, fully convolutional, slides a 12 px window (stride 2) over an image pyramid (each
   level ``factor`` = 0.709 of the last, the first scaled so that ``min_face_size`` px becomes
   12 px): a face probability and a box correction per window; kept at p >= 0.6, non-maximum
   suppression (NMS) per level (IoU 0.5) and over all levels (IoU 0.7), boxes corrected and squared.
2. **R-Net** re-scores every candidate on a 24x24 crop: kept at p >= 0.7, NMS 0.7, corrected, squared.
3. **O-Net** on a 48x48 crop: probability, box correction and five landmarks; kept at p >= 0.7,
   NMS 0.7 over the smaller box ("min" overlap).

Pixels are scaled to ``(x - 127.5) / 128``; crops outside the frame are black, as in the paper's
release. The weights are the ones converted by facenet-pytorch 2.6.0 (MIT), fetched from its
wheel by :mod:`emollm.assets` (``MTCNN_WEIGHTS``) and loaded strictly; facenet-pytorch itself is
never installed. Their dense layers read the feature map in (width, height, channel) order,
the layout of the original release.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from emollm import assets
from emollm.log import get_logger
from emollm.media.detectors.base import RawFace, detection_image, scale_face
from emollm.threads import torch_threads

logger = get_logger(__name__)

THRESHOLDS = (0.6, 0.7, 0.7)  # P-, R-, O-Net face probability
PYRAMID_FACTOR = 0.709
MIN_FACE_SIZE = 20.0  # px at detection resolution
_BATCH = 256


class PNet(nn.Module):
    """Proposal net: 12x12 window -> (face probability, 4 box offsets), fully convolutional."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)  # face / not-face logits
        self.conv4_2 = nn.Conv2d(32, 4, 1)  # box offsets

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return torch.softmax(self.conv4_1(x), dim=1)[:, 1], self.conv4_2(x)


def _flatten_whc(x: torch.Tensor) -> torch.Tensor:
    # (N, C, H, W) -> (N, W * H * C): the order the converted dense weights expect.
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class RNet(nn.Module):
    """Refinement net: 24x24 crop -> (face probability, 4 box offsets)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(3 * 3 * 64, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = self.prelu4(self.dense4(_flatten_whc(x)))
        return torch.softmax(self.dense5_1(x), dim=1)[:, 1], self.dense5_2(x)


class ONet(nn.Module):
    """Output net: 48x48 crop -> (face probability, 4 box offsets, 5 landmarks as x1..x5, y1..y5)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(3 * 3 * 128, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(_flatten_whc(x)))
        return torch.softmax(self.dense6_1(x), dim=1)[:, 1], self.dense6_2(x), self.dense6_3(x)


def load_net(net: nn.Module, path: str | Path) -> nn.Module:
    """Load a state dict strictly (every key, every shape) and put ``net`` in eval mode."""
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    return net.eval().requires_grad_(False)


@functools.lru_cache(maxsize=1)
def mtcnn_nets() -> tuple[PNet, RNet, ONet]:
    """The three nets with the real weights (fetched from the facenet-pytorch wheel once)."""
    nets = []
    for cls, filename in ((PNet, "pnet.pt"), (RNet, "rnet.pt"), (ONet, "onet.pt")):
        path = assets.asset_path(assets.MTCNN_WEIGHTS, filename)
        nets.append(load_net(cls(), path))
    # channels-last (oneDNN's fast path; _to_input's batches already are): P-Net's pyramid ~30 % faster on CPU,
    # R-Net's and O-Net's crops ~3x (their max pooling above all); outputs within 1e-6 of NCHW
    nets = [net.to(memory_format=torch.channels_last) for net in nets]
    logger.debug("MTCNN nets loaded from %s", assets.asset_dir(assets.MTCNN_WEIGHTS))
    return tuple(nets)  # type: ignore[return-value]


# ---------------------------------------------------------------------------------- the cascade


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float, *, by_min: bool = False) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best first. ``by_min``: overlap is the
    intersection over the smaller box (O-Net's final pass), not over the union."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    area = np.maximum(0.0, x2 - x1) * np.maximum(0.0, y2 - y1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        iw = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        ih = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = iw * ih
        denom = np.minimum(area[i], area[rest]) if by_min else area[i] + area[rest] - inter
        overlap = np.divide(inter, denom, out=np.zeros_like(inter), where=denom > 0)
        order = rest[overlap <= iou]
    return np.asarray(keep, dtype=np.int64)


def _refine(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Apply the nets' box offsets (fractions of the box's width / height) to (N, 4) boxes."""
    wh = np.concatenate([boxes[:, 2:4] - boxes[:, 0:2]] * 2, axis=1)
    return boxes + offsets * wh


def _square(boxes: np.ndarray) -> np.ndarray:
    """Boxes made square about their centres (side = the longer side)."""
    centre = (boxes[:, 0:2] + boxes[:, 2:4]) / 2
    half = np.max(boxes[:, 2:4] - boxes[:, 0:2], axis=1, keepdims=True) / 2
    return np.concatenate([centre - half, centre + half], axis=1)


def _to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) scaled to about [-1, 1]."""
    x = torch.from_numpy(np.array(images, dtype=np.float32)).permute(0, 3, 1, 2)
    return (x - 127.5) * (1.0 / 128.0)


def _crops(image: Image.Image, boxes: np.ndarray, size: int) -> np.ndarray:
    """``size`` x ``size`` crops of ``boxes`` (rounded to pixels; black outside the image)."""
    out = np.empty((len(boxes), size, size, 3), dtype=np.uint8)
    for k, (x1, y1, x2, y2) in enumerate(np.rint(boxes).astype(np.int64)):
        x2, y2 = max(x2, x1 + 1), max(y2, y1 + 1)
        crop = image.crop((int(x1), int(y1), int(x2), int(y2)))
        out[k] = np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR))
    return out


def _batched(net: nn.Module, x: torch.Tensor) -> tuple[np.ndarray, ...]:
    outs = [net(x[i : i + _BATCH]) for i in range(0, len(x), _BATCH)]
    return tuple(torch.cat(parts).numpy() for parts in zip(*outs, strict=True))


def pyramid_scales(width: int, height: int, min_face_size: float, factor: float = PYRAMID_FACTOR) -> list[float]:
    """P-Net's pyramid: scale ``12 / min_face_size`` down by ``factor`` while the shorter side >= 12 px."""
    scales, scale = [], 12.0 / min_face_size
    while min(width, height) * scale >= 12:
        scales.append(scale)
        scale *= factor
    return scales


@torch.inference_mode()
def run_cascade(
    image: np.ndarray,
    nets: tuple[PNet, RNet, ONet],
    *,
    min_face_size: float = MIN_FACE_SIZE,
    thresholds: tuple[float, float, float] = THRESHOLDS,
    factor: float = PYRAMID_FACTOR,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Faces in one uint8 RGB image: (boxes (N, 4) continuous x1 y1 x2 y2, scores (N,), points
    (N, 5, 2) continuous x y), best score first."""
    pnet, rnet, onet = nets
    h, w = image.shape[:2]
    pil = Image.fromarray(image)
    empty = (np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2)))

    # Stage 1: P-Net over the pyramid.
    found_boxes, found_scores, found_offsets = [], [], []
    for scale in pyramid_scales(w, h, min_face_size, factor):
        sw, sh = max(12, math.ceil(w * scale)), max(12, math.ceil(h * scale))
        level = np.asarray(pil.resize((sw, sh), Image.Resampling.BILINEAR))
        prob, offsets = pnet(_to_input(level[None]).contiguous(memory_format=torch.channels_last))
        prob, offsets = prob[0].numpy(), offsets[0].numpy()
        ys, xs = np.nonzero(prob >= thresholds[0])
        if not len(ys):
            continue
        sx, sy = w / sw, h / sh
        boxes = np.stack([2 * xs * sx, 2 * ys * sy, (2 * xs + 12) * sx, (2 * ys + 12) * sy], axis=1).astype(np.float64)
        scores = prob[ys, xs].astype(np.float64)
        keep = nms(boxes, scores, 0.5)
        found_boxes.append(boxes[keep])
        found_scores.append(scores[keep])
        found_offsets.append(offsets[:, ys, xs].T[keep].astype(np.float64))
    if not found_boxes:
        return empty
    boxes, scores, offsets = np.concatenate(found_boxes), np.concatenate(found_scores), np.concatenate(found_offsets)
    keep = nms(boxes, scores, 0.7)
    boxes = _square(_refine(boxes[keep], offsets[keep]))

    # Stage 2: R-Net on 24x24 crops.
    prob, offsets = _batched(rnet, _to_input(_crops(pil, boxes, 24)))
    passed = prob >= thresholds[1]
    if not passed.any():
        return empty
    boxes, scores, offsets = boxes[passed], prob[passed].astype(np.float64), offsets[passed].astype(np.float64)
    keep = nms(boxes, scores, 0.7)
    boxes = _square(_refine(boxes[keep], offsets[keep]))

    # Stage 3: O-Net on 48x48 crops: final score, box and five landmarks.
    prob, offsets, marks = _batched(onet, _to_input(_crops(pil, boxes, 48)))
    passed = prob >= thresholds[2]
    if not passed.any():
        return empty
    boxes, scores = boxes[passed], prob[passed].astype(np.float64)
    offsets, marks = offsets[passed].astype(np.float64), marks[passed].astype(np.float64)
    size = boxes[:, 2:4] - boxes[:, 0:2]
    points = np.stack(
        [boxes[:, 0:1] + size[:, 0:1] * marks[:, 0:5], boxes[:, 1:2] + size[:, 1:2] * marks[:, 5:10]], axis=-1
    )
    boxes = _refine(boxes, offsets)
    keep = nms(boxes, scores, 0.7, by_min=True)
    return boxes[keep], scores[keep], points[keep]


@torch.inference_mode()
def run_onet(
    image: np.ndarray, boxes: np.ndarray, onet: ONet, *, threshold: float = THRESHOLDS[2]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """O-Net alone on given (N, 4) boxes of a uint8 RGB image (squared first, as the cascade's
    R-Net output is): (refined boxes, scores, points) per box, score NaN where below ``threshold``."""
    boxes = _square(np.asarray(boxes, dtype=np.float64).reshape(-1, 4))
    prob, offsets, marks = _batched(onet, _to_input(_crops(Image.fromarray(image), boxes, 48)))
    size = boxes[:, 2:4] - boxes[:, 0:2]
    points = np.stack(
        [boxes[:, 0:1] + size[:, 0:1] * marks[:, 0:5], boxes[:, 1:2] + size[:, 1:2] * marks[:, 5:10]], axis=-1
    )
    scores = np.where(prob >= threshold, prob.astype(np.float64), np.nan)
    return _refine(boxes, offsets.astype(np.float64)), scores, points


class MtcnnDetector:
    """MTCNN as a registered backend: ``min_face_size`` px at detection resolution (halved per
    ``upsample`` step instead of enlarging the frame), ``threshold`` the O-Net probability (0.7).

    ``threads`` caps torch's intra-op threads while it runs (1: its convolutions are too small to
    share out, and on a busy machine 2 threads measured 6x slower than 1; None: torch's setting).
    ``detect(..., min_face=)`` raises the smallest face searched for one call (px at detection
    resolution; never below the default): the pyramid's finer scales are skipped, as when a face of
    known size is looked for again around its last box (keyframe mode of ``track_faces``).
    """

    def __init__(
        self, threshold: float | None = None, *, min_face_size: float = MIN_FACE_SIZE, threads: int | None = 1
    ):
        self.thresholds = (THRESHOLDS[0], THRESHOLDS[1], THRESHOLDS[2] if threshold is None else float(threshold))
        self.min_face_size = float(min_face_size)
        self.threads = threads
        self.nets = mtcnn_nets()

    def detect(
        self, frame: np.ndarray, *, max_side: int | None, upsample: int, min_face: float | None = None
    ) -> list[RawFace]:
        image, sx, sy = detection_image(frame, max_side)
        smallest = self.min_face_size / 2.0**upsample
        if min_face is not None:
            smallest = max(smallest, float(min_face))
        with torch_threads(self.threads):
            boxes, scores, points = run_cascade(image, self.nets, min_face_size=smallest, thresholds=self.thresholds)
        return [
            scale_face(RawFace(tuple(float(v) for v in b), float(s), p), sx, sy)  # type: ignore[arg-type]
            for b, s, p in zip(boxes, scores, points, strict=True)
        ]

    def verify(self, frame: np.ndarray, boxes: list) -> list[RawFace | None]:
        """O-Net on each of ``boxes`` (frame coordinates, the frame as given): the face there with
        its refined box, or None where O-Net says no face (probability under the threshold)."""
        if not len(boxes):
            return []
        with torch_threads(self.threads):
            refined, scores, points = run_onet(frame, np.asarray(boxes), self.nets[2], threshold=self.thresholds[2])
        return [
            None if np.isnan(s) else RawFace(tuple(float(v) for v in b), float(s), p)  # type: ignore[arg-type]
            for b, s, p in zip(refined, scores, points, strict=True)
        ]
