"""Run OpenFace 2.x ``FeatureExtraction`` on a clip and import its CSV.

The binary is ``build.openface_bin`` or ``FeatureExtraction`` on PATH; when neither exists the
run stops before any clip with :class:`~emollm.errors.OpenFaceNotFoundError`.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from data_builders.au import AUSeries
from data_builders.au.openface_csv import read_openface_csv
from emollm.errors import AUExtractionError, OpenFaceNotFoundError

VERSION = "openface_bin/1"


def find_binary(configured: str | None = None) -> str:
    candidate = configured or "FeatureExtraction"
    found = shutil.which(candidate)
    if found is None:
        raise OpenFaceNotFoundError(f"build.au_source=openface_bin but the OpenFace binary '{candidate}' is not found")
    return found


def extract(path: str | Path, *, binary: str, min_confidence: float, presence_threshold: float, fps: float | None) -> AUSeries:
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="emollm-openface-") as tmp:
        flag = "-f"
        cmd = [binary, flag, str(path), "-out_dir", tmp, "-aus", "-2Dfp"]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise AUExtractionError(path, f"OpenFace FeatureExtraction failed to run: {e}") from None
        csvs = sorted(Path(tmp).glob("*.csv"))
        if done.returncode != 0 or not csvs:
            tail = " | ".join((done.stderr or done.stdout or "").strip().splitlines()[-3:])
            raise AUExtractionError(path, f"OpenFace FeatureExtraction exit {done.returncode}: {tail}")
        series = read_openface_csv(csvs[0], min_confidence=min_confidence, presence_threshold=presence_threshold, fps=fps)
    series.source = "openface_bin"
    return series
