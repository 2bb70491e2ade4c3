"""Losses: weighted CE, soft Dice, BCE + Dice, deep supervision, make_loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from napari_unetseg.losses import (
    LOSSES,
    DeepSupervisionLoss,
    bce_dice_loss,
    make_loss,
    soft_dice_loss,
    weighted_cross_entropy,
)


def batch(n=2, k=3, h=8, w=9, seed=0, ignored=0.3):
    """Random logits and a target with a fraction of ignored (-1) pixels."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, h, w, generator=gen)
    target = torch.randint(0, k, (n, h, w), generator=gen)
    target[torch.rand(n, h, w, generator=gen) < ignored] = -1
    return logits, target


def perfect_logits(target, k, scale=20.0):
    return F.one_hot(target.clamp(min=0), k).permute(0, 3, 1, 2).float() * scale


def test_wce_equals_cross_entropy_when_weight_is_one():
    logits, target = batch()
    expected = F.cross_entropy(logits, target, ignore_index=-1)
    assert torch.allclose(weighted_cross_entropy(logits, target), expected, atol=1e-6)
    ones = torch.ones(target.shape)
    assert torch.allclose(weighted_cross_entropy(logits, target, ones), expected, atol=1e-6)
    assert torch.allclose(make_loss("ce")(logits, target, 5 * ones), expected, atol=1e-6)
    small = target.to(torch.int16)  # any integer dtype is accepted (data.py yields int16)
    assert torch.allclose(weighted_cross_entropy(logits, small), expected, atol=1e-6)


def test_wce_weights_scale_per_pixel():
    logits, target = batch(seed=1)
    base = weighted_cross_entropy(logits, target)
    twice = weighted_cross_entropy(logits, target, torch.full(target.shape, 2.0))
    assert torch.allclose(twice, 2 * base, atol=1e-6)
    ce = F.cross_entropy(logits, target, ignore_index=-1, reduction="none")
    weight = torch.rand(target.shape, generator=torch.Generator().manual_seed(2)) * 5
    expected = (ce * weight).sum() / (target != -1).sum()  # sum(w * ce) / n_labelled
    got = weighted_cross_entropy(logits, target, weight)
    assert torch.allclose(got, expected, atol=1e-5)
    weight[target == -1] = float("nan")  # weights on ignored pixels are never read
    assert torch.allclose(weighted_cross_entropy(logits, target, weight), got, atol=1e-6)


def all_losses():
    """Every loss in the form loss(logits, target, weight)."""
    named = {name: make_loss(name) for name in LOSSES}
    named["bce_only"] = lambda lo, t, w=None: bce_dice_loss(lo, t, w, dice_weight=0.0)
    return named


@pytest.mark.parametrize("name", [*LOSSES, "bce_only", "deep_supervision"])
def test_ignored_pixels_get_zero_gradient(name):
    logits, target = batch(seed=3)
    weight = torch.rand(target.shape) + 0.5
    logits.requires_grad_(True)
    if name == "deep_supervision":
        heads = [logits, logits * 0.5]
        loss = DeepSupervisionLoss(make_loss("bce_dice"), "exp")(heads, target, weight)
    else:
        loss = all_losses()[name](logits, target, weight)
    loss.backward()
    grad = logits.grad.permute(0, 2, 3, 1)  # (N, H, W, K)
    assert torch.all(grad[target == -1] == 0)
    assert grad[target != -1].abs().sum() > 0
    # and the value does not depend on the logits there
    changed = logits.detach().clone()
    changed.permute(0, 2, 3, 1)[target == -1] = 100.0
    if name != "deep_supervision":
        again = all_losses()[name](changed, target, weight)
        assert torch.allclose(again, loss.detach(), atol=1e-6)


@pytest.mark.parametrize("name", [*LOSSES, "bce_only"])
def test_all_ignored_target_gives_zero_and_backward_works(name):
    logits, target = batch(seed=4)
    target[:] = -1
    logits.requires_grad_(True)
    loss = all_losses()[name](logits, target, torch.ones(target.shape))
    assert loss.item() == 0.0 and not torch.isnan(loss)
    loss.backward()
    assert torch.all(logits.grad == 0)


