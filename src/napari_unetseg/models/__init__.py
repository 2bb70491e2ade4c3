"""The networks: U-Net, UNet++ and residual U-Net, built from a :class:`ModelConfig`.

>>> from napari_unetseg.config import ModelConfig
>>> model = build_model(ModelConfig(arch="unetpp", depth=3, width=8))
>>> model.num_levels
3
"""

from __future__ import annotations

from .base import SegmentationNet
from .build import ARCHITECTURES, build_model
from .describe import count_flops, describe
from .fuse import fold_batchnorm
from .resunet import ResUNet
from .unet import UNet
from .unetpp import UNetPlusPlus

__all__ = [
    "ARCHITECTURES",
    "ResUNet",
    "SegmentationNet",
    "UNet",
    "UNetPlusPlus",
    "build_model",
    "count_flops",
    "describe",
    "fold_batchnorm",
]
