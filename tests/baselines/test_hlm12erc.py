"""HLM12ERC: its losses against numbers worked out by hand, the handling of absent modalities, option
checks, and that it learns a task only fusion of two modalities solves (single modalities stay at chance)."""

from __future__ import annotations

import math

import pytest
import torch

from emollm.baselines import build_baseline
from emollm.baselines.base import BaselineBatch
from emollm.baselines.data import ClassAwareBatchSampler, shuffled_batches
from emollm.baselines.hlm12erc import HLM12ERC
from emollm.baselines.losses import dice_loss, focal_loss, triplet_loss
from emollm.errors import ConfigError
from emollm.testing.synthetic import fusion_task, subset

DIMS = {"text": 8, "audio": 8, "visual": 4}



# Logits whose softmax is exact: log([3, 1, 1]) -> p = [0.6, 0.2, 0.2]; log([1, 2, 1]) -> [0.25, 0.5, 0.25].
LOGITS = torch.log(torch.tensor([[3.0, 1.0, 1.0], [1.0, 2.0, 1.0]]))
TARGETS = torch.tensor([0, 2])  # true-class probabilities 0.6 and 0.25


# ------------------------------------------------------------------------------------------ losses by hand
def test_focal_loss_by_hand():
    # alpha_t (1 - p_t)^gamma (-ln p_t), gamma 2, alpha [0.5, 1, 2]:
    row1 = 0.5 * 0.4**2 * -math.log(0.6)  # 0.0408660...
    row2 = 2.0 * 0.75**2 * -math.log(0.25)  # 1.5595812...
    got = focal_loss(LOGITS, TARGETS, gamma=2.0, alpha=[0.5, 1.0, 2.0])
    assert float(got) == pytest.approx((row1 + row2) / 2, rel=1e-6)
    assert float(got) == pytest.approx(0.8002236, abs=1e-6)
    # gamma 0 and no alpha: the cross-entropy
    assert float(focal_loss(LOGITS, TARGETS, gamma=0.0)) == pytest.approx(-(math.log(0.6) + math.log(0.25)) / 2)
    # gamma 1: (1 - p)(-ln p)
    assert float(focal_loss(LOGITS, TARGETS, gamma=1.0)) == pytest.approx(
        (0.4 * -math.log(0.6) + 0.75 * -math.log(0.25)) / 2, rel=1e-6)
    with pytest.raises(ConfigError, match="one weight per class"):
        focal_loss(LOGITS, TARGETS, alpha=[1.0, 1.0])


def test_dice_loss_by_hand():
    # p = [[.6, .2, .2], [.25, .5, .25]], y = [[1, 0, 0], [0, 0, 1]]
    # TP = [.6, 0, .25], FP = [.25, .7, .2], FN = [.4, 0, .75]
    dice = [2 * 0.6 / (2 * 0.6 + 0.25 + 0.4), 0.0, 2 * 0.25 / (2 * 0.25 + 0.2 + 0.75)]  # 0.6486, 0, 0.3448
    got = dice_loss(LOGITS, TARGETS, eps=0.0)
    assert float(got) == pytest.approx(1 - sum(dice) / 3, rel=1e-6)
    assert float(got) == pytest.approx(0.6688411, abs=1e-6)
    perfect = torch.tensor([[20.0, 0.0, 0.0], [0.0, 0.0, 20.0], [0.0, 20.0, 0.0]])
    assert float(dice_loss(perfect, torch.tensor([0, 2, 1]))) == pytest.approx(0.0, abs=1e-6)


# Four points with easy distances: d01 = 3, d02 = 4, d03 = 1, d12 = 5, d13 = sqrt(10), d23 = 3.
POINTS = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0], [0.0, 1.0]])
CLASSES = torch.tensor([0, 0, 1, 1])


