"""GRPO after SFT (``train.stage: grpo``): reinforcement learning with verifiable rewards (docs/training.md "GRPO").

Entry: :func:`train_grpo` (``emollm train`` / ``train.py`` dispatch to it when ``train.stage=grpo``;
:func:`emollm.training.loop.train` refuses that stage). R1-Omni's recipe on emollm's composite model: from a supervised run (``train.init_from``), each step
takes a batch of clips' prompt-only ``emotion`` samples (the prompts ``emollm predict`` builds, media
included), samples ``G = train.grpo.num_generations`` answers per prompt with ``model.generate`` (the
media merged by ``masked_scatter`` exactly as in training), scores them with the rewards of
:mod:`emollm.training.rewards`, and takes group-relative advantages
``A_i = (r_i - mean(r_group)) / (std(r_group) + eps)``. The loss is DeepSeekMath's GRPO objective::

    L = mean_i 1/|o_i| sum_t [ -min(rho_it A_i, clip(rho_it, 1-eps, 1+eps) A_i) + beta KL_it ]
    rho_it = pi(o_it | ...) / pi_old(o_it | ...)
    KL_it  = exp(ref_it - logp_it) - (ref_it - logp_it) - 1          (the k3 estimator, >= 0, 0 when equal)

``train.grpo.num_iterations`` optimizer steps reuse each batch of rollouts (with 1 the ratio is 1 and
``pi_old`` is the detached policy itself, as in TRL).

**The reference policy** is the SFT model the run starts from, not the bare backbone: with LoRA, turning
the adapter off would give the base model. At start (and on resume, before the checkpoint is loaded)
the trainable tensors (LoRA weights, media projectors; everything under full fine-tuning) are copied;
reference log-probabilities are computed with those copies swapped into the live parameters
(:class:`ReferencePolicy`), under ``no_grad``, then swapped back. The cost is one copy of the trainable
weights (LoRA + projectors: a few MB), no second model.

**Why not TRL's GRPOTrainer** (trl 1.16, ``trl/trainer/grpo_trainer.py``): it tokenises text prompts
itself (``apply_chat_template``) and knows only image inputs of HF VLM processors (``pixel_values``,
``image_grid_thw``, ...), which it slices per image when computing log-probabilities; emollm's prompts
are built by its own processor (placeholders expanded to N media tokens per modality) with per-modality
feature tensors from the feature cache (``media``, ``media_masks`` dicts) that ``generate`` and the
forward take beside ``input_ids``. Passing them through would mean subclassing most of its generation
and log-prob code, and its checkpoints would not be emollm's (vetted, exact-resume) ones. This loop is
lean instead: emollm's data, collator, generation path, optimizer, checkpoints and logs.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from emollm.errors import ConfigError, EmollmError
from emollm.log import get_logger

log = get_logger(__name__)

ROLLOUTS = "rollouts-{step}.jsonl"
ADV_EPS = 1e-4


# ------------------------------------------------------------------------------------------ the maths
def group_advantages(rewards: torch.Tensor, group_size: int, *, scale: bool = True, eps: float = ADV_EPS) -> torch.Tensor:
    """``(reward - group mean) / (group std + eps)`` for rewards laid out group by group (``G`` answers of
    prompt 0, then of prompt 1 ...); ``std`` is the unbiased one (torch's default, as TRL). ``scale=False``:
    the mean is subtracted only (Dr. GRPO)."""
    if rewards.numel() % group_size:
        raise EmollmError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    grouped = rewards.double().view(-1, group_size)
    adv = grouped - grouped.mean(1, keepdim=True)
    if scale:
        adv = adv / (grouped.std(1, keepdim=True) + eps)
    return adv.view(-1).to(rewards.dtype)


def kl_k3(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi || ref) estimate ``exp(ref - logp) - (ref - logp) - 1`` (>= 0; 0 where they agree)."""
    delta = ref_logps - logps
    return torch.exp(delta) - delta - 1


def grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor, ref_logps: torch.Tensor | None, advantages: torch.Tensor,
              mask: torch.Tensor, *, beta: float, epsilon: float) -> tuple[torch.Tensor, dict[str, float]]:
    """The GRPO loss over ``(N, C)`` per-token log-probs of ``N`` sampled answers (``mask`` 1 on their real
    tokens): per answer, the mean over its tokens of the clipped surrogate plus ``beta`` KL; then the
    mean over answers. Returns ``(loss, stats)`` (``kl``: mean per-token KL; ``clip_ratio``: share of
    tokens whose ratio was clipped)."""
    mask = mask.to(logps.dtype)
    ratio = torch.exp(logps - old_logps)
    adv = advantages.to(logps.dtype).unsqueeze(1)
    surrogate = torch.min(ratio * adv, torch.clamp(ratio, 1 - epsilon, 1 + epsilon) * adv)
    per_token = -surrogate
    kl = None
    if ref_logps is not None and beta:
        kl = kl_k3(logps, ref_logps)
        per_token = per_token + beta * kl
    lengths = mask.sum(1).clamp(min=1)
    loss = ((per_token * mask).sum(1) / lengths).mean()
    n = mask.sum().clamp(min=1)
    clipped = ((ratio < 1 - epsilon) | (ratio > 1 + epsilon)).to(mask.dtype)
    stats = {"kl": float(((kl.detach() * mask).sum() / n) if kl is not None else 0.0),
             "clip_ratio": float((clipped * mask).sum() / n)}
    return loss, stats


