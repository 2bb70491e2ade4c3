"""Overlap-tile planning and stitching, independent of any model.

The overlap-tile strategy of Ronneberger, Fischer & Brox (2015, "U-Net", Fig. 2): the image
is mirror-padded at its borders, cut into input tiles of a fixed size, every tile is mapped by
a *predictor* (any callable; the tiler knows nothing of networks) to an output tile that is
smaller by ``margin`` pixels on each side, and the output tiles are put back in place. For an
unpadded (``valid``) network the output tiles abut or overlap exactly; for a ``same`` network
the overlaps are blended with a window that tapers towards the tile border and the sum is
divided by the sum of the windows, so no seam is visible.

The plan (tile origins) is pure numpy. The per-tile work runs on numpy arrays by default, or
on torch tensors on a device (``device=...``): the padded slice is copied to the device once,
tiles are gathered into a batch tensor there and the blend is accumulated there, so the only
host copies are the slice in and the stitched result out.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "BLENDS",
    "TilePlan",
    "blend_window",
    "iter_tiled",
    "mirror_pad",
    "plan_tiles",
    "tiled_apply",
]

#: Blend windows accepted by :func:`blend_window`.
BLENDS = ("constant", "linear", "cosine", "gaussian")

Predictor = Callable[[Any], Any]


@dataclass(frozen=True)
class TilePlan:
    """Where the tiles of one 2D image go.

    Coordinates are in *output* pixels of the image: the output tile with origin ``(y, x)``
    covers ``[y, y + out_tile[0]) x [x, x + out_tile[1])`` and is computed from the input tile
    ``[y - margin, y + tile[0] - margin)`` (likewise in x) of the mirror-padded image.

    Attributes
    ----------
    shape : tuple of int
        ``(H, W)`` of the image.
    tile : tuple of int
        Input tile size ``(th, tw)`` fed to the predictor.
    margin : int
        Pixels the predictor loses on each side.
    overlap : tuple of int
        Nominal overlap of neighbouring output tiles in pixels (the blend ramp width).
    ys, xs : tuple of int
        Output-tile origins along y and x; the tiles are their Cartesian product.
    extent : tuple of int
        Size of the output region covered by the tiles (``>= shape``; cropped at the end).
    """

    shape: tuple[int, int]
    tile: tuple[int, int]
    margin: int
    overlap: tuple[int, int]
    ys: tuple[int, ...]
    xs: tuple[int, ...]
    extent: tuple[int, int]

    @property
    def out_tile(self) -> tuple[int, int]:
        """Output tile size ``tile - 2 * margin``."""
        return (self.tile[0] - 2 * self.margin, self.tile[1] - 2 * self.margin)

    @property
    def n_tiles(self) -> int:
        return len(self.ys) * len(self.xs)

    def origins(self) -> np.ndarray:
        """``(n_tiles, 2)`` int array of output-tile origins, row-major."""
        yy, xx = np.meshgrid(np.asarray(self.ys), np.asarray(self.xs), indexing="ij")
        return np.stack([yy.ravel(), xx.ravel()], axis=1).astype(np.int64)

    @property
    def pad_width(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """Mirror padding ``((top, bottom), (left, right))`` the input image needs."""
        m = self.margin
        return (
            (m, self.extent[0] - self.shape[0] + m),
            (m, self.extent[1] - self.shape[1] + m),
        )


def _pair(name: str, value: Any) -> tuple[int, int]:
    vals = (value, value) if isinstance(value, numbers.Integral) else value
    if (
        not isinstance(vals, Sequence)
        or len(vals) != 2
        or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in vals)
    ):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    return int(vals[0]), int(vals[1])


def _axis_origins(length: int, out: int, overlap: float, align: int) -> tuple[list[int], int]:
    """Origins spread evenly over one axis, multiples of ``align``; also the covered extent."""
    if length <= out:
        return [0], out
    ov = int(round(overlap * out))
    stride = max(align, (out - ov) // align * align)
    units = math.ceil((length - out) / align)  # last origin, in units of align
    n = math.ceil(units * align / stride) + 1
    starts = np.round(np.linspace(0, units, n)).astype(np.int64) * align
    return [int(s) for s in np.unique(starts)], out + units * align


def plan_tiles(
    shape: tuple[int, int],
    tile: int | tuple[int, int],
    *,
    overlap: float = 0.125,
    margin: int = 0,
    align: int = 1,
) -> TilePlan:
    """Plan the overlap-tile grid of an image.

    Parameters
    ----------
    shape : tuple of int
        ``(H, W)`` of the image, both >= 1.
    tile : int or tuple of int
        Input tile size (what the predictor receives); must exceed ``2 * margin``.
    overlap : float
        Overlap of neighbouring output tiles as a fraction of the output tile, in ``[0, 1)``.
        Tiles are spread evenly, so the actual overlap is at least this.
    margin : int
        Pixels the predictor loses on each side (0 for a ``same`` network; ``model.margin``
        for an unpadded one).
    align : int
        Tile origins are multiples of this (``2**depth`` keeps every tile on the same pooling
        grid as a pass over the whole image, which makes a ``valid`` U-Net's tiled output
        equal to its untiled output).

    Returns
    -------
    TilePlan
    """
    h, w = _pair("shape", shape)
    th, tw = _pair("tile", tile)
    if h < 1 or w < 1:
        raise ValueError(f"image shape must be >= 1 on both axes, got {(h, w)}")
    if isinstance(margin, bool) or not isinstance(margin, numbers.Integral) or margin < 0:
        raise ValueError(f"margin must be an int >= 0, got {margin!r}")
    if isinstance(align, bool) or not isinstance(align, numbers.Integral) or align < 1:
        raise ValueError(f"align must be an int >= 1, got {align!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, numbers.Real):
        raise TypeError(f"overlap must be a float fraction in [0, 1), got {overlap!r}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be a fraction in [0, 1), got {overlap}")
    outs = (th - 2 * margin, tw - 2 * margin)
    if min(outs) < 1:
        raise ValueError(
            f"tile {(th, tw)} must be larger than 2 * margin = {2 * margin} on both axes"
        )
    if min(outs) < align:
        raise ValueError(
            f"output tile {outs} (tile - 2 * margin) must be at least align = {align}; "
            "use a larger tile"
        )
    ys, ey = _axis_origins(h, outs[0], float(overlap), int(align))
    xs, ex = _axis_origins(w, outs[1], float(overlap), int(align))
    ovl = (int(round(overlap * outs[0])), int(round(overlap * outs[1])))
    return TilePlan((h, w), (th, tw), int(margin), ovl, tuple(ys), tuple(xs), (ey, ex))


def mirror_pad(
    image: np.ndarray, pad_width: tuple[tuple[int, int], tuple[int, int]]
) -> np.ndarray:
    """Mirror-pad the last two axes of ``image`` (U-Net Fig. 2).

    ``np.pad(mode="reflect")`` (edge pixel not repeated; repeated reflection when the pad
    exceeds the image); an axis of length 1 cannot be reflected and is repeated instead.
    """
    lead = [(0, 0)] * (image.ndim - 2)
    out = image
    for axis, pw in ((-2, pad_width[0]), (-1, pad_width[1])):
        if pw == (0, 0):
            continue
        widths = [*lead, (0, 0), (0, 0)]
        widths[axis] = pw
        mode = "reflect" if out.shape[axis] > 1 else "edge"
        out = np.pad(out, widths, mode=mode)
    return out


def _ramp_1d(n: int, ramp: int, mode: str) -> np.ndarray:
    if mode == "gaussian":  # MONAI-style importance map, sigma = n / 8
        c = (n - 1) / 2
        g = np.exp(-((np.arange(n) - c) ** 2) / (2 * (n / 8) ** 2))
        return np.maximum(g, 1e-3)
    w = np.ones(n)
    if mode == "constant" or ramp <= 0:
        return w
    t = np.minimum(np.arange(1, n + 1), np.arange(n, 0, -1)) / (ramp + 1)  # > 0 everywhere
    t = np.minimum(t, 1.0)
    return t if mode == "linear" else 0.5 - 0.5 * np.cos(np.pi * t)


def blend_window(
    out_tile: tuple[int, int], overlap: tuple[int, int], mode: str = "cosine"
) -> np.ndarray:
    """Blend weights ``(th, tw)`` for an output tile, strictly positive everywhere.

    ``constant`` is flat; ``linear`` and ``cosine`` rise over ``overlap`` pixels from each
    border to 1 (so the interior is untouched); ``gaussian`` is a Gaussian with sigma of
    1/8 of the tile (MONAI's importance map). Separable: the outer product of 1D windows.
    """
    if mode not in BLENDS:
        raise ValueError(f"blend must be one of {', '.join(BLENDS)}; got {mode!r}")
    wy = _ramp_1d(out_tile[0], overlap[0], mode)
    wx = _ramp_1d(out_tile[1], overlap[1], mode)
    return np.outer(wy, wx).astype(np.float32)


class _Ops:
    """The few array operations the stitcher needs, on numpy or on a torch device."""

    def __init__(self, device: Any) -> None:
        self.torch = None
        if device is not None:
            import torch

            self.torch, self.device = torch, torch.device(device)

    def asarray(self, a: np.ndarray) -> Any:
        """``a`` as it is (numpy) or copied to the device in its own dtype (a uint8 image
        crosses the bus as one byte per pixel)."""
        if self.torch is None:
            return a
        t = self.torch.from_numpy(np.ascontiguousarray(a))
        if self.device.type == "cuda":  # pinned: the copy need not wait for the GPU's queue
            t = t.pin_memory()
        return t.to(self.device, non_blocking=True)

    def float32(self, a: Any) -> Any:
        return a.astype(np.float32, copy=False) if self.torch is None else a.float()

    def zeros(self, shape: tuple[int, ...]) -> Any:
        if self.torch is None:
            return np.zeros(shape, np.float32)
        return self.torch.zeros(shape, dtype=self.torch.float32, device=self.device)

    def stack(self, arrays: list[Any]) -> Any:
        return np.stack(arrays) if self.torch is None else self.torch.stack(arrays)

    def add_weighted(self, acc: Any, values: Any, weights: Any) -> None:
        """``acc += values * weights`` in place (one fused kernel on torch)."""
        if self.torch is None:
            acc += values * weights
        else:
            acc.addcmul_(values, weights)


def iter_tiled(
    image: np.ndarray,
    predictor: Predictor,
    plan: TilePlan,
    *,
    batch_size: int = 8,
    blend: str = "cosine",
    device: Any = None,
    prepare: Callable[[Any], Any] | None = None,
) -> Generator[tuple[int, int], None, Any]:
    """Apply ``predictor`` tile by tile; yield ``(tiles_done, n_tiles)`` after every batch.

    Parameters
    ----------
    image : numpy.ndarray
        ``(C, H, W)``, or ``(N, C, H, W)`` for N images of the same size that share the
        plan (their tiles are batched together, so small images still fill a batch), with
        ``(H, W) == plan.shape``. Any dtype: it is mirror-padded and moved to the device
        as it is, then converted by ``prepare``.
    predictor : callable
        Maps a batch ``(B, C, *plan.tile)`` to ``(B, K, *plan.out_tile)``; it gets numpy
        arrays, or torch tensors on ``device`` when one is given.
    plan : TilePlan
    batch_size : int
        Tiles per predictor call.
    blend : str
        Window (see :func:`blend_window`) for the weighted average of overlapping outputs.
    device : str or torch.device, optional
        Work in torch on this device instead of numpy.
    prepare : callable, optional
        Maps the padded image (numpy array, or tensor on ``device``) to float32, e.g. an
        intensity normalisation run on the device; default: a plain cast to float32.

    Returns
    -------
    array
        The stitched ``(K, H, W)`` (``(N, K, H, W)`` for a 4D input) float32 output (a tensor
        on ``device`` when given): for every pixel ``sum_i w_i * out_i / sum_i w_i`` over
        the tiles covering it.
    """
    single = getattr(image, "ndim", 0) == 3
    batch = image[None] if single else image
    if batch.ndim != 4 or tuple(batch.shape[2:]) != plan.shape:
        raise ValueError(
            f"image must be (C, {plan.shape[0]}, {plan.shape[1]}) or "
            f"(N, C, {plan.shape[0]}, {plan.shape[1]}), got {image.shape}"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    ops = _Ops(device)
    src = ops.asarray(mirror_pad(np.asarray(batch), plan.pad_width))
    src = ops.float32(src) if prepare is None else prepare(src)
    (th, tw), (oh, ow) = plan.tile, plan.out_tile
    win = ops.asarray(blend_window(plan.out_tile, plan.overlap, blend))
    norm = ops.zeros(plan.extent)
    for y, x in plan.origins().tolist():
        norm[y : y + oh, x : x + ow] += win
    jobs = [(n, y, x) for n in range(len(batch)) for y, x in plan.origins().tolist()]
    acc = None
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        out = predictor(ops.stack([src[n, :, y : y + th, x : x + tw] for n, y, x in chunk]))
        if out.ndim != 4 or out.shape[0] != len(chunk) or tuple(out.shape[2:]) != (oh, ow):
            raise ValueError(
                f"predictor returned shape {tuple(out.shape)} for {len(chunk)} tiles of "
                f"{(th, tw)}; expected ({len(chunk)}, K, {oh}, {ow}) (margin {plan.margin})"
            )
        if acc is None:
            acc = ops.zeros((len(batch), out.shape[1], *plan.extent))
        for (n, y, x), o in zip(chunk, out, strict=True):
            ops.add_weighted(acc[n, :, y : y + oh, x : x + ow], o, win)
        yield start + len(chunk), len(jobs)
    h, w = plan.shape
    result = acc[..., :h, :w] / norm[:h, :w]
    return result[0] if single else result


def tiled_apply(
    image: np.ndarray,
    predictor: Predictor,
    tile: int | tuple[int, int],
    *,
    overlap: float = 0.125,
    margin: int = 0,
    align: int = 1,
    batch_size: int = 8,
    blend: str = "cosine",
    device: Any = None,
) -> Any:
    """Plan and run the overlap-tile prediction of a ``(C, H, W)`` image in one call.

    See :func:`plan_tiles` and :func:`iter_tiled` for the parameters.
    """
    plan = plan_tiles(image.shape[-2:], tile, overlap=overlap, margin=margin, align=align)
    gen = iter_tiled(image, predictor, plan, batch_size=batch_size, blend=blend, device=device)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value
