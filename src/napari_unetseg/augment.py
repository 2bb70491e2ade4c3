"""Data augmentation of training batches, in torch, on the training device.

Ronneberger et al. (2015, section 3.1) found random elastic deformations the key
augmentation for training from few annotated EM images: "random displacement vectors on a
coarse 3 by 3 grid", sampled "from a Gaussian distribution with 10 pixels standard
deviation", with "per-pixel displacements computed using bicubic interpolation". We add
the usual flips, 90 degree rotations and image-only brightness/contrast/gamma jitter, and,
for a model meant to transfer to other microscopes (the bundled model), zoom (other pixel
sizes), contrast inversion, Gaussian blur and noise; these are off by default.

Zoom needs context beyond the patch when it shrinks the content: the trainer then samples
larger patches (:func:`context_size`) and :func:`augment_batch` returns their centre at the
training patch size (``size``).

Every random draw uses the ``torch.Generator`` passed in, and no draw needs a host sync
(per-sample choices are applied with ``torch.where``), so a batch on a GPU is augmented
without waiting for the device.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["AugmentConfig", "augment_batch", "context_size", "elastic_deform",
           "random_displacement"]


@dataclass(frozen=True)
class AugmentConfig:
    """Switches and strengths of the training augmentation.

    Parameters
    ----------
    flip : bool
        Random horizontal flip (with ``rot90`` this gives all 8 symmetries of the square).
    rot90 : bool
        Random rotation by a multiple of 90 degrees (180 only, for non-square patches).
    elastic : bool
        Elastic deformation on a coarse grid (Ronneberger 2015, section 3.1).
    elastic_sigma : float
        Standard deviation of the coarse displacement vectors in pixels (paper: 10).
    elastic_grid : int
        Points per side of the coarse grid (paper: 3).
    elastic_prob : float
        Probability that a sample of the batch is deformed.
    brightness : float
        An offset drawn uniformly from ``[-brightness, brightness]`` is added to the image.
    contrast : float
        The image is scaled about its mean by a factor from ``[1 - contrast, 1 + contrast]``.
    gamma : float
        ``x -> x ** g`` on the per-sample min-max range with ``log g`` drawn uniformly from
        ``[-gamma, gamma]``.
    zoom : float
        Scale the content by ``2 ** u``, ``u`` uniform in ``[-zoom, zoom]`` (1: from half to
        twice the size), as another pixel size would.
    invert : float
        Probability that a sample's contrast is inverted (``x -> 1 - x`` on the normalised
        image: bright membranes instead of dark).
    blur : float
        Gaussian blur with a standard deviation uniform in ``[0, blur]`` pixels.
    noise : float
        Additive Gaussian noise with a standard deviation uniform in ``[0, noise]``
        (normalised intensities: 1 is the 1-99.8 percentile range).
    """

    flip: bool = True
    rot90: bool = True
    elastic: bool = True
    elastic_sigma: float = 10.0
    elastic_grid: int = 3
    elastic_prob: float = 1.0
    brightness: float = 0.1
    contrast: float = 0.1
    gamma: float = 0.0
    zoom: float = 0.0
    invert: float = 0.0
    blur: float = 0.0
    noise: float = 0.0

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def off(cls) -> AugmentConfig:
        """A configuration with every augmentation switched off."""
        return cls(flip=False, rot90=False, elastic=False, brightness=0.0, contrast=0.0)

    @property
    def active(self) -> bool:
        """True when at least one augmentation changes the batch."""
        deform = self.elastic and self.elastic_sigma > 0 and self.elastic_prob > 0
        return bool(self.flip or self.rot90 or deform or self.zoom > 0 or self.intensity
                    or self.blur > 0)

    @property
    def intensity(self) -> bool:
        """True when an image-only intensity change is on."""
        return (self.brightness > 0 or self.contrast > 0 or self.gamma > 0 or self.invert > 0
                or self.noise > 0)

    def validate(self) -> None:
        """Raise TypeError/ValueError naming the bad field and the allowed range."""
        for name in ("flip", "rot90", "elastic"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        grid = self.elastic_grid
        if isinstance(grid, bool) or not isinstance(grid, int) or not 2 <= grid <= 64:
            raise ValueError(f"elastic_grid must be an int in 2..64, got {grid!r}")
        limits = {
            "elastic_sigma": (0.0, 1000.0),
            "elastic_prob": (0.0, 1.0),
            "brightness": (0.0, 10.0),
            "contrast": (0.0, 1.0),
            "gamma": (0.0, 3.0),
            "zoom": (0.0, 3.0),
            "invert": (0.0, 1.0),
            "blur": (0.0, 20.0),
            "noise": (0.0, 10.0),
        }
        for name, (lo, hi) in limits.items():
            value = getattr(self, name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not ok or not math.isfinite(value) or not lo <= value <= hi:
                raise ValueError(f"{name} must be a number in [{lo}, {hi}], got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AugmentConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown augment field(s) {unknown}; known: {sorted(known)}")
        return cls(**data)


def random_displacement(
    n: int, config: AugmentConfig, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """Coarse displacement vectors ``(n, 2, g, g)`` in pixels, N(0, sigma), (dx, dy) order.

    Samples not drawn for deformation (probability ``1 - elastic_prob``) get zeros.
    """
    g = config.elastic_grid
    disp = torch.randn((n, 2, g, g), generator=generator, device=device) * config.elastic_sigma
    if config.elastic_prob < 1.0:
        keep = torch.rand((n, 1, 1, 1), generator=generator, device=device) < config.elastic_prob
        disp = disp * keep
    return disp


def context_size(patch: int, config: AugmentConfig) -> int:
    """Side of the patches to sample so that zooming out by up to ``2 ** -zoom`` finds real
    image around a ``patch``-sized result (``patch`` when zoom is off)."""
    return patch if config.zoom <= 0 else int(math.ceil(patch * 2.0**config.zoom))


def elastic_deform(
    image: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    displacement: torch.Tensor,
    zoom: torch.Tensor | None = None,
    size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Warp a batch by a coarse displacement field, upsampled bicubically (U-Net, 3.1).

    Parameters
    ----------
    image : torch.Tensor
        ``(N, C, H, W)`` float; resampled bilinearly.
    target : torch.Tensor
        ``(N, H, W)`` integer labels (ignore value included); resampled with nearest
        neighbour, so every output label is one of the input labels.
    weight : torch.Tensor or None
        ``(N, H, W)`` float pixel weights; resampled bilinearly.
    displacement : torch.Tensor
        ``(N, 2, g, g)`` displacement in pixels, x then y, at the coarse grid points that
        span the patch corners to corners. Zero gives back the input.
    zoom : torch.Tensor or None
        ``(N,)`` scale factors of the content about the patch centre (2: twice as large).
    size : int or None
        Side of the result, the centre of the input (default: the input's size); the input
        around it is the context that zooming out brings in.

    Returns
    -------
    image, target, weight : the warped tensors. Points mapped outside the patch read the
    mirrored patch (reflection padding), for the image and labels alike.
    """
    n, _, h, w = image.shape
    oh, ow = (h, w) if size is None else (size, size)
    dense = F.interpolate(
        displacement.float(), size=(oh, ow), mode="bicubic", align_corners=True
    )  # (N, 2, H, W) pixels
    # the output's pixel centres in the input's normalised coordinates (centred crop)
    ys = torch.linspace(-1.0, 1.0, oh, device=image.device) * ((oh - 1) / max(h - 1, 1))
    xs = torch.linspace(-1.0, 1.0, ow, device=image.device) * ((ow - 1) / max(w - 1, 1))
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    if zoom is not None:
        inv = (1.0 / zoom.float()).view(-1, 1, 1)
        gy, gx = gy * inv, gx * inv
    # pixels -> normalised coordinates with python scalars: no host-to-device copy (sync)
    grid = torch.stack(
        (gx + dense[:, 0] * (2.0 / max(w - 1, 1)), gy + dense[:, 1] * (2.0 / max(h - 1, 1))),
        dim=-1,
    )  # (N, H, W, 2): x, y
    opts = {"padding_mode": "reflection", "align_corners": True}
    out_image = F.grid_sample(image, grid.to(image.dtype), mode="bilinear", **opts)
    lab = target.unsqueeze(1).to(torch.float32)
    out_target = F.grid_sample(lab, grid, mode="nearest", **opts)
    out_target = out_target.squeeze(1).round().to(target.dtype)
    out_weight = None
    if weight is not None:
        out_weight = F.grid_sample(weight.unsqueeze(1), grid, mode="bilinear", **opts)
        out_weight = out_weight.squeeze(1)
    return out_image, out_target, out_weight


