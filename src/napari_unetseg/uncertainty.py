"""Where to paint next: per-pixel uncertainty of a model, and slices ranked by it.

Three measures, computed tile by tile with the inference engine's tiling
(:mod:`napari_unetseg.predictor`, :mod:`napari_unetseg.tiling`) in one pass:

``"entropy"``
    Predictive entropy of the class probabilities, ``-sum_c p_c log p_c / log K`` (0: sure,
    1: uniform). Free: one forward pass.
``"tta"``
    Disagreement of flip test-time augmentation: the variance over the four flips (none,
    horizontal, vertical, both; flipped back) of the class probabilities, summed over the
    classes and scaled to [0, 1] by its largest value ``1 - 1/K``. Four forward passes.
``"heads"``
    Disagreement of the UNet++ deep-supervision heads X(0,1..depth) (Zhou et al. 2018): the
    same variance over the heads' probabilities. UNet++ only (one forward pass computes every
    head).
``"ridges"``
    Unsure cell boundaries (:mod:`napari_unetseg.ridges`): the faint lines of the boundary
    class's map (gaps in membranes, organelle rims), where the cells Segment makes are decided.
    Computed from the plain pass's probabilities, over the whole stack, after its tiles.

:func:`uncertainty` is a generator (progress per batch of tiles) returning an
:class:`UncertaintyResult`; :func:`uncertainty_maps` drains it. :func:`rank_slices` orders
slices by their mean uncertainty, worst first; :func:`visit_order` turns that ranking into the
order in which to paint them (slices not painted yet first, each pass keeping its slices
:data:`SPREAD` apart, as ``benchmarks/where_to_paint.py`` measured it). Which measure points at
the model's errors, and whether strokes placed by it beat random ones, is measured by that
benchmark (see ``docs/performance.md``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .devices import drain, resolve_device
from .inference import ProgressEvent, _layout, _read_slice, _slice_indices
from .predictor import inference_network, tile_geometry
from .tiling import iter_tiled, plan_tiles

__all__ = ["METHODS", "SPREAD", "TILE_METHODS", "UncertaintyResult", "rank_slices", "uncertainty",
           "uncertainty_maps", "visit_order"]

#: Measures computed tile by tile from the network's outputs.
TILE_METHODS = ("entropy", "tta", "heads")
METHODS = (*TILE_METHODS, "ridges")
#: Least distance between the slices one pass of :func:`visit_order` proposes: neighbouring
#: EM sections look alike, so strokes on two neighbours teach little more than on one.
SPREAD = 3
_FLIPS = ((), (-1,), (-2,), (-2, -1))


@dataclass(frozen=True)
class UncertaintyResult:
    """Uncertainty maps and the mean prediction.

    Attributes
    ----------
    maps : dict of str to np.ndarray
        Method -> ``(Z, Y, X)`` float32 in [0, 1] (``(Y, X)`` for a 2D image).
    probabilities : np.ndarray
        ``(Z, K, Y, X)`` float32 class probabilities of the plain forward pass.
    slices : tuple of int
        The z index of each map plane.
    seconds : float
    """

    maps: dict[str, np.ndarray]
    probabilities: np.ndarray
    slices: tuple[int, ...]
    seconds: float


def _check_methods(methods: Iterable[str], model: Any) -> tuple[str, ...]:
    methods = tuple(methods)
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ValueError(f"methods must be a non-empty subset of {METHODS}, got {methods}")
    cfg = getattr(model, "config", None)
    if "heads" in methods and (getattr(model, "num_levels", 1) < 2
                               or not getattr(cfg, "deep_supervision", False)):
        raise ValueError("'heads' needs a UNet++ trained with deep supervision (several "
                         "heads); use 'entropy' or 'tta' for this model")
    if "ridges" in methods and getattr(cfg, "classes", 2) < 2:
        raise ValueError("'ridges' needs a model with two classes or more (a boundary class "
                         "and the rest)")
    return methods


def _spread(probs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Variance over samples of the class probabilities, summed over classes, in [0, 1]."""
    stack = torch.stack(list(probs))
    k = stack.shape[2]
    return stack.var(0, unbiased=False).sum(1) / (1.0 - 1.0 / k)


