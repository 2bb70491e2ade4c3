"""Tests of the training loop: learning, determinism, stop/close, label modes, input checks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from napari_unetseg import training
from napari_unetseg.augment import AugmentConfig
from napari_unetseg.config import ModelConfig
from napari_unetseg.synthetic import touching_cells
from napari_unetseg.training import TrainConfig, TrainResult, fit, resolve_device, train

TINY = ModelConfig(depth=2, width=4)
FAST = TrainConfig(iterations=5, batch_size=2, patch_size=32, lr=1e-2, device="cpu",
                   augment=AugmentConfig.off(), val_every=5, log_every=1)


@pytest.fixture(scope="module")
def cells():
    return touching_cells((64, 64), 10, seed=0)


def _losses(result: TrainResult) -> list[float]:
    return [h["loss"] for h in result.history]


def test_loss_drops_on_touching_cells(cells):
    image, inst = cells
    cfg = dataclasses.replace(FAST, iterations=30, batch_size=4, schedule="constant",
                              val_fraction=0)
    res = fit(image, inst, TINY, cfg, labels_mode="instances")
    losses = _losses(res)
    assert len(losses) == 30
    assert np.mean(losses[-8:]) < 0.7 * np.mean(losses[:4])  # ~0.3-0.45 seen over 4 seeds
    assert not res.model.training and next(res.model.parameters()).device.type == "cpu"
    assert res.metadata["steps"] == 30 and res.metadata["labels_mode"] == "instances"


def test_bn_momentum_sets_how_far_one_step_moves_the_running_statistics(cells):
    """After one step from the initial statistics (mean 0), a BatchNorm running mean is
    ``momentum * batch mean``: the same first batch with 0.5 gives 5x what 0.1 gives."""
    image, inst = cells
    means = {}
    for m in (0.1, 0.5):
        cfg = dataclasses.replace(FAST, iterations=1, val_fraction=0, bn_momentum=m)
        res = fit(image, inst, TINY, cfg, labels_mode="instances")
        bn = next(x for x in res.model.modules() if isinstance(x, torch.nn.BatchNorm2d))
        means[m] = bn.running_mean.clone()
    assert means[0.1].abs().max() > 1e-4
    torch.testing.assert_close(means[0.5], 5 * means[0.1], rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="bn_momentum"):
        TrainConfig(bn_momentum=0.0)


def test_seed_determinism(cells):
    image, inst = cells
    cfg = dataclasses.replace(FAST, augment=AugmentConfig(gamma=0.2))
    a = _losses(fit(image, inst, TINY, cfg, labels_mode="instances"))
    b = _losses(fit(image, inst, TINY, cfg, labels_mode="instances"))
    c = _losses(fit(image, inst, TINY, dataclasses.replace(cfg, seed=1), labels_mode="instances"))
    assert a == b and a != c


def test_events_and_validation(cells):
    image, inst = cells
    cfg = dataclasses.replace(FAST, iterations=6, val_every=3, log_every=4, val_fraction=0.3)
    gen = train(image, inst, TINY, cfg, labels_mode="instances")
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as done:
            res = done.value
            break
    assert [e.step for e in events] == list(range(1, 7))
    val_steps = [e.step for e in events if e.val_dice is not None]
    assert val_steps == [3, 6]
    assert all(0 <= e.val_dice <= 1 and e.val_loss > 0 for e in events if e.val_dice is not None)
    assert all(e.images_per_s > 0 and e.eta_s >= 0 and e.lr > 0 for e in events)
    best = max((e.val_dice, -e.step) for e in events if e.val_dice is not None)
    assert res.metadata["best_val_dice"] == best[0] and res.metadata["best_step"] == -best[1]
    assert [h["step"] for h in res.history] == list(range(1, 7))


def test_stop_is_honoured_and_close_is_safe(cells):
    image, inst = cells
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 3

    res = fit(image, inst, TINY, dataclasses.replace(FAST, log_every=10), labels_mode="instances",
              stop=stop)
    assert len(res.history) == 3 and res.metadata["steps"] == 3 and res.metadata["stopped"]
    gen = train(image, inst, TINY, FAST, labels_mode="instances")
    next(gen)
    gen.close()  # no error, no leak; a closed generator ends
    with pytest.raises(StopIteration):
        next(gen)


def test_sparse_scribbles_train():
    image, inst = touching_cells((64, 64), 8, seed=2)
    labels = np.zeros(inst.shape, np.uint8)
    rng = np.random.default_rng(0)
    fg, bg = np.argwhere(inst > 0), np.argwhere(inst == 0)
    for (y, x) in fg[rng.choice(len(fg), 40)]:
        labels[y, x] = 2
    for (y, x) in bg[rng.choice(len(bg), 40)]:
        labels[y, x] = 1
    cfg = dataclasses.replace(FAST, iterations=30, schedule="constant", val_fraction=0.2)
    res = fit(image, labels, TINY, cfg)
    assert res.class_values == (1, 2)
    assert np.mean(_losses(res)[-5:]) < np.mean(_losses(res)[:3])
    assert res.metadata["best_val_dice"] is not None


def test_dense_0_255_keeps_class_values(cells):
    image, inst = cells
    labels = np.where(inst > 0, 255, 0).astype(np.uint8)
    res = fit(image, labels, TINY, FAST, labels_mode="dense")
    assert res.class_values == (0, 255)
    assert res.metadata["class_values"] == [0, 255]


def test_instances_mode_passes_weight_map(cells, monkeypatch):
    image, inst = cells
    seen = []
    real = training._criterion

    def spy(cfg, mc):
        base = real(cfg, mc)

        def crit(out, tgt, weight=None):
            seen.append((out if isinstance(out, list) else [out], tgt, weight))
            return base(out, tgt, weight)

        return crit

    monkeypatch.setattr(training, "_criterion", spy)
    fit(image, inst, TINY, dataclasses.replace(FAST, iterations=2), labels_mode="instances")
    out, tgt, weight = seen[0]
    assert weight is not None and weight.shape == tgt.shape and weight.max() > 2
    seen.clear()
    dense = (inst > 0).astype(np.uint8)
    fit(image, dense, TINY, dataclasses.replace(FAST, iterations=1), labels_mode="dense")
    weight = seen[0][2]  # issue 11: dense labels get the border term between their cells
    assert weight is not None and weight.shape == seen[0][1].shape and weight.max() > 2
    seen.clear()
    fit(image, dense, TINY, dataclasses.replace(FAST, iterations=1, loss="ce"),
        labels_mode="dense")
    assert seen[0][2] is None  # a loss that ignores weights gets none
    seen.clear()
    pp = ModelConfig(arch="unetpp", depth=2, width=4)
    fit(image, inst, pp, dataclasses.replace(FAST, iterations=1), labels_mode="instances")
    assert len(seen[0][0]) == 2  # deep supervision over both heads


def test_valid_padding_unet_trains(cells):
    image, inst = cells
    mc = ModelConfig(depth=2, width=4, padding="valid")
    res = fit(image, inst, mc, dataclasses.replace(FAST, iterations=3), labels_mode="instances")
    assert res.metadata["margin"] == 20 and len(res.history) == 3


def test_resume_starts_from_given_weights(cells):
    image, inst = cells
    first = fit(image, inst, TINY, FAST, labels_mode="instances")
    cfg = dataclasses.replace(FAST, iterations=1, lr=1e-12, seed=5)
    again = fit(image, inst, TINY, cfg, labels_mode="instances", resume=first)
    for (k, a), b in zip(first.model.state_dict().items(), again.model.state_dict().values(),
                         strict=True):
        if a.is_floating_point() and "running" not in k:
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert again.normalization == first.normalization
    with pytest.raises(ValueError, match="resume"):
        fit(image, inst, ModelConfig(depth=2, width=8), cfg, labels_mode="instances",
            resume=first.model.state_dict())


def test_result_saves_and_resumes_from_model_file(cells, tmp_path):
    from napari_unetseg.io import load_model, save_model

    image, inst = cells
    labels = np.where(inst > 0, 255, 0).astype(np.uint8)
    res = fit(image, labels, TINY, FAST, labels_mode="dense")
    path = save_model(tmp_path / "m.unetseg", res.model, normalization=res.normalization,
                      class_values=list(res.class_values), metadata=res.metadata)
    saved = load_model(path)
    again = fit(image, labels, TINY, dataclasses.replace(FAST, iterations=1),
                labels_mode="dense", resume=saved)
    assert again.normalization == res.normalization and again.class_values == (0, 255)
    with pytest.raises(ValueError, match="class values"):
        fit(image, inst, TINY, FAST, labels_mode="instances", resume=saved)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"labels": np.zeros((60, 64), int)}, "shape"),
        ({"model_config": ModelConfig(depth=2, width=4, classes=3)}, "classes"),
        ({"model_config": ModelConfig(depth=2, width=4, in_channels=2)}, "channel"),
        ({"train_config": dataclasses.replace(FAST, device="tpu")}, "available"),
        ({"train_config": dataclasses.replace(FAST, patch_size=4),
          "model_config": ModelConfig(depth=3, width=4)}, "patch_size"),
        ({"train_config": dataclasses.replace(FAST, ds_weights=(1.0,)),
          "model_config": ModelConfig(arch="unetpp", depth=2, width=4)}, "ds_weights"),
    ],
)
def test_bad_inputs_raise_before_training(cells, change, match):
    image, inst = cells
    kwargs = {"image": image, "labels": inst, "model_config": TINY, "train_config": FAST}
    kwargs.update(change)
    with pytest.raises(ValueError, match=match):
        train(**kwargs, labels_mode="instances")  # raises on the call, before any step


def test_train_config_validation_and_round_trip():
    cfg = TrainConfig(val_slices=(1, 2), ds_weights=(0.5, 1.0), augment=AugmentConfig(gamma=0.1))
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="adamw")
    with pytest.raises(ValueError, match="iterations"):
        TrainConfig(iterations=0)
    with pytest.raises(TypeError, match="batch_size"):
        TrainConfig(batch_size=2.5)
    with pytest.raises(ValueError, match="unknown"):
        TrainConfig.from_dict({"iters": 3})
    assert TrainConfig(val_slices=[0, 3]).val_slices == (0, 3)  # lists (JSON) become tuples


def test_multichannel_stack_with_unlabelled_slice(cells):
    image, inst = cells
    stack = np.stack([image, image, image])
    rgb = np.stack([stack, 1 - stack], axis=-1)  # (Z, Y, X, C)
    labels = np.stack([inst, np.zeros_like(inst), inst])
    seen = []
    mc = ModelConfig(depth=2, width=4, in_channels=2)
    res = fit(rgb, labels, mc, dataclasses.replace(FAST, iterations=3, val_slices=(2,)),
              labels_mode="instances", channel_axis=-1, on_event=seen.append)
    assert [e.step for e in seen] == [1, 2, 3]
    assert res.metadata["train_slices"] == [0] and res.metadata["val_slices"] == [2]


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else None
    if expected is None and not torch.backends.mps.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ValueError, match=r"not available here; available: cpu"):
            resolve_device("cuda")
