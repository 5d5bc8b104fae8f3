"""Training data: built dataset + feature cache -> dataset -> length-grouped batches -> forward/backward."""

from __future__ import annotations

import random
import shutil

import pytest
import torch

from emollm import config as cfglib
from emollm.cli import main as cli
from emollm.errors import FeatureCacheError, FeatureMissingError
from emollm.features import FeatureCache
from emollm.testing.datasets import FAST
from emollm.testing.tiny import build_tiny_models
from emollm.training.data import EmotionCollator, EmotionDataset, LengthGroupedBatchSampler, real_token_fraction


@pytest.fixture(scope="module")
def setup(sample_dir, tmp_path_factory):
    build_tiny_models()
    root = tmp_path_factory.mktemp("train_clips")
    shutil.copy(sample_dir / "single_face.mp4", root / "single_face.mp4")
    shutil.copy(sample_dir / "no_face.mp4", root / "no_face.mp4")
    shutil.copy(sample_dir / "single_face.jpg", root / "still.jpg")
    out = tmp_path_factory.mktemp("train_dataset")
    assert cli.main(["--quiet", "build", str(root), "--out", str(out), "build.au_fps=3"]) == 0
    assert cli.main(["--quiet", "features", "--config", "tiny_cpu", str(out), *FAST]) == 0
    cfg = cfglib.load("tiny_cpu", FAST)
    from emollm.modeling.factory import build_model_and_processor

    torch.manual_seed(0)
    model, processor = build_model_and_processor(cfg)
    return cfg, out, model, processor


def _dataset(setup, **kwargs):
    cfg, out, model, processor = setup
    cache = FeatureCache.from_config(cfg, out)
    return EmotionDataset(out, processor, cache, model.config.modalities, **kwargs)


def test_batch_runs_forward_backward(setup):
    cfg, out, model, processor = setup
    ds = _dataset(setup)
    assert len(ds) == 2 and ds.skipped["emotion: no target"] == 1  # no_face has no pseudo-label
    item = ds[[s["clip_id"] for s in ds.samples].index("single_face")]
    assert set(item["media"]) == {"video", "face", "temporal", "audio", "au"} and item["media_masks"]["au"].any()
    sampler = LengthGroupedBatchSampler(ds.lengths, batch_size=2, seed=cfg.run.seed)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler,
                                         collate_fn=EmotionCollator(processor, model.config.modalities))
    batch = next(iter(loader))
    assert batch["media"]["audio"].shape == (2, *ds[0]["media"]["audio"].shape)
    still = batch["ids"].index("still")
    assert not batch["media_present"]["audio"][still] and batch["media"]["audio"][still].abs().sum() == 0
    assert batch["media_present"]["face"].all()
    au, mask = batch["media"]["au"], batch["media_masks"]["au"]
    assert au.shape[:2] == mask.shape and mask.sum(1).min() >= 1
    model.train()
    loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                 media=batch["media"], media_present=batch["media_present"], media_masks=batch["media_masks"]).loss
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    grads = [p.grad for p in model.media.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


def test_label_wins_over_pseudo_label_and_instruction_files(setup, tmp_path):
    import json

    cfg, out, model, processor = setup
    records = [json.loads(x) for x in (out / "annotations.jsonl").read_text().splitlines()]
    ds_dir = tmp_path / "ds"
    shutil.copytree(out, ds_dir)
    for r in records:
        r["media"]["path"] = str((out / r["media"]["path"]).resolve())
        if r["id"] == "single_face":
            r["label"] = "sad"
    (ds_dir / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    cache = FeatureCache.from_config(cfglib.load("tiny_cpu", [*FAST, f"features.cache_dir={out / 'features'}"]), ds_dir)
    ds = EmotionDataset(ds_dir, processor, cache, model.config.modalities)
    assert {s["clip_id"]: s["target"] for s in ds.samples}["single_face"] == "sad"
    inst = tmp_path / "inst.jsonl"
    inst.write_text(json.dumps({"id": "still", "task": "emotion", "target": "happy", "label": "happy",
                                "messages": [{"role": "user", "content": "<face><au> How does she feel?"}]}) + "\n")
    ds2 = EmotionDataset(ds_dir, processor, cache, model.config.modalities, instructions=[inst])
    assert len(ds2) == 1 and ds2[0]["media_present"] == ["au", "face"]


def test_prediction_prompts_come_from_the_config_not_the_clip_ids(setup):
    from emollm.prompts import load_instruction_pool

    pool = load_instruction_pool("emotion")
    for index in (0, 1):
        asked = _dataset(setup, prompt_only=True, instruction=index).samples
        assert len(asked) == 3 and all(pool[index] in s["messages"][0]["content"] for s in asked)
        assert not any(pool[1 - index] in s["messages"][0]["content"] for s in asked)


def test_missing_cache_entry_names_clip_and_modality(setup, tmp_path):
    cfg, out, model, processor = setup
    cache_dir = tmp_path / "cache"
    shutil.copytree(out / "features", cache_dir)
    cache = FeatureCache(cache_dir)
    cache.bind_specs(model.config.modalities)
    cache.path("single_face", "face").unlink()
    with pytest.raises(FeatureMissingError) as err:
        EmotionDataset(out, processor, FeatureCache(cache_dir), model.config.modalities)
    assert "single_face" in err.value.message and "'face'" in err.value.message
    ds = EmotionDataset(out, processor, FeatureCache(cache_dir, on_missing="skip"), model.config.modalities)
    assert ds.skipped["face: not cached (trained without it)"] == 1


def test_feature_dim_mismatch_is_named_before_first_batch(setup):
    cfg, out, model, processor = setup
    specs = {k: dict(v) for k, v in model.config.modalities.items()}
    specs["audio"]["feature_dim"] += 1
    with pytest.raises(FeatureCacheError, match="modality 'audio'.*expects"):
        EmotionDataset(out, processor, FeatureCache.from_config(cfg, out), specs)


def test_length_grouped_batches_are_mostly_real_tokens():
    rng = random.Random(0)
    lengths = [rng.randint(30, 600) for _ in range(2000)]
    sampler = LengthGroupedBatchSampler(lengths, batch_size=8, seed=1)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(2000))
    assert sampler.real_token_fraction() >= 0.95
    random_batches = [list(range(k, k + 8)) for k in range(0, 2000, 8)]
    assert real_token_fraction(lengths, random_batches) < 0.8  # the check can fail
    assert list(sampler) == batches  # deterministic per epoch
    sampler.set_epoch(1)
    assert list(sampler) != batches
    shards = [LengthGroupedBatchSampler(lengths[:1001], batch_size=4, seed=3, num_replicas=2, rank=r) for r in (0, 1)]
    a, b = list(shards[0]), list(shards[1])
    assert len(a) == len(b) == len(shards[0]) == 126  # ceil(1001 / (4 * 2)) batches per rank
    drawn = [i for x in a + b for i in x]
    assert set(drawn) == set(range(1001)) and len(drawn) == 126 * 8
    # every sample once, except the 7 that wrap around to fill the last global batch
    assert len(drawn) - len(set(drawn)) == 126 * 8 - 1001
