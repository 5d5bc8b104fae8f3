"""A synthetic multimodal task that only fusion solves: the check that a baseline really combines its
modalities (``tests/baselines``), in seconds on a CPU.

>>> batch = fusion_task(2000, {"text": 16, "audio": 16, "visual": 8}, num_classes=2)
>>> train, test = subset(batch, slice(0, 1500)), subset(batch, slice(1500, None))

Each modality is a standard-normal vector. The label depends on one random direction in each of the
first two modalities: each projection is cut into ``num_classes`` equiprobable bins ``q_a``, ``q_b``
and the label is ``(q_a + q_b) mod num_classes`` (for two classes: the XOR of the two signs). Because
``q_b`` is uniform and independent of modality A, the label given A alone is uniform, and the same
for B: every single modality sits exactly at chance, however strong the classifier. Modalities past
the first two are pure noise. The regression variant scores ``3 tanh(1.5 p_a) tanh(1.5 p_b)`` in
(-3, 3) (a MOSI-like sentiment range): its mean given either projection alone is 0.

The same ``seed`` gives the same features for both tasks, and then the two-class label is exactly
``score < 0`` (the XOR of the signs), so one feature set can carry both targets.

``noise`` is the standard deviation of Gaussian noise added to the observed features after the label
is drawn (so the best achievable accuracy is a little below 1); ``missing`` marks that fraction of
rows absent per modality (``present`` False, features zeroed) to exercise the masks.
"""

from __future__ import annotations

from collections.abc import Mapping
from statistics import NormalDist
from typing import Literal

import numpy as np
import torch

from emollm.baselines.base import BaselineBatch
from emollm.errors import ConfigError


def fusion_task(n: int, dims: Mapping[str, int], num_classes: int = 2, seed: int = 0, *,
                task: Literal["classification", "regression"] = "classification", noise: float = 0.1,
                missing: float = 0.0) -> BaselineBatch:
    """``n`` samples of the fusion task over the modalities ``dims`` (name -> width, the first two
    carry the label). The same ``seed`` gives the same task *and* the same samples: draw train and test
    in one call and split with :func:`subset`."""
    names = list(dims)
    if len(names) < 2:
        raise ConfigError(f"fusion_task needs at least two modalities, got {names}",
                          hint="the label combines the first two modalities; pass e.g. {'text': 16, 'audio': 16}")
    if any(int(d) < 1 for d in dims.values()):
        raise ConfigError(f"fusion_task: every modality width must be >= 1, got {dict(dims)}")
    if task not in ("classification", "regression"):
        raise ConfigError(f"fusion_task: task must be 'classification' or 'regression', got {task!r}")
    if task == "classification" and num_classes < 2:
        raise ConfigError(f"fusion_task: num_classes must be >= 2, got {num_classes}")
    if not 0.0 <= missing < 1.0:
        raise ConfigError(f"fusion_task: missing must be in [0, 1), got {missing}")

    rng = np.random.default_rng(seed)
    clean = {name: rng.standard_normal((n, int(dims[name]))) for name in names}
    directions = []
    for name in names[:2]:
        u = rng.standard_normal(int(dims[name]))
        directions.append(u / np.linalg.norm(u))
    # Unit directions on standard-normal inputs: each projection is itself N(0, 1).
    proj_a = clean[names[0]] @ directions[0]
    proj_b = clean[names[1]] @ directions[1]

    if task == "classification":
        # Equiprobable bins of N(0, 1), so each bin index is uniform and independent across modalities.
        edges = [NormalDist().inv_cdf(k / num_classes) for k in range(1, num_classes)]
        bin_a, bin_b = np.digitize(proj_a, edges), np.digitize(proj_b, edges)
        labels = torch.as_tensor((bin_a + bin_b) % num_classes, dtype=torch.long)
    else:
        labels = torch.as_tensor(3.0 * np.tanh(1.5 * proj_a) * np.tanh(1.5 * proj_b), dtype=torch.float32)

    features, present = {}, {}
    for name in names:
        observed = clean[name] + noise * rng.standard_normal(clean[name].shape)
        mask = rng.random(n) >= missing if missing > 0 else np.ones(n, dtype=bool)
        observed[~mask] = 0.0  # the feature cache's convention for an absent modality
        features[name] = torch.as_tensor(observed, dtype=torch.float32)
        present[name] = torch.as_tensor(mask)
    return BaselineBatch(features, present, labels, [f"synthetic-{seed}-{i}" for i in range(n)])


def subset(batch: BaselineBatch, index: slice | torch.Tensor | np.ndarray | list[int]) -> BaselineBatch:
    """The rows ``index`` of ``batch`` (a slice, integer indices or a boolean mask)."""
    if not isinstance(index, slice):
        index = torch.as_tensor(np.asarray(index))
        if index.dtype == torch.bool:
            index = index.nonzero().flatten()
    rows = range(len(batch))[index] if isinstance(index, slice) else index.tolist()
    return BaselineBatch(
        {k: v[index] for k, v in batch.features.items()},
        {k: v[index] for k, v in batch.present.items()},
        None if batch.labels is None else batch.labels[index],
        [batch.ids[i] for i in rows] if batch.ids else [],
    )
