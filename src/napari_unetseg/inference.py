"""Tiled inference of a segmentation network over a 2D image or a stack, slice by slice.

:func:`segment` is a generator: it yields a :class:`ProgressEvent` after every batch of tiles
and returns a :class:`SegmentResult`, so a GUI can show progress and stop between batches
(closing the generator stops it; nothing partial is returned). :func:`predict` drains it.
Only one slice of the input is in memory at a time (``np.asarray(image[z])``), so numpy, dask
and zarr stacks work alike, and results can be written into caller-provided ``out`` arrays.
The tiling itself is :mod:`napari_unetseg.tiling` (overlap-tile, Ronneberger et al. 2015).
"""

from __future__ import annotations

import numbers
import re
import time
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .config import ModelConfig
from .devices import available_devices, drain, resolve_device
from .postprocess import instances_from_probs
from .tiling import BLENDS, TilePlan, iter_tiled, plan_tiles

__all__ = [
    "InferenceConfig",
    "ProgressEvent",
    "SegmentResult",
    "available_devices",
    "drain",
    "instances_from_probs",
    "predict",
    "resolve_device",
    "segment",
]

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")
_AMPS = ("auto", "off", "bf16", "fp16")
_DTYPES = ("float32", "float16")
_CPU_BATCH, _MAX_BATCH = 1, 64  # CPU: batching tiles only adds memory traffic