def _predictor(net: torch.nn.Module, methods: tuple[str, ...], channels_last: bool):
    """Tile batch -> ``(B, K + len(methods), H, W)``: probabilities, then one map per method
    (:data:`TILE_METHODS` only)."""
    heads = "heads" in methods

    def forward(x: torch.Tensor) -> list[torch.Tensor]:
        """Softmax of each head (UNet++ with 'heads'), else of the single output."""
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = net(x, level="all") if heads else net(x)
        outs = out if isinstance(out, list) else [out]
        return [torch.softmax(o.float(), dim=1) for o in outs]

    def predictor(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            heads_p = forward(x)
            p = torch.stack(heads_p).mean(0) if heads else heads_p[0]
            maps = []
            for m in methods:
                if m == "entropy":
                    ent = -(p * torch.log(p.clamp_min(1e-12))).sum(1)
                    maps.append(ent / math.log(p.shape[1]))
                elif m == "heads":
                    maps.append(_spread(heads_p))
                else:
                    flips = [p] + [torch.stack(forward(x.flip(d))).mean(0).flip(d)
                                   for d in _FLIPS[1:]]
                    maps.append(_spread(flips))
            return torch.cat([p, *([torch.stack(maps, 1).clamp(0, 1)] if maps else [])], 1)

    return predictor


def uncertainty(
    model: torch.nn.Module,
    image: Any,
    *,
    normalization: Any,
    methods: Iterable[str] = ("entropy",),
    device: str = "cpu",
    tile: int | str = "auto",
    slices: Iterable[int] | None = None,
    batch_size: int = 4,
) -> Generator[ProgressEvent, None, UncertaintyResult]:
    """Per-pixel uncertainty of ``model`` on ``image``, slice by slice, tile by tile.

    Parameters
    ----------
    model : torch.nn.Module
        A network of :func:`napari_unetseg.models.build_model` (left untouched: an eval copy
        with BatchNorm folded runs).
    image : array-like
        ``(Y, X)`` or ``(Z, Y, X)``, one channel.
    normalization : Normalization
        The model's intensity normalisation.
    methods : iterable of {"entropy", "tta", "heads", "ridges"}
    device : str
    tile : int or "auto"
        Largest input tile (as :class:`~napari_unetseg.inference.InferenceConfig`).
    slices : iterable of int, optional
        Only these z indices.
    batch_size : int
        Tiles per forward pass.

    Returns
    -------
    generator
        Yields :class:`~napari_unetseg.inference.ProgressEvent` s and returns an
        :class:`UncertaintyResult`.

    Raises
    ------
    ValueError, TypeError
        Bad methods ('heads' without UNet++ heads), image or slices, at the call (before
        any work).
    """
    methods = _check_methods(methods, model)
    lay = _layout(image, None)
    if lay.channels != 1:
        raise ValueError(f"image must have one channel, got {lay.channels}")
    indices = _slice_indices(lay, slices)
    dev = resolve_device(device)
    geo = tile_geometry(model, model.config, lay.shape, dev, tile=tile, halo=0,
                        overlap="auto")
    plan = plan_tiles(lay.shape, geo.tile, overlap=geo.overlap, margin=geo.margin,
                      align=geo.align)
    return _run(model, image, normalization, methods, lay, indices, dev, plan, batch_size)


def _run(model, image, normalization, methods, lay, indices, dev, plan, batch_size
         ) -> Generator[ProgressEvent, None, UncertaintyResult]:
    t0 = time.perf_counter()
    net = inference_network(model, dev)
    tiled = tuple(m for m in methods if m in TILE_METHODS)
    fn = _predictor(net, tiled, dev.type in ("cpu", "cuda"))
    k = model.config.classes
    probs = np.zeros((len(indices), k, *lay.shape), np.float32)
    maps = np.zeros((len(tiled), len(indices), *lay.shape), np.float32)
    ridges = "ridges" in methods
    tiles = plan.n_tiles * len(indices)
    total = tiles + (len(indices) if ridges else 0)  # the ridges: one step per slice
    for i, z in enumerate(indices):
        raw = np.asarray(normalization(_read_slice(image, lay, z)), np.float32)
        gen = iter_tiled(raw, fn, plan, batch_size=batch_size, device=dev)
        while True:
            try:
                done, _ = next(gen)
            except StopIteration as stop:
                out = stop.value.cpu().numpy()
                break
            yield ProgressEvent(i * plan.n_tiles + done, total, z, f"slice {z}: tile {done}")
        probs[i], maps[:, i] = out[:k], out[k:]
    result = dict(zip(tiled, maps, strict=True))
    if ridges:  # one stretch for the stack, then slice by slice (progress, cancel)
        from .postprocess import stretch_span
        from .ridges import boundary_class, ridge_map

        boundary = probs[:, boundary_class(probs)]
        span = stretch_span(boundary) or (0.0, 1.0)
        result["ridges"] = np.zeros_like(boundary)
        for i, z in enumerate(indices):
            result["ridges"][i] = ridge_map(boundary[i], span=span)
            yield ProgressEvent(tiles + i + 1, total, z, f"slice {z}: unsure cell boundaries")
    flat = lay.z_axis is None
    result = {m: result[m][0] if flat else result[m] for m in methods}
    return UncertaintyResult(result, probs, tuple(indices), time.perf_counter() - t0)


def uncertainty_maps(model: torch.nn.Module, image: Any, **kwargs: Any) -> UncertaintyResult:
    """:func:`uncertainty` run to the end (same arguments)."""
    return drain(uncertainty(model, image, **kwargs))


def rank_slices(maps: np.ndarray, slices: Sequence[int] | None = None) -> list[tuple[int, float]]:
    """``(z, mean uncertainty)`` of every slice of a ``(Z, Y, X)`` map, most uncertain first
    (``slices`` names the planes; default ``0..Z-1``)."""
    arr = np.asarray(maps)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"maps must be (Y, X) or (Z, Y, X), got shape {arr.shape}")
    names = list(range(len(arr))) if slices is None else [int(z) for z in slices]
    if len(names) != len(arr):
        raise ValueError(f"{len(names)} slice indices for {len(arr)} planes")
    means = arr.reshape(len(arr), -1).mean(1)
    order = sorted(range(len(arr)), key=lambda i: (-means[i], names[i]))
    return [(names[i], float(means[i])) for i in order]


def visit_order(ranked: Sequence[tuple[int, float]], spread: int = SPREAD,
                painted: Iterable[int] = ()) -> list[int]:
    """The slices of ``ranked`` (:func:`rank_slices`) in the order to paint them.

    Slices not in ``painted`` come first, then the painted ones. Within each group the order
    is made in passes: a pass walks the ranking (most uncertain first) and takes each slice at
    least ``spread`` from every slice it took already; the next pass does the same with the
    slices left, until none is. ``spread <= 1`` keeps the ranking's order.
    """
    if spread < 0:
        raise ValueError(f"spread must be >= 0, got {spread}")
    done = {int(z) for z in painted}
    out: list[int] = []
    for group in ([z for z, _ in ranked if z not in done], [z for z, _ in ranked if z in done]):
        left = list(group)
        while left:
            took: list[int] = []
            for z in left:
                if all(abs(z - o) >= spread for o in took):
                    took.append(z)
            out += took
            taken = set(took)
            left = [z for z in left if z not in taken]
    return out
