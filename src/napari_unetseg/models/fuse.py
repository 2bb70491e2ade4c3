"""Prepare a trained network for inference: fold BatchNorm into the preceding convolution.

In eval mode ``BatchNorm2d`` is a fixed per-channel affine map,
``y = gamma * (x - mean) / sqrt(var + eps) + beta``. When it directly follows a
``Conv2d`` (as in :func:`~napari_unetseg.models.blocks.conv_block`: conv -> BN -> ReLU)
the two collapse into one convolution with

* weight ``W * gamma / sqrt(var + eps)`` (scaled per output channel) and
* bias ``beta + (b - mean) * gamma / sqrt(var + eps)``,

which saves one pass over every feature map. Pre-activation units (BN -> ReLU -> conv, the
:class:`~napari_unetseg.models.blocks.ResidualBlock` of ResUNet) have a ReLU between the two
and cannot be folded that way; they are left as they are.

>>> import torch
>>> from napari_unetseg.config import ModelConfig
>>> from napari_unetseg.models import build_model
>>> model = build_model(ModelConfig(depth=2, width=4))
>>> folded = fold_batchnorm(model)
>>> any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
False
>>> model.training, folded.training
(True, False)
"""

from __future__ import annotations

import copy
from itertools import pairwise

import torch
from torch import nn

__all__ = ["fold_batchnorm"]


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every Conv2d -> BatchNorm2d pair fused.

    Every ``nn.Conv2d`` that is directly followed by an ``nn.BatchNorm2d`` inside an
    ``nn.Sequential`` becomes a single convolution with bias (the BatchNorm's running
    statistics and affine parameters folded in, computed in float64 and cast back to the
    convolution's dtype), and the BatchNorm is replaced by ``nn.Identity()`` so the other
    modules keep their names. Everything else is left as it is, in particular:

    * BatchNorm not directly preceded by a convolution (pre-activation BN -> ReLU -> conv);
    * BatchNorm with ``track_running_stats=False``, which normalises with the statistics
      of each batch and so is not a fixed affine map;
    * modules of a subclass of ``Conv2d`` / ``BatchNorm2d`` (their ``forward`` may differ),
      channel-count mismatches, and modules used at more than one place in the network
      (shared weights), where folding one use would change the others.

    Parameters
    ----------
    model : torch.nn.Module
        Any network, e.g. from :func:`~napari_unetseg.models.build_model`. It is not
        modified: its parameters, buffers and train/eval mode stay as they are.

    Returns
    -------
    torch.nn.Module
        A deep copy (same class, so ``config``, ``margin``, ``valid_input_size`` and
        UNet++'s ``level`` argument still work) in eval mode, giving the same output as
        ``model.eval()`` up to rounding. It is meant for inference only: its
        ``state_dict`` differs from the original's (conv biases, no folded BatchNorm), and
        training it would not train the folded BatchNorm layers. Save the original.

    Raises
    ------
    TypeError
        If ``model`` is not a ``torch.nn.Module``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    folded = copy.deepcopy(model)
    uses: dict[int, int] = {}
    for _, module in folded.named_modules(remove_duplicate=False):
        uses[id(module)] = uses.get(id(module), 0) + 1
    with torch.no_grad():
        for seq in list(folded.modules()):
            if not isinstance(seq, nn.Sequential):
                continue
            for first, second in pairwise(list(seq._modules)):
                conv, bn = seq._modules[first], seq._modules[second]
                if _foldable(conv, bn) and uses[id(conv)] == uses[id(bn)] == 1:
                    _fold_into(conv, bn)
                    seq._modules[second] = nn.Identity()
    return folded.eval()


def _foldable(conv: nn.Module | None, bn: nn.Module | None) -> bool:
    """Whether ``bn`` is an eval-time affine map over ``conv``'s output channels."""
    return (
        type(conv) is nn.Conv2d
        and type(bn) is nn.BatchNorm2d
        and bn.running_mean is not None
        and bn.running_var is not None
        and bn.num_features == conv.out_channels
    )


def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold ``bn`` (running statistics) into ``conv`` in place, giving ``conv`` a bias."""
    dtype, device = conv.weight.dtype, conv.weight.device
    f64 = {"dtype": torch.float64, "device": device}
    mean = bn.running_mean.to(**f64)
    var = bn.running_var.to(**f64)
    gamma = bn.weight.to(**f64) if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.to(**f64) if bn.bias is not None else torch.zeros_like(mean)
    bias = conv.bias.to(**f64) if conv.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    weight = conv.weight.to(**f64) * scale.reshape(-1, *([1] * (conv.weight.ndim - 1)))
    grad = conv.weight.requires_grad
    conv.weight = nn.Parameter(weight.to(dtype), requires_grad=grad)
    conv.bias = nn.Parameter((beta + (bias - mean) * scale).to(dtype), requires_grad=grad)
