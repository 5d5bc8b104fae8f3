"""MERR-style dataset builder: raw clips -> AUs -> peak frame -> pseudo-labels -> cues -> reasoning.

Uses the shared media layer (:mod:`emollm.media`) and config family (:mod:`emollm.config`).
"""
