"""One training step: emollm vs. a bare ``AutoModelForCausalLM`` + peft LoRA on identical token batches.

    python benchmarks/train_step.py [--steps 25] [--sizes large,smollm2] [--threads N]

Sizes: ``tiny`` (the tiny test backbone), ``mid`` (hidden 512, 4 layers), ``large`` (hidden 1024, 8
layers; random weights, built from the tiny config) and ``smollm2`` (the real SmolLM2-135M-Instruct:
hidden 576, 30 layers, vocabulary 49k, from ``emollm.real_models``). Both sides get batches of the
same shape: the emollm batch comes from the tiny built dataset (media placeholders included, i.e.
media tokens count as tokens), the bare model gets random token ids of the same (batch, length) with
the same attention mask and target positions. The emollm side is ``loop.train``'s own micro-batch
(``loop.micro_batch_losses``: forward, loss per target token; backward; ``loop.make_optimizer``'s
AdamW step); the bare side is what transformers' Trainer does: the backbone's own loss and its
default fused AdamW. Both train the same LoRA (r, alpha, targets); emollm additionally trains its
media modules (projectors, AU encoder) -- that is the overhead measured. Timed with the shared
protocol (benchmarks/protocol.py): the two sides' steps interleaved in a rotating order, warm-ups
discarded, ``--steps`` rounds; reported: median step time of each [min-max] and the median of the
per-round ratios with its min, max and IQR (target <= 1.05 at large and smollm2), plus the real-token
fraction of length-grouped batches (``LengthGroupedBatchSampler``) on a synthetic length mix (target
>= 95 %). On CUDA also tokens/s and MFU of a 7B-shaped LLaMA backbone built from config with random
weights (no download); on CPU MFU is not meaningful and is skipped.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # the shared protocol, also when loaded by path (tests)

import protocol  # noqa: E402

SIZES = {"tiny": None, "mid": {"hidden_size": 512, "num_hidden_layers": 4, "num_attention_heads": 8,
                               "num_key_value_heads": 8, "head_dim": 64, "intermediate_size": 1376},
         # the media modules' fixed cost shrinks against the backbone as it grows: the trend toward 7B
         "large": {"hidden_size": 1024, "num_hidden_layers": 8, "num_attention_heads": 16,
                   "num_key_value_heads": 16, "head_dim": 64, "intermediate_size": 2752},
         # the real SmolLM2-135M-Instruct (hidden 576, 30 layers, vocab 49k) from emollm.real_models
         "smollm2": "smollm2-135m-instruct"}
#: wall: elapsed time (what a run costs); cpu: this process's CPU time, which other processes on a shared
#: machine disturb far less (use it to compare the two sides there, not for absolute step times)
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
#: chat template per size (None: guessed from the tokenizer, as the tiny backbone's configs do)
TEMPLATES = {"smollm2": "smollm2"}


def _backbone_dir(size: str, work: Path) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM

    from emollm.testing.tiny import build_tiny_models

    build_tiny_models()
    from emollm.config import load

    tiny = Path(load("tiny_cpu").model.backbone.name_or_path).expanduser()
    if SIZES[size] is None:
        return tiny
    if isinstance(SIZES[size], str):  # a real model, converted once into the emollm cache
        from emollm import real_models

        return real_models.fetch([SIZES[size]])[0]
    out = work / f"backbone_{size}"
    if not out.is_dir():
        cfg = AutoConfig.from_pretrained(tiny)
        for k, v in SIZES[size].items():
            setattr(cfg, k, v)
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(cfg).save_pretrained(out)
        for f in tiny.iterdir():
            if f.name.startswith("tokenizer") or f.name in ("generation_config.json", "emollm-fixture.json"):
                shutil.copy(f, out / f.name)
    return out


def compare(size: str, dataset_dir: Path, split: str, work: Path, steps: int, batch_size: int = 2,
            warmup: int = protocol.WARMUP, clock: str = "wall", stop: dict | None = None) -> dict:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from emollm import config as cfglib
    from emollm.testing.datasets import FAST
    from emollm.training import loop
    from emollm.training.data import EmotionCollator

    backbone = _backbone_dir(size, work)
    cfg = cfglib.load("tiny_cpu", [*FAST, f"model.backbone.name_or_path={backbone}", f"data.dataset_dir={dataset_dir}",
                                   f"data.train_split={split}", "train.tasks=[emotion,reason]", "train.lora.dropout=0.0",
                                   *([f"model.backbone.template={TEMPLATES[size]}"] if size in TEMPLATES else [])])
    torch.manual_seed(0)
    model, processor = loop.build_model(cfg)
    ds = loop._dataset(cfg, model, processor)
    collator = EmotionCollator(processor, model.config.modalities)
    batch = collator([ds[i % len(ds)] for i in range(batch_size)])
    inputs = {k: v for k, v in batch.items() if k not in ("ids", "labels")}
    labels = batch["labels"]
    n_targets = loop.target_tokens(labels)
    opt = loop.make_optimizer(model, cfg)  # what loop.train steps with

    def emollm_step():  # loop.train's micro-batch on one process: its forward + loss, backward, optimizer step
        loss_sum = loop.micro_batch_losses(model, inputs, labels).sum()
        (loss_sum / n_targets).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    lora = model.language_model.peft_config["default"]
    bare = AutoModelForCausalLM.from_pretrained(backbone, dtype=torch.float32, attn_implementation="sdpa")
    bare = get_peft_model(bare, LoraConfig(r=lora.r, lora_alpha=lora.lora_alpha, lora_dropout=0.0,
                                           target_modules=sorted(lora.target_modules), task_type="CAUSAL_LM"))
    bare.train()
    ids = torch.randint(3, bare.config.vocab_size, inputs["input_ids"].shape)
    mask = inputs["attention_mask"]
    bare_labels = ids.masked_fill(labels == -100, -100)
    # transformers Trainer's default optimizer (adamw_torch_fused), as a researcher's HF + peft run has it
    bare_opt = torch.optim.AdamW([p for p in bare.parameters() if p.requires_grad], lr=1e-4, fused=True)

    def bare_step():
        loss = bare(input_ids=ids, attention_mask=mask, labels=bare_labels).loss
        loss.backward()
        bare_opt.step()
        bare_opt.zero_grad(set_to_none=True)

    res = protocol.compare({"emollm": emollm_step, "bare": bare_step}, warmup=warmup, repeats=steps, clock=CLOCKS[clock],
                           **(stop or {}))
    e, b, ratio = res["sides"]["emollm"], res["sides"]["bare"], res["ratios"]["emollm/bare"]
    groups = model.trainable_parameters_by_group()
    return {"size": size, "hidden": bare.config.hidden_size, "layers": bare.config.num_hidden_layers,
            "batch": list(ids.shape), "tokens": int(mask.sum()), "media_params": groups["media"],
            "lora_params": groups["lora"], "emollm_step_s": e["median"], "bare_step_s": b["median"],
            "ratio": ratio["median"], "ratio_min": ratio["min"], "ratio_max": ratio["max"], "ratio_iqr": ratio["iqr"],
            "ratio_ci_half": ratio["ci_half"], "ci_reached": res["ci_reached"],
            "emollm_step_range_s": [e["min"], e["max"]], "bare_step_range_s": [b["min"], b["max"]],
            "target_tokens": n_targets, "rounds": res["repeats"], "warmup": warmup, "clock": clock}


def real_token_fraction(batch_size: int = 8, n: int = 4000, seed: int = 0) -> dict:
    from emollm.training.data import LengthGroupedBatchSampler

    g = torch.Generator().manual_seed(seed)
    # prompt + media spans (~100-200 tokens) + a short label or a reasoning answer (lognormal tail)
    lengths = (120 + torch.randint(0, 80, (n,), generator=g)
               + torch.exp(torch.randn(n, generator=g) * 0.8 + 4.0).long()).tolist()

    def frac(batches):
        real = sum(lengths[i] for b in batches for i in b)
        padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
        return real / padded

    sampler = LengthGroupedBatchSampler(lengths, batch_size, seed=seed)
    grouped = frac(list(sampler))
    perm = torch.randperm(n, generator=g).tolist()
    shuffled = frac([perm[i:i + batch_size] for i in range(0, n, batch_size)])
    return {"samples": n, "batch_size": batch_size, "grouped": grouped, "random": shuffled}


def cuda_mfu(steps: int, batch: int = 4, seq: int = 2048) -> dict:
    """Bare 7B-shaped LLaMA (random weights, bf16, SDPA) + LoRA r=8 on q/k/v/o/gate/up/down."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096)
    cfg._attn_implementation = "sdpa"
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, task_type="CAUSAL_LM",
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), device="cuda")

    def step():
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    t = protocol.time_one(step, repeats=steps)["median"]
    n_params = sum(p.numel() for p in model.parameters())
    tokens = batch * seq
    # frozen weights: forward 2N + input-grad backward 2N (no weight grads), + recompute 2N (checkpointing,
    # not counted: MFU counts useful model FLOPs); attention 4*L*s*h per token fwd, x2 for its backward.
    flops_per_token = 4 * n_params + 3 * 4 * cfg.num_hidden_layers * seq * cfg.hidden_size
    achieved = flops_per_token * tokens / t
    peak = 989e12  # H100 SXM dense bf16
    return {"step_s": t, "tokens_per_s": tokens / t, "tflops": achieved / 1e12, "mfu": achieved / peak,
            "params": n_params, "device": torch.cuda.get_device_name()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=25, help="timed rounds (one step of each side per round)")
    ap.add_argument("--warmup", type=int, default=protocol.WARMUP, help="rounds run first and discarded")
    ap.add_argument("--sizes", default="large,smollm2", help=f"comma-separated, of {', '.join(SIZES)}")
    ap.add_argument("--threads", type=int, default=None, help="torch / OpenMP threads (default: torch's)")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                    help="wall (default) or cpu: process CPU time, steadier on a machine others share")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    protocol.add_stopping_arguments(ap)
    args = ap.parse_args(argv)
    info = protocol.setup_threads(args.threads)
    from emollm.testing.datasets import build_tiny_training_dataset
    from emollm.testing.samples import sample_media_dir

    report: dict = {"device": "cuda" if torch.cuda.is_available() else "cpu", "threads": info["threads"],
                    "protocol": info}
    with tempfile.TemporaryDirectory() as tmp:
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):
            dataset_dir, split = build_tiny_training_dataset(sample_media_dir(), Path(tmp))
        report["step"] = [compare(s, dataset_dir, split, Path(tmp), args.steps, warmup=args.warmup, clock=args.clock,
                                  stop=protocol.stopping(args))
                          for s in args.sizes.split(",")]
    report["real_tokens"] = real_token_fraction()
    report["mfu"] = cuda_mfu(args.steps) if torch.cuda.is_available() else "needs CUDA (skipped on CPU)"
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"device {report['device']} ({report['threads']} threads)")
    print(protocol.header(info))
    for r in report["step"]:
        (e0, e1), (b0, b1) = r["emollm_step_range_s"], r["bare_step_range_s"]
        print(f"{r['size']:>5} (hidden {r['hidden']}, {r['layers']} layers, batch {r['batch']}, {r['tokens']} real tokens, {r['target_tokens']} targets): "
              f"emollm {r['emollm_step_s'] * 1e3:.1f} ms [{e0 * 1e3:.1f}-{e1 * 1e3:.1f}]  "
              f"bare+LoRA {r['bare_step_s'] * 1e3:.1f} ms [{b0 * 1e3:.1f}-{b1 * 1e3:.1f}]  "
              f"ratio {r['ratio']:.3f} [{r['ratio_min']:.3f}-{r['ratio_max']:.3f}, IQR {r['ratio_iqr']:.3f}, "
              f"95% CI +-{r['ratio_ci_half']:.3f}, {r['rounds']} rounds"
              f"{protocol.ci_note(r['ci_reached'])}, "
              f"{r['clock']} clock]  (media params {r['media_params']:,}, LoRA {r['lora_params']:,})")
    rt = report["real_tokens"]
    print(f"real-token fraction, batch {rt['batch_size']}, {rt['samples']} samples: length-grouped "
          f"{100 * rt['grouped']:.1f}%  random {100 * rt['random']:.1f}%")
    if isinstance(report["mfu"], dict):
        m = report["mfu"]
        print(f"7B-shaped LLaMA + LoRA on {m['device']}: {m['tokens_per_s']:.0f} tokens/s, {m['tflops']:.0f} TFLOP/s, "
              f"MFU {100 * m['mfu']:.1f}%")
    else:
        print(f"MFU: {report['mfu']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
