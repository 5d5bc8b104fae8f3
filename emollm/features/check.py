"""`emollm features --check`: is every cache entry made from the inputs this config would use?

Per frozen encoder of ``cfg.model.encoders``, every record of the dataset is looked up as training
would look it up (:meth:`FeatureCache.check`): ``fresh`` (features or an absent mark whose inputs are
this config's), ``stale`` (made from other inputs: which one changed), ``corrupt`` (a file that
cannot be trusted: unreadable or truncated, another clip's or encoder's, checksum mismatch, NaN / inf
values; every features file is read in full), ``orphaned`` (an entry whose clip has no record in
annotations.jsonl, or whose clip file is gone: it cannot be checked) and ``missing`` (no entry).
``unverified`` entries (no checksum: written by an older emollm) are listed, not failed. Folders of
other encoders (another fingerprint) are listed, never counted or pruned: another config may use
them. ``prune=True`` deletes the stale, corrupt and orphaned entries. Imported modalities (encoder
kind ``precomputed``) are checked alike, but a missing, stale or corrupt one is imported again
(``emollm import emotion-llama-features``), never computed by ``emollm features``; their entries do
not depend on the clip file, so a moved or deleted clip does not orphan them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emollm.errors import FeatureCacheError
from emollm.features.cache import ABSENT_SUFFIX, ENCODER_FILE, IMPORT_HINT, FeatureCache, clip_id_of
from emollm.features.key import IMPORTED_KINDS


@dataclass
class EncoderReport:
    modality: str  # the encoder's name in model.encoders
    kind: str
    encoder: str  # name_or_path
    folder: str | None  # <modality>/<fingerprint[:16]>, None: no folder for this encoder
    fresh: int = 0
    absent: int = 0  # of fresh: absent marks (the clip has no input for it)
    stale: list[tuple[str, str]] = field(default_factory=list)  # (clip id, what changed)
    corrupt: list[tuple[str, str]] = field(default_factory=list)  # (clip id, "file: what is wrong")
    unverified: list[str] = field(default_factory=list)  # fresh entries without a checksum (older format)
    orphaned: list[tuple[str, str]] = field(default_factory=list)  # (clip id, why)
    missing: list[str] = field(default_factory=list)
    other_folders: list[tuple[str, int, str]] = field(default_factory=list)  # (folder, entries, encoder)

    @property
    def ok(self) -> bool:
        return not (self.stale or self.corrupt or self.orphaned or self.missing)


@dataclass
class CheckReport:
    cache_dir: str
    dataset: str
    records: int
    encoders: list[EncoderReport] = field(default_factory=list)
    pruned: int = 0  # files deleted (prune=True)

    @property
    def ok(self) -> bool:
        return all(e.ok for e in self.encoders)

    def text(self, limit: int = 10) -> str:
        lines = [f"feature cache {self.cache_dir} (dataset {self.dataset}, {self.records} records)"]
        head = ("encoder", "kind", "folder", "fresh", "absent", "stale", "corrupt", "orphaned", "missing")
        rows = [head] + [(e.modality, e.kind, e.folder.split("/")[-1] if e.folder else "(none)", str(e.fresh),
                          str(e.absent), str(len(e.stale)), str(len(e.corrupt)), str(len(e.orphaned)),
                          str(len(e.missing)))
                         for e in self.encoders]  # fmt: skip
        widths = [max(len(r[k]) for r in rows) for k in range(len(head))]
        lines += ["  ".join(c.ljust(w) if k < 3 else c.rjust(w) for k, (c, w) in enumerate(zip(r, widths, strict=True)))
                  for r in rows]  # fmt: skip
        for e in self.encoders:
            for what, items in (("stale", [f"{c}: {why}" for c, why in e.stale]),
                                ("corrupt", [f"{c}: {why}" for c, why in e.corrupt]),
                                ("orphaned", [f"{c}: {why}" for c, why in e.orphaned]),
                                ("missing", e.missing),
                                ("unverified (no checksum: written by an older emollm; served after the header "
                                 "and NaN checks; delete them and rerun `emollm features` to rewrite them)",
                                 e.unverified)):  # fmt: skip
                if items:
                    lines.append(f"{e.modality}: {len(items)} {what}")
                    lines += [f"  {item}" for item in items[:limit]]
                    if len(items) > limit:
                        lines.append(f"  ... and {len(items) - limit} more")
            if e.folder is None and e.kind in IMPORTED_KINDS:
                lines.append(f"{e.modality}: no cache folder for the imported features {e.encoder} (never "
                             f"imported, or their feature_dim / num_input_tokens changed)")
            elif e.folder is None:
                lines.append(f"{e.modality}: no cache folder for encoder {e.encoder} (never extracted, or its "
                             f"weights / config / feature options changed)")
            if e.kind in IMPORTED_KINDS and (e.stale or e.corrupt or e.missing):
                lines.append(f"{e.modality}: imported features (kind {e.kind}), never computed: {IMPORT_HINT}")
            for folder, n, encoder in e.other_folders:
                lines.append(f"{e.modality}: other encoder's folder {folder} ({n} entries, {encoder}): not this "
                             f"config's, kept")
        if self.pruned:
            lines.append(f"pruned: {self.pruned} stale / corrupt / orphaned file(s) deleted")
        if self.ok:
            lines.append("all entries fresh")
        else:
            lines.append("not all fresh: `emollm features` with this config recomputes stale, corrupt and missing "
                         "entries" + (" (imported ones: `emollm import emotion-llama-features`)" if any(
                             e.kind in IMPORTED_KINDS and not e.ok for e in self.encoders) else "")
                         + ("" if self.pruned else "; --prune deletes stale, corrupt and orphaned ones"))
        return "\n".join(lines)


def _entry_files(folder: Path) -> dict[str, list[Path]]:
    """clip id -> its entry files (features, absent mark) in one encoder folder."""
    out: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if path.name.startswith("."):
            continue
        if path.name.endswith(".safetensors"):
            stem = path.name[: -len(".safetensors")]
        elif path.name.endswith(ABSENT_SUFFIX):
            stem = path.name[: -len(ABSENT_SUFFIX)]
        else:
            continue
        out.setdefault(_clip_id(path, stem), []).append(path)
    return out


def _clip_id(path: Path, stem: str) -> str:
    if "~" not in stem:  # not a hashed long id (those keep the id in their metadata)
        return clip_id_of(stem)
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as fh:
                return (fh.metadata() or {})["clip_id"]
        return json.loads(path.read_text(encoding="utf-8"))["clip_id"]
    except Exception:  # unreadable: a name that no record has
        return clip_id_of(stem)


def _encoder_of(folder: Path) -> str:
    try:
        return str(json.loads((folder / ENCODER_FILE).read_text(encoding="utf-8")).get("name_or_path", "?"))
    except (OSError, ValueError):
        return "?"


def check_cache(cfg: Any, dataset_dir: str | os.PathLike, *, prune: bool = False) -> CheckReport:
    """Check (and with ``prune`` clean) the feature cache of ``cfg`` for the dataset's records."""
    from emollm.dataset.record import read_dataset
    from emollm.modeling.encoders import encoder_options

    dataset = Path(dataset_dir)
    records = read_dataset(dataset)
    cache = FeatureCache.from_config(cfg, dataset, records=records)
    cache.warn = False  # the report says it
    report = CheckReport(str(cache.root), str(dataset), len(records))
    ids = {r["id"] for r in records}
    for name, enc in cfg.model.encoders.items():
        if enc.modality == "au":
            continue
        fp = cache.bind(name, enc.modality, enc.name_or_path, encoder_options(
            enc.modality, enc.options, feature_dim=enc.feature_dim, num_input_tokens=enc.num_input_tokens))
        folder = cache.folder(name)
        rep = EncoderReport(name, enc.modality, str(enc.name_or_path),
                            f"{name}/{folder.name}" if (folder / ENCODER_FILE).is_file() else None)
        doomed: list[Path] = []
        for record in records:
            clip_id = record["id"]
            try:
                entry = cache.check(clip_id, name, verify=True)  # an audit: every file read in full
            except FeatureCacheError as err:  # e.g. no record to key it by
                rep.stale.append((clip_id, err.message))
                doomed.append(cache.path(clip_id, name))
                continue
            if entry.state == "missing":
                rep.missing.append(clip_id)
            elif entry.state == "stale":
                rep.stale.append((clip_id, entry.reason))
            elif entry.state == "corrupt":
                rep.corrupt.append((clip_id, f"{Path(entry.file).name}: {entry.reason}"))
            elif entry.orphaned:
                rep.orphaned.append((clip_id, entry.orphaned))
            else:
                rep.fresh += 1
                rep.absent += entry.state == "absent"
                if entry.unverified:
                    rep.unverified.append(clip_id)
            if entry.state in ("stale", "corrupt") or entry.orphaned:
                doomed += [cache.path(clip_id, name), cache._absent_path(clip_id, name)]
        if not fp.startswith("uncached-"):
            for clip_id, files in _entry_files(folder).items():
                if clip_id not in ids:
                    rep.orphaned.append((clip_id, "no record"))
                    doomed += files
        for other in sorted(p for p in (cache.root / name).glob("*") if p.is_dir() and p != folder):
            n = sum(len(files) for files in _entry_files(other).values())
            rep.other_folders.append((f"{name}/{other.name}", n, _encoder_of(other)))
        if prune:
            for path in doomed:
                if path.is_file():
                    path.unlink()
                    report.pruned += 1
        report.encoders.append(rep)
    return report


__all__ = ["CheckReport", "EncoderReport", "check_cache"]
