"""Emotion-LLaMA's pre-extracted .npy features: the `precomputed` encoder kind and the import into the
feature cache (emollm.features.imported). Fast: a hand-written three-clip dataset whose clip files do
not exist (imported features never read them), tiny 8-d features written here."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from emollm import config as cfglib
from emollm.errors import EmollmError, FeatureMissingError
from emollm.features.cache import FeatureCache
from emollm.features.check import check_cache
from emollm.features.extract import extract_features
from emollm.features.imported import import_precomputed_features
from emollm.modeling.encoders import build_encoder
from emollm.modeling.factory import modality_specs

D = 8
CLIPS = ("c1", "c2", "c3")
# entry name -> (source tag, folder): Emotion-LLaMA's three folders
SOURCES = {"face": ("emotion-llama/mae_340_UTT", "mae_340_UTT"),
           "temporal": ("emotion-llama/maeV_399_UTT", "maeV_399_UTT"),
           "audio": ("emotion-llama/HL-UTT", "HL-UTT")}  # fmt: skip


def _record(clip_id: str) -> dict:
    return {"schema_version": 1, "id": clip_id, "media": {"path": f"clips/{clip_id}.mp4", "kind": "video"},
            "au_source": "none", "pseudo_label": None, "label": "happy", "subtitle": "It went well.",
            "split": "train", "provenance": {}, "review": {"state": "accepted", "by": "test", "note": None}}


def _dataset(root: Path, ids=CLIPS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "annotations.jsonl").write_text("".join(json.dumps(_record(i)) + "\n" for i in ids), encoding="utf-8")
    return root


def _config(tmp: Path, backbone: str = "unused/backbone", **extra: str) -> Path:
    encoders = "\n".join(
        f"    {name}:\n      modality: precomputed\n      name_or_path: {tag}\n"
        + (f"      options: {{folder: {folder}}}\n" if name == "face" else "")  # the others: the tag's last part
        + f"      feature_dim: {D}\n      num_input_tokens: 1"
        for name, (tag, folder) in SOURCES.items())
    text = (f"model:\n  backbone:\n    name_or_path: {backbone}\n    torch_dtype: float32\n  encoders:\n{encoders}\n"
            f"features:\n  dtype: float32\n  cache_dir: {tmp / 'cache'}\n")
    path = tmp / "precomputed.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _features(seed: int, clip_id: str, name: str) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(f"{seed}/{clip_id}/{name}".encode()))
    return rng.standard_normal(D).astype(np.float32)


def _write_sources(root: Path, ids=CLIPS, seed: int = 0) -> dict[tuple[str, str], np.ndarray]:
    """One .npy per clip and entry, as Emotion-LLaMA saves them: (D,) for face / audio, (1, D) for temporal."""
    out = {}
    for name, (_, folder) in SOURCES.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for clip_id in ids:
            x = _features(seed, clip_id, name)
            np.save(root / folder / f"{clip_id}.npy", x[None] if name == "temporal" else x)
            out[(clip_id, name)] = x
    return out


@pytest.fixture
def setup(tmp_path):
    dataset = _dataset(tmp_path / "dataset")
    source = tmp_path / "emotion_llama_features"
    values = _write_sources(source)
    cfg = cfglib.load(_config(tmp_path))
    return SimpleNamespace(tmp=tmp_path, dataset=dataset, source=source, values=values, cfg=cfg)


def _lookup_cache(cfg, dataset) -> FeatureCache:
    cache = FeatureCache.from_config(cfg, dataset)
    cache.bind_specs(modality_specs(cfg.model))
    return cache


def test_imported_features_are_served_exactly_by_lookups_without_any_clip_file(setup):
    summary = import_precomputed_features(setup.cfg, setup.dataset, setup.source)
    assert summary.ok and summary.problems == []
    assert {n: (c.imported, c.reused, c.missing, c.bad) for n, c in summary.counts.items()} == \
        {n: (3, 0, 0, 0) for n in SOURCES}
    cache = _lookup_cache(setup.cfg, setup.dataset)
    for clip_id in CLIPS:
        for name in SOURCES:  # (D,) and (1, D) files both give one (1, D) token, the same numbers
            got = cache.get(clip_id, name)
            assert got.shape == (1, D) and torch.equal(got, torch.from_numpy(setup.values[(clip_id, name)])[None])
    # the clip files do not exist: imported entries do not depend on them (fresh, not orphaned, not stale)
    report = check_cache(setup.cfg, setup.dataset)
    assert report.ok and all(e.fresh == 3 and not e.orphaned for e in report.encoders), report.text()
    # the entry records where it came from
    meta = json.loads(cache.info("c1", "face")["inputs"])
    assert meta["settings"] == {"precomputed.source": "emotion-llama/mae_340_UTT"}
    assert meta["imported"]["file"] == "mae_340_UTT/c1.npy" and len(meta["imported"]["sha256"]) == 64


def test_the_training_dataset_reads_the_imported_numbers(setup):
    from emollm.modeling.factory import build_model_and_processor
    from emollm.testing.tiny import build_tiny_models
    from emollm.training.data import EmotionDataset

    import_precomputed_features(setup.cfg, setup.dataset, setup.source)
    backbone = build_tiny_models(names=["llama2"])["llama2"]
    cfg = cfglib.load(_config(setup.tmp, backbone=str(backbone)))
    model, processor = build_model_and_processor(cfg)
    ds = EmotionDataset(setup.dataset, processor, FeatureCache.from_config(cfg, setup.dataset),
                        model.config.modalities)
    assert len(ds) == 3 and not ds.skipped
    for item in ds:
        for name in SOURCES:
            assert torch.equal(item["media"][name], torch.from_numpy(setup.values[(item["id"], name)])[None])


def test_bad_and_missing_files_are_reported_per_clip_and_the_others_import(setup):
    src = setup.source
    np.save(src / "mae_340_UTT" / "c2.npy", np.zeros(D - 1, np.float32))  # wrong width
    nan = np.ones(D, np.float32)
    nan[3] = np.nan
    np.save(src / "mae_340_UTT" / "c3.npy", nan)
    np.save(src / "maeV_399_UTT" / "c1.npy", np.zeros((2, D), np.float32))  # two tokens, the entry says one
    np.save(src / "HL-UTT" / "c2.npy", np.array([{"features": [0.0] * D}], dtype=object), allow_pickle=True)
    (src / "HL-UTT" / "c3.npy").unlink()
    np.save(src / "maeV_399_UTT" / "c3.npy", np.arange(D, dtype=np.int64))  # integers: not features

    summary = import_precomputed_features(setup.cfg, setup.dataset, setup.source)
    problems = {(p.clip_id, p.modality): (p.kind, p.reason) for p in summary.problems}
    assert set(problems) == {("c2", "face"), ("c3", "face"), ("c1", "temporal"), ("c3", "temporal"),
                             ("c2", "audio"), ("c3", "audio")}
    assert problems[("c2", "face")][0] == "bad" and "width 7" in problems[("c2", "face")][1]
    assert "NaN" in problems[("c3", "face")][1]
    assert "2 token(s)" in problems[("c1", "temporal")][1]
    assert "not floating point" in problems[("c3", "temporal")][1]
    assert "pickled" in problems[("c2", "audio")][1]
    assert problems[("c3", "audio")] == ("missing", "no file HL-UTT/c3.npy")
    assert {n: (c.imported, c.missing, c.bad) for n, c in summary.counts.items()} == \
        {"face": (1, 0, 2), "temporal": (1, 0, 2), "audio": (1, 1, 1)}
    # the same problems, one JSON line each, in the cache
    lines = [json.loads(line) for line in (setup.tmp / "cache" / "import_errors.jsonl").read_text().splitlines()]
    assert {(x["clip_id"], x["modality"], x["kind"]) for x in lines} == {(c, m, k) for (c, m), (k, _) in problems.items()}
    assert "c3" in summary.table() and "HL-UTT/c3.npy" in summary.table()
    # the clips that imported are served; the others are a miss that says how to import them
    cache = _lookup_cache(setup.cfg, setup.dataset)
    assert torch.equal(cache.get("c1", "face"), torch.from_numpy(setup.values[("c1", "face")])[None])
    with pytest.raises(FeatureMissingError) as err:
        cache.get("c3", "audio")
    assert "emollm import emotion-llama-features" in err.value.hint


def test_reimport_is_resumable_a_changed_file_is_imported_again_and_overwrite_rewrites(setup):
    import_precomputed_features(setup.cfg, setup.dataset, setup.source)
    again = import_precomputed_features(setup.cfg, setup.dataset, setup.source)
    assert {n: (c.imported, c.reused) for n, c in again.counts.items()} == {n: (0, 3) for n in SOURCES}
    new = np.full(D, 0.5, np.float32)
    np.save(setup.source / "mae_340_UTT" / "c2.npy", new)
    changed = import_precomputed_features(setup.cfg, setup.dataset, setup.source, modalities=["face"])
    assert list(changed.counts) == ["face"] and (changed.counts["face"].imported, changed.counts["face"].reused) == (1, 2)
    assert torch.equal(_lookup_cache(setup.cfg, setup.dataset).get("c2", "face"), torch.from_numpy(new)[None])
    forced = import_precomputed_features(setup.cfg, setup.dataset, setup.source, overwrite=True)
    assert {n: c.imported for n, c in forced.counts.items()} == {n: 3 for n in SOURCES}


def test_emollm_features_does_not_compute_imported_modalities_and_reports_them(setup, capsys):
    from emollm.cli import main as cli

    import_precomputed_features(setup.cfg, setup.dataset, setup.source)
    summary = extract_features(setup.cfg, setup.dataset)
    assert (summary.imported_present, summary.imported_missing, summary.failed) == (9, 0, 0)
    assert summary.clips_decoded == 0 and summary.entries_computed == 0
    # one entry missing: reported with the way to import it, not a failed clip
    cache = _lookup_cache(setup.cfg, setup.dataset)
    cache.path("c2", "audio").unlink()
    code = cli.main(["--quiet", "features", "--config", str(setup.tmp / "precomputed.yaml"), str(setup.dataset)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert re.search(r"imported present\s+8 ", out) and re.search(r"imported missing\s+1 ", out)
    assert "emollm import emotion-llama-features" in out and re.search(r"failed clips\s+0\n", out)


def test_a_clip_id_never_reads_outside_the_source_folder(tmp_path):
    dataset = _dataset(tmp_path / "dataset", ids=("../../outside", "linked", "c1"))
    source = tmp_path / "src"
    _write_sources(source, ids=("c1",))
    np.save(tmp_path / "outside.npy", np.ones(D, np.float32))  # what '../../outside' would reach
    (source / "mae_340_UTT" / "linked.npy").symlink_to(tmp_path / "outside.npy")  # a link leading out
    cfg = cfglib.load(_config(tmp_path))
    summary = import_precomputed_features(cfg, dataset, source, modalities=["face"])
    problems = {p.clip_id: (p.kind, p.reason) for p in summary.problems}
    assert problems["../../outside"][0] == "bad" and "'..'" in problems["../../outside"][1]
    assert problems["linked"][0] == "bad" and "outside the folder" in problems["linked"][1]
    assert summary.counts["face"].imported == 1
    cache = _lookup_cache(cfg, dataset)
    assert cache.check("../../outside", "face").state == "missing" and cache.check("linked", "face").state == "missing"


def test_the_cache_folder_of_a_tag_is_the_same_in_every_process_and_differs_for_another_tag():
    here = build_encoder("precomputed", "emotion-llama/mae_340_UTT", feature_dim=1024, folder="mae_340_UTT")
    code = ("from emollm.modeling.encoders import build_encoder;"
            "print(build_encoder('precomputed', 'emotion-llama/mae_340_UTT', feature_dim=1024).fingerprint())")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert other == here.fingerprint()  # the folder option is where the files were, not what they are
    assert build_encoder("precomputed", "emotion-llama/maeV_399_UTT", feature_dim=1024).fingerprint() != other
    assert build_encoder("precomputed", "emotion-llama/mae_340_UTT", feature_dim=768).fingerprint() != other
    with pytest.raises(EmollmError, match="emollm import emotion-llama-features"):
        here.extract(np.zeros((1, 224, 224, 3), np.uint8))


def test_explaining_a_raw_clip_with_an_imported_modality_says_which_and_what_to_do(setup):
    from emollm.inference import Explainer

    model = SimpleNamespace(config=SimpleNamespace(modalities=modality_specs(setup.cfg.model)))
    explainer = Explainer(model, None, setup.cfg)
    with pytest.raises(EmollmError) as err:
        explainer.explain_many([str(setup.tmp / "clip.mp4")], task="emotion")
    assert "'face'" in err.value.message and "cannot be computed from a raw clip" in err.value.message
    assert "emollm predict" in err.value.hint and "emollm import emotion-llama-features" in err.value.hint
