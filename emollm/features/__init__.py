"""The feature cache (frozen-encoder features per clip, keyed by every input that changes them), `emollm features`."""

from emollm.features.cache import EntryCheck, FeatureCache, clip_id_of, safe_name
from emollm.features.check import CheckReport, check_cache
from emollm.features.extract import FeaturesSummary, decode_for_encoders, encoder_inputs, extract_features

__all__ = ["CheckReport", "EntryCheck", "FeatureCache", "FeaturesSummary", "check_cache", "clip_id_of",
           "decode_for_encoders", "encoder_inputs", "extract_features", "safe_name"]
