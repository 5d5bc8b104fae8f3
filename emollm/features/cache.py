"""The feature cache: frozen-encoder features per (clip id, modality), keyed by the encoder's fingerprint.

Layout under the cache root (default ``<dataset>/features``)::

    <root>/config.yaml                                   resolved config of the last `emollm features`
    <root>/errors.jsonl                                  clips that failed (merged from .errors/)
    <root>/<modality>/<fingerprint[:16]>/encoder.json    which encoder made this folder (full fingerprint)
    <root>/<modality>/<fingerprint[:16]>/<safe id>.safetensors   one tensor "features" (T, D)
    <root>/<modality>/<fingerprint[:16]>/<safe id>.absent        the clip has no input for it (no face / audio)

``<safe id>`` is the clip id percent-encoded (``/``, spaces, non-ASCII ... become ``%XX``): reversible
with :func:`clip_id_of`. Ids whose encoding is longer than 180 characters are cut and suffixed with
a hash; the clip id is also in every file's metadata. A changed encoder (weights, config, options)
has another fingerprint, hence another folder: stale features are never served. Files are written
under a temporary name and renamed into place; safetensors only, no pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote

import torch

from emollm import __version__
from emollm.errors import FeatureCacheError, FeatureMissingError
from emollm.log import get_logger

log = get_logger(__name__)

TENSOR_KEY = "features"
ENCODER_FILE = "encoder.json"
ABSENT_SUFFIX = ".absent"
_MAX_NAME = 180
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def safe_name(clip_id: str) -> str:
    """A file-name-safe, reversible form of ``clip_id`` (percent-encoding; long ids hashed)."""
    name = quote(clip_id, safe="")
    if name.startswith("."):
        name = "%2E" + name[1:]  # no hidden files, no '.' / '..'
    if len(name) > _MAX_NAME:
        name = name[:_MAX_NAME] + "~" + hashlib.sha1(clip_id.encode()).hexdigest()[:16]
    return name


def clip_id_of(name: str) -> str:
    """The clip id of a :func:`safe_name` (hashed long names: read the file's metadata instead)."""
    return unquote(name)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def weights_key(kind: str, name_or_path: str, options: dict[str, Any]) -> str | None:
    """What identifies an encoder's features without loading it: kind, feature options and the
    checkpoint's configs + weight-file hashes. None when the checkpoint files are not on disk."""
    from emollm.modeling import encoders as enc

    cls = enc._encoder_class(kind)
    resolved = enc._resolve_options(kind, cls.OPTIONS, dict(options))
    directory = enc._local_dir(str(name_or_path)) or enc._hub_snapshot(str(name_or_path), resolved.get("revision"))
    if directory is None:
        return None
    feature_options = {k: v for k, v in resolved.items() if cls.OPTIONS[k].affects_features}
    return enc._sha256_json({"fingerprint_version": enc.FINGERPRINT_VERSION, "kind": kind,
                             "options": feature_options, "checkpoint": enc.checkpoint_digest(directory, cls.DIGEST_FILES)})


class FeatureCache:
    """Read and write cached features. Bind each modality to its encoder first (:meth:`register`
    with a loaded encoder, or :meth:`bind` from the config alone), then :meth:`get` / :meth:`put`.

    ``on_missing``: ``"error"`` (a missing entry raises :class:`FeatureMissingError` naming the clip,
    modality and encoder) or ``"skip"`` (:meth:`get` returns None and counts it in ``missing``).
    """

    def __init__(self, root: str | os.PathLike, *, dtype: str = "float16",
                 on_missing: Literal["error", "skip"] = "error"):
        if dtype not in _DTYPES:
            raise FeatureCacheError(f"features.dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        if on_missing not in ("error", "skip"):
            raise FeatureCacheError(f"features.on_missing must be 'error' or 'skip', got {on_missing!r}")
        self.root = Path(root)
        self.dtype = dtype
        self.on_missing = on_missing
        self.fingerprints: dict[str, str] = {}  # modality -> full fingerprint
        self.encoders: dict[str, str] = {}  # modality -> name_or_path
        self.missing: dict[str, int] = {}  # modality -> entries asked for and not found (skip mode)

    @classmethod
    def from_config(cls, cfg: Any, dataset_dir: str | os.PathLike | None = None) -> FeatureCache:
        """The cache of ``cfg.features`` (``cache_dir``, default ``<dataset_dir>/features``)."""
        root = cfg.features.cache_dir
        if root is None:
            dataset_dir = dataset_dir or cfg.data.dataset_dir
            if not dataset_dir:
                raise FeatureCacheError("no feature cache folder: set features.cache_dir or data.dataset_dir")
            root = Path(dataset_dir) / "features"
        return cls(root, dtype=cfg.features.dtype, on_missing=cfg.features.on_missing)

    # -- binding ---------------------------------------------------------------------------
    def folder(self, modality: str, fingerprint: str | None = None) -> Path:
        fp = fingerprint or self._fingerprint(modality)
        return self.root / modality / fp[:16]

    def _fingerprint(self, modality: str) -> str:
        try:
            return self.fingerprints[modality]
        except KeyError:
            raise FeatureCacheError(f"feature cache: modality '{modality}' is not bound to an encoder") from None

    def register(self, modality: str, encoder: Any) -> str:
        """Bind ``modality`` to a loaded encoder; writes its ``encoder.json``. Returns the fingerprint."""
        fp = encoder.fingerprint()
        folder = self.folder(modality, fp)
        key = weights_key(encoder.kind, encoder.name_or_path, {k: v for k, v in encoder.options.items()})
        info = {"modality": modality, "kind": encoder.kind, "name_or_path": encoder.name_or_path,
                "options": encoder.options, "fingerprint": fp, "weights_key": key,
                "feature_dim": encoder.feature_dim, "emollm_version": __version__}  # fmt: skip
        path = folder / ENCODER_FILE
        existing = self._read_json(path)
        if existing is None or existing.get("fingerprint") != fp or existing.get("weights_key") != key:
            atomic_write_bytes(path, json.dumps(info, indent=2, default=str).encode())
        self.fingerprints[modality] = fp
        self.encoders[modality] = encoder.name_or_path
        return fp

    def bind(self, modality: str, kind: str, name_or_path: str, options: dict[str, Any] | None = None) -> str:
        """Bind ``modality`` from the config alone (no weights loaded): the checkpoint's files are
        hashed and matched against the ``encoder.json`` of the cache folders. A checkpoint that is
        not local (hub id outside the HF cache) is loaded once to compute its fingerprint."""
        options = dict(options or {})
        key = weights_key(kind, name_or_path, options)
        fp = None
        if key is not None:
            for info_path in sorted((self.root / modality).glob(f"*/{ENCODER_FILE}")):
                info = self._read_json(info_path)
                if info and info.get("weights_key") == key:
                    fp = info["fingerprint"]
                    break
        if fp is None and key is None:
            from emollm.modeling.encoders import build_encoder

            fp = build_encoder(kind, name_or_path, **options).fingerprint()
        if fp is None:  # nothing cached for this encoder: every get() is a miss
            fp = "uncached-" + key  # type: ignore[operator]
        self.fingerprints[modality] = fp
        self.encoders[modality] = str(name_or_path)
        return fp

    def bind_specs(self, modalities: dict[str, dict[str, Any]]) -> dict[str, str]:
        """Bind every frozen modality of ``EmoLLMConfig.modalities`` / ``modality_specs(...)``."""
        out = {}
        for name, spec in modalities.items():
            if spec["kind"] == "au":
                continue
            encoder = dict(spec.get("encoder") or {})
            path = encoder.pop("name_or_path", None)
            if not path:
                raise FeatureCacheError(f"modality '{name}' names no encoder checkpoint: cannot find its cache")
            out[name] = self.bind(name, spec["kind"], path, encoder)
        return out

    # -- entries ---------------------------------------------------------------------------
    def path(self, clip_id: str, modality: str) -> Path:
        return self.folder(modality) / (safe_name(clip_id) + ".safetensors")

    def _absent_path(self, clip_id: str, modality: str) -> Path:
        return self.folder(modality) / (safe_name(clip_id) + ABSENT_SUFFIX)

    def status(self, clip_id: str, modality: str) -> Literal["present", "absent", "missing"]:
        if self.path(clip_id, modality).is_file():
            return "present"
        if self._absent_path(clip_id, modality).is_file():
            return "absent"
        return "missing"

    def put(self, clip_id: str, modality: str, features: torch.Tensor) -> Path:
        """Store ``(T, D)`` features (in ``dtype``) atomically; removes an ``absent`` mark."""
        from safetensors.torch import save

        if features.dim() != 2:
            raise FeatureCacheError(f"clip '{clip_id}', modality '{modality}': features must be (T, D), "
                                    f"got shape {tuple(features.shape)}")
        fp = self._fingerprint(modality)
        metadata = {"clip_id": clip_id, "modality": modality, "encoder": self.encoders.get(modality, ""),
                    "fingerprint": fp, "shape": json.dumps(list(features.shape)), "dtype": self.dtype,
                    "emollm_version": __version__}  # fmt: skip
        tensor = features.detach().to("cpu", _DTYPES[self.dtype]).contiguous()
        path = self.path(clip_id, modality)
        atomic_write_bytes(path, save({TENSOR_KEY: tensor}, metadata=metadata))
        self._absent_path(clip_id, modality).unlink(missing_ok=True)
        return path

    def put_absent(self, clip_id: str, modality: str, reason: str) -> None:
        """Record that the clip has no input for ``modality`` (not an error: the sample goes without it)."""
        data = json.dumps({"clip_id": clip_id, "modality": modality, "reason": reason}).encode()
        atomic_write_bytes(self._absent_path(clip_id, modality), data)

    def info(self, clip_id: str, modality: str) -> dict[str, str]:
        """The metadata of an entry (header only: the tensor is not read)."""
        from safetensors import safe_open

        path = self.path(clip_id, modality)
        try:
            with safe_open(str(path), framework="pt") as fh:
                return dict(fh.metadata() or {})
        except FileNotFoundError:
            raise self._missing(clip_id, modality) from None
        except Exception as err:  # safetensors boundary: a truncated / foreign file
            raise FeatureCacheError(f"{path}: unreadable feature file ({err})",
                                    hint="delete it and rerun `emollm features`") from None

    def shape(self, clip_id: str, modality: str) -> tuple[int, ...]:
        return tuple(json.loads(self.info(clip_id, modality)["shape"]))

    def get(self, clip_id: str, modality: str) -> torch.Tensor | None:
        """``(T, D)`` float32 features; None when the clip has no input for it (absent) or, with
        ``on_missing="skip"``, no entry. A missing entry otherwise raises FeatureMissingError."""
        from safetensors.torch import load_file

        path = self.path(clip_id, modality)
        try:
            tensors = load_file(str(path))
        except FileNotFoundError:
            if self._absent_path(clip_id, modality).is_file():
                return None
            if self.on_missing == "skip":
                self.missing[modality] = self.missing.get(modality, 0) + 1
                return None
            raise self._missing(clip_id, modality) from None
        except Exception as err:  # safetensors boundary
            raise FeatureCacheError(f"{path}: unreadable feature file ({err})",
                                    hint="delete it and rerun `emollm features`") from None
        if TENSOR_KEY not in tensors:
            raise FeatureCacheError(f"{path}: no '{TENSOR_KEY}' tensor (not an emollm feature file)")
        return tensors[TENSOR_KEY].float()

    def _missing(self, clip_id: str, modality: str) -> FeatureMissingError:
        fp = self.fingerprints.get(modality)
        return FeatureMissingError(clip_id, modality, self.encoders.get(modality, "?"),
                                   None if fp is None or fp.startswith("uncached-") else fp)

    @staticmethod
    def _read_json(path: Path) -> dict[str, Any] | None:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None


__all__ = ["FeatureCache", "atomic_write_bytes", "clip_id_of", "safe_name", "weights_key"]
