"""Import pre-extracted features (Emotion-LLaMA's per-clip ``.npy``) into the feature cache.

Emotion-LLaMA ships its MAE, VideoMAE and Chinese HuBERT-large features as one NumPy file per clip
(``ROOT/mae_340_UTT/<clip>.npy``, ``ROOT/maeV_399_UTT/<clip>.npy``, ``ROOT/HL-UTT/<clip>.npy``, each
``(1024,)`` or ``(1, 1024)``). The encoders that made them are not available, so they can only be
imported: a config entry of encoder kind ``precomputed`` names the source (``name_or_path``, a tag)
and the shape (``feature_dim``, ``num_input_tokens``), ``options.folder`` the folder under ``ROOT``
(default: the tag's last part).

>>> summary = import_precomputed_features(cfg, "data/mer2023", "/data/emotion-llama-features")
>>> print(summary.table())

For every ``precomputed`` entry and every record of the dataset, ``ROOT/<folder>/<clip id>.npy`` is
read with ``allow_pickle=False`` and checked (floating dtype; shape ``(D,)``, ``(1, D)`` or
``(T, D)`` with the entry's D and T; finite values), then stored through the cache's own writing path
(safetensors, checksum, ``features.dtype``, the clip's input key: the source tag), with the file's
path and SHA-256. A clip id becomes a file name only through :func:`emollm.paths.id_path`: ``..``,
absolute ids and symlinks leading out of the folder never read outside ``ROOT``. A missing or bad
file is recorded (clip id, modality, reason; also in ``<cache>/import_errors.jsonl``) and the import
goes on. Resumable: an entry already imported from a file with the same SHA-256 (and fresh for this
config) is reused; ``overwrite`` rewrites every entry.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from emollm.dataset.io import atomic_write_bytes
from emollm.errors import ConfigError, EmollmError, UnsafePathError
from emollm.features.cache import FeatureCache
from emollm.features.key import IMPORTED_KINDS
from emollm.log import get_logger, progress

if TYPE_CHECKING:
    from emollm.config import EmollmConfig

log = get_logger(__name__)

ERRORS_FILE = "import_errors.jsonl"
SUFFIX = ".npy"


@dataclass
class ImportProblem:
    """A clip whose file could not be imported for one modality: ``missing`` (no file) or ``bad``."""

    clip_id: str
    modality: str
    kind: Literal["missing", "bad"]
    reason: str
    file: str = ""  # the file tried, relative to the source folder (empty: no file name could be made)


@dataclass
class ModalityCounts:
    folder: str  # the source folder under ROOT
    source: str  # the entry's tag (name_or_path)
    imported: int = 0  # entries written by this call
    reused: int = 0  # already imported from the same file (same SHA-256), left as they are
    missing: int = 0  # no file for the clip
    bad: int = 0  # a file that cannot be imported (pickled, not float, wrong shape, NaN / inf, unsafe id)


@dataclass
class ImportSummary:
    """What :func:`import_precomputed_features` did: counts per modality and every problem."""

    cache_dir: str
    source_dir: str
    clips: int = 0  # records of the dataset
    counts: dict[str, ModalityCounts] = field(default_factory=dict)
    problems: list[ImportProblem] = field(default_factory=list)
    errors_file: str = ""  # <cache>/import_errors.jsonl

    @property
    def ok(self) -> bool:
        return not self.problems

    def table(self, limit: int = 10) -> str:
        lines = [f"{'cache':<8} {self.cache_dir}", f"{'source':<8} {self.source_dir}", f"{'clips':<8} {self.clips}"]
        head = ("modality", "folder", "imported", "reused", "missing", "bad")
        rows = [head] + [(name, c.folder, str(c.imported), str(c.reused), str(c.missing), str(c.bad))
                         for name, c in self.counts.items()]  # fmt: skip
        widths = [max(len(r[k]) for r in rows) for k in range(len(head))]
        lines += ["  ".join(c.ljust(w) if k < 2 else c.rjust(w) for k, (c, w) in enumerate(zip(r, widths, strict=True)))
                  for r in rows]  # fmt: skip
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s) (all in {self.errors_file}):")
            lines += [f"  clip '{p.clip_id}', {p.modality}: {p.kind}: {p.reason}" for p in self.problems[:limit]]
            if len(self.problems) > limit:
                lines.append(f"  ... and {len(self.problems) - limit} more")
        else:
            lines.append("every clip imported")
        return "\n".join(lines)


def _source_folder(source: Path, folder: str, modality: str) -> Path:
    """``source/folder``, checked: a config's folder never leads outside the source dir."""
    from emollm.paths import id_parts, inside

    try:
        return inside(source, id_parts(folder, source), name=folder)
    except UnsafePathError as err:
        raise ConfigError(f"model.encoders.{modality}.options.folder {folder!r}: {err.cause}",
                          hint="a folder under the --from directory, e.g. mae_340_UTT") from None


