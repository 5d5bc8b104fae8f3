"""The encoder registry: one entry per modality *kind*, frozen HF encoders and the learned AU encoder.

>>> enc = build_encoder("audio", "facebook/hubert-large-ll60k")      # or a local directory
>>> enc.extract(clip.audio).shape                                     # torch.Size([1, 1024])
>>> feature_dim_of("face", "/models/mae-face")                        # from config.json, no weights

Checkpoints load exactly as transformers loads them (``AutoModel.from_pretrained(name_or_path,
revision=..., trust_remote_code=...)``): a local directory or a hub id, never special-cased.

Kinds, inputs, options (defaults first) and what ``extract`` returns for ONE clip (float32, CPU):

=========  ==========================  ==========================================================
kind       input                       output
=========  ==========================  ==========================================================
audio      float32 mono numpy, 16 kHz  ``pooling: mean`` -> (1, D); ``none`` -> (frames, D):
           (``emollm.media`` output)   HuBERT / wav2vec2 ~49-50 frames/s; Whisper 50 frames/s,
                                       only the frames covering the real audio (1 s -> 50), audio
                                       over 30 s runs in 30 s windows, concatenated.
visual     uint8 frames (N, H, W, 3)   ``tokens`` x ``frame_pooling``, P = patches per frame:
                                       ``patch`` -> (P, D) [mean over frames] | (N*P, D) [none];
                                       ``cls`` -> (1, D) | (N, D); ``mean`` (mean of the patch
                                       tokens) -> (1, D) | (N, D); ``cls+patch`` -> (1+P, D) |
                                       (N*(1+P), D). Default ``patch`` + ``mean``.
                                       ``frames: peak``: the builder's peak frame only (N = 1).
face       uint8 aligned crops         ViT-MAE loaded with ``mask_ratio=0.0`` (every patch, in
           (N, 224, 224, 3)            order); ``tokens: mean`` (mean patch token, MAE's global
                                       pool) | ``cls``; ``crop_pooling: mean`` -> (1, D) | ``none``
                                       -> (N, D).
video      uint8 face crops, any N     resampled uniformly (centre of N equal segments) to the
                                       checkpoint's ``num_frames`` (16) -> VideoMAE;
                                       ``tokens: mean`` -> (1, D) | ``all`` -> (T/tubelet * P, D).
text       the clip's subtitle (str)   BERT / RoBERTa (``AutoModel`` + ``AutoTokenizer``) ->
                                       (1, D): ``tokens: cls`` (the first token, BERT's [CLS] /
                                       RoBERTa's <s>) | ``mean`` (mean of the real tokens);
                                       ``max_length`` (default: the tokenizer's, capped at the
                                       model's positions) truncates longer subtitles.
au         (T, 2*num_aus) raw AUs      learned: :class:`LearnedAU` builds the
                                       :class:`~emollm.modeling.au_encoder.AUEncoder` the model
                                       trains; the cache stores the raw AU sequence.
=========  ==========================  ==========================================================

``precomputed`` (:class:`PrecomputedFeatures`) has no input and no checkpoint: features someone else
extracted (Emotion-LLaMA's ``.npy`` files), imported into the feature cache
(:mod:`emollm.features.imported`), never computed; options ``feature_dim`` / ``num_tokens`` give
``(T, D)``.

What Emotion-LLaMA used: EVA-CLIP ViT-g on the peak frame (the 256 regrouped patch tokens: the
``visual`` default ``patch`` on one frame, regrouped by the projector), MAE (face), VideoMAE
(video) and HuBERT-large (audio), one 1024-d token each in their feature files: the ``face``,
``video`` and ``audio`` defaults (one pooled token).

Every frozen kind also takes ``layer`` (-1: ``last_hidden_state``, with the model's final norm;
any other index: ``hidden_states[layer]``, the raw block output; LLaVA uses -2 on CLIP),
``revision`` and ``trust_remote_code`` (False unless asked: it runs the checkpoint's own code).

Fingerprint (:meth:`Encoder.fingerprint`): SHA-256 over a canonical JSON of the fingerprint
version, the kind, the model class, the compute dtype, the options that change features, the
checkpoint's ``config.json`` and ``preprocessor_config.json`` (parsed, minus
``transformers_version`` / ``_name_or_path``) and the SHA-256 of every weight / index / remote-code
file of the checkpoint directory (the ``text`` kind adds its tokenizer files: they change features) (for a hub id, its snapshot in the HF cache, where a file's blob
name already is its SHA-256). Not in it: the path or hub id, revision, device, batch size. The
same files give the same fingerprint in any process; a changed weight, config, processor or
option gives a new one, so the feature cache never serves stale features.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from emollm.dataset.aus import MERR_AUS
from emollm.errors import ConfigError, EmollmError
from emollm.log import get_logger
from emollm.modeling.au_encoder import AU_ENCODER_DEFAULTS, AUEncoder

log = get_logger(__name__)

#: Bump when extraction changes in a way that changes features for the same checkpoint + options.
FINGERPRINT_VERSION = 1

_CONFIG_FILES = ("config.json", "preprocessor_config.json")
_HASHED_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".py",
)  # weights, shard indexes (*.index.json below), remote code
_VOLATILE_CONFIG_KEYS = ("transformers_version", "_name_or_path")


# ------------------------------------------------------------------------------------------ options
@dataclass(frozen=True)
class Option:
    """One encoder option: its default, its allowed values or type, and whether it changes features."""

    default: Any
    choices: tuple[Any, ...] | None = None
    types: tuple[type, ...] = ()
    affects_features: bool = True


_FROZEN_OPTIONS: dict[str, Option] = {
    "revision": Option(None, types=(str, type(None)), affects_features=False),
    "trust_remote_code": Option(False, types=(bool,), affects_features=False),
    "layer": Option(-1, types=(int,)),
}


def _closest(name: str, valid: Sequence[str]) -> str:
    match = difflib.get_close_matches(str(name), list(valid), n=1, cutoff=0.4)
    return f"; did you mean '{match[0]}'?" if match else ""


def _resolve_options(kind: str, schema: dict[str, Option], options: dict[str, Any]) -> dict[str, Any]:
    resolved = {}
    for key, value in options.items():
        if key not in schema:
            raise ConfigError(
                f"unknown option '{key}' for a '{kind}' encoder{_closest(key, schema)} (valid: {sorted(schema)})"
            )
        opt = schema[key]
        if opt.choices is not None and value not in opt.choices:
            raise ConfigError(
                f"encoder option '{key}' of a '{kind}' encoder must be one of {list(opt.choices)}, got {value!r}"
                f"{_closest(str(value), [str(c) for c in opt.choices])}"
            )
        bad_bool = isinstance(value, bool) and bool not in opt.types
        if opt.types and (bad_bool or not isinstance(value, opt.types)):
            names = "/".join("null" if t is type(None) else t.__name__ for t in opt.types)
            raise ConfigError(f"encoder option '{key}' of a '{kind}' encoder must be {names}, got {value!r}")
        resolved[key] = value
    return {key: resolved.get(key, opt.default) for key, opt in schema.items()}


# ------------------------------------------------------------------------------------------ registry
ENCODERS: dict[str, type[Encoder]] = {}


def register_encoder(kind: str) -> Callable[[type[Encoder]], type[Encoder]]:
    """Class decorator: register an :class:`Encoder` subclass as the encoder of ``kind``."""

    def decorate(cls: type[Encoder]) -> type[Encoder]:
        if kind in ENCODERS and ENCODERS[kind] is not cls:
            raise ValueError(f"an encoder is already registered for kind '{kind}': {ENCODERS[kind].__name__}")
        cls.kind = kind
        ENCODERS[kind] = cls
        return cls

    return decorate


def _encoder_class(kind: str) -> type[Encoder]:
    if kind not in ENCODERS:
        raise ConfigError(f"unknown encoder kind '{kind}'{_closest(kind, ENCODERS)} (valid: {sorted(ENCODERS)})")
    return ENCODERS[kind]


def build_encoder(kind: str, name_or_path: str | os.PathLike | None = None, **options: Any) -> Encoder:
    """The encoder of ``kind`` (``audio``, ``visual``, ``face``, ``video``, ``au``), loaded and ready.

    Unknown kinds and options raise :class:`ConfigError` naming the closest valid one; a checkpoint
    that is missing or cannot be loaded raises an :class:`EmollmError` naming it.
    """
    cls = _encoder_class(kind)
    return cls(name_or_path, **_resolve_options(kind, cls.OPTIONS, options))


def feature_dim_of(kind: str, name_or_path: str | os.PathLike | None = None, **options: Any) -> int:
    """The feature width ``D`` the encoder of ``kind`` produces, from the config alone (no weights)."""
    cls = _encoder_class(kind)
    return cls.feature_dim_from_config(name_or_path, _resolve_options(kind, cls.OPTIONS, options))


def encoder_options(kind: str, options: dict[str, Any], *, feature_dim: int | None = None,
                    num_input_tokens: int | None = None) -> dict[str, Any]:
    """The options to build a config entry's encoder with (``build_encoder(kind, name_or_path, **out)``).

    Every kind but ``precomputed``: the entry's ``options`` as they are. A ``precomputed`` entry has
    no checkpoint to read its shape from, so the entry's ``feature_dim`` / ``num_input_tokens``
    (``EncoderConfig`` fields, or the ``feature_dim`` / ``num_input_tokens`` of a modality spec)
    become its ``feature_dim`` / ``num_tokens`` options, unless the options already say so; when both
    say and disagree: ConfigError.
    """
    from emollm.config.schema import IMPORTED_KINDS

    out = dict(options)
    if kind not in IMPORTED_KINDS:
        return out
    for option, value, field_name in (("feature_dim", feature_dim, "feature_dim"),
                                      ("num_tokens", num_input_tokens, "num_input_tokens")):
        if value is None:
            continue
        if out.get(option) is not None and out[option] != value:
            raise ConfigError(f"a 'precomputed' entry's options.{option} ({out[option]}) and its {field_name} "
                              f"({value}) disagree", hint=f"set {field_name} only")
        out[option] = int(value)
    return out


# ------------------------------------------------------------------------------------------ base
class Encoder:
    """What every registry entry offers, frozen or learned."""

    kind: ClassVar[str] = ""
    learned: ClassVar[bool] = False
    OPTIONS: ClassVar[dict[str, Option]] = {}
    #: Checkpoint files beyond weights and configs that change this kind's features (fingerprinted).
    DIGEST_FILES: ClassVar[tuple[str, ...]] = ()

    name_or_path: str | None
    options: dict[str, Any]
    feature_dim: int

    def fingerprint(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def num_tokens(self, input_len: int | None = None) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def feature_dim_from_config(cls, name_or_path, options: dict[str, Any]) -> int:  # pragma: no cover
        raise NotImplementedError

    def _feature_options(self) -> dict[str, Any]:
        return {k: v for k, v in self.options.items() if self.OPTIONS[k].affects_features}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, name_or_path={self.name_or_path!r}, options={self.options})"


# ------------------------------------------------------------------------------------------ loading
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _local_dir(name_or_path: str) -> Path | None:
    """The checkpoint directory when ``name_or_path`` is local; None for a hub id (passed on as is)."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ConfigError(
                f"encoder checkpoint '{name_or_path}' is a file; give the checkpoint directory",
                hint="a transformers checkpoint is a directory with config.json and the weights",
            )
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"encoder checkpoint '{name_or_path}' has no config.json: not a transformers checkpoint",
                hint="save the model with save_pretrained, or point at the directory that holds config.json",
            )
        return path
    looks_local = os.path.isabs(name_or_path) or name_or_path.startswith(("./", "../", "~", ".\\"))
    if looks_local or "\\" in name_or_path or not _HUB_ID.match(name_or_path):
        raise ConfigError(
            f"encoder checkpoint '{name_or_path}' does not exist",
            hint="give an existing checkpoint directory or a hub id (org/name)",
        )
    return None


