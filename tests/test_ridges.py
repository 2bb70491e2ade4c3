"""Unsure cell boundaries ("ridges"): faint lines of a membrane map are hot, sure ones not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unetseg.config import ModelConfig
from napari_unetseg.devices import drain
from napari_unetseg.models import build_model
from napari_unetseg.normalize import Normalization
from napari_unetseg.ridges import boundary_class, ridge_lines, ridge_map
from napari_unetseg.uncertainty import uncertainty, uncertainty_maps


def _membranes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 96 x 96 map: sure membranes (1.0, 4 px) around four cells, a faint line (0.5, 3 px)
    across the top-left cell, interiors at 0.05. Returns the map and masks of the sure and
    faint lines."""
    p = np.full((96, 96), 0.05, np.float32)
    sure = np.zeros(p.shape, bool)
    for c in (0, 46, 92):
        sure[c:c + 4, :] = sure[:, c:c + 4] = True
    faint = np.zeros(p.shape, bool)
    faint[4:46, 22:25] = True
    p[sure] = 1.0
    p[faint] = 0.5
    return p, sure, faint


def test_faint_lines_are_hot_and_sure_membranes_and_interiors_are_not():
    p, sure, faint = _membranes()
    lines = ridge_lines(p)
    assert lines.shape == p.shape and lines.dtype == np.float32
    near_faint = np.zeros_like(faint)
    near_faint[6:44, 21:26] = True
    assert lines[near_faint].max() > 0.8  # the faint line is found, and weighs most
    assert (lines[near_faint] > 0.5).sum() >= 30  # along its length
    away = np.ones_like(sure)
    away[:, 19:28] = False  # where the faint line meets them
    assert lines[sure & away].max() < 0.15  # sure membranes are cold
    inside = np.ones_like(sure)
    inside[:, 18:29] = False
    for c in (0, 46, 92):
        inside[max(c - 4, 0):c + 8, :] = inside[:, max(c - 4, 0):c + 8] = False
    assert lines[inside].max() == 0.0  # flat interiors hold no line


def test_the_map_is_blurred_lines_over_a_stack():
    p, _, faint = _membranes()
    stack = np.stack([p, np.where(faint, 0.05, p).astype(np.float32)])
    maps = ridge_map(stack)
    assert maps.shape == stack.shape and maps.min() >= 0.0 and maps.max() <= 1.0
    assert maps[0].mean() > 2 * maps[1].mean()  # the slice with the faint line ranks first
    np.testing.assert_allclose(ridge_map(p), maps[0], atol=1e-6)  # one stretch: same span
    with pytest.raises(ValueError, match="NaN"):
        ridge_lines(np.where(faint, np.nan, p))
    with pytest.raises(ValueError, match="shape"):
        ridge_lines(np.zeros((2, 2, 4, 4), np.float32))


def test_the_boundary_class_is_the_thinnest():
    p, _, _ = _membranes()
    probs = np.stack([p, 1 - p])
    assert boundary_class(probs) == 0
    assert boundary_class(probs[::-1]) == 1
    assert boundary_class(np.stack([probs, probs])) == 0
    with pytest.raises(ValueError, match="K >= 2"):
        boundary_class(probs[:1])


def test_uncertainty_computes_ridges_from_the_boundary_class():
    torch.manual_seed(0)
    model = build_model(ModelConfig(depth=2, width=4, classes=2)).eval()
    p, _, _ = _membranes()
    image = np.stack([p, p[::-1]]) * 255
    norm = Normalization.fit(image)
    gen = uncertainty(model, image, normalization=norm, methods=("entropy", "ridges"))
    events = []
    res = drain(gen, events.append)
    ridge_events = [e for e in events if e.message.endswith("unsure cell boundaries")]
    assert [e.slice_index for e in ridge_events] == [0, 1]  # one per slice, after the tiles
    assert events[-2:] == ridge_events and events[-1].done == events[-1].total
    assert events[-2].done == events[-1].done - 1
    k = boundary_class(res.probabilities)
    np.testing.assert_allclose(res.maps["ridges"], ridge_map(res.probabilities[:, k]),
                               atol=1e-6)
    assert set(res.maps) == {"entropy", "ridges"}
    flat = uncertainty_maps(model, image[0], normalization=norm, methods=("ridges",))
    assert flat.maps["ridges"].shape == p.shape
    one = build_model(ModelConfig(depth=2, width=4, classes=1))
    with pytest.raises(ValueError, match="two classes"):
        uncertainty_maps(one, image, normalization=norm, methods=("ridges",))
