"""`emollm predict`: batched generation over a built dataset, resumable, feeding `emollm evaluate`."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest

from emollm.cli import main as cli
from emollm.inference import generate, generation_kwargs, load_model, predict_dataset, run_config
from emollm.training.data import EmotionCollator, EmotionDataset


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_left_padded_batch_generates_what_each_sample_generates_alone(trained_run, tiny_dataset):
    """Left padding + KV cache must not change a greedy answer: batch of 2 == each alone."""
    from emollm.features.cache import FeatureCache

    run, _ = trained_run
    dataset, _ = tiny_dataset
    cfg = run_config(run)
    model, processor = load_model(run, device="cpu")
    cache = FeatureCache.from_config(cfg, dataset)
    ds = EmotionDataset(dataset, processor, cache, model.config.modalities, tasks=["reason"], prompt_only=True)
    assert len(ds) == 2 and all("target" not in s for s in ds.samples)
    lengths = [len(ds[i]["input_ids"]) for i in range(2)]
    assert lengths[0] != lengths[1]  # the clip has more modalities than the still: padding is exercised
    collate = EmotionCollator(processor, model.config.modalities, padding_side="left")
    kwargs = generation_kwargs(cfg.predict, max_new_tokens=8)
    batch = collate([ds[0], ds[1]])
    assert (batch["attention_mask"][:, -1] == 1).all() and (batch["attention_mask"][:, 0] == 0).any()
    together = generate(model, processor, batch, kwargs)
    alone = [generate(model, processor, collate([ds[i]]), kwargs)[0] for i in range(2)]
    assert together == alone
    with pytest.raises(Exception, match="left-padded"):
        generate(model, processor, EmotionCollator(processor, model.config.modalities)([ds[0], ds[1]]), kwargs)


def test_predict_then_evaluate_through_the_cli(trained_run, tiny_dataset, tmp_path, capsys):
    run, labels = trained_run
    dataset, _ = tiny_dataset
    preds = tmp_path / "preds.jsonl"
    assert cli.main(["--quiet", "predict", "--model", str(run), str(dataset), "--split", "all", "--out", str(preds)]) == 0
    rows = _rows(preds)
    assert sorted(r["id"] for r in rows) == sorted(labels)
    assert all(r["task"] == "emotion" and r["gt"] == labels[r["id"]] and r["gt_source"] == "pseudo_label" for r in rows)
    # the run was overfit to answer the pseudo-label: a broken prompt / media / padding path shows here
    assert all(r["text"].strip() == labels[r["id"]] for r in rows), rows
    out = tmp_path / "eval"
    # the rows carry their references (gt): no --references needed
    assert cli.main(["--quiet", "evaluate", "--predictions", str(preds), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["counts"]["paired"] == 2 and metrics["classification"]["war"] == 1.0
    assert metrics["parsing"]["invalid"] == 0


def _ours(caught) -> list[str]:
    """Warnings raised by emollm's code, or about the deprecated KV-cache name, as readable lines."""
    return [f"{w.category.__name__} {w.filename}: {w.message}" for w in caught
            if "/emollm/" in w.filename.replace("\\", "/") or "past_key_values" in str(w.message)]