@dataclass(frozen=True)
class InferenceConfig:
    """How to run a model over an image.

    Parameters
    ----------
    tile : int
        Input tile side fed to the network (>= 8). For ``same`` models it is rounded down to
        a multiple of ``2**depth``; for ``valid`` models it is raised to a valid input size.
        Images smaller than a tile are mirror-padded up to one (smaller) tile.
    overlap : float
        Overlap of neighbouring output tiles, a fraction of the output tile in ``[0, 1)``.
        ``valid`` models give the same result for any overlap (0 is fastest).
    batch_size : int or "auto"
        Tiles per forward pass; "auto" sizes it from free CUDA memory (4 on CPU/MPS).
        On CUDA out-of-memory the batch is halved and the batch retried.
    device : str
        "auto" (cuda > mps > cpu), "cpu", "cuda", "cuda:N" or "mps".
    tta : bool
        Flip test-time augmentation: mean of identity, h-flip, v-flip and both, flipped back.
    level : int, "accurate" or None
        UNet++ output (Zhou et al. 2018): a pruned level ``1..depth`` or the mean of all heads
        ("accurate", the default for UNet++ when None). Must be None for other networks.
    dtype : {"float32", "float16"}
        dtype of the returned probabilities.
    amp : {"auto", "off", "bf16", "fp16"}
        Autocast on CUDA; "auto" is bf16 where the GPU supports it, else off (always off on
        CPU/MPS).
    blend : {"cosine", "linear", "gaussian", "constant"}
        Window for blending overlapping tiles (see :func:`napari_unetseg.tiling.blend_window`).
    """

    tile: int = 256
    overlap: float = 0.125
    batch_size: int | str = "auto"
    device: str = "auto"
    tta: bool = False
    level: int | str | None = None
    dtype: str = "float32"
    amp: str = "auto"
    blend: str = "cosine"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError/TypeError naming the bad field and what is allowed."""
        if isinstance(self.tile, bool) or not isinstance(self.tile, numbers.Integral):
            raise TypeError(f"tile must be an int, got {self.tile!r}")
        if self.tile < 8:
            raise ValueError(f"tile must be >= 8, got {self.tile}")
        if isinstance(self.overlap, bool) or not isinstance(self.overlap, numbers.Real):
            raise TypeError(f"overlap must be a fraction (float), got {self.overlap!r}")
        if not 0 <= self.overlap < 1:
            raise ValueError(f"overlap must be a fraction in [0, 1), got {self.overlap}")
        b = self.batch_size
        if b != "auto" and (isinstance(b, bool) or not isinstance(b, numbers.Integral) or b < 1):
            raise ValueError(f"batch_size must be 'auto' or an int >= 1, got {b!r}")
        if not isinstance(self.device, str) or not _DEVICE_RE.match(self.device):
            raise ValueError(
                f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'; got {self.device!r}"
            )
        if not isinstance(self.tta, bool):
            raise TypeError(f"tta must be a bool, got {self.tta!r}")
        lv = self.level
        if lv not in (None, "accurate") and (
            isinstance(lv, bool) or not isinstance(lv, numbers.Integral) or lv < 1
        ):
            raise ValueError(f"level must be None, 'accurate' or an int >= 1; got {lv!r}")
        for name, value, choices in (
            ("dtype", self.dtype, _DTYPES),
            ("amp", self.amp, _AMPS),
            ("blend", self.blend, BLENDS),
        ):
            if value not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


@dataclass(frozen=True)
class ProgressEvent:
    """Progress of :func:`segment`: ``done`` of ``total`` tiles (over all slices)."""

    done: int
    total: int
    slice_index: int
    message: str


@dataclass(frozen=True)
class SegmentResult:
    """Probabilities ``(Z, K, Y, X)`` (``(K, Y, X)`` for 2D; None if not kept), labels
    ``(Z, Y, X)`` / ``(Y, X)`` (argmax class, uint8 or uint16) and the wall time."""

    probabilities: Any
    labels: Any
    seconds: float


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if device.type != "cuda":
        raise ValueError(f"amp={amp!r} needs a CUDA device, got {device}; use 'auto' or 'off'")
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if amp == "bf16" else torch.float16


@dataclass(frozen=True)
class _Layout:
    z_axis: int | None
    c_axis: int | None  # channel axis of a slice once z is taken out
    n_z: int
    channels: int
    shape: tuple[int, int]


def _layout(image: Any, channel_axis: int | None) -> _Layout:
    if not hasattr(image, "shape") or not hasattr(image, "__getitem__"):
        raise TypeError(f"image must be an array (numpy, dask, zarr), got {type(image).__name__}")
    shape, ndim = tuple(int(s) for s in image.shape), len(image.shape)
    if np.dtype(image.dtype).kind not in "biuf":
        raise TypeError(f"image must be numeric (bool/int/float), got dtype {image.dtype}")
    c = channel_axis
    if c is not None:
        if isinstance(c, bool) or not isinstance(c, numbers.Integral) or not -ndim <= c < ndim:
            raise ValueError(f"channel_axis must be an int in [-{ndim}, {ndim}), got {c!r}")
        c = int(c) % ndim
    spatial = [a for a in range(ndim) if a != c]
    if len(spatial) not in (2, 3):
        raise ValueError(
            f"image must be (Y, X) or (Z, Y, X) plus an optional channel axis; got shape "
            f"{shape} with channel_axis={channel_axis}"
        )
    if 0 in shape:
        raise ValueError(f"image is empty: shape {shape}")
    z = spatial[0] if len(spatial) == 3 else None
    c_slice = None if c is None else (c - (z is not None and c > z))
    n_z = 1 if z is None else shape[z]
    chans = 1 if c is None else shape[c]
    return _Layout(z, c_slice, n_z, chans, (shape[spatial[-2]], shape[spatial[-1]]))


def _read_slice(image: Any, lay: _Layout, z: int, normalization: Callable) -> np.ndarray:
    """Slice ``z`` as normalised float32 ``(C, Y, X)``; only this slice is loaded."""
    if lay.z_axis is None:
        arr = np.asarray(image)
    else:
        idx: list[Any] = [slice(None)] * len(image.shape)
        idx[lay.z_axis] = z
        arr = np.asarray(image[tuple(idx)])
    arr = arr[None] if lay.c_axis is None else np.moveaxis(arr, lay.c_axis, 0)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ValueError(f"slice {z} contains NaN or infinite pixels; expected finite values")
    return np.asarray(normalization(arr), dtype=np.float32)


def _slice_indices(lay: _Layout, slices: Iterable[int] | None) -> list[int]:
    if lay.z_axis is None:
        if slices is not None:
            raise ValueError("slices can only be given for a (Z, Y, X) stack; image is 2D")
        return [0]
    if slices is None:
        return list(range(lay.n_z))
    idx = list(slices)
    if not idx:
        raise ValueError("slices is empty; give at least one slice index or None for all")
    for z in idx:
        if (
            isinstance(z, bool)
            or not isinstance(z, numbers.Integral)
            or not -lay.n_z <= z < lay.n_z
        ):
            raise ValueError(f"slice index {z!r} out of range for a stack of {lay.n_z} slices")
    return [int(z) % lay.n_z for z in idx]


def _model_config(model: Any) -> ModelConfig:
    cfg = getattr(model, "config", None)
    if not isinstance(model, torch.nn.Module) or not isinstance(cfg, ModelConfig):
        raise TypeError(
            f"model must be a torch.nn.Module with a ModelConfig as .config (see build_model); "
            f"got {type(model).__name__}"
        )
    return cfg


def _resolve_level(cfg: ModelConfig, level: int | str | None) -> int | str | None:
    if cfg.arch != "unetpp":
        if level is not None:
            raise ValueError(f"level is only for UNet++ (arch='unetpp'); model is {cfg.arch!r}")
        return None
    if level is None:
        return "accurate"
    if level != "accurate" and not 1 <= int(level) <= cfg.depth:
        raise ValueError(f"level must be 'accurate' or in 1..{cfg.depth}, got {level!r}")
    return level


def _tile_geometry(model: Any, cfg: ModelConfig, tile: int, shape: tuple[int, int]) -> tuple:
    """Input tile per axis, margin and alignment (``2**depth``) for this model and image."""
    align, margin = 2**cfg.depth, int(getattr(model, "margin", 0))
    if margin == 0:
        base = max(align, tile // align * align)
        sizes = tuple(min(base, -(-n // align) * align) for n in shape)
    else:
        sizes = tuple(
            int(model.valid_input_size(max(min(tile, n + 2 * margin), 2 * margin + align)))
            for n in shape
        )
    return sizes, margin, align


def _make_predictor(model: Any, level: Any, tta: bool, amp: torch.dtype | None, binary: bool):
    """Tile batch -> class probabilities (softmax; sigmoid for one class), fp32."""

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=amp, enabled=amp is not None):
            y = model(x) if level is None else model(x, level=level)
        y = y.float()
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


class _Chunked:
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


def _auto_batch(fn: Callable, channels: int, tile: tuple, device: torch.device, n: int) -> int:
    """Tiles per batch: half the free CUDA memory over a measured one-tile peak."""
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


def _outputs(out: Any, shapes: tuple, dtypes: tuple, keep: bool) -> list[Any]:
    given = (None, None) if out is None else out
    if not isinstance(given, (tuple, list)) or len(given) != 2:
        raise TypeError(f"out must be a (probabilities, labels) pair of arrays, got {out!r}")
    arrays = []
    for name, arr, shape, dtype, want in zip(
        ("probabilities", "labels"), given, shapes, dtypes, (keep, True), strict=True
    ):
        if arr is not None and tuple(arr.shape) != shape:
            raise ValueError(f"out {name} must have shape {shape}, got {tuple(arr.shape)}")
        arrays.append(arr if arr is not None or not want else np.empty(shape, dtype))
    return arrays


def _finish(stitched: torch.Tensor, dtype: str, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities in the wanted dtype and argmax labels, copied to the host."""
    if classes == 1:
        labels = stitched[0] >= 0.5
    elif classes == 2:  # a comparison is ~20x cheaper than argmax over a 2-plane axis on CPU
        labels = stitched[1] > stitched[0]
    else:
        labels = stitched.argmax(0)
    labels = labels.to(torch.uint8 if classes <= 256 else torch.int32).cpu().numpy()
    probs = stitched.to(torch.float16 if dtype == "float16" else torch.float32).cpu().numpy()
    return probs, labels.astype(np.uint8 if classes <= 256 else np.uint16, copy=False)


