"""Training: data pipeline (dataset, length-grouped sampler, collator) and the loop (`loop.train`, used by train.py)."""

from emollm.training.data import EmotionCollator, EmotionDataset, LengthGroupedBatchSampler, real_token_fraction

__all__ = ["EmotionCollator", "EmotionDataset", "LengthGroupedBatchSampler", "real_token_fraction"]
