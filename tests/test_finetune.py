"""Fine-tuning: where training starts (init), held-out strokes, keep-best, the consistency term."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from napari_unetseg.augment import AugmentConfig
from napari_unetseg.config import ModelConfig
from napari_unetseg.data import prepare_data
from napari_unetseg.finetune import class_tensors, load_weights, match_classes, resolve_init
from napari_unetseg.losses import consistency_loss
from napari_unetseg.models import build_model
from napari_unetseg.synthetic import touching_cells
from napari_unetseg.training import TrainConfig, fit, train

TINY = ModelConfig(depth=2, width=4)
FAST = TrainConfig(iterations=30, batch_size=4, patch_size=32, lr=1e-2, device="cpu",
                   augment=AugmentConfig.off(), val_every=10, log_every=1, schedule="constant")


def _strokes(dense: np.ndarray, n: int = 10, seed: int = 0) -> np.ndarray:
    """``n`` separate 3-pixel vertical strokes per class, painted from dense labels 1/2."""
    rng = np.random.default_rng(seed)
    out = np.zeros_like(dense)
    for v in (1, 2):
        ys, xs = np.nonzero(dense[..., 2:-2, :] == v)
        placed = 0
        for i in rng.permutation(len(ys)):
            y, x = ys[i] + 2, xs[i]
            win = out[..., y - 2 : y + 3, max(x - 1, 0) : x + 2]
            if win.any() or not (dense[..., y - 1 : y + 2, x] == v).all():
                continue  # keep strokes apart: each is its own component
            out[..., y - 1 : y + 2, x] = v
            placed += 1
            if placed == n:
                break
    return out


@pytest.fixture(scope="module")
def scene():
    image, inst = touching_cells((64, 64), 8, seed=3)
    dense = np.where(inst > 0, 2, 1).astype(np.uint8)
    return image, dense


@pytest.fixture(scope="module")
def trained(scene):
    image, dense = scene
    cfg = dataclasses.replace(FAST, iterations=60, val_fraction=0)
    return fit(image, dense, TINY, cfg, labels_mode="dense")


# --------------------------------------------------------------------------- held-out strokes


def test_validation_holds_out_whole_strokes_of_every_class(scene):
    image, dense = scene
    lab = _strokes(dense, 10)
    d = prepare_data(image, lab, val_fraction=0.2, seed=1)
    train_px, val_px = d.train_target >= 0, d.val_target >= 0
    assert not (train_px & val_px).any() and (train_px | val_px).sum() == (lab > 0).sum()
    assert d.train_slices == d.val_slices == (0,)  # one slice: strokes, not slices, held out
    for c in (0, 1):
        assert (d.val_target == c).any() and (d.train_target == c).any()
    from scipy import ndimage as ndi

    comp, n = ndi.label(lab > 0)  # every stroke lies wholly in training or in validation
    for k in range(1, n + 1):
        assert len(set(val_px[0][comp == k].tolist())) == 1
    assert 2 <= ndi.label(val_px[0])[1] <= 6  # about 20 % of 20 strokes


def test_one_stroke_per_class_falls_back_to_blocks(scene):
    image, dense = scene
    lab = np.zeros_like(dense)
    lab[10, 5:40], lab[50, 5:40] = 1, 2  # a single long stroke per class
    d = prepare_data(image, lab, val_fraction=0.5, seed=0)
    assert d.val_target is None or ((d.val_target >= 0).sum() + (d.train_target >= 0).sum()
                                    == (lab > 0).sum())


# --------------------------------------------------------------------------- consistency


def test_consistency_is_zero_for_the_teacher_itself_and_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, generator=g, requires_grad=True)
    target = torch.full((2, 8, 8), -1, dtype=torch.long)
    target[:, :2] = 1  # painted rows: left to the supervised loss
    assert consistency_loss(logits, logits.detach(), target).item() == pytest.approx(0, abs=1e-6)
    other = logits.detach() + torch.randn(2, 3, 8, 8, generator=g)
    loss = consistency_loss(logits, other, target)
    assert loss.item() > 0.01
    loss.backward()
    assert logits.grad[:, :, :2].abs().max() == 0  # painted pixels take no part
    assert logits.grad[:, :, 2:].abs().max() > 0
    same_on_unpainted = other.clone()
    same_on_unpainted[:, :, 2:] = logits.detach()[:, :, 2:]
    assert consistency_loss(logits, same_on_unpainted, target).item() == pytest.approx(0,
                                                                                       abs=1e-6)


# --------------------------------------------------------------------------- init


def test_init_with_another_class_count_keeps_all_but_the_head(scene, trained):
    image, dense = scene
    lab = _strokes(dense, 8)
    lab[lab == 2] = 3  # three classes: 1, 3 painted, 2 a few pixels
    lab[30:32, 30:32] = 2
    cfg = dataclasses.replace(FAST, iterations=1, lr=1e-12, val_fraction=0)
    mc = dataclasses.replace(TINY, classes=3)
    res = fit(image, lab, mc, cfg, init=trained)
    assert res.metadata["init_fresh"] == ["head.bias", "head.weight"]
    before, after = trained.model.state_dict(), res.model.state_dict()
    for k, v in after.items():
        if k.startswith("head."):
            assert v.shape[0] == 3
        elif v.is_floating_point() and "running" not in k:
            torch.testing.assert_close(v, before[k], atol=1e-6, rtol=0)
    assert res.model_config.classes == 3 and res.class_values == (1, 2, 3)


def test_init_orders_classes_as_the_labels(scene, trained):
    image, dense = scene
    swapped = np.where(dense == 1, 2, 1).astype(np.uint8)  # cells painted 1, gaps 2
    cfg = dataclasses.replace(FAST, iterations=1, lr=1e-12, val_fraction=0)
    res = fit(image, swapped, TINY, cfg, labels_mode="dense", init=trained)
    assert res.metadata["init_class_order"] == [1, 0] and res.metadata["init_agreement"] > 0.7
    x = torch.from_numpy(trained.normalization(image))[None, None]
    with torch.no_grad():
        a, b = trained.model(x).argmax(1), res.model(x).argmax(1)
    assert (a != b).float().mean() > 0.99  # the same prediction, classes swapped


def test_init_refuses_another_architecture_and_resume_together(scene, trained):
    image, dense = scene
    with pytest.raises(ValueError, match="same architecture"):
        train(image, dense, ModelConfig(depth=2, width=8), FAST, labels_mode="dense",
              init=trained)
    with pytest.raises(ValueError, match="either resume"):
        train(image, dense, TINY, FAST, labels_mode="dense", init=trained, resume=trained)
    with pytest.raises(TypeError, match="init must be"):
        resolve_init(3.5)
    with pytest.raises(FileNotFoundError):
        resolve_init("/no/such/model.unetseg")
    assert resolve_init("scratch") is None and resolve_init(None) is None


def test_class_tensors_and_load_weights_across_archs():
    for arch in ("unet", "unetpp", "resunet"):
        cfg = ModelConfig(arch=arch, depth=2, width=4)
        names = class_tensors(cfg)
        assert names and all("head" in n for n in names), (arch, names)
        src = build_model(cfg)
        dst = build_model(dataclasses.replace(cfg, classes=4))
        holder = type("S", (), {"model": src, "config": cfg})
        assert set(load_weights(dst, holder)) == names


def test_match_classes_permutes_the_head_in_place(trained):
    model = build_model(TINY).eval()
    model.load_state_dict(trained.model.state_dict())
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        pred = model(x).argmax(1)
    perm, agreement = match_classes(model, x, 1 - pred)  # the labels say the opposite
    assert perm == [1, 0] and agreement == pytest.approx(1.0)
    with torch.no_grad():
        assert torch.equal(model(x).argmax(1), 1 - pred)


# --------------------------------------------------------------------------- keep-best


def test_fine_tuning_never_returns_worse_than_where_it_started(scene, trained):
    """Held-out strokes validate the starting weights first; a ruinous learning rate then
    makes every step worse, early stopping ends the run, and the start is what comes back."""
    image, dense = scene
    lab = _strokes(dense, 12)
    cfg = dataclasses.replace(FAST, iterations=40, lr=5.0, val_every=5, patience=2,
                              val_fraction=0.3)
    res = fit(image, lab, TINY, cfg, init=trained)
    meta = res.metadata
    assert meta["best_step"] == 0 and meta["early_stopped"] and meta["steps"] == 10
    assert meta["best_val_dice"] == meta["start_val_dice"] > 0
    for k, v in trained.model.state_dict().items():
        torch.testing.assert_close(res.model.state_dict()[k], v)


def test_patience_stops_after_validations_without_progress(scene):
    image, dense = scene
    lab = _strokes(dense, 12)
    cfg = dataclasses.replace(FAST, iterations=200, lr=1e-12, val_every=2, patience=3,
                              val_fraction=0.3)
    res = fit(image, lab, TINY, cfg)  # a learning rate of ~0: nothing improves after step 2
    assert res.metadata["early_stopped"] and res.metadata["steps"] == 8
    assert res.metadata["best_step"] == 2 and "start_val_dice" not in res.metadata


def test_consistency_term_trains_with_a_teacher(scene, trained, monkeypatch):
    from napari_unetseg import losses

    image, dense = scene
    lab = _strokes(dense, 8)
    seen = []
    real = losses.consistency_loss

    def spy(*args, **kwargs):
        seen.append(real(*args, **kwargs).item())
        return real(*args, **kwargs)

    monkeypatch.setattr(losses, "consistency_loss", spy)
    cfg = dataclasses.replace(FAST, iterations=4, consistency=1.0, val_fraction=0)
    fit(image, lab, TINY, cfg, init=trained)
    assert len(seen) == 4 and seen[0] == pytest.approx(0, abs=1e-6) and max(seen) > 0
    seen.clear()
    fit(image, lab, TINY, dataclasses.replace(cfg, consistency=0.0), init=trained)
    fit(image, lab, TINY, cfg)  # no init: no teacher
    assert seen == []
