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
has another fingerprint, hence another folder. Every other input of an entry (media and face
settings, the clip file's identity, the peak index, the subtitle, the dtype: :mod:`emollm.features.key`)
is recorded in the entry and compared on lookup by a cache made from a config
(:meth:`FeatureCache.from_config`): an entry whose inputs differ is stale, a miss. Files are written
under a temporary name and renamed into place; safetensors only, no pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote

import torch

from emollm import __version__
from emollm.errors import FeatureCacheError, FeatureMissingError
from emollm.features.key import NO_KEY, InputContext, describe_diff, same_clip
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


@dataclass
class EntryCheck:
    """One entry judged against the inputs of this cache's config (:meth:`FeatureCache.check`).

    ``state``: ``present`` (features, inputs as now), ``absent`` (an absent mark, inputs as now),
    ``stale`` (an entry whose inputs differ: ``reason`` says which; a lookup is a miss) or
    ``missing``. ``orphaned``: why a present / absent entry could not be checked against its clip
    (``no record`` in annotations.jsonl, ``no clip file``): it is served, ``emollm features --check``
    reports it."""

    state: Literal["present", "absent", "stale", "missing"]
    reason: str = ""
    orphaned: str = ""


class FeatureCache:
    """Read and write cached features. Bind each modality to its encoder first (:meth:`register`
    with a loaded encoder, or :meth:`bind` from the config alone), then :meth:`get` / :meth:`put`.

    ``on_missing``: ``"error"`` (a missing entry raises :class:`FeatureMissingError` naming the clip,
    modality and encoder) or ``"skip"`` (:meth:`get` returns None and counts it in ``missing``).

    ``context`` (:class:`~emollm.features.key.InputContext`, set by :meth:`from_config`): the media
    settings and dataset records every entry is keyed by. With it, :meth:`put` records each entry's
    inputs and every lookup checks them (a stale entry is a miss, like a missing one). Without it
    (a bare ``FeatureCache(root)``) entries are matched by encoder fingerprint only, and what it
    writes has no input key (a cache made from a config treats it as stale).
    """

    def __init__(self, root: str | os.PathLike, *, dtype: str = "float16",
                 on_missing: Literal["error", "skip"] = "error", context: InputContext | None = None):
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
        self.context = context
        self.kinds: dict[str, str] = {}  # modality -> encoder kind (visual, face, video, audio, text)
        self.options: dict[str, dict[str, Any]] = {}  # modality -> encoder options
        self._logged: set[tuple[str, str]] = set()
        self.warn = True  # log the first stale entry of each modality (off for `emollm features --check`)

    @classmethod
    def from_config(cls, cfg: Any, dataset_dir: str | os.PathLike | None = None, *,
                    records: list[dict[str, Any]] | None = None) -> FeatureCache:
        """The cache of ``cfg.features`` (``cache_dir``, default ``<dataset_dir>/features``), keyed by
        ``cfg``'s media settings and the dataset's records (``records``, else read from
        ``<dataset_dir>/annotations.jsonl`` when first needed)."""
        dataset_dir = dataset_dir or cfg.data.dataset_dir
        root = cfg.features.cache_dir
        if root is None:
            if not dataset_dir:
                raise FeatureCacheError("no feature cache folder: set features.cache_dir or data.dataset_dir")
            root = Path(dataset_dir) / "features"
        return cls(root, dtype=cfg.features.dtype, on_missing=cfg.features.on_missing,
                   context=InputContext.from_config(cfg, dataset_dir, records))

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
        self.kinds[modality], self.options[modality] = encoder.kind, dict(encoder.options)
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
        self.kinds[modality], self.options[modality] = kind, options
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
        """``present`` / ``absent`` (an entry whose inputs are this config's), else ``missing`` (none, or stale)."""
        state = self.check(clip_id, modality).state
        return "missing" if state == "stale" else state

    def check(self, clip_id: str, modality: str) -> EntryCheck:
        """The entry of ``clip_id`` judged against this cache's inputs (file header only)."""
        if self.path(clip_id, modality).is_file():
            try:
                metadata = self.info(clip_id, modality)
            except FeatureMissingError:  # removed meanwhile
                return EntryCheck("missing")
            except FeatureCacheError as err:  # truncated / foreign: made again by `emollm features`
                return EntryCheck("stale", err.message)
            return self._judge(clip_id, modality, "present", self._stored_inputs(metadata))
        data = self._read_json(self._absent_path(clip_id, modality))
        if data is None:
            return EntryCheck("missing")
        return self._judge(clip_id, modality, "absent", data.get("inputs"))

    @staticmethod
    def _stored_inputs(metadata: dict[str, str]) -> Any:
        try:
            return json.loads(metadata["inputs"])
        except (KeyError, ValueError):
            return None

    def _judge(self, clip_id: str, modality: str, state: Literal["present", "absent"], stored: Any) -> EntryCheck:
        if self.context is None:  # a bare cache: the encoder fingerprint (folder) is the only key
            return EntryCheck(state)
        record = self.context.record(clip_id)
        if record is None:
            if self.context.records is None:
                self._log_once(modality, "no records", "feature cache: no dataset records (annotations.jsonl) "
                               "to check the '%s' entries against: served as they are", modality)
                return EntryCheck(state, orphaned="no dataset records")
            return EntryCheck(state, orphaned="no record")
        kind = self.kinds.get(modality, modality)
        expected = self.context.inputs(kind, self.options.get(modality, {}), record, self.dtype, identity=False)
        why = describe_diff(stored, expected, absent=state == "absent")
        if why is None and kind != "text":
            same, clip_why = same_clip(stored.get("clip") or {}, self.context.clip_path(record))
            if same is None:
                return EntryCheck(state, orphaned="no clip file")
            why = None if same else clip_why
        if why is None:
            return EntryCheck(state)
        if why == NO_KEY:
            self._log_once(modality, "old", "feature cache: '%s' entries without an input key (an older cache "
                           "format, or written without a config) are stale: `emollm features` recomputes them",
                           modality)
        else:
            self._log_once(modality, "stale", "feature cache: '%s' entries made from other inputs are stale "
                           "(first: clip '%s', %s): `emollm features` recomputes them", modality, clip_id, why)
        return EntryCheck("stale", why)

    def _log_once(self, modality: str, what: str, message: str, *args: Any) -> None:
        if self.warn and (modality, what) not in self._logged:
            self._logged.add((modality, what))
            log.warning(message, *args)

    def _inputs(self, clip_id: str, modality: str, record: dict[str, Any] | None) -> dict[str, Any] | None:
        """The input key to write with a new entry (None for a bare cache)."""
        if self.context is None:
            return None
        record = record or self.context.record(clip_id)
        if record is None:
            raise FeatureCacheError(f"clip '{clip_id}': no record in the dataset's annotations.jsonl, so its "
                                    f"'{modality}' features cannot be keyed by their inputs")
        return self.context.inputs(self.kinds.get(modality, modality), self.options.get(modality, {}), record,
                                   self.dtype)

    def put(self, clip_id: str, modality: str, features: torch.Tensor, *,
            record: dict[str, Any] | None = None) -> Path:
        """Store ``(T, D)`` features (in ``dtype``) atomically, with their input key (``record``: the
        clip's record, when the context's dataset does not hold it yet); removes an ``absent`` mark."""
        from safetensors.torch import save

        if features.dim() != 2:
            raise FeatureCacheError(f"clip '{clip_id}', modality '{modality}': features must be (T, D), "
                                    f"got shape {tuple(features.shape)}")
        fp = self._fingerprint(modality)
        metadata = {"clip_id": clip_id, "modality": modality, "encoder": self.encoders.get(modality, ""),
                    "fingerprint": fp, "shape": json.dumps(list(features.shape)), "dtype": self.dtype,
                    "emollm_version": __version__}  # fmt: skip
        inputs = self._inputs(clip_id, modality, record)
        if inputs is not None:
            metadata["inputs"] = json.dumps(inputs, sort_keys=True)
        tensor = features.detach().to("cpu", _DTYPES[self.dtype]).contiguous()
        path = self.path(clip_id, modality)
        atomic_write_bytes(path, save({TENSOR_KEY: tensor}, metadata=metadata))
        self._absent_path(clip_id, modality).unlink(missing_ok=True)
        return path

    def put_absent(self, clip_id: str, modality: str, reason: str, *, record: dict[str, Any] | None = None) -> None:
        """Record that the clip has no input for ``modality`` (not an error: the sample goes without it);
        removes a (stale) features entry."""
        data = {"clip_id": clip_id, "modality": modality, "reason": reason}
        inputs = self._inputs(clip_id, modality, record)
        if inputs is not None:
            data["inputs"] = inputs
        atomic_write_bytes(self._absent_path(clip_id, modality), json.dumps(data, ensure_ascii=False).encode())
        self.path(clip_id, modality).unlink(missing_ok=True)

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
        ``on_missing="skip"``, no entry (or a stale one). A missing or stale entry otherwise raises
        FeatureMissingError (naming the input that changed)."""
        from safetensors import safe_open

        path = self.path(clip_id, modality)
        try:
            with safe_open(str(path), framework="pt") as fh:
                metadata = dict(fh.metadata() or {})
                if TENSOR_KEY not in fh.keys():
                    raise FeatureCacheError(f"{path}: no '{TENSOR_KEY}' tensor (not an emollm feature file)")
                tensor = fh.get_tensor(TENSOR_KEY)
        except FileNotFoundError:
            entry = self.check(clip_id, modality)
            if entry.state == "absent":
                return None
            return self._miss(clip_id, modality, entry.reason)
        except FeatureCacheError:
            raise
        except Exception as err:  # safetensors boundary
            raise FeatureCacheError(f"{path}: unreadable feature file ({err})",
                                    hint="delete it and rerun `emollm features`") from None
        entry = self._judge(clip_id, modality, "present", self._stored_inputs(metadata))
        if entry.state == "stale":
            return self._miss(clip_id, modality, entry.reason)
        return tensor.float()

    def _miss(self, clip_id: str, modality: str, reason: str = "") -> None:
        if self.on_missing == "skip":
            self.missing[modality] = self.missing.get(modality, 0) + 1
            return None
        raise self._missing(clip_id, modality, reason)

    def _missing(self, clip_id: str, modality: str, reason: str | None = None) -> FeatureMissingError:
        """The error for a clip without a usable entry (``reason`` None: looked up, stale or missing)."""
        fp = self.fingerprints.get(modality)
        if reason is None and fp is not None:
            try:
                reason = self.check(clip_id, modality).reason
            except FeatureCacheError:
                reason = ""
        return FeatureMissingError(clip_id, modality, self.encoders.get(modality, "?"),
                                   None if fp is None or fp.startswith("uncached-") else fp, reason=reason or None)

    @staticmethod
    def _read_json(path: Path) -> dict[str, Any] | None:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None


__all__ = ["EntryCheck", "FeatureCache", "atomic_write_bytes", "clip_id_of", "safe_name", "weights_key"]
