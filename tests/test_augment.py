"""Tests of the torch batch augmentation (elastic deformation, flips, rot90, intensity)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from napari_unetseg.augment import (
    AugmentConfig,
    augment_batch,
    elastic_deform,
    random_displacement,
)


def _batch(n: int = 4, h: int = 24, w: int = 24, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(-1, 3, (n, h, w), generator=g)
    image = torch.rand((n, 2, h, w), generator=g)
    weight = torch.rand((n, h, w), generator=g) + 1
    return image, target, weight


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_identity_when_all_off():
    image, target, weight = _batch()
    cfg = AugmentConfig.off()
    assert not cfg.active
    out = augment_batch(image, target, weight, config=cfg, generator=_gen())
    assert torch.equal(out[0], image) and torch.equal(out[1], target)
    assert torch.equal(out[2], weight)


def test_zero_displacement_is_identity():
    image, target, weight = _batch(h=20, w=31)
    zero = torch.zeros((image.shape[0], 2, 3, 3))
    out_i, out_t, out_w = elastic_deform(image, target, weight, zero)
    torch.testing.assert_close(out_i, image, atol=1e-5, rtol=0)
    assert torch.equal(out_t, target)
    torch.testing.assert_close(out_w, weight, atol=1e-5, rtol=0)


def test_constant_displacement_shifts_image():
    # a displacement of +2 px in x everywhere samples the pixel two to the right
    image = torch.arange(32.0).repeat(1, 1, 16, 1)  # value = x
    target = torch.zeros((1, 16, 32), dtype=torch.long)
    disp = torch.zeros((1, 2, 3, 3))
    disp[:, 0] = 2.0
    out, _, _ = elastic_deform(image, target, None, disp)
    torch.testing.assert_close(out[0, 0, :, :-2], image[0, 0, :, 2:], atol=1e-4, rtol=0)


def test_elastic_labels_stay_in_original_set():
    image, target, weight = _batch(n=3, h=40, w=40)
    cfg = dataclasses.replace(AugmentConfig.off(), elastic=True, elastic_sigma=10.0)
    _, out_t, out_w = augment_batch(image, target, weight, config=cfg, generator=_gen(3))
    assert out_t.dtype == target.dtype
    assert set(out_t.unique().tolist()) <= set(target.unique().tolist())
    assert not torch.equal(out_t, target)  # it did move
    assert out_w is not None and out_w.min() >= 1 - 1e-5  # bilinear stays within range


def test_elastic_keeps_image_and_labels_aligned():
    # image equal to a smooth label map: nearest vs bilinear differ only at label edges
    yy, xx = torch.meshgrid(torch.arange(48), torch.arange(48), indexing="ij")
    labels = ((xx // 12 + yy // 12) % 2).unsqueeze(0)
    image = labels.unsqueeze(1).float()
    cfg = dataclasses.replace(AugmentConfig.off(), elastic=True)
    out_i, out_t, _ = augment_batch(image, labels, None, config=cfg, generator=_gen(1))
    agree = (out_i[:, 0].round().long() == out_t).float().mean()
    assert agree > 0.97


def test_determinism_for_a_seed():
    image, target, weight = _batch()
    cfg = AugmentConfig(gamma=0.3)
    a = augment_batch(image, target, weight, config=cfg, generator=_gen(7))
    b = augment_batch(image, target, weight, config=cfg, generator=_gen(7))
    c = augment_batch(image, target, weight, config=cfg, generator=_gen(8))
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    assert not torch.equal(a[0], c[0])


@pytest.mark.parametrize("shape", [(16, 16), (12, 20)])
def test_flips_and_rotations_keep_alignment(shape):
    n = 16
    target = torch.randint(0, 50, (n, *shape), generator=_gen(2))
    image = target.unsqueeze(1).float().repeat(1, 2, 1, 1)
    weight = target.float() * 0.5
    cfg = dataclasses.replace(AugmentConfig.off(), flip=True, rot90=True)
    out_i, out_t, out_w = augment_batch(image, target, weight, config=cfg, generator=_gen(5))
    assert out_i.shape == image.shape
    assert torch.equal(out_i[:, 0].long(), out_t) and torch.equal(out_i[:, 1].long(), out_t)
    assert torch.equal(out_w, out_t.float() * 0.5)
    changed = [(out_t[i] != target[i]).any().item() for i in range(n)]
    assert 0 < sum(changed) < n  # some samples transformed, some not (p = 1/8 to stay)
    # every output is one of the 8 (or 4 for rectangles) symmetries of its input
    for i in range(n):
        t = target[i]
        cands = [t, t.flip(-1), t.flip(-2), t.flip(-1).flip(-2)]
        if shape[0] == shape[1]:
            cands += [t.T, t.flip(-1).T, t.flip(-2).T, t.flip(-1).flip(-2).T]
        assert any(torch.equal(out_t[i], c) for c in cands)


def test_intensity_changes_image_only():
    image, target, weight = _batch()
    cfg = dataclasses.replace(AugmentConfig.off(), brightness=0.2, contrast=0.2, gamma=0.3)
    out_i, out_t, out_w = augment_batch(image, target, weight, config=cfg, generator=_gen())
    assert torch.equal(out_t, target) and torch.equal(out_w, weight)
    assert not torch.allclose(out_i, image)
    # monotone per sample: the pixel order of each image is kept
    order_in = image[0, 0].flatten().argsort()
    assert torch.all(out_i[0, 0].flatten()[order_in].diff() >= -1e-5)


def test_random_displacement_statistics_and_prob():
    cfg = AugmentConfig(elastic_sigma=10.0, elastic_prob=1.0)
    d = random_displacement(2000, cfg, _gen(), torch.device("cpu"))
    assert d.shape == (2000, 2, 3, 3)
    assert abs(d.std().item() - 10.0) < 0.3
    half = dataclasses.replace(cfg, elastic_prob=0.5)
    d = random_displacement(2000, half, _gen(), torch.device("cpu"))
    zero = (d.abs().amax(dim=(1, 2, 3)) == 0).float().mean().item()
    assert 0.4 < zero < 0.6


@pytest.mark.parametrize(
    "kwargs",
    [
        {"elastic_sigma": -1.0},
        {"elastic_grid": 1},
        {"elastic_prob": 1.5},
        {"contrast": float("nan")},
        {"gamma": "0.2"},
    ],
)
def test_config_validation(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        AugmentConfig(**kwargs)
    with pytest.raises(TypeError, match="flip"):
        AugmentConfig(flip=1)


def test_config_round_trip_and_shape_errors():
    cfg = AugmentConfig(gamma=0.2, elastic_grid=4)
    assert AugmentConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        AugmentConfig.from_dict({"elastik": True})
    image, target, _ = _batch()
    with pytest.raises(ValueError, match="target"):
        augment_batch(image, target[:, :5], config=cfg, generator=_gen())


# ------------------------------------------------------------------- transfer augmentation


def test_size_returns_the_centre_and_zoom_scales_the_content():
    image, target, weight = _batch(n=2, h=40, w=40)
    off = AugmentConfig.off()
    out_i, out_t, out_w = augment_batch(image, target, weight, config=off, generator=_gen(),
                                        size=20)
    assert torch.allclose(out_i, image[..., 10:30, 10:30], atol=1e-5)
    assert torch.equal(out_t, target[:, 10:30, 10:30])
    assert torch.allclose(out_w, weight[:, 10:30, 10:30], atol=1e-5)
    # a vertical stripe 4 px wide in the centre: zoom 2**u changes its width by that factor
    stripes = torch.zeros(64, 1, 64, 64)
    stripes[..., 30:34] = 1.0
    lab = stripes[:, 0].long()
    zoom = dataclasses.replace(off, zoom=1.0)
    assert zoom.active
    _, out_t, _ = augment_batch(stripes, lab, None, config=zoom, generator=_gen(2), size=32)
    widths = out_t[:, 16].sum(1).float()  # one row across the stripe
    assert out_t.shape == (64, 32, 32) and widths.min() <= 3 and widths.max() >= 6


def test_invert_blur_and_noise_change_only_the_image():
    image, target, weight = _batch(n=8)
    inv = dataclasses.replace(AugmentConfig.off(), invert=1.0)
    out_i, out_t, _ = augment_batch(image, target, weight, config=inv, generator=_gen())
    assert torch.allclose(out_i, 1 - image) and torch.equal(out_t, target)
    flat = torch.full((4, 1, 24, 24), 0.3)
    blur = dataclasses.replace(AugmentConfig.off(), blur=3.0)
    out_i, out_t, out_w = augment_batch(flat, target[:4], weight[:4], config=blur,
                                        generator=_gen())
    assert torch.allclose(out_i, flat, atol=1e-6) and torch.equal(out_t, target[:4])
    edge = torch.zeros(4, 1, 24, 24)
    edge[..., 12:] = 1.0
    out_i, _, _ = augment_batch(edge, target[:4], None, config=blur, generator=_gen())
    assert out_i[..., 11].max() > 0.05  # the step is smoothed
    noisy = dataclasses.replace(AugmentConfig.off(), noise=0.5)
    out_i, out_t, _ = augment_batch(flat, target[:4], None, config=noisy, generator=_gen())
    assert 0.01 < (out_i - flat).std() < 0.5 and torch.equal(out_t, target[:4])


def test_elastic_deformation_is_on_by_default():
    """Ronneberger 2015: elastic deformation is the key augmentation; the trainer's default
    config must deform (not only flip and rotate) the patches."""
    from napari_unetseg.training import TrainConfig

    cfg = TrainConfig().augment
    assert cfg == AugmentConfig() and cfg.elastic and cfg.elastic_sigma > 0
    g = torch.Generator().manual_seed(3)
    target = torch.randint(0, 2, (4, 32, 32), generator=g)
    image = target[:, None].float()
    _, out, _ = augment_batch(image, target, None, config=cfg, generator=_gen(5))
    for k in range(4):
        rigid = [torch.rot90(t, r, (-2, -1)) for t in (target[k], target[k].flip(-1))
                 for r in range(4)]
        assert not any(torch.equal(out[k], r) for r in rigid)
