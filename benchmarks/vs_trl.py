"""emollm's training loop against TRL's SFTTrainer: same backbone, same samples, same LoRA, side by side.

    python benchmarks/vs_trl.py                                # SmolLM2-135M-Instruct, 30 steps of 4, 2 threads
    python benchmarks/vs_trl.py --rounds 2                     # two lockstep pairs (the order rotated)
    python benchmarks/vs_trl.py --until-ci 0.015               # pairs until the ratio's 95 % CI is +-0.015
    python benchmarks/vs_trl.py --backbone tiny --steps 4      # the tiny local LLaMA (seconds)
    python benchmarks/vs_trl.py --device cuda --threads 0      # on a GPU (threads 0: torch's default)
    python benchmarks/vs_trl.py --device cuda --threads 0 --backbone 7b --dtype bfloat16   # 7B-shaped, bf16

**The data.** The media task of ``emollm.testing.media_task`` (built-dataset records + per-frame AU
side files; the label is carried by the AUs alone), its ``train`` split, task ``emotion``.

**emollm** (side A): ``train.py --config CONFIG key=value...`` in its own process, as a user runs it,
with the learned ``au`` encoder (its 4 media tokens per prompt, the AU encoder and projector trained at
``projector_lr``), ``train.logging_steps=1`` (one ``logs/train_log.jsonl`` row per step: its loss), no
evaluation, no intermediate checkpoint. The child is this script (``--child emollm``), which sets the
threads and runs ``train.py`` with ``runpy`` (so peak CUDA memory can be read at exit, and the step
boundaries below are seen); ``train.py`` itself is unchanged.

**TRL** (side B): ``trl.SFTTrainer`` + ``peft.LoraConfig`` in its own process (``--child trl``), on
the SAME token sequences in the SAME batches: before either run, this script builds emollm's training
dataset and length-grouped sampler exactly as ``train.py`` does (``emollm.training.loop``) and writes
each step's samples as emollm's processor encodes them (``input_ids``, and ``labels`` with -100 on
every prompt token: emollm's completion-only loss mask). TRL gets that pre-tokenized dataset
(``input_ids`` + ``labels``, so SFTTrainer trains the same completion-only loss per target token) in
that order (``train_sampling_strategy="sequential"``). emollm's media placeholder tokens are added
tokens TRL's backbone does not have: they are KEPT as positions (same sequence lengths, same attention
cost) as one ordinary token of the base vocabulary, a space (:func:`filler_token`), so TRL trains on
text only.
Same LoRA (r, alpha, dropout, target modules, bias none), AdamW (betas, eps, weight decay 0; TRL's
default fused kernel, ``adamw_torch_fused``), lr,
warmup steps, cosine schedule, grad-norm clip 1.0, batch size, steps, seed, sdpa, and the precision
(``--dtype float32``; ``bfloat16``: bf16 weights and bf16 autocast, emollm's ``train.bf16``, TRL's
``bf16=True``); TRL's own defaults that change the computation are set to emollm's
(``gradient_checkpointing=False``, ``bf16`` as ``--dtype``; TRL defaults both on), no evaluation, no
checkpoint, ``logging_steps=1``.

**Order: lockstep, step by step.** Both children run at once but take turns, so the two sides are
interleaved as the protocol asks (A B, B A, A B, ...) at the grain of one optimizer step, seconds apart,
instead of whole runs minutes apart (whose step times moved 20 % between runs on a shared VM). A
:class:`Conductor` in this process holds a pair of pipes per child and gives one child a turn at a time:
the set-up (start-up, model load, up to the first step), then each step, then the end (final save, exit).
A child's :class:`Baton` reports the end of its turn and blocks until its next one; a step's time is
taken inside the turn (emollm: from the end of the previous step's log row to the end of this one's;
TRL: from one ``on_step_end`` to the next, its log included), so no waiting is ever counted. Step k
carries the same samples on both sides, so TRL's time for step k / emollm's is the samples/s (and
tokens/s) ratio of that step; the ratio printed is the median of those per-step ratios over the steady
steps of every round, with its 95 % CI (``protocol.median_ci95``). ``--rounds N`` runs N lockstep pairs
(the order rotated between them); ``--until-ci H`` adds pairs until the CI's half-width is <= H. Each step
is timed on two clocks, wall and the child's CPU seconds (all its threads; what the VM's host takes from
it is not in them): ``--clock`` picks the headline's (default wall) and the other is printed beside it.

**Measured, per run.** Steady-state samples/s and tokens/s (real tokens: the sequences' lengths, media
positions included; the same count both sides) over the steps after ``--warmup-steps``; the loop's
time (first step to last); the process's wall time (start-up, model load and final save included, the
child's waits for its turn left out); peak memory: the child's max RSS (``os.wait4`` rusage of that one
process) and, on CUDA, ``torch.cuda.max_memory_allocated``; **time to a common loss**: each side's loss
smoothed by a trailing mean over ``--smooth`` steps; the target is the higher of the two sides' final
smoothed losses (a level both reach); a side's time to it is its loop time through the first step whose
smoothed loss is at or below it. emollm also sees the media (which carry the label), TRL does not, so
emollm's loss may go lower: the common target is the level both reach. Ratios are emollm / TRL
(throughput > 1: emollm faster; time to loss < 1: emollm faster).

**LLaMA-Factory** (``--llamafactory``: a folder holding an unpacked llamafactory wheel, or installed):
its SFT trainer is imported in a child process with ``DISABLE_VERSION_CHECK=1``; when that fails the
reason is printed and the side is skipped (0.9.5 pins transformers<=5.6, peft<=0.20, trl<=0.24 and
imports ``trl.AutoModelForCausalLMWithValueHead``, gone in trl 1.x; never installed over ours).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import protocol  # noqa: E402  (standard library only: the children import it before their turn too)

#: The LoRA and schedule both sides use (``real``: the media task's recipe for SmolLM2; ``tiny``: its tiny one).
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SIDES = ("emollm", "trl")
DTYPES = ("float32", "bfloat16")  # bfloat16: bf16 weights + bf16 autocast on both sides
#: The clocks a step is timed on, and the report key of each: ``wall`` (what a user waits), ``cpu`` (the
#: process's CPU seconds, all threads: steadier on a VM whose host takes time from it).
CLOCKS = {"wall": "step_s", "cpu": "step_cpu_s"}


# ------------------------------------------------------------------------------------------ setup
def prepare(work: str | os.PathLike, *, backbone: str | None = None, steps: int = 30, batch_size: int = 4,
            clips: int | None = None, seed: int = 0, lr: float | None = None, dtype: str = "float32") -> dict[str, Any]:
    """Write the data, the emollm config, and the per-step token sequences; returns the run spec
    (``spec.json``: what both sides train with). ``backbone`` may name one of infer_latency's sized shapes
    (``mid``, ``7b``): that shape with random weights in ``dtype``, saved under ``work`` once."""
    from emollm.testing.media_task import RECIPES, resolve_backbone, write_config, write_media_task

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: one of {', '.join(DTYPES)}")
    if backbone in sized_shapes():
        import torch
        from infer_latency import sized_backbone_dir

        tiny, _ = resolve_backbone("tiny")
        path = str(sized_backbone_dir(tiny, sized_shapes()[backbone], work / f"backbone_{backbone}_{dtype}",
                                      dtype=getattr(torch, dtype)))
        kind = "real"  # the real backbone's recipe (lr, LoRA r 16) on a random-weight backbone of that shape
    else:
        path, kind = resolve_backbone(backbone)
    recipe = {**RECIPES[kind], "batch_size": batch_size, "lora_targets": TARGETS}
    if lr is not None:
        recipe.update(lr=lr, projector_lr=max(lr, recipe["projector_lr"]))
    # enough train clips that the measured steps see few repeats (a quarter more for the test split)
    clips = clips or max(16, -(-steps * batch_size * 5 // 4 // 4) * 4)
    task = write_media_task(work / "data", clips=clips, seed=seed)
    config = write_config(work / "config.yaml", task, path, work / "run", recipe=recipe, steps=steps, seed=seed)
    spec = {
        "backbone": path, "recipe": kind, "config": str(config), "steps": steps, "batch_size": batch_size,
        "seed": seed, "lr": recipe["lr"], "projector_lr": recipe["projector_lr"],
        "warmup_steps": _warmup_steps(recipe["warmup_ratio"], steps), "lr_scheduler": "cosine",
        "weight_decay": 0.0, "max_grad_norm": 1.0,
        "lora": {"r": recipe["lora_r"], "alpha": recipe["lora_alpha"], "dropout": recipe["lora_dropout"],
                 "target_modules": TARGETS},
        "n_train": task.n_train, "dtype": dtype,
    }  # fmt: skip
    spec.update(export_sequences(spec, work / "sequences.jsonl"))
    (work / "spec.json").write_text(json.dumps(spec, indent=1), encoding="utf-8")
    return spec


def _warmup_steps(ratio: float, steps: int) -> int:
    import math

    return math.ceil(ratio * steps)  # emollm.training.loop.train's rule


def emollm_overrides(spec: dict[str, Any], run_dir: str | os.PathLike) -> list[str]:
    """The ``key=value`` overrides both the sequence export and the emollm run use. ``bfloat16``: the
    backbone's weights in bf16 and bf16 autocast (``train.bf16``), as TRL's side loads and runs it."""
    dtype = spec.get("dtype", "float32")
    return [f"run.output_dir={run_dir}", "train.logging_steps=1", f"train.save_steps={spec['steps'] + 1}",
            f"train.max_steps={spec['steps']}", f"train.per_device_batch_size={spec['batch_size']}",
            f"model.backbone.torch_dtype={dtype}", f"train.bf16={str(dtype == 'bfloat16').lower()}"]


def sized_shapes() -> dict[str, dict[str, Any]]:
    """infer_latency's backbone shapes (built from the tiny LLaMA's config, random weights)."""
    from infer_latency import BACKBONES

    return BACKBONES


def filler_token(tokenizer: Any, pad_id: int) -> int:
    """The base-vocabulary token that stands in for emollm's media placeholders on the TRL side: a
    space, an ordinary neutral token (a control token such as end-of-text there would tell the model
    the text ended); never the pad token. Falls back to unk / id 0 when a space is not one token."""
    ids = tokenizer.encode(" ", add_special_tokens=False)
    if len(ids) == 1 and ids[0] != pad_id and ids[0] not in set(tokenizer.all_special_ids):
        return int(ids[0])
    unk = tokenizer.unk_token_id
    return int(unk) if unk is not None and unk != pad_id else (1 if pad_id == 0 else 0)


def export_sequences(spec: dict[str, Any], out: Path) -> dict[str, Any]:
    """Each step's samples as ``train.py`` builds them (its dataset, processor, length-grouped sampler,
    epoch after epoch): one JSON line per sample, in step order, with ``input_ids`` as emollm sees them
    (``emollm_ids``), the TRL copy with media tokens replaced (``input_ids``) and ``labels``."""
    from emollm import config as cfglib
    from emollm.modeling.factory import build_model_and_processor
    from emollm.training.data import LengthGroupedBatchSampler
    from emollm.training.loop import _dataset

    cfg = cfglib.load(spec["config"], emollm_overrides(spec, Path(out).parent / "run_export"))
    model, processor = build_model_and_processor(cfg)
    ds = _dataset(cfg, model, processor)  # the dataset train.py trains on
    media_ids = set(processor.media_token_ids.values())
    filler = filler_token(processor.tokenizer, processor.pad_token_id)
    vocab = model.language_model.get_input_embeddings().num_embeddings - processor.num_added_tokens
    del model
    sampler = LengthGroupedBatchSampler(ds.lengths, spec["batch_size"], seed=cfg.run.seed)
    rows: list[dict[str, Any]] = []
    epoch, step = 0, 0
    while step < spec["steps"]:
        sampler.set_epoch(epoch)
        for batch in sampler:
            for i in batch:
                item = ds[i]
                ids = list(item["input_ids"])
                rows.append({"step": step + 1, "id": item["id"], "emollm_ids": ids,
                             "input_ids": [filler if t in media_ids else t for t in ids], "labels": list(item["labels"])})
            step += 1
            if step == spec["steps"]:
                break
        epoch += 1
    assert all(t < vocab for r in rows for t in r["input_ids"]), "a TRL token id outside the base vocabulary"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    media_per_sample = [sum(t in media_ids for t in r["emollm_ids"]) for r in rows]
    return {"sequences": str(out), "filler_token": filler, "media_tokens_per_sample": max(media_per_sample),
            "step_tokens": step_counts(rows, "input_ids"), "step_samples": step_counts(rows, None),
            "target_tokens": sum(sum(lab != -100 for lab in r["labels"][1:]) for r in rows)}


def step_counts(rows: list[dict[str, Any]], key: str | None) -> list[int]:
    """Per step: the tokens of its samples (``key``'s lengths), or its sample count (``key`` None)."""
    counts: dict[int, int] = {}
    for r in rows:
        counts[r["step"]] = counts.get(r["step"], 0) + (len(r[key]) if key else 1)
    return [counts[s] for s in sorted(counts)]


# ------------------------------------------------------------------------------------------ lockstep
#: The environment variable that hands a child its two pipe ends: ``"GO_FD,DONE_FD"``.
BATON_ENV = "EMOLLM_VS_TRL_BATON"


class Baton:
    """A child's side of the lockstep: :meth:`handoff` tells the conductor this turn is over and blocks
    until the next one; :meth:`await_turn` only blocks. Without the environment variable (a child run by
    hand, or in-process in a test) both do nothing. ``waited_s`` is the time spent blocked."""

    def __init__(self, fds: str | None = None) -> None:
        fds = os.environ.get(BATON_ENV) if fds is None else fds
        self.go, self.done = (int(x) for x in fds.split(",")) if fds else (None, None)
        self.waited_s = 0.0

    def await_turn(self) -> None:
        if self.go is None:
            return
        t0 = time.perf_counter()
        got = os.read(self.go, 1)
        self.waited_s += time.perf_counter() - t0
        if not got:
            raise SystemExit("vs_trl: the conductor went away")

    def handoff(self) -> None:
        if self.done is None:
            return
        os.write(self.done, b".")
        self.await_turn()


class Conductor:
    """The parent's side: starts each side's command at once and gives them turns, one child at a time.

    Every child takes ``turns`` turns that end in a :meth:`Baton.handoff` (its set-up, then each step),
    then a last one that ends when it exits. In turn k the sides go in ``protocol.order(sides, k +
    offset)``: A B, B A, A B, ... A child that dies or closes its pipe stops the run with its log's tail;
    the others are killed. :meth:`run` returns per side its exit code, wall seconds and rusage."""

    def __init__(self, commands: dict[str, list[str]], logs: dict[str, Path], *, env: dict[str, str] | None = None,
                 turn_timeout_s: float = 3600.0) -> None:
        self.commands, self.logs, self.env, self.timeout = commands, logs, env, turn_timeout_s
        self.turns_taken: list[str] = []  # the order the turns were given in (for the test)

    def run(self, turns: int, *, offset: int = 0) -> dict[str, dict[str, Any]]:
        procs: dict[str, dict[str, Any]] = {}
        try:
            for side, cmd in self.commands.items():
                procs[side] = self._start(side, cmd)
            sides = list(self.commands)
            for k in range(turns):
                for side in protocol.order(sides, k + offset):
                    self.turns_taken.append(side)
                    self._turn(side, procs[side])
            out = {}
            for side in protocol.order(sides, turns + offset):  # the last turn: to the end of the process
                self.turns_taken.append(side)
                out[side] = self._finish(side, procs[side])
            return out
        finally:
            for p in procs.values():
                if p["proc"].poll() is None:
                    p["proc"].kill()
                    p["proc"].wait()
                for fd in (p["go"], p["done"]):
                    try:
                        os.close(fd)
                    except OSError:
                        pass

    def _start(self, side: str, cmd: list[str]) -> dict[str, Any]:
        """The child process, with its pair of pipes and the clock of its whole life."""
        go_r, go_w = os.pipe()
        done_r, done_w = os.pipe()
        env = dict(self.env if self.env is not None else os.environ, **{BATON_ENV: f"{go_r},{done_w}"})
        with open(self.logs[side], "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, pass_fds=(go_r, done_w))
        os.close(go_r)
        os.close(done_w)  # the child's end: EOF here once it exits
        return {"proc": proc, "go": go_w, "done": done_r, "t0": time.perf_counter()}

    def _finish(self, side: str, p: dict[str, Any]) -> dict[str, Any]:
        """The child's last turn, to its exit: its code, its whole life's wall seconds, its rusage."""
        os.write(p["go"], b".")
        _, status, usage = os.wait4(p["proc"].pid, 0)
        p["proc"].returncode = code = os.waitstatus_to_exitcode(status)
        if code != 0:
            raise RuntimeError(self._failure(side, f"exit {code}"))
        return {"returncode": code, "wall_s": time.perf_counter() - p["t0"], "rusage": usage}

    def _turn(self, side: str, p: dict[str, Any]) -> None:
        try:
            os.write(p["go"], b".")
        except BrokenPipeError:
            raise RuntimeError(self._failure(side, "it exited before its turn")) from None
        ready, _, _ = select.select([p["done"]], [], [], self.timeout)
        if not ready:
            raise RuntimeError(self._failure(side, f"no end of its turn within {self.timeout:.0f} s"))
        if not os.read(p["done"], 1):
            p["proc"].wait()
            raise RuntimeError(self._failure(side, f"it exited mid-run (exit {p['proc'].returncode})"))

    def _failure(self, side: str, what: str) -> str:
        tail = self.logs[side].read_text(errors="replace")[-3000:] if self.logs[side].is_file() else ""
        return f"the {side} run failed: {what}; log {self.logs[side]}:\n{tail}"


# ------------------------------------------------------------------------------------------ children
def _threads(n: int) -> dict:
    return protocol.setup_threads(n if n > 0 else None)


def _cuda_peak() -> int | None:
    import torch

    return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None


class StepClock:
    """A child's step times on two clocks: wall (``step_s``) and the process's CPU time, all its threads
    (``step_cpu_s``: time the host's other guests took from the VM is not in it). :meth:`start` at a turn's
    beginning, :meth:`stop` at its step's end."""

    def __init__(self) -> None:
        self.step_s: list[float] = []
        self.step_cpu_s: list[float] = []
        self._t0: tuple[float, float] | None = None

    @property
    def started(self) -> bool:
        return self._t0 is not None

    def start(self) -> float:
        self._t0 = (time.perf_counter(), time.process_time())
        return self._t0[0]

    def stop(self) -> None:
        wall, cpu = self._t0
        self.step_s.append(time.perf_counter() - wall)
        self.step_cpu_s.append(time.process_time() - cpu)

    def report(self) -> dict[str, list[float]]:
        return {"step_s": self.step_s, "step_cpu_s": self.step_cpu_s}


@contextlib.contextmanager
def _emollm_step_clock(baton: Baton) -> Iterator[StepClock]:
    """Step times of ``loop.train``, each turn ending at a step's end: the set-up's turn ends at the first
    micro-batch, a step's at the end of its log row (``train.logging_steps=1``), and the clock restarts
    (the log window's too) when the next turn begins. Yields the :class:`StepClock`; the loop's functions
    are restored after."""
    from emollm.training import loop

    log_window, micro_batch_losses = loop._log_window, loop.micro_batch_losses
    clock = StepClock()

    def first_micro_batch(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if not clock.started:
            baton.handoff()  # the set-up ends here
            clock.start()
        return micro_batch_losses(*args, **kwargs)

    def logged_step(accelerator, window, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        log_window(accelerator, window, *args, **kwargs)
        clock.stop()
        baton.handoff()
        window["t0"] = clock.start()

    loop.micro_batch_losses, loop._log_window = first_micro_batch, logged_step
    try:
        yield clock
    finally:
        loop.micro_batch_losses, loop._log_window = micro_batch_losses, log_window


def child_emollm(spec: dict[str, Any], run_dir: Path, report: Path, *, baton: Baton | None = None) -> int:
    """``train.py --config CONFIG overrides...`` as its own ``__main__`` (the user's command)."""
    import runpy

    baton = baton or Baton("")
    start = time.time()
    sys.argv = [str(ROOT / "train.py"), "--config", spec["config"], *emollm_overrides(spec, run_dir)]
    code = 0
    with _emollm_step_clock(baton) as clock:
        try:
            runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
        except SystemExit as exc:
            code = int(exc.code or 0)
    report.write_text(json.dumps({"cuda_peak_bytes": _cuda_peak(), "started": start, **clock.report(),
                                  "waited_s": baton.waited_s}), encoding="utf-8")
    return code


def child_trl(spec: dict[str, Any], run_dir: Path, report: Path, *, record: bool = False,
              baton: Baton | None = None) -> int:
    """SFTTrainer + peft LoRA on the exported sequences, in their order; writes per-step times and losses."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    baton = baton or Baton("")
    start = time.time()
    rows = [json.loads(line) for line in Path(spec["sequences"]).read_text(encoding="utf-8").splitlines()]
    data = Dataset.from_list([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(spec["backbone"])
    bf16 = spec.get("dtype") == "bfloat16"
    model = AutoModelForCausalLM.from_pretrained(spec["backbone"], dtype=torch.bfloat16 if bf16 else torch.float32,
                                                 attn_implementation="sdpa")
    lora = spec["lora"]
    peft_config = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                             target_modules=list(lora["target_modules"]), bias="none", task_type="CAUSAL_LM")
    args = SFTConfig(
        output_dir=str(run_dir), max_steps=spec["steps"], per_device_train_batch_size=spec["batch_size"],
        gradient_accumulation_steps=1, learning_rate=spec["lr"], lr_scheduler_type=spec["lr_scheduler"],
        warmup_steps=spec["warmup_steps"], weight_decay=spec["weight_decay"], max_grad_norm=spec["max_grad_norm"],
        optim="adamw_torch_fused", seed=spec["seed"], data_seed=spec["seed"], logging_steps=1, save_strategy="no",
        eval_strategy="no", report_to="none", gradient_checkpointing=False, bf16=bf16, fp16=False,
        max_length=None, train_sampling_strategy="sequential", dataloader_num_workers=0, disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
    )  # fmt: skip
    clock = StepClock()

    class Lockstep(TrainerCallback):
        """A step runs from one ``on_step_end`` to the next (the batch fetch, the step, the previous step's
        log row); the turns end there, and the clock restarts when the next turn begins."""

        def on_train_begin(self, *a, **k):  # noqa: ANN002, ANN003, ANN202
            baton.handoff()  # the set-up ends here
            clock.start()

        def on_step_end(self, *a, **k):  # noqa: ANN002, ANN003, ANN202
            clock.stop()
            baton.handoff()
            clock.start()

    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                         peft_config=peft_config, callbacks=[Lockstep()])
    seen: list[list[dict[str, list[int]]]] = []
    if record:  # what the trainer's batches actually hold (the test compares them with emollm's)
        collate = trainer.data_collator

        def recording(examples):  # noqa: ANN001, ANN202
            batch = collate(examples)
            seen.append(unpadded(batch))
            return batch

        trainer.data_collator = recording
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h and "train_runtime" not in h]
    pc = trainer.model.peft_config["default"]
    result = {
        "started": start, **clock.report(), "losses": losses, "waited_s": baton.waited_s,
        "cuda_peak_bytes": _cuda_peak(), "seen": seen if record else None,
        "lora": {"r": pc.r, "alpha": pc.lora_alpha, "dropout": pc.lora_dropout,
                 "target_modules": sorted(pc.target_modules), "bias": pc.bias},
        "trainable": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
    }  # fmt: skip
    report.write_text(json.dumps(result), encoding="utf-8")
    return 0


def unpadded(batch: dict[str, Any]) -> list[dict[str, list[int]]]:
    """A collated batch's rows without their padding: ``[{"input_ids", "labels"}]`` (right padding)."""
    rows = []
    for ids, lab, mask in zip(batch["input_ids"].tolist(), batch["labels"].tolist(), batch["attention_mask"].tolist(),
                              strict=True):
        n = int(sum(mask))
        rows.append({"input_ids": ids[:n], "labels": lab[:n]})
    return rows


def read_emollm_run(run_dir: Path, spec: dict[str, Any], clock: dict[str, list[float]]) -> dict[str, Any]:
    """Per-step losses from ``logs/train_log.jsonl`` (``train.logging_steps=1``), with the step times the
    child's :class:`StepClock` took (``clock``: its report); a step's real-token count is its row's
    tokens_per_s / samples_per_s x its samples (the same window, so no clock enters it)."""
    step_s = clock["step_s"]
    rows = [json.loads(line) for line in (run_dir / "logs" / "train_log.jsonl").read_text(encoding="utf-8").splitlines()]
    rows = [r for r in rows if r.get("kind", "train") == "train"]
    if [r["step"] for r in rows] != list(range(1, spec["steps"] + 1)) or len(step_s) != spec["steps"]:
        raise RuntimeError(f"{run_dir}: expected one log row and one step time per step 1..{spec['steps']}")
    adapter = json.loads((run_dir / "adapter_config.json").read_text()) if (run_dir / "adapter_config.json").is_file() \
        else _find_adapter_config(run_dir)
    return {"losses": [r["loss"] for r in rows], "step_s": list(step_s), "step_cpu_s": list(clock["step_cpu_s"]),
            "step_tokens": [round(n * r["tokens_per_s"] / r["samples_per_s"]) for r, n in zip(rows, spec["step_samples"],
                                                                                               strict=True)],
            "lora": {"r": adapter["r"], "alpha": adapter["lora_alpha"], "dropout": adapter["lora_dropout"],
                     "target_modules": sorted(adapter["target_modules"]), "bias": adapter["bias"]}}


def _find_adapter_config(run_dir: Path) -> dict[str, Any]:
    found = sorted(run_dir.rglob("adapter_config.json"))
    if not found:
        raise RuntimeError(f"{run_dir}: no adapter_config.json (the LoRA the run saved)")
    return json.loads(found[0].read_text())


def run_pair(spec: dict[str, Any], work: Path, tag: str, *, threads: int, device: str, offset: int = 0,
             record: bool = False) -> dict[str, dict[str, Any]]:
    """One run of each side, both children at once in lockstep (:class:`Conductor`); per side its figures
    (losses, step times, memory, wall with the waits for its turn left out)."""
    env = dict(os.environ)
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    commands, logs, reports, run_dirs = {}, {}, {}, {}
    for side in SIDES:
        run_dirs[side], reports[side] = work / f"run_{side}_{tag}", work / f"child_{side}_{tag}.json"
        logs[side] = work / f"child_{side}_{tag}.log"
        reports[side].unlink(missing_ok=True)
        commands[side] = [sys.executable, str(Path(__file__).resolve()), "--child", side, "--spec", str(work / "spec.json"),
                          "--run-dir", str(run_dirs[side]), "--report", str(reports[side]), "--threads", str(threads),
                          *(["--record"] if record and side == "trl" else [])]  # fmt: skip
    ended = Conductor(commands, logs, env=env).run(1 + spec["steps"], offset=offset)  # the set-up, then each step
    out = {}
    for side in SIDES:
        if not reports[side].is_file():
            raise RuntimeError(f"the {side} run wrote no report; log {logs[side]}")
        child = json.loads(reports[side].read_text())
        figures = read_emollm_run(run_dirs[side], spec, child) if side == "emollm" else child
        usage = ended[side]["rusage"]
        maxrss = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)  # Linux: KiB
        out[side] = {**figures, "side": side, "tag": tag, "wall_s": ended[side]["wall_s"] - child["waited_s"],
                     "waited_s": child["waited_s"], "max_rss_bytes": maxrss,
                     "cuda_peak_bytes": child.get("cuda_peak_bytes"), "seen": child.get("seen")}
    return out


# ------------------------------------------------------------------------------------------ figures
def smoothed(losses: list[float], window: int) -> list[float]:
    """Trailing mean over ``window`` steps (fewer at the start)."""
    return [statistics.fmean(losses[max(0, i + 1 - window): i + 1]) for i in range(len(losses))]


def time_to(losses: list[float], step_s: list[float], target: float, window: int) -> tuple[int, float] | None:
    """``(step, loop seconds through it)`` of the first step whose smoothed loss is <= ``target`` (None: never)."""
    elapsed = 0.0
    for step, (s, dt) in enumerate(zip(smoothed(losses, window), step_s, strict=True), 1):
        elapsed += dt
        if s <= target + 1e-12:
            return step, elapsed
    return None


def figures(run: dict[str, Any], spec: dict[str, Any], warmup: int) -> dict[str, Any]:
    steady = slice(min(warmup, len(run["step_s"]) - 1), None)
    secs = sum(run["step_s"][steady])
    return {"samples_per_s": sum(spec["step_samples"][steady]) / secs,
            "tokens_per_s": sum(spec["step_tokens"][steady]) / secs, "loop_s": sum(run["step_s"]),
            "wall_s": run["wall_s"], "max_rss_mib": run["max_rss_bytes"] / 2**20,
            "cuda_peak_mib": None if run.get("cuda_peak_bytes") is None else run["cuda_peak_bytes"] / 2**20,
            "first_loss": run["losses"][0], "final_loss": run["losses"][-1]}


def compare_round(a: dict[str, Any], b: dict[str, Any], spec: dict[str, Any], *, warmup: int,
                  smooth: int) -> dict[str, Any]:
    fa, fb = figures(a, spec, warmup), figures(b, spec, warmup)
    target = max(smoothed(a["losses"], smooth)[-1], smoothed(b["losses"], smooth)[-1])
    for f, run in ((fa, a), (fb, b)):
        hit = time_to(run["losses"], run["step_s"], target, smooth)
        f["steps_to_loss"], f["time_to_loss_s"] = hit if hit else (None, None)
    ta, tb = fa["time_to_loss_s"], fb["time_to_loss_s"]
    steady = slice(min(warmup, len(a["step_s"]) - 1), None)
    return {"emollm": fa, "trl": fb, "target_loss": target,
            # step k holds the same samples on both sides: TRL's time / emollm's is that step's samples/s ratio
            "step_ratios": {clock: [tb_k / ta_k for ta_k, tb_k in zip(a[key][steady], b[key][steady], strict=True)]
                            for clock, key in CLOCKS.items() if key in a and key in b},
            "ratios": {
        "samples_per_s": fa["samples_per_s"] / fb["samples_per_s"],
        "tokens_per_s": fa["tokens_per_s"] / fb["tokens_per_s"],
        "time_to_loss": ta / tb if ta and tb else None,
        "steps_to_loss": fa["steps_to_loss"] / fb["steps_to_loss"] if ta and tb else None,
        "loop_s": fa["loop_s"] / fb["loop_s"], "wall_s": fa["wall_s"] / fb["wall_s"],
        "max_rss": fa["max_rss_mib"] / fb["max_rss_mib"]}}


def _past(deadline: float) -> bool:
    """``--max-minutes``: the stopping rule's cap on adding pairs (a deadline, not a measurement)."""
    return time.perf_counter() >= deadline


def step_ratio_stats(rounds: list[dict[str, Any]], clock: str = "wall") -> dict[str, Any]:
    """The per-step samples/s ratios of every round pooled, on ``clock``: median, 95 % CI, IQR, min, max, n."""
    return protocol.summarize([q for r in rounds for q in r["step_ratios"][clock]])


def llamafactory_status(where: str | None) -> str:
    """Why LLaMA-Factory's SFT trainer runs or not here (imported in a child, never installed)."""
    import importlib.util

    if not where and importlib.util.find_spec("llamafactory") is None:
        return ("skipped: llamafactory is not installed (its 0.9.5 wheel pins transformers<=5.6, peft<=0.20, "
                "trl<=0.24; to try it without installing: pip download --no-deps llamafactory==0.9.5, unzip, "
                "--llamafactory DIR)")
    env = dict(os.environ, DISABLE_VERSION_CHECK="1")
    if where:
        env["PYTHONPATH"] = os.pathsep.join([where, env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", "import llamafactory.train.sft.trainer"], capture_output=True,
                          text=True, env=env)
    if proc.returncode == 0:
        return "importable (not yet run side by side: its CLI needs its own dataset registry)"
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    return f"skipped: its trainer does not import here ({lines[-1] if lines else 'no message'})"


def _mib(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f} MiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default=None,
                        help="'tiny'; 'mid' or '7b' (infer_latency's shapes, random weights, saved under the work dir); "
                             "or an HF folder (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="both sides: float32, or bfloat16 weights with bf16 autocast (default float32)")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps a run (default 30)")
    parser.add_argument("--batch-size", type=int, default=4, help="per-device batch size (default 4)")
    parser.add_argument("--lr", type=float, default=None, help="LoRA lr (default: the media task recipe's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=1,
                        help="lockstep pairs (one run a side each, the order rotated between them; default 1)")
    parser.add_argument("--warmup-steps", type=int, default=3, help="steps left out of the steady-state rates")
    parser.add_argument("--smooth", type=int, default=5, help="trailing window of the smoothed loss (steps)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="the clock of the headline per-step ratio and of --until-ci: wall (default), or cpu "
                             "(process CPU seconds, all threads; the other is printed too)")
    parser.add_argument("--threads", type=int, default=2, help="torch / OMP threads per run (0: torch's default)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--llamafactory", default=None, help="a folder holding an unpacked llamafactory wheel")
    parser.add_argument("--out", default=None, help="work dir to keep (data, sequences, run dirs, child logs)")
    parser.add_argument("--json", default=None, help="write the full result here")
    protocol.add_stopping_arguments(parser)  # --until-ci H: more pairs until the samples/s ratio's CI is +-H
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    parser.add_argument("--report", help=argparse.SUPPRESS)
    parser.add_argument("--record", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if args.child:
        baton = Baton()
        baton.await_turn()  # the set-up is a turn too: no two children load at once
        _threads(args.threads)
        spec = json.loads(Path(args.spec).read_text())
        run = child_emollm if args.child == "emollm" else child_trl
        kwargs = {"record": args.record} if args.child == "trl" else {}
        return run(spec, Path(args.run_dir), Path(args.report), baton=baton, **kwargs)

    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA device here")
    try:
        import trl  # noqa: F401  # optional: the bench extra
    except ImportError:
        print("trl is not installed (pip install -e '.[bench]'): nothing to compare against", file=sys.stderr)
        return 2
    info = _threads(args.threads)
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="vs_trl_"))
    t0 = time.perf_counter()
    spec = prepare(work, backbone=args.backbone, steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                   lr=args.lr, dtype=args.dtype)
    print(protocol.header(info), flush=True)
    print("order: lockstep, both children at once taking turns (set-up, then each step, then the end), A B, B A, "
          f"A B ... per turn; ratios per step (the same samples both sides), median of the steady steps of every "
          f"pair; steady-state rates leave out the first {args.warmup_steps} steps", flush=True)
    print(f"backbone {spec['backbone']} ({spec['recipe']}); {spec['steps']} steps x batch {spec['batch_size']} of "
          f"{spec['n_train']} train clips; LoRA r {spec['lora']['r']} alpha {spec['lora']['alpha']} dropout "
          f"{spec['lora']['dropout']} on {','.join(TARGETS)}; lr {spec['lr']} cosine, warmup {spec['warmup_steps']} "
          f"steps; {sum(spec['step_tokens'])} tokens, {spec['target_tokens']} target tokens; emollm prompts carry "
          f"{spec['media_tokens_per_sample']} AU media tokens (TRL: the same positions as token "
          f"{spec['filler_token']}, a space); device {args.device}, {spec['dtype']}; data {time.perf_counter() - t0:.1f} s",
          flush=True)

    stop = protocol.stopping(args)
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in SIDES}
    rounds: list[dict[str, Any]] = []
    deadline = time.perf_counter() + stop.get("max_seconds", 0.0)
    while True:
        r = len(rounds)
        pair = run_pair(spec, work, str(r), threads=args.threads, device=args.device, offset=r)
        for side in SIDES:
            runs[side].append(pair[side])
        rounds.append(compare_round(pair["emollm"], pair["trl"], spec, warmup=args.warmup_steps, smooth=args.smooth))
        q = step_ratio_stats(rounds[-1:], args.clock)
        print(f"  pair {r}: emollm loss {pair['emollm']['losses'][0]:.3f} -> {pair['emollm']['losses'][-1]:.3f}, loop "
              f"{sum(pair['emollm']['step_s']):.1f} s; TRL loss {pair['trl']['losses'][0]:.3f} -> "
              f"{pair['trl']['losses'][-1]:.3f}, loop {sum(pair['trl']['step_s']):.1f} s; per-step ratio ({args.clock}) "
              f"{q['median']:.3f} [IQR {q['iqr']:.3f}, 95% CI +-{q['ci_half']:.3f}]", flush=True)
        if len(rounds) < args.rounds:
            continue
        per_step = step_ratio_stats(rounds, args.clock)
        if not stop or per_step["ci_half"] <= stop["until_ci"] or _past(deadline):
            break
    ci_reached = None if not stop else per_step["ci_half"] <= stop["until_ci"]
    mismatch = [i + 1 for run in runs["emollm"] for i, (a, b) in enumerate(zip(run["step_tokens"], spec["step_tokens"],
                                                                                strict=True)) if abs(a - b) > 1]
    if mismatch:
        print(f"WARNING: emollm's logged tokens differ from the exported sequences at steps {mismatch[:5]}")
    lora_same = runs["emollm"][0]["lora"] == runs["trl"][0]["lora"]  # as each side saved / built it
    print(f"\n{'':24s}{'emollm':>14s}{'TRL':>14s}{'emollm/TRL':>13s}   (median of {len(rounds)} pair(s); "
          f"samples/s and tokens/s: of the per-step ratios, {args.clock} clock)")
    med = lambda side, key: statistics.median(x[side][key] for x in rounds) if all(  # noqa: E731
        x[side][key] is not None for x in rounds) else None
    ratio = lambda key: statistics.median(x["ratios"][key] for x in rounds) if all(  # noqa: E731
        x["ratios"][key] is not None for x in rounds) else None
    rows = [("samples/s (steady)", "samples_per_s", "samples_per_s", "{:.2f}"),
            ("tokens/s (steady)", "tokens_per_s", "tokens_per_s", "{:.0f}"),
            ("time to common loss s", "time_to_loss_s", "time_to_loss", "{:.1f}"),
            ("steps to common loss", "steps_to_loss", "steps_to_loss", "{:.0f}"),
            ("training loop s", "loop_s", "loop_s", "{:.1f}"), ("process wall s", "wall_s", "wall_s", "{:.1f}"),
            ("peak RSS MiB", "max_rss_mib", "max_rss", "{:.0f}")]
    for label, key, rkey, fmt in rows:
        a, b, q = med("emollm", key), med("trl", key), ratio(rkey)
        show = lambda v, f=fmt: "-" if v is None else f.format(v)  # noqa: E731
        spread = ""
        if rkey in ("samples_per_s", "tokens_per_s"):  # the median of the per-step ratios
            q = per_step["median"]
            spread = (f" [{per_step['min']:.3f}-{per_step['max']:.3f}, IQR {per_step['iqr']:.3f}, 95% CI "
                      f"+-{per_step['ci_half']:.3f}, {per_step['n']} steps{protocol.ci_note(ci_reached)}]")
        elif len(rounds) > 1 and q is not None:
            qs = [x["ratios"][rkey] for x in rounds]
            spread = f" [{min(qs):.3f}-{max(qs):.3f}]"
        print(f"{label:24s}{show(a):>14s}{show(b):>14s}{show(q, '{:.3f}'):>13s}{spread}")
    for clock in sorted(CLOCKS, key=lambda c: c != args.clock):  # the headline's clock, then the other one
        c = step_ratio_stats(rounds, clock)
        print(f"per-step ratio, {clock} clock{' (the headline)' if clock == args.clock else ''}: {c['median']:.3f} "
              f"[{c['min']:.3f}-{c['max']:.3f}, IQR {c['iqr']:.3f}, 95% CI +-{c['ci_half']:.3f}, {c['n']} steps]")
    if args.device == "cuda":
        print(f"{'peak CUDA MiB':24s}{_mib(med('emollm', 'cuda_peak_mib')):>14s}{_mib(med('trl', 'cuda_peak_mib')):>14s}")
    targets = [x["target_loss"] for x in rounds]
    print(f"common loss target (higher final {args.smooth}-step mean): {', '.join(f'{t:.4f}' for t in targets)}; "
          f"final losses emollm {med('emollm', 'final_loss'):.4f}, TRL {med('trl', 'final_loss'):.4f}")
    print(f"same sequences (emollm's logged tokens per step = the exported ones): {not mismatch}; same LoRA "
          f"config: {lora_same} ({runs['emollm'][0]['lora']})")
    lf = llamafactory_status(args.llamafactory)
    print(f"LLaMA-Factory: {lf}")
    result = {"spec": {k: v for k, v in spec.items() if k not in ("step_tokens", "step_samples")},
              "threads": args.threads, "device": args.device, "rounds": rounds,
              "clock": args.clock, "per_step_ratio": {c: protocol.rounded(step_ratio_stats(rounds, c)) for c in CLOCKS},
              "until_ci": stop.get("until_ci"), "ci_reached": ci_reached,
              "same_sequences": not mismatch,
              "same_lora": lora_same, "llamafactory": lf, "work": str(work),
              "total_s": round(time.perf_counter() - t0, 1)}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(json.dumps({"ratios": {**{k: ratio(k) for k in rounds[0]["ratios"]}, "samples_per_s": per_step["median"],
                                 "tokens_per_s": per_step["median"]}, "target_loss": targets,
                      "total_s": result["total_s"], "work": str(work)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
