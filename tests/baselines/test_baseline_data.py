"""Baseline data: built dataset + feature cache -> pooled vectors, presence masks and targets; the
class-aware (P x K) batch sampler; the `baseline` config section."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import pytest
import torch

from emollm import config as cfglib
from emollm.baselines.data import ClassAwareBatchSampler, load_split, modality_infos, shuffled_batches
from emollm.dataset.label_sets import load_label_set
from emollm.errors import ConfigError, EmollmError, FeatureMissingError
from emollm.features.cache import FeatureCache, safe_name


def _cfg(ds, *overrides):
    return cfglib.load(ds.config, list(overrides))


def test_pooled_features_presence_and_labels(synthetic_dataset):
    ds = synthetic_dataset
    data = load_split(_cfg(ds), ds.root, "train")
    train_records = [r for r in ds.records if r["split"] == "train"]
    assert data.batch.ids == [r["id"] for r in train_records] and len(data) == 300
    assert data.feature_dims == {"text": 24, "audio": 32}  # from the checkpoints' configs
    assert data.labels == load_label_set("meld").labels and len(data.labels) == 7
    assert [data.labels[i] for i in data.batch.labels.tolist()] == [r["label"] for r in train_records]
    # every 10th clip has no subtitle: zeros and present False
    no_text = [i for i, r in enumerate(train_records) if r["subtitle"] is None]
    assert no_text and (~data.batch.present["text"]).nonzero().flatten().tolist() == no_text
    assert torch.equal(data.batch.features["text"][no_text], torch.zeros(len(no_text), 24))
    assert data.batch.present["audio"].all()
    # audio was stored as two rows v +- 0.5: the pooled vector is their mean
    cache = FeatureCache(ds.root / "features")
    cfg = _cfg(ds)
    cache.bind("audio", "audio", cfg.model.encoders["audio"].name_or_path)
    rows = cache.get(train_records[1]["id"], "audio")
    assert rows.shape == (2, 32)
    torch.testing.assert_close(data.batch.features["audio"][1], rows.mean(dim=0))
    fps = {name: info.fingerprint for name, info in data.modalities.items()}
    assert all(fp and len(fp) == 64 for fp in fps.values())


def test_modalities_targets_and_skips(synthetic_dataset, tmp_path):
    ds = synthetic_dataset
    only_audio = load_split(_cfg(ds, "baseline.modalities=[audio]"), ds.root, "test")
    assert list(only_audio.batch.features) == ["audio"] and len(only_audio) == 100
    regression = load_split(_cfg(ds, "baseline.task=regression", "baseline.target_field=sentiment"), ds.root, "test")
    assert regression.batch.labels.dtype == torch.float32 and regression.labels == ()
    expected = [r["sentiment"] for r in ds.records if r["split"] == "test"]
    assert regression.batch.labels.tolist() == pytest.approx(expected, abs=1e-6)

    # records without a label fall back on the pseudo-label; without either they are skipped (counted)
    copy = tmp_path / "ds"
    shutil.copytree(ds.root, copy)
    records = [dict(r) for r in ds.records]
    records[0]["label"] = None  # pseudo_label 'neutral'
    records[1]["label"], records[1]["pseudo_label"] = None, None
    records[2]["label"] = "happy"  # a synonym: MELD's 'joy'
    (copy / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    data = load_split(_cfg(ds), copy, "train")
    assert len(data) == 299 and data.skipped == Counter({"no label or pseudo-label": 1})
    assert data.labels[int(data.batch.labels[0])] == "neutral" and data.labels[int(data.batch.labels[1])] == "joy"
    # which reference each target is: record 0's is the builder's pseudo-label, the others people's labels
    assert data.sources == ("pseudo_label",) + ("label",) * 298
    assert data.references[:2] == ("neutral", "happy")  # as the records give them (gt of the prediction rows)
    human = load_split(_cfg(ds), copy, "train", policy="label")  # evaluate.reference_source=label: human only
    assert len(human) == 298 and human.sources == ("label",) * 298
    assert human.skipped == Counter({"no reference label (evaluate.reference_source=label)": 2})
    pseudo = load_split(_cfg(ds), copy, "train", policy="pseudo_label")  # every record but #1 has a pseudo-label
    assert len(pseudo) == 299 and set(pseudo.sources) == {"pseudo_label"}
    assert {pseudo.labels[i] for i in pseudo.batch.labels.tolist()} == {"neutral"}
    assert load_split(_cfg(ds), copy, "train", targets=False).batch.labels is None  # prediction: every record
    records[3]["label"] = "bored"
    (copy / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    with pytest.raises(EmollmError, match="clip 003.*'bored'.*meld"):
        load_split(_cfg(ds), copy, "train")
    with pytest.raises(EmollmError, match="no record in split 'dev'.*test, train"):
        load_split(_cfg(ds), copy, "dev")


def test_missing_cache_entry_names_clip_and_modality(synthetic_dataset, tmp_path):
    ds = synthetic_dataset
    copy = tmp_path / "ds"
    shutil.copytree(ds.root, copy)
    victim = ds.records[5]["id"]
    for path in (copy / "features" / "audio").glob(f"*/{safe_name(victim)}.safetensors"):
        path.unlink()
    with pytest.raises(FeatureMissingError) as err:
        load_split(_cfg(ds), copy, "train")
    assert err.value.clip_id == victim and err.value.modality == "audio" and "emollm features" in err.value.hint
    data = load_split(_cfg(ds, "features.on_missing=skip"), copy, "train")  # treated as absent, counted
    assert not data.batch.present["audio"][5] and data.skipped["audio: not cached (read as absent)"] == 1


def test_another_encoder_finds_no_cache(synthetic_dataset, tmp_path):
    ds = synthetic_dataset
    other = tmp_path / "hubert"
    shutil.copytree(ds.audio_ckpt, other)
    config = json.loads((other / "config.json").read_text())
    config["layer_norm_eps"] = 1e-6  # another checkpoint: another fingerprint, never the stale features
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(FeatureMissingError, match="'audio'"):
        load_split(_cfg(ds, f"model.encoders.audio.name_or_path={other}"), ds.root, "train")


def test_au_modality_is_the_mean_over_face_frames(synthetic_dataset, tmp_path):
    from data_builders.au import AUSeries, save_aus
    from emollm.dataset.aus import MERR_AUS

    ds = synthetic_dataset
    copy = tmp_path / "ds"
    shutil.copytree(ds.root, copy)
    records = [dict(r) for r in ds.records]
    k = len(MERR_AUS)
    intensity = np.arange(3 * k, dtype=np.float32).reshape(3, k) / 10
    presence = (intensity > 1).astype(np.float32)
    face = np.array([True, False, True])
    series = AUSeries(intensity=intensity, presence=presence, frame_indices=np.arange(3), timestamps_s=np.arange(3.0),
                      face=face, source="builtin")
    save_aus(series, copy / "aus" / "c0.npz")
    records[0]["aus_file"] = "aus/c0.npz"
    (copy / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    cfg = cfglib.load(ds.config, ["model.encoders.au={}", "baseline.modalities=[text,au]"])
    assert modality_infos(cfg)["au"].feature_dim == 2 * k
    data = load_split(cfg, copy, "train")
    expected = np.concatenate([intensity, presence], axis=1)[face].mean(axis=0)
    np.testing.assert_allclose(data.batch.features["au"][0].numpy(), expected, rtol=1e-6)
    assert data.batch.present["au"].tolist() == [True] + [False] * 299  # no side file: absent


# ------------------------------------------------------------------------------------------ batches
def test_class_aware_sampler_gives_p_classes_of_k():
    labels = [0] * 10 + [1] * 6 + [2] * 3 + [3] * 1  # classes 2, 3 have fewer than K: drawn with replacement
    sampler = ClassAwareBatchSampler(labels, classes_per_batch=3, samples_per_class=4, seed=7)
    assert len(sampler) == 2  # ceil(20 / 12)
    sampler.set_epoch(0)
    first = list(sampler)
    assert first == list(sampler)  # deterministic per epoch
    for batch in first:
        classes = Counter(labels[i] for i in batch)
        assert len(batch) == 12 and len(classes) == 3 and set(classes.values()) == {4}
        for c in classes:
            members = [i for i in batch if labels[i] == c]
            # without replacement when the class has K members or more; else drawn from its few members
            assert len(set(members)) == 4 if labels.count(c) >= 4 else set(members) <= {
                i for i, label in enumerate(labels) if label == c}
    rare = [[i for i in batch if labels[i] == 3] for batch in first]
    assert [19, 19, 19, 19] in rare  # the one-member class: its only clip four times
    sampler.set_epoch(1)
    assert list(sampler) != first
    assert ClassAwareBatchSampler([0, 1], 5, 2).p == 2  # capped at the classes present
    with pytest.raises(ConfigError):
        ClassAwareBatchSampler(labels, 0, 4)


def test_shuffled_batches_cover_every_sample_once():
    batches = shuffled_batches(10, 4, seed=1, epoch=0)
    assert [len(b) for b in batches] == [4, 4, 2] and sorted(i for b in batches for i in b) == list(range(10))
    assert batches == shuffled_batches(10, 4, seed=1, epoch=0) != shuffled_batches(10, 4, seed=1, epoch=1)


# ------------------------------------------------------------------------------------------ config
def test_baseline_config_section():
    cfg = cfglib.load(None, ["baseline.method=telme", "baseline.epochs={teacher: 2, students: 3, fusion: 1}",
                             "baseline.options={hidden_size: 64}"])
    assert cfg.baseline.method == "telme" and cfg.baseline.epochs == {"teacher": 2, "students": 3, "fusion": 1}
    assert cfg.baseline.options == {"hidden_size": 64}
    with pytest.raises(ConfigError, match="unknown config key 'baseline.lrr'") as err:
        cfglib.load(None, ["baseline.lrr=1"])
    assert "baseline.lr" in err.value.hint
    with pytest.raises(ConfigError, match="target_field"):
        cfglib.load(None, ["baseline.task=regression"])
    with pytest.raises(ConfigError, match="epochs"):
        cfglib.load(None, ["baseline.epochs=0"])
    with pytest.raises(ConfigError, match="'nope' is not an encoder"):
        cfglib.load(None, ["baseline.modalities=[nope]"])
    with pytest.raises(ConfigError, match="baseline.task"):
        cfglib.load(None, ["baseline.task=ranking"])


def test_an_eval_split_without_targets_trains_without_eval_metrics(synthetic_dataset, tmp_path):
    from emollm.baselines.train import train_baseline

    ds = synthetic_dataset
    copy = tmp_path / "ds"
    shutil.copytree(ds.root, copy)
    records = [dict(r) for r in ds.records]
    for r in records:
        if r["split"] == "test":
            r["label"] = r["pseudo_label"] = None
    (copy / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    assert len(load_split(_cfg(ds), copy, "test", require_any=False)) == 0
    with pytest.raises(EmollmError, match="no record with a training target"):
        load_split(_cfg(ds), copy, "test")
    result = train_baseline(_cfg(ds, "baseline.epochs=1", f"run.output_dir={tmp_path / 'run'}"), copy)
    assert result.epochs == 1 and result.eval_metrics is None
    assert not (tmp_path / "run" / "eval_metrics.json").exists() and (tmp_path / "run" / "model.safetensors").is_file()
