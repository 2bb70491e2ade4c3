"""Self-supervised pretraining: learns to fill hidden blocks, honours budget and stop, and its
weights (all but the head) start a training run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unetseg.augment import AugmentConfig
from napari_unetseg.config import ModelConfig
from napari_unetseg.devices import drain
from napari_unetseg.models import build_model
from napari_unetseg.pretrain import PretrainConfig, pretrain, transfer
from napari_unetseg.synthetic import touching_cells
from napari_unetseg.training import TrainConfig, fit

TINY = ModelConfig(depth=2, width=4)


@pytest.fixture(scope="module")
def stack():
    return touching_cells((3, 48, 48), 8, seed=0)


def _ticks():
    n = [0.0]

    def clock() -> float:
        n[0] += 0.25
        return n[0]

    return clock


def test_loss_drops_and_budget_ends_it(stack):
    image, _ = stack
    cfg = PretrainConfig(time_budget_s=1e6, iterations=25, batch_size=4, patch_size=32,
                         lr=1e-2)
    events = []
    # a fake clock (0.25 s a read) so that events come every few steps on any machine
    res = drain(pretrain(image, TINY, cfg, clock=_ticks()), events.append)
    assert res.metadata["steps"] == 25
    assert len(events) >= 5
    assert np.mean([e.loss for e in events[-3:]]) < 0.8 * events[0].loss
    # a budget of 2 fake seconds (each clock read is 0.25 s later) ends it long before
    short = drain(pretrain(image, TINY, PretrainConfig(time_budget_s=2.0, batch_size=2,
                                                       patch_size=32), clock=_ticks()))
    assert 0 < short.metadata["steps"] < 8


def test_stop_is_honoured(stack):
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 3

    res = drain(pretrain(stack[0], TINY, PretrainConfig(batch_size=2, patch_size=32),
                         stop=stop))
    assert res.metadata["steps"] == 3


def test_weights_start_training_with_a_fresh_head(stack):
    image, inst = stack
    cfg = PretrainConfig(iterations=5, batch_size=2, patch_size=32)
    res = drain(pretrain(image, TINY, cfg))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # the seeded initialisation the result starts from
        scratch = build_model(TINY).state_dict()
    changed = [k for k, v in res.state_dict.items()
               if v.dtype.is_floating_point and not torch.equal(v, scratch[k])]
    assert changed and not any("head" in k for k in changed)
    tc = TrainConfig(iterations=1, batch_size=2, patch_size=32, device="cpu", val_fraction=0,
                     augment=AugmentConfig.off(), lr=1e-12)
    out = fit(image, inst, TINY, tc, labels_mode="instances", resume=res.state_dict)
    enc = [k for k in changed if k.startswith("encoder") and k.endswith("weight")][0]
    assert torch.allclose(out.model.state_dict()[enc], res.state_dict[enc], atol=1e-6)


def test_transfer_skips_heads_and_other_shapes():
    a = build_model(ModelConfig(depth=2, width=4, classes=1))
    b = build_model(ModelConfig(depth=2, width=8, classes=3))
    got = transfer(a, b)
    assert all(torch.equal(got[k], v) for k, v in b.state_dict().items())  # nothing fits
    c = build_model(ModelConfig(depth=2, width=4, classes=3))
    got = transfer(a, c)
    assert torch.equal(got["head.weight"], c.state_dict()["head.weight"])
    k = next(k for k in got if k.startswith("encoder") and k.endswith("weight"))
    assert torch.equal(got[k], a.state_dict()[k])


@pytest.mark.parametrize(("kw", "match"), [({"lr": 0}, "lr"), ({"patch_size": 4}, "patch"),
                                           ({"mask_fraction": 1.0}, "mask"),
                                           ({"device": "tpu"}, "device")])
def test_bad_config(kw, match):
    with pytest.raises(ValueError, match=match):
        PretrainConfig(**kw)
