"""Training: data pipeline (dataset, length-grouped sampler, collator); the loop lives in train.py."""

from emollm.training.data import EmotionCollator, EmotionDataset, LengthGroupedBatchSampler, real_token_fraction

__all__ = ["EmotionCollator", "EmotionDataset", "LengthGroupedBatchSampler", "real_token_fraction"]
