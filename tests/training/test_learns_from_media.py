"""The trained model reads its media: on a task whose label only the AU tokens carry (the text is the
same for every clip), train.py + emollm predict + emollm evaluate on held-out clips score far above
chance, and the same model with the AU inputs zeroed sits at chance (emollm.testing.media_task; the
real-backbone figures come from benchmarks/learns_from_media.py)."""

from __future__ import annotations

import json

import pytest
import torch

from emollm.testing.media_task import LABELS, run_media_task

pytestmark = pytest.mark.slow

CHANCE = 1 / len(LABELS)
# With the AUs zeroed every test prompt is the same but for its instruction, drawn from the pool by clip
# id and so independent of the label: the answers are independent of the label and the expected UAR is
# at most chance (0.25). Its spread on 20 clips per class is at most sqrt(3/4 / 20) / 4 = 0.05, so
# chance + 0.15 (3 sd) is never crossed by a model that ignores the media, and always by one that reads
# them (1.0 on every seed tried).
ZEROED_MAX = CHANCE + 0.15
WITH_MEDIA_MIN = 0.75


@pytest.fixture
def one_thread():
    """Tiny models: thread start-up costs more than it saves (and CI's machine is shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_uar_far_above_chance_with_media_and_at_chance_with_media_zeroed(tmp_path, one_thread):
    # the real entries (train.py's `train`, `predict`, `evaluate`), in this process: seconds, not minutes
    result = run_media_task(tmp_path, backbone="tiny", clips=200, n_test=80, seed=0, subprocess_run=False)

    assert result["chance"] == pytest.approx(CHANCE)
    assert result["n_test"] == 80 and result["n_train"] == 120
    assert result["uar_with_media"] >= WITH_MEDIA_MIN, result
    assert result["uar_media_zeroed"] <= ZEROED_MAX, result
    # the figures are the evaluator's, over every held-out clip, and the answers were labels, not noise
    assert result["invalid_rate_with_media"] <= 0.05, result
    assert sum(result["predicted_with_media"].values()) == sum(result["predicted_media_zeroed"].values()) == 80
    metrics = json.loads((tmp_path / "eval_with_media" / "metrics.json").read_text())
    assert metrics["classification"]["n"] == 80
    assert metrics["classification"]["uar"] == pytest.approx(result["uar_with_media"], abs=1e-4)
    assert (tmp_path / "run" / "adapter").is_dir()  # a LoRA run dir, as train.py writes it
