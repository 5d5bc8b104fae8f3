"""GRPO after SFT against more SFT, on the task whose label only the media carry (emollm.testing.media_task).

    python benchmarks/grpo_vs_sft.py                              # tiny local LLaMA, minutes on 2 cores
    python benchmarks/grpo_vs_sft.py --seeds 0,1,2,3,4,5 --out runs/grpo_vs_sft
    python benchmarks/grpo_vs_sft.py --backbone smollm2 --sft-steps 10 --steps 30   # the real SmolLM2-135M

An under-trained SFT run (``--sft-steps`` of the tiny recipe) is continued two ways on the same budget
of optimizer steps (``--steps``) and prompts per step: ``train.stage=grpo`` (G sampled answers per
prompt, rewards ``format`` + ``accuracy``, KL to the SFT run) and ``train.stage=2`` (more supervised
steps on the same train split). Each run dir is scored as a user scores it: ``emollm predict --split
test`` and ``emollm evaluate`` on the held-out clips (UAR, WAR), an unparsable answer counted wrong
(``evaluate.fallback_label: null``: with the task's ``neutral`` fallback, a model that babbles on neutral
clips would score on them). Both continuations also evaluate the held-out clips every ``--eval-every``
steps (``train.eval_steps``: the loop's own greedy evaluation), which gives the UAR curve during GRPO.
Written per seed: ``seed<k>/grpo_reward.png`` (the GRPO run's mean reward per step and per reward, and
both continuations' held-out UAR), a JSON line with the UARs of the SFT start, the GRPO run and the SFT
continuation, the curves, the reward at the start and the end and each run's seconds; with several
``--seeds``, last a JSON line that counts the seeds where GRPO raised the held-out UAR.

The tiny backbone's frozen output layer is random with small weights: its logits stay nearly flat, so
sampling at temperature 1 gives random tokens that never name a label (no reward to learn from; measured:
the reward stayed ~0.1 and the UAR fell). Its default temperature is 0.3: the first token is mostly a
label SFT moved up, the rest still junk (``happy ra h ras fear happy``), which the accuracy reward's
last-word parse scores; 0.1 gave groups of identical answers (nothing to compare) after a collapsed SFT
start. A real backbone (``--backbone smollm2`` or a path) samples well-formed answers at 1.0, as R1-Omni.

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


def _rows(run_dir: Path, kind: str) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "logs" / "train_log.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("kind") == kind]


def _uar_curve(run_dir: Path, start: float) -> list[list[float]]:
    """``[[step, held-out UAR], ...]`` from the loop's evaluations, step 0 being the SFT start."""
    return [[0, round(start, 4)]] + [[r["step"], round(r.get("eval_uar", 0.0), 4)] for r in _rows(run_dir, "eval")]


