"""A feature cache that cannot go stale: every input that changes a feature is in its entry's key.

Each test changes one input (a media or face setting, the peak frame, the clip file, the dtype, the
encoder) and counts which encoders run again: exactly the entries made from that input are
recomputed, the others are reused. `emollm features --check` reports fresh / stale / orphaned /
missing entries with its exit code.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch

from emollm import config as cfglib
from emollm.cli import main as cli
from emollm.errors import FeatureMissingError
from emollm.features import FeatureCache
from emollm.features.check import check_cache
from emollm.features.extract import extract_features
from emollm.modeling import encoders as enc_mod

FAST = ["media.num_frames=4"]  # as conftest's full_cache
WEIRD_ID = "sub dir/clip é 1"  # the talking face (single_face.mp4)
ENCODER_OF_KIND = {"visual": "video", "face": "face", "video": "temporal", "audio": "audio"}  # tiny_cpu's names


@pytest.fixture
def encoder_runs(monkeypatch):
    """{encoder name: clips it computed} while the test runs."""
    runs: Counter[str] = Counter()
    original = enc_mod.FrozenEncoder.extract_batch

    def counting(self, items, batch_size=8):
        runs[ENCODER_OF_KIND[self.kind]] += len(items)
        return original(self, items, batch_size)

    monkeypatch.setattr(enc_mod.FrozenEncoder, "extract_batch", counting)
    return runs


def _cfg(cache: Path, *overrides: str):
    return cfglib.load("tiny_cpu", [f"features.cache_dir={cache}", *FAST, *overrides])


def _copy_cache(full_cache: Path, tmp_path: Path) -> Path:
    cache = tmp_path / "cache"
    shutil.copytree(full_cache, cache)
    return cache


def _records(dataset: Path) -> list[dict]:
    return [json.loads(line) for line in (dataset / "annotations.jsonl").read_text(encoding="utf-8").splitlines()]


def _dataset_copy(dataset: Path, root: Path, records: list[dict]) -> Path:
    """A dataset folder holding these records (media paths made absolute unless already)."""
    out = root / "ds"
    shutil.copytree(dataset, out, symlinks=True, ignore=shutil.ignore_patterns("features"))
    for r in records:
        if not os.path.isabs(r["media"]["path"]):
            r["media"]["path"] = str((dataset / r["media"]["path"]).resolve())
    (out / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return out


def _specs(cfg) -> dict:
    return {n: {"kind": e.modality, "encoder": {"name_or_path": e.name_or_path, **e.options}}
            for n, e in cfg.model.encoders.items()}  # fmt: skip


# Clips: the talking face (peak frame known), no_face.mp4 (no face: face entries are absent marks; no
# peak: a `frames: peak` encoder reads the middle sampled frame), a still (no audio, no frame sampling).
# Each case: the overrides, how many clips each encoder computes again, what the stale entries say.
CASES = {
    # frame sampling: the face crops of both videos; the peak-frame encoder only where there is no peak
    "num_frames": (["media.num_frames=5"], {"video": 1, "face": 1, "temporal": 1}, "media.num_frames 4 -> 5"),
    "fps": (["media.num_frames=null", "media.fps=2"], {"video": 1, "face": 1, "temporal": 1}, "media.fps"),
    # the face crops of every clip (the still's too), nothing else
    "crop_size": (["media.face.crop_size=112"], {"face": 2, "temporal": 2}, "media.face.crop_size 224 -> 112"),
    "detector": (["media.face.detector=dlib_hog"], {"face": 2, "temporal": 2},
                 'media.face.detector "mtcnn" -> "dlib_hog"'),
    # the face is tracked over the AU frames too: the videos' crops
    "au_fps": (["build.au_fps=2"], {"face": 1, "temporal": 1}, "build.au_fps 5.0 -> 2.0"),
    # decode size: every crop, the still's and no_face's frame; the peak frame is read at media.max_side
    "frame_max_side": (["build.frame_max_side=320"], {"video": 2, "face": 2, "temporal": 2},
                       "frames.max_side 640 -> 320 (build.frame_max_side / media.max_side)"),
    "sample_rate": (["media.sample_rate=8000"], {"audio": 2}, "media.sample_rate 16000 -> 8000"),
    # storage dtype: every stored tensor (the absent marks hold none)
    "dtype": (["features.dtype=float32"], {"video": 3, "face": 2, "temporal": 2, "audio": 2},
              "features.dtype float16 -> float32"),
    # the encoder's own options: another fingerprint, another folder (missing there, not stale)
    "encoder": (["model.encoders.face.options.tokens=cls"], {"face": 2}, None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_input_change_recomputes_exactly_what_it_feeds(case, full_cache, dataset, tmp_path, encoder_runs):
    overrides, expected, reason = CASES[case]
    cache_dir = _copy_cache(full_cache, tmp_path)
    cfg = _cfg(cache_dir, *overrides)
    before = check_cache(cfg, dataset)
    assert not before.ok
    summary = extract_features(cfg, dataset)
    assert dict(encoder_runs) == expected
    assert summary.failed == 0 and summary.clips_decoded >= 1
    stale = [(e.modality, clip, why) for e in before.encoders for clip, why in e.stale]
    if reason is None:
        assert summary.entries_stale == 0 == len(stale)
    else:  # the stale entries the check reported are the ones recomputed, with the input that changed
        assert summary.entries_stale == len(stale) > 0
        assert all(reason in why for _, _, why in stale), stale
    after = check_cache(cfg, dataset)
    assert after.ok and sum(e.fresh for e in after.encoders) == 3 * 4
    # the entries were replaced: the previous config now finds them stale (an encoder change: another folder)
    assert reason is None or not check_cache(_cfg(cache_dir), dataset).ok


def test_unchanged_inputs_are_reused_and_a_touched_clip_is_not_recomputed(full_cache, dataset, tmp_path, encoder_runs):
    records = _records(dataset)
    for r in records:  # every clip file copied (new mtime, same bytes)
        src = dataset / r["media"]["path"]
        dst = tmp_path / "clips" / Path(r["media"]["path"]).name
        dst.parent.mkdir(exist_ok=True)
        shutil.copy(src, dst)
        os.utime(dst, ns=(1, 1))
        r["media"]["path"] = str(dst)
    ds = _dataset_copy(dataset, tmp_path, records)
    cache_dir = _copy_cache(full_cache, tmp_path)
    summary = extract_features(_cfg(cache_dir), ds)
    assert dict(encoder_runs) == {} and summary.clips_decoded == 0 and summary.entries_reused == 3 * 4


def test_changed_peak_frame_recomputes_the_peak_frame_encoder_only(full_cache, dataset, tmp_path, encoder_runs):
    records = _records(dataset)
    weird = next(r for r in records if r["id"] == WEIRD_ID)
    old_peak = weird["peak_frame"]["index"]
    weird["peak_frame"]["index"] = 0 if old_peak else 5  # the builder rerun with other settings picked another
    ds = _dataset_copy(dataset, tmp_path, records)
    cache_dir = _copy_cache(full_cache, tmp_path)
    cfg = _cfg(cache_dir)
    old = FeatureCache.from_config(cfg, dataset)
    old.bind_specs(_specs(cfg))
    old_features = old.get(WEIRD_ID, "video")
    stale = {e.modality: e.stale for e in check_cache(cfg, ds).encoders if e.stale}
    new_peak = weird["peak_frame"]["index"]
    assert stale == {"video": [(WEIRD_ID, f"peak.index {old_peak} -> {new_peak} (the record's peak_frame.index)")]}
    summary = extract_features(cfg, ds)
    assert dict(encoder_runs) == {"video": 1} and summary.entries_stale == 1
    new = FeatureCache.from_config(cfg, ds)
    new.bind_specs(_specs(cfg))
    assert not torch.allclose(new.get(WEIRD_ID, "video"), old_features, atol=1e-2)


def test_changed_clip_file_recomputes_that_clip(full_cache, dataset, sample_dir, tmp_path, encoder_runs):
    records = _records(dataset)
    weird = next(r for r in records if r["id"] == WEIRD_ID)
    clip = tmp_path / "clip.mp4"
    shutil.copy(dataset / weird["media"]["path"], clip)
    weird["media"]["path"] = str(clip)
    ds = _dataset_copy(dataset, tmp_path, records)
    cache_dir = _copy_cache(full_cache, tmp_path)
    cfg = _cfg(cache_dir)
    assert check_cache(cfg, ds).ok  # a copy of the same bytes: fresh

    # same size, other bytes (a re-encode that kept the size, a bit flip): stale by content
    data = bytearray(clip.read_bytes())
    data[len(data) // 2] ^= 0xFF
    clip.write_bytes(bytes(data))
    os.utime(clip, ns=(2, 2))  # a modified file has another mtime (whatever the file system's time resolution)
    report = check_cache(cfg, ds)
    assert {e.modality: e.stale for e in report.encoders if e.stale} == {
        name: [(WEIRD_ID, "clip file contents changed")] for name in ("video", "face", "temporal", "audio")}

    # another video under the same name (no face in it): every entry of that clip, nothing else
    shutil.copy(sample_dir / "no_face.mp4", clip)
    summary = extract_features(cfg, ds)
    assert summary.entries_stale == 4 and summary.failed == 0
    assert dict(encoder_runs) == {"video": 1, "audio": 1}  # no face in the new video: face entries absent
    cache = FeatureCache.from_config(cfg, ds)
    cache.bind_specs(_specs(cfg))
    assert cache.status(WEIRD_ID, "face") == "absent" and not cache.path(WEIRD_ID, "face").exists()
    assert check_cache(cfg, ds).ok


def test_a_stale_entry_is_never_served_to_training(full_cache, dataset, tmp_path):
    cfg = _cfg(full_cache, "media.num_frames=5")
    cache = FeatureCache.from_config(cfg, dataset)
    cache.bind_specs(_specs(cfg))
    assert cache.status(WEIRD_ID, "face") == "missing" and cache.status(WEIRD_ID, "audio") == "present"
    with pytest.raises(FeatureMissingError) as err:
        cache.get(WEIRD_ID, "face")
    assert "stale" in err.value.message and "media.num_frames 4 -> 5" in err.value.message
    assert cache.get(WEIRD_ID, "audio") is not None  # audio does not depend on frame sampling
    skip = FeatureCache.from_config(_cfg(full_cache, "media.num_frames=5", "features.on_missing=skip"), dataset)
    skip.bind_specs(_specs(cfg))
    assert skip.get(WEIRD_ID, "face") is None and skip.missing == {"face": 1}


def test_old_format_entries_are_stale_with_one_log_line(full_cache, dataset, tmp_path, encoder_runs, caplog):
    from safetensors.torch import load_file, save_file

    cache_dir = _copy_cache(full_cache, tmp_path)
    cfg = _cfg(cache_dir)
    cache = FeatureCache.from_config(cfg, dataset)
    cache.bind_specs(_specs(cfg))
    for clip_id in (WEIRD_ID, "single_face"):  # entries written before input keys: no "inputs"
        path = cache.path(clip_id, "face")
        meta = dict(cache.info(clip_id, "face"))
        del meta["inputs"]
        save_file(load_file(str(path)), str(path), metadata=meta)
    absent = cache._absent_path("no_face", "face")
    mark = json.loads(absent.read_text())
    del mark["inputs"]
    absent.write_text(json.dumps(mark))
    logger = logging.getLogger("emollm")  # the CLI's logging setup (other tests) stops propagation
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="emollm"):
            summary = extract_features(cfg, dataset)
    finally:
        logger.removeHandler(caplog.handler)
    assert summary.entries_stale == 3 and dict(encoder_runs) == {"face": 2}
    lines = [r.getMessage() for r in caplog.records if "without an input key" in r.getMessage()]
    assert len(lines) == 1 and "'face'" in lines[0]
    assert check_cache(cfg, dataset).ok


def _check(dataset: Path, cache: Path, *extra: str) -> int:
    return cli.main(["--quiet", "features", "--check", "--config", "tiny_cpu", str(dataset),
                     f"features.cache_dir={cache}", *FAST, *extra])  # fmt: skip


def test_check_on_a_fresh_and_a_stale_cache(full_cache, dataset, capsys):
    assert _check(dataset, full_cache) == 0
    out = capsys.readouterr().out
    assert "all entries fresh" in out
    rows = {line.split()[0]: line.split()[3:] for line in out.splitlines()[2:6]}
    # fresh, absent, stale, corrupt, orphaned, missing
    assert rows == {"video": ["3", "0", "0", "0", "0", "0"], "face": ["3", "1", "0", "0", "0", "0"],
                    "temporal": ["3", "1", "0", "0", "0", "0"], "audio": ["3", "1", "0", "0", "0", "0"]}  # fmt: skip

    assert _check(dataset, full_cache, "media.face.crop_size=112") == 1
    out = capsys.readouterr().out
    assert "face: 3 stale" in out and "temporal: 3 stale" in out
    assert f"  {WEIRD_ID}: media.face.crop_size 224 -> 112\n" in out
    assert "video:" not in out and "audio:" not in out  # their entries stay fresh
    assert "not all fresh" in out and "--prune" in out


def test_check_reports_orphaned_and_missing_entries_and_prunes(full_cache, dataset, sample_dir, tmp_path, capsys):
    records = _records(dataset)
    no_face = next(r for r in records if r["id"] == "no_face")
    clip = tmp_path / "no_face.mp4"
    shutil.copy(sample_dir / "no_face.mp4", clip)
    no_face["media"]["path"] = str(clip)
    kept = [r for r in records if r["id"] != "single_face"]  # the still's record removed
    ds = _dataset_copy(dataset, tmp_path, kept)
    cache_dir = _copy_cache(full_cache, tmp_path)
    cfg = _cfg(cache_dir)
    assert extract_features(cfg, ds).entries_computed == 0  # the copied clip has the same bytes: fresh
    assert _check(ds, cache_dir) == 1
    out = capsys.readouterr().out
    assert "video: 1 orphaned" in out and "single_face: no record" in out

    clip.unlink()  # the clip file is gone: its entries can no longer be checked
    cache = FeatureCache.from_config(cfg, ds)
    cache.bind_specs(_specs(cfg))
    cache.path(WEIRD_ID, "audio").unlink()  # and one entry is missing
    assert _check(ds, cache_dir) == 1
    out = capsys.readouterr().out
    assert "audio: 2 orphaned" in out and "no_face: no clip file" in out and "audio: 1 missing" in out
    report = check_cache(cfg, ds)
    assert [(e.modality, e.fresh, len(e.orphaned), len(e.missing)) for e in report.encoders] == [
        ("video", 1, 2, 0), ("face", 1, 2, 0), ("temporal", 1, 2, 0), ("audio", 0, 2, 1)]

    assert cli.main(["--quiet", "features", "--prune", "--config", "tiny_cpu", str(ds)]) == 2  # --prune needs --check
    assert _check(ds, cache_dir, "--prune") == 1
    assert "pruned: 8" in capsys.readouterr().out
    assert cache.status("no_face", "video") == "missing" and not list(cache_dir.rglob("single_face*"))
    assert cache.status(WEIRD_ID, "video") == "present"  # fresh entries are kept
