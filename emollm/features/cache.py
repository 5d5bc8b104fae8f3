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

Each features file also records what it is (clip id, modality, encoder fingerprint, shape, dtype) and
a checksum of its tensor bytes; NaN / inf features are refused when stored. A lookup checks the
header (intact, this clip, this modality and encoder); loading (:meth:`FeatureCache.get`) also checks
the checksum and the values. A file that fails is ``corrupt``: never served (an error naming the
file, or a logged miss with ``on_missing="skip"``), recomputed by ``emollm features``.

Imported features (encoder kind ``precomputed``: :mod:`emollm.features.imported`) are written and
read through the same path; their folder is the fingerprint of their source tag and shape, their
input key the tag and the dtype (they do not depend on the clip file), and a missing or damaged one
is imported again, never computed.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote

import torch

from emollm.dataset.io import atomic_write_bytes  # noqa: F401 - also re-exported for old imports
from emollm.errors import FeatureCacheError, FeatureEntryError, FeatureMissingError
from emollm.features.key import IMPORTED_KINDS, NO_CLIP_KINDS, NO_KEY, InputContext, describe_diff, same_clip
from emollm.log import get_logger
from emollm.version import __version__

log = get_logger(__name__)

TENSOR_KEY = "features"
ENCODER_FILE = "encoder.json"
ABSENT_SUFFIX = ".absent"
_MAX_NAME = 180
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_ST_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}  # safetensors' names of _DTYPES
#: What to do about a missing, stale or damaged entry of an imported (precomputed) modality.
IMPORT_HINT = ("import them: `emollm import emotion-llama-features --config CFG DATASET_DIR --from ROOT` "
               "(imported features cannot be computed by `emollm features`), or set features.on_missing=skip")
FORMAT = "2"  # metadata "format" of entries written with a "checksum" (entries without one: unverified)
CHECKSUM = "crc32"


def tensor_checksum(tensor: torch.Tensor) -> str:
    """``crc32:<hex>`` of a tensor's bytes as stored (its dtype, C order): catches bytes that changed
    after the write (disk, copy, a bad sync) at a few GB/s; not a signature (anyone can recompute it)."""
    data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    return f"{CHECKSUM}:{zlib.crc32(data):08x}"


def nonfinite_count(tensor: torch.Tensor) -> int:
    x = tensor.float()  # isfinite is slow on CPU half tensors
    if bool(torch.isfinite(x.sum())):  # any NaN / inf makes the sum non-finite: the cheap common case
        return 0
    return int((~torch.isfinite(x)).sum())


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