def _select(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample ``a if mask else b`` without a host sync; ``mask`` is ``(N,)`` bool."""
    return torch.where(mask.view(-1, *([1] * (a.ndim - 1))), a, b)


def _dihedral(
    tensors: list[torch.Tensor | None], config: AugmentConfig, generator: torch.Generator
) -> list[torch.Tensor | None]:
    """Apply the same random flip / rot90 to each tensor (spatial axes last)."""
    first = tensors[0]
    n, device = first.shape[0], first.device
    square = first.shape[-1] == first.shape[-2]
    if config.flip:
        flip = torch.rand(n, generator=generator, device=device) < 0.5
        tensors = [None if t is None else _select(flip, t.flip(-1), t) for t in tensors]
    if config.rot90:
        k = torch.randint(0, 4, (n,), generator=generator, device=device)
        if not square:  # only 0 or 180 degrees keep the shape
            k = (k // 2) * 2
        out = []
        for t in tensors:
            if t is not None:
                for turn in (1, 2, 3) if square else (2,):
                    t = _select(k == turn, torch.rot90(t, turn, dims=(-2, -1)), t)
            out.append(t)
        tensors = out
    return tensors


def _intensity(
    image: torch.Tensor, config: AugmentConfig, generator: torch.Generator
) -> torch.Tensor:
    """Per-sample brightness, contrast and gamma jitter of a float ``(N, C, H, W)`` batch."""
    n, device = image.shape[0], image.device
    shape = (n, 1, 1, 1)

    def uniform(half: float) -> torch.Tensor:
        return (torch.rand(shape, generator=generator, device=device) * 2 - 1) * half

    if config.invert > 0:
        flip = torch.rand(n, generator=generator, device=device) < config.invert
        image = _select(flip, 1.0 - image, image)
    if config.gamma > 0:
        lo = image.amin(dim=(1, 2, 3), keepdim=True)
        span = (image.amax(dim=(1, 2, 3), keepdim=True) - lo).clamp_min(1e-6)
        g = torch.exp(uniform(config.gamma))
        image = ((image - lo) / span).clamp(0, 1).pow(g) * span + lo
    if config.contrast > 0:
        mean = image.mean(dim=(1, 2, 3), keepdim=True)
        image = (image - mean) * (1 + uniform(config.contrast)) + mean
    if config.brightness > 0:
        image = image + uniform(config.brightness)
    if config.noise > 0:
        std = torch.rand(shape, generator=generator, device=device) * config.noise
        image = image + std * torch.randn(image.shape, generator=generator, device=device)
    return image


def _blur(image: torch.Tensor, config: AugmentConfig, generator: torch.Generator
          ) -> torch.Tensor:
    """Separable Gaussian blur of each sample with its own sigma, uniform in [0, blur]."""
    n, c, h, w = image.shape
    radius = min(int(math.ceil(3 * config.blur)), (min(h, w) - 1) // 2)
    if radius < 1:
        return image
    sigma = torch.rand((n, 1), generator=generator, device=image.device) * config.blur
    x = torch.arange(-radius, radius + 1, device=image.device, dtype=image.dtype)
    k = torch.exp(-0.5 * (x / sigma.clamp_min(1e-3)) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (N*C, 2r+1)
    flat = image.reshape(1, n * c, h, w)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="reflect"),
                    k.view(n * c, 1, 1, -1), groups=n * c)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="reflect"),
                    k.view(n * c, 1, -1, 1), groups=n * c)
    return flat.view(n, c, h, w)


def augment_batch(
    image: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    *,
    config: AugmentConfig,
    generator: torch.Generator,
    size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Augment a training batch: flips/rot90, zoom and elastic deformation, blur, intensity
    jitter and noise.

    Parameters
    ----------
    image : torch.Tensor
        ``(N, C, H, W)`` float images.
    target : torch.Tensor
        ``(N, H, W)`` integer class targets; the ignore value (-1) is kept where it is moved.
    weight : torch.Tensor or None
        ``(N, H, W)`` float pixel weights (U-Net weight map), moved with the labels.
    config : AugmentConfig
        What to apply.
    generator : torch.Generator
        Source of randomness, on the device of ``image``; a seeded generator gives the
        same batch every time.
    size : int or None
        Return the centre ``size x size`` of the (zoomed, deformed) batch; the input around
        it is context (see :func:`context_size`). Default: the input's size.

    Returns
    -------
    image, target, weight : augmented tensors (the inputs themselves when nothing is on).
    """
    if image.ndim != 4 or target.shape != (image.shape[0], *image.shape[2:]):
        raise ValueError(
            f"expected image (N, C, H, W) and target (N, H, W), got {tuple(image.shape)} "
            f"and {tuple(target.shape)}"
        )
    if weight is not None and weight.shape != target.shape:
        raise ValueError(f"weight shape {tuple(weight.shape)} != target {tuple(target.shape)}")
    if config.flip or config.rot90:
        image, target, weight = _dihedral([image, target, weight], config, generator)
    n, device = image.shape[0], image.device
    deform = config.elastic and config.elastic_sigma > 0 and config.elastic_prob > 0
    zoom = None
    if config.zoom > 0:
        u = torch.rand(n, generator=generator, device=device) * 2 - 1
        zoom = torch.exp2(u * config.zoom)
    if deform or zoom is not None or (size is not None and size != image.shape[-1]):
        disp = (random_displacement(n, config, generator, device) if deform
                else torch.zeros((n, 2, 2, 2), device=device))
        image, target, weight = elastic_deform(image, target, weight, disp, zoom, size)
    if config.blur > 0:
        image = _blur(image, config, generator)
    if config.intensity:
        image = _intensity(image, config, generator)
    return image, target, weight
