"""From an image layer and a labels layer to training tensors, patches and a validation split.

Three kinds of labels are understood (``labels_mode``):

``"sparse"``
    Painted scribbles: 0 is unlabelled (ignored, target -1), value ``v`` in ``1..K`` is
    class ``v - 1``.
``"dense"``
    Every pixel is labelled: the distinct values, sorted, are the classes (ISBI 2012
    membranes 0/255 -> classes 0/1), and ``class_values`` keeps the original values so that
    predictions can be written back in them.
``"instances"``
    Every object has its own id (0 = background): the foreground/background target is
    computed per slice, once. Slices without any object are taken as not annotated.

In every mode the U-Net weight map (Ronneberger 2015, eq. 2) can be computed with the targets
(:func:`napari_unetseg.targets.training_targets`: the border term from the objects of dense
and instance labels, the class balance everywhere).

Validation holds out whole *strokes* of sparse labels (connected painted pixels of one class
in one slice), a share of each class's painted pixels, so that a few strokes on one or two
slices still leave strokes to train on and strokes to check against. Dense and instance
labels (and strokes too few to split) hold out whole slices, or blocks of one labelled slice.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from .normalize import Normalization
from .targets import IGNORE, LABELS_MODES, target_weights, training_targets

__all__ = ["IGNORE", "LABELS_MODES", "TrainingData", "as_stack", "prepare_data", "relabel"]


@dataclass(frozen=True, eq=False)
class TrainingData:
    """Normalised image stack, targets and validation split, ready for patch sampling.

    Attributes
    ----------
    image : np.ndarray
        ``(S, C, H, W)`` float32, normalised and padded (reflect) to at least the patch size
        plus ``margin`` on every side.
    train_target, val_target : np.ndarray
        ``(S, H, W)`` int16 class indices, :data:`IGNORE` where a pixel is not used for
        training, respectively validation. ``val_target`` is None without validation.
    weight : np.ndarray or None
        ``(S, H, W)`` float32 U-Net weight map (see :mod:`napari_unetseg.targets`), or None
        when weights are off.
    class_values : tuple of int
        Original label value of each class.
    normalization : Normalization
        Fitted on the training slices (or passed in), to be stored with the model.
    labels_mode : str
    train_slices, val_slices : tuple of int
        Slices with training, respectively validation, labels.
    margin : int
        Extra reflect padding on every side (the unpadded U-Net's lost border).
    min_size : int
        Side the slices were mirror-padded up to (before the margin), see
        :func:`prepare_data`.
    """

    image: np.ndarray
    train_target: np.ndarray
    val_target: np.ndarray | None
    weight: np.ndarray | None
    class_values: tuple[int, ...]
    normalization: Normalization
    labels_mode: str
    train_slices: tuple[int, ...]
    val_slices: tuple[int, ...]
    margin: int = 0
    min_size: int = 1

    @property
    def num_classes(self) -> int:
        return len(self.class_values)

    @property
    def channels(self) -> int:
        return int(self.image.shape[1])


def as_stack(image: Any, channel_axis: int | None = None) -> np.ndarray:
    """Return the image as ``(S, C, H, W)``: 2D, stack ``(Z, Y, X)``, optionally with channels.

    Raises ValueError for an empty image, ``ndim`` outside 2..4 or a bad ``channel_axis``.
    """
    arr = np.asarray(image)
    if arr.size == 0:
        raise ValueError(f"image is empty (shape {arr.shape}); expected a 2D image or a stack")
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"image must be integer or float, got dtype {arr.dtype}")
    nd = arr.ndim
    if channel_axis is None:
        if nd not in (2, 3):
            hint = "; pass channel_axis for a multichannel image" if nd == 4 else ""
            raise ValueError(f"image must be 2D (Y, X) or a stack (Z, Y, X), got shape "
                             f"{arr.shape}{hint}")
        return arr.reshape((-1, 1, *arr.shape[-2:]))
    if nd not in (3, 4) or not -nd <= channel_axis < nd:
        raise ValueError(f"channel_axis={channel_axis} does not fit an image of shape "
                         f"{arr.shape}; with channels the image must have 3 or 4 dims")
    arr = np.moveaxis(arr, channel_axis, 0 if nd == 3 else 1)
    return arr[None] if nd == 3 else arr


def _integer_labels(labels: Any, expected: tuple[int, ...]) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.shape != expected:
        hint = ("; if an image axis holds channels (RGB), pass channel_axis"
                if lab.ndim + 1 == len(expected) else "")
        raise ValueError(f"labels shape {lab.shape} does not match the image shape {expected} "
                         f"(channel axis removed){hint}")
    if lab.dtype == bool:
        lab = lab.astype(np.uint8)
    if lab.dtype.kind == "f":
        if not np.all(np.isfinite(lab)) or np.any(lab != np.round(lab)):
            raise ValueError("labels must be integer values; got non-integer or NaN values")
        lab = lab.astype(np.int64)
    elif lab.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers, got dtype {lab.dtype}")
    if lab.dtype.kind == "i" and lab.min() < 0:
        raise ValueError(f"labels must be >= 0, got minimum {lab.min()}")
    return lab.reshape((-1, *lab.shape[-2:]))


def _classes(target: np.ndarray) -> set[int]:
    return set(np.unique(target[target >= 0]).tolist())


def _block_split(target: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of whole square blocks holding about ``fraction`` of the labelled pixels."""
    h, w = target.shape
    b = int(np.clip(min(h, w) // 4, 8, 64))
    ny, nx = -(-h // b), -(-w // b)
    counts = np.zeros((ny, nx), np.int64)
    np.add.at(counts, tuple(np.nonzero(target >= 0)[i] // b for i in (0, 1)), 1)
    order = rng.permutation(np.flatnonzero(counts))
    total, taken = counts.sum(), 0
    mask = np.zeros((h, w), bool)
    for k in order:
        if taken >= fraction * total:
            break
        y, x = divmod(int(k), nx)
        mask[y * b : (y + 1) * b, x * b : (x + 1) * b] = True
        taken += counts[y, x]
    return mask


def _stroke_split(target: np.ndarray, fraction: float, rng: np.random.Generator
                  ) -> np.ndarray | None:
    """Boolean mask of whole strokes holding about ``fraction`` of each class's labelled pixels.

    A stroke is an 8-connected component of one class in one slice. Each class keeps at least
    one stroke for training and gives at least one to validation; None when a class has fewer
    than two strokes.
    """
    from scipy import ndimage as ndi

    structure = np.zeros((3, 3, 3), bool)
    structure[1] = True  # connected within a slice only
    mask = np.zeros(target.shape, bool)
    for c in sorted(_classes(target)):
        comp, n = ndi.label(target == c, structure=structure)
        if n < 2:
            return None
        sizes = np.bincount(comp.ravel(), minlength=n + 1)[1:]
        goal = fraction * sizes.sum()
        held: list[int] = []
        taken = 0
        for k in rng.permutation(n):
            if taken >= goal or len(held) == n - 1:
                break
            if taken + sizes[k] <= 2 * goal:  # skip a stroke that would overshoot by far
                held.append(int(k))
                taken += sizes[k]
        if not held:  # every stroke is large: hold out the smallest
            held = [int(np.argmin(sizes))]
        mask |= np.isin(comp, np.asarray(held) + 1)
    return mask


def _split(
    target: np.ndarray, val_fraction: float, val_slices: Any, rng: np.random.Generator,
    strokes: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Hold out whole strokes (``strokes``: sparse labels), whole slices (stacks) or blocks of
    labelled pixels (one labelled slice)."""
    if strokes and val_slices is None and val_fraction > 0:
        held = _stroke_split(target, val_fraction, rng)
        if held is not None:
            return (np.where(held, IGNORE, target).astype(np.int16),
                    np.where(held, target, IGNORE).astype(np.int16))
    labeled = [i for i in range(len(target)) if (target[i] >= 0).any()]
    all_classes = _classes(target)
    if val_slices is not None:
        val = sorted({int(i) for i in val_slices})
        bad = [i for i in val if not 0 <= i < len(target)]
        if len(target) < 2 or bad:
            raise ValueError(f"val_slices {list(val_slices)} must index slices of a stack of "
                             f"{len(target)} slice(s)")
        if set(labeled) <= set(val):
            raise ValueError(f"val_slices {val} hold every labelled slice {labeled}; "
                             "keep at least one for training")
        if not set(val) & set(labeled):
            raise ValueError(f"val_slices {val} hold no labels; labelled slices: {labeled}")
        tries = [val]
    elif val_fraction <= 0:
        return target, None
    elif len(labeled) >= 2:
        n = min(max(1, round(val_fraction * len(labeled))), len(labeled) - 1)
        tries = [sorted(rng.choice(labeled, n, replace=False).tolist()) for _ in range(10)]
    else:
        tries = [_block_split(target[labeled[0]], val_fraction, rng) for _ in range(10)]
    for held in tries:
        train, val = target.copy(), np.full_like(target, IGNORE)
        if isinstance(held, np.ndarray):  # pixel blocks of the single labelled slice
            s = labeled[0]
            val[s][held] = target[s][held]
            train[s][held] = IGNORE
        else:
            val[held], train[held] = target[held], IGNORE
        if _classes(train) == all_classes and (val >= 0).any():
            return train, val
    if val_slices is not None:
        raise ValueError(f"holding out val_slices {tries[0]} leaves a class without training "
                         "labels")
    return target, None  # too few labels to hold any out without losing a class


def _pad(arr: np.ndarray, size: int, margin: int, mode: str, value: float = 0) -> np.ndarray:
    h, w = arr.shape[-2:]
    ph, pw = max(size - h, 0), max(size - w, 0)
    pads = [(0, 0)] * (arr.ndim - 2)
    pads += [(margin + ph // 2, margin + ph - ph // 2), (margin + pw // 2, margin + pw - pw // 2)]
    if not any(p for pair in pads for p in pair):
        return arr
    if mode == "constant":
        return np.pad(arr, pads, mode="constant", constant_values=value)
    return np.pad(arr, pads, mode=mode)


def prepare_data(
    image: Any,
    labels: Any,
    *,
    labels_mode: str = "sparse",
    channel_axis: int | None = None,
    val_fraction: float = 0.1,
    val_slices: Any = None,
    min_size: int = 1,
    margin: int = 0,
    normalization: Normalization | None = None,
    w0: float = 10.0,
    sigma: float = 5.0,
    weights: bool = True,
    class_balance: bool = True,
    seed: int = 0,
) -> TrainingData:
    """Check an image/labels pair and turn it into :class:`TrainingData`.

    Parameters
    ----------
    image : array-like
        ``(Y, X)`` or ``(Z, Y, X)``, optionally with a channel axis; uint8, uint16 or float.
    labels : array-like
        Same shape as the image without its channel axis; non-negative integers.
    labels_mode : {"sparse", "dense", "instances"}
        How to read the labels (see the module docstring).
    channel_axis : int or None
        Axis of the image holding channels.
    val_fraction : float
        Fraction held out for validation: whole strokes of sparse labels (about this share of
        each class's painted pixels, see the module docstring), whole labelled slices of a
        stack, or blocks of the labelled pixels when only one slice is labelled. 0 disables
        validation.
    val_slices : sequence of int or None
        Explicit validation slices (overrides ``val_fraction``).
    min_size : int
        Images smaller than this (the patch size) are mirror-padded up to it; padded
        pixels are ignored by the loss.
    margin : int
        Extra reflect padding on every side (``model.margin`` of the unpadded U-Net).
    normalization : Normalization or None
        Use this instead of fitting one on the training slices (e.g. to resume training).
    w0, sigma : float
        Border term of the weight map (dense and instance labels), Ronneberger 2015 eq. 2.
    weights : bool
        Compute the U-Net weight map (:func:`napari_unetseg.targets.training_targets`);
        without it ``TrainingData.weight`` is None.
    class_balance : bool
        Include the class-balance term ``wc`` in the weight map.
    seed : int
        Seed of the random validation split.

    Raises
    ------
    ValueError
        Shape mismatch, empty or non-finite image, bad labels, a single class, no label.
    """
    if labels_mode not in LABELS_MODES:
        raise ValueError(f"labels_mode must be one of {LABELS_MODES}, got {labels_mode!r}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    stack = as_stack(image, channel_axis)
    if stack.dtype.kind == "f" and not np.all(np.isfinite(stack)):
        raise ValueError("image contains NaN or infinite pixels; expected finite values")
    shape = list(np.shape(image))
    if channel_axis is not None:
        del shape[channel_axis]
    lab = _integer_labels(labels, tuple(shape))
    made = training_targets(lab, labels_mode, weights=weights, w0=w0, sigma=sigma,
                            balance=class_balance)
    target, weight, class_values = made.target, made.weight, made.class_values
    if len(_classes(target)) < 2:
        raise ValueError(f"labels hold a single class ({labels_mode} values "
                         f"{np.unique(lab).tolist()}); training needs at least two")
    rng = np.random.default_rng(seed)
    train, val = _split(target, val_fraction, val_slices, rng, strokes=labels_mode == "sparse")
    train_slices = tuple(i for i in range(len(train)) if (train[i] >= 0).any())
    val_slices_out = () if val is None else tuple(
        i for i in range(len(val)) if (val[i] >= 0).any())
    if normalization is None:
        normalization = Normalization.fit(stack[list(train_slices)])
    normalization.check_range(float(stack.min()), float(stack.max()))  # never feed infinities
    img = _pad(normalization(stack), min_size, margin, "reflect")
    return TrainingData(
        image=np.ascontiguousarray(img),
        train_target=_pad(train, min_size, margin, "constant", IGNORE),
        val_target=None if val is None else _pad(val, min_size, margin, "constant", IGNORE),
        weight=None if weight is None else _pad(weight, min_size, margin, "constant", 0.0),
        class_values=class_values,
        normalization=normalization,
        labels_mode=labels_mode,
        train_slices=train_slices,
        val_slices=val_slices_out,
        margin=margin,
        min_size=min_size,
    )


def _same_classes(lab: np.ndarray, data: TrainingData) -> np.ndarray:
    """Targets of new labels in the classes ``data`` was prepared with."""
    mode, values = data.labels_mode, data.class_values
    if mode == "sparse":
        top = int(lab.max()) if lab.size else 0
        if top > len(values):
            raise ValueError(f"label {top} is new; the model being trained has classes "
                             f"1..{len(values)} (train again to add a class)")
        if not lab.any():
            raise ValueError("labels contain no painted pixel; paint at least two classes")
        return (lab.astype(np.int16) - 1).astype(np.int16)
    if mode == "dense":
        found = np.unique(lab)
        new = sorted(set(found.tolist()) - set(values))
        if new:
            raise ValueError(f"label value(s) {new} are new; the model being trained has "
                             f"classes {list(values)} (train again to add a class)")
        return np.searchsorted(np.asarray(values), lab).astype(np.int16)
    return training_targets(lab, mode, weights=False).target


def relabel(
    data: TrainingData,
    labels: Any,
    *,
    val_fraction: float = 0.1,
    val_slices: Any = None,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_balance: bool = True,
    seed: int = 0,
) -> TrainingData:
    """``data`` with targets, weights and validation split made from new ``labels``.

    Weights are made again when ``data`` has weights (with ``w0``, ``sigma`` and
    ``class_balance``, as :func:`prepare_data` makes them).

    For training that goes on while the user paints: the image, its normalisation, the
    padding and the class values are kept (a model's classes cannot change mid-run); only
    what depends on the labels is made again, as :func:`prepare_data` makes it.

    Raises
    ------
    ValueError
        Labels of another shape, a value that is not one of ``data``'s classes, fewer than
        two classes painted, or the other :func:`prepare_data` label errors.
    """
    s, h, w = data.image.shape[0], *data.image.shape[-2:]
    lab = np.asarray(labels)
    m = data.margin
    if lab.ndim not in (2, 3) or lab.size == 0 or lab.reshape(-1, *lab.shape[-2:]).shape[0] != s:
        raise ValueError(f"labels shape {lab.shape} does not match the training image "
                         f"({s} slice(s))")
    lab = _integer_labels(lab, lab.shape)
    size = data.min_size
    if _pad(lab[:1], size, m, "constant").shape[-2:] != (h, w):
        raise ValueError(f"labels shape {lab.shape} does not match the training image")
    target = _same_classes(lab, data)
    weight = None if data.weight is None else target_weights(
        target, lab, data.labels_mode, data.num_classes, w0=w0, sigma=sigma,
        balance=class_balance)
    if len(_classes(target)) < 2:
        raise ValueError(f"labels hold a single class ({data.labels_mode} values "
                         f"{np.unique(lab).tolist()}); training needs at least two")
    train, val = _split(target, val_fraction, val_slices, np.random.default_rng(seed),
                        strokes=data.labels_mode == "sparse")
    return replace(
        data,
        train_target=_pad(train, size, m, "constant", IGNORE),
        val_target=None if val is None else _pad(val, size, m, "constant", IGNORE),
        weight=None if weight is None else _pad(weight, size, m, "constant", 0.0),
        train_slices=tuple(i for i in range(len(train)) if (train[i] >= 0).any()),
        val_slices=() if val is None else tuple(i for i in range(len(val)) if (val[i] >= 0).any()),
    )


Batch = tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None"]