def test_predict_with_beam_search_from_the_config_or_the_command_line(trained_run, tiny_dataset, tmp_path, expand_sizes):
    run, labels = trained_run
    dataset, _ = tiny_dataset
    common = ["--quiet", "predict", "--model", str(run), str(dataset), "--split", "all"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli.main([*common, "--out", str(tmp_path / "a.jsonl"), "predict.num_beams=2"]) == 0
    assert expand_sizes and set(expand_sizes) == {2}  # two beams per sample, media expanded with them
    assert not _ours(caught), _ours(caught)
    # the overfit run's answer is its pseudo-label: beam search finds it too, for every sample of the batch
    assert {r["id"]: r["text"] for r in _rows(tmp_path / "a.jsonl")} == labels
    expand_sizes.clear()
    assert cli.main([*common, "--out", str(tmp_path / "b.jsonl"), "--num-beams", "3", "--batch-size", "1"]) == 0
    assert set(expand_sizes) == {3} and len(expand_sizes) == 2  # one batch per sample
    assert {r["id"]: r["text"] for r in _rows(tmp_path / "b.jsonl")} == labels


def test_generation_options_map_to_generate_and_bad_ones_are_refused():
    from emollm import config as cfglib
    from emollm.errors import ConfigError

    settings = cfglib.PredictConfig(max_new_tokens=7)
    assert generation_kwargs(settings) == {"max_new_tokens": 7, "num_beams": 1, "do_sample": False}  # greedy
    assert generation_kwargs(settings, num_beams=3, top_p=0.5) == {"max_new_tokens": 7, "num_beams": 3, "do_sample": False}
    assert generation_kwargs(settings, temperature=0.7, top_p=0.9, num_beams=None) == {
        "max_new_tokens": 7, "num_beams": 1, "do_sample": True, "temperature": 0.7, "top_p": 0.9}
    with pytest.raises(ConfigError, match="unknown generation option 'beams'"):
        generation_kwargs(settings, beams=2)  # a typo is an error, not greedy decoding
    with pytest.raises(ConfigError, match="num_beams"):
        generation_kwargs(settings, num_beams=0)


def test_predict_samples_reproducibly_with_a_seed(trained_run, tiny_dataset, tmp_path):
    """--temperature > 0 samples (a temperature this high flattens even the overfit answer); --seed fixes it."""
    run, labels = trained_run
    dataset, _ = tiny_dataset
    texts = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        out = tmp_path / f"{name}.jsonl"
        assert cli.main(["--quiet", "predict", "--model", str(run), str(dataset), "--split", "all", "--out", str(out),
                         "--temperature", "50", "--top-p", "1.0", "--seed", str(seed), "--max-new-tokens", "6"]) == 0
        texts[name] = {r["id"]: r["text"] for r in _rows(out)}
    assert set(texts["a"]) == set(labels)
    assert texts["a"] == texts["b"]  # same seed, same answers
    assert texts["a"] != texts["c"] and texts["a"] != labels  # sampled, not greedy


def test_predict_resumes_without_losing_or_duplicating(trained_run, tiny_dataset, tmp_path):
    run, labels = trained_run
    dataset, _ = tiny_dataset
    cfg = run_config(run)
    model, processor = load_model(run, device="cpu")
    out = tmp_path / "preds.jsonl"
    first = predict_dataset(cfg, model, processor, dataset, out, limit=1, batch_size=1)
    assert first.written == 1 and len(_rows(out)) == 1
    with open(out, "a") as fh:  # a run killed in the middle of writing its next line
        fh.write('{"id": "still", "task": "emo')
    second = predict_dataset(cfg, model, processor, dataset, out, batch_size=1)
    assert (second.reused, second.written) == (1, 1)
    rows = _rows(out)
    assert sorted(r["id"] for r in rows) == sorted(labels)
    third = predict_dataset(cfg, model, processor, dataset, out)
    assert (third.reused, third.written) == (2, 0) and len(_rows(out)) == 2


def test_predict_computes_missing_cache_entries_first(trained_run, tiny_dataset, tmp_path):
    run, labels = trained_run
    dataset, _ = tiny_dataset
    shutil.copytree(dataset.parent / "clips", tmp_path / "clips")  # media paths are relative to the dataset
    copy = tmp_path / "dataset"
    shutil.copytree(dataset, copy)
    shutil.rmtree(copy / "features")
    cfg = run_config(run)
    model, processor = load_model(run, device="cpu")
    summary = predict_dataset(cfg, model, processor, copy, tmp_path / "p.jsonl", task="emotion")
    assert summary.features_computed > 0 and summary.written == 2
    assert {r["text"] for r in _rows(tmp_path / "p.jsonl")} == set(labels.values())


def test_run_dir_missing_a_file_is_one_clear_line(trained_run, tiny_dataset, tmp_path, capsys):
    run, _ = trained_run
    dataset, _ = tiny_dataset
    broken = tmp_path / "run"
    shutil.copytree(run, broken)
    (broken / "config.yaml").unlink()
    code = cli.main(["predict", "--model", str(broken), str(dataset), "--out", str(tmp_path / "p.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and "config.yaml" in err and "Traceback" not in err
    shutil.copy(run / "config.yaml", broken / "config.yaml")
    shutil.rmtree(broken / "adapter")
    code = cli.main(["predict", "--model", str(broken), str(dataset), "--out", str(tmp_path / "p.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:") and "Traceback" not in err, err
    assert "adapter" in err, err  # the line names what is missing
