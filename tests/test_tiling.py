"""Overlap-tile planner and stitcher against analytic predictors (MONAI's test idea).

For a pointwise or local predictor the stitched output must equal the transform of the whole
(mirror-padded) image, whatever the shape, tile, overlap, blend and batch size.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from napari_unetseg.tiling import (
    BLENDS,
    blend_window,
    iter_tiled,
    mirror_pad,
    plan_tiles,
    tiled_apply,
)

SHAPES = [(37, 53), (101, 7), (16, 16), (5, 3), (1, 9)]


def _image(shape, channels=1, seed=0):
    return np.random.default_rng(seed).normal(size=(channels, *shape)).astype(np.float32)


def plus_one(x):
    return x + 1


def times_two(x):
    return 2 * x


def mean3_valid(x):
    """3x3 mean without padding: output smaller by 1 on each side (numpy or torch)."""
    h, w = x.shape[-2] - 2, x.shape[-1] - 2
    return sum(x[..., i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
@pytest.mark.parametrize("fn", [plus_one, times_two])
def test_pointwise_equals_whole_image(shape, overlap, fn):
    img = _image(shape, channels=2)
    out = tiled_apply(img, fn, 16, overlap=overlap, batch_size=3)
    assert out.shape == img.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, fn(img), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
@pytest.mark.parametrize("blend", BLENDS)
def test_valid_mean_filter_equals_whole_image(shape, overlap, blend):
    img = _image(shape)
    out = tiled_apply(img, mean3_valid, (12, 10), overlap=overlap, margin=1, blend=blend)
    # scipy's "mirror" is numpy's "reflect": the whole image mirror-padded by the margin;
    # a length-1 axis cannot be reflected and is repeated ("nearest" = numpy's "edge")
    modes = ["nearest" if n == 1 else "mirror" for n in shape]
    want = ndi.uniform_filter(img[0].astype(np.float64), 3, mode=modes)
    np.testing.assert_allclose(out[0], want, atol=1e-6)


@pytest.mark.parametrize("batch_size", [1, 2, 5, 1000])
def test_batch_size_does_not_change_result(batch_size):
    img = _image((45, 33))
    ref = tiled_apply(img, mean3_valid, 10, overlap=0.25, margin=1, batch_size=1)
    out = tiled_apply(img, mean3_valid, 10, overlap=0.25, margin=1, batch_size=batch_size)
    np.testing.assert_array_equal(out, ref)


def test_tile_larger_than_image_is_one_padded_tile():
    img = _image((9, 13))
    plan = plan_tiles((9, 13), 64, margin=1)
    assert plan.n_tiles == 1 and plan.extent == (62, 62)
    out = tiled_apply(img, mean3_valid, 64, margin=1)
    want = ndi.uniform_filter(img[0].astype(np.float64), 3, mode="mirror")
    np.testing.assert_allclose(out[0], want, atol=1e-6)


def test_plan_covers_image_with_requested_overlap_and_alignment():
    plan = plan_tiles((1000, 300), 128, overlap=0.25, margin=4, align=16)
    oh, ow = plan.out_tile
    assert (oh, ow) == (120, 120)
    for starts, extent, n in ((plan.ys, plan.extent[0], 1000), (plan.xs, plan.extent[1], 300)):
        s = np.asarray(starts)
        assert s[0] == 0 and s[-1] + oh == extent >= n
        assert np.all(s % 16 == 0)
        gaps = np.diff(s)
        assert np.all(gaps <= oh - 16)  # stride <= out - overlap (rounded down to align)
        assert np.all(gaps > 0)
    assert plan.pad_width == ((4, plan.extent[0] - 1000 + 4), (4, plan.extent[1] - 300 + 4))
    assert plan.origins().shape == (plan.n_tiles, 2)


def test_progress_is_reported_per_batch():
    img = _image((40, 40))
    plan = plan_tiles((40, 40), 16, overlap=0.0)
    gen = iter_tiled(img, plus_one, plan, batch_size=4)
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            result = stop.value
            break
    assert plan.n_tiles == 9
    assert events == [(4, 9), (8, 9), (9, 9)]
    np.testing.assert_allclose(result, img + 1, atol=1e-6)


def test_torch_device_path_matches_numpy():
    img = _image((37, 53), channels=3)
    calls = []

    def pred(x):
        calls.append((type(x), tuple(x.shape)))
        return mean3_valid(x)

    out = tiled_apply(img, pred, 16, overlap=0.25, margin=1, batch_size=4, device="cpu")
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert all(t is torch.Tensor and s[1:] == (3, 16, 16) for t, s in calls)
    ref = tiled_apply(img, mean3_valid, 16, overlap=0.25, margin=1)
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-6)


def test_blend_window_is_positive_and_flat_inside():
    for mode in BLENDS:
        w = blend_window((20, 12), (5, 3), mode)
        assert w.shape == (20, 12) and w.dtype == np.float32 and w.min() > 0
    w = blend_window((20, 12), (5, 3), "cosine")
    assert np.all(w[5:15, 3:9] == 1) and w[0, 0] < w[2, 2] < 1
    assert np.all(blend_window((8, 8), (0, 0), "linear") == 1)


def test_mirror_pad_reflects_and_handles_tiny_axes():
    a = np.arange(4.0)[None, :]
    np.testing.assert_array_equal(mirror_pad(a, ((0, 0), (2, 1))), [[2, 1, 0, 1, 2, 3, 2]])
    np.testing.assert_array_equal(mirror_pad(a, ((1, 1), (0, 0))), np.repeat(a, 3, axis=0))
    assert mirror_pad(np.ones((1, 2, 2)), ((5, 5), (9, 9))).shape == (1, 12, 20)


@pytest.mark.parametrize("overlap", [-0.1, 1.0, 1.5])
def test_bad_overlap_raises(overlap):
    with pytest.raises(ValueError, match="overlap"):
        plan_tiles((32, 32), 16, overlap=overlap)


@pytest.mark.parametrize(("tile", "margin"), [(2, 1), (10, 5), ((20, 8), 4)])
def test_tile_not_larger_than_two_margins_raises(tile, margin):
    with pytest.raises(ValueError, match="2 \\* margin"):
        plan_tiles((32, 32), tile, margin=margin)


def test_other_bad_arguments_raise():
    with pytest.raises(ValueError, match="align"):
        plan_tiles((32, 32), 20, margin=4, align=16)  # output tile 12 < align
    with pytest.raises(TypeError, match="tile"):
        plan_tiles((32, 32), 16.0)
    with pytest.raises(TypeError, match="overlap"):
        plan_tiles((32, 32), 16, overlap="big")
    with pytest.raises(ValueError, match="shape"):
        plan_tiles((0, 32), 16)
    with pytest.raises(ValueError, match="blend"):
        blend_window((8, 8), (2, 2), "hann")
    with pytest.raises(ValueError, match="predictor returned"):
        tiled_apply(_image((20, 20)), plus_one, 12, margin=1)  # predictor ignores the margin
    with pytest.raises(ValueError, match="batch_size"):
        tiled_apply(_image((20, 20)), plus_one, 12, batch_size=0)