def _translate_load_error(name_or_path: str, what: str, err: Exception) -> EmollmError:
    if isinstance(err, EmollmError):
        return err
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return EmollmError(
        f"cannot load the {what} of encoder '{name_or_path}': {first}",
        hint="check the path or hub id; offline (HF_HUB_OFFLINE=1) a hub id must already be in the HF cache",
    )


def _load(name_or_path: str, what: str, loader: Callable[..., Any], **kwargs: Any) -> Any:
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    try:
        return loader(name_or_path, **kwargs)
    except Exception as err:  # third-party boundary: every load failure becomes one EmollmError
        raise _translate_load_error(name_or_path, what, err) from err


def _load_config(name_or_path: str, options: dict[str, Any]):
    from transformers import AutoConfig

    _local_dir(name_or_path)
    return _load(name_or_path, "config", AutoConfig.from_pretrained,
                 revision=options.get("revision"), trust_remote_code=options.get("trust_remote_code"))  # fmt: skip


def _width(config) -> int:
    for name in ("hidden_size", "d_model", "embed_dim"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise EmollmError(f"cannot tell the feature width of a '{config.model_type}' model (no hidden_size / d_model)")


# ------------------------------------------------------------------------------------------ fingerprints
_FILE_HASHES: dict[tuple[str, int, int], str] = {}
_SHA256_NAME = re.compile(r"^[0-9a-f]{64}$")


def _file_sha256(path: Path) -> str:
    real = Path(os.path.realpath(path))
    if path.is_symlink() and real.parent.name == "blobs" and _SHA256_NAME.match(real.name):
        return real.name  # HF cache: an LFS blob is named by the SHA-256 of its content
    stat = real.stat()
    key = (str(real), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_HASHES:
        digest = hashlib.sha256()
        with open(real, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _FILE_HASHES[key] = digest.hexdigest()
    return _FILE_HASHES[key]


def _canonical_json(path: Path) -> Any:
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict):
        for key in _VOLATILE_CONFIG_KEYS:
            data.pop(key, None)
    return data


def checkpoint_digest(directory: Path, extra_files: Sequence[str] = ()) -> dict[str, Any]:
    """The checkpoint part of a fingerprint: canonical configs + SHA-256 of weight / code files, and of
    ``extra_files`` (by name, those present) when the kind's features depend on more (a tokenizer).
    Without ``extra_files`` the digest is what it always was, so existing caches stay valid."""
    configs = {name: _canonical_json(directory / name) for name in _CONFIG_FILES if (directory / name).is_file()}
    files = {
        p.name: _file_sha256(p)
        for p in sorted(directory.iterdir())
        if p.is_file() and (p.name.endswith(_HASHED_SUFFIXES) or p.name.endswith(".index.json"))
    }
    digest: dict[str, Any] = {"configs": configs, "files": files}
    if extra_files:
        digest["extra"] = {name: _file_sha256(directory / name) for name in sorted(extra_files)
                           if (directory / name).is_file()}  # fmt: skip
    return digest


def _state_dict_digest(model: torch.nn.Module) -> dict[str, Any]:
    """Fallback when the checkpoint files cannot be found: hash the loaded tensors themselves."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return {"state_dict": digest.hexdigest(), "config": model.config.to_diff_dict()}


def _hub_snapshot(repo_id: str, revision: str | None) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - a transformers dependency
        return None
    found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    return Path(found).parent if isinstance(found, str) else None


def _sha256_json(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


# ------------------------------------------------------------------------------------------ frozen encoders
class FrozenEncoder(Encoder):
    """A frozen HF encoder: loaded once, eval(), no gradients; ``extract`` one clip -> ``(T, D)``.

    Subclasses set how the model and its processor load (``_load_model``, ``_load_processor``)
    and how a batch of clips becomes features (``_extract_many``).
    """

    learned = False
    OPTIONS = _FROZEN_OPTIONS

    def __init__(self, name_or_path: str | os.PathLike | None, **options: Any):
        if name_or_path is None or not str(name_or_path).strip():
            raise ConfigError(f"a '{self.kind}' encoder needs a checkpoint path or hub id (name_or_path)")
        self.name_or_path = str(name_or_path)
        self.options = options
        self._dir = _local_dir(self.name_or_path)
        self.config = _load_config(self.name_or_path, options)
        self.model = self._load_model()
        self.model.eval().requires_grad_(False)
        self.processor = self._load_processor()
        self.feature_dim = _width(self.model.config)
        self._checkpoint_digest: dict[str, Any] | None = None

    # --- loading -------------------------------------------------------------------------------------
    def _from_pretrained(self, loader: Callable[..., Any], what: str = "model", **kwargs: Any) -> Any:
        return _load(
            self.name_or_path, what, loader, revision=self.options["revision"],
            trust_remote_code=self.options["trust_remote_code"], **kwargs,
        )  # fmt: skip

    def _load_model(self) -> torch.nn.Module:
        from transformers import AutoModel

        return self._from_pretrained(AutoModel.from_pretrained, dtype=torch.float32)

    def _load_processor(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def feature_dim_from_config(cls, name_or_path, options: dict[str, Any]) -> int:
        if not name_or_path:
            raise ConfigError(f"a '{cls.kind}' encoder needs a checkpoint path or hub id (name_or_path)")
        return _width(cls._feature_config(_load_config(str(name_or_path), options)))

    @classmethod
    def _feature_config(cls, config):
        return config

    # --- device / dtype ------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> FrozenEncoder:
        self.model.to(device=device, dtype=dtype)
        return self

    # --- fingerprint ---------------------------------------------------------------------------------
    def fingerprint(self) -> str:
        if self._checkpoint_digest is None:
            directory = self._dir or _hub_snapshot(self.name_or_path, self.options["revision"])
            self._checkpoint_digest = (
                checkpoint_digest(directory, self.DIGEST_FILES) if directory is not None
                else _state_dict_digest(self.model)
            )
        return _sha256_json({
            "fingerprint_version": FINGERPRINT_VERSION,
            "kind": self.kind,
            "model_class": type(self.model).__name__,
            "dtype": str(self.dtype),
            "options": self._feature_options(),
            "checkpoint": self._checkpoint_digest,
        })  # fmt: skip

    # --- extraction ----------------------------------------------------------------------------------
    def extract(self, x: Any) -> torch.Tensor:
        """Features of ONE clip: ``(T, D)`` float32 on CPU."""
        return self.extract_batch([x])[0]

    def extract_batch(self, items: Sequence[Any], batch_size: int = 8) -> list[torch.Tensor]:
        """Features of several clips, batched where the model allows; one ``(T, D)`` per clip."""
        if batch_size <= 0:
            raise ConfigError(f"batch_size must be > 0, got {batch_size}")
        if not items:
            return []
        with torch.inference_mode():
            return [t.float().cpu().contiguous() for t in self._extract_many(list(items), batch_size)]

    def _extract_many(self, items: list[Any], batch_size: int) -> list[torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def _hidden(self, **inputs: Any) -> tuple[torch.Tensor, Any]:
        """(selected hidden states, raw outputs) of one forward, inputs moved to the model's device/dtype."""
        device, dtype = self.device, self.dtype
        moved = {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in inputs.items()}
        layer = self.options["layer"]
        out = self.model(**moved, output_hidden_states=layer != -1)
        if layer == -1:
            return out.last_hidden_state, out
        try:
            return out.hidden_states[layer], out
        except IndexError:
            raise ConfigError(
                f"encoder option 'layer' is {layer}, but '{self.name_or_path}' has {len(out.hidden_states)} hidden states"
            ) from None


def _chunks(seq: Sequence[Any], size: int):
    for start in range(0, len(seq), size):
        yield start, seq[start : start + size]


# ------------------------------------------------------------------------------------------ audio
@register_encoder("audio")
class AudioEncoder(FrozenEncoder):
    """HuBERT / wav2vec2 (and kin) via AutoFeatureExtractor, or a Whisper encoder (log-mel, 30 s windows).

    Input: float32 mono numpy at ``self.sampling_rate`` (16 kHz). Default ``pooling: mean`` -> (1, D)
    (Emotion-LLaMA: HuBERT-large, one token); ``none`` -> every frame (``num_tokens(len(audio))``).
    """

    OPTIONS = {**_FROZEN_OPTIONS, "pooling": Option("mean", choices=("mean", "none"))}

    def _load_model(self) -> torch.nn.Module:
        model = super()._load_model()
        self.is_whisper = bool(getattr(model.config, "is_encoder_decoder", False)) and hasattr(model, "get_encoder")
        if self.is_whisper:
            return model.get_encoder()  # the decoder is dropped
        return model

    def _load_processor(self) -> Any:
        from transformers import AutoFeatureExtractor  # AutoProcessor fails on HuBERT dirs without a CTC vocab

        extractor = self._from_pretrained(AutoFeatureExtractor.from_pretrained, "feature extractor")
        self.sampling_rate = int(extractor.sampling_rate)
        if self.is_whisper:
            self.window_samples = int(extractor.n_samples)  # 30 s
            self.window_frames = int(self.model.config.max_source_positions)  # 1500: 100 Hz mel, 2x conv stride
        return extractor

    @classmethod
    def _feature_config(cls, config):
        return config  # whisper: d_model; others: hidden_size

    def _frames_for(self, num_samples: int) -> int:
        """Output frames for ``num_samples`` of audio (before pooling)."""
        if self.is_whisper:
            full, rest = divmod(num_samples, self.window_samples)
            return full * self.window_frames + (
                math.ceil(rest * self.window_frames / self.window_samples) if rest else 0
            )
        return int(self.model._get_feat_extract_output_lengths(torch.tensor(num_samples)).item())

    def num_tokens(self, input_len: int | None = None) -> int:
        """1 with ``pooling: mean``; otherwise the frame count for ``input_len`` samples."""
        if self.options["pooling"] == "mean":
            return 1
        if input_len is None:
            raise ValueError("pooling 'none': the token count depends on the audio length; pass input_len (samples)")
        return self._frames_for(int(input_len))

    def _check(self, audio: Any, index: int) -> np.ndarray:
        x = np.asarray(audio, dtype=np.float32)
        if x.ndim == 2 and 1 in x.shape:
            x = x.reshape(-1)
        if x.ndim != 1:
            raise EmollmError(f"audio input {index} must be mono 1-D samples, got shape {x.shape}")
        if not np.isfinite(x).all():
            raise EmollmError(f"audio input {index} holds NaN or infinite samples")
        if self._frames_for(len(x)) < 1:
            raise EmollmError(
                f"audio input {index} is too short for '{self.name_or_path}': {len(x)} samples at {self.sampling_rate} Hz"
            )
        return x

    def _extract_many(self, items: list[Any], batch_size: int) -> list[torch.Tensor]:
        audios = [self._check(a, i) for i, a in enumerate(items)]
        frames = self._whisper_frames(audios, batch_size) if self.is_whisper else self._ssl_frames(audios, batch_size)
        if self.options["pooling"] == "mean":
            return [f.mean(dim=0, keepdim=True) for f in frames]
        return frames

    def _ssl_frames(self, audios: list[np.ndarray], batch_size: int) -> list[torch.Tensor]:
        # Clips of equal length run together: no padding, so batched features equal one-by-one ones
        # (group-norm front ends such as hubert-base have no attention mask).
        out: list[torch.Tensor | None] = [None] * len(audios)
        by_len: dict[int, list[int]] = {}
        for i, a in enumerate(audios):
            by_len.setdefault(len(a), []).append(i)
        for indices in by_len.values():
            for _, part in _chunks(indices, batch_size):
                inputs = self.processor(
                    [audios[i] for i in part], sampling_rate=self.sampling_rate, return_tensors="pt"
                )
                hidden, _ = self._hidden(input_values=inputs["input_values"])
                for row, i in enumerate(part):
                    out[i] = hidden[row]
        return out  # type: ignore[return-value]

    def _whisper_frames(self, audios: list[np.ndarray], batch_size: int) -> list[torch.Tensor]:
        windows: list[tuple[int, np.ndarray]] = []  # (clip index, <= 30 s of samples)
        for i, a in enumerate(audios):
            for start in range(0, len(a), self.window_samples):
                windows.append((i, a[start : start + self.window_samples]))
        pieces: list[list[torch.Tensor]] = [[] for _ in audios]
        for _, part in _chunks(windows, batch_size):
            inputs = self.processor([w for _, w in part], sampling_rate=self.sampling_rate, return_tensors="pt")
            hidden, _ = self._hidden(input_features=inputs["input_features"])
            for row, (i, w) in enumerate(part):
                pieces[i].append(hidden[row, : self._frames_for(len(w))])
        return [torch.cat(p, dim=0) for p in pieces]


# ------------------------------------------------------------------------------------------ images
def _check_frames(frames: Any, index: int, what: str) -> np.ndarray:
    x = np.asarray(frames)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3 or x.shape[0] == 0:
        raise EmollmError(f"{what} input {index} must be uint8 RGB (N, H, W, 3) with N >= 1, got shape {x.shape}")
    if x.dtype != np.uint8:
        raise EmollmError(f"{what} input {index} must be uint8 RGB, got {x.dtype}")
    return x


class _ImageEncoder(FrozenEncoder):
    """Shared by ``visual`` and ``face``: per-image tokens ``(N, prefix + P, D)``."""

    def _load_processor(self) -> Any:
        from transformers import AutoImageProcessor

        return self._from_pretrained(AutoImageProcessor.from_pretrained, "image processor")

    @property
    def patch_size(self) -> int:
        p = self.model.config.patch_size
        return p if isinstance(p, int) else p[0]

    def patches_per_image(self) -> int:
        """P: patches per processed image (from the processor's output size; no model run)."""
        if not hasattr(self, "_patches"):
            pixel = self.processor(images=[np.zeros((8, 8, 3), np.uint8)], return_tensors="pt")["pixel_values"]
            h, w = pixel.shape[-2:]
            self._patches = (h // self.patch_size) * (w // self.patch_size)
        return self._patches

    def _forward_images(self, images: list[np.ndarray]) -> tuple[torch.Tensor, Any]:
        pixel = self.processor(images=images, return_tensors="pt")["pixel_values"]
        return self._hidden(pixel_values=pixel)

    def _image_tokens(self, frames: Sequence[np.ndarray], batch_size: int) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """(tokens (N, S, D), pooler outputs (N, D) or None, prefix = S - P) for N images."""
        hidden, pooled = [], []
        for _, part in _chunks(list(frames), batch_size):
            h, out = self._forward_images(part)
            hidden.append(h)
            pooled.append(getattr(out, "pooler_output", None))
        tokens = torch.cat(hidden, dim=0)
        prefix = tokens.shape[1] - self.patches_per_image()
        if prefix < 0:
            raise EmollmError(
                f"encoder '{self.name_or_path}' returned {tokens.shape[1]} tokens for {self.patches_per_image()} patches"
            )
        pooler = torch.cat(pooled, dim=0) if all(p is not None for p in pooled) else None
        return tokens, pooler, prefix

    @staticmethod
    def _global(tokens: torch.Tensor, pooler: torch.Tensor | None, prefix: int, how: str) -> torch.Tensor:
        """One token per image: the CLS token (or the model's pooled output when it has no CLS, as
        SigLIP) for ``cls``; the mean of the patch tokens for ``mean``."""
        if how == "cls":
            if prefix >= 1:
                return tokens[:, 0]
            if pooler is not None and pooler.dim() == 2:
                return pooler
        return tokens[:, prefix:].mean(dim=1)


@register_encoder("visual")
class VisualEncoder(_ImageEncoder):
    """CLIP / SigLIP / ViT / EVA-CLIP on sampled frames (a full CLIP / SigLIP checkpoint loads its vision tower).

    Default ``tokens: patch`` + ``frame_pooling: mean`` -> (P, D): on the one peak frame, the
    patch tokens Emotion-LLaMA feeds (regrouped by the projector).
    """

    OPTIONS = {
        **_FROZEN_OPTIONS,
        "tokens": Option("patch", choices=("patch", "cls", "cls+patch", "mean")),
        "frame_pooling": Option("mean", choices=("mean", "none")),
        # which frames the extraction feeds: the clip's sampled frames, or the builder's peak frame alone
        # (Emotion-LLaMA's global encoder); chosen by the caller, part of the fingerprint
        "frames": Option("sampled", choices=("sampled", "peak")),
    }

    def _load_model(self) -> torch.nn.Module:
        vision_config = getattr(self.config, "vision_config", None)
        if vision_config is None:
            return super()._load_model()
        if self.options["trust_remote_code"]:
            model = super()._load_model()
            return getattr(model, "vision_model", model)
        from transformers.models.auto.modeling_auto import MODEL_MAPPING

        try:
            tower = MODEL_MAPPING[type(vision_config)]  # CLIPVisionConfig -> CLIPVisionModel, SigLIP likewise
        except KeyError:
            raise EmollmError(
                f"encoder '{self.name_or_path}' ({self.config.model_type}) has a vision config with no known vision model"
            ) from None
        return self._from_pretrained(tower.from_pretrained, dtype=torch.float32)

    @classmethod
    def _feature_config(cls, config):
        return getattr(config, "vision_config", None) or config

    def _per_frame(self) -> int:
        tokens = self.options["tokens"]
        return {"cls": 1, "mean": 1, "patch": self.patches_per_image(), "cls+patch": 1 + self.patches_per_image()}[
            tokens
        ]

    def num_tokens(self, input_len: int | None = None) -> int:
        """Tokens per clip; ``input_len`` = frames, needed only with ``frame_pooling: none``."""
        if self.options["frame_pooling"] == "mean":
            return self._per_frame()
        if self.options["frames"] == "peak":
            return self._per_frame()
        if input_len is None:
            raise ValueError("frame_pooling 'none': the token count depends on the frame count; pass input_len")
        return int(input_len) * self._per_frame()

    def _extract_many(self, items: list[Any], batch_size: int) -> list[torch.Tensor]:
        clips = [_check_frames(x, i, "visual") for i, x in enumerate(items)]
        # a flat list, not one array: clips of one batch may differ in frame size (the processor resizes)
        tokens, pooler, prefix = self._image_tokens([image for clip in clips for image in clip], batch_size)
        how = self.options["tokens"]
        if how == "patch":
            per_image = tokens[:, prefix:]
        elif how == "cls+patch":
            per_image = torch.cat([self._global(tokens, pooler, prefix, "cls")[:, None], tokens[:, prefix:]], dim=1)
        else:
            per_image = self._global(tokens, pooler, prefix, how)[:, None]
        out, start = [], 0
        for clip in clips:
            part = per_image[start : start + len(clip)]  # (N, tokens per frame, D)
            start += len(clip)
            out.append(part.mean(dim=0) if self.options["frame_pooling"] == "mean" else part.flatten(0, 1))
        return out


@register_encoder("face")
class FaceEncoder(_ImageEncoder):
    """ViT-MAE (Emotion-LLaMA: MAE on aligned faces) with masking off; default ``tokens: mean`` +
    ``crop_pooling: mean`` -> (1, D); ``crop_pooling: none`` -> (N, D), one token per crop."""

    OPTIONS = {
        **_FROZEN_OPTIONS,
        "tokens": Option("mean", choices=("mean", "cls")),
        "crop_pooling": Option("mean", choices=("mean", "none")),
    }

    def _load_model(self) -> torch.nn.Module:
        from transformers import AutoModel

        extra = {"mask_ratio": 0.0} if hasattr(self.config, "mask_ratio") else {}  # ViT-MAE masks 75 % otherwise
        return self._from_pretrained(AutoModel.from_pretrained, dtype=torch.float32, **extra)

    def num_tokens(self, input_len: int | None = None) -> int:
        """1 with ``crop_pooling: mean``; else one per crop (``input_len`` crops)."""
        if self.options["crop_pooling"] == "mean":
            return 1
        if input_len is None:
            raise ValueError("crop_pooling 'none': the token count is the crop count; pass input_len")
        return int(input_len)

    def _forward_images(self, images: list[np.ndarray]) -> tuple[torch.Tensor, Any]:
        pixel = self.processor(images=images, return_tensors="pt")["pixel_values"]
        if not hasattr(self.config, "mask_ratio"):
            return self._hidden(pixel_values=pixel)
        # ViT-MAE shuffles patches by argsort(noise) even at mask_ratio 0: an increasing noise keeps them in order.
        noise = torch.arange(self.patches_per_image(), dtype=torch.float32).expand(len(images), -1)
        hidden, out = self._hidden(pixel_values=pixel, noise=noise)
        if hidden.shape[1] != 1 + self.patches_per_image():
            raise EmollmError(
                f"face encoder '{self.name_or_path}' returned {hidden.shape[1] - 1} of {self.patches_per_image()} "
                "patches: masking must be off (mask_ratio=0.0)"
            )
        return hidden, out

    def _extract_many(self, items: list[Any], batch_size: int) -> list[torch.Tensor]:
        clips = [_check_frames(x, i, "face") for i, x in enumerate(items)]
        # a flat list, not one array: clips of one batch may differ in frame size (the processor resizes)
        tokens, pooler, prefix = self._image_tokens([image for clip in clips for image in clip], batch_size)
        per_crop = self._global(tokens, pooler, prefix, self.options["tokens"])  # (N_total, D)
        out, start = [], 0
        for clip in clips:
            part = per_crop[start : start + len(clip)]
            start += len(clip)
            out.append(part.mean(dim=0, keepdim=True) if self.options["crop_pooling"] == "mean" else part)
        return out


# ------------------------------------------------------------------------------------------ video
def uniform_indices(total: int, n: int) -> list[int]:
    """``n`` indices into ``total`` items: the centre of each of ``n`` equal segments (repeats when short)."""
    return [min(total - 1, int((k + 0.5) * total / n)) for k in range(n)]


@register_encoder("video")
class VideoEncoder(FrozenEncoder):
    """VideoMAE on face crops resampled to ``num_frames`` (default: the checkpoint's, 16).

    Default ``tokens: mean`` -> (1, D) (Emotion-LLaMA: one VideoMAE token); ``all`` -> every token.
    """

    OPTIONS = {
        **_FROZEN_OPTIONS,
        "tokens": Option("mean", choices=("mean", "all")),
        "num_frames": Option(None, types=(int, type(None))),
    }

    def _load_processor(self) -> Any:
        from transformers import AutoImageProcessor

        return self._from_pretrained(AutoImageProcessor.from_pretrained, "image processor")

    @property
    def num_frames(self) -> int:
        return int(self.options["num_frames"] or getattr(self.model.config, "num_frames", 16))

    def num_tokens(self, input_len: int | None = None) -> int:
        if self.options["tokens"] == "mean":
            return 1
        cfg = self.model.config
        pixel = self.processor([np.zeros((8, 8, 3), np.uint8)] * self.num_frames, return_tensors="pt")["pixel_values"]
        h, w = pixel.shape[-2:]
        return (self.num_frames // getattr(cfg, "tubelet_size", 1)) * (h // cfg.patch_size) * (w // cfg.patch_size)

    def _extract_many(self, items: list[Any], batch_size: int) -> list[torch.Tensor]:
        clips = [_check_frames(x, i, "video") for i, x in enumerate(items)]
        videos = [[clip[j] for j in uniform_indices(len(clip), self.num_frames)] for clip in clips]
        out: list[torch.Tensor] = []
        for _, part in _chunks(videos, batch_size):
            pixel = self.processor(part, return_tensors="pt")["pixel_values"]  # (B, T, 3, H, W)
            hidden, _ = self._hidden(pixel_values=pixel)
            out.extend(h.mean(dim=0, keepdim=True) if self.options["tokens"] == "mean" else h for h in hidden)
        return out


# ------------------------------------------------------------------------------------------ text
#: What a tokenizer is saved as (any family: WordPiece, byte-level BPE, sentencepiece).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model",
                   "tokenizer.model")


@register_encoder("text")
class TextEncoder(FrozenEncoder):
    """A frozen BERT / RoBERTa (any ``AutoModel`` text encoder) on the clip's subtitle -> (1, D).

    ``tokens: cls`` (default; what TelME's and HLM12ERC's RoBERTa classifiers read) takes the first
    token's last hidden state; ``mean`` averages the real (non-padding) tokens. Subtitles longer
    than ``max_length`` tokens are truncated (default: the tokenizer's ``model_max_length``, capped
    at the model's ``max_position_embeddings``). The tokenizer files are part of the fingerprint.
    """

    OPTIONS = {
        **_FROZEN_OPTIONS,
        "tokens": Option("cls", choices=("cls", "mean")),
        "max_length": Option(None, types=(int, type(None))),
    }
    DIGEST_FILES = TOKENIZER_FILES

    def _load_processor(self) -> Any:
        from transformers import AutoTokenizer

        return self._from_pretrained(AutoTokenizer.from_pretrained, "tokenizer")

    @property
    def max_length(self) -> int:
        """Tokens per subtitle at most, special tokens included."""
        config = self.model.config
        limits = [self.options["max_length"], getattr(self.processor, "model_max_length", None)]
        positions = getattr(config, "max_position_embeddings", None)
        if isinstance(positions, int):
            # RoBERTa's position ids start after its padding index (pad_token_id + 1 positions unused)
            unused = (config.pad_token_id or 0) + 1 if "roberta" in str(config.model_type) else 0
            limits.append(positions - unused)
        return min(int(v) for v in limits if isinstance(v, int) and 0 < v < 1_000_000)  # tokenizers say 1e30 for "none"

    def num_tokens(self, input_len: int | None = None) -> int:
        return 1

    def _check(self, text: Any, index: int) -> str:
        if not isinstance(text, str):
            raise EmollmError(f"text input {index} must be a string (the subtitle), got {type(text).__name__}")
        if not text.strip():
            raise EmollmError(f"text input {index} is empty: a clip without a subtitle has no text features")
        return text

    def _extract_many(self, items: list[Any], batch_size: int) -> list[torch.Tensor]:
        texts = [self._check(t, i) for i, t in enumerate(items)]
        out: list[torch.Tensor] = []
        for _, part in _chunks(texts, batch_size):
            inputs = self.processor(part, padding=True, truncation=True, max_length=self.max_length,
                                    return_tensors="pt")
            hidden, _ = self._hidden(**{k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask",
                                                                                  "token_type_ids")})
            if self.options["tokens"] == "cls":
                pooled = hidden[:, 0]
            else:  # mean over the real tokens: padding must not change a subtitle's features
                mask = inputs["attention_mask"].to(hidden.device, hidden.dtype).unsqueeze(-1)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
            out.extend(p.unsqueeze(0) for p in pooled)
        return out


# ------------------------------------------------------------------------------------------ AU (learned)
@register_encoder("au")
class LearnedAU(Encoder):
    """The learned AU encoder's registry entry: no checkpoint, no extraction.

    ``feature_dim`` is the raw input width ``2 * num_aus`` (what the feature cache stores: the
    per-frame AU sequence in :data:`MERR_AUS` order); :meth:`build_module` makes the
    :class:`AUEncoder` the model owns and trains; ``num_tokens()`` is its ``K`` output tokens.
    """

    learned = True
    OPTIONS = {
        "num_aus": Option(len(MERR_AUS), types=(int,)),
        # the module's sizes, with AUEncoder's own defaults (declared once: AU_ENCODER_DEFAULTS)
        **{name: Option(default, types=(float, int) if name == "dropout" else (int,), affects_features=False)
           for name, default in AU_ENCODER_DEFAULTS.items()},
    }

    def __init__(self, name_or_path: str | os.PathLike | None = None, **options: Any):
        if name_or_path:
            raise ConfigError(
                f"the 'au' encoder is learned with the model and takes no checkpoint, got '{name_or_path}'"
            )
        self.name_or_path = None
        self.options = options
        self.feature_dim = 2 * options["num_aus"]

    @property
    def au_names(self) -> tuple[str, ...]:
        return (
            MERR_AUS
            if self.options["num_aus"] == len(MERR_AUS)
            else tuple(f"au{i}" for i in range(self.options["num_aus"]))
        )

    @classmethod
    def feature_dim_from_config(cls, name_or_path, options: dict[str, Any]) -> int:
        return 2 * options["num_aus"]

    def num_tokens(self, input_len: int | None = None) -> int:
        return self.options["num_tokens"]

    def build_module(self, **overrides: Any) -> AUEncoder:
        """A fresh :class:`AUEncoder` from the options (``overrides``, e.g. ``hidden_size``, win)."""
        kwargs = {**self.options, **overrides}
        return AUEncoder(**kwargs)

    def fingerprint(self) -> str:
        """Over what the cached raw AU sequence depends on: the AU count and order (not the module's sizes)."""
        return _sha256_json({"fingerprint_version": FINGERPRINT_VERSION, "kind": "au", "aus": list(self.au_names)})


# ------------------------------------------------------------------------------------------ imported
@register_encoder("precomputed")
class PrecomputedFeatures(Encoder):
    """Features that can only be imported, never computed: files someone else extracted with encoders
    that are not available as checkpoints (Emotion-LLaMA's per-clip ``.npy``: MAE ``mae_340_UTT``,
    VideoMAE ``maeV_399_UTT``, Chinese HuBERT-large ``HL-UTT``, each 1024-d).

    ``name_or_path`` is a source *tag* (``emotion-llama/mae_340_UTT``), never opened as a path.
    Options: ``feature_dim`` (D, required; :func:`encoder_options` takes it from the config entry's
    ``feature_dim``), ``num_tokens`` (T, default 1; from ``num_input_tokens``) and ``folder`` (the
    source folder of the files, default the tag's last part; where they come from, not what they
    are, so not in the fingerprint). :meth:`fingerprint` hashes the kind, the tag and the shape: the
    same tag gives the same cache folder in every process. ``emollm import emotion-llama-features``
    (:func:`emollm.features.imported.import_precomputed_features`) fills the cache; :meth:`extract`
    refuses.
    """

    learned = False
    OPTIONS = {
        "folder": Option(None, types=(str, type(None)), affects_features=False),
        "feature_dim": Option(None, types=(int, type(None))),
        "num_tokens": Option(1, types=(int,)),
    }

    def __init__(self, name_or_path: str | os.PathLike | None = None, **options: Any):
        if name_or_path is None or not str(name_or_path).strip():
            raise ConfigError("a 'precomputed' entry needs a source tag as name_or_path (e.g. "
                              "emotion-llama/mae_340_UTT): it names where the imported features come from")
        for key in ("feature_dim", "num_tokens"):
            if options.get(key) is not None and options[key] < 1:
                raise ConfigError(f"a 'precomputed' entry's {key} must be >= 1, got {options[key]}")
        self.name_or_path = str(name_or_path)
        self.options = options

    @property
    def feature_dim(self) -> int:  # type: ignore[override]
        return self.feature_dim_from_config(self.name_or_path, self.options)

    @property
    def folder(self) -> str:
        """The folder of the source files under the import root: ``folder``, else the tag's last part."""
        return self.options["folder"] or self.name_or_path.rstrip("/").rsplit("/", 1)[-1]

    @classmethod
    def feature_dim_from_config(cls, name_or_path, options: dict[str, Any]) -> int:
        if options.get("feature_dim") is None:
            raise ConfigError(f"the 'precomputed' entry '{name_or_path}' needs feature_dim (the width of the "
                              "imported features): nothing else can tell it", hint="set feature_dim on the entry")
        return int(options["feature_dim"])

    def num_tokens(self, input_len: int | None = None) -> int:
        return int(self.options["num_tokens"])

    def to(self, device: Any = None, dtype: Any = None) -> PrecomputedFeatures:
        return self  # nothing to move: no model

    def fingerprint(self) -> str:
        """Over what the imported features are: the kind, the source tag and their shape (not ``folder``)."""
        return _sha256_json({"fingerprint_version": FINGERPRINT_VERSION, "kind": self.kind,
                             "source": self.name_or_path, "feature_dim": self.feature_dim,
                             "num_tokens": self.num_tokens()})

    def _refuse(self) -> EmollmError:
        return EmollmError(
            f"the '{self.name_or_path}' features come from imported files (`emollm import "
            "emotion-llama-features`, encoder kind 'precomputed'): they cannot be computed from a clip",
            hint="import them into the feature cache (`emollm import emotion-llama-features --config CFG "
                 "DATASET_DIR --from ROOT`) and read them from there (`emollm predict`, training)")

    def extract(self, x: Any) -> torch.Tensor:
        raise self._refuse()

    def extract_batch(self, items: Sequence[Any], batch_size: int = 8) -> list[torch.Tensor]:
        raise self._refuse()
