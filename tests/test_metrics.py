"""Scores: pixel error, Dice/IoU and the ISBI 2012 foreground-restricted V_Rand / V_Info."""

import itertools
import math

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.measure import label
from skimage.metrics import adapted_rand_error

from napari_unetseg import metrics
from napari_unetseg.metrics import dice, info_scores, iou, isbi_scores, pixel_error, rand_scores


def _brute_force_rand(seg, gt):
    """Count ordered pixel pairs (self pairs included, N^2 form) over the GT foreground."""
    g, s = gt[gt > 0].ravel(), seg[gt > 0].ravel()
    both = same_gt = same_pred = 0
    for i, j in itertools.product(range(g.size), repeat=2):
        sg = g[i] == g[j]
        sp = i == j or (s[i] == s[j] and s[i] != 0)  # predicted 0 pixels are singletons
        both += sg and sp
        same_gt += sg
        same_pred += sp
    split, merge = both / same_gt, both / same_pred
    return 2 * split * merge / (split + merge), split, merge


@pytest.mark.parametrize("seed", range(4))
def test_rand_matches_brute_force_pair_counting(seed):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 4, size=(5, 6))
    seg = rng.integers(0, 4, size=(5, 6))
    assert rand_scores(seg, gt) == pytest.approx(_brute_force_rand(seg, gt), abs=1e-12)


GT = np.array([[1, 1, 1, 1, 2, 2, 2, 2]])


def test_pure_split_hand_values():
    seg = np.array([[1, 1, 3, 3, 2, 2, 2, 2]])  # GT object 1 cut in two
    v, split, merge = rand_scores(seg, GT)
    # sum p^2 = 4+4+16 = 24, sum t^2 = 32, sum s^2 = 24
    assert (split, merge) == pytest.approx((0.75, 1.0))
    assert v == pytest.approx(6 / 7)
    v, split, merge = info_scores(seg, GT)
    # H(T) = log 2, H(S) = 1.5 log 2, I = H(T): merge 1, split 2/3
    assert merge == pytest.approx(1.0)
    assert split == pytest.approx(2 / 3)
    assert v == pytest.approx(0.8)


def test_pure_merge_hand_values():
    seg = np.ones_like(GT)
    assert rand_scores(seg, GT) == pytest.approx((2 / 3, 1.0, 0.5))
    v, split, merge = info_scores(seg, GT)
    assert (v, split, merge) == pytest.approx((0.0, 1.0, 0.0))


def test_predicted_boundary_pixels_are_singletons():
    gt = np.array([[1, 1, 1, 1]])
    seg = np.array([[1, 1, 1, 0]])
    # sum p^2 = 9 + 1 (singleton), sum t^2 = 16, sum s^2 = 9 + 1
    assert rand_scores(seg, gt) == pytest.approx((20 / 26, 10 / 16, 1.0))
    # GT background is ignored whatever the prediction says there
    assert rand_scores(np.array([[1, 1, 5, 5]]), np.array([[1, 1, 0, 0]]))[0] == 1.0


def test_identical_and_relabelled_segmentations_score_one():
    gt = label(np.random.default_rng(0).random((40, 40)) > 0.4, connectivity=1)
    perm = np.random.default_rng(1).permutation(gt.max() + 1)
    perm[perm == 0], perm[0] = perm[0], 0  # keep 0 as background
    seg = np.where(gt > 0, perm[gt] + 7, 0)
    assert rand_scores(seg, gt) == pytest.approx((1.0, 1.0, 1.0))
    assert info_scores(seg, gt) == pytest.approx((1.0, 1.0, 1.0))


