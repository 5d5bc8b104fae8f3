"""Baseline data: a built dataset + its feature cache -> one pooled vector per clip and modality.

>>> data = load_split(cfg, "data/meld", "train")               # BaselineSplit (the whole split in memory)
>>> data.batch.features["text"].shape, data.batch.labels.shape   # (N, D_text), (N,)
>>> for indices in ClassAwareBatchSampler(data.batch.labels, 4, 8, seed=0): ...

What a baseline reads is what the LLM reads: the clip records of ``annotations.jsonl`` (split by the
record's ``split``) and the frozen-encoder features of the feature cache (``emollm features``), found by
the encoders of ``model.encoders`` without loading them (:meth:`FeatureCache.bind`). Each cached
``(T, D)`` entry is mean-pooled over its rows to ``(D,)``; an ``au`` modality is the mean of the
builder's per-frame AU side file over the frames with a face. A clip without input for a modality
(no face, no audio, no subtitle: an ``absent`` mark) gets zeros and ``present`` False. A missing cache
entry raises :class:`~emollm.errors.FeatureMissingError` naming the clip and modality
(``features.on_missing=skip``: treated as absent and counted).

Targets: classification reads the ground-truth ``label``, else the ``pseudo_label``, as an index into
the evaluation label set (``cfg.eval_label_set``; synonyms map to the set's own label), and keeps which
of the two each clip's is (``BaselineSplit.sources``: eval metrics are given per source, predictions
carry ``gt`` / ``gt_source``); regression reads the float in ``baseline.target_field``. Records without
a target are skipped and counted.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from emollm.baselines.base import BaselineBatch
from emollm.errors import ConfigError, EmollmError, FeatureCacheError
from emollm.log import get_logger, progress

log = get_logger(__name__)


@dataclass
class ModalityInfo:
    """One modality a baseline reads: its encoder kind, checkpoint, options and pooled width."""

    kind: str
    feature_dim: int
    name_or_path: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    fingerprint: str | None = None  # the feature-cache fingerprint bound at load time (None: au)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "feature_dim": self.feature_dim, "name_or_path": self.name_or_path,
                "options": dict(self.options), "fingerprint": self.fingerprint}


@dataclass
class BaselineSplit:
    """One split of a built dataset as tensors: ``batch`` holds every clip (features, presence,
    targets, ids); ``skipped`` counts records left out and why."""

    batch: BaselineBatch
    modalities: dict[str, ModalityInfo]
    split: str | None
    labels: tuple[str, ...] = ()  # classification: the label set's labels (index -> name)
    skipped: Counter[str] = field(default_factory=Counter)
    # classification, per clip (aligned with batch.ids): its reference label as the record gives it and where
    # it comes from, "label" (a person's) or "pseudo_label" (the builder's) (eval/references.py); None: none
    references: tuple[str | None, ...] = ()
    sources: tuple[str | None, ...] = ()

    def __len__(self) -> int:
        return len(self.batch.ids)

    @property
    def feature_dims(self) -> dict[str, int]:
        return {name: info.feature_dim for name, info in self.modalities.items()}


def selected_modalities(cfg: Any) -> dict[str, Any]:
    """The ``model.encoders`` entries a baseline reads: ``baseline.modalities`` in that order, or every
    non-AU encoder (frozen features from the cache)."""
    encoders = cfg.model.encoders
    names = cfg.baseline.modalities
    if names is None:
        names = [name for name, enc in encoders.items() if enc.modality != "au"]
    unknown = [n for n in names if n not in encoders]
    if unknown:
        raise ConfigError(f"baseline.modalities names {unknown}, which are not in model.encoders "
                          f"({', '.join(encoders) or 'none'})")
    if not names:
        raise ConfigError("the baseline has no modality to read: model.encoders holds no frozen encoder",
                          hint="add encoders under model.encoders (and run `emollm features`), or set "
                               "baseline.modalities")
    return {name: encoders[name] for name in names}


def modality_infos(cfg: Any) -> dict[str, ModalityInfo]:
    """Kind, checkpoint and width of each selected modality, from the config and checkpoint configs
    (no weights loaded)."""
    from emollm.dataset.aus import MERR_AUS
    from emollm.modeling.encoders import encoder_options, feature_dim_of

    out = {}
    for name, enc in selected_modalities(cfg).items():
        if enc.modality == "au":
            width = 2 * int(enc.options.get("num_aus", len(MERR_AUS)))
            out[name] = ModalityInfo("au", width, None, dict(enc.options))
        else:
            # a precomputed entry's width and token count are its options (they pick its cache folder)
            options = encoder_options(enc.modality, dict(enc.options), feature_dim=enc.feature_dim,
                                      num_input_tokens=enc.num_input_tokens)
            width = enc.feature_dim or feature_dim_of(enc.modality, enc.name_or_path, **options)
            out[name] = ModalityInfo(enc.modality, int(width), enc.name_or_path, options)
    return out


def bind_cache(cfg: Any, dataset_dir: str | os.PathLike, modalities: Mapping[str, ModalityInfo]):
    """The dataset's :class:`FeatureCache` with each frozen modality bound to its encoder's folder;
    sets each :class:`ModalityInfo`'s ``fingerprint``."""
    from emollm.features.cache import FeatureCache

    cache = FeatureCache.from_config(cfg, dataset_dir)
    specs = {name: {"kind": info.kind, "encoder": {"name_or_path": info.name_or_path, **info.options}}
             for name, info in modalities.items() if info.kind != "au"}  # fmt: skip
    for name, fp in cache.bind_specs(specs).items():
        modalities[name].fingerprint = fp
    return cache


