"""ISBI scores equal to Fiji's (issue 11, point 3): the production scorer against an
independent step-by-step re-implementation of Fiji's evaluation (``fiji_reference.py``)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

import fiji_reference as fiji
from napari_unetseg.metrics import isbi_scores
from napari_unetseg.thinning import thin_borders


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to renaming the positive ids; 0 must be 0 in both."""
    if not ((a == 0) == (b == 0)).all():
        return False
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


def _reference_thinning(interior: np.ndarray) -> np.ndarray:
    h, w = interior.shape
    value = [[0 if interior[y, x] else 255 for y in range(h)] for x in range(w)]
    out = fiji.watershed(value, w, h)
    return np.array(out).T


def _soft_map(shape, seed: int) -> np.ndarray:
    """A smooth membrane probability with plateaus, exact 0s, 1s and threshold values."""
    rng = np.random.default_rng(seed)
    p = ndi.gaussian_filter(rng.random(shape), 1.5)
    p = (p - p.min()) / (p.max() - p.min())
    p = np.round(p * 20) / 20 if seed % 2 else p  # plateaus at the thresholds themselves
    p[rng.random(shape) < 0.05] = 0.0
    p[rng.random(shape) < 0.02] = 1.0
    return p


def _gt(shape, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 100)
    gt = np.full(shape, 255, np.uint8)
    for _ in range(4):
        gt[rng.integers(0, shape[0]), :] = 0
        gt[:, rng.integers(0, shape[1])] = 0
    return gt


@pytest.mark.parametrize("seed", range(6))
def test_thinning_equals_fiji_flooding(seed):
    rng = np.random.default_rng(seed)
    interior = ndi.gaussian_filter(rng.random((31, 27)), 1.0 + seed % 3) > 0.5
    if seed == 5:
        interior[:] = False  # no interior: one segment
    ours, ref = thin_borders(interior), _reference_thinning(interior)
    assert _same_partition(ours, ref)


def test_thinning_breaks_ties_in_fijis_order():
    # a 2-px wide border between two cells: Fiji queues column x = 3 first (x outer, y
    # inner), which joins the left cell; column 4 then sees both cells and is the line.
    # (scikit-image's watershed_line zigzags between the two columns here.)
    interior = np.ones((6, 8), bool)
    interior[:, 3:5] = False
    ours = thin_borders(interior)
    assert _same_partition(ours, _reference_thinning(interior))
    assert (ours[:, 4] == 0).all() and (ours[:, 3] == ours[0, 0]).all()


@pytest.mark.parametrize("seed", range(4))
def test_isbi_scores_equal_fiji_on_soft_maps(seed):
    shape = (2, 36, 30)
    p = np.stack([_soft_map(shape[1:], seed * 2 + z) for z in range(2)])
    gt = np.stack([_gt(shape[1:], seed * 2 + z) for z in range(2)])
    ours = isbi_scores(p, gt)
    q = (1.0 - p).astype(np.float32)  # the float32 interior map Fiji reads
    ref = fiji.best_scores([g.tolist() for g in gt], [qq.astype(np.float64).tolist()
                                                        for qq in q])
    assert ours["v_rand"] == pytest.approx(ref["v_rand"], abs=1e-9)
    assert ours["v_info"] == pytest.approx(ref["v_info"], abs=1e-9)


def test_the_cut_at_zero_keeps_exact_zeros_as_interior():
    gt = np.full((12, 12), 255, np.uint8)
    gt[:, 6] = 0
    p = np.full((12, 12), 0.5)
    p[:, :6] = 0.0  # certain cell on the left
    s = isbi_scores(p, gt, thresholds=[0.0])
    # Fiji's last cut (q > 0.9999999999999999) keeps the p == 0 pixels as one segment
    assert s["v_rand_curve"][0] > 0.5
    ref = fiji.best_scores([gt.tolist()], [(1 - p).astype(np.float32).tolist()])
    full = isbi_scores(p, gt)
    assert full["v_rand"] == pytest.approx(ref["v_rand"], abs=1e-12)