def _read_npy(data: bytes) -> np.ndarray:
    """The array of a ``.npy`` file's bytes, never unpickled; EmollmError saying why it cannot be read."""
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as err:
        if "allow_pickle" in str(err) or "pickle" in str(err).lower():
            raise EmollmError("holds a pickled (object) array: refused, never unpickled (save the features "
                              "as a float array)") from None
        raise EmollmError(f"not a readable .npy file ({str(err).splitlines()[0] if str(err) else 'ValueError'})") from None
    except Exception as err:  # numpy's boundary: truncated header, EOF, not NumPy data
        raise EmollmError(f"not a readable .npy file ({type(err).__name__}: {err})") from None
    if not isinstance(array, np.ndarray):  # an .npz archive (np.load returns NpzFile)
        if hasattr(array, "close"):
            array.close()
        raise EmollmError("not a .npy array (an .npz archive?)")
    return array


def _checked(array: np.ndarray, feature_dim: int, num_tokens: int) -> torch.Tensor:
    """``(T, D)`` features from an array as Emotion-LLaMA saves them; EmollmError saying what is wrong."""
    if array.dtype.hasobject:
        raise EmollmError("holds an object array: refused")
    if not np.issubdtype(array.dtype, np.floating):
        raise EmollmError(f"dtype {array.dtype}, not floating point features")
    if array.ndim == 1:  # Emotion-LLaMA's loader unsqueezes 1-D features: one token
        array = array[None]
    if array.ndim != 2:
        raise EmollmError(f"shape {tuple(array.shape)}: expected ({feature_dim},), (1, {feature_dim}) or "
                          f"({num_tokens}, {feature_dim})")
    tokens, width = array.shape
    if width != feature_dim:
        raise EmollmError(f"shape {tuple(array.shape)}: width {width}, the entry's feature_dim is {feature_dim}")
    if tokens != num_tokens:
        raise EmollmError(f"shape {tuple(array.shape)}: {tokens} token(s), the entry's num_input_tokens is "
                          f"{num_tokens}")
    finite = np.isfinite(array)
    if not finite.all():
        raise EmollmError(f"{int((~finite).sum())} of {array.size} values are NaN / inf")
    # native byte order, a dtype torch holds (float16 / float32 exact; float64 and wider as float64)
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64 if array.dtype.itemsize > 4 else np.float32))


def _imported_sha(cache: FeatureCache, clip_id: str, modality: str) -> str | None:
    """The SHA-256 of the file a fresh, sound entry was imported from (None: no such entry)."""
    entry = cache.check(clip_id, modality, verify=True)
    if entry.state != "present":
        return None
    try:
        inputs = json.loads(cache.info(clip_id, modality).get("inputs") or "null")
    except (EmollmError, ValueError):
        return None
    return ((inputs or {}).get("imported") or {}).get("sha256") if isinstance(inputs, dict) else None


