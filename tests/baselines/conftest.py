"""Fixtures for the baseline data / CLI tests: a built dataset whose feature cache holds a synthetic
fusion task (labels recoverable only from text + audio together), written through the real
FeatureCache under the fingerprints of the tiny text and audio encoders, so the baseline finds it
exactly as it finds what `emollm features` writes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

SYNTH_LABELS = ("joy", "sadness")  # MELD labels standing for the two classes of the XOR task
SYNTH_N, SYNTH_TEST = 400, 100


@dataclass
class SyntheticDataset:
    root: Path  # the built dataset (annotations.jsonl, features/)
    config: Path  # a config file: text + audio encoders, MELD labels, train/test splits
    records: list[dict]
    text_ckpt: Path
    audio_ckpt: Path


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: thread start-up costs more than it saves (and CI's machine is shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def baseline_encoders():
    from emollm.testing.tiny import build_tiny_models

    tiny = build_tiny_models(names=["bert", "hubert"])
    return tiny.bert, tiny.hubert


def write_config(path: Path, text_ckpt: Path, audio_ckpt: Path, *extra: str) -> Path:
    lines = [
        "extends: base",
        "data: {label_set: meld, train_split: train, eval_split: test}",
        "model:",
        "  encoders:",
        f"    text: {{name_or_path: '{text_ckpt}'}}",
        f"    audio: {{name_or_path: '{audio_ckpt}'}}",
        *extra,
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def make_synthetic_dataset(root: Path, text_ckpt: Path, audio_ckpt: Path, *, n: int = SYNTH_N,
                           n_test: int = SYNTH_TEST, seed: int = 3) -> SyntheticDataset:
    """``n`` clip records (the last ``n_test`` in split ``test``) and their cached features: text (1, 24)
    and audio (2, 32) rows whose mean is the task's vector; every 10th clip has no subtitle (absent text)."""
    from emollm.features.cache import FeatureCache
    from emollm.modeling.encoders import build_encoder
    from emollm.testing.synthetic import fusion_task

    widths = {"text": 24, "audio": 32}  # the tiny encoders' feature widths
    # The task lives in the first 4 coordinates of each modality (the rest is small noise), so a few
    # hundred clips are enough to learn it.
    task = fusion_task(n, {"text": 4, "audio": 4}, num_classes=2, seed=seed, noise=0.05)
    sentiment = fusion_task(n, {"text": 4, "audio": 4}, seed=seed, task="regression", noise=0.05).labels  # same features
    g = torch.Generator().manual_seed(seed)
    features = {name: torch.cat([task.features[name], 0.05 * torch.randn(n, width - 4, generator=g)], dim=1)
                for name, width in widths.items()}  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    config = write_config(root.parent / f"{root.name}.yaml", text_ckpt, audio_ckpt, "features: {dtype: float32}")
    from emollm import config as cfglib

    cache = FeatureCache.from_config(cfglib.load(config), root)  # keyed by the config's inputs, as `emollm features`
    cache.register("text", build_encoder("text", text_ckpt))
    cache.register("audio", build_encoder("audio", audio_ckpt))
    records = []
    for i in range(n):
        clip_id = f"clip {i:03d}"  # a space: ids are percent-encoded in the cache
        label = SYNTH_LABELS[int(task.labels[i])]
        has_text = i % 10 != 9
        records.append({
            "schema_version": 1, "id": clip_id, "media": {"path": f"clips/{i:03d}.mp4", "kind": "video"},
            "au_source": "builtin", "pseudo_label": "neutral", "label": label,
            "split": "test" if i >= n - n_test else "train", "subtitle": "words" if has_text else None,
            "sentiment": round(float(sentiment[i]), 4), "provenance": {}, "review": {"state": "unreviewed"},
        })  # fmt: skip
        if has_text:
            cache.put(clip_id, "text", features["text"][i : i + 1], record=records[-1])
        else:
            cache.put_absent(clip_id, "text", "no subtitle", record=records[-1])
        delta = torch.full((widths["audio"],), 0.5)
        vector = features["audio"][i]
        pair = torch.stack([vector + delta, vector - delta])  # pooled: the mean
        cache.put(clip_id, "audio", pair, record=records[-1])
    (root / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return SyntheticDataset(root, config, records, Path(text_ckpt), Path(audio_ckpt))


@pytest.fixture(scope="session")
def synthetic_dataset(baseline_encoders, tmp_path_factory) -> SyntheticDataset:
    text_ckpt, audio_ckpt = baseline_encoders
    return make_synthetic_dataset(tmp_path_factory.mktemp("baseline_synth") / "dataset", text_ckpt, audio_ckpt)
