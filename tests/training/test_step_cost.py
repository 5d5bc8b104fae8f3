"""What one training step computes is unchanged by the cheaper step (issue #19, benchmarks/train_step.py):
the LM head on target positions only, the media merged without per-row device reads, fused AdamW."""

from __future__ import annotations

import pytest
import torch

from emollm import config as cfglib
from emollm.testing.datasets import FAST, build_tiny_training_dataset
from emollm.training import loop
from emollm.training.data import EmotionCollator


@pytest.fixture(scope="module")
def setup(sample_dir, tmp_path_factory):
    ds_dir, split = build_tiny_training_dataset(sample_dir, tmp_path_factory.mktemp("step_data"))
    cfg = cfglib.load("tiny_cpu", [*FAST, f"data.dataset_dir={ds_dir}", f"data.train_split={split}",
                                   "train.tasks=[emotion,reason]", "train.lora.dropout=0.0"])
    torch.manual_seed(0)
    model, processor = loop.build_model(cfg)
    with torch.no_grad():  # a trained-looking adapter: LoRA B starts at zero, which would hide a wrong path
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)
    ds = loop._dataset(cfg, model, processor)
    batch = EmotionCollator(processor, model.config.modalities)([ds[i % len(ds)] for i in range(3)])
    inputs = {k: v for k, v in batch.items() if k not in ("ids", "labels")}
    return cfg, model, inputs, batch["labels"]


def _grads(model) -> dict[str, torch.Tensor]:
    out = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def test_loss_and_gradients_match_the_full_logits_loss(setup):
    """The loop's step (LM head on the K target positions) gives the loss per target token and the
    gradients of the full-vocabulary, every-position loss (what the backbone's own loss computes)."""
    _, model, inputs, labels = setup
    n = loop.target_tokens(labels)
    positions = loop.target_positions(labels)
    assert 0 < len(positions) < labels.shape[1] // 2  # the prompt (media spans included) is most of the sequence
    model.zero_grad(set_to_none=True)
    cheap = loop.micro_batch_losses(model, inputs, labels)
    assert cheap.shape == (labels.shape[0], len(positions))
    (cheap.sum() / n).backward()
    cheap_grads = _grads(model)

    full = loop.token_losses(model(**inputs).logits, labels)
    (full.sum() / n).backward()
    full_grads = _grads(model)
    backbone_loss = model(**inputs, labels=labels).loss  # transformers' own causal-LM loss, mean per target

    loss = float(cheap.detach().sum() / n)
    assert loss == pytest.approx(float(full.detach().sum() / n), abs=1e-6)
    assert loss == pytest.approx(float(backbone_loss.detach()), abs=1e-6)
    # per-row sums (per-task losses): a row sums hundreds of nats, so float32's own rounding is ~1e-4 there
    torch.testing.assert_close(cheap.detach().sum(1), full.detach().sum(1), rtol=1e-6, atol=1e-5)
    assert cheap_grads.keys() == full_grads.keys() and any(k.startswith("media.") for k in cheap_grads)
    for name, g in cheap_grads.items():
        torch.testing.assert_close(g, full_grads[name], rtol=1e-4, atol=1e-7, msg=name)


def test_target_positions_never_empty():
    labels = torch.full((2, 5), -100)
    assert loop.target_positions(labels).tolist() == [0]  # the graph still reaches every trained weight
    labels[0, 3], labels[1, 4] = 7, 8
    assert loop.target_positions(labels).tolist() == [2, 3]


def test_merge_writes_each_rows_projected_tokens_at_its_media_positions(setup):
    """The merge against a plain per-row, per-modality reference, rows with and without a modality."""
    _, model, inputs, _ = setup
    model.eval()
    ids = inputs["input_ids"]
    present = {k: v.clone() for k, v in inputs["media_present"].items()}
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids.masked_fill(model._media_token_mask(ids), 0))
        projected = model.media(inputs["media"], present, inputs["media_masks"], batch_size=ids.shape[0])
        merged = model.merge_media(ids, embeds, inputs["media"], present, inputs["media_masks"])
    expected = embeds.clone()
    written = torch.zeros(ids.shape, dtype=torch.bool)
    for name, rows in projected.items():
        for b in range(ids.shape[0]):
            at = (ids[b] == model.config.media_token_ids[name]).nonzero().squeeze(1)
            if len(at):
                expected[b, at] = rows[b]
                written[b, at] = True
    assert written.sum() > 0 and (~written).sum() > 0
    torch.testing.assert_close(merged, expected, rtol=0, atol=0)
    model.train()


def test_fused_adamw_steps_like_the_reference_adamw(setup):
    """loop.make_optimizer is fused (transformers Trainer's default); its update is AdamW's, to float noise."""
    cfg, model, inputs, labels = setup
    opt = loop.make_optimizer(model, cfg)
    assert all(g.get("fused") for g in opt.param_groups) and [g["name"] for g in opt.param_groups] == ["backbone", "media"]
    assert not any(g.get("fused") for g in loop.make_optimizer(model, cfg, deepspeed=True).param_groups)
    params = [p for g in opt.param_groups for p in g["params"]]
    start = [p.detach().clone() for p in params]
    ref_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    ref = torch.optim.AdamW([{**{k: v for k, v in g.items() if k not in ("params", "fused")},
                              "params": ref_params[i:i + len(g["params"])]}
                             for i, g in zip([0, len(opt.param_groups[0]["params"])], opt.param_groups, strict=True)])
    torch.manual_seed(3)
    for _ in range(3):
        grads = [torch.randn_like(p) for p in params]
        for p, q, g in zip(params, ref_params, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    moved = 0
    for p, q, s in zip(params, ref_params, start, strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6)
        moved += int(not torch.equal(p.detach(), s))
    assert moved == len(params)
    with torch.no_grad():
        for p, s in zip(params, start, strict=True):
            p.copy_(s)
            p.grad = None