def import_precomputed_features(cfg: EmollmConfig, dataset_dir: str | os.PathLike, source_dir: str | os.PathLike, *,
                                modalities: Sequence[str] | None = None, overwrite: bool = False) -> ImportSummary:
    """Import ``source_dir/<folder>/<clip id>.npy`` for every ``precomputed`` entry of
    ``cfg.model.encoders`` (or those in ``modalities``) and every record of ``dataset_dir`` into the
    feature cache of ``cfg`` (see the module docstring). Problems are reported, not raised: the
    summary lists them and ``<cache>/import_errors.jsonl`` holds them (this call's)."""
    from emollm.dataset.record import read_dataset
    from emollm.modeling.encoders import build_encoder, encoder_options

    dataset, source = Path(dataset_dir), Path(source_dir)
    encoders = cfg.model.encoders
    if modalities is not None:
        unknown = [m for m in modalities if m not in encoders]
        if unknown:
            raise ConfigError(f"no modality '{unknown[0]}' in model.encoders (it has: {', '.join(encoders) or 'none'})")
        computed = [m for m in modalities if encoders[m].modality not in IMPORTED_KINDS]
        if computed:
            raise ConfigError(f"modality '{computed[0]}' is a '{encoders[computed[0]].modality}' encoder: its "
                              "features are computed (`emollm features`), not imported",
                              hint="import only entries of modality: precomputed")
    chosen = {n: e for n, e in encoders.items()
              if e.modality in IMPORTED_KINDS and (modalities is None or n in modalities)}
    if not chosen:
        raise ConfigError("model.encoders has no entry of modality 'precomputed': nothing to import",
                          hint="add one per feature folder, e.g. face: {modality: precomputed, name_or_path: "
                               "emotion-llama/mae_340_UTT, feature_dim: 1024, num_input_tokens: 1}")
    if not source.is_dir():
        raise ConfigError(f"--from {source}: no such folder (the root of the pre-extracted features)")
    records = read_dataset(dataset)
    cache = FeatureCache.from_config(cfg, dataset, records=records)
    cache.root.mkdir(parents=True, exist_ok=True)
    summary = ImportSummary(str(cache.root), str(source), clips=len(records),
                            errors_file=str(cache.root / ERRORS_FILE))
    for name, enc in chosen.items():
        encoder = build_encoder(enc.modality, enc.name_or_path, **encoder_options(
            enc.modality, enc.options, feature_dim=enc.feature_dim, num_input_tokens=enc.num_input_tokens))
        cache.register(name, encoder)
        folder = _source_folder(source, encoder.folder, name)
        counts = summary.counts[name] = ModalityCounts(encoder.folder, encoder.name_or_path)
        if not folder.is_dir():
            log.warning("import: %s: no folder %s: every clip's '%s' features are missing", source, encoder.folder,
                        name)
        for record in progress(records, desc=f"import {name}", total=len(records), unit="clip"):
            problem = _import_one(cache, name, encoder, folder, record, overwrite, counts)
            if problem is not None:
                summary.problems.append(problem)
                setattr(counts, problem.kind, getattr(counts, problem.kind) + 1)
    atomic_write_bytes(cache.root / ERRORS_FILE, "".join(json.dumps(asdict(p), ensure_ascii=False) + "\n"
                                                         for p in summary.problems).encode())
    for name, c in summary.counts.items():
        log.info("import: %s (%s): %d imported, %d reused, %d missing, %d bad", name, c.folder, c.imported, c.reused,
                 c.missing, c.bad)
    return summary


def _import_one(cache: FeatureCache, modality: str, encoder: Any, folder: Path, record: dict[str, Any],
                overwrite: bool, counts: ModalityCounts) -> ImportProblem | None:
    """One clip's file into the cache (counted in ``counts``), or the problem that stopped it."""
    from emollm.paths import id_path

    clip_id = record["id"]
    try:  # the clip id names a file under the folder only: no '..', no absolute id, no symlink leading out
        path = id_path(folder, clip_id, SUFFIX)
    except UnsafePathError as err:
        return ImportProblem(clip_id, modality, "bad", f"the clip id cannot name a file under the source folder: "
                             f"{err.cause}")
    rel = f"{encoder.folder}/{path.relative_to(folder).as_posix()}"
    if not path.is_file():
        return ImportProblem(clip_id, modality, "missing", f"no file {rel}", rel)
    try:
        data = path.read_bytes()
    except OSError as err:
        return ImportProblem(clip_id, modality, "bad", f"{rel}: cannot read it ({err.strerror or err})", rel)
    sha = hashlib.sha256(data).hexdigest()
    if not overwrite and _imported_sha(cache, clip_id, modality) == sha:
        counts.reused += 1
        return None
    try:
        features = _checked(_read_npy(data), encoder.feature_dim, encoder.num_tokens())
        cache.put(clip_id, modality, features, record=record, imported_from={"file": rel, "sha256": sha})
    except EmollmError as err:  # a bad file, or values the storage dtype cannot hold (float16 overflow)
        return ImportProblem(clip_id, modality, "bad", f"{rel}: {err.message}", rel)
    counts.imported += 1
    return None


__all__ = ["ImportProblem", "ImportSummary", "ModalityCounts", "import_precomputed_features"]