def pooled_aus(dataset_dir: Path, record: Mapping[str, Any]) -> torch.Tensor | None:
    """Mean of the clip's per-frame AU vector (intensities, presences) over frames with a face; None
    when the clip has no AU side file or no face frame."""
    from data_builders.au import load_aus

    aus_file = record.get("aus_file")
    if not aus_file:
        return None
    try:
        features, mask = load_aus(dataset_dir / aus_file).model_input()
    except (OSError, ValueError, KeyError) as err:
        raise EmollmError(f"clip '{record['id']}': cannot read its AU side file {aus_file} ({err})",
                          hint="rebuild the dataset (emollm build) or drop the AU modality from "
                               "baseline.modalities") from None
    if not mask.any():
        return None
    return torch.from_numpy(features[mask]).float().mean(dim=0)


def target_of(record: Mapping[str, Any], cfg: Any, label_set: Any, policy: str = "auto") -> int | float | None:
    """The training target of a record: a class index (the label, else the pseudo-label; ``policy`` as
    ``evaluate.reference_source``: ``label`` / ``pseudo_label`` keep one source) or the float in
    ``baseline.target_field``; None when the record has none."""
    if cfg.baseline.task == "regression":
        value = record.get(cfg.baseline.target_field)
        if value is None or value == "":
            return None
        try:
            score = float(value)
        except (TypeError, ValueError):
            raise EmollmError(f"clip '{record['id']}': {cfg.baseline.target_field}={value!r} is not a number",
                              hint="baseline.target_field must name a numeric record field") from None
        return score if math.isfinite(score) else None
    from eval.references import of_record

    raw, _ = of_record(record, policy)
    if not raw:
        return None
    label = label_set.normalize(str(raw))
    if label is None:
        raise EmollmError(
            f"clip '{record['id']}': label '{raw}' is not in the '{label_set.name}' label set "
            f"({', '.join(label_set.labels)})",
            hint="choose the label set the dataset was labelled with: evaluate.label_set=... (or data.label_set)")
    return label_set.labels.index(label)


def split_names(dataset_dir: str | os.PathLike) -> set[str]:
    """The ``split`` values of a built dataset's records."""
    from emollm.dataset.record import read_dataset

    return {str(r.get("split")) for r in read_dataset(dataset_dir)}