@dataclass(frozen=True)
class _Job:
    config: InferenceConfig
    lay: _Layout
    indices: list[int]
    classes: int
    level: int | str | None
    device: torch.device
    amp: torch.dtype | None
    plan: TilePlan


def _prepare(model: Any, image: Any, config: Any, channel_axis: Any, slices: Any) -> _Job:
    """Check the inputs against each other and plan the tiles (raises before any work)."""
    config = InferenceConfig() if config is None else config
    if not isinstance(config, InferenceConfig):
        raise TypeError(f"config must be an InferenceConfig, got {type(config).__name__}")
    lay, cfg = _layout(image, channel_axis), _model_config(model)
    indices = _slice_indices(lay, slices)
    if lay.channels != cfg.in_channels:
        raise ValueError(
            f"image has {lay.channels} channel(s) (channel_axis={channel_axis}) but the model "
            f"expects in_channels={cfg.in_channels}"
        )
    level = _resolve_level(cfg, config.level)
    device = resolve_device(config.device)
    amp = _amp_dtype(config.amp, device)
    tile, margin, align = _tile_geometry(model, cfg, config.tile, lay.shape)
    plan = plan_tiles(lay.shape, tile, overlap=config.overlap, margin=margin, align=align)
    return _Job(config, lay, indices, cfg.classes, level, device, amp, plan)