def _plot(rows: list[dict], curves: dict[str, list], chance: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax.plot(steps, [r["reward"] for r in rows], label="reward (weighted sum)", lw=2)
    for key in sorted(k for k in rows[0] if k.startswith("reward_")):
        ax.plot(steps, [r[key] for r in rows], label=key, lw=1, alpha=0.8)
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("mean reward of the sampled answers")
    ax.legend(fontsize=8)
    for name, curve in curves.items():
        bx.plot([c[0] for c in curve], [c[1] for c in curve], marker="o", label=name)
    bx.axhline(chance, color="grey", ls=":", lw=1, label="chance")
    bx.set_ylim(0, 1.05)
    bx.set_xlabel("steps after the SFT start")
    bx.set_ylabel("held-out UAR (greedy)")
    bx.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_seed(args, seed: int, work: Path) -> dict:
    import yaml

    from emollm.testing.media_task import RECIPES, resolve_backbone, write_config, write_media_task

    path, kind = resolve_backbone(args.backbone)
    recipe = RECIPES[kind]
    temperature = args.temperature if args.temperature is not None else (0.3 if kind == "tiny" else 1.0)
    lr = args.lr
    rewards = ", ".join(f"{k.strip()}: {float(v)}" for k, v in (x.split("=") for x in args.rewards.split(",")))
    task = write_media_task(work / "data", clips=args.clips, n_test=args.test, seed=seed)
    sft_dir = work / "sft"
    config = write_config(work / "config.yaml", task, path, sft_dir, recipe=recipe, steps=args.sft_steps, seed=seed)
    written = yaml.safe_load(config.read_text())
    written["evaluate"]["fallback_label"] = None  # an unparsable answer is wrong, not "neutral"
    config.write_text(yaml.safe_dump(written, sort_keys=False))
    seconds = {"sft_start": _train(config, [])}
    result = {"sft_start": _score(sft_dir, task, config, work, "sft_start")}
    print(f"seed {seed}: SFT start ({args.sft_steps} steps): UAR {result['sft_start']['uar']:.3f}", flush=True)
    common = [f"train.init_from={sft_dir}", f"train.max_steps={args.steps}", f"train.lr={lr}",
              f"train.projector_lr={lr}", f"train.per_device_batch_size={args.batch_size}", "train.warmup_ratio=0",
              "train.lr_scheduler=constant", "train.logging_steps=1", f"train.save_steps={args.steps + 1}",
              f"train.eval_steps={args.eval_every}", "train.eval_loss=false", "train.lora.dropout=0.0"]
    grpo_dir, more_dir = work / "grpo", work / "sft_more"
    seconds["grpo"] = _train(config, [*common, "train.stage=grpo", f"run.output_dir={grpo_dir}",
                                      f"train.grpo.num_generations={args.generations}",
                                      f"train.grpo.temperature={temperature}", f"train.grpo.beta={args.beta}",
                                      "train.grpo.max_new_tokens=8", f"train.grpo.rewards={{{rewards}}}"])
    seconds["sft_more"] = _train(config, [*common, "train.stage=2", f"run.output_dir={more_dir}"])
    result["grpo"] = _score(grpo_dir, task, config, work, "grpo")
    result["sft_more"] = _score(more_dir, task, config, work, "sft_more")
    rows = [r for r in _rows(grpo_dir, "train") if "reward" in r]
    start = result["sft_start"]["uar"]
    curves = {"GRPO": _uar_curve(grpo_dir, start), "more SFT": _uar_curve(more_dir, start)}
    png = work / "grpo_reward.png"
    _plot(rows, curves, task.chance, png,
          f"GRPO after SFT on the media task ({args.backbone}, seed {seed}, T={temperature}, G={args.generations})")
    k = max(1, len(rows) // 5)  # the reward over the first and the last fifth of the steps
    first, last = rows[:k], rows[-k:]
    summary = {
        "seed": seed,
        "uar_sft_start": round(start, 4),
        "uar_grpo": round(result["grpo"]["uar"], 4),
        "uar_sft_more": round(result["sft_more"]["uar"], 4),
        "war_sft_start": round(result["sft_start"]["war"], 4),
        "war_grpo": round(result["grpo"]["war"], 4),
        "war_sft_more": round(result["sft_more"]["war"], 4),
        "invalid_sft_start": round(result["sft_start"]["invalid_rate"], 4),
        "invalid_grpo": round(result["grpo"]["invalid_rate"], 4),
        "uar_curve_grpo": curves["GRPO"], "uar_curve_sft_more": curves["more SFT"],
        "reward_first": round(sum(r["reward"] for r in first) / k, 4),
        "reward_last": round(sum(r["reward"] for r in last) / k, 4),
        "accuracy_reward_first": round(sum(r.get("reward_accuracy", 0) for r in first) / k, 4),
        "accuracy_reward_last": round(sum(r.get("reward_accuracy", 0) for r in last) / k, 4),
        "chance": round(task.chance, 4), "backbone": args.backbone, "sft_steps": args.sft_steps, "steps": args.steps,
        "batch_size": args.batch_size, "generations": args.generations, "temperature": temperature,
        "beta": args.beta, "rewards": args.rewards, "lr": lr, "n_train": task.n_train, "n_test": task.n_test,
        "seconds": {k2: round(v, 1) for k2, v in seconds.items()},
        "png": str(png) if args.out else None,
    }  # fmt: skip
    print(f"seed {seed}: GRPO ({args.steps} steps): UAR {summary['uar_grpo']:.3f} (curve "
          f"{' '.join(f'{u:.2f}' for _, u in curves['GRPO'])}), reward {summary['reward_first']:.3f} -> "
          f"{summary['reward_last']:.3f}; more SFT ({args.steps} steps): UAR {summary['uar_sft_more']:.3f}")
    print(json.dumps(summary), flush=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sft-steps", type=int, default=20, help="steps of the under-trained SFT start (default: 20)")
    parser.add_argument("--steps", type=int, default=30, help="steps of each continuation (default: 30)")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per step, both continuations (default: 8)")
    parser.add_argument("--generations", type=int, default=8, help="GRPO: answers per prompt (default: 8)")
    parser.add_argument("--backbone", default="tiny",
                        help="tiny (the tiny local LLaMA), smollm2 (the real SmolLM2-135M-Instruct) or a path")
    parser.add_argument("--temperature", type=float, default=None,
                        help="GRPO: sampling temperature (default: 0.3 on the tiny backbone, else 1.0)")
    parser.add_argument("--beta", type=float, default=0.04, help="GRPO: KL coefficient (default: 0.04)")
    parser.add_argument("--rewards", default="format=0.5,accuracy=1.0",
                        help="GRPO: name=weight,... of registered rewards (default: format=0.5,accuracy=1.0)")
    parser.add_argument("--lr", type=float, default=2e-4, help="both continuations' lr and projector lr (default: 2e-4)")
    parser.add_argument("--eval-every", type=int, default=10, help="held-out UAR every N steps (default: 10)")
    parser.add_argument("--clips", type=int, default=224)
    parser.add_argument("--test", type=int, default=64)
    parser.add_argument("--seeds", default="0", help="comma-separated seeds, one task + SFT start each (default: 0)")
    parser.add_argument("--out", default=None, help="work dir to keep (default: a temporary one)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    print(protocol.header(protocol.setup_threads(args.threads)), flush=True)
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp)
        summaries = []
        for seed in seeds:
            work = root / f"seed{seed}"
            work.mkdir(parents=True, exist_ok=True)
            summaries.append(run_seed(args, seed, work))
    if len(summaries) > 1:
        rose = [s["seed"] for s in summaries if s["uar_grpo"] > s["uar_sft_start"]]
        print(json.dumps({"seeds": seeds, "grpo_uar_rose": len(rose), "of": len(summaries),
                          "mean_uar_sft_start": round(sum(s["uar_sft_start"] for s in summaries) / len(summaries), 4),
                          "mean_uar_grpo": round(sum(s["uar_grpo"] for s in summaries) / len(summaries), 4),
                          "mean_uar_sft_more": round(sum(s["uar_sft_more"] for s in summaries) / len(summaries), 4),
                          "reward_climbed": sum(s["reward_last"] > s["reward_first"] for s in summaries)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
