"""U-Net pixel weight map and training targets for touching instances.

Ronneberger, Fischer & Brox (2015), "U-Net: Convolutional Networks for Biomedical Image
Segmentation", section 3, eq. 2::

    w(x) = wc(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 * sigma**2))

``d1``/``d2`` are the distances to the nearest and second-nearest cell. The border term makes
the network learn the thin background gaps between touching cells. The paper uses ``w0 = 10``
and ``sigma ~ 5`` px.

Speed: the border term is below ``tol`` wherever ``d1 + d2 > R``, with
``R = sigma * sqrt(2 ln(w0 / tol))``. So each instance needs distances only inside its bounding
box grown by about ``R`` px. There, one Euclidean distance transform of the crop is exact,
because all of the instance's pixels lie in the crop. A running "two smallest" update
(``d2 = min(d2, max(d1, d)); d1 = min(d1, d)``) merges the crops. A first pass with a margin
of about twice the gap width settles the gaps between touching cells. Only pixels still unsure
are redone with the full margin.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

import numpy as np
from scipy import ndimage as ndi

__all__ = ["border_weights", "instance_targets", "weight_map"]

_RELABEL_ABOVE = 65535  # sparse huge ids are compacted so find_objects stays small
_MIN_FIRST_MARGIN = 4  # px; smallest first-pass window margin


def _as_instances(instances: Any, name: str = "instances") -> np.ndarray:
    """Validate an instance label image (2D or a 3D stack) and return it as int32.

    Ids above ``_RELABEL_ABOVE`` are compacted to ``1..n`` (order kept), which changes no
    distance and keeps ``find_objects`` small.
    """
    arr = np.asarray(instances)
    if arr.ndim not in (2, 3):
        raise ValueError(
            f"{name} must be a 2D (Y, X) image or a 3D (Z, Y, X) stack, got shape {arr.shape}"
        )
    if arr.dtype == bool:
        return arr.astype(np.int32)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} contains NaN or infinite values; expected integer ids")
        if not np.array_equal(arr, np.round(arr)):
            raise ValueError(
                f"{name} has non-integer values (dtype {arr.dtype}); expected integer instance "
                "ids (0 = background, 1..n = objects)"
            )
    elif not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(
            f"{name} must be an integer label image, got dtype {arr.dtype}; "
            "expected 0 = background and 1..n = objects"
        )
    if arr.size and arr.min() < 0:
        raise ValueError(
            f"{name} has negative ids (min {arr.min()}); expected 0 = background, 1..n objects"
        )
    if arr.size and arr.max() > _RELABEL_ABOVE:
        ids, inverse = np.unique(arr, return_inverse=True)
        arr = inverse.reshape(arr.shape) + (0 if ids[0] == 0 else 1)
    return arr.astype(np.int32, copy=False)


def _check_real(name: str, value: Any, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    bad = not math.isfinite(value) or (value <= 0 if positive else value < 0)
    if bad:
        expected = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be finite and {expected}, got {value}")
    return value


def _support_radius(w0: float, sigma: float, tol: float) -> float:
    """Distance sum ``R`` beyond which ``w0 * exp(-R**2 / (2 sigma**2)) <= tol``.

    Returns 0 when ``w0 <= tol`` (the border term is negligible everywhere).
    """
    if w0 <= tol:
        return 0.0
    return sigma * math.sqrt(2.0 * math.log(w0 / tol))


def _grown(box: tuple[slice, ...], margin: int, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """``box`` grown by ``margin`` px on every side, clipped to the image."""
    return tuple(
        slice(max(part.start - margin, 0), min(part.stop + margin, size))
        for part, size in zip(box, shape, strict=True)
    )


def _nearest_two(
    labels: np.ndarray, boxes: list, margin: int, select: list[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Distances to the nearest and second-nearest instance of a 2D label image.

    Each instance (all of them, or the ids in ``select``) is transformed in its bounding box
    grown by ``margin``. A pixel outside that window is at least ``margin + 1`` px away, so an
    instance closer than ``margin + 1`` is always seen. Every value is therefore the true
    distance of some instance or ``inf``. The two smallest are exact wherever the computed
    ``d2 <= margin + 1``.
    """
    d1 = np.full(labels.shape, np.inf)
    d2 = np.full(labels.shape, np.inf)
    ids = range(1, len(boxes) + 1) if select is None else select
    for index in ids:
        box = boxes[index - 1]
        if box is None:
            continue
        window = _grown(box, margin, labels.shape)
        dist = ndi.distance_transform_edt(labels[window] != index)
        near, second = d1[window], d2[window]  # views: updated in place
        np.minimum(second, np.maximum(near, dist), out=second)
        np.minimum(near, dist, out=near)
    return d1, d2


