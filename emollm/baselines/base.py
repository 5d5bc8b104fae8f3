"""The contract every baseline classifier shares: a batch of pooled per-modality features in, logits
(or a regression score) and named loss terms out; registered by name.

>>> model = build_baseline("hlm12erc", {"text": 768, "audio": 1024}, num_classes=7, fusion="attention")
>>> out = model(batch)                        # BaselineOutput(logits (B, C), loss, parts)
>>> for stage in model.stages:                # multi-stage methods (TelME: teacher, students, fusion)
...     model.set_stage(stage); ...           # freezes what the stage does not train

A batch holds one pooled vector per modality and clip (``features[name]`` ``(B, D_name)``) and a
presence mask (``present[name]`` ``(B,)``, False where the clip lacks that modality: its row is zeros);
``labels`` are class indices (classification) or float scores (regression), absent at predict time.

How the trainer (:mod:`emollm.baselines.train`) drives a model: for each stage in ``stages`` it calls
``set_stage(stage)`` and optimises (AdamW, a fresh optimizer per stage) the parameters that then have
``requires_grad``, in ``train()`` mode, on batches from a seeded shuffle, or from a class-aware
sampler when :meth:`BaselineModel.class_aware_batches` asks for one; ``out.loss`` is minimised and
``out.parts`` logged. Eval-split metrics after an epoch use ``eval()`` mode in the current stage;
the saved model is in its *last* stage, and a reloaded one is put in ``stages[-1]`` before it predicts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from emollm.errors import ConfigError


@dataclass
class BaselineBatch:
    features: dict[str, torch.Tensor]  # modality -> (B, D) float32
    present: dict[str, torch.Tensor]  # modality -> (B,) bool
    labels: torch.Tensor | None = None  # (B,) long (classification) or float (regression)
    ids: list[str] = field(default_factory=list)

    def to(self, device: torch.device | str) -> BaselineBatch:
        return BaselineBatch(
            {k: v.to(device) for k, v in self.features.items()},
            {k: v.to(device) for k, v in self.present.items()},
            None if self.labels is None else self.labels.to(device),
            list(self.ids),
        )

    def __len__(self) -> int:
        return len(next(iter(self.features.values())))

    def select(self, indices: Sequence[int] | torch.Tensor) -> BaselineBatch:
        """The rows ``indices`` (in that order) as a new batch."""
        index = torch.as_tensor(indices, dtype=torch.long)
        return BaselineBatch(
            {k: v[index] for k, v in self.features.items()},
            {k: v[index] for k, v in self.present.items()},
            None if self.labels is None else self.labels[index],
            [self.ids[i] for i in index.tolist()] if self.ids else [],
        )


@dataclass
class BaselineOutput:
    logits: torch.Tensor | None = None  # (B, C) classification
    prediction: torch.Tensor | None = None  # (B,) regression score
    loss: torch.Tensor | None = None  # scalar, when the batch has labels
    parts: dict[str, float] = field(default_factory=dict)  # named loss terms (logged), e.g. {"ce": .., "dice": ..}


class BaselineModel(nn.Module):
    """Base of the registered baselines. Subclasses set ``OPTIONS`` (name -> default) and implement
    :meth:`forward`; multi-stage methods list their ``stages`` and override :meth:`set_stage`."""

    name: ClassVar[str] = ""
    OPTIONS: ClassVar[dict[str, Any]] = {}
    stages: tuple[str, ...] = ("main",)

    def __init__(self, feature_dims: Mapping[str, int], num_classes: int, *,
                 task: Literal["classification", "regression"] = "classification", **options: Any):
        super().__init__()
        unknown = sorted(set(options) - set(self.OPTIONS))
        if unknown:
            raise ConfigError(f"unknown option(s) {unknown} for baseline '{self.name}'",
                              hint=f"valid options: {sorted(self.OPTIONS)}")
        if not feature_dims:
            raise ConfigError(f"baseline '{self.name}' needs at least one modality")
        self.feature_dims = dict(feature_dims)
        self.num_classes = int(num_classes)
        self.task = task
        self.options = {**self.OPTIONS, **options}
        self.stage = self.stages[0]

    def set_stage(self, stage: str) -> None:
        """Make the parameters ``stage`` trains require grad, the others not."""
        if stage not in self.stages:
            raise ConfigError(f"baseline '{self.name}' has no stage '{stage}' (stages: {list(self.stages)})")
        self.stage = stage

    def forward(self, batch: BaselineBatch) -> BaselineOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def class_aware_batches(self) -> tuple[int, int] | None:
        """``(classes per batch P, samples per class K)`` when the current stage's loss needs batches
        of P classes x K samples (a triplet term needs positives and negatives in every batch); None
        (default): plain shuffled batches of ``baseline.batch_size``. P is capped at the classes the
        training split has; ``K = 0`` means ``baseline.batch_size // P`` (at least 2)."""
        return None

    def config_dict(self) -> dict[str, Any]:
        """What :func:`build_baseline` needs to rebuild this model (saved with its weights)."""
        return {"method": self.name, "feature_dims": self.feature_dims, "num_classes": self.num_classes,
                "task": self.task, "options": self.options}


BASELINES: dict[str, type[BaselineModel]] = {}


def register_baseline(name: str) -> Callable[[type[BaselineModel]], type[BaselineModel]]:
    def wrap(cls: type[BaselineModel]) -> type[BaselineModel]:
        if name in BASELINES and BASELINES[name] is not cls:
            raise ValueError(f"a baseline is already registered as '{name}'")
        cls.name = name
        BASELINES[name] = cls
        return cls

    return wrap


METHOD_MODULES = ("hlm12erc", "telme", "dmd")


def load_methods() -> None:
    """Import the method modules (each registers itself)."""
    import importlib

    for module in METHOD_MODULES:
        importlib.import_module(f"emollm.baselines.{module}")


def build_baseline(method: str, feature_dims: Mapping[str, int], num_classes: int, *,
                   task: Literal["classification", "regression"] = "classification", **options: Any) -> BaselineModel:
    import importlib

    if method in METHOD_MODULES:
        importlib.import_module(f"emollm.baselines.{method}")  # only the one asked for
    else:
        load_methods()  # every method registered, for the suggestion below
    if method not in BASELINES:
        import difflib

        close = difflib.get_close_matches(method, BASELINES, n=1)
        raise ConfigError(f"unknown baseline method '{method}'" + (f" (did you mean '{close[0]}'?)" if close else ""),
                          hint=f"methods: {sorted(BASELINES)}")
    return BASELINES[method](feature_dims, num_classes, task=task, **options)
