"""MERR-style dataset builder: raw clips -> AUs -> peak frame -> pseudo-labels -> cues -> reasoning.

Uses the shared media layer (:mod:`emollm.media`) and config family (:mod:`emollm.config`).

Part 1 (``emollm build``, docs/builder.md): :mod:`.inputs` (clip discovery, label / subtitle CSVs),
:mod:`.au` (AU sources: :mod:`.au.landmark_au` built-in, :mod:`.au.openface_csv`,
:mod:`.au.openface_bin`; the per-frame side file), :mod:`.peak`, :mod:`.rules` (AU -> emotion table
as YAML), :mod:`.record` (versioned clip record), :mod:`.runner` (resumable build loop, workers,
shards, merge), :mod:`.manifest`.
"""
