"""A built dataset as a ``datasets.DatasetDict``: splits, typed columns, absolute paths, export and back, training."""

from __future__ import annotations

import json
import os
import shutil

import datasets
import pytest
import torch

import emollm
from emollm.cli import main as cli
from emollm.dataset import hf
from emollm.errors import EmollmError
from emollm.testing.datasets import FAST
from emollm.testing.tiny import build_tiny_models


def _read(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def built(sample_dir, tmp_path_factory):
    """A clip with a face (fine), one without (coarse), a still; built and its tiny_cpu features cached."""
    build_tiny_models()
    clips = tmp_path_factory.mktemp("hf_clips")
    shutil.copy(sample_dir / "single_face.mp4", clips / "single_face.mp4")
    shutil.copy(sample_dir / "no_face.mp4", clips / "no_face.mp4")
    shutil.copy(sample_dir / "single_face.jpg", clips / "still.jpg")
    out = tmp_path_factory.mktemp("hf_dataset")
    assert cli.main(["--quiet", "build", str(clips), "--out", str(out), "build.au_fps=3"]) == 0
    assert cli.main(["--quiet", "features", "--config", "tiny_cpu", str(out), *FAST]) == 0
    return out


def test_records_per_split_typed_with_absolute_paths(built):
    records = _read(built / "annotations.jsonl")
    dd = emollm.load_dataset(built)  # the lazy top-level wrapper
    assert isinstance(dd, datasets.DatasetDict)
    assert set(dd) == {r["split"] for r in records} == {"coarse", "fine"}
    assert {r["id"] for r in dd["fine"]} == {r["id"] for r in records if r["split"] == "fine"}
    for split in dd.values():
        assert split.features == hf.record_features()
    feats = dd["fine"].features
    assert feats["pseudo_label_confidence"].dtype == "float64" and feats["num_frames"].dtype == "int64"
    assert feats["aus_at_peak_names"].feature.dtype == "string" and feats["aus_at_peak_values"].feature.dtype == "float64"
    assert set(feats["review"]) == {"state", "by", "note"}
    row = dd["fine"].filter(lambda r: r["id"] == "single_face")[0]
    rec = next(r for r in records if r["id"] == "single_face")
    assert not os.path.isabs(rec["media"]["path"]) and os.path.isabs(row["media"]["path"])
    assert os.path.isfile(row["media"]["path"]) and os.path.isfile(row["aus_file"])  # resolved, not just prefixed
    assert row["media"]["path"] == os.path.normpath(os.path.join(built.resolve(), rec["media"]["path"]))
    assert dict(zip(row["aus_at_peak_names"], row["aus_at_peak_values"], strict=True)) == rec["aus_at_peak"]
    assert row["aus_present_at_peak"] == rec["aus_present_at_peak"] and row["pseudo_label"] == rec["pseudo_label"]
    assert json.loads(row["provenance_json"]) == rec["provenance"]
    assert json.loads(row["extra_json"])["cue_votes"] == rec["cue_votes"]
    # and back: the very records, fields and file order included
    assert [json.dumps(r) for r in hf.records_from_hf(dd)] == [json.dumps(r) for r in records]


def test_instruction_samples_per_split(built):
    for task in ("emotion", "reason"):
        samples = _read(built / "instructions" / f"{task}.jsonl")
        dd = hf.load_dataset(built, instructions=task)
        assert set(dd) == {s["split"] for s in samples}
        rows = [r for split in dd.values() for r in split]
        assert sorted(r["id"] for r in rows) == sorted(s["id"] for s in samples) and {r["task"] for r in rows} == {task}
        assert all(os.path.isfile(r["media"]) for r in rows)
        assert rows[0]["messages"][0]["role"] == "user" and "<feature>" in rows[0]["messages"][0]["content"]
        assert hf.samples_from_hf(dd) == samples
    with pytest.raises(EmollmError, match="task 'summary'"):
        hf.load_dataset(built, instructions="summary")


def test_export_to_hf_round_trips(built, tmp_path, capsys):
    out = tmp_path / "hf"
    assert cli.main(["export", "--to", "hf", str(built), "--out", str(out)]) == 0
    assert "records coarse (1), fine (2), instructions/emotion (2), instructions/reason (2)" in capsys.readouterr().out
    loaded = datasets.load_from_disk(str(out))
    assert set(loaded) == {"coarse", "fine"}
    assert [json.dumps(r, ensure_ascii=False) + "\n" for r in hf.records_from_hf(loaded)] == \
        (built / "annotations.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)  # byte for byte
    reason = datasets.load_from_disk(str(out / "instructions" / "reason"))
    assert hf.samples_from_hf(reason) == _read(built / "instructions" / "reason.jsonl")
    assert hf.records_from_hf(emollm.load_dataset(out)) == _read(built / "annotations.jsonl")  # an export loads too
    # an existing export is kept unless --overwrite; the dataset itself is never a target
    before = sorted(p.name for p in out.iterdir())
    assert cli.main(["export", "--to", "hf", str(built), "--out", str(out)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err and sorted(p.name for p in out.iterdir()) == before
    (out / "stale.txt").write_text("x")
    assert cli.main(["--quiet", "export", "--to", "hf", str(built), "--out", str(out), "--overwrite"]) == 0
    assert not (out / "stale.txt").exists() and hf.records_from_hf(out) == _read(built / "annotations.jsonl")
    assert cli.main(["export", "--to", "hf", str(built), "--out", str(built / "hf")]) == 2
    assert "overlaps the dataset dir" in capsys.readouterr().err and not (built / "hf").exists()
    assert cli.main(["export", "--to", "merr", str(built), "--out", str(tmp_path / "m"), "--overwrite"]) == 2


def test_values_outside_the_columns_round_trip(built, tmp_path):
    """An int where a float column is declared, a missing field, an unknown field, odd splits: nothing is coerced."""
    records = _read(built / "annotations.jsonl")
    odd = [dict(r) for r in records]
    odd[0]["fps"] = 30  # int: must not come back as 30.0
    odd[0]["split"] = None
    odd[1]["aus_at_peak"] = {"AU12": 3, "AU06": 1.5} if odd[1]["aus_at_peak"] else None
    del odd[1]["label"]  # absent is not None
    odd[1]["split"] = "val 1"
    odd[2]["media"] = {**odd[2]["media"], "sha": "abc"}  # a media key the struct does not declare
    odd[2]["my_field"] = {"nested": [1, {"x": None}]}
    odd[2]["review"] = {"state": "corrected", "by": "me", "note": None, "at": 5}
    ds = tmp_path / "odd"
    shutil.copytree(built, ds, ignore=shutil.ignore_patterns("features"))
    (ds / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in odd), encoding="utf-8")
    dd = hf.load_dataset(ds)
    assert set(dd) == {hf.UNSPLIT, "val_1", records[2]["split"]}
    assert dd["val_1"][0]["split"] == "val 1"
    row = dd[records[2]["split"]].filter(lambda r: r["id"] == odd[2]["id"])[0]
    assert os.path.isabs(row["media"]["path"]) and row["media"]["kind"] == odd[2]["media"]["kind"]  # still typed
    back = hf.records_from_hf(dd)
    assert [json.dumps(r) for r in back] == [json.dumps(r) for r in odd]
    assert type(back[0]["fps"]) is int and "label" not in back[1]


def test_not_a_dataset_is_a_clear_error(built, tmp_path):
    with pytest.raises(EmollmError, match="annotations.jsonl"):
        hf.load_dataset(tmp_path)
    assert cli.main(["export", "--to", "hf", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    foreign = tmp_path / "foreign"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["hi"]})}).save_to_disk(str(foreign))
    with pytest.raises(EmollmError, match="lacks the columns"):
        hf.read_hf_export(foreign)
    cut = tmp_path / "cut"
    hf.export_hf(built, cut)
    shutil.rmtree(cut / "fine")  # dataset_dict.json still names it
    with pytest.raises(EmollmError, match="not a readable `datasets` folder"):
        hf.records_from_hf(cut)


def test_training_reads_an_exported_dataset(built, tmp_path):
    from emollm import config as cfglib
    from emollm.features import FeatureCache
    from emollm.modeling.factory import build_model_and_processor
    from emollm.training.data import EmotionCollator, EmotionDataset

    out = tmp_path / "hf"
    hf.export_hf(built, out)
    cfg = cfglib.load("tiny_cpu", FAST)
    torch.manual_seed(0)
    model, processor = build_model_and_processor(cfg)
    modalities = model.config.modalities
    from_folder = EmotionDataset(built, processor, FeatureCache.from_config(cfg, built), modalities)
    from_hf = EmotionDataset(out, processor, FeatureCache.from_config(cfg, built), modalities)
    assert from_hf.root == built.resolve() and from_hf.records == from_folder.records
    assert from_hf.samples == from_folder.samples and len(from_hf) == 2
    batch = EmotionCollator(processor, modalities)([from_hf[0], from_hf[1]])
    assert batch["media_masks"]["au"].any()  # AU side files found through the export
    model.train()
    loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                 media=batch["media"], media_present=batch["media_present"], media_masks=batch["media_masks"]).loss
    assert torch.isfinite(loss) and loss > 0
    loss.backward()


def test_emollm_train_on_an_export_folder(built, tmp_path):
    # `emollm train data.dataset_dir=<export>`: the export's records, the source dataset's feature cache
    out = tmp_path / "hf"
    hf.export_hf(built, out)
    assert hf.source_dataset_dir(out) == built.resolve() and hf.source_dataset_dir(built) == built
    run = tmp_path / "run"
    assert cli.main(["--quiet", "train", "--config", "tiny_cpu", *FAST, f"data.dataset_dir={out}", "data.train_split=fine",
                     "train.max_steps=2", f"run.output_dir={run}"]) == 0
    steps = [json.loads(line) for line in (run / "logs" / "train_log.jsonl").read_text().splitlines() if line.strip()]
    assert steps and all(torch.isfinite(torch.tensor(s["loss"])) for s in steps if "loss" in s)
