"""Turning network outputs into label images: class values and instances."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def label_dtype(values: Sequence[int]) -> np.dtype:
    """The smallest label image dtype holding every value: uint8, uint16 or uint32 for values
    ``>= 0``, int32 with negatives.

    Raises ValueError when no such dtype holds them (a value beyond 2**32 - 1, or negatives
    with values beyond 2**31 - 1): a label value is never wrapped around.
    """
    vals = [int(v) for v in values] or [0]
    lo, hi = min(vals), max(vals)
    if lo >= 0:
        for dtype in (np.uint8, np.uint16, np.uint32):
            if hi <= np.iinfo(dtype).max:
                return np.dtype(dtype)
    elif np.iinfo(np.int32).min <= lo and hi <= np.iinfo(np.int32).max:
        return np.dtype(np.int32)
    bad = hi if lo >= 0 or hi > np.iinfo(np.int32).max else lo
    raise ValueError(f"label value {bad} does not fit a label image: values must be in "
                     f"0..{np.iinfo(np.uint32).max} (uint32), or in int32 with negatives")


def class_lut(values: Sequence[int], classes: int | None = None) -> np.ndarray:
    """Class index -> label value, in the smallest dtype that holds the values.

    ``values[k]`` is the label value class ``k`` had in the training labels (the model file's
    ``class_values``). A one-class (sigmoid) model predicts 0 or 1, so its table is
    ``[0, values[0]]``. The dtype is :func:`label_dtype` of the values (ValueError if none
    holds them). Index the table with predicted class indices to write labels in the training
    values (``class_lut(v)[labels]``).
    """
    vals = [int(v) for v in values]
    classes = len(vals) if classes is None else classes
    if not vals:
        vals = [1] if classes == 1 else list(range(classes))
    if len(vals) != classes:
        raise ValueError(f"the model has {classes} classes but {len(vals)} class values")
    table = [0, vals[0]] if classes == 1 else vals
    return np.asarray(table, dtype=label_dtype(table))


def instances_from_probs(
    prob_fg: np.ndarray,
    threshold: float = 0.5,
    *,
    min_size: int = 0,
    split_touching: bool = False,
    min_distance: int = 3,
) -> np.ndarray:
    """Instance labels from a foreground probability map.

    Connected components (4-connectivity in 2D, face-connectivity in 3D) of
    ``prob_fg >= threshold``; with ``split_touching`` a watershed on the negated distance
    transform, seeded at its local maxima at least ``min_distance`` apart, splits touching
    objects. Objects smaller than ``min_size`` pixels are removed and the rest renumbered
    ``1..n``. Returns int32 labels.
    """
    from scipy import ndimage as ndi
    from skimage import feature, measure, segmentation

    prob = np.asarray(prob_fg)
    if prob.ndim not in (2, 3):
        raise ValueError(f"prob_fg must be 2D or 3D, got shape {prob.shape}")
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    mask = prob >= threshold
    if split_touching:
        dist = ndi.distance_transform_edt(mask)
        peaks = feature.peak_local_max(dist, min_distance=min_distance, labels=mask)
        markers = np.zeros(mask.shape, np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        labels = segmentation.watershed(-dist, markers, mask=mask)
    else:
        labels = measure.label(mask, connectivity=1)
    if min_size > 0:
        small = np.bincount(labels.ravel()) < min_size
        small[0] = False
        labels[small[labels]] = 0
        labels = segmentation.relabel_sequential(labels)[0]
    return labels.astype(np.int32, copy=False)
