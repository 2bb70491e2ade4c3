"""U-Net weight map (Ronneberger 2015, eq. 2) and separating targets."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from napari_unetseg import weightmap
from napari_unetseg.weightmap import instance_targets, weight_map


def brute_force(labels: np.ndarray, w0: float = 10.0, sigma: float = 5.0) -> np.ndarray:
    """Eq. 2 border term from full-image EDTs of every instance, sorted per pixel."""
    ids = [i for i in np.unique(labels) if i != 0]
    term = np.zeros(labels.shape)
    if len(ids) < 2:
        return term
    dists = np.sort(np.stack([ndi.distance_transform_edt(labels != i) for i in ids]), axis=0)
    term = w0 * np.exp(-((dists[0] + dists[1]) ** 2) / (2 * sigma**2))
    term[labels != 0] = 0
    return term


def balanced(labels: np.ndarray) -> np.ndarray:
    fg = labels > 0
    n = fg.size
    return np.where(fg, n / (2 * fg.sum()), n / (2 * (~fg).sum()))


def voronoi(shape: tuple[int, int], n: int, seed: int, gap: int = 1) -> np.ndarray:
    """Watershed tessellation of random seeds; ``gap`` 1 or 2 px of background between cells."""
    rng = np.random.default_rng(seed)
    markers = np.zeros(shape, np.int32)
    markers[rng.integers(0, shape[0], n), rng.integers(0, shape[1], n)] = np.arange(1, n + 1)
    labels = watershed(ndi.distance_transform_edt(markers == 0), markers)
    cut = ndi.maximum_filter(labels, size=3) != labels
    if gap == 2:
        cut |= ndi.minimum_filter(labels, size=3) != labels
    labels[cut] = 0
    return labels


def discs(shape: tuple[int, int], centres: list, radius: float, ids: list | None = None):
    yy, xx = np.indices(shape)
    labels = np.zeros(shape, np.int64)
    for k, (cy, cx) in enumerate(centres):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = k + 1 if ids is None else ids[k]
    return labels


def random_discs(shape: tuple[int, int], n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = [tuple(rng.integers(0, s) for s in shape) for _ in range(n)]
    return discs(shape, centres, rng.uniform(3, 8))


def touching_pair(shape=(40, 60), radius=10):
    """Two overlapping discs cut apart at x = 30: labels 1 | 2 touch over rows 14..26."""
    union = discs(shape, [(20, 22), (20, 38)], radius) > 0
    return np.where(union, np.where(np.indices(shape)[1] < 30, 1, 2), 0)


LAYOUTS = {
    "voronoi_gap1": voronoi((64, 72), 30, seed=1, gap=1),
    "voronoi_gap2": voronoi((70, 50), 20, seed=2, gap=2),
    "sparse_discs": random_discs((80, 80), 6, seed=3),  # wide gaps: exercises the second pass
    "dense_discs": random_discs((60, 60), 25, seed=4),
    "noncontiguous": voronoi((48, 48), 12, seed=5) * 7 + (voronoi((48, 48), 12, seed=5) > 0) * 3,
    "voronoi_hole": np.where(np.pad(np.ones((30, 30)), 25) > 0, 0, voronoi((80, 80), 40, seed=6)),
}


def test_both_passes_are_exercised(monkeypatch):
    """Thin gaps are settled by the small-window pass; a hole also needs the full pass."""
    calls = []
    original = weightmap._nearest_two

    def spy(labels, boxes, margin, select=None):
        calls.append((margin, select is None))
        return original(labels, boxes, margin, select)

    monkeypatch.setattr(weightmap, "_nearest_two", spy)
    full = 27  # floor(R) - 1 for w0=10, sigma=5, tol=1e-6 (R = 28.4)
    weight_map(LAYOUTS["voronoi_gap1"])
    assert len(calls) == 1 and calls[0][0] < full and calls[0][1]
    calls.clear()
    weight_map(LAYOUTS["voronoi_hole"])
    assert len(calls) == 2 and calls[0][0] < full and calls[1] == (full, False)
    calls.clear()
    weight_map(LAYOUTS["sparse_discs"])  # wide gaps: one pass with the full margin
    assert calls == [(full, True)]


@pytest.mark.parametrize("name", sorted(LAYOUTS))
@pytest.mark.parametrize("class_weights", [None, "balanced"])
def test_matches_brute_force(name, class_weights):
    labels = LAYOUTS[name]
    wc = 1.0 if class_weights is None else balanced(labels)
    got = weight_map(labels, class_weights=class_weights)
    assert got.dtype == np.float32 and got.shape == labels.shape
    np.testing.assert_allclose(got, wc + brute_force(labels), rtol=0, atol=1e-4)


@pytest.mark.parametrize(("w0", "sigma"), [(3.0, 2.0), (10.0, 9.0), (25.0, 5.0)])
def test_matches_brute_force_other_parameters(w0, sigma):
    labels = LAYOUTS["sparse_discs"]
    got = weight_map(labels, w0=w0, sigma=sigma, class_weights=None)
    np.testing.assert_allclose(got, 1 + brute_force(labels, w0, sigma), rtol=0, atol=1e-4)


@pytest.mark.parametrize("tol", [1e-6, 1e-3, 1e-1])
@pytest.mark.parametrize("name", ["sparse_discs", "voronoi_hole"])
def test_cutoff_error_is_bounded_by_tol(tol, name):
    """The finite support drops only terms below ``tol`` (float32 rounding aside)."""
    labels = LAYOUTS[name]
    got = weight_map(labels, class_weights=None, tol=tol).astype(np.float64)
    err = np.abs(got - 1 - brute_force(labels))
    assert err.max() <= tol + 2e-6
    if tol >= 1e-3 and name == "sparse_discs":
        assert err.max() > tol / 100  # a coarser tol really truncates (the test can see it)


def test_instance_at_the_edge_of_the_support_counts():
    """d1 = 1 and d2 = 14 give d1 + d2 = 15 < R(tol=0.1) = 15.17: the term (0.111) is kept."""
    labels = np.zeros((5, 40), np.int32)
    labels[2, 9], labels[2, 24] = 1, 2  # pixel (2, 10) is 1 px from id 1 and 14 px from id 2
    got = weight_map(labels, class_weights=None, tol=0.1)
    assert got[2, 10] == pytest.approx(1 + 10 * np.exp(-(15**2) / 50), abs=1e-6)
    np.testing.assert_allclose(got, 1 + brute_force(labels), rtol=0, atol=0.1)


def test_stack_is_processed_slice_by_slice():
    stack = np.stack([voronoi((40, 40), 8, seed=s) for s in range(3)])
    got = weight_map(stack)
    assert got.shape == stack.shape
    for z in range(3):
        expected = balanced(stack[z]) + brute_force(stack[z])
        np.testing.assert_allclose(got[z], expected, rtol=0, atol=1e-4)


def test_zero_one_and_two_instances():
    empty = np.zeros((20, 30), np.uint8)
    np.testing.assert_array_equal(weight_map(empty), 1.0)  # one class only: wc = 1
    one = discs((20, 30), [(10, 10)], 4)
    np.testing.assert_allclose(weight_map(one), balanced(one), rtol=1e-6)
    two = discs((20, 30), [(10, 8), (10, 22)], 4)
    np.testing.assert_allclose(
        weight_map(two), balanced(two) + brute_force(two), rtol=0, atol=1e-4
    )
    assert weight_map(two).max() > balanced(two).max() + 1  # a real border term was added


def test_w0_zero_leaves_class_balance_only():
    labels = LAYOUTS["voronoi_gap1"]
    np.testing.assert_allclose(weight_map(labels, w0=0), balanced(labels), rtol=1e-6)
    np.testing.assert_array_equal(weight_map(labels, w0=0, class_weights=None), 1.0)


def test_class_weights_options():
    labels = LAYOUTS["dense_discs"]
    wc = weight_map(labels, w0=0)
    assert wc.mean() == pytest.approx(1.0, rel=1e-5)
    fg = labels > 0
    assert wc[fg][0] / wc[~fg][0] == pytest.approx((~fg).sum() / fg.sum(), rel=1e-5)
    fixed = weight_map(labels, w0=0, class_weights={0: 0.5, 1: 3.0})
    np.testing.assert_array_equal(fixed, np.where(fg, 3.0, 0.5))


def test_border_maximum_lies_in_the_gap():
    labels = touching_pair()
    labels[:, 29:31] = 0  # a 2 px gap between the two discs at x = 29, 30
    w = weight_map(labels, class_weights=None)
    y, x = np.unravel_index(np.argmax(w), w.shape)
    assert x in (29, 30) and labels[y, x] == 0
    assert w[y, x] == pytest.approx(1 + 10 * np.exp(-(1 + 2) ** 2 / 50), abs=1e-4)


def test_far_from_cells_only_class_weight():
    labels = discs((120, 120), [(15, 15), (15, 32)], 6)
    w = weight_map(labels)
    wc = balanced(labels)
    assert np.abs(w - wc)[70:, 70:].max() < 1e-6  # > 60 px from both discs
    assert np.abs(w - wc)[10:20, 22:26].min() > 1.0  # but high between them


def test_larger_sigma_widens_the_band():
    labels = discs((60, 80), [(30, 25), (30, 55)], 12)  # 6 px apart
    widths = [
        np.count_nonzero(weight_map(labels, sigma=s, class_weights=None) > 2.0)
        for s in (2.0, 5.0, 10.0)
    ]
    assert widths[0] < widths[1] < widths[2]


def test_large_and_float_ids_match_small_ids():
    small = LAYOUTS["voronoi_gap1"]
    big = np.where(small > 0, small.astype(np.int64) * 1_000_003 + 70_000, 0)
    np.testing.assert_array_equal(weight_map(big), weight_map(small))
    np.testing.assert_array_equal(weight_map(small.astype(np.float32)), weight_map(small))


@pytest.mark.parametrize(
    ("labels", "kwargs", "error", "match"),
    [
        (np.array([[0, -1], [1, 2]]), {}, ValueError, "negative"),
        (np.array([[0, 1.5], [1, 2]]), {}, ValueError, "non-integer"),
        (np.array([[0, np.nan], [1, 2]]), {}, ValueError, "NaN"),
        (np.array([["a", "b"]]), {}, TypeError, "integer label image"),
        (np.zeros(5, int), {}, ValueError, "2D"),
        (np.zeros((2, 2, 2, 2), int), {}, ValueError, "2D"),
        (np.zeros((4, 4), int), {"w0": -1}, ValueError, "w0"),
        (np.zeros((4, 4), int), {"sigma": 0}, ValueError, "sigma"),
        (np.zeros((4, 4), int), {"sigma": "5"}, TypeError, "sigma"),
        (np.zeros((4, 4), int), {"class_weights": "inverse"}, ValueError, "balanced"),
        (np.zeros((4, 4), int), {"class_weights": {0: 1.0}}, ValueError, "keys"),
        (np.zeros((4, 4), int), {"class_weights": {0: 1.0, 1: -2}}, ValueError, "class_weights"),
    ],
)
def test_weight_map_validation(labels, kwargs, error, match):
    with pytest.raises(error, match=match):
        weight_map(labels, **kwargs)


def test_instance_targets_split_touching_discs():
    labels = touching_pair()
    assert ndi.label(labels > 0, structure=np.ones((3, 3)))[1] == 1  # touching: one blob
    target = instance_targets(labels)
    assert target.dtype == np.uint8 and set(np.unique(target)) == {0, 1}
    assert ndi.label(target, structure=np.ones((3, 3)))[1] == 2
    np.testing.assert_array_equal(target[:, 29:31], 0)  # contact pixels of both discs removed
    assert target[20, 15] == 1 and target[20, 45] == 1  # interiors kept
    three = instance_targets(labels, classes=3)
    np.testing.assert_array_equal(three == 1, target == 1)
    assert set(np.unique(three[:, 29:31])) == {0, 2}
    assert (three == 2).sum() == (target != (labels > 0)).sum() > 2 * 13
    assert set(np.nonzero(three == 2)[1]) == {29, 30}


def test_instance_targets_border_width_and_connectivity():
    labels = touching_pair()
    np.testing.assert_array_equal(instance_targets(labels, border=0), labels > 0)
    wide = instance_targets(labels, border=3)
    np.testing.assert_array_equal(wide[15:26, 27:33], 0)
    assert wide[20, 26] == 1 and wide[20, 33] == 1
    assert (wide == 0).sum() > (instance_targets(labels) == 0).sum()
    four = instance_targets(labels, connectivity=1)
    assert ndi.label(four)[1] == 2  # 4-connected components
    assert (four == 0).sum() <= (instance_targets(labels) == 0).sum()
    stack = instance_targets(np.stack([labels, labels[::-1, ::-1]]))
    np.testing.assert_array_equal(stack[1], instance_targets(labels)[::-1, ::-1])
    sparse = discs((30, 30), [(8, 8), (22, 22)], 5)  # not touching: nothing removed
    np.testing.assert_array_equal(instance_targets(sparse, border=2), sparse > 0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"border": -1}, "border"), ({"border": 1.5}, "border"), ({"classes": 4}, "classes"),
     ({"connectivity": 3}, "connectivity")],
)
def test_instance_targets_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        instance_targets(touching_pair(), **kwargs)
