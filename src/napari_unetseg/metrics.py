"""Evaluation scores: pixel error, Dice/IoU, and the ISBI 2012 EM challenge scores V_Rand, V_Info.

The segmentation scores follow Arganda-Carreras et al. 2015, "Crowdsourcing the creation of image
segmentation algorithms for connectomics", Front. Neuroanat. 9:142 (eqs. 3 and 6), in the form
implemented by Fiji's Trainable Weka Segmentation (``trainableSegmentation.metrics.RandError``
``getForegroundRestrictedRandIndexStatsN2`` / ``getMaximalVRandAfterThinning`` and
``VariationOfInformation.foregroundRestrictedFscore`` / ``getMaximalVInfoAfterThinning``), which
produced the challenge's official leaderboard:

* only pixels in the ground-truth foreground (GT label > 0) are counted, n of them;
* p_ij = (pixels in GT segment i and predicted segment j) / n, with N^2 normalisation (a pixel
  pairs with itself, as in the challenge's Matlab/Fiji code, not n(n-1) pairs);
* a predicted boundary pixel (label 0) inside the GT foreground is its own singleton segment;
* Rand split = sum p_ij^2 / sum_i t_i^2 (t = GT marginals), Rand merge = sum p_ij^2 / sum_j s_j^2
  (s = predicted marginals); V_Rand = their harmonic mean (Fiji's recall and precision, F-score);
* information split = I(S;T) / H(S), information merge = I(S;T) / H(T) (S predicted, T ground
  truth); V_Info = their harmonic mean.

A pure split (one GT object cut in two) lowers only the split scores; a pure merge only the merge
scores. No torch here: numpy, scipy and scikit-image only.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage as ndi

from .thinning import thin_borders

__all__ = ["dice", "info_scores", "instance_scores", "iou", "isbi_scores", "pixel_error",
           "rand_scores"]

DEFAULT_THRESHOLDS = tuple(round(0.1 * k, 1) for k in range(11))
#: Fiji's largest cut: its sweep ``t = 0, 0.1, ...`` accumulates in double precision and stops
#: at 0.9999999999999999 (< 1), where the interior map's exact ones are still interior.
_FIJI_LAST = float(np.nextafter(1.0, 0.0))


def _labels(x: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must be an integer or bool label image, got dtype {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name} must hold non-negative labels, got minimum {arr.min()}")
    return arr


def _pair(a: ArrayLike, b: ArrayLike, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    x, y = _labels(a, names[0]), _labels(b, names[1])
    if x.shape != y.shape:
        raise ValueError(f"{names[0]} and {names[1]} must have the same shape, got "
                         f"{x.shape} and {y.shape}")
    return x, y


def pixel_error(pred_labels: ArrayLike, gt_labels: ArrayLike) -> float:
    """Fraction of pixels whose predicted label differs from the ground truth.

    For 0/1 maps this is the mean squared difference of the two maps. Works on 2D images and
    stacks alike.
    """
    pred, gt = _pair(pred_labels, gt_labels, ("pred_labels", "gt_labels"))
    if pred.size == 0:
        raise ValueError("pixel_error needs at least one pixel, got empty arrays")
    return float(np.count_nonzero(pred != gt) / pred.size)


def _class_counts(
    pred: np.ndarray, gt: np.ndarray, classes: ArrayLike | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if classes is None:
        cls = np.union1d(np.unique(pred), np.unique(gt)).astype(np.int64)
    else:
        cls = np.unique(np.asarray(classes, dtype=np.int64).ravel())
    if cls.size == 0:
        raise ValueError("no class to score: pass a non-empty classes list or non-empty images")

    def count(values: np.ndarray) -> np.ndarray:
        u, c = np.unique(values, return_counts=True)
        pos = np.searchsorted(cls, u)
        ok = (pos < cls.size) & (cls[np.minimum(pos, cls.size - 1)] == u)
        out = np.zeros(cls.size, np.float64)
        out[pos[ok]] = c[ok]
        return out

    return cls, count(pred.ravel()), count(gt.ravel()), count(pred[pred == gt])


def _per_class(cls: np.ndarray, values: np.ndarray) -> dict[Any, float]:
    out: dict[Any, float] = {int(c): float(v) for c, v in zip(cls, values, strict=True)}
    finite = values[~np.isnan(values)]
    out["mean"] = float(finite.mean()) if finite.size else float("nan")
    return out


def dice(pred: ArrayLike, gt: ArrayLike, classes: ArrayLike | None = None) -> dict[Any, float]:
    """Dice coefficient 2|P∩G| / (|P| + |G|) per class, plus ``"mean"`` over classes.

    Parameters
    ----------
    pred, gt : array_like of int or bool
        Label images of the same shape (2D or a stack); each value is a class.
    classes : array_like of int, optional
        Classes to score; by default every value present in either image. A class absent from
        both images scores NaN and is left out of the mean.

    Returns
    -------
    dict
        ``{class: dice, ..., "mean": mean over classes}``.
    """
    p, g = _pair(pred, gt, ("pred", "gt"))
    cls, n_p, n_g, tp = _class_counts(p, g, classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(n_p + n_g > 0, 2 * tp / (n_p + n_g), np.nan)
    return _per_class(cls, values)


def iou(pred: ArrayLike, gt: ArrayLike, classes: ArrayLike | None = None) -> dict[Any, float]:
    """Intersection over union |P∩G| / |P∪G| per class, plus ``"mean"`` (see :func:`dice`)."""
    p, g = _pair(pred, gt, ("pred", "gt"))
    cls, n_p, n_g, tp = _class_counts(p, g, classes)
    union = n_p + n_g - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(union > 0, tp / union, np.nan)
    return _per_class(cls, values)


class _Overlap(NamedTuple):
    """Counts of the foreground-restricted contingency table (pixels, not probabilities)."""

    n: int  # GT-foreground pixels
    n0: int  # of those, predicted boundary (label 0): singletons
    gt_sizes: np.ndarray  # t_i * n, including pixels predicted as boundary
    pred_sizes: np.ndarray  # s_j * n for predicted labels j > 0
    joint: np.ndarray  # p_ij * n for predicted labels j > 0 (non-zero entries only)


def _counts(keys: np.ndarray, size: int) -> np.ndarray:
    if size <= max(4 * keys.size, 1 << 20):  # dense and fast
        c = np.bincount(keys)
        return c[c > 0]
    return np.unique(keys, return_counts=True)[1]


def _overlap(seg: np.ndarray, gt: np.ndarray) -> _Overlap:
    fg = gt > 0
    g = gt[fg].astype(np.int64)
    s = seg[fg].astype(np.int64)
    if g.size == 0:
        raise ValueError("gt has no foreground pixel (label > 0); the scores are undefined")
    on = s > 0
    g_on, s_on = g[on], s[on]
    width = int(s.max()) + 1
    return _Overlap(
        n=int(g.size),
        n0=int(g.size - g_on.size),
        gt_sizes=_counts(g, int(g.max()) + 1),
        pred_sizes=_counts(s_on, width),
        joint=_counts(g_on * width + s_on, (int(g.max()) + 1) * width),
    )


def _harmonic(a: float, b: float) -> float:
    return 2.0 * a * b / (a + b) if a + b > 0 else 0.0


def _rand_from(o: _Overlap) -> tuple[float, float, float]:
    sum_p2 = int(np.sum(o.joint.astype(np.int64) ** 2)) + o.n0
    sum_t2 = int(np.sum(o.gt_sizes.astype(np.int64) ** 2))
    sum_s2 = int(np.sum(o.pred_sizes.astype(np.int64) ** 2)) + o.n0
    split, merge = sum_p2 / sum_t2, sum_p2 / sum_s2
    return 2.0 * sum_p2 / (sum_t2 + sum_s2), split, merge


def _entropy(sizes: np.ndarray, n: int) -> float:
    # H = log n - (1/n) sum x log x; singletons (x = 1) add nothing to the sum.
    x = sizes.astype(np.float64)
    return float(np.log(n) - np.sum(x * np.log(x)) / n)


def _info_from(o: _Overlap, fiji: bool = False) -> tuple[float, float, float]:
    """V_Info, split, merge. ``fiji``: V_Info as Fiji scores the degenerate cases: 0 when an
    entropy is 0, NaN when the mutual information is 0 (0/0 there)."""
    h_gt = max(_entropy(o.gt_sizes, o.n), 0.0)
    h_pred = max(_entropy(o.pred_sizes, o.n), 0.0)  # + n0 singletons, each x = 1
    h_joint = _entropy(o.joint, o.n)
    mutual = float(np.clip(h_gt + h_pred - h_joint, 0.0, min(h_gt, h_pred)))
    split = mutual / h_pred if h_pred > 0 else 1.0
    merge = mutual / h_gt if h_gt > 0 else 1.0
    if fiji and (h_gt == 0 or h_pred == 0):
        return 0.0, split, merge
    if fiji and split + merge == 0:
        return float("nan"), split, merge
    return _harmonic(split, merge), split, merge


def rand_scores(seg: ArrayLike, gt: ArrayLike) -> tuple[float, float, float]:
    """Foreground-restricted Rand scores (Arganda-Carreras et al. 2015, eq. 3; Fiji's N^2 form).

    Parameters
    ----------
    seg : array_like of int
        Predicted segmentation; 0 = boundary/background. Each predicted 0 pixel inside the GT
        foreground counts as its own singleton segment (Fiji's ``sum(p_i0)/n`` term), so a thick
        predicted boundary is penalised as a split.
    gt : array_like of int
        Ground-truth segmentation of the same shape; 0 = boundary/background, left out entirely.

    Returns
    -------
    v_rand, split, merge : float
        Rand split = sum p_ij^2 / sum t_i^2 (1 when no GT segment is split), Rand merge =
        sum p_ij^2 / sum s_j^2 (1 when nothing is merged), V_Rand = their harmonic mean.
        Fiji calls merge "precision" and split "recall". ``skimage.metrics.adapted_rand_error``
        returns (1 - V_Rand, split, merge) under the names (error, precision, recall), up to its
        n(n-1) pair normalisation and its treatment of predicted 0 as one ordinary segment.

    Notes
    -----
    The whole array is one labelling (a stack is scored in 3D); the challenge's per-slice average
    is :func:`isbi_scores`.
    """
    s, g = _pair(seg, gt, ("seg", "gt"))
    return _rand_from(_overlap(s, g))


def info_scores(seg: ArrayLike, gt: ArrayLike) -> tuple[float, float, float]:
    """Foreground-restricted information-theoretic scores (Arganda-Carreras et al. 2015, eq. 6).

    Same inputs and conventions as :func:`rand_scores` (GT background left out, predicted 0
    pixels are singletons, natural logarithms). With S the prediction and T the ground truth:
    split = I(S;T) / H(S), merge = I(S;T) / H(T), V_Info = their harmonic mean. A pure split has
    merge 1. Where an entropy is 0 the matching score is 1 (no error of that kind is possible).
    Fiji scores V_Info 0 wherever an entropy is 0, also when both are (one segment predicted
    for a one-segment ground truth); :func:`isbi_scores` follows Fiji there.

    Returns
    -------
    v_info, split, merge : float
    """
    s, g = _pair(seg, gt, ("seg", "gt"))
    return _info_from(_overlap(s, g))


def _proposal_segments(interior: np.ndarray, thinning: bool) -> np.ndarray:
    if thinning:
        return thin_borders(interior)
    return ndi.label(interior)[0]


def _interior_cuts(prob: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The interior map Fiji reads and the cut on it of each membrane threshold.

    Fiji scores a float32 cell-interior map ``q``; the one for ``membrane_prob`` is
    ``float32(1 - p)`` (what one would save for it), and membrane threshold ``t`` is its cut
    ``q > 1 - t``, compared in double precision. At ``t = 0`` the cut is Fiji's last one,
    ``q > 0.9999999999999999``: pixels with ``p == 0`` are interior, as in Fiji.
    """
    q = (1.0 - prob).astype(np.float32).astype(np.float64)
    return q, np.minimum(1.0 - ts, _FIJI_LAST)


def _check_prob(membrane_prob: ArrayLike) -> np.ndarray:
    prob = np.asarray(membrane_prob)
    if not (np.issubdtype(prob.dtype, np.floating) or np.issubdtype(prob.dtype, np.integer)):
        raise TypeError(f"membrane_prob must be a numeric array, got dtype {prob.dtype}")
    prob = prob.astype(np.float64)
    if prob.ndim not in (2, 3):
        raise ValueError(f"membrane_prob must be 2D (Y, X) or a stack (Z, Y, X), got {prob.shape}")
    if not np.all(np.isfinite(prob)):
        raise ValueError("membrane_prob contains NaN or infinite values")
    if prob.size and (prob.min() < 0 or prob.max() > 1):
        raise ValueError(f"membrane_prob must lie in [0, 1], got [{prob.min()}, {prob.max()}]")
    return prob


def _gt_membrane(gt: ArrayLike, shape: tuple[int, ...], value: int) -> np.ndarray:
    arr = np.asarray(gt)
    if arr.shape != shape:
        raise ValueError(f"gt_membrane_labels must have the shape of membrane_prob {shape}, "
                         f"got {arr.shape}")
    return arr.astype(bool) if arr.dtype == bool else arr == value


def _thresholds(thresholds: ArrayLike | None) -> np.ndarray:
    t = np.asarray(DEFAULT_THRESHOLDS if thresholds is None else thresholds, np.float64).ravel()
    if t.size == 0 or not np.all(np.isfinite(t)) or t.min() < 0 or t.max() > 1:
        raise ValueError(f"thresholds must be a non-empty list of values in [0, 1], got {t}")
    return t


def isbi_scores(
    membrane_prob: ArrayLike,
    gt_membrane_labels: ArrayLike,
    thresholds: ArrayLike | None = None,
    *,
    gt_membrane_value: int = 0,
    thinning: bool = True,
) -> dict[str, Any]:
    """Best V_Rand and V_Info of a membrane probability map over a threshold sweep (ISBI 2012).

    The same numbers as Fiji's ``getMaximalVRandAfterThinning(0, 1, 0.1, true)`` and
    ``getMaximalVInfoAfterThinning(0, 1, 0.1)`` on the float32 cell-interior map
    ``1 - membrane_prob``, which produced the challenge's leaderboard (checked against an
    independent step-by-step re-implementation of Fiji's algorithm to 1e-12, see
    ``tests/fiji_reference.py``). For each threshold t (0.0 to 1.0) and each 2D slice:
    pixels with ``1 - p > 1 - t`` (about ``p < t``) are cell interior; at ``t = 0`` the cut is
    Fiji's last, ``1 - p > 0.9999999999999999``, so exact zeros of ``p`` are interior. With
    ``thinning`` (the challenge's final scores) the predicted membranes are thinned to 1-pixel
    lines by Fiji's 4-connected classic watershed flooding, in Fiji's order
    (:func:`napari_unetseg.thinning.thin_borders`); pixels left on a line are singletons.
    Without thinning the predicted segments are the interior's 4-connected components and
    every predicted membrane pixel in the GT foreground is a singleton. The ground truth's
    cell interiors are split into 4-connected segments per slice the same way. Each slice is
    scored with :func:`rand_scores` / :func:`info_scores` (V_Info with Fiji's 0 where an
    entropy is 0), the scores are averaged over the slices (macro-average, as the official
    script), and the best average over the thresholds is kept (ties: the first in Fiji's
    order, i.e. the highest t).

    Parameters
    ----------
    membrane_prob : array_like
        Membrane probability in [0, 1] (high = membrane), (Y, X) or (Z, Y, X). For a map of
        interior probability pass ``1 - p``.
    gt_membrane_labels : array_like
        Ground truth of the same shape. ISBI labels: 0 = membrane, 255 = cell interior; pixels
        equal to ``gt_membrane_value`` are membrane. A bool array is a membrane mask (True =
        membrane) and ``gt_membrane_value`` is ignored.
    thresholds : array_like of float, optional
        Membrane thresholds in [0, 1]; default 0.0, 0.1, ..., 1.0 (the official sweep).
    gt_membrane_value : int
        Value of membrane pixels in a non-bool ``gt_membrane_labels``.
    thinning : bool
        Thin predicted membranes before scoring (official final scores) or not.

    Returns
    -------
    dict
        ``v_rand``, ``v_rand_threshold``, ``v_rand_split``, ``v_rand_merge``, the same four for
        ``v_info``, plus ``thresholds``, ``v_rand_curve`` and ``v_info_curve`` (per threshold;
        NaN where Fiji's V_Info is 0/0). Slices whose ground truth has no cell interior are left
        out of the averages (Fiji's would be NaN).
    """
    prob = _check_prob(membrane_prob)
    gt_mem = _gt_membrane(gt_membrane_labels, prob.shape, gt_membrane_value)
    ts = _thresholds(thresholds)
    if prob.ndim == 2:
        prob, gt_mem = prob[None], gt_mem[None]
    keep = [z for z in range(prob.shape[0]) if not gt_mem[z].all()]
    if not keep:
        raise ValueError("gt_membrane_labels has no cell interior in any slice; nothing to score")
    gt_seg = {z: ndi.label(~gt_mem[z])[0] for z in keep}
    interior, cuts = _interior_cuts(prob, ts)
    rand = np.zeros((ts.size, 3))
    info = np.zeros((ts.size, 3))
    for k, cut in enumerate(cuts):
        for z in keep:
            o = _overlap(_proposal_segments(interior[z] > cut, thinning), gt_seg[z])
            rand[k] += _rand_from(o)
            info[k] += _info_from(o, fiji=True)
    rand /= len(keep)
    info /= len(keep)
    out: dict[str, Any] = {"thresholds": ts.tolist()}
    for name, table in (("v_rand", rand), ("v_info", info)):
        best = _best(table[:, 0], cuts)
        out[name] = float(table[best, 0]) if best is not None else 0.0
        best = 0 if best is None else best
        out[f"{name}_threshold"] = float(ts[best])
        out[f"{name}_split"] = float(table[best, 1])
        out[f"{name}_merge"] = float(table[best, 2])
        out[f"{name}_curve"] = table[:, 0].tolist()
    return out


def instance_scores(
    segmentation: ArrayLike, gt_membrane_labels: ArrayLike, *, gt_membrane_value: int = 0
) -> dict[str, float]:
    """V_Rand and V_Info of an instance segmentation (one label per object), per ISBI 2012.

    The counterpart of :func:`isbi_scores` for labels instead of a probability map: no
    threshold and no thinning; the labels are scored as they are. Each 2D slice is scored with
    :func:`rand_scores` / :func:`info_scores` against the 4-connected cell interiors of the
    ground truth (label 0 in ``segmentation`` is boundary: each such pixel in the ground-truth
    foreground is a singleton), and the scores are averaged over the slices.

    Returns
    -------
    dict
        ``v_rand``, ``v_rand_split``, ``v_rand_merge``, ``v_info``, ``v_info_split``,
        ``v_info_merge``.
    """
    seg = _labels(segmentation, "segmentation")
    gt_mem = _gt_membrane(gt_membrane_labels, seg.shape, gt_membrane_value)
    if seg.ndim not in (2, 3):
        raise ValueError(f"segmentation must be 2D or a stack, got shape {seg.shape}")
    if seg.ndim == 2:
        seg, gt_mem = seg[None], gt_mem[None]
    keep = [z for z in range(seg.shape[0]) if not gt_mem[z].all()]
    if not keep:
        raise ValueError("gt_membrane_labels has no cell interior in any slice; nothing to score")
    rand, info = np.zeros(3), np.zeros(3)
    for z in keep:
        o = _overlap(seg[z], ndi.label(~gt_mem[z])[0])
        rand += _rand_from(o)
        info += _info_from(o)
    out: dict[str, float] = {}
    for name, total in (("v_rand", rand), ("v_info", info)):
        v, split, merge = (float(x) for x in total / len(keep))
        out.update({name: v, f"{name}_split": split, f"{name}_merge": merge})
    return out


def _best(scores: np.ndarray, cuts: np.ndarray) -> int | None:
    """Index of the best score in Fiji's sweep order (ascending cut), first of equals; None
    when no score is above 0 (Fiji then reports 0)."""
    best, value = None, 0.0
    for k in np.argsort(cuts, kind="stable"):
        if scores[k] > value:  # NaN never wins, as in Fiji
            best, value = int(k), scores[k]
    return best
