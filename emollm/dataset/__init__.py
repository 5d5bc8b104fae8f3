"""The dataset core: what every part of emollm agrees a built dataset is.

The record schema and its versioning, JSONL and atomic file IO, the AU inventory, label sets and the
HF ``datasets`` view of a built dataset. It sits at the bottom of the package graph: it imports
nothing from media, modeling, the builder, features, training, eval or inference.
"""