def test_soft_dice_perfect_and_wrong():
    _, target = batch(seed=5)
    perfect = soft_dice_loss(perfect_logits(target, 3), target)
    assert perfect.item() < 1e-3
    wrong = soft_dice_loss(perfect_logits((target + 1) % 3, 3), target)
    assert wrong.item() > 0.95
    half = soft_dice_loss(torch.zeros(2, 3, 8, 9), target)  # uniform p = 1/3
    assert 0.3 < half.item() < 0.7


def test_soft_dice_averages_over_present_classes_only():
    target = torch.full((1, 6, 6), -1)
    target[0, :3] = 1  # only class 1 painted: 18 labelled pixels
    logits = torch.zeros(1, 3, 6, 6)
    logits[:, 1] = torch.log(torch.tensor(8.0))  # p = (0.1, 0.8, 0.1) everywhere
    dice_1 = (2 * 0.8 * 18 + 1) / (0.8 * 18 + 18 + 1)
    assert soft_dice_loss(logits, target).item() == pytest.approx(1 - dice_1, abs=1e-5)
    assert soft_dice_loss(perfect_logits(target.clamp(min=1), 3), target).item() < 1e-3


def test_soft_dice_matches_the_formula():
    logits, target = batch(seed=6)
    probs = logits.softmax(1)
    labelled = target != -1
    onehot = F.one_hot(target.clamp(min=0), 3).permute(0, 3, 1, 2) * labelled.unsqueeze(1)
    mask = labelled.unsqueeze(1)
    inter = (probs * onehot * mask).sum((0, 2, 3))
    dice = (2 * inter + 1) / ((probs * mask).sum((0, 2, 3)) + onehot.sum((0, 2, 3)) + 1)
    assert torch.allclose(soft_dice_loss(logits, target), 1 - dice.mean(), atol=1e-6)


def test_bce_dice_terms():
    logits, target = batch(seed=7)
    probs = logits.softmax(1)
    labelled = target != -1
    onehot = F.one_hot(target.clamp(min=0), 3).permute(0, 3, 1, 2).float()
    bce = F.binary_cross_entropy(probs, onehot, reduction="none").mean(1)
    expected = bce[labelled].mean()
    only_bce = bce_dice_loss(logits, target, dice_weight=0.0, bce_weight=1.0)
    assert torch.allclose(only_bce, expected, atol=1e-5)
    weight = torch.full(target.shape, 3.0)
    weighted = bce_dice_loss(logits, target, weight, dice_weight=0.0, bce_weight=1.0)
    assert torch.allclose(weighted, 3 * expected, atol=1e-5)
    assert bce_dice_loss(perfect_logits(target, 3), target).item() < 1e-3


def test_bce_dice_is_half_bce_plus_dice_per_image():
    """UNet++ eq. 1: -1/N sum_b (1/2 Y_b log P_b + 2 Y_b P_b / (Y_b + P_b))."""
    logits, target = batch(seed=11)
    probs = logits.softmax(1)
    labelled = target != -1
    onehot = F.one_hot(target.clamp(min=0), 3).permute(0, 3, 1, 2).float()
    bce = F.binary_cross_entropy(probs, onehot, reduction="none").mean(1)[labelled].mean()
    per_image = []
    for b in range(target.shape[0]):
        m = labelled[b]
        dices = []
        for c in range(3):
            g = (target[b] == c) & m
            if g.any():
                p = probs[b, c][m]
                inter = (p * g[m]).sum()
                dices.append((2 * inter + 1) / (p.sum() + g.sum() + 1))
        per_image.append(1 - torch.stack(dices).mean())
    expected = 0.5 * bce + torch.stack(per_image).mean()
    assert torch.allclose(bce_dice_loss(logits, target), expected, atol=1e-5)
    # per image, not over the batch: differs from the batch-wide soft Dice here
    batch_wide = 0.5 * bce + soft_dice_loss(logits, target)
    assert not torch.allclose(bce_dice_loss(logits, target), batch_wide, atol=1e-4)


