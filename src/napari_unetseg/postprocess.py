"""Turning network outputs into label images: class values and instances."""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any

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


#: How :func:`instances_from_boundaries` places its seeds.
SEEDINGS = ("threshold", "distance", "minima")
#: Percentiles of a boundary map that :attr:`BoundaryInstances.stretch` maps to 0 and 1.
STRETCH = (1.0, 99.0)


@dataclass(frozen=True)
class BoundaryInstances:
    """Settings of :func:`instances_from_boundaries` (the defaults' scores on ISBI 2012 slices
    25-29 against thresholding: ``benchmarks/instances.py``, ``docs/performance.md``).

    Parameters
    ----------
    seeds : {"threshold", "distance", "minima"}
        ``"threshold"``: one seed per connected piece of the interior ``smoothed <
        threshold``. ``"distance"``: one seed per maximum of the distance transform of that
        interior that rises ``h`` pixels above its surroundings (h-maxima), so that a thin gap
        in a boundary does not join two objects; interior pieces without such a maximum get
        one seed each. ``"minima"``: one seed per minimum of the smoothed map at least ``h``
        deep (h-minima, ``h`` in probability units); no threshold.
    threshold : float
        Boundary probability below which a pixel is interior ("threshold", "distance").
    sigma : float
        Gaussian smoothing of the boundary map, in pixels, before seeding and flooding (0:
        none).
    h : float
        Height of the maxima ("distance", pixels) or depth of the minima ("minima").
    min_seed_size : int
        Interior pieces smaller than this many pixels are dropped before seeding ("threshold",
        "distance"; their pixels are flooded from the neighbours): specks of interior inside a
        boundary make no objects.
    min_size : int
        Objects smaller than this are merged into a neighbour after the watershed.
    stretch : bool
        Stretch the map linearly so that its :data:`STRETCH` percentiles become 0 and 1
        before seeding (over the whole stack given). ``threshold`` and the minima's ``h`` then
        hold for a map whose interior does not reach 0: a network trained from a few strokes
        with class balance can put every interior pixel above 0.2, and without the stretch its
        cells were one object. A calibrated map (interior near 0, boundaries near 1) is left
        nearly as it is.
    """

    seeds: str = "threshold"
    threshold: float = 0.2
    sigma: float = 1.0
    h: float = 2.0
    min_seed_size: int = 10
    min_size: int = 0
    stretch: bool = True

    def __post_init__(self) -> None:
        if self.seeds not in SEEDINGS:
            raise ValueError(f"seeds must be one of {', '.join(SEEDINGS)}; got {self.seeds!r}")
        for name in ("threshold", "sigma", "h"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    np.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if self.threshold > 1:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")
        if not isinstance(self.stretch, bool):
            raise TypeError(f"stretch must be True or False, got {self.stretch!r}")
        for name in ("min_seed_size", "min_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")


def instances_from_boundaries(
    boundary: np.ndarray, settings: BoundaryInstances | None = None, **kwargs: Any
) -> np.ndarray:
    """Instances (cells, neurites) between boundaries, from a boundary-probability map.

    A seeded watershed (Beucher and Meyer 1993) on the (smoothed) boundary probability: the
    objects grow from seeds inside them and meet on the ridges of the map, not at a fixed
    threshold, and every pixel belongs to an object, as cells tile an EM section. Seeds: see
    :class:`BoundaryInstances` (``settings``, or its fields as keyword arguments). A stack
    ``(Z, Y, X)`` is processed per slice (EM sections are anisotropic) with labels unique over
    the stack. Returns int32 labels ``1..n``.
    """
    if settings is not None and kwargs:
        raise TypeError("give either settings or keyword arguments, not both")
    cfg = BoundaryInstances(**kwargs) if settings is None else settings
    gen = iter_instances(boundary, cfg)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def iter_instances(
    maps: np.ndarray, boundaries: BoundaryInstances | None = None
) -> Generator[int, None, np.ndarray]:
    """Instances slice by slice, as a generator: yields each slice's index when it is done
    and returns the labels (int32, unique over the stack).

    With ``boundaries`` the maps are boundary probabilities and the instances are the regions
    between them (:func:`boundary_watershed`); without, the maps are foreground probabilities
    and the instances are their connected objects (:func:`instances_from_probs`).
    """
    prob = np.asarray(maps)
    if prob.ndim not in (2, 3):
        raise ValueError(f"probability maps must be 2D or 3D, got shape {prob.shape}")
    if not np.issubdtype(prob.dtype, np.floating):
        raise TypeError(f"expected a float probability map, got dtype {prob.dtype}")
    stack = prob if prob.ndim == 3 else prob[None]
    out = np.zeros(stack.shape, np.int32)
    offset = 0
    span = stretch_span(stack) if boundaries is not None and boundaries.stretch else None
    for z, plane in enumerate(stack):
        lab = (boundary_watershed(plane, boundaries, span) if boundaries is not None
               else instances_from_probs(plane))
        out[z] = np.where(lab > 0, lab + offset, 0)
        offset += int(lab.max())
        yield z
    return out if prob.ndim == 3 else out[0]


def stretch_span(maps: np.ndarray) -> tuple[float, float] | None:
    """The :data:`STRETCH` percentiles of ``maps``, or None where they are equal (a flat map
    is not stretched) and for an empty map or one with non-finite values (which
    :func:`boundary_watershed` refuses before it would use them)."""
    vals = np.asarray(maps, dtype=np.float32)
    if vals.size == 0 or not np.isfinite(vals).all():
        return None
    lo, hi = (float(v) for v in np.percentile(vals, STRETCH))
    return (lo, hi) if hi > lo else None


def boundary_watershed(prob: np.ndarray, cfg: BoundaryInstances,
                       span: tuple[float, float] | None = None) -> np.ndarray:
    """:func:`instances_from_boundaries` of one 2D slice (labels ``1..n``, int32). ``span``:
    the ``(lo, hi)`` that :attr:`BoundaryInstances.stretch` maps to 0 and 1 (default: this
    slice's :func:`stretch_span`)."""
    from scipy import ndimage as ndi
    from skimage import measure, morphology, segmentation

    p = np.asarray(prob, dtype=np.float32)
    if not np.all(np.isfinite(p)):
        raise ValueError("boundary contains NaN or infinite values")
    if cfg.stretch:
        span = span if span is not None else stretch_span(p)
        if span is not None:
            p = np.clip((p - span[0]) / (span[1] - span[0]), 0.0, 1.0).astype(np.float32)
    if cfg.sigma > 0:
        p = ndi.gaussian_filter(p, cfg.sigma)
    if cfg.seeds == "minima":
        minima = morphology.h_minima(p, cfg.h) if cfg.h > 0 else morphology.local_minima(p)
        markers = measure.label(minima, connectivity=1)
    else:
        pieces = _drop_small(measure.label(p < cfg.threshold, connectivity=1),
                             cfg.min_seed_size)
        interior = pieces > 0
        if cfg.seeds == "threshold":
            markers = pieces
        else:
            dist = ndi.distance_transform_edt(interior).astype(np.float32)
            peaks = morphology.h_maxima(dist, cfg.h) if cfg.h > 0 else morphology.local_maxima(
                dist)
            markers = measure.label(peaks.astype(bool) & interior, connectivity=2)
            alone = np.setdiff1d(np.unique(pieces), np.unique(pieces[markers > 0]))
            alone = alone[alone > 0]
            if alone.size:  # a piece too flat for an h-maximum still is an object
                extra = np.isin(pieces, alone)
                markers[extra] = measure.label(extra, connectivity=1)[extra] + markers.max()
    if markers.max() == 0:
        return np.ones(p.shape, np.int32)
    labels = segmentation.watershed(p, markers)
    if cfg.min_size > 0:
        kept = _drop_small(labels, cfg.min_size)
        if kept.max() > 0:
            labels = segmentation.watershed(p, kept)
    return segmentation.relabel_sequential(labels)[0].astype(np.int32, copy=False)


def _drop_small(labels: np.ndarray, size: int) -> np.ndarray:
    """``labels`` with the objects of fewer than ``size`` pixels set to 0."""
    if size <= 1:
        return labels
    small = np.bincount(labels.ravel()) < size
    small[0] = False
    return np.where(small[labels], 0, labels) if small.any() else labels
