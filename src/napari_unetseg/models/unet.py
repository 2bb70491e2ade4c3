"""U-Net (Ronneberger, Fischer & Brox 2015, "U-Net: Convolutional Networks for Biomedical
Image Segmentation", MICCAI, Fig. 1)."""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from .base import Level, SegmentationNet, _check_size, crop_center
from .blocks import conv_block, up_conv

__all__ = ["UNet"]


class UNet(SegmentationNet):
    """The U-Net: a contracting and an expanding path joined by concatenation skips.

    Level ``i`` (``0..depth``) has ``width * 2**i`` channels. Each level applies two 3x3
    convolutions + ReLU (+ BatchNorm if ``config.batchnorm``); the contracting path goes
    down by 2x2 max-pooling, the expanding path up by a 2x2 up-convolution that halves the
    channels, after which the matching contracting feature map is concatenated (centre-cropped
    first when ``padding="valid"``). A 1x1 convolution maps to ``config.classes`` logits.

    With ``padding="valid"`` the convolutions are unpadded as in the paper: every level loses
    4 pixels at its own scale, so ``margin = 6 * 2**depth - 4`` (92 for depth 4: a 572x572
    tile gives 388x388 logits, Fig. 1 of the paper). ``config.dropout`` adds the paper's
    "drop-out layers at the end of the contracting path" (after the deepest contracting
    block, which also feeds its skip, and after the bottom block). Without BatchNorm the
    weights start as in the paper: Gaussian with standard deviation ``sqrt(2 / N)``, ``N`` the
    incoming connections of a unit.

    Parameters
    ----------
    config : ModelConfig
        ``arch="unet"``; ``depth``, ``width``, ``in_channels``, ``classes``, ``padding`` and
        ``batchnorm`` are used.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        d, w = config.depth, config.width
        ch = [w * 2**i for i in range(d + 1)]
        opts = {"batchnorm": config.batchnorm, "padding": config.padding}
        self.encoder = nn.ModuleList(
            conv_block(self.input_channels if i == 0 else ch[i - 1], ch[i], **opts)
            for i in range(d)
        )
        self.pool = nn.MaxPool2d(2)
        self.bottom = conv_block(ch[d - 1], ch[d], **opts)
        self.up = nn.ModuleList(up_conv(ch[i + 1], ch[i]) for i in range(d))
        self.decoder = nn.ModuleList(conv_block(2 * ch[i], ch[i], **opts) for i in range(d))
        self.head = nn.Conv2d(ch[0], config.classes, 1)
        self.drop = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        if not config.batchnorm:  # the paper's init: Gaussian, std sqrt(2 / fan-in)
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                    nn.init.zeros_(m.bias)

    # --- geometry of the unpadded network ----------------------------------------------
    @property
    def margin(self) -> int:
        """Pixels lost per side: 0 for ``same``; ``6 * 2**depth - 4`` for ``valid``."""
        if self.config.padding == "same":
            return 0
        return 6 * 2**self.config.depth - 4

    @property
    def min_size(self) -> int:
        if self.config.padding == "same":
            return super().min_size
        return self.valid_input_size(1)

    def valid_input_size(self, n: int) -> int:
        """Smallest input size ``>= n`` for which the network runs.

        For ``padding="valid"`` a size is valid when every feature map that is pooled has an
        even size and every feature map, including the output, has at least one pixel.
        """
        n = _check_size(n)
        if self.config.padding == "same":
            return super().valid_input_size(n)
        size = n
        while not self._is_valid_size(size):
            size += 1
        return size

    def _is_valid_size(self, n: int) -> bool:
        """Simulate the valid-padded sizes through the network (cheap integer arithmetic)."""
        d = self.config.depth
        for _ in range(d):
            n -= 4
            if n <= 0 or n % 2:
                return False
            n //= 2
        n -= 4  # bottom block
        for _ in range(d):
            if n <= 0:
                return False
            n = 2 * n - 4
        return n > 0

    def _nearest_valid(self, n: int) -> list[int]:
        below = next((s for s in range(n - 1, 0, -1) if self._is_valid_size(s)), None)
        return ([] if below is None else [below]) + [self.valid_input_size(n)]

    def _check_spatial(self, h: int, w: int) -> None:
        super()._check_spatial(h, w)
        if self.config.padding == "same":
            return
        for axis, n in (("height", h), ("width", w)):
            if not self._is_valid_size(n):
                sizes = " or ".join(str(s) for s in self._nearest_valid(n))
                raise ValueError(
                    f"input {axis} {n} is not valid for padding='valid' with depth "
                    f"{self.config.depth}: every pooled size must be even and every size > 0; "
                    f"the nearest valid sizes are {sizes} (see model.valid_input_size)"
                )

    # --- forward ----------------------------------------------------------------------------
    def _forward_padded(self, x: torch.Tensor, level: Level) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x)
            if i == len(self.encoder) - 1:
                x = self.drop(x)
            skips.append(x)
            x = self.pool(x)
        x = self.drop(self.bottom(x))
        for i in reversed(range(self.config.depth)):
            x = self.up[i](x)
            skip = crop_center(skips[i], *x.shape[-2:])
            x = self.decoder[i](torch.cat([skip, x], dim=1))
        return self.head(x)
