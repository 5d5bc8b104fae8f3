"""GRPO after SFT against more SFT, on the task whose label only the media carry (emollm.testing.media_task).

    python benchmarks/grpo_vs_sft.py                              # tiny local LLaMA, minutes on 2 cores
    python benchmarks/grpo_vs_sft.py --sft-steps 20 --steps 30 --seed 1 --out runs/grpo_vs_sft
    python benchmarks/grpo_vs_sft.py --backbone smollm2 --sft-steps 10 --steps 30   # the real SmolLM2-135M

An under-trained SFT run (``--sft-steps`` of the tiny recipe) is continued two ways on the same budget
of optimizer steps (``--steps``) and prompts per step: ``train.stage=grpo`` (G sampled answers per
prompt, rewards ``format`` + ``accuracy``, KL to the SFT run) and ``train.stage=2`` (more supervised
steps on the same train split). Each run dir is scored as a user scores it: ``emollm predict --split
test`` and ``emollm evaluate`` on the held-out clips (UAR, WAR). Written: ``grpo_reward.png`` (the GRPO
run's mean reward per step, and per reward), and last one JSON line with the UARs of the SFT start,
the GRPO run and the SFT continuation, the reward at the start and the end, and each run's seconds.

The tiny backbone's frozen output layer is random with small weights: its logits stay nearly flat, so
sampling at temperature 1 gives random tokens that never name a label (no reward to learn from; measured:
the reward stayed ~0.1 and the UAR fell). Its default temperature is 0.1, which samples around the argmax
SFT moved; a real backbone (``--backbone smollm2`` or a path) samples at 1.0, as R1-Omni does.

The seconds are one timed run each (context, not a comparison: no ratio is claimed); the protocol
header (threads, OMP_WAIT_POLICY) is printed first.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import protocol  # noqa: E402


def _score(run_dir: Path, task, config: Path, work: Path, name: str) -> dict:
    from emollm.errors import EmollmError
    from emollm.testing.media_task import TEST_SPLIT, _entry, _read_metrics

    preds, eval_dir = work / f"predictions_{name}.jsonl", work / f"eval_{name}"
    preds.unlink(missing_ok=True)
    _entry(["emollm", "predict", "--model", str(run_dir), str(task.dataset), "--split", TEST_SPLIT, "--task",
            "emotion", "--out", str(preds)], subprocess_run=False, repo=ROOT)
    try:
        _entry(["emollm", "evaluate", "--predictions", str(preds), "--out", str(eval_dir), "--config", str(config),
                "--no-plots"], subprocess_run=False, repo=ROOT)
    except EmollmError:  # evaluate refuses when no answer names a label at all: every answer is wrong
        return {"uar": 0.0, "war": 0.0, "invalid_rate": 1.0, "predicted": {}}
    return _read_metrics(eval_dir)


def _train(config: Path, overrides: list[str]) -> float:
    from emollm import config as cfglib
    from emollm.training import grpo, loop

    cfg = cfglib.load(config, overrides)
    t0 = time.perf_counter()
    (grpo.train_grpo if cfg.train.stage == "grpo" else loop.train)(cfg)
    return time.perf_counter() - t0


def _plot(rows: list[dict], path: Path, backbone: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, [r["reward"] for r in rows], label="reward (weighted sum)", lw=2)
    for key in sorted(k for k in rows[0] if k.startswith("reward_")):
        ax.plot(steps, [r[key] for r in rows], label=key, lw=1, alpha=0.8)
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("mean reward")
    ax.set_title(f"GRPO after SFT on the media task ({backbone})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sft-steps", type=int, default=20, help="steps of the under-trained SFT start (default: 20)")
    parser.add_argument("--steps", type=int, default=30, help="steps of each continuation (default: 30)")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per step, both continuations (default: 8)")
    parser.add_argument("--generations", type=int, default=4, help="GRPO: answers per prompt (default: 4)")
    parser.add_argument("--backbone", default="tiny",
                        help="tiny (the tiny local LLaMA), smollm2 (the real SmolLM2-135M-Instruct) or a path")
    parser.add_argument("--temperature", type=float, default=None,
                        help="GRPO: sampling temperature (default: 0.1 on the tiny backbone, else 1.0)")
    parser.add_argument("--beta", type=float, default=0.04, help="GRPO: KL coefficient (default: 0.04)")
    parser.add_argument("--lr", type=float, default=1e-3, help="both continuations' lr and projector lr (default: 1e-3)")
    parser.add_argument("--clips", type=int, default=224)
    parser.add_argument("--test", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="work dir to keep (default: a temporary one)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    print(protocol.header(protocol.setup_threads(args.threads)), flush=True)
    from emollm.testing.media_task import RECIPES, resolve_backbone, write_config, write_media_task

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.out or tmp)
        work.mkdir(parents=True, exist_ok=True)
        path, kind = resolve_backbone(args.backbone)
        recipe = RECIPES[kind]
        if args.temperature is None:
            args.temperature = 0.1 if kind == "tiny" else 1.0
        lr = args.lr
        task = write_media_task(work / "data", clips=args.clips, n_test=args.test, seed=args.seed)
        sft_dir = work / "sft"
        config = write_config(work / "config.yaml", task, path, sft_dir, recipe=recipe, steps=args.sft_steps,
                              seed=args.seed)
        seconds = {"sft_start": _train(config, [])}
        result = {"sft_start": _score(sft_dir, task, config, work, "sft_start")}
        print(f"SFT start ({args.sft_steps} steps): UAR {result['sft_start']['uar']:.3f}", flush=True)
        common = [f"train.init_from={sft_dir}", f"train.max_steps={args.steps}", f"train.lr={lr}",
                  f"train.projector_lr={lr}", f"train.per_device_batch_size={args.batch_size}", "train.warmup_ratio=0",
                  "train.lr_scheduler=constant", "train.logging_steps=1", f"train.save_steps={args.steps + 1}"]
        grpo_dir, more_dir = work / "grpo", work / "sft_more"
        seconds["grpo"] = _train(config, [*common, "train.stage=grpo", f"run.output_dir={grpo_dir}",
                                          f"train.grpo.num_generations={args.generations}",
                                          f"train.grpo.temperature={args.temperature}", f"train.grpo.beta={args.beta}",
                                          "train.grpo.max_new_tokens=8"])
        seconds["sft_more"] = _train(config, [*common, "train.stage=2", f"run.output_dir={more_dir}"])
        result["grpo"] = _score(grpo_dir, task, config, work, "grpo")
        result["sft_more"] = _score(more_dir, task, config, work, "sft_more")
        rows = [json.loads(x) for x in (grpo_dir / "logs" / "train_log.jsonl").read_text().splitlines()]
        rows = [r for r in rows if r.get("kind") == "train" and "reward" in r]
        png = work / "grpo_reward.png"
        _plot(rows, png, args.backbone)
        k = max(1, len(rows) // 5)  # the reward over the first and the last fifth of the steps
        first, last = rows[:k], rows[-k:]
        summary = {
            "uar_sft_start": round(result["sft_start"]["uar"], 4),
            "uar_grpo": round(result["grpo"]["uar"], 4),
            "uar_sft_more": round(result["sft_more"]["uar"], 4),
            "war_sft_start": round(result["sft_start"]["war"], 4),
            "war_grpo": round(result["grpo"]["war"], 4),
            "war_sft_more": round(result["sft_more"]["war"], 4),
            "reward_first": round(sum(r["reward"] for r in first) / k, 4),
            "reward_last": round(sum(r["reward"] for r in last) / k, 4),
            "accuracy_reward_first": round(sum(r.get("reward_accuracy", 0) for r in first) / k, 4),
            "accuracy_reward_last": round(sum(r.get("reward_accuracy", 0) for r in last) / k, 4),
            "chance": round(task.chance, 4), "backbone": args.backbone, "sft_steps": args.sft_steps, "steps": args.steps,
            "batch_size": args.batch_size, "generations": args.generations, "temperature": args.temperature,
            "beta": args.beta, "lr": lr, "seed": args.seed, "n_train": task.n_train, "n_test": task.n_test,
            "seconds": {k2: round(v, 1) for k2, v in seconds.items()},
            "png": str(png) if args.out else None,
        }  # fmt: skip
        print(f"GRPO ({args.steps} steps): UAR {summary['uar_grpo']:.3f}, reward {summary['reward_first']:.3f} -> "
              f"{summary['reward_last']:.3f}; more SFT ({args.steps} steps): UAR {summary['uar_sft_more']:.3f}")
        print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
