"""Non-LLM emotion classifiers from the seed papers (HLM12ERC, TelME, DMD) on the same built datasets
and feature cache as the LLM, trained and scored by the same tools (``docs/baselines.md``)."""

from __future__ import annotations

import importlib

from emollm.baselines.base import (
    BASELINES,
    BaselineBatch,
    BaselineModel,
    BaselineOutput,
    build_baseline,
    register_baseline,
)

METHOD_MODULES = ("hlm12erc", "telme", "dmd")


def load_methods() -> None:
    """Import the method modules (each registers itself)."""
    for module in METHOD_MODULES:
        importlib.import_module(f"emollm.baselines.{module}")


__all__ = ["BASELINES", "BaselineBatch", "BaselineModel", "BaselineOutput", "build_baseline", "load_methods",
           "register_baseline"]