# ------------------------------------------------------------------------------------------ the model
class ReferencePolicy:
    """The frozen SFT policy: copies of the model's trainable tensors as they were at the start, swapped in
    for the reference forward (:meth:`active`). The copies are never trained.

    Under DeepSpeed ZeRO-3 a parameter's ``data`` holds the whole tensor only while it is gathered; the
    rank's shard lives in ``param.ds_tensor``, which every gather reads. There the shards are copied and
    swapped (each rank holds a copy of its own shards only), and ``release`` (the engine's
    ``empty_partition_cache``) drops every gathered tensor before and after the reference forward, so that
    no forward sees a tensor gathered from the other policy's shards. Elsewhere (one process, DDP,
    ZeRO-1/2) ``data`` is swapped."""

    def __init__(self, model: torch.nn.Module, *, release: Callable[[], None] | None = None):
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if not trainable:
            raise EmollmError("GRPO: the model has no trainable parameter")
        self.zero3 = any(hasattr(p, "ds_tensor") for p in trainable.values())
        if self.zero3 and release is None:
            raise EmollmError("GRPO: a ZeRO-3 model's reference needs the engine's release (empty_partition_cache)")
        self.release = release
        self.weights = {n: (p.ds_tensor if self.zero3 else p).detach().clone() for n, p in trainable.items()}

    @contextlib.contextmanager
    def active(self, model: torch.nn.Module) -> Iterator[None]:
        params = dict(model.named_parameters())
        saved: list[tuple[torch.Tensor, torch.Tensor]] = []  # (tensor, its own data) to put back
        try:
            with torch.no_grad():
                if self.zero3:
                    self.release()
                for name, ref in self.weights.items():
                    tensor = params[name].ds_tensor if self.zero3 else params[name]
                    saved.append((tensor, tensor.data))
                    tensor.data = ref
            yield
        finally:
            with torch.no_grad():
                if self.zero3:
                    self.release()
                for tensor, data in reversed(saved):
                    tensor.data = data


