"""Turning class probabilities into instance labels."""

from __future__ import annotations

import numpy as np


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
