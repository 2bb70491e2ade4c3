"""Segmentation losses on softmax logits, with sparse (ignored) pixels and deep supervision.

Every loss takes logits ``(N, K, H, W)`` and a long target ``(N, H, W)`` with classes
``0..K-1``. Pixels equal to ``ignore_index`` (default -1: unpainted pixels of a sparse Labels
layer) contribute nothing, so their gradient is exactly zero. An all-ignored batch gives a loss
of 0 that still supports ``backward()``. Inference is always a softmax over K >= 2 classes.
Shapes and dtypes are always checked. Target values are checked only for CPU tensors: on an
accelerator the check would cost a host sync per step, so validate targets upstream.

- :func:`weighted_cross_entropy`: the U-Net energy, Ronneberger et al. (2015), eq. 1, with
  the per-pixel weight map of eq. 2 (:func:`napari_unetseg.weightmap.weight_map`).
- :func:`soft_dice_loss`: soft Dice (Milletari et al. 2016, V-Net) on softmax probabilities.
- :func:`bce_dice_loss`: ``BCE / 2 + Dice loss`` with the Dice taken per image, the UNet++
  loss (Zhou et al. 2018, eq. 1), on softmax probabilities.
- :class:`DeepSupervisionLoss`: a weighted sum over the UNet++ heads X(0,1..L).
- :func:`consistency_loss`: agreement with a teacher's predictions on the unlabelled pixels
  (fine-tuning from a pretrained model keeps what it knows where nothing is painted).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "weighted_cross_entropy",
    "soft_dice_loss",
    "bce_dice_loss",
    "DeepSupervisionLoss",
    "consistency_loss",
    "make_loss",
    "LOSSES",
    "WEIGHTED_LOSSES",
]

LossFn = Callable[..., torch.Tensor]


def _check_inputs(
    logits: Any, target: Any, weight: Any = None, ignore_index: int = -1
) -> torch.Tensor:
    """Validate shapes, dtypes and target values; return the mask of labelled pixels."""
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise TypeError(f"logits must be a float torch.Tensor, got {_describe(logits)}")
    if logits.ndim != 4:
        raise ValueError(f"logits must have shape (N, K, H, W), got {tuple(logits.shape)}")
    if logits.shape[1] < 2:
        raise ValueError(
            f"need K >= 2 classes (softmax); logits have K={logits.shape[1]} channels"
        )
    if not isinstance(target, torch.Tensor) or target.is_floating_point() or target.is_complex():
        raise TypeError(f"target must be an integer (long) torch.Tensor, got {_describe(target)}")
    n, k, h, w = logits.shape
    if tuple(target.shape) != (n, h, w):
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}; "
            f"expected (N, H, W) = {(n, h, w)}"
        )
    if weight is not None:
        if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
            raise TypeError(f"weight must be a float torch.Tensor, got {_describe(weight)}")
        if weight.shape != target.shape:
            raise ValueError(
                f"weight shape {tuple(weight.shape)} must equal the target shape "
                f"{tuple(target.shape)}"
            )
    labelled = target != ignore_index
    if target.device.type != "cpu":  # checking would cost a host sync per call
        return labelled
    bad = labelled & ((target < 0) | (target >= k))
    if bool(bad.any()):
        raise ValueError(
            f"target has value {int(target[bad][0])}; expected 0..{k - 1} or "
            f"ignore_index={ignore_index}"
        )
    return labelled


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"Tensor of dtype {value.dtype}"
    return type(value).__name__


def _one_hot(target: torch.Tensor, labelled: torch.Tensor, classes: int) -> torch.Tensor:
    """One-hot ``(N, K, H, W)`` of ``target``, all zero on ignored pixels."""
    safe = torch.where(labelled, target, torch.zeros_like(target)).long()
    onehot = F.one_hot(safe, classes).permute(0, 3, 1, 2)
    return onehot * labelled.unsqueeze(1)


def _mean_over(values: torch.Tensor, labelled: torch.Tensor) -> torch.Tensor:
    """Sum of ``values`` over labelled pixels divided by their number (0 when there are none)."""
    total = torch.where(labelled, values, torch.zeros_like(values)).sum()
    return total / labelled.sum().clamp(min=1)


def weighted_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    ignore_index: int = -1,
) -> torch.Tensor:
    """Pixel-weighted softmax cross-entropy, the U-Net energy (Ronneberger 2015, eq. 1).

    ``loss = sum_x w(x) * CE(x) / n_labelled``, summed over labelled pixels. Dividing by the
    number of labelled pixels rather than by ``sum(w)`` keeps the paper's energy up to a
    constant. A pixel of weight 2 then counts exactly as two pixels, and scaling ``w`` scales
    the loss. With ``w == 1`` this is ``F.cross_entropy(..., ignore_index=ignore_index)``.

    Parameters
    ----------
    logits : Tensor, float, shape (N, K, H, W)
    target : Tensor, long, shape (N, H, W)
        Classes ``0..K-1``, or ``ignore_index`` for unlabelled pixels.
    weight : Tensor, float, shape (N, H, W), optional
        Per-pixel weights ``w(x) >= 0``, e.g. the eq. 2 weight map. None means 1.
    ignore_index : int
        Target value of unlabelled pixels; they get zero loss and zero gradient.

    Returns
    -------
    Tensor
        Scalar loss.
    """
    labelled = _check_inputs(logits, target, weight, ignore_index)
    ce = F.cross_entropy(logits, target.long(), ignore_index=ignore_index, reduction="none")
    if weight is not None:
        ce = ce * torch.where(labelled, weight, torch.zeros_like(weight)).to(ce.dtype)
    return _mean_over(ce, labelled)


def _soft_dice(
    probs: torch.Tensor, onehot: torch.Tensor, labelled: torch.Tensor, eps: float
) -> torch.Tensor:
    """``1 - mean Dice`` over the classes present among labelled pixels (batch-wide sums)."""
    mask = labelled.unsqueeze(1).to(probs.dtype)
    dims = (0, 2, 3)
    intersection = (probs * onehot * mask).sum(dims)
    sizes = (probs * mask).sum(dims) + onehot.sum(dims)
    dice = (2.0 * intersection + eps) / (sizes + eps)
    present = (onehot.sum(dims) > 0).to(probs.dtype)
    return ((1.0 - dice) * present).sum() / present.sum().clamp(min=1)


def soft_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int = -1, eps: float = 1.0
) -> torch.Tensor:
    """Soft Dice loss on softmax probabilities (Milletari et al. 2016).

    For each class ``c``, ``Dice_c = (2 sum p_c g_c + eps) / (sum p_c + sum g_c + eps)``. The
    sums run over all labelled pixels of the batch, and ``g`` is the one-hot target. The loss
    is ``1 - mean_c Dice_c`` over the classes that occur in the labelled target. Absent classes
    are left out, so sparse labels with one painted class do not reward predicting nothing.
    A perfect prediction gives about 0 and a wholly wrong one about 1.

    Parameters
    ----------
    logits : Tensor, float, shape (N, K, H, W)
    target : Tensor, long, shape (N, H, W)
    ignore_index : int
        Unlabelled pixels: excluded from every sum (zero gradient).
    eps : float
        Smoothing term (> 0) of numerator and denominator.
    """
    labelled = _check_inputs(logits, target, None, ignore_index)
    _check_positive("eps", eps)
    probs = torch.softmax(logits, dim=1)
    return _soft_dice(probs, _one_hot(target, labelled, logits.shape[1]), labelled, eps)


def _log1m_softmax(logits: torch.Tensor) -> torch.Tensor:
    """``log(1 - softmax(logits))`` per class, stable (logsumexp of the other classes)."""
    k = logits.shape[1]
    others = logits.unsqueeze(1).expand(-1, k, -1, -1, -1)  # (N, k, j, H, W)
    eye = torch.eye(k, dtype=torch.bool, device=logits.device).view(1, k, k, 1, 1)
    rest = torch.logsumexp(others.masked_fill(eye, -math.inf), dim=2)
    return rest - torch.logsumexp(logits, dim=1, keepdim=True)


def _soft_dice_per_image(
    probs: torch.Tensor, onehot: torch.Tensor, labelled: torch.Tensor, eps: float
) -> torch.Tensor:
    """Mean over the images with labelled pixels of ``1 - mean Dice`` over the classes present
    in each image's labelled target (sums over each image's pixels)."""
    mask = labelled.unsqueeze(1).to(probs.dtype)
    dims = (2, 3)
    intersection = (probs * onehot * mask).sum(dims)
    sizes = (probs * mask).sum(dims) + onehot.sum(dims)
    dice = (2.0 * intersection + eps) / (sizes + eps)  # (N, K)
    present = (onehot.sum(dims) > 0).to(probs.dtype)
    per_image = ((1.0 - dice) * present).sum(1) / present.sum(1).clamp(min=1)
    has = labelled.flatten(1).any(1).to(probs.dtype)
    return (per_image * has).sum() / has.sum().clamp(min=1)


def bce_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    ignore_index: int = -1,
    dice_weight: float = 1.0,
    eps: float = 1.0,
    bce_weight: float = 0.5,
) -> torch.Tensor:
    """Binary cross-entropy plus soft Dice, the UNet++ loss (Zhou et al. 2018, eq. 1).

    ``loss = bce_weight * BCE + dice_weight * Dice loss``, by default the paper's
    ``BCE / 2 + Dice``. The Dice term is per image, as in the paper's sum over the images
    ``b`` of a batch: each image's ``1 - mean Dice`` over the classes in its labelled target
    (sums over that image's labelled pixels, smoothing ``eps``), averaged over the images
    with labelled pixels. Both terms use the softmax class probabilities ``p``, so training
    and inference agree. The BCE of each class's ``p_c`` against its one-hot target is
    averaged over the K classes; ``log p`` and ``log(1 - p)`` are computed from the logits,
    so they stay finite. The BCE is weighted per pixel and averaged like
    :func:`weighted_cross_entropy`.

    Parameters
    ----------
    logits, target, weight, ignore_index
        As in :func:`weighted_cross_entropy`; ``weight`` applies to the BCE term only.
    dice_weight, bce_weight : float
        Weights of the two terms (>= 0); the paper's are 1 and 1/2.
    eps : float
        Dice smoothing (see :func:`soft_dice_loss`).
    """
    labelled = _check_inputs(logits, target, weight, ignore_index)
    _check_positive("eps", eps)
    _check_positive("dice_weight", dice_weight, allow_zero=True)
    _check_positive("bce_weight", bce_weight, allow_zero=True)
    onehot = _one_hot(target, labelled, logits.shape[1]).to(logits.dtype)
    log_p = torch.log_softmax(logits, dim=1)
    bce = -(onehot * log_p + (1.0 - onehot) * _log1m_softmax(logits)).mean(dim=1)
    if weight is not None:
        bce = bce * torch.where(labelled, weight, torch.zeros_like(weight)).to(bce.dtype)
    loss = bce_weight * _mean_over(bce, labelled)
    if dice_weight > 0:
        loss = loss + dice_weight * _soft_dice_per_image(log_p.exp(), onehot, labelled, eps)
    return loss


def _check_positive(name: str, value: Any, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be finite and {'>=' if allow_zero else '>'} 0, got {value}")


DS_MODES = ("same", "exp")


def _parse_ds_weights(weights: Any) -> str | list[float]:
    if weights is None:
        return "same"
    if isinstance(weights, str):
        if weights not in DS_MODES:
            raise ValueError(
                f"deep supervision weights must be one of {DS_MODES}, None or a list of "
                f"numbers; got {weights!r}"
            )
        return weights
    try:
        values = [float(a) for a in weights]
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"weights must be 'same', 'exp', None or a list of numbers, got {weights!r}"
        ) from e
    if not values or any(not math.isfinite(a) or a < 0 for a in values):
        raise ValueError(f"weights must be non-negative finite numbers, got {values}")
    if sum(values) <= 0:
        raise ValueError(f"weights must not all be zero, got {values}")
    return values


class DeepSupervisionLoss:
    """Weighted sum of a loss over deep-supervision heads (UNet++, Zhou et al. 2018).

    Called with a list of per-head logits (all full resolution, head X(0,1) first) and one
    target: ``sum_l a_l * base_loss(logits_l, target, weight)``, with ``sum_l a_l = 1``.

    Parameters
    ----------
    base_loss : callable
        ``base_loss(logits, target, weight=None) -> scalar``, e.g. from :func:`make_loss`.
    weights : None, "same", "exp" or sequence of float
        None or ``"same"``: equal weights, as in the UNet++ paper. ``"exp"``: head ``l``
        (1-based) gets ``2**(l - 1)``, so the deepest head counts most. A sequence gives one
        non-negative weight per head, and its length must match the number of heads at call
        time. Weights are normalised to sum 1.
    """

    def __init__(
        self, base_loss: LossFn, weights: str | Sequence[float] | None = None
    ) -> None:
        if not callable(base_loss):
            raise TypeError(f"base_loss must be callable, got {type(base_loss).__name__}")
        self.base_loss = base_loss
        self.weights = _parse_ds_weights(weights)

    def head_weights(self, n_heads: int) -> list[float]:
        """The normalised weight of each of ``n_heads`` heads (head 1 first)."""
        if self.weights == "same":
            raw = [1.0] * n_heads
        elif self.weights == "exp":
            raw = [2.0**level for level in range(n_heads)]
        else:
            raw = list(self.weights)
            if len(raw) != n_heads:
                raise ValueError(
                    f"got {n_heads} heads but {len(raw)} deep supervision weights {raw}"
                )
        total = sum(raw)
        return [a / total for a in raw]

    def __call__(
        self,
        heads: Sequence[torch.Tensor],
        target: torch.Tensor,
        weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if isinstance(heads, torch.Tensor) or not isinstance(heads, (list, tuple)):
            raise TypeError(
                "DeepSupervisionLoss expects a list of per-head logits (e.g. "
                f"model(x, level='all')), got {_describe(heads)}"
            )
        if not heads:
            raise ValueError("DeepSupervisionLoss got an empty list of heads")
        total = None
        for a, logits in zip(self.head_weights(len(heads)), heads, strict=True):
            if a == 0.0:
                continue
            term = a * self.base_loss(logits, target, weight)
            total = term if total is None else total + term
        return total


def consistency_loss(
    logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
    ignore_index: int = -1,
) -> torch.Tensor:
    """KL divergence of the student's softmax from the teacher's, on unlabelled pixels.

    ``mean over pixels with target == ignore_index of KL(softmax(teacher) || softmax(logits))``:
    0 where the two predict the same distribution, positive elsewhere; the teacher gets no
    gradient. Painted pixels are left to the supervised loss.

    Parameters
    ----------
    logits, teacher_logits : Tensor, float, shape (N, K, H, W)
    target : Tensor, long, shape (N, H, W)
        Pixels equal to ``ignore_index`` are the ones compared.
    """
    _check_inputs(logits, target, None, ignore_index)
    if teacher_logits.shape != logits.shape:
        raise ValueError(f"teacher logits {tuple(teacher_logits.shape)} differ from the "
                         f"logits {tuple(logits.shape)}")
    teacher = F.log_softmax(teacher_logits.detach().float(), dim=1)
    kl = F.kl_div(F.log_softmax(logits.float(), dim=1), teacher, reduction="none",
                  log_target=True).sum(1)
    return _mean_over(kl, target == ignore_index)


LOSSES = ("wce", "ce", "dice", "bce_dice")
#: The losses that use the pixel weight map (the others ignore it).
WEIGHTED_LOSSES = ("wce", "bce_dice")


def make_loss(name: str, ignore_index: int = -1) -> LossFn:
    """Loss by name, as ``loss(logits, target, weight=None) -> scalar``.

    ``"wce"``: :func:`weighted_cross_entropy` (uses ``weight``). ``"ce"``: plain cross-entropy
    (``weight`` ignored). ``"dice"``: :func:`soft_dice_loss` (``weight`` ignored).
    ``"bce_dice"``: :func:`bce_dice_loss` (``weight`` applies to its BCE term).
    """
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {ignore_index!r}")

    def loss(
        logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        if name == "wce":
            return weighted_cross_entropy(logits, target, weight, ignore_index)
        if name == "bce_dice":
            return bce_dice_loss(logits, target, weight, ignore_index)
        if name == "ce":
            return weighted_cross_entropy(logits, target, None, ignore_index)
        return soft_dice_loss(logits, target, ignore_index)

    loss.__name__ = loss.__qualname__ = f"{name}_loss"
    return loss
