"""Reading a built dataset's manifest (written by :func:`data_builders.runner.merge_outputs`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def read_manifest(dataset_dir: str | os.PathLike[str]) -> dict[str, Any]:
    return json.loads((Path(dataset_dir) / "manifest.json").read_text(encoding="utf-8"))
