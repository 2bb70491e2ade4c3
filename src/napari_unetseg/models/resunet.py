"""Residual U-Net (Drozdzal, Vorontsov, Chartrand, Kadoury & Pal 2016, "The Importance of
Skip Connections in Biomedical Image Segmentation", DLMIA, Fig. 1)."""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from .base import Level, SegmentationNet
from .blocks import ResidualBlock, up_conv

__all__ = ["ResUNet"]


class ResUNet(SegmentationNet):
    """Fully convolutional residual network with long and short skip connections.

    Layout: a 3x3 stem convolution (``in_channels -> width``); per level ``i`` of the
    contracting path one residual block to ``width * 2**i`` channels then 2x2 max-pooling;
    a residual block at the bottom; per level of the expanding path a 2x2 up-convolution to
    the level's channels, the **long skip**, and one residual block; finally BN-ReLU and a
    1x1 convolution to ``classes`` logits. Blocks are pre-activation (BN-ReLU-conv) of kind
    ``config.block`` (``bottleneck`` 1x1-3x3-1x1, ``basic`` 3x3-3x3, ``simple`` 3x3), with a
    **short skip** (identity, or a 1x1 projection where the channel count changes).

    Long skips are merged by **summation** (``up + skip``), so switching them off changes
    the graph (the decoder sees only the up-sampled path) but not the parameter count; the
    short-skip switch removes the residual additions and their 1x1 projections. Together
    ``config.long_skips`` / ``config.short_skips`` reproduce the paper's long/short skip ablation.

    ``config.blocks_per_level`` stacks several blocks per level (the paper's EM network is
    hundreds of layers deep: 3, 8 and 10 bottleneck blocks on its deeper levels), and
    ``config.dropout`` adds dropout at the end of every block's branch.

    Parameters
    ----------
    config : ModelConfig
        ``arch="resunet"``; ``padding`` must be ``"same"``. ``batchnorm`` is ignored: the
        pre-activation blocks always use BatchNorm.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        d, w = config.depth, config.width
        ch = [w * 2**i for i in range(d + 1)]
        n = config.level_blocks()

        def stack(cin: int, cout: int, count: int) -> nn.Module:
            blocks = [ResidualBlock(cin if k == 0 else cout, cout, config.block,
                                    config.short_skips, config.dropout) for k in range(count)]
            return blocks[0] if count == 1 else nn.Sequential(*blocks)  # 1: names as before

        self.stem = nn.Conv2d(self.input_channels, w, 3, padding=1, bias=False)
        self.encoder = nn.ModuleList(
            stack(w if i == 0 else ch[i - 1], ch[i], n[i]) for i in range(d)
        )
        self.pool = nn.MaxPool2d(2)
        self.bottom = stack(ch[d - 1], ch[d], n[d])
        self.up = nn.ModuleList(up_conv(ch[i + 1], ch[i]) for i in range(d))
        self.decoder = nn.ModuleList(stack(ch[i], ch[i], n[i]) for i in range(d))
        self.head = nn.Sequential(
            nn.BatchNorm2d(w), nn.ReLU(inplace=True), nn.Conv2d(w, config.classes, 1)
        )

    def _forward_padded(self, x: torch.Tensor, level: Level) -> torch.Tensor:
        x = self.stem(x)
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom(x)
        for i in reversed(range(self.config.depth)):
            x = self.up[i](x)
            if self.config.long_skips:
                x = x + skips[i]
            x = self.decoder[i](x)
        return self.head(x)
