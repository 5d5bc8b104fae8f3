"""The GRPO stage in 2 gloo processes: DDP, DeepSpeed ZeRO-2 and ZeRO-3.

Each case launches this file under ``torchrun --nproc_per_node 2`` (``emollm.testing.distributed.launch``). The driver (``__main__`` below) runs the same
``train_grpo(cfg)`` as ``train.py`` from a short SFT run, then on every rank computes the log-probs of one
fixed batch of answers with the reference policy swapped in (under ZeRO-3: each rank's shards) and
without it; rank 0 compares them with the SFT run and the saved GRPO run, each loaded whole in its own
process memory. Under DeepSpeed it then resumes from ``checkpoint-1`` (a fresh engine in the same
processes): step 2 must repeat the uninterrupted run's loss.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from emollm.testing.distributed import launch, reset_accelerate_state

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 300
FIXED_COMPLETION = [[11, 12, 13], [14, 15, 2]]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ddp", "zero2", "zero3"])
def test_two_process_grpo_keeps_the_sft_reference_saves_and_resumes(grpo_dataset, grpo_sft_run, tmp_path, name):
    (ds, split), sft = grpo_dataset, grpo_sft_run
    deepspeed = "" if name == "ddp" else str(ROOT / "train_configs" / "deepspeed" / f"{name}.json")
    out = tmp_path / "run"
    launch(Path(__file__), [ds, split, sft, out, deepspeed], deepspeed=bool(deepspeed), cwd=tmp_path,
           timeout=TIMEOUT_S, port_base=31500)
    report = json.loads((out / "grpo_report.json").read_text())

    assert report["world_sizes"] == [2, 2]
    assert report["distributed_type"] == ("MULTI_CPU" if name == "ddp" else "DEEPSPEED")
    rows = [json.loads(x) for x in (out / "logs" / "train_log.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in rows] == [1, 2] and all("reward" in r for r in rows)
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # step 1: the policy is the reference
    assert rows[1]["kl"] > 0  # then it moved away from it
    # the reference swapped in (every rank its own ZeRO-3 shards) is the SFT run, whole; the live policy moved
    assert report["ref_vs_sft"] < 1e-5, report
    assert report["live_vs_sft"] > 1e-4, report
    # the saved run dir (gathered from the shards) is the trained policy
    assert report["live_vs_saved"] < 1e-5, report
    state = json.loads((out / "checkpoint-1" / "trainer_state.json").read_text())
    assert (state["stage"], state["world_size"], state["global_step"]) == ("grpo", 2, 1)
    if deepspeed:  # resumed from checkpoint-1 (new engine, same processes): step 2 as uninterrupted
        assert report["resumed_losses"] == pytest.approx(report["losses"], abs=1e-6), report


def _driver(dataset_dir: str, split: str, sft_dir: str, out_dir: str, deepspeed: str) -> None:
    import torch
    import torch.distributed as dist
    from accelerate.state import PartialState

    from emollm import config as cfglib
    from emollm.modeling.factory import load_run
    from emollm.testing.datasets import FAST
    from emollm.training import grpo, loop, rewards
    from emollm.training.data import EmotionCollator, EmotionDataset

    @rewards.register_reward("test_chars")  # the tiny model is never right: a reward whose groups vary
    def chars(answers, ctx):
        return [min(len(a), 40) / 40 for a in answers]

    overrides = [*FAST, f"data.dataset_dir={dataset_dir}", f"data.train_split={split}", f"train.init_from={sft_dir}",
                 f"run.output_dir={out_dir}", "train.per_device_batch_size=1", "train.max_steps=2",
                 "train.save_steps=1", "train.logging_steps=1", "train.lr=1e-2", "train.lora.dropout=0.0",
                 "train.grpo.num_generations=3", "train.grpo.max_new_tokens=6",
                 "train.grpo.rewards={test_chars: 1.0, format: 0.5, accuracy: 1.0}"]
    if deepspeed:
        overrides.append(f"train.deepspeed={deepspeed}")
    cfg = cfglib.load(str(ROOT / "train_configs" / "grpo_tiny_cpu.yaml"), overrides)
    res = grpo.train_grpo(cfg)
    state = PartialState()
    world = [0] * dist.get_world_size()
    dist.all_gather_object(world, dist.get_world_size())

    model, processor = res.model, res.processor
    model.eval()
    ds = loop._dataset(cfg, model, processor)
    prompts = EmotionDataset(ds.root, processor, ds.cache, model.config.modalities, split=split, tasks=["emotion"],
                             prompt_only=True)
    batch = EmotionCollator(processor, model.config.modalities, padding_side="left")([prompts[0], prompts[1]])
    inputs = {k: v for k, v in batch.items() if k not in ("ids", "labels", "tasks")}
    completion = torch.tensor(FIXED_COMPLETION)
    mask = torch.ones_like(completion)
    with torch.no_grad():  # every rank: ZeRO-3 gathers the shards collectively
        live = grpo.completion_logprobs(model, inputs, completion, mask)
        with res.reference.active(model):
            ref = grpo.completion_logprobs(model, inputs, completion, mask)
    if state.is_main_process:
        with loop._without_zero3_init(), torch.no_grad():  # rank 0 alone: no zero.Init (a collective) here
            sft, _ = load_run(sft_dir)
            saved, _ = load_run(out_dir)
            sft.eval()
            saved.eval()
            from_sft = grpo.completion_logprobs(sft, inputs, completion, mask)
            from_saved = grpo.completion_logprobs(saved, inputs, completion, mask)
        report = {"world_sizes": world, "distributed_type": state.distributed_type.name, "losses": res.losses,
                  "ref_vs_sft": float((ref - from_sft).abs().max()),
                  "live_vs_sft": float((live - from_sft).abs().max()),
                  "live_vs_saved": float((live - from_saved).abs().max())}
    if deepspeed:
        reset_accelerate_state()  # a second engine in these processes
        again = cfglib.load(str(ROOT / "train_configs" / "grpo_tiny_cpu.yaml"),
                            [*overrides, f"run.output_dir={out_dir}-resumed", f"train.resume={out_dir}/checkpoint-1"])
        resumed = grpo.train_grpo(again)
        if state.is_main_process:
            report["resumed_losses"] = resumed.losses
    if state.is_main_process:
        (Path(out_dir) / "grpo_report.json").write_text(json.dumps(report, indent=1))
    dist.barrier()


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    _driver(*sys.argv[1:])