def load_split(cfg: Any, dataset_dir: str | os.PathLike, split: str | None, *, targets: bool = True,
               modalities: Mapping[str, ModalityInfo] | None = None, require_any: bool = True,
               policy: str = "auto") -> BaselineSplit:
    """Every record of ``split`` (None: all records) with pooled features; with ``targets`` the
    records without a target are skipped (counted), else targets are left out (prediction). A split
    left with no record is an error, or (``require_any=False``) an empty split. ``policy``: which
    reference labels are targets (``evaluate.reference_source``: auto | label | pseudo_label); each
    clip's reference and its source are kept in ``references`` / ``sources``.

    ``modalities`` (default: :func:`modality_infos` of ``cfg``) fixes which modalities and widths are
    read, e.g. those a trained baseline was saved with.
    """
    from emollm.dataset.label_sets import load_label_set
    from emollm.dataset.record import read_dataset
    from eval.references import of_record

    root = Path(dataset_dir)
    annotations = root / "annotations.jsonl"
    all_records = read_dataset(root)
    # copies: the fingerprints bound below are set on them, not on the caller's
    infos = {name: dataclasses.replace(info) for name, info in (modalities or modality_infos(cfg)).items()}
    cache = bind_cache(cfg, root, infos) if any(i.kind != "au" for i in infos.values()) else None
    classification = cfg.baseline.task == "classification"
    label_set = load_label_set(cfg.eval_label_set) if classification else None

    records = [r for r in all_records if split is None or r.get("split") == split]
    if not records:
        splits = sorted({str(r.get("split")) for r in all_records})
        raise EmollmError(f"{annotations}: no record in split '{split}' (splits: {', '.join(splits) or 'none'})",
                          hint="set data.train_split / data.eval_split to splits the dataset has")
    skipped: Counter[str] = Counter()
    ids: list[str] = []
    target_values: list[int | float] = []
    refs: list[tuple[str | None, str | None]] = []
    rows: dict[str, list[torch.Tensor | None]] = {name: [] for name in infos}
    for record in progress(records, desc=f"baseline data ({split or 'all'})", total=len(records), unit="clip"):
        target = target_of(record, cfg, label_set, policy) if targets else None
        if targets and target is None:
            skipped["no target" if not classification else "no label or pseudo-label" if policy == "auto"
                    else f"no reference label (evaluate.reference_source={policy})"] += 1
            continue
        if classification:
            refs.append(of_record(record, policy))
        clip_id = record["id"]
        for name, info in infos.items():
            if info.kind == "au":
                vector = pooled_aus(root, record)
            else:
                features = cache.get(clip_id, name)  # type: ignore[union-attr]  # FeatureMissingError names the clip
                vector = None if features is None else features.mean(dim=0)
            if vector is not None and vector.shape != (info.feature_dim,):
                raise FeatureCacheError(
                    f"clip '{clip_id}', modality '{name}': pooled features have width {vector.shape[-1]}, "
                    f"expected {info.feature_dim}",
                    hint="the cache was made with another encoder, or model.encoders.<name>.feature_dim is wrong")
            rows[name].append(vector)
        ids.append(clip_id)
        if targets:
            target_values.append(target)  # type: ignore[arg-type]
    if cache is not None:
        for name, count in cache.missing.items():
            skipped[f"{name}: not cached (read as absent)"] += count
    if not ids and require_any:
        raise EmollmError(f"split '{split}' of {root} has no record with a training target ({dict(skipped)})",
                          hint="records need a label or pseudo_label (classification) or baseline.target_field")
    features, present = {}, {}
    for name, info in infos.items():
        mask = torch.tensor([v is not None for v in rows[name]], dtype=torch.bool).reshape(len(ids))
        values = torch.zeros(len(ids), info.feature_dim)
        for i, v in enumerate(rows[name]):
            if v is not None:
                values[i] = v
        features[name], present[name] = values, mask
        if ids and not mask.any():
            log.warning("baseline data (%s): no clip has '%s' features: that modality is all zeros", split, name)
    labels = None
    if targets:
        labels = torch.tensor(target_values, dtype=torch.long if classification else torch.float32)
    if skipped:
        log.warning("baseline data (%s): %d record(s) skipped or incomplete: %s", split, sum(skipped.values()),
                    dict(skipped))
    return BaselineSplit(BaselineBatch(features, present, labels, ids), infos, split,
                         tuple(label_set.labels) if label_set else (), skipped,
                         tuple(r for r, _ in refs), tuple(s for _, s in refs))


# ------------------------------------------------------------------------------------------ batches
def shuffled_batches(n: int, batch_size: int, *, seed: int, epoch: int) -> list[list[int]]:
    """A seeded permutation of ``range(n)`` (depends on ``seed`` and ``epoch`` only) cut into batches;
    the last may be smaller."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


class ClassAwareBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of ``P`` classes x ``K`` samples each (the "PK" sampler of batch-hard triplet training):
    every batch holds positives and negatives for every anchor.

    Per batch, ``P`` distinct classes are drawn uniformly among the classes present (all of them when
    fewer); each gives ``K`` samples, without replacement when it has at least ``K``, else with
    replacement. An epoch has ``ceil(N / (P*K))`` batches, so it sees about N samples like a plain
    epoch. Deterministic in ``seed`` and the epoch (:meth:`set_epoch`).
    """

    def __init__(self, labels: Sequence[int] | torch.Tensor, classes_per_batch: int, samples_per_class: int, *,
                 seed: int = 0, num_batches: int | None = None):
        if classes_per_batch < 1 or samples_per_class < 1:
            raise ConfigError(f"class-aware batches need P >= 1 classes and K >= 1 samples, got "
                              f"P={classes_per_batch}, K={samples_per_class}")
        labels = torch.as_tensor(labels).tolist()
        if not labels:
            raise EmollmError("no training sample: the class-aware sampler got no labels")
        self.by_class: dict[int, list[int]] = {}
        for index, label in enumerate(labels):
            self.by_class.setdefault(int(label), []).append(index)
        self.classes = sorted(self.by_class)
        self.p = min(classes_per_batch, len(self.classes))
        self.k = samples_per_class
        self.seed = seed
        self.epoch = 0
        self.num_batches = num_batches or max(1, math.ceil(len(labels) / (self.p * self.k)))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        for _ in range(self.num_batches):
            picked = torch.randperm(len(self.classes), generator=g)[: self.p].tolist()
            batch: list[int] = []
            for c in picked:
                members = self.by_class[self.classes[c]]
                if len(members) >= self.k:
                    chosen = torch.randperm(len(members), generator=g)[: self.k].tolist()
                else:
                    chosen = torch.randint(len(members), (self.k,), generator=g).tolist()
                batch += [members[i] for i in chosen]
            yield batch


__all__ = ["BaselineSplit", "ClassAwareBatchSampler", "ModalityInfo", "bind_cache", "load_split",
           "modality_infos", "pooled_aus", "selected_modalities", "shuffled_batches", "split_names", "target_of"]
