"""Time-based training: a budget in seconds ends the run, drives the schedule and the ETA."""

from __future__ import annotations

import dataclasses
import math

import pytest

from napari_unetseg.augment import AugmentConfig
from napari_unetseg.config import ModelConfig
from napari_unetseg.synthetic import touching_cells
from napari_unetseg.training import TrainConfig, fit

TINY = ModelConfig(depth=2, width=4)
CFG = TrainConfig(iterations=1000, batch_size=2, patch_size=32, lr=1e-2, device="cpu",
                  augment=AugmentConfig.off(), val_fraction=0, log_every=1, time_budget_s=5.0)


@pytest.fixture(scope="module")
def cells():
    return touching_cells((48, 48), 6, seed=0)


def _ticking():
    """A stop() that never stops but advances a fake clock by one second per loop turn."""
    n = [0]

    def stop() -> bool:
        n[0] += 1
        return False

    return stop, lambda: float(n[0])


def test_budget_in_seconds_ends_training_and_drives_the_schedule(cells):
    image, inst = cells
    stop, clock = _ticking()
    events = []
    res = fit(image, inst, TINY, CFG, labels_mode="instances", stop=stop, clock=clock,
              on_event=events.append)
    # turn k reads k seconds: steps 1..4 run, turn 5 finds the 5 s budget spent
    assert res.metadata["steps"] == 4 and res.metadata["out_of_time"]
    assert not res.metadata["stopped"]
    # cosine over the budget (time fraction k/5 beats the step fraction (k-1)/1000)
    want = [1e-2 * 0.5 * (1 + math.cos(math.pi * k / 5)) for k in range(1, 5)]
    assert [h["lr"] for h in res.history] == pytest.approx(want)
    assert [e.elapsed_s for e in events] == [1.0, 2.0, 3.0, 4.0]
    assert [e.eta_s for e in events] == pytest.approx([4.0, 3.0, 2.0, 1.0])


def test_without_budget_the_steps_decide_and_elapsed_grows(cells):
    image, inst = cells
    cfg = dataclasses.replace(CFG, iterations=3, time_budget_s=None)
    events = []
    res = fit(image, inst, TINY, cfg, labels_mode="instances", on_event=events.append)
    assert res.metadata["steps"] == 3 and not res.metadata["out_of_time"]
    el = [e.elapsed_s for e in events]
    assert el == sorted(el) and el[0] > 0
    assert [h["lr"] for h in res.history] == pytest.approx(
        [1e-2 * 0.5 * (1 + math.cos(math.pi * k / 3)) for k in range(3)])


@pytest.mark.parametrize("bad", [0, -1.0, True, "10", float("inf")])
def test_budget_validation(bad):
    with pytest.raises(ValueError, match="time_budget_s"):
        TrainConfig(time_budget_s=bad)


def test_budget_round_trips():
    cfg = TrainConfig(time_budget_s=60.0)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
