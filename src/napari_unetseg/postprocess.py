"""Turning network outputs into label images: class values and instances."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def class_lut(values: Sequence[int], classes: int | None = None) -> np.ndarray:
    """Class index -> label value, in the smallest dtype that holds the values.

    ``values[k]`` is the label value class ``k`` had in the training labels (the model file's
    ``class_values``). A one-class (sigmoid) model predicts 0 or 1, so its table is
    ``[0, values[0]]``. The dtype is uint8, uint16 or int32. Index the table with predicted class
    indices to write labels in the training values (``class_lut(v)[labels]``).
    """
    vals = [int(v) for v in values]
    classes = len(vals) if classes is None else classes
    if not vals:
        vals = [1] if classes == 1 else list(range(classes))
    if len(vals) != classes:
        raise ValueError(f"the model has {classes} classes but {len(vals)} class values")
    lut = np.asarray([0, vals[0]] if classes == 1 else vals, dtype=np.int64)
    lo, hi = int(lut.min()), int(lut.max())
    dtype = np.uint8 if lo >= 0 and hi < 256 else np.uint16 if lo >= 0 and hi < 65536 else np.int32
    return lut.astype(dtype)


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
