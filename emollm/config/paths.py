"""Check a config's input paths before anything heavy runs.

A command that loads a 7B backbone and then finds ``data.dataset_dir`` missing has wasted minutes;
a local backbone path that does not exist reaches transformers as a malformed hub id. So every
command that reads inputs (``train``, ``predict``, ``features``, ``infer``) calls
:func:`check_input_paths` right after loading the config: it only looks at the file system (no
import of torch or transformers) and raises one :class:`~emollm.errors.ConfigError` naming the key
and the folder.

A ``name_or_path`` is a local path when it *looks* like one (absolute, ``./``, ``../``, ``~``, a
backslash, or more than one ``/``); ``org/name`` that does not exist locally is a hub id and is left
to the loader (it may be in the HF cache).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from emollm.errors import ConfigError, FeatureCacheError

COMMANDS = ("train", "predict", "features", "infer")
_ADAPTER_CONFIG = "adapter/adapter_config.json"  # emollm.modeling.modeling_emollm.ADAPTER_DIR (not imported: torch)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # org/name, as the hub allows


def looks_local(name_or_path: str) -> bool:
    """True when ``name_or_path`` can only be meant as a local path (never a hub id)."""
    text = os.fspath(name_or_path)
    return (os.path.isabs(text) or text.startswith(("./", "../", "~", ".\\")) or text in (".", "..")
            or "\\" in text or not _HUB_ID.match(text))


def _missing_folder(key: str, path: str, what: str, hint: str | None = None) -> ConfigError:
    shown = Path(path).expanduser()
    if shown.exists():
        return ConfigError(f"{key}: {path} is a file, not a folder ({what})", hint=hint)
    return ConfigError(f"{key}: no such folder: {path} ({what})", hint=hint)


def _check_model_path(key: str, name_or_path: str | None, what: str) -> None:
    if not name_or_path:
        return
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return
    if path.exists() or looks_local(name_or_path):
        raise _missing_folder(key, name_or_path, what,
                              hint="give an existing checkpoint folder, or a hub id of the form org/name")


def check_input_paths(cfg: Any, command: str, *, dataset_dir: str | os.PathLike | None = None,
                      extra: Mapping[str, str | os.PathLike | None] | None = None,
                      run_dir: str | os.PathLike | None = None) -> None:
    """Raise :class:`ConfigError` for the first input path of ``command`` that does not exist
    (``cfg`` None: only ``extra``, e.g. the run dir before its config is read).

    ``command``: one of :data:`COMMANDS`. ``dataset_dir``: the dataset the command reads when given
    on the command line (else ``data.dataset_dir``). ``extra``: more folders the command needs,
    by the name the user typed them under (``{"--model": run_dir}``). ``run_dir`` (predict, infer):
    the run whose config ``cfg`` is; its backbone is checked only when the run loads one (a LoRA
    adapter on it), as a fully fine-tuned run holds its own weights.
    """
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r} (one of {COMMANDS})")
    for name, folder in (extra or {}).items():
        if folder is not None and not Path(folder).expanduser().is_dir():
            raise _missing_folder(name, os.fspath(folder), f"needed by `emollm {command}`")
    if cfg is None:
        return
    key = "data.dataset_dir" if dataset_dir is None else "DATASET_DIR"
    dataset = dataset_dir if dataset_dir is not None else cfg.data.dataset_dir
    if command in ("train", "predict", "features"):
        if not dataset:
            raise ConfigError(f"{key} is not set: `emollm {command}` reads a built dataset",
                              hint="pass it: data.dataset_dir=DIR (a folder `emollm build` wrote)")
        root = Path(dataset).expanduser()
        if not root.is_dir():
            raise _missing_folder(key, os.fspath(dataset), "a built dataset",
                                  hint="build it first: emollm build CLIPS_DIR --out DATASET_DIR")
        if not (root / "annotations.jsonl").is_file() and not (root / "dataset_dict.json").is_file():
            raise ConfigError(f"{key}: {dataset} holds no annotations.jsonl: not a built dataset",
                              hint="build it first: emollm build CLIPS_DIR --out DATASET_DIR")
    frozen = {n: e for n, e in cfg.model.encoders.items() if e.modality != "au"}
    from emollm.config.schema import IMPORTED_KINDS

    checkpoints = {n: e for n, e in frozen.items() if e.modality not in IMPORTED_KINDS}  # a tag, not a path
    if command == "train" and frozen and cfg.features.on_missing == "error":
        # an `emollm export --to hf` folder's default cache is its source dataset's: training resolves it
        hf_export = bool(dataset) and (Path(dataset) / "dataset_dict.json").is_file()
        cache = cfg.features.cache_dir or (Path(dataset) / "features" if dataset and not hf_export else None)
        if cache is not None and not Path(cache).expanduser().is_dir():
            key = "features.cache_dir" if cfg.features.cache_dir else "the feature cache"
            raise FeatureCacheError(f"{key}: no such folder: {cache} (training reads cached encoder features)")
    if command == "train":
        if cfg.train.init_from:  # a run dir (never a hub id); its own config names the backbone
            if not Path(cfg.train.init_from).expanduser().is_dir():
                raise _missing_folder("train.init_from", cfg.train.init_from, "the stage-1 run to start from")
        elif not cfg.model.backbone.name_or_path:
            raise ConfigError("model.backbone.name_or_path is not set",
                              hint="set it to a checkpoint folder or a hub id (org/name)")
        else:
            _check_model_path("model.backbone.name_or_path", cfg.model.backbone.name_or_path, "the backbone LLM")
        if cfg.train.resume and cfg.train.resume != "latest" and not Path(cfg.train.resume).expanduser().is_dir():
            raise _missing_folder("train.resume", cfg.train.resume, "a checkpoint-<step> folder, or 'latest'")
    elif command in ("predict", "infer"):
        # a LoRA run loads its backbone by this name: a missing local copy is named before the load
        if run_dir is None or (Path(run_dir) / _ADAPTER_CONFIG).is_file():
            _check_model_path("model.backbone.name_or_path", cfg.model.backbone.name_or_path, "the run's backbone LLM")
    if command in ("train", "features", "infer"):  # encoders run (or fingerprint) on these commands
        for name, encoder in checkpoints.items():
            _check_model_path(f"model.encoders.{name}.name_or_path", encoder.name_or_path,
                              f"the '{name}' encoder checkpoint")


__all__ = ["COMMANDS", "check_input_paths", "looks_local"]