def test_triplet_loss_batch_hard_by_hand():
    # hardest positive / nearest negative per anchor, margin 0.5:
    # a0: 3 - min(4, 1) + .5 = 2.5; a1: 3 - min(5, sqrt 10) + .5 = 0.3377; a2: 3 - min(4, 5) + .5 < 0 -> 0;
    # a3: 3 - min(1, sqrt 10) + .5 = 2.5
    expected = (2.5 + (3.5 - math.sqrt(10)) + 0.0 + 2.5) / 4
    got = triplet_loss(POINTS, CLASSES, margin=0.5, mining="batch_hard")
    assert float(got) == pytest.approx(expected, rel=1e-6)
    assert float(got) == pytest.approx(1.3344306, abs=1e-6)
    # soft margin: softplus(d_ap - d_an) = ln(1 + exp(gap)), gaps 2, 3 - sqrt 10, -1, 2
    soft = [math.log1p(math.exp(g)) for g in (2.0, 3 - math.sqrt(10), -1.0, 2.0)]
    assert float(triplet_loss(POINTS, CLASSES, margin=None, mining="batch_hard")) == pytest.approx(sum(soft) / 4)


def test_triplet_loss_all_triplets_by_hand():
    # (a, p, n): (0,1,2) 3-4+.5 -> 0; (0,1,3) 3-1+.5 = 2.5; (1,0,2) 3-5+.5 -> 0; (1,0,3) 3.5-sqrt 10;
    # (2,3,0) 3-4+.5 -> 0; (2,3,1) 3-5+.5 -> 0; (3,2,0) 3-1+.5 = 2.5; (3,2,1) 3.5-sqrt 10
    expected = (2.5 + 2.5 + 2 * (3.5 - math.sqrt(10))) / 8
    assert float(triplet_loss(POINTS, CLASSES, margin=0.5, mining="all")) == pytest.approx(expected, rel=1e-6)


def test_triplet_loss_without_valid_triplet_is_zero_and_differentiable():
    x = torch.randn(3, 2, requires_grad=True)
    for labels in (torch.tensor([0, 0, 0]), torch.tensor([0, 1, 2])):  # no negative / no positive
        loss = triplet_loss(x, labels, mining="batch_hard")
        assert float(loss.detach()) == 0.0
        loss.backward()
        assert float(triplet_loss(x, labels, mining="all").detach()) == 0.0
    with pytest.raises(ConfigError, match="mining"):
        triplet_loss(x, CLASSES[:3], mining="semi_hard")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ the model
def _batch(n: int = 6, seed: int = 0, labels: bool = True) -> BaselineBatch:
    g = torch.Generator().manual_seed(seed)
    feats = {name: torch.randn(n, d, generator=g) for name, d in DIMS.items()}
    present = {name: torch.ones(n, dtype=torch.bool) for name in DIMS}
    return BaselineBatch(feats, present, torch.arange(n) % 3 if labels else None, [f"c{i}" for i in range(n)])


@pytest.mark.parametrize("fusion", ["concat", "attention"])
def test_loss_is_the_weighted_sum_of_its_parts(fusion):
    torch.manual_seed(0)
    model = build_baseline("hlm12erc", DIMS, 3, fusion=fusion, losses={"ce": 1.0, "focal": 0.5, "dice": 2.0},
                           focal_alpha=[1.0, 2.0, 3.0], triplet_weight=0.25, dropout=0.0)
    batch = _batch()
    out = model(batch)
    assert out.logits.shape == (6, 3) and set(out.parts) == {"ce", "focal", "dice", "triplet"}
    p = out.parts
    assert float(out.loss.detach()) == pytest.approx(p["ce"] + 0.5 * p["focal"] + 2.0 * p["dice"] + 0.25 * p["triplet"], rel=1e-5)
    assert p["ce"] == pytest.approx(float(torch.nn.functional.cross_entropy(out.logits.detach(), batch.labels)), rel=1e-5)
    out.loss.backward()
    assert all(param.grad is not None for param in model.parameters())
    assert model(_batch(labels=False)).loss is None  # predict time: no labels, no loss


@pytest.mark.parametrize("fusion", ["concat", "attention"])
def test_an_absent_modality_does_not_change_the_output(fusion):
    torch.manual_seed(0)
    model = build_baseline("hlm12erc", DIMS, 3, fusion=fusion, l2_normalize=True).eval()
    batch = _batch()
    batch.present["audio"][:3] = False
    changed = BaselineBatch({k: v.clone() for k, v in batch.features.items()}, batch.present, batch.labels, batch.ids)
    changed.features["audio"][:3] = torch.randn(3, DIMS["audio"]) * 100  # garbage where absent
    with torch.no_grad():
        a, b = model(batch).logits, model(changed).logits
    torch.testing.assert_close(a, b)
    for name in DIMS:  # a clip with no modality at all still gets finite logits
        batch.present[name][0] = False
    with torch.no_grad():
        assert torch.isfinite(model(batch).logits).all()


