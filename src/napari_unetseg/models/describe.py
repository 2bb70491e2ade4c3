"""Size and cost of a network, computed without running it on real data."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..config import ModelConfig
from .base import Level, SegmentationNet
from .build import build_model

__all__ = ["count_flops", "describe"]


def count_flops(model: SegmentationNet, size: int, level: Level = None) -> int:
    """FLOPs of one forward pass on a ``size x size`` single image.

    Counted by :class:`torch.utils.flop_counter.FlopCounterMode` (convolutions and matrix
    products, 2 FLOPs per multiply-add; normalisation and activations are not counted).
    The dummy input lives on the model's device, so a model built on the ``meta`` device
    is "run" without computing anything.
    """
    param = next(model.parameters())
    x = torch.zeros(1, model.config.in_channels, size, size, device=param.device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x, level=level)
    return int(counter.get_total_flops())


def describe(cfg: ModelConfig, size: int | None = None) -> dict[str, Any]:
    """Parameters and FLOPs per output pixel of the network ``cfg`` describes.

    The network is built on PyTorch's ``meta`` device (shapes only), so this is cheap even
    for the paper-sized U-Net.

    Parameters
    ----------
    cfg : ModelConfig
        The architecture.
    size : int, optional
        Side of the square dummy input, rounded up to ``model.valid_input_size(size)``.
        Default: ``2 * 2**depth`` for ``padding="same"``; for ``"valid"`` the paper's tile
        geometry, ``36 * 2**depth - 4`` (572 -> 388 output pixels at depth 4), because the
        cost per output pixel of an unpadded network depends on the tile size.

    Returns
    -------
    dict
        ``arch``, ``params`` (trainable parameter count), ``flops`` (one forward on the
        dummy input), ``flops_per_pixel`` (``flops`` / output pixels), ``input_size``,
        ``output_size``, ``margin``, ``num_levels``. For UNet++ also
        ``flops_per_pixel_by_level`` and ``params_by_level`` (lists for levels
        ``1..depth``: what the pruned level-L network costs and uses).
    """
    with torch.device("meta"):
        model = build_model(cfg)
    model.eval()
    if size is None:
        if cfg.padding == "same":
            size = 2 * 2**cfg.depth
        else:  # the paper's tile geometry: 572 -> 388 at depth 4
            size = model.valid_input_size(2 * model.margin + 24 * 2**cfg.depth)
    size = model.valid_input_size(size)
    out = model.output_size(size)
    flops = count_flops(model, size)
    info: dict[str, Any] = {
        "arch": cfg.arch,
        "params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "flops": flops,
        "flops_per_pixel": flops / out**2,
        "input_size": size,
        "output_size": out,
        "margin": model.margin,
        "num_levels": model.num_levels,
    }
    if cfg.arch == "unetpp":
        levels = range(1, cfg.depth + 1)
        info["flops_per_pixel_by_level"] = [count_flops(model, size, L) / out**2 for L in levels]
        info["params_by_level"] = [
            sum(p.numel() for p in model.parameters_for_level(L)) for L in levels
        ]
    return info
