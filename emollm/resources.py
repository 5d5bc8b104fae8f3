"""Find the data folders that ship with emollm: ``prompts/`` and ``train_configs/``.

In a source checkout or editable install they sit at the repository root; an installed wheel
carries them inside the package as ``emollm/_data/<name>`` (see ``pyproject.toml``).
"""

from __future__ import annotations

from pathlib import Path

from emollm.errors import EmollmError

_PACKAGE_DIR = Path(__file__).resolve().parent
DATA_FOLDERS = ("prompts", "train_configs")


def data_dir(name: str) -> Path:
    """The directory of a shipped data folder (``prompts`` or ``train_configs``)."""
    if name not in DATA_FOLDERS:
        raise ValueError(f"unknown data folder {name!r}; expected one of {DATA_FOLDERS}")
    for candidate in (_PACKAGE_DIR / "_data" / name, _PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise EmollmError(
        f"emollm's '{name}/' data folder is missing from this installation",
        hint="reinstall emollm (pip install emollm) or run from a full source checkout",
    )


def prompts_dir() -> Path:
    return data_dir("prompts")


def train_configs_dir() -> Path:
    return data_dir("train_configs")