def test_agrees_with_skimage_adapted_rand_error():
    yy, xx = np.mgrid[:64, :64]
    gt = 1 + (yy // 16) * 4 + xx // 16
    gt[(yy % 16 == 0) | (xx % 16 == 0)] = 0  # GT membranes, ignored by both
    seg = 1 + ((yy + 5) // 21) * 4 + (xx + 3) // 13  # no 0: skimage counts 0 as a segment
    err, prec, rec = adapted_rand_error(gt, seg)
    v, split, merge = rand_scores(seg, gt)
    # skimage calls the split score "precision" and the merge score "recall" (Fiji: the reverse)
    assert (1 - v, split, merge) == pytest.approx((err, prec, rec), rel=0.02)
    # exact once its n(n-1) pair normalisation is undone
    o = metrics._overlap(seg, gt)
    p2 = float(np.sum(o.joint.astype(float) ** 2)) - o.n
    assert p2 / (np.sum(o.gt_sizes.astype(float) ** 2) - o.n) == pytest.approx(prec, rel=1e-12)
    assert p2 / (np.sum(o.pred_sizes.astype(float) ** 2) - o.n) == pytest.approx(rec, rel=1e-12)


def test_pixel_error_dice_iou_known_values():
    pred = np.array([0, 1, 1, 2])
    gt = np.array([0, 1, 2, 2])
    assert pixel_error(pred, gt) == 0.25
    d = dice(pred, gt)
    assert d == pytest.approx({0: 1.0, 1: 2 / 3, 2: 2 / 3, "mean": 7 / 9})
    j = iou(pred, gt)
    assert j == pytest.approx({0: 1.0, 1: 0.5, 2: 0.5, "mean": 2 / 3})
    d = dice(pred.reshape(2, 2), gt.reshape(2, 2), classes=[1, 5])
    assert d[1] == pytest.approx(2 / 3) and math.isnan(d[5]) and d["mean"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("fn", [pixel_error, dice, iou, rand_scores, info_scores])
def test_shape_mismatch_and_float_labels_rejected(fn):
    with pytest.raises(ValueError, match="same shape"):
        fn(np.zeros((4, 4), int), np.zeros((4, 5), int))
    with pytest.raises(TypeError, match="integer"):
        fn(np.zeros((4, 4)), np.zeros((4, 4), int))


def _ring_gt(size=48):
    """Three cells separated by 1-px membranes (ISBI values: 0 membrane, 255 interior)."""
    gt = np.full((size, size), 255, np.uint8)
    gt[:, size // 3] = 0
    gt[size // 2, size // 3:] = 0
    return gt


def test_isbi_perfect_prediction_scores_one():
    gt = _ring_gt()
    for thinning in (True, False):
        r = isbi_scores((gt == 0).astype(float), gt, thinning=thinning)
        assert r["v_rand"] == pytest.approx(1.0) and r["v_info"] == pytest.approx(1.0)
        assert 0.0 < r["v_rand_threshold"] <= 1.0


def test_isbi_thinning_forgives_thick_membranes():
    gt = _ring_gt()
    thick = ndi.binary_dilation(gt == 0, iterations=2).astype(float)
    thin = isbi_scores(thick, gt, thinning=True)
    raw = isbi_scores(thick, gt, thinning=False)
    assert thin["v_rand"] > 0.99 and thin["v_info"] > 0.98
    assert raw["v_rand"] < thin["v_rand"] - 0.05  # singletons in the thick band cost splits
    assert raw["v_rand_split"] < raw["v_rand_merge"]


def test_isbi_detects_a_missing_membrane_as_merge():
    gt = _ring_gt()
    prob = (gt == 0).astype(float)
    prob[gt.shape[0] // 2, :] = 0.0  # the horizontal membrane is missed
    r = isbi_scores(prob, gt)
    assert r["v_rand_merge"] < 0.9 and r["v_rand_split"] == pytest.approx(1.0)
    assert r["v_info_merge"] < 0.9


def test_isbi_stack_is_the_mean_of_its_slices_and_accepts_a_mask():
    gt = np.stack([_ring_gt(), _ring_gt().T])
    prob = np.stack([ndi.gaussian_filter((g == 0).astype(float), 1.5) for g in gt])
    prob /= prob.max()
    ts = [0.2, 0.4]
    stack = isbi_scores(prob, gt, ts)
    per = [isbi_scores(prob[z], gt[z], ts) for z in range(2)]
    curve = np.mean([p["v_rand_curve"] for p in per], axis=0)
    assert stack["v_rand_curve"] == pytest.approx(curve.tolist())
    mask = isbi_scores(prob, gt == 0, ts)  # bool = membrane mask
    assert mask["v_info_curve"] == pytest.approx(stack["v_info_curve"])
    swapped = isbi_scores(prob, np.where(gt == 0, 7, 1), ts, gt_membrane_value=7)
    assert swapped["v_rand"] == pytest.approx(stack["v_rand"])


@pytest.mark.parametrize(
    "bad, match",
    [(1.5, r"\[0, 1\]"), (-0.1, r"\[0, 1\]"), (np.nan, "NaN")],
)
def test_isbi_rejects_bad_probabilities(bad, match):
    gt = _ring_gt(16)
    prob = (gt == 0).astype(float)
    prob[3, 3] = bad
    with pytest.raises(ValueError, match=match):
        isbi_scores(prob, gt)


def test_isbi_rejects_bad_shapes_and_thresholds():
    gt = _ring_gt(16)
    with pytest.raises(ValueError, match="shape"):
        isbi_scores(np.zeros((16, 17)), gt)
    with pytest.raises(ValueError, match="thresholds"):
        isbi_scores(np.zeros((16, 16)), gt, thresholds=[0.5, 2.0])
    with pytest.raises(ValueError, match="no cell interior"):
        isbi_scores(np.zeros((16, 16)), np.zeros((16, 16), np.uint8))
    with pytest.raises(ValueError, match="no foreground"):
        rand_scores(np.ones((3, 3), int), np.zeros((3, 3), int))
