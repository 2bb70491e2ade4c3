"""Building blocks shared by the networks.

* :func:`conv_block` - two 3x3 convolutions, each followed by (optional) BatchNorm and ReLU:
  the unit of U-Net (Ronneberger et al. 2015, Sec. 2) and the node ``H`` of UNet++ (Zhou et
  al. 2018, Sec. 2.1).
* :func:`up_conv` - 2x2 transposed convolution with stride 2 that halves the channels (the
  paper's "up-convolution").
* :class:`ResidualBlock` - pre-activation residual blocks of Drozdzal et al. (2016), Fig. 1:
  ``bottleneck`` (1x1-3x3-1x1), ``basic`` (3x3-3x3) and ``simple`` (3x3), each with an
  optional short skip (identity, or a 1x1 projection where the channel count changes).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ResidualBlock", "conv_block", "up_conv"]


def conv_block(
    in_channels: int, out_channels: int, *, batchnorm: bool = True, padding: str = "same"
) -> nn.Sequential:
    """Two 3x3 convolutions, each followed by optional BatchNorm and ReLU.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels in and out.
    batchnorm : bool
        Insert ``BatchNorm2d`` after each convolution (the convolution then has no bias,
        which BatchNorm would cancel).
    padding : {"same", "valid"}
        ``"same"`` pads each convolution by 1 pixel; ``"valid"`` does not, so the block
        loses 2 pixels per side (Ronneberger et al. 2015).
    """
    pad = 1 if padding == "same" else 0
    layers: list[nn.Module] = []
    for cin in (in_channels, out_channels):
        layers.append(nn.Conv2d(cin, out_channels, 3, padding=pad, bias=not batchnorm))
        if batchnorm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def up_conv(in_channels: int, out_channels: int) -> nn.ConvTranspose2d:
    """2x2 transposed convolution with stride 2 (doubles H and W)."""
    return nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)


def _preact_conv(in_channels: int, out_channels: int, kernel: int) -> nn.Sequential:
    """BN -> ReLU -> conv (He et al. 2016 "identity mappings" ordering, as Drozdzal uses)."""
    return nn.Sequential(
        nn.BatchNorm2d(in_channels),
        nn.ReLU(inplace=False),
        nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
    )


class ResidualBlock(nn.Module):
    """Pre-activation residual block of Drozdzal et al. (2016), Fig. 1 (b)-(d).

    ``out = F(x) + S(x)`` where ``F`` is the chain of BN-ReLU-conv units and ``S`` the short
    skip: identity when the channel count is unchanged, a 1x1 convolution (projection)
    otherwise. With ``short_skip=False`` the block is the plain chain ``F(x)`` and has no
    projection.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels in and out.
    kind : {"basic", "bottleneck", "simple"}
        ``basic``: 3x3-3x3; ``bottleneck``: 1x1 (to ``out/4``) - 3x3 - 1x1 (to ``out``);
        ``simple``: a single 3x3.
    short_skip : bool
        Keep the short (residual) skip connection.
    dropout : float
        Dropout probability at the end of the residual branch (before the addition).
    """

    def __init__(
        self, in_channels: int, out_channels: int, kind: str = "basic", short_skip: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if kind == "basic":
            units = [(in_channels, out_channels, 3), (out_channels, out_channels, 3)]
        elif kind == "bottleneck":
            mid = max(1, out_channels // 4)
            units = [(in_channels, mid, 1), (mid, mid, 3), (mid, out_channels, 1)]
        elif kind == "simple":
            units = [(in_channels, out_channels, 3)]
        else:
            raise ValueError(f"block must be one of basic, bottleneck, simple; got {kind!r}")
        self.kind = kind
        layers: list[nn.Module] = [_preact_conv(*u) for u in units]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))  # last: the units keep their state-dict names
        self.residual = nn.Sequential(*layers)
        self.shortcut: nn.Module | None = None
        if short_skip:
            same = in_channels == out_channels
            self.shortcut = (
                nn.Identity() if same else nn.Conv2d(in_channels, out_channels, 1, bias=False)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.residual(x)
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return out
