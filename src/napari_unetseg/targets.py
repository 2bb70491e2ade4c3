"""Training targets and pixel weights from a label image: the one function the trainer and
the weight-map preview share, so the preview shows exactly the weights training uses.

The weights follow Ronneberger, Fischer & Brox (2015), eq. 2,
``w(x) = wc(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 sigma**2))``, in each labels mode:

``"instances"``
    The objects are the instance ids after :func:`~napari_unetseg.weightmap.instance_targets`
    has turned their contact pixels into background, so those pixels get the border term.
``"dense"``
    The lowest label value is the background/boundary class (ISBI 2012: 0 = membrane). The
    objects are the 4-connected regions of every other class (the cells between the
    membranes), each region its own object, so the membrane pixels between two cells get the
    border term.
``"sparse"``
    Painted strokes get the class-balance term ``wc`` only: the distances ``d1``, ``d2`` of
    eq. 2 are distances to whole objects, and strokes are not whole objects. Unpainted pixels
    are ignored (weight 0).

``wc`` ("class balance") is the inverse class frequency ``n / (K n_c)`` over the ``K``
classes present among the labelled pixels: per slice for dense and instance labels (eq. 2
weighs each image), over the whole stack for strokes (a slice may hold strokes of one class
only). Its mean over the labelled pixels is 1. Without class balance ``wc = 1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from .postprocess import label_dtype
from .weightmap import border_weights, instance_targets

__all__ = ["IGNORE", "LABELS_MODES", "Targets", "class_balance", "target_weights",
           "training_targets"]

IGNORE = -1
LABELS_MODES = ("sparse", "dense", "instances")
_MAX_CLASSES = 1024


@dataclass(frozen=True, eq=False)
class Targets:
    """Class targets, pixel weights and the original label value of each class.

    Attributes
    ----------
    target : np.ndarray
        ``(S, H, W)`` int16 class indices, :data:`IGNORE` where a pixel is not labelled.
    weight : np.ndarray or None
        ``(S, H, W)`` float32 weights (0 on ignored pixels), or None when weights are off.
    class_values : tuple of int
        Label value of each class.
    """

    target: np.ndarray
    weight: np.ndarray | None
    class_values: tuple[int, ...]


def class_balance(target: np.ndarray, classes: int, of: np.ndarray | None = None
                  ) -> np.ndarray:
    """``wc``: ``n / (K n_c)`` for each labelled pixel of class ``c`` (``K`` classes present,
    ``n`` labelled pixels), 0 on ignored pixels; float32 of ``target``'s shape. ``of``: count
    ``n`` and ``n_c`` on these labels instead (e.g. the strokes alone, weighing other targets
    by the strokes' frequencies)."""
    labelled = target >= 0
    counted = target if of is None else of
    counts = np.bincount(counted[counted >= 0].astype(np.int64), minlength=classes)
    present = np.count_nonzero(counts)
    table = np.zeros(classes, np.float64)
    if present:
        nz = counts > 0
        table[nz] = counts.sum() / (present * counts[nz])
    out = np.zeros(target.shape, np.float32)
    out[labelled] = table[target[labelled]]
    return out


def _regions(target: np.ndarray) -> np.ndarray:
    """4-connected regions of every class but class 0, numbered 1..n over all classes."""
    out = np.zeros(target.shape, np.int32)
    n = 0
    for c in np.unique(target[target > 0]):
        regions, k = ndi.label(target == c)
        out[regions > 0] = regions[regions > 0] + n
        n += k
    return out


def _sparse(lab: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    if not lab.any():
        raise ValueError("labels contain no painted pixel; paint at least two classes")
    top = int(lab.max())
    if top > _MAX_CLASSES:
        raise ValueError(f"sparse labels take values 1..K with K <= {_MAX_CLASSES}, got {top}")
    return (lab.astype(np.int16) - 1).astype(np.int16), tuple(range(1, top + 1))


def _dense(lab: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    values, inverse = np.unique(lab, return_inverse=True)
    if len(values) > _MAX_CLASSES:
        raise ValueError(f"dense labels have {len(values)} distinct values; at most "
                         f"{_MAX_CLASSES} classes (use labels_mode='instances' for object ids)")
    label_dtype(values)  # predictions are written back in these values: never wrapped
    return inverse.reshape(lab.shape).astype(np.int16), tuple(int(v) for v in values)


def _instances(lab: np.ndarray, slices: Any = None) -> tuple[np.ndarray, tuple[int, ...]]:
    target = np.full(lab.shape, IGNORE, np.int16)
    for i in range(len(lab)) if slices is None else sorted({int(z) for z in slices}):
        if lab[i].any():
            target[i] = np.asarray(instance_targets(lab[i]), dtype=np.int16)
    if not (target >= 0).any():
        raise ValueError("instance labels contain no object (all zero)")
    return target, (0, 1)


def training_targets(
    labels: np.ndarray,
    labels_mode: str,
    *,
    weights: bool = True,
    w0: float = 10.0,
    sigma: float = 5.0,
    balance: bool = True,
    slices: Any = None,
) -> Targets:
    """Targets and U-Net pixel weights of a label stack, as the trainer uses them.

    Parameters
    ----------
    labels : np.ndarray
        ``(S, H, W)`` non-negative integer labels (see :mod:`napari_unetseg.data`).
    labels_mode : {"sparse", "dense", "instances"}
        How to read the labels; the weights of each mode are in the module docstring.
    weights : bool
        Compute the weight map (else ``weight`` is None).
    w0, sigma : float
        Border term of eq. 2 (``w0 = 0`` switches it off); not used for sparse strokes.
    balance : bool
        Class-balance term ``wc`` (else ``wc = 1`` on labelled pixels).
    slices : iterable of int or None
        Compute the weights of these slices only (the others stay 0), e.g. the slice a
        preview shows. The class values of dense labels and the class counts of strokes
        still come from the whole stack, so the weights of those slices equal the full
        computation's (instance targets, which are per slice, are made for them only).

    Raises
    ------
    ValueError
        Unknown mode, no painted pixel (sparse), too many classes, no object (instances).
    """
    if labels_mode not in LABELS_MODES:
        raise ValueError(f"labels_mode must be one of {LABELS_MODES}, got {labels_mode!r}")
    lab = np.asarray(labels)
    if labels_mode == "instances":
        target, class_values = _instances(lab, slices)
    else:
        target, class_values = (_sparse if labels_mode == "sparse" else _dense)(lab)
    if not weights:
        return Targets(target, None, class_values)
    weight = target_weights(target, lab, labels_mode, len(class_values), w0=w0, sigma=sigma,
                            balance=balance, slices=slices)
    return Targets(target, weight, class_values)


def target_weights(
    target: np.ndarray,
    labels: np.ndarray,
    labels_mode: str,
    classes: int,
    *,
    w0: float = 10.0,
    sigma: float = 5.0,
    balance: bool = True,
    slices: Any = None,
) -> np.ndarray:
    """The weights of :func:`training_targets` for targets already made from ``labels``
    (``(S, H, W)`` int16, ``classes`` classes); float32, 0 on unlabelled pixels."""
    lab = np.asarray(labels)
    todo = range(len(target)) if slices is None else sorted({int(z) for z in slices})
    weight = np.zeros(target.shape, np.float32)
    if labels_mode == "sparse":
        wc = class_balance(target, classes) if balance else (target >= 0).astype(np.float32)
        for z in todo:
            weight[z] = wc[z]
        return weight
    for z in todo:
        t = target[z]
        if not (t >= 0).any():
            continue
        weight[z] = class_balance(t, classes) if balance else (t >= 0)
        if w0 > 0:
            objects = (np.where(t > 0, lab[z], 0) if labels_mode == "instances"
                       else _regions(t))
            weight[z] += border_weights(objects, w0, sigma)
    return weight
