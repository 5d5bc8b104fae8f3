"""A feature cache that checks what it serves: every entry carries its clip id, encoder, shape and a
checksum of its bytes; a damaged or foreign file is never served (training / predict refuse it,
naming the file) and `emollm features` recomputes it; NaN / inf features are never stored."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save

from emollm import config as cfglib
from emollm.cli import main as cli
from emollm.errors import FeatureCacheError, FeatureEntryError
from emollm.features import FeatureCache
from emollm.features.cache import tensor_checksum
from emollm.features.extract import extract_features
from emollm.modeling import encoders as enc_mod

FAST = ["media.num_frames=4"]  # as conftest's full_cache
WEIRD_ID = "sub dir/clip é 1"  # the talking face


def _cfg(cache: Path, *overrides: str):
    return cfglib.load("tiny_cpu", [f"features.cache_dir={cache}", *FAST, *overrides])


def _features(dataset: Path, cache: Path, *extra: str) -> int:
    return cli.main(["--quiet", "features", "--config", "tiny_cpu", str(dataset), f"features.cache_dir={cache}",
                     *FAST, *extra])  # fmt: skip


def _cache(full_cache: Path, dataset: Path, tmp_path: Path) -> FeatureCache:
    """A bound cache over a private copy of the full cache."""
    root = tmp_path / "cache"
    shutil.copytree(full_cache, root)
    cfg = _cfg(root)
    cache = FeatureCache.from_config(cfg, dataset)
    cache.bind_specs({n: {"kind": e.modality, "encoder": {"name_or_path": e.name_or_path, **e.options}}
                      for n, e in cfg.model.encoders.items()})  # fmt: skip
    return cache


def _rewrite(path: Path, tensor: torch.Tensor | None = None, *, checksum: bool = True, **meta: str) -> None:
    """Rewrite an entry as a buggy tool or a hand edit would (header and checksum consistent unless asked)."""
    with safe_open(str(path), framework="pt") as fh:
        metadata, stored = dict(fh.metadata()), fh.get_tensor("features")
    tensor = stored if tensor is None else tensor.to(stored.dtype)
    metadata.update(meta)
    metadata.pop("checksum", None)
    if checksum:
        metadata["checksum"] = tensor_checksum(tensor)
    path.write_bytes(save({"features": tensor}, metadata=metadata))


def _check(dataset: Path, cache: FeatureCache, *extra: str) -> int:
    return cli.main(["--quiet", "features", "--check", "--config", "tiny_cpu", str(dataset),
                     f"features.cache_dir={cache.root}", *FAST, *extra])  # fmt: skip


def test_entries_record_clip_encoder_shape_and_checksum(full_cache, dataset, tmp_path):
    cache = _cache(full_cache, dataset, tmp_path)
    meta = cache.info(WEIRD_ID, "face")
    with safe_open(str(cache.path(WEIRD_ID, "face")), framework="pt") as fh:
        stored = fh.get_tensor("features")
    assert meta["clip_id"] == WEIRD_ID and meta["modality"] == "face"
    assert meta["fingerprint"] == cache.fingerprints["face"]
    assert json.loads(meta["shape"]) == list(stored.shape) and meta["format"] == "2"
    assert meta["checksum"] == tensor_checksum(stored) and meta["checksum"].startswith("crc32:")
    entry = cache.check(WEIRD_ID, "face", verify=True)
    assert entry.state == "present" and not entry.unverified


def test_truncated_file_is_recomputed_on_rerun(full_cache, dataset, tmp_path, capsys):
    cache = _cache(full_cache, dataset, tmp_path)
    path = cache.path(WEIRD_ID, "face")
    original = cache.get(WEIRD_ID, "face")
    path.write_bytes(path.read_bytes()[:-40])  # a killed copy / full disk
    entry = cache.check(WEIRD_ID, "face")
    assert entry.state == "corrupt" and "unreadable feature file" in entry.reason and entry.file == str(path)
    assert cache.status(WEIRD_ID, "face") == "missing"
    with pytest.raises(FeatureEntryError, match="unreadable") as err:
        cache.get(WEIRD_ID, "face")
    assert str(path) in err.value.message and WEIRD_ID in err.value.message
    assert _features(dataset, cache.root) == 0
    out = capsys.readouterr().out
    assert "corrupt (recomputed) 1\n" in out
    assert torch.equal(cache.get(WEIRD_ID, "face"), original)


def test_nan_file_is_refused_by_training_and_predict_then_recomputed(full_cache, dataset, tmp_path, caplog):
    from emollm.inference import predict_dataset
    from emollm.modeling.factory import build_model_and_processor
    from emollm.training.data import EmotionDataset

    cache = _cache(full_cache, dataset, tmp_path)
    path = cache.path(WEIRD_ID, "face")
    good = cache.get(WEIRD_ID, "face")
    _rewrite(path, torch.full_like(good, float("nan")))  # consistent header and checksum: only the values are bad
    assert cache.status(WEIRD_ID, "face") == "present"  # header only: the values are checked when read
    entry = cache.check(WEIRD_ID, "face", verify=True)
    assert entry.state == "corrupt" and "NaN / inf" in entry.reason

    cfg = _cfg(cache.root)
    torch.manual_seed(0)
    model, processor = build_model_and_processor(cfg)
    ds = EmotionDataset(dataset, processor, FeatureCache.from_config(cfg, dataset), model.config.modalities)
    index = next(i for i, s in enumerate(ds.samples) if s["clip_id"] == WEIRD_ID)
    with pytest.raises(FeatureEntryError, match="NaN / inf") as err:
        ds[index]
    assert str(path) in err.value.message and "'face'" in err.value.message

    out = tmp_path / "preds.jsonl"
    with pytest.raises(FeatureEntryError, match="NaN / inf"):
        predict_dataset(cfg, model, processor, dataset, out, split=None)
    written = [json.loads(x)["id"] for x in out.read_text().splitlines()] if out.exists() else []
    assert WEIRD_ID not in written  # no answer made from NaN features

    # on_missing=skip: the sample goes without its face features, and the log names the file
    skip = FeatureCache.from_config(_cfg(cache.root, "features.on_missing=skip"), dataset)
    ds = EmotionDataset(dataset, processor, skip, model.config.modalities)
    logger = logging.getLogger("emollm")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="emollm"):
            item = ds[index]
    finally:
        logger.removeHandler(caplog.handler)
    assert "face" not in item["media"] and skip.missing == {"face": 1}
    assert any(str(path) in r.getMessage() and "NaN" in r.getMessage() for r in caplog.records)

    summary = extract_features(cfg, dataset)  # `emollm features` reads what it reuses: recomputed
    assert summary.entries_corrupt == 1 and summary.entries_computed == 1
    assert torch.equal(cache.get(WEIRD_ID, "face"), good)


def test_another_clips_file_copied_over_is_detected(full_cache, dataset, tmp_path, capsys):
    cache = _cache(full_cache, dataset, tmp_path)
    target = cache.path(WEIRD_ID, "video")
    shutil.copyfile(cache.path("no_face", "video"), target)  # same encoder, same shape: only the id tells
    entry = cache.check(WEIRD_ID, "video")
    assert entry.state == "corrupt" and "holds the features of clip 'no_face'" in entry.reason
    with pytest.raises(FeatureEntryError, match="clip 'no_face'"):
        cache.get(WEIRD_ID, "video")
    # another encoder's file (same clip) is refused too
    shutil.copyfile(cache.path(WEIRD_ID, "audio"), cache.path(WEIRD_ID, "temporal"))
    assert "holds 'audio' features, not 'temporal'" in cache.check(WEIRD_ID, "temporal").reason
    # and an absent mark copied from another clip (no_face has no face: an absent mark)
    shutil.copyfile(cache._absent_path("no_face", "face"), cache._absent_path("single_face", "face"))
    cache.path("single_face", "face").unlink()
    assert cache.check("single_face", "face").state == "corrupt"

    assert _check(dataset, cache) == 1
    out = capsys.readouterr().out
    assert "video: 1 corrupt" in out and "holds the features of clip 'no_face'" in out
    assert "temporal: 1 corrupt" in out and "face: 1 corrupt" in out
    assert _check(dataset, cache, "--prune") == 1 and not target.exists()
    capsys.readouterr()
    assert _features(dataset, cache.root) == 0
    assert cache.check(WEIRD_ID, "video", verify=True).state == "present"
    assert cache.check("single_face", "face", verify=True).state == "present"
    assert _check(dataset, cache) == 0


def test_flipped_byte_in_the_data_section_fails_the_checksum(full_cache, dataset, tmp_path, capsys):
    cache = _cache(full_cache, dataset, tmp_path)
    path = cache.path(WEIRD_ID, "audio")
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # the last bytes are tensor data; the value stays finite
    path.write_bytes(bytes(data))
    assert cache.status(WEIRD_ID, "audio") == "present"  # the header is intact
    with pytest.raises(FeatureEntryError, match="checksum mismatch") as err:
        cache.get(WEIRD_ID, "audio")
    assert str(path) in err.value.message
    assert _check(dataset, cache) == 1
    assert "audio: 1 corrupt" in capsys.readouterr().out
    summary = extract_features(_cfg(cache.root), dataset)
    assert summary.entries_corrupt == 1 and summary.entries_computed == 1
    assert cache.check(WEIRD_ID, "audio", verify=True).state == "present"


def test_entries_without_checksum_are_served_unverified(full_cache, dataset, tmp_path, capsys):
    cache = _cache(full_cache, dataset, tmp_path)
    path = cache.path(WEIRD_ID, "face")
    good = cache.get(WEIRD_ID, "face")
    _rewrite(path, checksum=False)  # as written before checksums existed
    entry = cache.check(WEIRD_ID, "face", verify=True)
    assert entry.state == "present" and entry.unverified
    assert torch.equal(cache.get(WEIRD_ID, "face"), good)
    assert _check(dataset, cache) == 0
    out = capsys.readouterr().out
    assert "face: 1 unverified" in out and f"  {WEIRD_ID}\n" in out
    _rewrite(path, torch.full_like(good, float("inf")), checksum=False)  # values are still checked
    with pytest.raises(FeatureEntryError, match="NaN / inf"):
        cache.get(WEIRD_ID, "face")


def test_nan_features_are_refused_at_save(full_cache, dataset, tmp_path, monkeypatch):
    cache = _cache(full_cache, dataset, tmp_path)
    bad = torch.zeros(4, 8)
    bad[1, 2] = float("nan")
    with pytest.raises(FeatureCacheError, match="1 of 32 feature values are NaN / inf: not cached"):
        cache.put("x", "face", bad, record={"id": "x", "media": {"path": "x.mp4", "kind": "video"}})
    assert not cache.path("x", "face").exists()
    with pytest.raises(FeatureCacheError, match="once stored as float16") as err:  # overflow, not the encoder's
        cache.put("x", "face", torch.full((4, 8), 1e6), record={"id": "x", "media": {"path": "x.mp4", "kind": "video"}})
    assert "features.dtype=float32" in err.value.hint

    # an encoder that returns NaN: its clips are errors (with the reason), the others are cached
    original = enc_mod.FrozenEncoder.extract_batch

    def nan_faces(self, items, batch_size=8):
        out = original(self, items, batch_size)
        return [torch.full_like(t, float("nan")) for t in out] if self.kind == "face" else out

    monkeypatch.setattr(enc_mod.FrozenEncoder, "extract_batch", nan_faces)
    root = tmp_path / "fresh"
    assert _features(dataset, root) == 2
    errors = [json.loads(x) for x in (root / "errors.jsonl").read_text().splitlines()]
    assert sorted(e["id"] for e in errors) == sorted([WEIRD_ID, "single_face"])
    assert all(e["stage"] == "encoder face" and "NaN / inf" in e["reason"] for e in errors)
    assert not list(root.glob("face/*/*.safetensors"))
    assert list(root.glob("video/*/*.safetensors"))  # the other encoders' entries are kept
