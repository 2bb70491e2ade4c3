"""From a trained network to a fast tile predictor: the engine under :mod:`.inference`.

* :func:`tile_geometry` sizes the tiles for an image: overlap-tile as in U-Net (Ronneberger et
  al. 2015), where every tile carries a *halo* of context that is computed and thrown away,
  so neighbouring output tiles abut instead of overlapping by a fraction of a tile; tiles are
  balanced so that a few of them cover the image with little waste.
* :func:`inference_network` is the network as inference runs it: BatchNorm folded into the
  convolutions (a copy; the caller's model is untouched), channels_last on CUDA.
* :func:`make_predictor` maps a batch of tiles to class probabilities (autocast, halo crop,
  flip TTA); :class:`Chunked` retries a batch in halves on CUDA out-of-memory;
  :func:`auto_batch` sizes the batch from free CUDA memory.

The in-memory :func:`.inference.segment` and the block-wise :mod:`.blockwise` share them.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch

from .config import ModelConfig
from .models.fuse import fold_batchnorm

__all__ = [
    "AUTO_HALO_UNITS",
    "AUTO_OVERLAP",
    "AUTO_TILE",
    "Geometry",
    "Chunked",
    "amp_dtype",
    "auto_batch",
    "inference_network",
    "make_predictor",
    "tile_geometry",
]

#: ``halo="auto"`` for a ``same``-padded network of depth d is ``AUTO_HALO_UNITS * 2**d``
#: pixels on every device: 80 px at depth 4, most of a U-Net's receptive-field radius
#: (``6 * 2**d - 4``, 92 px). With it the tile size does not change the labels: the bundled
#: depth-4 U-Net labels ISBI 2012 slices 25-29 the same at ``tile=256`` and ``tile=512`` on
#: 99.9995 % of the pixels (48 px: 99.93 %, 64 px: 99.989 %, the old blended default
#: 99.65 %; benchmarks/seamless.py, docs/performance.md), and the image border is
#: mirror-padded by it, as in the paper.
AUTO_HALO_UNITS = 5
_CPU_BATCH, _MAX_BATCH = 1, 64  # CPU: batching tiles only adds memory traffic


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` ("auto", "off", "bf16", "fp16") on ``device``."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if device.type != "cuda":
        raise ValueError(f"amp={amp!r} needs a CUDA device, got {device}; use 'auto' or 'off'")
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if amp == "bf16" else torch.float16


def _ceil_to(n: int, step: int) -> int:
    return -(-n // step) * step


def _balanced_out(n: int, out_max: int, overlap: float, align: int) -> int:
    """Smallest output tile (multiple of ``align``, <= ``out_max``) with which the fewest
    tiles overlapping by ``overlap`` of a tile cover ``n`` pixels."""
    for k in range(1, n + 1):
        out = _ceil_to(math.ceil(n / (k - (k - 1) * overlap)), align)
        if out <= out_max:
            return out
    return out_max


#: ``tile="auto"``: large tiles keep a GPU busy and make the halo cheap everywhere: a 512-px
#: slice is one 672-px tile (its 80-px halo costs 1.7x the pixels), which on a CPU segments
#: in about 1.5x the CPU time of the old no-halo, blended 384-px tiles
#: (benchmarks/seamless.py). 768 on a CPU bounds the memory of wide networks.
AUTO_TILE = {"cuda": 1024, "other": 768}
#: ``overlap="auto"`` without a halo (``halo=0``): blended overlap that hides the seams
AUTO_OVERLAP = 0.125


class Geometry(NamedTuple):
    """The tiling of one image: input tile per axis, what the predictor loses per side
    (network margin + halo), the pooling grid, the halo it crops and the blended overlap."""

    tile: tuple[int, int]
    margin: int
    align: int
    halo: int
    overlap: float


def _resolve_halo(halo: int | str, margin: int, tile: int, align: int, extra: int = 0) -> int:
    if margin:
        if halo not in ("auto", 0):
            raise ValueError(
                f"halo={halo!r} is for 'same'-padded networks; this 'valid' network already "
                f"discards its exact margin of {margin} px per side: use halo='auto' or 0"
            )
        return 0
    if halo == "auto":  # at most 3/8 of a (small) tile: a quarter of it is still output
        return min(AUTO_HALO_UNITS * align + _ceil_to(extra, align),
                   3 * tile // 8 // align * align)
    return _ceil_to(int(halo), align)


def tile_geometry(
    model: Any, cfg: ModelConfig, shape: tuple[int, int], device: torch.device, *,
    tile: int | str = "auto", halo: int | str = "auto", overlap: float | str = "auto",
) -> Geometry:  # fmt: skip
    """Resolve the "auto" tiling settings for ``device`` and size the tiles of an image.

    ``tile`` is the largest input tile ("auto": ``AUTO_TILE``). ``halo`` "auto" is
    ``AUTO_HALO_UNITS * 2**depth`` px on every device, plus the reach of a filter bank
    (``features="multiscale"``: 48 px, rounded up to the grid; at most 3/8 of a small tile), so the
    tiling is seamless (the labels do not depend on the tile size) and the image border is
    mirror-padded; always 0 for a
    ``valid`` network, whose exact margin is discarded anyway. ``overlap`` "auto" is 0 with a
    halo and ``AUTO_OVERLAP`` without one (``halo=0``, the blended alternative). For a
    ``same`` network each axis gets the fewest tiles of at most ``tile`` that cover it, each
    as small as that allows (a 512-pixel slice with the 80-pixel halo is one 672-pixel tile),
    on the ``2**depth`` pooling grid so that a tile sees the same grid as the whole image.
    """
    big = device.type == "cuda"
    if tile == "auto":
        tile = AUTO_TILE["cuda" if big else "other"]
    align, margin = 2**cfg.depth, int(getattr(model, "margin", 0))
    # the filter bank's reach comes on top
    h = _resolve_halo(halo, margin, tile, align, int(getattr(model, "reach", 0)))
    if overlap == "auto":
        overlap = 0.0 if h or margin else AUTO_OVERLAP
    if margin:
        sizes = tuple(
            int(model.valid_input_size(max(min(tile, n + 2 * margin), 2 * margin + align)))
            for n in shape
        )
        return Geometry(sizes, margin, align, 0, float(overlap))
    out_max = max(align, tile // align * align) - 2 * h
    if out_max < align:
        raise ValueError(
            f"tile {tile} leaves no output after a halo of {h} px per side (and the "
            f"{align}-px pooling grid); use a tile of at least {2 * h + align} or a smaller halo"
        )
    sizes = tuple(_balanced_out(n, out_max, overlap, align) + 2 * h for n in shape)
    return Geometry(sizes, h, align, h, float(overlap))


def _channels_last(device: torch.device) -> bool:
    # CUDA: what tensor cores read; CPU (oneDNN): 1.5-1.8x faster convolutions measured on
    # the "fast" U-Net at 256-1024 px tiles (docs/performance.md). MPS: left as it is.
    return device.type in ("cpu", "cuda")


def inference_network(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The network as inference runs it: an eval-mode copy on ``device`` with BatchNorm
    folded into the convolutions, in channels_last memory on CPU and CUDA. The caller's
    model is not changed."""
    net = fold_batchnorm(model).to(device)
    if _channels_last(device):
        net = net.to(memory_format=torch.channels_last)
    return net


