"""Non-LLM emotion classifiers from the seed papers (HLM12ERC, TelME, DMD) on the same built datasets
and feature cache as the LLM, trained and scored by the same tools (``docs/baselines.md``)."""

from __future__ import annotations

# the method registry lives in base.py (which loads the method modules on demand), so base never
# has to import this package back
from emollm.baselines.base import (
    BASELINES,
    METHOD_MODULES,
    BaselineBatch,
    BaselineModel,
    BaselineOutput,
    build_baseline,
    load_methods,
    register_baseline,
)

__all__ = ["BASELINES", "METHOD_MODULES", "BaselineBatch", "BaselineModel", "BaselineOutput", "build_baseline", "load_methods",
           "register_baseline"]
