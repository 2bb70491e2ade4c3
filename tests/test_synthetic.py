"""Synthetic touching cells: deterministic, EM-like, with direct contacts and ISBI-style labels."""

import numpy as np
import pytest
from skimage.measure import label

from napari_unetseg.metrics import rand_scores
from napari_unetseg.synthetic import membrane_labels, touching_cells


def _direct_contacts(inst):
    """Pairs of different non-zero labels that are 4-neighbours (no background between)."""
    pairs = set()
    for a, b in ((inst[:, :-1], inst[:, 1:]), (inst[:-1, :], inst[1:, :])):
        m = (a > 0) & (b > 0) & (a != b)
        pairs |= {tuple(sorted(p)) for p in zip(a[m].tolist(), b[m].tolist(), strict=True)}
    return pairs


def test_types_ranges_and_cell_count():
    image, inst = touching_cells((96, 128), n_cells=15, seed=3)
    assert image.shape == inst.shape == (96, 128)
    assert image.dtype == np.float32 and inst.dtype == np.int32
    assert image.min() >= 0.0 and image.max() <= 1.0
    ids = np.unique(inst[inst > 0])
    assert ids.tolist() == list(range(1, ids.size + 1))  # sequential
    assert 12 <= ids.size <= 15
    assert 0.02 < (inst == 0).mean() < 0.3  # thin gaps, not empty


def test_deterministic_for_a_seed():
    a = touching_cells((64, 64), 10, seed=5)
    b = touching_cells((64, 64), 10, seed=5)
    c = touching_cells((64, 64), 10, seed=6)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_some_cells_touch_directly_and_most_have_gaps():
    _, inst = touching_cells((128, 128), 25, seed=0)
    contacts = _direct_contacts(inst)
    assert len(contacts) >= 2
    assert (inst == 0).sum() > 10 * len(contacts)  # most borders are gaps
    _, none = touching_cells((128, 128), 25, seed=0, touch_fraction=0.0)
    assert not _direct_contacts(none)
    _, all_touch = touching_cells((64, 64), 8, seed=0, gap=0)
    assert (all_touch == 0).sum() == 0


def test_image_is_em_like_dark_membranes_bright_cells():
    image, inst = touching_cells((128, 128), 20, seed=1, noise=0.05)
    cells = image[inst > 0].mean()
    gaps = image[inst == 0].mean()
    assert cells - gaps > 0.2
    quiet, _ = touching_cells((128, 128), 20, seed=1, noise=0.0)
    assert np.std(image - quiet) == pytest.approx(0.05, rel=0.3)


def test_membrane_labels_separate_every_cell_like_isbi():
    _, inst = touching_cells((128, 128), 25, seed=2)
    mem = membrane_labels(inst)
    assert mem.dtype == np.uint8 and set(np.unique(mem).tolist()) <= {0, 255}
    assert np.all(mem[inst == 0] == 0)
    segments = label(mem == 255, connectivity=1)
    # no 4-connected interior component spans two cells
    assert rand_scores(segments, inst)[2] == pytest.approx(1.0)
    assert segments.max() >= len(np.unique(inst[inst > 0]))


def test_stack_shape_independent_slices():
    image, inst = touching_cells((3, 64, 64), 10, seed=0)
    assert image.shape == inst.shape == (3, 64, 64)
    assert not np.array_equal(inst[0], inst[1])
    mem = membrane_labels(inst)
    assert np.array_equal(mem[1], membrane_labels(inst[1]))


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        ({"shape": (4, 4)}, ValueError),
        ({"shape": (2, 3, 4, 5)}, ValueError),
        ({"n_cells": 0}, ValueError),
        ({"n_cells": 2.5}, TypeError),
        ({"shape": (16, 16), "n_cells": 100}, ValueError),
        ({"gap": -1}, ValueError),
        ({"noise": -0.1}, ValueError),
        ({"touch_fraction": 1.5}, ValueError),
    ],
)
def test_bad_arguments(kwargs, exc):
    with pytest.raises(exc):
        touching_cells(**kwargs)


def test_membrane_labels_rejects_float():
    with pytest.raises(TypeError):
        membrane_labels(np.zeros((8, 8)))
