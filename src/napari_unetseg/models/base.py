"""Common base of the networks: input checks, "same" padding, output cropping.

Every network maps a float tensor ``(N, C, H, W)`` to logits ``(N, K, H', W')``. With
``padding="same"`` the input is reflect-padded to a multiple of ``2**depth`` (so every 2x2
pooling sees an even size), run, and the logits are cropped back to ``H x W``. With
``padding="valid"`` (U-Net only) nothing is padded and the output is smaller by
``2 * margin`` pixels, as in Ronneberger et al. (2015), Fig. 1.
"""

from __future__ import annotations

import numbers
from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .features import FilterBank

Level = Union[int, str, None]
Output = Union[torch.Tensor, list[torch.Tensor]]

__all__ = ["Level", "Output", "SegmentationNet", "crop_center", "pad_to_multiple"]


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad the last two axes of ``x`` up to a multiple of ``multiple``, centred.

    Each axis is reflection-padded; where it is too short to reflect (a pad would be at
    least as large as the axis) its edge is replicated instead.

    Parameters
    ----------
    x : torch.Tensor
        Tensor ``(N, C, H, W)``.
    multiple : int
        The padded height and width are multiples of this.

    Returns
    -------
    padded : torch.Tensor
        ``(N, C, H2, W2)`` with ``H2 >= H``, ``W2 >= W``.
    offset : tuple of int
        ``(top, left)``: where the original image starts inside ``padded``.
    """
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph == 0 and pw == 0:
        return x, (0, 0)
    top, left = ph // 2, pw // 2
    for pads, side in (((left, pw - left, 0, 0), w), ((0, 0, top, ph - top), h)):
        if any(pads):
            mode = "reflect" if max(pads) < side else "replicate"
            x = F.pad(x, pads, mode=mode)
    return x, (top, left)


def crop_center(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Crop the centre ``height x width`` of the last two axes (U-Net's crop-and-copy)."""
    h, w = x.shape[-2:]
    top, left = (h - height) // 2, (w - width) // 2
    return x[..., top : top + height, left : left + width]


class SegmentationNet(nn.Module):
    """Base of all networks built by :func:`napari_unetseg.models.build_model`.

    Subclasses implement :meth:`_forward_padded`, which receives an input whose size suits
    the architecture, and may override :meth:`_resolve_level` (UNet++) and the ``margin`` /
    ``valid_input_size`` pair (the unpadded U-Net).

    Parameters
    ----------
    config : ModelConfig
        The architecture; kept as ``self.config``.

    Attributes
    ----------
    config : ModelConfig
    num_levels : int
        Number of selectable outputs (UNet++: ``depth``; other networks: 1).
    """

    num_levels: int = 1

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
        self.config = config
        self.features = FilterBank() if config.features == "multiscale" else None

    @property
    def reach(self) -> int:
        """Pixels the filter bank reads beyond a pixel (0 without one); added to the halo."""
        return 0 if self.features is None else self.features.radius

    def apply_features(self, x: torch.Tensor) -> torch.Tensor:
        """The first layer's input: ``x`` through the filter bank, or ``x`` without one."""
        return x if self.features is None else self.features(x)

    @property
    def input_channels(self) -> int:
        """Channels the first layer sees: the image's, times the filter bank's features."""
        c = self.config.in_channels
        return c if self.features is None else c * self.features.per_channel

    # --- geometry -------------------------------------------------------------------------
    @property
    def margin(self) -> int:
        """Pixels lost on each side of the output (0 for ``padding="same"``)."""
        return 0

    @property
    def min_size(self) -> int:
        """Smallest accepted image side: ``2**depth`` (one pixel after the last pooling)."""
        return 2**self.config.depth

    def valid_input_size(self, n: int) -> int:
        """Smallest input size ``>= n`` the network runs on without internal padding.

        For ``padding="same"`` this is the next multiple of ``2**depth`` (not below
        ``2**depth``); any size ``>= 2**depth`` is accepted, but other sizes are padded
        internally.
        """
        n = _check_size(n)
        m = 2**self.config.depth
        return max(m, -(-n // m) * m)

    def output_size(self, n: int) -> int:
        """Output side for an input side ``n`` (``n - 2 * margin``)."""
        return _check_size(n) - 2 * self.margin

    # --- checks ---------------------------------------------------------------------------
    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError/TypeError unless ``x`` is a float ``(N, C, H, W)`` tensor."""
        c = self.config.in_channels
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor of shape (N, C={c}, H, W), got {type(x)}")
        if x.ndim != 4 or x.shape[1] != c:
            raise ValueError(f"expected input of shape (N, C={c}, H, W), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"expected a floating-point input tensor, got dtype {x.dtype}")
        self._check_spatial(int(x.shape[-2]), int(x.shape[-1]))

    def _check_spatial(self, h: int, w: int) -> None:
        """Raise ValueError when an ``h x w`` image is below :attr:`min_size`."""
        s = self.min_size
        if h < s or w < s:
            raise ValueError(
                f"image {h}x{w} is too small for depth {self.config.depth}: need at least "
                f"{s}x{s} pixels; use a smaller depth"
            )

    def _resolve_level(self, level: Level) -> Level:
        if level is not None:
            raise ValueError(
                f"{type(self).__name__} has a single output, so level must be None; got {level!r}"
            )
        return None

    # --- forward --------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, level: Level = None) -> Output:
        """Logits ``(N, K, H', W')`` for a float input ``(N, C, H, W)``.

        Parameters
        ----------
        x : torch.Tensor
            Float input of any floating dtype; it is converted to the parameters' dtype.
            Under ``torch.autocast`` the logits come out in the autocast dtype.
        level : None
            Only ``None`` for U-Net and ResUNet; see :class:`UNetPlusPlus` for its levels.
        """
        self.check_input(x)
        level = self._resolve_level(level)
        weight = next(self.parameters(), None)
        if weight is not None and x.dtype != weight.dtype:
            x = x.to(weight.dtype)  # any float input; autocast then casts as usual
        x = self.apply_features(x)  # on the image as given, before any internal padding
        if self.config.padding == "valid":
            return self._forward_padded(x, level)
        h, w = x.shape[-2:]
        padded, (top, left) = pad_to_multiple(x, 2**self.config.depth)
        out = self._forward_padded(padded, level)
        if isinstance(out, list):
            return [o[..., top : top + h, left : left + w] for o in out]
        return out[..., top : top + h, left : left + w]

    def _forward_padded(self, x: torch.Tensor, level: Level) -> Output:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"config={self.config.to_json()}"


def _check_size(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"size must be an int, got {type(n).__name__} {n!r}")
    n = int(n)
    if n < 1:
        raise ValueError(f"size must be >= 1, got {n}")
    return n