def make_predictor(
    model: Any, level: Any, tta: bool, amp: torch.dtype | None, binary: bool, crop: int = 0,
    activate: bool = True,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Tile batch -> class probabilities (softmax; sigmoid for one class), fp32, with the
    outer ``crop`` pixels (the halo) removed before the softmax. ``activate=False``: the
    network's output is used as it is (a model that returns probabilities itself)."""
    channels_last = _channels_last(next(model.parameters()).device)

    def run(x: torch.Tensor) -> torch.Tensor:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=amp, enabled=amp is not None):
            y = model(x) if level is None else model(x, level=level)
        if crop:
            y = y[..., crop:-crop, crop:-crop]
        y = y.float()
        if not activate:
            return y
        return torch.sigmoid(y) if binary else torch.softmax(y, dim=1)

    def predictor(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            p = run(x)
            if tta:
                for dims in ((-1,), (-2,), (-2, -1)):
                    p += run(x.flip(dims)).flip(dims)
                p /= 4
            return p

    return predictor


class Chunked:
    """Call ``fn`` on chunks of a batch; on CUDA OOM halve the chunk and retry."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], chunk: int) -> None:
        self.fn, self.chunk = fn, chunk

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        while True:
            try:
                parts = [self.fn(x[i : i + self.chunk]) for i in range(0, len(x), self.chunk)]
                return parts[0] if len(parts) == 1 else torch.cat(parts)
            except torch.cuda.OutOfMemoryError as e:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                if min(self.chunk, len(x)) <= 1:
                    raise RuntimeError(
                        f"out of GPU memory on a single tile {tuple(x.shape[1:])}; use a "
                        "smaller InferenceConfig.tile, amp='bf16', or device='cpu'"
                    ) from e
                self.chunk = min(self.chunk, len(x)) // 2


def auto_batch(fn: Callable, channels: int, tile: tuple, device: torch.device, n: int) -> int:
    """Tiles per batch: half the free CUDA memory over a measured one-tile peak (1 on CPU)."""
    if device.type != "cuda":
        return max(1, min(_CPU_BATCH, n))
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    try:
        fn(torch.zeros((1, channels, *tile), device=device))
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return 1
    per_tile = max(torch.cuda.max_memory_allocated(device) - base, 1 << 20)
    free, _ = torch.cuda.mem_get_info(device)
    avail = free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(np.clip(avail // 2 // per_tile, 1, min(_MAX_BATCH, n)))


def check_auto(name: str, value: Any, kind: str) -> None:
    """Raise TypeError/ValueError unless ``value`` is "auto" or a valid ``kind``: "tile"
    (int >= 8), "halo" (int >= 0) or "overlap" (fraction in [0, 1))."""
    if isinstance(value, str) and value == "auto":
        return
    if kind == "overlap":
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be 'auto' or a fraction (float), got {value!r}")
        if not 0 <= value < 1:
            raise ValueError(f"{name} must be 'auto' or a fraction in [0, 1), got {value}")
        return
    low = 8 if kind == "tile" else 0
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be 'auto' or an int (pixels), got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be 'auto' or an int >= {low} (pixels), got {value}")
