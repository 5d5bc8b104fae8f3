"""Importers: other projects' checkpoints and files as emollm run dirs, caches and datasets.

- :mod:`.emotion_llama` — Emotion-LLaMA's released checkpoint (MiniGPT-v2 format) -> a run dir
"""