def weights_key(kind: str, name_or_path: str, options: dict[str, Any]) -> str | None:
    """What identifies an encoder's features without loading it: kind, feature options and the
    checkpoint's configs + weight-file hashes. None when the checkpoint files are not on disk."""
    from emollm.modeling import encoders as enc

    if kind in IMPORTED_KINDS:  # no checkpoint: bind computes the fingerprint from the entry alone
        return None
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
    ``stale`` (an entry whose inputs differ: ``reason`` says which; a lookup is a miss), ``corrupt``
    (a file that cannot be trusted: ``reason`` says why, ``file`` names it; never served) or
    ``missing``. ``orphaned``: why a present / absent entry could not be checked against its clip
    (``no record`` in annotations.jsonl, ``no clip file``): it is served, ``emollm features --check``
    reports it. ``unverified``: a features file without a checksum (written by an older emollm):
    served after the header and finite-value checks, ``--check`` lists it."""

    state: Literal["present", "absent", "stale", "corrupt", "missing"]
    reason: str = ""
    orphaned: str = ""
    file: str = ""
    unverified: bool = False


@dataclass
class _Read:
    """A features file as read by :meth:`FeatureCache._read_entry`."""

    metadata: dict[str, str]
    tensor: torch.Tensor | None = None  # read only when asked (``load``) and the header is sound
    problem: str | None = None  # why the entry cannot be trusted; None: it can
    unverified: bool = False  # no checksum in its metadata


class FeatureCache:
    """Read and write cached features. Bind each modality to its encoder first (:meth:`register`
    with a loaded encoder, or :meth:`bind` from the config alone), then :meth:`get` / :meth:`put`.

    ``on_missing``: ``"error"`` (a missing entry raises :class:`FeatureMissingError` naming the clip,
    modality and encoder; a corrupt one :class:`FeatureEntryError` naming the file) or ``"skip"``
    (:meth:`get` returns None and counts it in ``missing``; a corrupt file is logged once).

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
        self._reported: set[str] = set()  # corrupt files already logged
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
        not local (hub id outside the HF cache) is loaded once to compute its fingerprint; so is an
        imported (``precomputed``) entry, whose fingerprint is its tag and shape (``options`` must
        hold its ``feature_dim``: :func:`~emollm.modeling.encoders.encoder_options`)."""
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
        """Bind every frozen modality of ``EmoLLMConfig.modalities`` / ``modality_specs(...)`` (an
        imported modality's shape comes from the spec's ``feature_dim`` / ``num_input_tokens``)."""
        from emollm.modeling.encoders import encoder_options

        out = {}
        for name, spec in modalities.items():
            if spec["kind"] == "au":
                continue
            encoder = dict(spec.get("encoder") or {})
            path = encoder.pop("name_or_path", None)
            if not path:
                raise FeatureCacheError(f"modality '{name}' names no encoder checkpoint: cannot find its cache")
            options = encoder_options(spec["kind"], encoder, feature_dim=spec.get("feature_dim"),
                                      num_input_tokens=spec.get("num_input_tokens"))
            out[name] = self.bind(name, spec["kind"], path, options)
        return out

    # -- entries ---------------------------------------------------------------------------
    def path(self, clip_id: str, modality: str) -> Path:
        from emollm.paths import inside  # flat safe_name, and no symlink in the cache leading out

        return inside(self.folder(modality), safe_name(clip_id) + ".safetensors", name=clip_id)

    def _absent_path(self, clip_id: str, modality: str) -> Path:
        from emollm.paths import inside

        return inside(self.folder(modality), safe_name(clip_id) + ABSENT_SUFFIX, name=clip_id)

    def status(self, clip_id: str, modality: str) -> Literal["present", "absent", "missing"]:
        """``present`` / ``absent`` (an entry whose inputs are this config's and whose header is sound),
        else ``missing`` (none, stale, or corrupt: logged once per file)."""
        entry = self.check(clip_id, modality)
        if entry.state == "corrupt":
            self._report(entry.file, entry.reason, modality)
        return "missing" if entry.state in ("stale", "corrupt") else entry.state  # type: ignore[return-value]

    def check(self, clip_id: str, modality: str, *, verify: bool = False) -> EntryCheck:
        """The entry of ``clip_id`` judged: its file's header (intact, this clip's id, this modality and
        encoder fingerprint, shape and dtype as recorded), then its inputs against this cache's.
        ``verify`` also reads the tensor: checksum and finite values (what :meth:`get` checks anyway)."""
        path = self.path(clip_id, modality)
        if path.is_file():
            try:
                entry = self._read_entry(clip_id, modality, load=verify)
            except FileNotFoundError:  # removed meanwhile
                return EntryCheck("missing")
            if entry.problem is not None:
                return EntryCheck("corrupt", entry.problem, file=str(path))
            judged = self._judge(clip_id, modality, "present", self._stored_inputs(entry.metadata))
            judged.unverified = entry.unverified
            return judged
        absent = self._absent_path(clip_id, modality)
        if not absent.is_file():
            return EntryCheck("missing")
        data = self._read_json(absent)
        if not isinstance(data, dict):
            if not absent.exists():  # removed meanwhile
                return EntryCheck("missing")
            return EntryCheck("corrupt", "unreadable absent mark (not JSON)", file=str(absent))
        if data.get("clip_id") != clip_id or data.get("modality") != modality:
            return EntryCheck("corrupt", f"absent mark of clip {data.get('clip_id')!r}, modality "
                              f"{data.get('modality')!r} (copied or renamed from another entry)", file=str(absent))
        return self._judge(clip_id, modality, "absent", data.get("inputs"))

    def _read_entry(self, clip_id: str, modality: str, *, load: bool) -> _Read:
        """The features file of ``clip_id`` checked (raises FileNotFoundError when there is none).
        Always its header: safetensors refuses a file its header does not cover exactly (truncated,
        appended to); then the one ``features`` tensor, the clip id, modality, encoder fingerprint,
        shape and dtype its metadata names. With ``load`` the tensor is read and checked: checksum
        (when it has one) and finite values. Header only costs one small read per entry; the
        checksum is a hash of bytes the loader reads anyway."""
        from safetensors import safe_open

        path = self.path(clip_id, modality)
        tensor = None
        try:
            with safe_open(str(path), framework="pt") as fh:
                metadata = dict(fh.metadata() or {})
                problem = self._header_problem(fh, metadata, clip_id, modality)
                if load and problem is None:
                    tensor = fh.get_tensor(TENSOR_KEY)
        except FileNotFoundError:
            raise
        except Exception as err:  # safetensors boundary: truncated, empty, not safetensors
            why = (str(err).splitlines() or [type(err).__name__])[0]
            return _Read({}, problem=f"unreadable feature file ({why})")
        entry = _Read(metadata, None, problem, unverified="checksum" not in metadata)
        if entry.unverified and problem is None:
            self._log_once(modality, "unverified", "feature cache: '%s' entries without a checksum (written by an "
                           "older emollm) are served unverified (header and values checked); `emollm features "
                           "--check` lists them", modality)
        if tensor is not None:
            checksum = metadata.get("checksum")
            if checksum is not None and checksum != tensor_checksum(tensor):
                entry.problem = f"checksum mismatch ({checksum} recorded): the bytes changed after it was written"
            else:
                entry.tensor = tensor.float()
                if bad := nonfinite_count(entry.tensor):
                    entry.problem = f"{bad} of {tensor.numel()} stored values are NaN / inf"
        return entry

    def _header_problem(self, fh: Any, metadata: dict[str, str], clip_id: str, modality: str) -> str | None:
        keys = list(fh.keys())
        if keys != [TENSOR_KEY]:
            return f"holds tensors {keys}, not one '{TENSOR_KEY}' tensor (not an emollm feature file)"
        if metadata.get("clip_id") != clip_id:
            return (f"holds the features of clip {metadata.get('clip_id')!r} (another clip's file copied or "
                    f"renamed over this one)")
        if metadata.get("modality") != modality:
            return f"holds '{metadata.get('modality')}' features, not '{modality}'"
        fp = self.fingerprints.get(modality)
        if metadata.get("fingerprint") != fp:
            return (f"made by another encoder (fingerprint {str(metadata.get('fingerprint'))[:16]}, this folder's "
                    f"is {str(fp)[:16]})")
        info = fh.get_slice(TENSOR_KEY)
        shape, dtype = list(info.get_shape()), info.get_dtype()
        try:
            recorded = json.loads(metadata.get("shape", "null"))
        except ValueError:
            recorded = None
        if recorded != shape or len(shape) != 2:
            return f"stored tensor has shape {shape}, its metadata says {metadata.get('shape')}"
        if _ST_DTYPES.get(metadata.get("dtype", "")) != dtype:
            return f"stored tensor has dtype {dtype}, its metadata says {metadata.get('dtype')}"
        return None

    def _report(self, file: str, problem: str, modality: str | None = None) -> None:
        """Log a corrupt entry once per file (it is not served: a miss, or an error)."""
        if self.warn and file not in self._reported:
            self._reported.add(file)
            fix = "import it again" if self.kinds.get(modality or "") in IMPORTED_KINDS else \
                "`emollm features` recomputes it"
            log.warning("feature cache: %s: %s: not served; %s", file, problem, fix)

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
        expected = self.context.inputs(kind, self.options.get(modality, {}), record, self.dtype, identity=False,
                                       source=self.encoders.get(modality))
        why = describe_diff(stored, expected, absent=state == "absent")
        if why is None and kind not in NO_CLIP_KINDS:  # text and imported features never read the clip file
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
                           "(first: clip '%s', %s): %s", modality, clip_id, why,
                           "import them again" if kind in IMPORTED_KINDS else "`emollm features` recomputes them")
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
                                   self.dtype, source=self.encoders.get(modality))

    def put(self, clip_id: str, modality: str, features: torch.Tensor, *,
            record: dict[str, Any] | None = None, imported_from: dict[str, Any] | None = None) -> Path:
        """Store ``(T, D)`` features (in ``dtype``) atomically, with their input key (``record``: the
        clip's record, when the context's dataset does not hold it yet) and a checksum of the stored
        bytes; removes an ``absent`` mark. NaN / inf values (also float16 overflow) are refused:
        FeatureCacheError, nothing written. ``imported_from``: the file imported features were read
        from (``{"file", "sha256"}``), recorded as the input key's ``imported``."""
        from safetensors.torch import save

        if features.dim() != 2:
            raise FeatureCacheError(f"clip '{clip_id}', modality '{modality}': features must be (T, D), "
                                    f"got shape {tuple(features.shape)}")
        fp = self._fingerprint(modality)
        tensor = features.detach().to("cpu", _DTYPES[self.dtype]).contiguous()
        if bad := nonfinite_count(tensor):
            overflow = nonfinite_count(features.detach()) == 0
            raise FeatureCacheError(
                f"clip '{clip_id}', modality '{modality}': {bad} of {tensor.numel()} feature values are NaN / inf"
                + (f" once stored as {self.dtype} (overflow)" if overflow else "") + ": not cached",
                hint="set features.dtype=float32" if overflow else "check the encoder's weights and this clip")
        metadata = {"clip_id": clip_id, "modality": modality, "encoder": self.encoders.get(modality, ""),
                    "fingerprint": fp, "shape": json.dumps(list(features.shape)), "dtype": self.dtype,
                    "format": FORMAT, "checksum": tensor_checksum(tensor), "emollm_version": __version__}  # fmt: skip
        inputs = self._inputs(clip_id, modality, record)
        if inputs is not None and imported_from is not None:
            inputs["imported"] = dict(imported_from)
        if inputs is not None:
            metadata["inputs"] = json.dumps(inputs, sort_keys=True)
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
            raise FeatureEntryError(path, clip_id, modality, f"unreadable feature file ({err})") from None

    def shape(self, clip_id: str, modality: str) -> tuple[int, ...]:
        """The stored ``(T, D)`` (header only, checked as :meth:`check` does)."""
        try:
            read = self._read_entry(clip_id, modality, load=False)
        except FileNotFoundError:
            raise self._missing(clip_id, modality) from None
        if read.problem is not None:
            raise FeatureEntryError(self.path(clip_id, modality), clip_id, modality, read.problem)
        return tuple(json.loads(read.metadata["shape"]))

    def get(self, clip_id: str, modality: str) -> torch.Tensor | None:
        """``(T, D)`` float32 features; None when the clip has no input for it (absent) or, with
        ``on_missing="skip"``, no usable entry (missing, stale, or corrupt: logged). Otherwise a missing
        or stale entry raises FeatureMissingError (naming the input that changed), a corrupt one
        FeatureEntryError (naming the file and what is wrong: header, clip id, encoder, checksum, NaN)."""
        try:
            read = self._read_entry(clip_id, modality, load=True)
        except FileNotFoundError:
            entry = self.check(clip_id, modality)
            if entry.state == "absent":
                return None
            if entry.state == "corrupt":
                return self._miss(clip_id, modality, entry.reason, file=entry.file)
            return self._miss(clip_id, modality, entry.reason)
        if read.problem is not None:
            return self._miss(clip_id, modality, read.problem, file=str(self.path(clip_id, modality)))
        entry = self._judge(clip_id, modality, "present", self._stored_inputs(read.metadata))
        if entry.state == "stale":
            return self._miss(clip_id, modality, entry.reason)
        return read.tensor

    def _miss(self, clip_id: str, modality: str, reason: str = "", *, file: str = "") -> None:
        """No usable entry: None (counted; a corrupt ``file`` logged) with on_missing=skip, else the error."""
        if self.on_missing == "skip":
            if file:
                self._report(file, reason, modality)
            self.missing[modality] = self.missing.get(modality, 0) + 1
            return None
        if file:
            raise FeatureEntryError(file, clip_id, modality, reason, hint=self._hint(modality))
        raise self._missing(clip_id, modality, reason)

    def _missing(self, clip_id: str, modality: str, reason: str | None = None) -> FeatureCacheError:
        """The error for a clip without a usable entry (``reason`` None: looked up, stale, corrupt or
        missing): FeatureEntryError for a corrupt one, else FeatureMissingError."""
        fp = self.fingerprints.get(modality)
        if reason is None and fp is not None:
            try:
                entry = self.check(clip_id, modality)
            except FeatureCacheError:
                entry = EntryCheck("missing")
            if entry.state == "corrupt":
                return FeatureEntryError(entry.file, clip_id, modality, entry.reason, hint=self._hint(modality))
            reason = entry.reason
        return FeatureMissingError(clip_id, modality, self.encoders.get(modality, "?"),
                                   None if fp is None or fp.startswith("uncached-") else fp, reason=reason or None,
                                   hint=self._hint(modality))

    def _hint(self, modality: str) -> str | None:
        """The hint of a miss: import imported features again (None: the error's own, `emollm features`)."""
        return IMPORT_HINT if self.kinds.get(modality) in IMPORTED_KINDS else None

    @staticmethod
    def _read_json(path: Path) -> dict[str, Any] | None:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None


__all__ = ["EntryCheck", "FeatureCache", "atomic_write_bytes", "clip_id_of", "nonfinite_count", "safe_name",
           "tensor_checksum", "weights_key"]