def test_bce_is_stable_for_confident_logits():
    _, target = batch(seed=8, ignored=0.0)
    logits = perfect_logits((target + 1) % 3, 3, scale=1e4).requires_grad_(True)
    loss = bce_dice_loss(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 1e3  # confidently wrong: large, finite
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_other_ignore_index():
    logits, target = batch(seed=9)
    target[target == -1] = 255
    expected = F.cross_entropy(logits, target, ignore_index=255)
    assert torch.allclose(make_loss("wce", ignore_index=255)(logits, target), expected)


def test_deep_supervision_weighting():
    gen = torch.Generator().manual_seed(10)
    _, target = batch(seed=10)
    heads = [torch.randn(2, 3, 8, 9, generator=gen) for _ in range(3)]
    base = make_loss("wce")
    per_head = torch.stack([base(h, target) for h in heads])
    last = DeepSupervisionLoss(base, [0, 0, 1])(heads, target)
    assert torch.allclose(last, per_head[2])
    assert torch.allclose(DeepSupervisionLoss(base)(heads, target), per_head.mean())
    assert torch.allclose(DeepSupervisionLoss(base, "same")(heads, target), per_head.mean())
    exp = DeepSupervisionLoss(base, "exp")
    assert exp.head_weights(3) == pytest.approx([1 / 7, 2 / 7, 4 / 7])
    assert torch.allclose(exp(heads, target), (per_head * torch.tensor([1, 2, 4]) / 7).sum())
    scaled = DeepSupervisionLoss(base, [2, 2, 4])(heads, target)  # normalised to sum 1
    assert torch.allclose(scaled, (per_head * torch.tensor([0.25, 0.25, 0.5])).sum())


@pytest.mark.parametrize(
    ("weights", "error", "match"),
    [("linear", ValueError, "same"), ([-1, 1], ValueError, "non-negative"),
     ([0, 0], ValueError, "all be zero"), ([], ValueError, "non-negative"),
     (["a"], TypeError, "list of numbers")],
)
def test_deep_supervision_bad_weights(weights, error, match):
    with pytest.raises(error, match=match):
        DeepSupervisionLoss(make_loss("ce"), weights)


def test_deep_supervision_bad_heads():
    logits, target = batch()
    ds = DeepSupervisionLoss(make_loss("ce"), [1, 1])
    with pytest.raises(ValueError, match="3 heads but 2"):
        ds([logits] * 3, target)
    with pytest.raises(TypeError, match="list of per-head logits"):
        ds(logits, target)
    with pytest.raises(ValueError, match="empty"):
        ds([], target)


def test_make_loss_unknown_name_lists_choices():
    with pytest.raises(ValueError, match="wce, ce, dice, bce_dice"):
        make_loss("focal")


@pytest.mark.parametrize("loss", [weighted_cross_entropy, soft_dice_loss, bce_dice_loss])
def test_input_validation(loss):
    logits, target = batch()
    with pytest.raises(ValueError, match="does not match"):
        loss(logits, target[:, :-1])
    with pytest.raises(TypeError, match="integer"):
        loss(logits, target.float())
    with pytest.raises(TypeError, match="logits"):
        loss(logits.numpy(), target)
    with pytest.raises(ValueError, match=r"\(N, K, H, W\)"):
        loss(logits[0], target)
    with pytest.raises(ValueError, match="K >= 2"):
        loss(logits[:, :1], target.clamp(max=0))
    bad = target.clone()
    bad[0, 0, 0] = 3
    with pytest.raises(ValueError, match=r"value 3; expected 0\.\.2"):
        loss(logits, bad)
    if loss is not soft_dice_loss:
        with pytest.raises(ValueError, match="weight shape"):
            loss(logits, target, torch.ones(2, 8, 8))
        with pytest.raises(TypeError, match="weight"):
            loss(logits, target, torch.ones(2, 8, 9, dtype=torch.long))
