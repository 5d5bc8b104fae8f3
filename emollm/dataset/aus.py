"""The Action-Unit inventory: which AUs a built dataset holds, in which order, and their scale.

The dataset builder writes the per-frame AU side files in :data:`MERR_AUS` order, the AU readers
(OpenFace CSV, the landmark extractor) fill it, the rules and the peak finder read it, and the
model's AU encoder takes its input in it. A new AU means a new entry here (and a new schema for the
side files: old ones hold the old order, ``au_names`` says which).
"""

from __future__ import annotations

#: The 17 AUs of MERR (OpenFace 2 intensity set), in the order every AU tensor uses.
MERR_AUS: tuple[str, ...] = (
    "AU01", "AU02", "AU04", "AU05", "AU06", "AU07", "AU09", "AU10", "AU12",
    "AU14", "AU15", "AU17", "AU20", "AU23", "AU25", "AU26", "AU45",
)  # fmt: skip
#: AU intensities run from 0 to this (FACS A-E mapped to 1-5 by OpenFace).
AU_INTENSITY_MAX = 5.0

__all__ = ["AU_INTENSITY_MAX", "MERR_AUS"]
