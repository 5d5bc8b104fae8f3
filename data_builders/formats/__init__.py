"""Dataset formats: Emotion-LLaMA's MERR files (import / export) and LLaMA-Factory ShareGPT (export)."""

from data_builders.formats.merr import export_merr, import_merr
from data_builders.formats.sharegpt import export_sharegpt

__all__ = ["export_merr", "export_sharegpt", "import_merr"]