def _run_slice(
    arr: np.ndarray, job: _Job, fn: Callable, batch: int, i: int
) -> Generator[ProgressEvent, None, torch.Tensor]:
    """Tile one normalised slice; relay the tiler's progress as :class:`ProgressEvent`."""
    gen = iter_tiled(
        arr, fn, job.plan, batch_size=batch, blend=job.config.blend, device=job.device
    )
    n_tiles, z = job.plan.n_tiles, job.indices[i]
    total = len(job.indices) * n_tiles
    while True:
        try:
            done, _ = next(gen)
        except StopIteration as stop:
            return stop.value
        msg = f"slice {z} ({i + 1}/{len(job.indices)}): tile {done}/{n_tiles}"
        yield ProgressEvent(i * n_tiles + done, total, z, msg)


def segment(
    model: torch.nn.Module,
    image: Any,
    *,
    normalization: Callable[[np.ndarray], np.ndarray],
    config: InferenceConfig | None = None,
    channel_axis: int | None = None,
    slices: Iterable[int] | None = None,
    out: tuple[Any, Any] | None = None,
    return_probabilities: bool = True,
) -> Generator[ProgressEvent, None, SegmentResult]:
    """Segment a 2D image or a stack slice by slice with overlap-tile inference.

    Parameters
    ----------
    model : torch.nn.Module
        A network from :func:`napari_unetseg.models.build_model` (needs ``.config``). It is
        moved to the device and run in eval mode; its train/eval mode is restored after.
    image : array-like
        ``(Y, X)`` or ``(Z, Y, X)`` (plus ``channel_axis``): numpy, dask or zarr.
    normalization : Normalization
        Applied to every slice (``normalization(slice) -> float32``).
    config : InferenceConfig, optional
    channel_axis : int, optional
        Axis of ``image`` holding the channels (must match ``model.config.in_channels``).
    slices : iterable of int, optional
        Only these z indices, in this order (result index ``i`` is ``slices[i]``).
    out : (probabilities, labels), optional
        Arrays (e.g. zarr) to write into instead of allocating; either may be None. A slice
        is written only when it is complete.
    return_probabilities : bool
        If False (and no probabilities array is given) only labels are kept.

    Yields
    ------
    ProgressEvent
        After every batch of tiles.

    Returns
    -------
    SegmentResult
    """
    t0 = time.perf_counter()
    job = _prepare(model, image, config, channel_axis, slices)
    if not callable(normalization):
        raise TypeError(f"normalization must be a Normalization, got {normalization!r}")
    lead = (len(job.indices),) if job.lay.z_axis is not None else ()
    k, shape = job.classes, job.lay.shape
    probs_out, labels_out = _outputs(
        out,
        ((*lead, k, *shape), (*lead, *shape)),
        (np.dtype(job.config.dtype), np.uint8 if k <= 256 else np.uint16),
        return_probabilities,
    )
    was_training = model.training
    model.to(job.device).eval()
    try:
        fn = _make_predictor(model, job.level, job.config.tta, job.amp, k == 1)
        batch = job.config.batch_size
        if batch == "auto":
            batch = _auto_batch(fn, job.lay.channels, job.plan.tile, job.device, job.plan.n_tiles)
        chunked = _Chunked(fn, int(batch))
        for i, z in enumerate(job.indices):
            arr = _read_slice(image, job.lay, z, normalization)
            stitched = yield from _run_slice(arr, job, chunked, int(batch), i)
            probs, labels = _finish(stitched, job.config.dtype, k)
            at = i if lead else Ellipsis
            if probs_out is not None:
                probs_out[at] = probs
            labels_out[at] = labels
    finally:
        model.train(was_training)
    return SegmentResult(probs_out, labels_out, time.perf_counter() - t0)


def predict(model: torch.nn.Module, image: Any, **kwargs: Any) -> SegmentResult:
    """:func:`segment` run to the end (same arguments); returns the :class:`SegmentResult`."""
    return drain(segment(model, image, **kwargs))