def completion_mask(completion_ids: torch.Tensor, stop_ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mask, truncated)``: 1 on each answer's tokens up to and including its first stop token (what
    the loss sees; padding after it is 0), and whether an answer has no stop token (cut off)."""
    is_stop = torch.isin(completion_ids, torch.tensor(list(stop_ids), device=completion_ids.device))
    seen = is_stop.cumsum(1)
    mask = (seen == 0) | (is_stop & (seen == 1))
    return mask.long(), ~is_stop.any(1)


def _repeat(value: Any, n: int) -> Any:
    if isinstance(value, torch.Tensor):
        return value.repeat_interleave(n, dim=0)
    if isinstance(value, dict):
        return {k: _repeat(v, n) for k, v in value.items()}
    if isinstance(value, list):
        return [x for x in value for _ in range(n)]
    return value


def completion_logprobs(model: Any, inputs: dict[str, Any], completion_ids: torch.Tensor, completion_mask: torch.Tensor,
                        *, temperature: float = 1.0) -> torch.Tensor:
    """Per-token log-probs ``(N, C)`` of ``completion_ids`` after the left-padded prompts of ``inputs``
    (``input_ids``, ``attention_mask``, ``media`` ...: one row per answer), the media merged as in
    training. Logits are divided by ``temperature`` (the distribution the answers were sampled from)."""
    prompt_ids, prompt_mask = inputs["input_ids"], inputs["attention_mask"]
    ids = torch.cat([prompt_ids, completion_ids], 1)
    attention = torch.cat([prompt_mask, completion_mask.to(prompt_mask.dtype)], 1)
    position_ids = (attention.cumsum(1) - 1).clamp(min=0)  # left padding: positions count real tokens, as generate does
    extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", "labels", "ids", "tasks")}
    c = completion_ids.shape[1]
    logits = model(input_ids=ids, attention_mask=attention, position_ids=position_ids, logits_to_keep=c + 1,
                   **extra).logits[:, :-1]
    logits = logits.float() / temperature
    return torch.log_softmax(logits, -1).gather(2, completion_ids.unsqueeze(2)).squeeze(2)


# ------------------------------------------------------------------------------------------ rollouts
class Rollouts:
    """One batch of prompts x G sampled answers, with rewards, advantages and the fixed log-probs."""

    def __init__(self, **fields: Any):
        self.__dict__.update(fields)


class GrpoSampler:
    """Rollouts for prompt batches: generation, rewards, advantages, old / reference log-probs."""

    def __init__(self, cfg: Any, processor: Any, records: dict[str, dict[str, Any]], reference: ReferencePolicy | None,
                 clip_of: dict[str, str] | None = None, *, synced_gpus: bool = False):
        from emollm.dataset.label_sets import load_label_set

        self.cfg, self.g = cfg, cfg.train.grpo
        self.processor, self.records, self.reference = processor, records, reference
        self.clip_of = dict(clip_of or {})  # sample id -> clip id (the record holding the reference label)
        self.label_set = load_label_set(cfg.eval_label_set)
        self.stop = processor.template.stop_token_ids(processor.tokenizer)
        self.gen_kwargs = {"do_sample": True, "temperature": self.g.temperature, "top_p": self.g.top_p,
                           "max_new_tokens": self.g.max_new_tokens, "num_beams": 1,
                           "num_return_sequences": self.g.num_generations, "use_cache": True,
                           "eos_token_id": self.stop, "pad_token_id": processor.pad_token_id}
        if synced_gpus:  # ZeRO-3: each decoding step gathers parameters collectively; a rank done early keeps stepping
            self.gen_kwargs["synced_gpus"] = True

    def reference_label(self, clip_id: str) -> str | None:
        from eval.references import of_record

        given, _ = of_record(self.records.get(clip_id, {}), self.cfg.evaluate.reference_source)
        return self.label_set.normalize(str(given)) if given else None

    def __call__(self, model: Any, batch: dict[str, Any], device: torch.device) -> Rollouts:
        from emollm.inference import _move
        from emollm.training.rewards import RewardContext, score

        g = self.g
        dtype = next(model.media.parameters(), next(model.parameters())).dtype
        prompt = {k: _move(v, device, dtype) for k, v in batch.items() if k not in ("ids", "labels", "tasks")}
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                out = model.generate(**prompt, **self.gen_kwargs)
                completion = out[:, prompt["input_ids"].shape[1]:]
                if completion.shape[1] == 0:
                    raise EmollmError("GRPO: generation returned no token")
                mask, truncated = completion_mask(completion, self.stop)
                inputs = _repeat(prompt, g.num_generations)
                old = (completion_logprobs(model, inputs, completion, mask, temperature=g.temperature)
                       if g.num_iterations > 1 else None)
                ref = None
                if self.reference is not None and g.beta:
                    with self.reference.active(model):
                        ref = completion_logprobs(model, inputs, completion, mask, temperature=g.temperature)
        finally:
            model.train(was_training)
        tokenizer = self.processor.tokenizer
        texts = [tokenizer.decode(row[: int(n)], skip_special_tokens=True).strip()
                 for row, n in zip(completion.tolist(), mask.sum(1).tolist(), strict=True)]
        ids = _repeat([str(i) for i in batch["ids"]], g.num_generations)
        references = [self.reference_label(self.clip_of.get(i, i)) for i in ids]
        ctx = RewardContext(self.label_set, references, truncated.tolist(), g.answer_format, self.cfg.evaluate.parse)
        total, per = score(texts, ctx, dict(g.rewards))
        rewards = torch.tensor(total, dtype=torch.float32)
        adv = group_advantages(rewards, g.num_generations, scale=g.scale_rewards)
        return Rollouts(inputs=inputs, completion=completion, mask=mask, old=old, ref=ref, rewards=rewards,
                        per_reward={k: torch.tensor(v) for k, v in per.items()}, advantages=adv, texts=texts,
                        ids=ids, references=references, truncated=truncated)


def rollout_loss(model: Any, r: Rollouts, g: Any) -> tuple[torch.Tensor, dict[str, float]]:
    """The GRPO loss of a batch of rollouts under the current policy (with gradients)."""
    logps = completion_logprobs(model, r.inputs, r.completion, r.mask.to(r.completion.device), temperature=g.temperature)
    old = r.old if r.old is not None else logps.detach()
    return grpo_loss(logps, old, r.ref, r.advantages.to(logps.device), r.mask.to(logps.device), beta=g.beta,
                     epsilon=g.epsilon)


# ------------------------------------------------------------------------------------------ the loop
def train_grpo(cfg: Any, *, stop_after_step: int | None = None):
    """The GRPO stage (``emollm train`` / ``train.py`` call it for ``train.stage: grpo``): the SFT loop's
    model building, optimizer, scheduler, checkpoints (trainable weights, RNG, ``scheduler.json``, a vetted
    trainer state) and exact resume; ``train_log.jsonl`` rows with ``reward`` and ``reward_<name>``,
    ``logs/rollouts-<step>.jsonl`` samples, evaluation every ``train.eval_steps``."""
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    from emollm import config as cfglib
    from emollm.config.paths import check_input_paths
    from emollm.dataset.io import write_jsonl
    from emollm.modeling.factory import save_run
    from emollm.training import loop
    from emollm.training.data import EmotionCollator, EmotionDataset, LengthGroupedBatchSampler

    check_input_paths(cfg, "train")
    t, g = cfg.train, cfg.train.grpo
    if t.stage != "grpo":
        raise ConfigError(f"train_grpo needs train.stage=grpo, got {t.stage}")
    out = Path(cfg.run.output_dir)
    trackers = loop._check_trackers(t.report_to)
    loop.check_eval_split(cfg)
    resume_dir, saved_state = loop.resume_checkpoint(t.resume, out)
    accelerator = loop.make_accelerator(cfg, out, trackers)
    layout = {"world_size": accelerator.num_processes, "per_device_batch_size": t.per_device_batch_size,
              "gradient_accumulation_steps": t.gradient_accumulation_steps}
    run_config = {**loop.result_config(cfg), **{f"train.grpo.{k}": v for k, v in
                                                json.loads(json.dumps(cfglib.to_dict(cfg)["train"]["grpo"])).items()}}
    layout_changed = saved_state is not None and loop.check_resume_layout(saved_state, layout, resume_dir,
                                                                          allow=t.allow_resume_change, config=run_config)
    set_seed(cfg.run.seed)
    model, processor = loop.build_model_for(accelerator, cfg)
    groups = model.trainable_parameters_by_group()
    log.info("GRPO from %s: trainable %s; G=%d, beta=%g, rewards %s", t.init_from,
             ", ".join(f"{k} {v:,}" for k, v in groups.items()), g.num_generations, g.beta, dict(g.rewards))

    # prompts: the emotion instruction with its media, as `emollm predict` builds them (no answer)
    train_ds = loop._dataset(cfg, model, processor)  # checks the dataset and split; its cache is reused
    ds = EmotionDataset(cfg.data.dataset_dir, processor, train_ds.cache, model.config.modalities,
                        split=cfg.data.train_split, tasks=["emotion"], seed=cfg.run.seed, prompt_only=True)
    if len(ds) == 0:
        raise ConfigError(f"stage grpo: no prompt in split '{cfg.data.train_split}' of {cfg.data.dataset_dir}")
    sampler = LengthGroupedBatchSampler(ds.lengths, t.per_device_batch_size, seed=cfg.run.seed,
                                        num_replicas=accelerator.num_processes, rank=accelerator.process_index)
    collator = EmotionCollator(processor, model.config.modalities, padding_side="left")
    rollouts_per_step = t.gradient_accumulation_steps
    batches_per_epoch = len(sampler)
    total_steps = t.max_steps or max(1, math.ceil(t.epochs * batches_per_epoch * g.num_iterations / rollouts_per_step))
    log.info("GRPO data: %d prompts, %d batches per epoch per rank, %d optimizer steps", len(ds), batches_per_epoch,
             total_steps)
    evaluator = loop.Evaluator(cfg, accelerator, model, processor, train_ds.cache) if t.eval_steps else None
    deepspeed = accelerator.state.deepspeed_plugin is not None
    optimizer = loop.make_optimizer(model, cfg, deepspeed=deepspeed)
    scheduler = get_scheduler(t.lr_scheduler if t.lr_scheduler != "constant" else "constant_with_warmup", optimizer,
                              num_warmup_steps=math.ceil(t.warmup_ratio * total_steps), num_training_steps=total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    # The SFT run's weights, copied as prepared (dtype, ZeRO-3 shards), before any checkpoint loads
    zero3 = loop.is_zero3(accelerator)
    reference = ReferencePolicy(unwrapped, release=model.empty_partition_cache if zero3 else None) if g.beta else None
    rollout_fn = GrpoSampler(cfg, processor, ds.records, reference, {s["id"]: s["clip_id"] for s in ds.samples},
                             synced_gpus=zero3 and accelerator.num_processes > 1)
    save_kwargs, load_kwargs = loop.checkpoint_kwargs(accelerator)
    trainable = {n for n, p in unwrapped.named_parameters() if p.requires_grad}

    def keep_trainable(models, weights, output_dir):
        for i, state in enumerate(weights):
            weights[i] = {k: v for k, v in state.items() if k in trainable}

    accelerator.register_save_state_pre_hook(keep_trainable)

    step, epoch, offset, losses = 0, 0, 0, []
    if resume_dir is not None:
        try:
            accelerator.load_state(str(resume_dir), **load_kwargs)
        except (RuntimeError, KeyError, ValueError) as exc:
            raise EmollmError(f"cannot load checkpoint {resume_dir} into this model: {str(exc).strip()[:200]}",
                              hint="resume with the config the checkpoint was trained with") from None
        accelerator.step = 0
        step, epoch, offset, losses = (saved_state["global_step"], saved_state["epoch"], saved_state["batch_offset"],
                                       saved_state["losses"])
        loop._restore_scheduler(scheduler, resume_dir, [], step)
        if layout_changed:
            offset = min(len(sampler), offset)
        log.info("resumed GRPO from %s: step %d, epoch %d, batch %d", resume_dir, step, epoch, offset)
    log_dir = out / "logs"
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        cfglib.save_resolved(cfg, out, command="train")
        if resume_dir is None:
            for stale in out.glob(loop.CHECKPOINT_PREFIX + "*"):
                if re.fullmatch(loop.CHECKPOINT_PREFIX + r"\d+", stale.name):
                    shutil.rmtree(stale)
        loop.prepare_log(log_dir, step if resume_dir is not None else None)
        for old in log_dir.glob(ROLLOUTS.format(step="*")):  # rollouts of steps a resumed run redoes, or an earlier run's
            m = re.fullmatch(r"rollouts-(\d+)\.jsonl", old.name)
            if m and (resume_dir is None or int(m.group(1)) > step):
                old.unlink()
    if trackers:
        accelerator.init_trackers(cfg.run.name, config={"lr": t.lr, "max_steps": total_steps, "beta": g.beta,
                                                        "num_generations": g.num_generations})

    def checkpoint(at_step: int) -> None:
        loop.save_checkpoint(accelerator, out, at_step, scheduler, save_kwargs, t.save_total_limit,
                             {"global_step": at_step, "epoch": epoch, "batch_offset": offset, "losses": losses,
                              "total_steps": total_steps, "stage": "grpo", **layout, "config": run_config})

    def prompt_batches() -> Iterator[tuple[int, int, dict[str, Any]]]:
        e, start = epoch, offset
        while True:
            sampler.set_epoch(e)
            for position, indices in enumerate(list(sampler)[start:], start + 1):
                yield e, position, collator([ds[i] for i in indices])
            e, start = e + 1, 0

    stream = prompt_batches()
    window: dict[str, Any] = {"loss": 0.0, "n": 0, "rewards": [], "per": {}, "kl": [], "clip": [], "lengths": [],
                              "t0": time.perf_counter()}
    pending: list[Rollouts] = []  # rollouts still to be reused (num_iterations > 1)
    uses = 0
    model.train()
    stopped = False
    while step < total_steps:
        if uses == 0 or not pending:
            pending = []
            for _ in range(rollouts_per_step):
                at_epoch, position, batch = next(stream)
                pending.append(rollout_fn(unwrapped, batch, accelerator.device))
                epoch, offset = at_epoch, position
                if offset >= len(sampler):
                    epoch, offset = epoch + 1, 0
            uses = g.num_iterations
        step_loss = 0.0
        for r in pending:
            with accelerator.accumulate(model):
                loss, stats = rollout_loss(model, r, g)
                if not torch.isfinite(loss.detach()):
                    raise EmollmError(f"GRPO loss is {loss.item()} at step {step + 1}; sample ids: {', '.join(r.ids)}",
                                      hint="lower train.lr or raise train.grpo.beta")
                accelerator.backward(loss)
                if accelerator.sync_gradients and t.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), t.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            step_loss += float(loss.detach()) / len(pending)
            if uses == g.num_iterations:  # rewards count once per batch of rollouts
                window["rewards"] += r.rewards.tolist()
                for name, values in r.per_reward.items():
                    window["per"].setdefault(name, []).extend(values.tolist())
                window["lengths"] += r.mask.sum(1).tolist()
            window["kl"].append(stats["kl"])
            window["clip"].append(stats["clip_ratio"])
        uses -= 1
        scheduler.step()
        step += 1
        # the step's loss over all ranks (each rank's answers weigh the same: the gradients are averaged)
        step_loss = float(loop._sum_across(torch.tensor([step_loss], dtype=torch.float64),
                                           accelerator.device)[0]) / accelerator.num_processes
        losses.append(step_loss)
        window["loss"] += step_loss
        window["n"] += 1
        if step % t.logging_steps == 0 or step == total_steps:
            _log_window(accelerator, window, step, total_steps, scheduler, log_dir)
            if g.log_rollouts and accelerator.is_main_process:
                r = pending[0]
                rows = [{"step": step, "id": r.ids[i], "text": r.texts[i], "reference": r.references[i],
                         "reward": float(r.rewards[i]), **{f"reward_{k}": float(v[i]) for k, v in r.per_reward.items()},
                         "advantage": float(r.advantages[i]), "truncated": bool(r.truncated[i])}
                        for i in range(min(g.log_rollouts, len(r.texts)))]
                write_jsonl(log_dir / ROLLOUTS.format(step=step), rows, fsync=False)
        if step % t.save_steps == 0 or step == stop_after_step:
            if uses:
                log.warning("checkpoint at step %d falls inside a batch of rollouts reused num_iterations=%d times: a "
                            "resume samples new rollouts there", step, g.num_iterations)
            checkpoint(step)
        if step == stop_after_step:
            stopped = True
            break
        if evaluator is not None and (step % t.eval_steps == 0 or step == total_steps):
            window["t0"] += evaluator(model, step, log_dir)["eval_s"]
    stream.close()

    result = loop.TrainResult(output_dir=out, global_step=step, losses=losses, stopped_early=stopped)
    result.model, result.processor = unwrapped, processor
    result.reference = reference
    if not stopped:
        loop._save_final(accelerator, model, processor, out, save_run)
    if trackers:
        accelerator.end_training()
    return result


def _log_window(accelerator, window: dict[str, Any], step: int, total: int, scheduler, log_dir: Path) -> None:
    """One ``train_log.jsonl`` row: the loss (already over all ranks), and the means of every rank's rewards,
    answer lengths, KL and clipped share since the last row (one reduce; every rank calls this)."""
    from emollm.training.loop import _sum_across

    names = sorted(window["per"])  # the configured rewards: the same on every rank
    lists = [window["rewards"], window["lengths"], window["kl"], window["clip"], *(window["per"][k] for k in names)]
    totals = _sum_across(torch.tensor([x for v in lists for x in (sum(v), len(v))], dtype=torch.float64),
                         accelerator.device).tolist()
    mean = {key: totals[2 * i] / totals[2 * i + 1] if totals[2 * i + 1] else None
            for i, key in enumerate(["reward", "completion_length", "kl", "clip_ratio", *(f"reward_{k}" for k in names)])}
    metrics: dict[str, Any] = {"step": step, "kind": "train", "stage": "grpo",
                               "loss": window["loss"] / max(window["n"], 1)}
    if mean["reward"] is not None:
        metrics["reward"] = mean["reward"]
        metrics.update({f"reward_{k}": mean[f"reward_{k}"] for k in names})
        metrics["completion_length"] = mean["completion_length"]
    metrics.update(kl=mean["kl"] or 0.0, clip_ratio=mean["clip_ratio"] or 0.0,
                   lr=scheduler.get_last_lr()[0], step_s=(time.perf_counter() - window["t0"]) / max(window["n"], 1))
    log.info("step %d/%d  loss %.4f  reward %s  kl %.4f  lr %.2e", step, total, metrics["loss"],
             f"{metrics['reward']:.3f}" if "reward" in metrics else "-", metrics["kl"], metrics["lr"])
    if accelerator.is_main_process:
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / "train_log.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(metrics) + "\n")
    if accelerator.trackers:
        accelerator.log({k: v for k, v in metrics.items() if isinstance(v, int | float) and k != "step"}, step=step)
    window.update(loss=0.0, n=0, rewards=[], per={}, kl=[], clip=[], lengths=[], t0=time.perf_counter())


__all__ = ["ROLLOUTS", "GrpoSampler", "ReferencePolicy", "Rollouts", "completion_logprobs", "completion_mask",
           "group_advantages", "grpo_loss", "kl_k3", "rollout_loss", "train_grpo"]
