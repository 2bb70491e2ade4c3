"""Training out of (simulated) CUDA memory: smaller batches instead of a failure.

OOM is simulated on the CPU: ``training._forward`` (or ``Adam.step``) raises
``torch.cuda.OutOfMemoryError`` when the batch is larger than a limit.
"""

from __future__ import annotations

import dataclasses
import logging
from types import SimpleNamespace

import pytest
import torch

from napari_unetseg import training
from napari_unetseg.augment import AugmentConfig
from napari_unetseg.config import ModelConfig
from napari_unetseg.synthetic import touching_cells
from napari_unetseg.training import TrainConfig, fit, train

TINY = ModelConfig(depth=2, width=4)
CFG = TrainConfig(iterations=4, batch_size=8, patch_size=32, lr=1e-2, device="cpu",
                  augment=AugmentConfig.off(), val_fraction=0, log_every=1)


def _oom() -> torch.cuda.OutOfMemoryError:
    return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")


@pytest.fixture(scope="module")
def cells():
    return touching_cells((64, 64), 10, seed=0)


def _limit_forward(monkeypatch, limit: int, *, only_eval: bool = False) -> list[tuple[int, bool]]:
    """Make forwards of more than ``limit`` patches raise OOM; return (batch, training) seen."""
    seen: list[tuple[int, bool]] = []
    real = training._forward

    def forward(s, img):
        seen.append((len(img), s.model.training))
        if len(img) > limit and not (only_eval and s.model.training):
            raise _oom()
        return real(s, img)

    monkeypatch.setattr(training, "_forward", forward)
    return seen


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and r.name.startswith("napari_unetseg")]


def test_step_oom_retries_the_same_step_with_half_the_batch(cells, monkeypatch, caplog):
    image, inst = cells
    clean = fit(image, inst, TINY, CFG, labels_mode="instances")
    seen = _limit_forward(monkeypatch, 3)
    clock = iter(range(10_000))  # every perf_counter() call is one "second" later
    monkeypatch.setattr(training, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    events = []
    with caplog.at_level(logging.WARNING, logger="napari_unetseg"):
        res = fit(image, inst, TINY, CFG, labels_mode="instances", on_event=events.append)
    # 8 and 4 fail in step 1, then every step runs once with 2
    assert [b for b, _ in seen] == [8, 4, 2, 2, 2, 2]
    assert res.metadata["batch_size_used"] == 2
    assert res.metadata["train_config"]["batch_size"] == 8  # the config is not changed
    # same steps, history and learning rates (scheduler stepped once per step) as without OOM
    assert res.metadata["steps"] == clean.metadata["steps"] == 4
    assert [h["step"] for h in res.history] == [h["step"] for h in clean.history] == [1, 2, 3, 4]
    assert [h["lr"] for h in res.history] == [h["lr"] for h in clean.history]
    # the rate counts the patches actually used (one step of 2 patches per fake second)
    assert [e.images_per_s for e in events] == [2.0] * 4
    assert [e.eta_s for e in events] == [3.0, 2.0, 1.0, 0.0]
    assert res.metadata["images_per_s"] * res.metadata["seconds"] == pytest.approx(4 * 2)
    msgs = _warnings(caplog)
    assert len(msgs) == 2, msgs
    assert "training" in msgs[0] and "batch of 8" in msgs[0] and "batches of 4" in msgs[0]
    assert "batch of 4" in msgs[1] and "batches of 2" in msgs[1]


def test_failed_attempt_leaves_no_gradient_or_optimizer_step(cells, monkeypatch):
    """OOM after the backward (in the optimizer step): training equals training at batch 2."""
    image, inst = cells

    def fixed_sample(self, n):  # the first n of 8 fixed patches, whatever the batch
        if not hasattr(self, "_fixed"):
            self._fixed = self.positions(8)
        return self.crop(*(t[:n] for t in self._fixed))

    monkeypatch.setattr(training.PatchSampler, "sample", fixed_sample)
    small = fit(image, inst, TINY, dataclasses.replace(CFG, batch_size=2), labels_mode="instances")

    last = []
    real_forward, real_step = training._forward, torch.optim.Adam.step

    def forward(s, img):
        last.append(len(img))
        return real_forward(s, img)

    def step(self, *args, **kwargs):
        if last[-1] > 2:  # gradients of the whole batch are accumulated by now
            raise _oom()
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(training, "_forward", forward)
    monkeypatch.setattr(torch.optim.Adam, "step", step)
    res = fit(image, inst, TINY, CFG, labels_mode="instances")
    assert last == [8, 4, 2, 2, 2, 2] and res.metadata["batch_size_used"] == 2
    assert [h["loss"] for h in res.history] == pytest.approx([h["loss"] for h in small.history],
                                                              rel=1e-6)
    for (name, a), b in zip(res.model.named_parameters(), small.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)


def test_batch_of_one_out_of_memory_is_an_actionable_error(cells, monkeypatch, caplog):
    image, inst = cells
    seen = _limit_forward(monkeypatch, 0)
    with caplog.at_level(logging.WARNING, logger="napari_unetseg"), \
            pytest.raises(RuntimeError) as info:
        fit(image, inst, TINY, CFG, labels_mode="instances")
    assert type(info.value) is RuntimeError  # not the raw torch.cuda.OutOfMemoryError
    assert str(info.value) == (
        "out of GPU memory training with a batch of 1 patch of 32x32; use a smaller patch_size, "
        "a narrower network (width) or device='cpu'")
    assert [b for b, _ in seen] == [8, 4, 2, 1]
    assert len(_warnings(caplog)) == 3


def test_validation_oom_evaluates_the_same_patches_in_chunks(cells, monkeypatch, caplog):
    image, inst = cells
    cfg = dataclasses.replace(CFG, iterations=3, batch_size=4, val_fraction=0.3, val_every=3)
    clean = fit(image, inst, TINY, cfg, labels_mode="instances")
    seen = _limit_forward(monkeypatch, 1, only_eval=True)
    with caplog.at_level(logging.WARNING, logger="napari_unetseg"):
        res = fit(image, inst, TINY, cfg, labels_mode="instances")
    val_sizes = [b for b, training_mode in seen if not training_mode]
    n_val = val_sizes[0]  # one batch of all (here 3) validation patches, then patch by patch
    assert 1 < n_val <= 4 and val_sizes[1:] == [1] * n_val
    assert res.metadata["batch_size_used"] == 4  # training itself was not reduced
    got = res.history[-1]
    want = clean.history[-1]
    assert got["val_dice"] is not None and got["val_loss"] is not None
    assert got["val_dice"] == pytest.approx(want["val_dice"], rel=1e-6)
    assert got["val_loss"] == pytest.approx(want["val_loss"], rel=1e-5)
    assert res.metadata["best_val_dice"] == pytest.approx(want["val_dice"], rel=1e-6)
    msgs = _warnings(caplog)
    assert len(msgs) == 1 and "validating with a batch of 3" in msgs[0], msgs


def test_validation_oom_at_one_patch_raises(cells, monkeypatch):
    image, inst = cells
    cfg = dataclasses.replace(CFG, iterations=2, batch_size=2, val_fraction=0.3, val_every=2)
    _limit_forward(monkeypatch, 0, only_eval=True)
    gen = train(image, inst, TINY, cfg, labels_mode="instances")
    with pytest.raises(RuntimeError, match=r"^out of GPU memory validating with a batch of 1 "
                                            r"patch of 32x32; use a smaller patch_size") as info:
        list(gen)
    assert type(info.value) is RuntimeError
    assert gen.model.training  # validation put the model back in train mode
