"""The config system: typed dataclass configs from YAML, ``extends:``, ``${ENV}``, dotted overrides.

>>> cfg = load("train_configs/tiny_cpu.yaml", ["train.lr=2e-5"])   # doctest: +SKIP
>>> save_resolved(cfg, out_dir)                                      # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Sequence
from pathlib import Path

from emollm.config.loader import (
    ConfigCheck,
    all_dotted_keys,
    build_dataclass,
    dump_yaml,
    load_config,
    load_raw,
    parse_override,
    resolve_config_path,
    to_dict,
)
from emollm.config.schema import (
    SCHEMA_VERSION,
    BackboneConfig,
    BaselineConfig,
    BuildConfig,
    DataConfig,
    EmollmConfig,
    EncoderConfig,
    EvaluateConfig,
    FaceConfig,
    FeaturesConfig,
    LoraSettings,
    MediaConfig,
    ModelConfig,
    PredictConfig,
    RunConfig,
    TrainConfig,
)

RESOLVED_CONFIG_NAME = "config.yaml"


def load(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> EmollmConfig:
    """Load an emollm config file (or the defaults when ``path`` is None) with dotted overrides."""
    return load_config(EmollmConfig, path, overrides)


def save_resolved(cfg: EmollmConfig, out_dir: str | os.PathLike, *, command: str | None = None) -> Path:
    """Write the fully resolved config next to the outputs it produced; returns the file path.

    The file loads back with :func:`load` to an equal config (defaults are written out, so a later
    change of a default does not change what an old run meant).
    """
    from emollm.version import __version__

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESOLVED_CONFIG_NAME
    header = [
        f"# Resolved emollm config (emollm {__version__}, schema {SCHEMA_VERSION})",
        f"# written {_dt.datetime.now().astimezone().isoformat(timespec='seconds')}"
        + (f" by `emollm {command}`" if command else ""),
        "# Load it back with: emollm <command> --config this-file",
    ]
    from emollm.dataset.io import atomic_write_text

    atomic_write_text(path, "\n".join(header) + "\n" + dump_yaml(cfg), fsync=False)
    return path


__all__ = [
    "SCHEMA_VERSION",
    "RESOLVED_CONFIG_NAME",
    "BackboneConfig",
    "BaselineConfig",
    "BuildConfig",
    "ConfigCheck",
    "DataConfig",
    "EmollmConfig",
    "EncoderConfig",
    "EvaluateConfig",
    "FaceConfig",
    "FeaturesConfig",
    "LoraSettings",
    "MediaConfig",
    "ModelConfig",
    "PredictConfig",
    "RunConfig",
    "TrainConfig",
    "all_dotted_keys",
    "build_dataclass",
    "dump_yaml",
    "load",
    "load_config",
    "load_raw",
    "parse_override",
    "resolve_config_path",
    "save_resolved",
    "to_dict",
]