def _first_margin(labels: np.ndarray, margin: int) -> int:
    """First-pass margin: about twice the mean background gap width, or ``margin`` (one pass).

    The mean gap is estimated as ``2 * background area / foreground-background edges`` (exact
    for straight gaps between touching cells). Beside a gap of width ``g``, ``d2`` is about
    ``g`` and more at junctions, so a margin of ``2 g`` settles almost every pixel. When that
    margin is over half the full one, the two passes cost more than one. This choice affects
    speed only, never the result.
    """
    foreground = labels > 0
    edges = np.count_nonzero(foreground[1:] != foreground[:-1]) + np.count_nonzero(
        foreground[:, 1:] != foreground[:, :-1]
    )
    if edges == 0:
        return margin
    gap = 2.0 * (foreground.size - np.count_nonzero(foreground)) / edges
    first = max(_MIN_FIRST_MARGIN, math.ceil(2.0 * gap))
    return margin if 2 * first >= margin else first


def _border_distances(labels: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """``d1``, ``d2`` of a 2D slice, exact on every background pixel with ``d1 + d2 <= radius``.

    On background ``d1 >= 1``, so an instance that matters is within ``radius - 1`` px. A
    grown margin ``m = floor(radius) - 1`` is enough, since ``m + 1 > radius - 1``. To keep
    the windows small, a first pass uses a smaller margin ``first`` (see :func:`_first_margin`),
    which settles the gaps between touching cells. Instances it does not see are at least
    ``first + 1`` px away, so its ``d1``, ``d2`` are exact wherever ``d2 <= first + 1``. The
    other background pixels are redone with the full margin, using just the instances whose
    full window reaches them.
    """
    margin = max(math.floor(radius) - 1, 0)
    first = min(_first_margin(labels, margin), margin)
    boxes = ndi.find_objects(labels)
    d1, d2 = _nearest_two(labels, boxes, first)
    if first == margin:
        return d1, d2
    unsure = (labels == 0) & (d2 > first + 1)
    if not unsure.any():
        return d1, d2
    select = [
        index
        for index, box in enumerate(boxes, start=1)
        if box is not None and unsure[_grown(box, margin, labels.shape)].any()
    ]
    e1, e2 = _nearest_two(labels, boxes, margin, select)
    d1[unsure], d2[unsure] = e1[unsure], e2[unsure]
    return d1, d2


def _border_term(labels: np.ndarray, w0: float, sigma: float, tol: float) -> np.ndarray:
    """``w0 * exp(-(d1 + d2)**2 / (2 sigma**2))`` on background pixels of a 2D slice."""
    term = np.zeros(labels.shape, dtype=np.float64)
    radius = _support_radius(w0, sigma, tol)
    if radius == 0.0 or np.count_nonzero(np.bincount(labels.ravel())[1:]) < 2:
        return term
    d1, d2 = _border_distances(labels, radius)
    background = labels == 0
    total = d1[background] + d2[background]
    term[background] = w0 * np.exp(-(total * total) / (2.0 * sigma * sigma))
    return term


def _class_balance(labels: np.ndarray, class_weights: Any) -> np.ndarray:
    """Foreground/background weight ``wc`` of a 2D slice (see :func:`weight_map`)."""
    foreground = labels > 0
    if class_weights is None:
        return np.ones(labels.shape, dtype=np.float64)
    if isinstance(class_weights, str):
        n_fg = int(np.count_nonzero(foreground))
        n_bg = foreground.size - n_fg
        if n_fg == 0 or n_bg == 0:
            return np.ones(labels.shape, dtype=np.float64)
        w_bg, w_fg = foreground.size / (2.0 * n_bg), foreground.size / (2.0 * n_fg)
    else:
        w_bg, w_fg = class_weights[0], class_weights[1]
    return np.where(foreground, w_fg, w_bg).astype(np.float64)


def _check_class_weights(class_weights: Any) -> Any:
    if class_weights is None or (isinstance(class_weights, str) and class_weights == "balanced"):
        return class_weights
    if isinstance(class_weights, dict):
        if set(class_weights) != {0, 1}:
            raise ValueError(
                "class_weights dict must have exactly the keys 0 (background) and 1 "
                f"(foreground), got keys {sorted(class_weights, key=repr)}"
            )
        return {k: _check_real(f"class_weights[{k}]", v, positive=False)
                for k, v in class_weights.items()}
    raise ValueError(
        "class_weights must be 'balanced', None or a dict {0: w_bg, 1: w_fg}, "
        f"got {class_weights!r}"
    )


def weight_map(
    instances: Any,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: str | dict[int, float] | None = "balanced",
    *,
    tol: float = 1e-6,
) -> np.ndarray:
    """U-Net pixel weight map, Ronneberger et al. (2015), eq. 2.

    ``w(x) = wc(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 sigma**2))``, where ``d1``/``d2`` are
    the Euclidean distances (in pixels) from ``x`` to the nearest and second-nearest instance.
    The border term is added on background pixels (label 0) only, and only if the slice has at
    least two instances.

    Parameters
    ----------
    instances : array-like of int, shape (Y, X) or (Z, Y, X)
        Instance labels: 0 is background and 1..n are objects. Ids need not be contiguous.
        Integer-valued floats and bools are accepted. A stack is processed slice by slice.
    w0 : float
        Amplitude of the border term (paper: 10). ``w0 = 0`` leaves only ``wc``.
    sigma : float
        Width of the border term in pixels (paper: about 5).
    class_weights : {"balanced"}, None or dict
        ``wc``. With ``"balanced"``, each 2D slice gets inverse class frequency weights
        ``n / (2 n_bg)`` on background and ``n / (2 n_fg)`` on foreground (label > 0). This
        is scikit-learn's "balanced", and the mean of ``wc`` over the slice is 1. A slice with
        only one class gets ``wc = 1``. None gives ``wc = 1``. A dict ``{0: w_bg, 1: w_fg}``
        gives fixed weights.
    tol : float
        Largest absolute error allowed in the border term. Instance pairs with
        ``d1 + d2 > R = sigma * sqrt(2 ln(w0 / tol))`` are skipped, since their term is below
        ``tol``. This bounds each instance's work to its bounding box grown by about ``R`` px.

    Returns
    -------
    numpy.ndarray of float32
        Same shape as ``instances``.

    Raises
    ------
    ValueError
        Wrong ndim, negative or non-integer ids, ``w0 < 0``, ``sigma <= 0``, ``tol <= 0``,
        or a malformed ``class_weights``.
    TypeError
        Non-numeric labels or parameters.
    """
    labels = _as_instances(instances)
    w0 = _check_real("w0", w0, positive=False)
    sigma = _check_real("sigma", sigma, positive=True)
    tol = _check_real("tol", tol, positive=True)
    class_weights = _check_class_weights(class_weights)
    stack = labels if labels.ndim == 3 else labels[None]
    out = np.empty(stack.shape, dtype=np.float32)
    for z, plane in enumerate(stack):
        weights = _class_balance(plane, class_weights)
        if w0 > 0:
            weights += _border_term(plane, w0, sigma, tol)
        out[z] = weights
    return out if labels.ndim == 3 else out[0]


def border_weights(
    instances: Any, w0: float = 10.0, sigma: float = 5.0, *, tol: float = 1e-6
) -> np.ndarray:
    """The border term of eq. 2 alone: :func:`weight_map` without ``wc``.

    ``w0 * exp(-(d1 + d2)**2 / (2 sigma**2))`` on background pixels (label 0) of slices with
    at least two instances, 0 elsewhere. Same parameters, checks and return type as
    :func:`weight_map`.
    """
    labels = _as_instances(instances)
    w0 = _check_real("w0", w0, positive=False)
    sigma = _check_real("sigma", sigma, positive=True)
    tol = _check_real("tol", tol, positive=True)
    stack = labels if labels.ndim == 3 else labels[None]
    out = np.zeros(stack.shape, dtype=np.float32)
    if w0 > 0:
        for z, plane in enumerate(stack):
            out[z] = _border_term(plane, w0, sigma, tol)
    return out if labels.ndim == 3 else out[0]


def instance_targets(
    instances: Any, border: int = 1, classes: int = 2, connectivity: int = 2
) -> np.ndarray:
    """Semantic training target that keeps touching instances apart (U-Net paper, fig. 3).

    An object pixel becomes a *border* pixel when a pixel of a different object (not background)
    lies within ``border`` px of it. With ``connectivity=2`` distance is measured over the
    8-neighbourhood (a ``(2 border + 1)**2`` square). With ``connectivity=1`` it is measured over
    the 4-neighbourhood (a diamond of city-block radius ``border``). Both objects lose their
    contact pixels, so with ``connectivity=2`` the remaining interiors of two objects never
    touch, not even diagonally: each object stays its own 8-connected component. With
    ``connectivity=1`` they may touch diagonally, so use 4-connected components there.

    Parameters
    ----------
    instances : array-like of int, shape (Y, X) or (Z, Y, X)
        Instance labels (0 = background). A stack is processed slice by slice.
    border : int
        Half-width of the separation in pixels. 0 keeps all object pixels.
    classes : {2, 3}
        2: background 0 and interior 1 (border pixels become 0). 3: background 0, interior 1
        and border 2.
    connectivity : {1, 2}
        Neighbourhood for "touching": 1 is the 4-neighbourhood, 2 the 8-neighbourhood.

    Returns
    -------
    numpy.ndarray of uint8
        Same shape as ``instances``.
    """
    labels = _as_instances(instances)
    for name, value, choices in (("classes", classes, (2, 3)),
                                 ("connectivity", connectivity, (1, 2))):
        if isinstance(value, bool) or value not in choices:
            raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    if isinstance(border, bool) or not isinstance(border, (int, np.integer)) or border < 0:
        raise ValueError(f"border must be an int >= 0 (pixels), got {border!r}")
    foreground = labels > 0
    out = foreground.astype(np.uint8)
    if border == 0 or labels.size == 0:
        return out
    footprint = ndi.iterate_structure(ndi.generate_binary_structure(2, connectivity), border)
    if labels.ndim == 3:
        footprint = footprint[None]
    largest = ndi.maximum_filter(labels, footprint=footprint, mode="nearest")
    others = np.where(foreground, labels, np.iinfo(labels.dtype).max)
    smallest = ndi.minimum_filter(others, footprint=footprint, mode="nearest")
    touching = foreground & ((largest > labels) | (smallest < labels))
    out[touching] = 0 if classes == 2 else 2
    return out
