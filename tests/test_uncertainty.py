"""Uncertainty maps (entropy, flip-TTA, UNet++ heads) and the slice ranking."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_unetseg.config import ModelConfig
from napari_unetseg.models import build_model
from napari_unetseg.normalize import Normalization
from napari_unetseg.uncertainty import (
    SPREAD,
    TILE_METHODS,
    rank_slices,
    uncertainty,
    uncertainty_maps,
    visit_order,
)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="unetpp", depth=2, width=4, classes=3)).eval()
    rng = np.random.default_rng(0)
    image = (rng.random((2, 40, 56)) * 255).astype(np.uint8)
    image[1, :, :28] = 0  # a different second slice
    return model, image, Normalization.fit(image)


def _direct(model, x):
    """The maps computed the plain way, on the whole slice (one tile)."""
    with torch.no_grad():
        heads = [torch.softmax(o, 1) for o in model(x, level="all")]
        p = torch.stack(heads).mean(0)
        flips = [p] + [torch.stack([torch.softmax(o, 1) for o in model(x.flip(d), level="all")]
                                   ).mean(0).flip(d) for d in ((-1,), (-2,), (-2, -1))]
    k = p.shape[1]

    def spread(ps):
        return torch.stack(ps).var(0, unbiased=False).sum(1) / (1 - 1 / k)

    ent = -(p * p.clamp_min(1e-12).log()).sum(1) / math.log(k)
    return p, {"entropy": ent, "tta": spread(flips), "heads": spread(heads)}


def test_maps_match_a_direct_computation(setup):
    model, image, norm = setup
    res = uncertainty_maps(model, image, normalization=norm, methods=TILE_METHODS)
    assert res.slices == (0, 1) and res.probabilities.shape == (2, 3, 40, 56)
    for z in (0, 1):
        x = torch.from_numpy(norm(image[z]))[None, None]
        p, maps = _direct(model, x)
        np.testing.assert_allclose(res.probabilities[z], p[0].numpy(), atol=1e-4)
        for name in TILE_METHODS:
            assert res.maps[name].shape == (2, 40, 56)
            np.testing.assert_allclose(res.maps[name][z], maps[name][0].numpy(), atol=1e-4)
            assert res.maps[name].min() >= 0 and res.maps[name].max() <= 1
    assert not np.array_equal(res.maps["tta"], res.maps["heads"])


def test_progress_slices_and_2d(setup):
    model, image, norm = setup
    gen = uncertainty(model, image, normalization=norm, slices=[1])
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as done:
            res = done.value
            break
    assert events and events[-1].done == events[-1].total and res.slices == (1,)
    flat = uncertainty_maps(model, image[1], normalization=norm)
    np.testing.assert_allclose(flat.maps["entropy"], res.maps["entropy"][0], atol=1e-6)


def test_bad_requests_raise(setup):
    model, image, norm = setup
    with pytest.raises(ValueError, match="subset"):
        uncertainty_maps(model, image, normalization=norm, methods=["mc"])
    unet = build_model(ModelConfig(depth=2, width=4))
    with pytest.raises(ValueError, match="deep supervision"):
        uncertainty_maps(unet, image, normalization=norm, methods=["heads"])
    with pytest.raises(ValueError, match="out of range"):
        uncertainty_maps(model, image, normalization=norm, slices=[5])


def test_rank_slices_puts_the_most_uncertain_first():
    maps = np.zeros((4, 8, 8), np.float32)
    maps[2] = 0.9
    maps[0, :4] = 0.5
    assert [z for z, _ in rank_slices(maps)] == [2, 0, 1, 3]
    ranked = rank_slices(maps[[3, 0]], slices=[7, 9])
    assert ranked == [(9, pytest.approx(0.25)), (7, 0.0)]
    with pytest.raises(ValueError, match="planes"):
        rank_slices(maps, slices=[0])


def test_visit_order_keeps_slices_apart_and_painted_slices_last():
    ranked = [(7, 0.9), (8, 0.8), (20, 0.7), (2, 0.6), (9, 0.5)]
    # pass 1 takes 7 and 20 (8 and 9 are neighbours of 7), pass 2 takes 8, pass 3 takes 9;
    # slice 2 holds strokes, so it comes last although it ranks above 9
    assert visit_order(ranked, spread=3, painted=[2]) == [7, 20, 8, 9, 2]
    assert visit_order(ranked, spread=1) == [7, 8, 20, 2, 9]  # the ranking itself
    assert visit_order(ranked, spread=0, painted={7, 2}) == [8, 20, 9, 7, 2]
    assert SPREAD == 3 and visit_order(ranked) == [7, 20, 2, 8, 9]
    assert visit_order([]) == []
    with pytest.raises(ValueError, match="spread"):
        visit_order(ranked, spread=-1)
