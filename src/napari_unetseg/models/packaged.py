"""The network as a bioimage.io model package holds it: class probabilities, fixed grid.

A bioimage.io package describes its network by a callable and keyword arguments
(``pytorch_state_dict`` weights) and by a TorchScript program; both are this
:class:`ProbabilityNet`: the :class:`~napari_unetseg.models.base.SegmentationNet` built from the
:class:`~napari_unetseg.config.ModelConfig` fields given as keyword arguments, followed by the
softmax over the classes (the sigmoid for one class), so the package's output is what the
Segment widget shows. It takes inputs whose height and width are multiples of ``2**depth``
(the package declares that) and so needs no data-dependent padding, which keeps the traced
TorchScript program valid for every such size.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..config import ModelConfig

__all__ = ["ProbabilityNet"]


class ProbabilityNet(nn.Module):
    """``build_model(ModelConfig(**config))`` followed by softmax (sigmoid for one class).

    Parameters
    ----------
    level : int or "accurate", optional
        UNet++ output (default "accurate", the mean of the heads); None for other networks.
    **config
        The fields of a ``padding="same"`` :class:`~napari_unetseg.config.ModelConfig`.

    The state dict is the wrapped network's under the prefix ``net.``.
    """

    def __init__(self, level: int | str | None = None, **config: Any) -> None:
        super().__init__()
        from . import build_model

        cfg = ModelConfig.from_dict(config)
        if cfg.padding != "same":
            raise ValueError("a bioimage.io package holds 'same'-padded networks only; this "
                             f"one has padding={cfg.padding!r}")
        self.net = build_model(cfg)
        if cfg.arch == "unetpp" and level is None:
            level = "accurate"
        self.level = self.net._resolve_level(level)
        self.sigmoid = cfg.classes == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities ``(N, K, H, W)`` of ``(N, C, H, W)``, H and W multiples of
        ``2**depth``."""
        logits = self.net._forward_padded(self.net.apply_features(x), self.level)
        return torch.sigmoid(logits) if self.sigmoid else torch.softmax(logits, dim=1)
