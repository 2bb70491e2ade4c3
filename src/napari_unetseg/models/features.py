"""A fixed multiscale filter bank in front of a network: the pixel features of ilastik's and
napari-convpaint's classifiers (smoothed intensity, gradient magnitude and the two Hessian
eigenvalues at Gaussian scales 1, 2, 4, 8, 16 px), computed inside the model.

A network fed these features starts where a random forest on the same features starts, and
learns context on top: from a few strokes it reaches a good segmentation in far fewer steps
than from raw pixels (docs/performance.md, "the interactive loop"). The filters have no
trainable weights and are not stored in model files (they are rebuilt from the model's config,
``features="multiscale"``), so a model file stays weights plus JSON.

>>> import torch
>>> bank = FilterBank((1.0, 2.0))
>>> bank(torch.zeros(1, 1, 32, 32)).shape
torch.Size([1, 9, 32, 32])
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["DEFAULT_SCALES", "FilterBank"]

#: Gaussian scales of the "multiscale" features (ilastik's default sigmas up to 16 px).
DEFAULT_SCALES: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0)
_TRUNCATE = 3.0  # kernel radius in sigmas


def _radius(sigma: float) -> int:
    return max(1, int(math.ceil(_TRUNCATE * sigma)))


def _gaussian(sigma: float) -> torch.Tensor:
    r = _radius(sigma)
    x = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return (k / k.sum()).float()


class FilterBank(nn.Module):
    """Input ``(N, C, H, W)`` -> ``(N, C * (1 + 4 * len(scales)), H, W)``.

    Per input channel: the channel itself, then per scale ``s`` the Gaussian-smoothed image,
    ``s`` times its gradient magnitude and ``s**2`` times the two eigenvalues of its Hessian
    (scale-normalised derivatives, so every scale has the same range). Borders are
    replicated. The kernels are non-persistent buffers: never in a state dict.
    """

    def __init__(self, scales: tuple[float, ...] = DEFAULT_SCALES) -> None:
        super().__init__()
        if not scales or any(not (0 < s <= 64) for s in scales):
            raise ValueError(f"scales must be in (0, 64], got {scales}")
        self.scales = tuple(float(s) for s in scales)
        for i, s in enumerate(self.scales):
            self.register_buffer(f"g{i}", _gaussian(s), persistent=False)

    @property
    def radius(self) -> int:
        """Pixels of context the widest kernel reads on each side."""
        return max(_radius(s) for s in self.scales)

    @property
    def per_channel(self) -> int:
        return 1 + 4 * len(self.scales)

    def _smooth(self, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        r = (k.numel() - 1) // 2
        c = x.shape[1]
        x = F.pad(x, (r, r, 0, 0), mode="replicate")
        x = F.conv2d(x, k.to(x.dtype).view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        x = F.pad(x, (0, 0, r, r), mode="replicate")
        return F.conv2d(x, k.to(x.dtype).view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)

    @staticmethod
    def _d(x: torch.Tensor, axis: int) -> torch.Tensor:
        """Central difference along H (axis 2) or W (axis 3), borders replicated."""
        pad = (1, 1, 0, 0) if axis == 3 else (0, 0, 1, 1)
        p = F.pad(x, pad, mode="replicate")
        n = x.shape[axis]
        return (p.narrow(axis, 2, n) - p.narrow(axis, 0, n)) / 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = [x]
        for i, s in enumerate(self.scales):
            g = self._smooth(x, getattr(self, f"g{i}"))
            gy, gx = self._d(g, 2), self._d(g, 3)
            hyy, hxx, hxy = self._d(gy, 2), self._d(gx, 3), self._d(gx, 2)
            mean = (hxx + hyy) / 2
            root = torch.sqrt(((hxx - hyy) / 2) ** 2 + hxy**2 + 1e-12)
            out += [g, s * torch.sqrt(gx**2 + gy**2 + 1e-12), s * s * (mean + root),
                    s * s * (mean - root)]
        return torch.cat(out, 1)
