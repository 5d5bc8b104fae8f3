"""The feature cache (frozen-encoder features per clip, keyed by encoder fingerprint) and `emollm features`."""

from emollm.features.cache import FeatureCache, clip_id_of, safe_name
from emollm.features.extract import FeaturesSummary, decode_for_encoders, encoder_inputs, extract_features

__all__ = ["FeatureCache", "FeaturesSummary", "clip_id_of", "decode_for_encoders", "encoder_inputs",
           "extract_features", "safe_name"]