def test_options_are_checked():
    with pytest.raises(ConfigError, match="unknown option"):
        build_baseline("hlm12erc", DIMS, 3, fusoin="concat")
    with pytest.raises(ConfigError, match="fusion"):
        build_baseline("hlm12erc", DIMS, 3, fusion="sum")
    with pytest.raises(ConfigError, match="divisible"):
        build_baseline("hlm12erc", DIMS, 3, hidden_size=30, num_heads=4)
    with pytest.raises(ConfigError, match="focal_alpha"):
        build_baseline("hlm12erc", DIMS, 3, focal_alpha=[1.0, 1.0])
    with pytest.raises(ConfigError, match="unknown classification loss"):
        build_baseline("hlm12erc", DIMS, 3, losses="ce+hinge")
    with pytest.raises(ConfigError, match="class labels"):
        build_baseline("hlm12erc", DIMS, 1, task="regression", triplet_weight=0.1)
    with pytest.raises(ConfigError, match="did you mean 'hlm12erc'"):
        build_baseline("hlm12ecr", DIMS, 3)
    model = build_baseline("hlm12erc", DIMS, 3, losses="ce+dice", triplet_weight=0.5)
    assert model.loss_weights == {"ce": 1.0, "dice": 1.0} and model.class_aware_batches() == (3, 0)
    assert build_baseline("hlm12erc", DIMS, 3).class_aware_batches() is None
    rebuilt = build_baseline(**{k: v for k, v in model.config_dict().items() if k != "options"},
                             **model.config_dict()["options"])
    assert isinstance(rebuilt, HLM12ERC) and rebuilt.options == model.options


# ------------------------------------------------------------------------------------------ learning
def _fit(dims, train: BaselineBatch, epochs: int = 20, **options) -> HLM12ERC:
    torch.manual_seed(0)
    model = build_baseline("hlm12erc", dims, 2, hidden_size=64, dropout=0.0, **options)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    pk = model.class_aware_batches()
    for epoch in range(epochs):
        model.train()
        if pk is not None:
            sampler = ClassAwareBatchSampler(train.labels, pk[0], 16, seed=0)
            sampler.set_epoch(epoch)
            batches = list(sampler)
        else:
            batches = shuffled_batches(len(train), 64, seed=0, epoch=epoch)
        for indices in batches:
            out = model(train.select(indices))
            optimizer.zero_grad()
            out.loss.backward()
            optimizer.step()
    return model.eval()


def _accuracy(model: HLM12ERC, test: BaselineBatch) -> float:
    with torch.no_grad():
        return float((model(test).logits.argmax(dim=-1) == test.labels).float().mean())


@pytest.fixture(scope="module")
def xor_task():
    data = fusion_task(2000, DIMS, num_classes=2, seed=1)  # label = XOR of text and audio directions
    return subset(data, slice(0, 1500)), subset(data, slice(1500, None))


@pytest.mark.parametrize("options", [
    {"fusion": "concat"},
    {"fusion": "attention"},
    {"fusion": "attention", "l2_normalize": True, "losses": {"focal": 1.0, "dice": 0.5}, "triplet_weight": 0.2},
], ids=["concat", "attention", "attention+l2+focal+dice+triplet"])
def test_learns_what_only_fusion_can_tell(xor_task, options):
    train, test = xor_task
    accuracy = _accuracy(_fit(DIMS, train, **options), test)
    assert accuracy > 0.8, accuracy  # chance: 0.5 (measured about 0.91-0.93)


def test_one_modality_alone_stays_at_chance(xor_task):
    train, test = xor_task
    only_text = {"text": DIMS["text"]}
    keep = lambda b: BaselineBatch({"text": b.features["text"]}, {"text": b.present["text"]}, b.labels, b.ids)  # noqa: E731
    accuracy = _accuracy(_fit(only_text, keep(train), epochs=10, fusion="concat"), keep(test))
    assert accuracy < 0.6, accuracy  # the label is independent of any single modality
