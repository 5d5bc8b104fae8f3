"""GRPO after SFT (train.stage=grpo): the maths on hand-computed values, the reward registry, the config
checks, one step on the tiny composite model, exact resume and the CLI run with its logs."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch

from emollm import config as cfglib
from emollm.errors import ConfigError
from emollm.testing.datasets import FAST
from emollm.training import grpo, loop, rewards


# ------------------------------------------------------------------------------------------ the maths
def test_group_advantages_equal_hand_computed_values():
    r = torch.tensor([1.0, 0.0, 0.5, 1.0, 1.0, 1.0])  # 2 prompts x G=3
    adv = grpo.group_advantages(r, 3)
    std = math.sqrt(((1 - 0.5) ** 2 + (0 - 0.5) ** 2 + 0) / 2)  # unbiased: 0.5
    expected = [0.5 / (std + 1e-4), -0.5 / (std + 1e-4), 0.0, 0.0, 0.0, 0.0]  # an all-equal group teaches nothing
    assert adv.tolist() == pytest.approx(expected, abs=1e-6)
    assert grpo.group_advantages(r, 3, scale=False).tolist() == pytest.approx([0.5, -0.5, 0, 0, 0, 0])
    with pytest.raises(Exception, match="groups of 4"):
        grpo.group_advantages(r, 4)


def _hand_loss(logps, old, ref, adv, mask, beta, eps):
    total, kls, n = 0.0, 0.0, 0
    for i in range(len(logps)):
        row, count = 0.0, 0
        for t in range(len(logps[i])):
            if not mask[i][t]:
                continue
            ratio = math.exp(logps[i][t] - old[i][t])
            clipped = min(max(ratio, 1 - eps), 1 + eps)
            d = ref[i][t] - logps[i][t]
            kl = math.exp(d) - d - 1
            row += -min(ratio * adv[i], clipped * adv[i]) + beta * kl
            kls += kl
            count += 1
            n += 1
        total += row / count
    return total / len(logps), kls / n


def test_grpo_loss_equals_hand_computed_value_on_a_fixed_batch():
    # 2 prompts x G=3 answers of up to 3 tokens; rewards given, advantages from them
    logps = [[-0.5, -1.0, -0.2], [-2.0, -0.1, -0.3], [-0.7, -0.7, -0.7],
             [-1.5, -0.05, -3.0], [-0.4, -0.9, -1.1], [-0.3, -0.6, -0.2]]
    old = [[-0.6, -1.0, -0.1], [-1.5, -0.1, -0.3], [-0.7, -0.9, -0.7],  # some ratios beyond 1 +- 0.2: clipped
           [-1.5, -0.3, -3.0], [-0.4, -0.9, -0.6], [-0.3, -0.6, -0.2]]
    ref = [[-0.4, -1.2, -0.2], [-2.2, -0.1, -0.5], [-0.9, -0.6, -0.7],
           [-1.0, -0.05, -2.5], [-0.4, -1.0, -1.1], [-0.35, -0.6, -0.25]]
    mask = [[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0], [1, 1, 1]]
    adv = grpo.group_advantages(torch.tensor([1.5, 0.0, 0.5, 1.0, 0.0, 0.0]), 3)
    t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    loss, stats = grpo.grpo_loss(t(logps), t(old), t(ref), adv.double(), torch.tensor(mask), beta=0.1, epsilon=0.2)
    want, want_kl = _hand_loss(logps, old, ref, adv.tolist(), mask, 0.1, 0.2)
    assert float(loss) == pytest.approx(want, rel=1e-9)
    assert stats["kl"] == pytest.approx(want_kl, rel=1e-9)
    assert 0 < stats["clip_ratio"] < 1


def test_kl_is_zero_when_the_policy_equals_the_reference():
    logps = torch.log(torch.tensor([[0.2, 0.5, 0.9], [0.3, 0.3, 0.1]], dtype=torch.float64))
    assert torch.equal(grpo.kl_k3(logps, logps), torch.zeros_like(logps))
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    mask = torch.ones(2, 3)
    with_ref, stats = grpo.grpo_loss(logps, logps, logps, adv, mask, beta=0.5, epsilon=0.2)
    without, _ = grpo.grpo_loss(logps, logps, None, adv, mask, beta=0.5, epsilon=0.2)
    assert stats["kl"] == 0.0 and float(with_ref) == float(without)
    assert float(without) == pytest.approx(0.0)  # ratio 1, advantages summing to 0 over equal-length answers
    # the gradient of the KL term vanishes there too: the reference pulls only once the policy has moved
    p = logps.clone().requires_grad_(True)
    grpo.kl_k3(p, logps).sum().backward()
    assert torch.allclose(p.grad, torch.zeros_like(p.grad))


def test_completion_mask_stops_after_the_first_stop_token():
    ids = torch.tensor([[5, 6, 2, 0, 0], [5, 2, 7, 2, 0], [5, 6, 7, 8, 9]])
    mask, truncated = grpo.completion_mask(ids, [2])
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert truncated.tolist() == [False, False, True]


# ------------------------------------------------------------------------------------------ rewards
@pytest.fixture(scope="module")
def merr():
    from emollm.dataset.label_sets import load_label_set

    return load_label_set("merr")


def _ctx(label_set, refs, fmt="label", truncated=()):
    return rewards.RewardContext(label_set, refs, list(truncated), fmt, "reasoning")


def test_format_reward_label_and_think_answer(merr):
    answers = ["happy", "Happy.", "She smiles widely.\nTherefore the emotion is: happy", "I think she is happy",
               "", "gibberish ?!", "joyful"]
    assert rewards.format_reward(answers, _ctx(merr, [None] * 7)) == [1, 1, 1, 0, 0, 0, 0]
    think = ["<think>cheeks raised, lip corners pulled</think><answer>happy</answer>",
             "<think>x</think>\n<answer> sad </answer>", "<answer>happy</answer>",
             "<think>x</think><answer>joyful mood</answer>", "<think>x</think><answer>happy</answer> trailing",
             "happy"]
    assert rewards.format_reward(think, _ctx(merr, [None] * 6, "think_answer")) == [1, 1, 0, 0, 0, 0]


def test_accuracy_reward_uses_emollm_label_parsing(merr):
    answers = ["happy", "The face shows joy; she is clearly happy.", "not happy but sad", "sad", "qwzx", "", "happy"]
    refs = ["happy", "happy", "sad", "happy", "happy", "happy", None]
    assert rewards.accuracy_reward(answers, _ctx(merr, refs)) == [1, 1, 1, 0, 0, 0, 0]  # unparsable / no reference: 0
    think = ["<think>x</think><answer>sad</answer>", "sad", "<think>happy</think><answer>sad</answer>"]
    assert rewards.accuracy_reward(think, _ctx(merr, ["sad", "sad", "happy"], "think_answer")) == [1, 0, 0]


def test_reward_registry_weights_and_custom_rewards(merr):
    ctx = _ctx(merr, ["happy", "sad"], truncated=[False, True])
    total, per = rewards.score(["happy", "happy and"], ctx, {"format": 0.5, "accuracy": 1.0, "length": 0.25})
    assert per == {"format": [1.0, 0.0], "accuracy": [1.0, 0.0], "length": [1.0, 0.0]}
    assert total == [1.75, 0.0]

    @rewards.register_reward("test_short")
    def short(answers, ctx):
        return [1.0 / (1 + len(a)) for a in answers]

    try:
        assert rewards.score(["ab"], _ctx(merr, [None]), {"test_short": 2.0})[0] == [pytest.approx(2 / 3)]
    finally:
        del rewards.REWARDS["test_short"]
    with pytest.raises(ConfigError, match="unknown reward 'nope'"):
        rewards.get_reward("nope")


@pytest.mark.parametrize("override, key", [
    ("train.grpo.num_generations=1", "train.grpo.num_generations"),
    ("train.grpo.beta=-0.1", "train.grpo.beta"),
    ("train.grpo.epsilon=1.5", "train.grpo.epsilon"),
    ("train.grpo.temperature=0", "train.grpo.temperature"),
    ("train.grpo.rewards={format: 1.0, nope: 1.0}", "train.grpo.rewards"),
    ("train.grpo.rewards={format: 0, accuracy: 0}", "train.grpo.rewards"),
    ("train.grpo.answer_format=xml", "train.grpo.answer_format"),
    ("train.init_from=null", "train.init_from"),
])
def test_grpo_config_errors_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        cfglib.load("grpo_tiny_cpu", [override])


def test_the_supervised_loop_refuses_the_grpo_stage(tmp_path):
    cfg = cfglib.load("grpo_tiny_cpu", [f"train.init_from={tmp_path}", f"run.output_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match="train_grpo"):
        loop.train(cfg)


def test_shipped_grpo_config():
    cfg = cfglib.load("grpo_tiny_cpu")
    assert cfg.train.stage == "grpo" and cfg.train.grpo.num_generations >= 2
    assert set(cfg.train.grpo.rewards) == {"format", "accuracy"}
    assert cfglib.load("tiny_cpu").train.stage == 1  # SFT stays the default


# ------------------------------------------------------------------------------------------ the loop
@pytest.fixture
def dataset(grpo_dataset):  # tests/training/conftest.py: shared with the distributed GRPO tests
    return grpo_dataset


@pytest.fixture
def sft_run(grpo_sft_run):
    return grpo_sft_run


@pytest.fixture
def varied_reward():
    """A reward that differs between sampled answers (the tiny model's answers are never right, so
    format / accuracy give all-equal groups and zero advantages)."""

    @rewards.register_reward("test_chars")
    def chars(answers, ctx):
        return [min(len(a), 40) / 40 for a in answers]

    yield "train.grpo.rewards={test_chars: 1.0, format: 0.5, accuracy: 1.0}"
    del rewards.REWARDS["test_chars"]


def _grpo_cfg(dataset, sft_run, out, *overrides):
    ds, split = dataset
    return cfglib.load("grpo_tiny_cpu", [*FAST, f"data.dataset_dir={ds}", f"data.train_split={split}",
                                         f"train.init_from={sft_run}", f"run.output_dir={out}",
                                         "train.grpo.max_new_tokens=6", "train.grpo.num_generations=3",
                                         "train.lr=1e-2", *overrides])


def test_one_grpo_step_moves_lora_and_projectors_and_leaves_the_reference(dataset, sft_run, tmp_path, varied_reward):
    from emollm.modeling.factory import load_run

    torch.manual_seed(0)
    res = grpo.train_grpo(_grpo_cfg(dataset, sft_run, tmp_path / "run", "train.max_steps=1", varied_reward))
    assert res.global_step == 1 and math.isfinite(res.losses[0])
    sft, _ = load_run(sft_run)
    start = dict(sft.named_parameters())
    ref = res.reference.weights
    assert ref and all(torch.equal(v, start[n]) for n, v in ref.items())  # the reference is the SFT run, untouched
    now = dict(res.model.named_parameters())
    moved = {n for n in ref if not torch.equal(now[n], ref[n])}
    assert any("lora_" in n for n in moved), "no LoRA weight moved"
    assert any(n.startswith("media.") for n in moved), "no media projector weight moved"
    assert all(n.startswith("media.") or "lora_" in n for n in ref)  # the backbone stays frozen
    row = json.loads((tmp_path / "run" / "logs" / loop.LOG_FILE).read_text().splitlines()[0])
    assert row["stage"] == "grpo" and {"reward", "reward_format", "reward_accuracy", "reward_test_chars", "kl"} <= set(row)
    assert 0 <= row["reward_format"] <= 1 and row["reward"] > 0


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_a_run_started_from_another_trains_with_its_own_lora_dropout(dataset, sft_run, tmp_path, dropout):
    """The SFT run trained with the default dropout; this stage's ``train.lora.dropout`` applies (GRPO's
    loss pass must match the dropout-free sampling and reference passes) and is what its run dir records."""
    model, _ = loop.build_model(_grpo_cfg(dataset, sft_run, tmp_path / "run", f"train.lora.dropout={dropout}"))
    layers = [m.lora_dropout["default"] for m in model.language_model.modules() if hasattr(m, "lora_dropout")]
    assert layers and all((d.p == dropout) if dropout else isinstance(d, torch.nn.Identity) for d in layers)
    assert model.language_model.peft_config["default"].lora_dropout == dropout
    assert json.loads((sft_run / "adapter" / "adapter_config.json").read_text())["lora_dropout"] == 0.05


def test_reference_logprobs_are_the_sft_models(dataset, sft_run, tmp_path):
    """With the reference swapped in, the log-probs are the SFT model's; after it, the live policy's again."""
    from emollm.modeling.factory import load_run

    cfg = _grpo_cfg(dataset, sft_run, tmp_path / "unused")
    model, processor = loop.build_model(cfg)
    ds = loop._dataset(cfg, model, processor)
    from emollm.training.data import EmotionCollator, EmotionDataset

    prompts = EmotionDataset(ds.root, processor, ds.cache, model.config.modalities, split=cfg.data.train_split,
                             tasks=["emotion"], prompt_only=True)
    batch = EmotionCollator(processor, model.config.modalities, padding_side="left")([prompts[0], prompts[1]])
    inputs = {k: v for k, v in batch.items() if k not in ("ids", "labels")}
    completion = torch.tensor([[11, 12, 13], [14, 15, 2]])
    mask = torch.ones_like(completion)
    ref = grpo.ReferencePolicy(model)
    model.eval()
    with torch.no_grad():
        before = grpo.completion_logprobs(model, inputs, completion, mask)
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05)  # the policy moves
        moved = grpo.completion_logprobs(model, inputs, completion, mask)
        with ref.active(model):
            swapped = grpo.completion_logprobs(model, inputs, completion, mask)
        after = grpo.completion_logprobs(model, inputs, completion, mask)
        sft, _ = load_run(sft_run)
        sft.eval()
        direct = grpo.completion_logprobs(sft, inputs, completion, mask)
    assert not torch.allclose(before, moved)
    assert torch.allclose(swapped, before, atol=1e-6) and torch.allclose(swapped, direct, atol=1e-5)
    assert torch.equal(after, moved)


def test_grpo_resume_gives_the_uninterrupted_weights(dataset, sft_run, tmp_path, varied_reward):
    common = ["train.max_steps=4", "train.save_steps=2", "train.lora.dropout=0.1", "train.logging_steps=1",
              varied_reward]
    straight = grpo.train_grpo(_grpo_cfg(dataset, sft_run, tmp_path / "a", *common))
    first = grpo.train_grpo(_grpo_cfg(dataset, sft_run, tmp_path / "b", *common), stop_after_step=3)
    assert first.stopped_early and [p.name for p in loop.list_checkpoints(tmp_path / "b")] == ["checkpoint-2",
                                                                                                "checkpoint-3"]
    torch.manual_seed(999)  # sampling and dropout must come from the checkpoint's RNG, not the process's
    resumed = grpo.train_grpo(_grpo_cfg(dataset, sft_run, tmp_path / "b", *common, "train.resume=latest"))
    assert resumed.global_step == 4
    assert resumed.losses == pytest.approx(straight.losses, rel=1e-4, abs=1e-9)
    for step in (3, 4):  # the same answers sampled after the resume (the loss alone is ~0: advantages sum to 0)
        texts = [(tmp_path / run / "logs" / f"rollouts-{step}.jsonl").read_text() for run in ("a", "b")]
        assert texts[0] == texts[1]
    a, b = dict(straight.model.named_parameters()), dict(resumed.model.named_parameters())
    trained = [n for n, p in a.items() if p.requires_grad]
    assert trained and all(torch.allclose(a[n], b[n], atol=1e-6) for n in trained)
    assert any(not torch.equal(a[n], straight.reference.weights[n]) for n in trained)  # the weights moved
    steps = [json.loads(x)["step"] for x in (tmp_path / "b" / "logs" / loop.LOG_FILE).read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # redone rows appear once
    assert sorted(p.name for p in (tmp_path / "b" / "logs").glob("rollouts-*.jsonl")) == [
        f"rollouts-{i}.jsonl" for i in (1, 2, 3, 4)]


def test_cli_runs_grpo_from_an_sft_run(dataset, sft_run, tmp_path):
    from emollm.cli import main as cli
    from emollm.modeling.factory import load_run

    ds, split = dataset
    out = tmp_path / "run"
    code = cli.main(["--quiet", "train", "--config", "grpo_tiny_cpu", f"train.init_from={sft_run}",
                     f"data.dataset_dir={ds}", f"data.train_split={split}", f"run.output_dir={out}", *FAST,
                     "train.max_steps=2", "train.grpo.num_generations=2", "train.grpo.max_new_tokens=4"])
    assert code == 0
    rows = [json.loads(x) for x in (out / "logs" / loop.LOG_FILE).read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train_rows] == [1, 2] and all("reward" in r and "reward_accuracy" in r for r in train_rows)
    rollout = json.loads((out / "logs" / "rollouts-2.jsonl").read_text().splitlines()[0])
    assert {"id", "text", "reference", "reward", "reward_format", "advantage"} <= set(rollout)
    model, _ = load_run(out)  # a run dir like an SFT run's: predict / evaluate / a further stage take it
    assert model.is_lora and (out / "config.yaml").is_file()


def test_num_iterations_reuses_each_batch_of_rollouts(dataset, sft_run, tmp_path, varied_reward):
    """num_iterations=2: the second optimizer step reuses the first's answers against the old policy (ratio
    no longer 1), and their rewards are counted once."""
    out = tmp_path / "run"
    res = grpo.train_grpo(_grpo_cfg(dataset, sft_run, out, "train.max_steps=2", "train.grpo.num_iterations=2",
                               "train.warmup_ratio=0", "train.logging_steps=1", varied_reward))
    assert res.global_step == 2
    rows = [json.loads(x) for x in (out / "logs" / loop.LOG_FILE).read_text().splitlines()]
    assert "reward" in rows[0] and "reward" not in rows[1]
    texts = [[json.loads(x)["text"] for x in (out / "logs" / f"rollouts-{s}.jsonl").read_text().splitlines()]
             for s in (1, 2)]
    assert texts[0] == texts[1]
    assert rows[1]["loss"] != rows[0]["loss"]  # the policy moved after step 1: the ratio left 1


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                    reason="tensorboard is not installed (pip install tensorboard, or emollm[dev])")
def test_tensorboard_gets_the_rewards_per_step(dataset, sft_run, tmp_path, varied_reward):
    """(The evaluation's scalars and answers come from the SFT loop's evaluator: test_train_eval.)"""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    grpo.train_grpo(_grpo_cfg(dataset, sft_run, out, "train.max_steps=2", "train.logging_steps=1",
                              "train.report_to=[tensorboard]", "run.name=tb", varied_reward))
    events = list((out / "logs").rglob("events.out.tfevents.*"))
    assert events, sorted(p.relative_to(out) for p in out.rglob("*"))
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"reward", "reward_format", "reward_accuracy", "reward_test_chars", "kl", "loss", "completion_length"} <= tags
    assert [e.step for e in acc.Scalars("reward")] == [1, 2]
    rows = [json.loads(x) for x in (out / "logs" / loop.LOG_FILE).read_text().splitlines()]
    assert [e.value for e in acc.Scalars("reward")] == pytest.approx([r["reward"] for r in rows])
