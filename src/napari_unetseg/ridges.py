"""Unsure cell boundaries: the "ridges" measure of *where to paint next*.

The per-pixel measures of :mod:`napari_unetseg.uncertainty` say where the model is unsure of a
pixel's class. The cells Segment makes of a membrane map are judged by their topology (V_Rand,
V_Info): a membrane drawn a pixel too thick costs nothing, a gap in a membrane merges two
cells and a closed line inside a cell (an organelle's rim) splits it. This measure points at
the lines that decide the cells:

1. the boundary class's probability is stretched as Segment stretches it
   (:func:`napari_unetseg.postprocess.stretch_span`) and smoothed by 1 px;
2. a watershed from its minima at least :data:`H` deep over-segments each slice, so that every
   ridge of the map is a line, the faint ones (gaps, rims) as well as the membranes;
3. each line pixel weighs ``1 - |2 p - 1|``: 1 where the map is 0.5, 0 where it is sure
   (0 or 1); everything off the lines weighs 0;
4. the lines are blurred by :data:`SMOOTH` px, the scale at which a stroke is placed.

The boundary class is the model's thinnest class (:func:`boundary_class`). Measured in
``benchmarks/where_to_paint.py`` (docs/performance.md).
"""

from __future__ import annotations

import numpy as np

__all__ = ["H", "SMOOTH", "boundary_class", "ridge_lines", "ridge_map"]

#: Depth of the minima that seed the over-segmentation (stretched probability units).
H = 0.1
#: Blur of the line map, in pixels.
SMOOTH = 8.0


def boundary_class(probs: np.ndarray) -> int:
    """Index of the boundary class of ``probs`` ``(K, Y, X)`` or ``(Z, K, Y, X)``: the class
    whose predicted pixels (argmax) lie closest to the edge of their regions on average, the
    thinnest. Membranes are a few pixels thick, cell interiors tens."""
    from scipy import ndimage as ndi

    p = np.asarray(probs)
    if p.ndim == 3:
        p = p[None]
    if p.ndim != 4 or p.shape[1] < 2:
        raise ValueError(f"probs must be (K, Y, X) or (Z, K, Y, X) with K >= 2, got {p.shape}")
    cls = p.argmax(1)
    depth = np.full(p.shape[1], np.inf)
    for k in range(p.shape[1]):
        mine = cls == k
        if mine.any():
            inside = np.concatenate([ndi.distance_transform_edt(m)[m] for m in mine if m.any()])
            depth[k] = float(inside.mean())
    return int(np.argmin(depth))


def ridge_lines(boundary: np.ndarray, h: float = H,
                span: tuple[float, float] | None = None) -> np.ndarray:
    """Steps 1-3 of the module docstring for a boundary probability ``(Y, X)`` or
    ``(Z, Y, X)``: float32 in [0, 1]. The stretch is ``span`` (``(lo, hi)``, e.g. the whole
    stack's when one slice is done at a time), else the ``boundary``'s own."""
    from scipy import ndimage as ndi
    from skimage import measure, morphology, segmentation

    from .postprocess import stretch_span

    b = np.asarray(boundary, np.float32)
    if b.ndim not in (2, 3):
        raise ValueError(f"boundary must be (Y, X) or (Z, Y, X), got shape {b.shape}")
    if not np.isfinite(b).all():
        raise ValueError("boundary contains NaN or infinite values")
    stack = b[None] if b.ndim == 2 else b
    lo, hi = span or stretch_span(stack) or (0.0, 1.0)
    out = np.zeros(stack.shape, np.float32)
    for i, plane in enumerate(stack):
        q = ndi.gaussian_filter(np.clip((plane - lo) / (hi - lo), 0.0, 1.0), 1.0)
        seeds = measure.label(morphology.h_minima(q, h) if h > 0 else
                              morphology.local_minima(q))
        lines = segmentation.find_boundaries(segmentation.watershed(q, seeds), mode="inner")
        out[i] = np.where(lines, 1.0 - np.abs(2.0 * q - 1.0), 0.0)
    return out[0] if b.ndim == 2 else out


def ridge_map(boundary: np.ndarray, h: float = H, smooth: float = SMOOTH,
              span: tuple[float, float] | None = None) -> np.ndarray:
    """The measure: :func:`ridge_lines` blurred by ``smooth`` px in each slice."""
    from scipy import ndimage as ndi

    lines = ridge_lines(boundary, h, span)
    stack = lines[None] if lines.ndim == 2 else lines
    out = np.stack([ndi.gaussian_filter(x, smooth) for x in stack]).astype(np.float32)
    return out[0] if lines.ndim == 2 else out
