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
from .normalize import Normalization
from .postprocess import instances_from_probs
from .predictor import (
    Chunked,
    amp_dtype,
    auto_batch,
    check_auto,
    inference_network,
    make_predictor,
    tile_geometry,
)
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


@dataclass(frozen=True)
class InferenceConfig:
    """How to run a model over an image.

    Parameters
    ----------
    tile : int or "auto"
        Largest input tile side fed to the network (>= 8); "auto": 1024 on CUDA, 768
        elsewhere (large tiles make the halo cheap). For ``same`` models tiles are balanced:
        each axis gets the fewest tiles of at most this size that cover it, each as small as
        that allows, on the ``2**depth`` pooling grid (a 512-pixel slice is one 672-pixel
        tile). For
        ``valid`` models it is raised to a valid input size. Images smaller than a tile are
        mirror-padded up to one tile.
    halo : int or "auto"
        Context pixels per tile side that are computed and thrown away, U-Net's overlap-tile
        (Ronneberger et al. 2015): output tiles abut and every output pixel has at least
        this much real (or mirrored) image around it. "auto": ``5 * 2**depth`` px on every
        device (80 at depth 4, most of a U-Net's 92-px receptive-field radius), enough that
        the tile size does not change the labels (seamless: >= 99.99 % of the labels equal
        at tile 256 and 512 on ISBI 2012); always 0 for ``valid`` models, whose exact margin
        is discarded anyway. Rounded up to the pooling grid. 0 with an ``overlap`` is the
        faster, blended alternative, which is not seamless.
    overlap : float or "auto"
        Overlap of neighbouring output tiles, a fraction of the output tile in ``[0, 1)``,
        blended with ``blend``; "auto": 0 with a halo (none is needed), else 0.125.
        ``valid`` models give the same result for any overlap (0 is fastest).
    batch_size : int or "auto"
        Tiles per forward pass; "auto" sizes it from free CUDA memory (1 on CPU/MPS).
        Tiles of several slices share a batch when a slice has fewer tiles than that.
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

    tile: int | str = "auto"
    overlap: float | str = "auto"
    batch_size: int | str = "auto"
    device: str = "auto"
    tta: bool = False
    level: int | str | None = None
    dtype: str = "float32"
    amp: str = "auto"
    blend: str = "cosine"
    halo: int | str = "auto"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError/TypeError naming the bad field and what is allowed."""
        for name in ("tile", "halo", "overlap"):
            check_auto(name, getattr(self, name), name)
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


def _read_slice(image: Any, lay: _Layout, z: int) -> np.ndarray:
    """Slice ``z`` as ``(C, Y, X)`` in its own dtype; only this slice is loaded."""
    if lay.z_axis is None:
        arr = np.asarray(image)
    else:
        idx: list[Any] = [slice(None)] * len(image.shape)
        idx[lay.z_axis] = z
        arr = np.asarray(image[tuple(idx)])
    return arr[None] if lay.c_axis is None else np.moveaxis(arr, lay.c_axis, 0)


def check_slice(raw: np.ndarray, normalization: Callable, z: int) -> np.ndarray | None:
    """Refuse slice ``z`` if it holds NaN or infinite pixels, or values that overflow float32
    once normalised; returns it normalised on the host when ``normalization`` is not a
    :class:`Normalization` (a plain callable), else None."""
    where = f"slice {z}"
    if type(normalization) is Normalization:
        if raw.dtype.kind == "f" or raw.dtype.kind in "iu" and _may_overflow(normalization,
                                                                            raw.dtype):
            normalization.check_range(float(raw.min()), float(raw.max()), where)
        return None
    if raw.dtype.kind == "f" and not np.isfinite(raw).all():
        raise ValueError(f"{where} contains NaN or infinite pixels; expected finite values")
    out = np.asarray(normalization(raw), dtype=np.float32)
    if not np.isfinite(out).all():
        raise ValueError(f"{where}: the normalisation gives NaN or infinite values")
    return out


def _may_overflow(normalization: Normalization, dtype: np.dtype) -> bool:
    info = np.iinfo(dtype)
    try:
        normalization.check_range(float(info.min), float(info.max))
    except ValueError:
        return True
    return False


def finite_per_slice(stitched: torch.Tensor) -> torch.Tensor:
    """Per slice of ``(N, K, Y, X)`` network output: whether it is all finite (on its device,
    so CUDA need not wait; read it with the results)."""
    return torch.isfinite(stitched).flatten(1).all(1)


def refuse_nonfinite(ok: np.ndarray, indices: list[int]) -> None:
    bad = [z for z, good in zip(indices, ok.tolist(), strict=True) if not good]
    if bad:
        raise ValueError(
            f"the model gave NaN or infinite values on slice {bad[0]}: its weights or its "
            "normalisation are out of range for this image (a damaged or foreign model file?)")


# dtypes that cross to the device as they are and are normalised there
_DEVICE_DTYPES = frozenset(np.dtype(t) for t in ("uint8", "int8", "int16", "int32", "float32"))


def _device_normalizer(normalization: Callable, dtype: np.dtype) -> Callable | None:
    """Normalisation on the device for a :class:`Normalization` (an affine map, computed in
    float32 as on the host), so the image crosses to the GPU in its own dtype (one byte
    per pixel for uint8); None: normalise on the host."""
    if type(normalization) is not Normalization or np.dtype(dtype) not in _DEVICE_DTYPES:
        return None
    offset, scale = (float(v) for v in normalization.affine())
    return lambda t: (t.float() - offset) * scale  # out of place: t may share the caller's array


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
    if not cfg.deep_supervision and level not in ("accurate", cfg.depth):
        raise ValueError(f"level {level!r}: this UNet++ was trained without deep supervision, "
                         f"so only its level-{cfg.depth} head is trained; use level "
                         f"{cfg.depth} or 'accurate'")
    return level


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


def _labels(stitched: torch.Tensor, classes: int) -> torch.Tensor:
    """Argmax classes of ``(N, K, Y, X)`` probabilities, on their device."""
    if classes == 1:
        labels = stitched[:, 0] >= 0.5
    elif classes == 2:  # a comparison is ~20x cheaper than argmax over a 2-plane axis on CPU
        labels = stitched[:, 1] > stitched[:, 0]
    else:
        labels = stitched.argmax(1)
    return labels.to(torch.uint8 if classes <= 256 else torch.int32)


class _ToHost:
    """Device tensors on their way to host memory: on CUDA an asynchronous copy into pinned
    memory, so the GPU goes on with the next slices while the host writes these out."""

    def __init__(self, tensors: list[torch.Tensor | None]) -> None:
        self.event = None
        cuda = [t for t in tensors if t is not None and t.is_cuda]
        if cuda:
            pinned = [
                None if t is None else torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                for t in tensors
            ]
            for buf, t in zip(pinned, tensors, strict=True):
                if t is not None:
                    buf.copy_(t, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
            tensors = pinned
        self.tensors = tensors

    def numpy(self) -> list[np.ndarray | None]:
        if self.event is not None:
            self.event.synchronize()
        return [None if t is None else t.cpu().numpy() for t in self.tensors]


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
    halo: int


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
    amp = amp_dtype(config.amp, device)
    geo = tile_geometry(model, cfg, lay.shape, device, tile=config.tile, halo=config.halo,
                        overlap=config.overlap)  # fmt: skip
    plan = plan_tiles(lay.shape, geo.tile, overlap=geo.overlap, margin=geo.margin, align=geo.align)
    return _Job(config, lay, indices, cfg.classes, level, device, amp, plan, geo.halo)


def _run_group(
    arr: np.ndarray, job: _Job, fn: Callable, batch: int, first: int, prepare: Any
) -> Generator[ProgressEvent, None, torch.Tensor]:
    """Tile slices ``first, first + 1, ...`` (``arr`` is ``(N, C, Y, X)``) in shared batches;
    relay the tiler's progress as :class:`ProgressEvent`."""
    gen = iter_tiled(
        arr, fn, job.plan, batch_size=batch, blend=job.config.blend, device=job.device,
        prepare=prepare,
    )  # fmt: skip
    n_tiles, n = job.plan.n_tiles, len(job.indices)
    while True:
        try:
            done, _ = next(gen)
        except StopIteration as stop:
            return stop.value
        i = first + (done - 1) // n_tiles  # the slice the last tile of this batch belongs to
        msg = f"slice {job.indices[i]} ({i + 1}/{n}): tile {(done - 1) % n_tiles + 1}/{n_tiles}"
        yield ProgressEvent(first * n_tiles + done, n * n_tiles, job.indices[i], msg)


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
        moved to the device; inference runs an eval-mode copy of it with BatchNorm folded
        into the convolutions, so its mode and weights are untouched.
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
    label_dtype = np.uint8 if k <= 256 else np.uint16
    probs_out, labels_out = _outputs(
        out,
        ((*lead, k, *shape), (*lead, *shape)),
        (np.dtype(job.config.dtype), label_dtype),
        return_probabilities,
    )
    model.to(job.device)
    net = inference_network(model, job.device)  # BatchNorm folded: a copy, model untouched
    fn = make_predictor(net, job.level, job.config.tta, job.amp, k == 1, crop=job.halo,
                        activate=not getattr(model, "returns_probabilities", False))
    n_tiles = job.plan.n_tiles
    batch = job.config.batch_size
    if batch == "auto":
        batch = auto_batch(fn, job.lay.channels, job.plan.tile, job.device,
                           n_tiles * len(job.indices))  # fmt: skip
    batch = int(batch)
    chunked = Chunked(fn, batch)
    per = max(1, batch // n_tiles)  # slices per pass: small slices share a batch
    prob_dtype = torch.float16 if job.config.dtype == "float16" else torch.float32
    pending: tuple[int, _ToHost] | None = None

    def write(first: int, copy: _ToHost) -> None:
        labels, probs, ok = copy.numpy()
        refuse_nonfinite(ok, job.indices[first : first + len(labels)])
        for j in range(len(labels)):
            at = first + j if lead else Ellipsis
            if probs_out is not None:
                probs_out[at] = probs[j]
            labels_out[at] = labels[j].astype(label_dtype, copy=False)

    for first in range(0, len(job.indices), per):
        zs = job.indices[first : first + per]
        raws = [_read_slice(image, job.lay, z) for z in zs]
        host = [check_slice(r, normalization, z) for r, z in zip(raws, zs, strict=True)]
        prepare = _device_normalizer(normalization, raws[0].dtype)
        if prepare is None:
            raws = [h if h is not None else np.asarray(normalization(r), dtype=np.float32)
                    for h, r in zip(host, raws, strict=True)]
        stitched = yield from _run_group(np.stack(raws), job, chunked, batch, first, prepare)
        probs = stitched.to(prob_dtype) if probs_out is not None else None
        copy = _ToHost([_labels(stitched, k), probs, finite_per_slice(stitched)])
        if pending is not None:  # the previous group, copied while this one ran
            write(*pending)
        pending = (first, copy)
        if job.device.type != "cuda":
            write(*pending)
            pending = None
    if pending is not None:
        write(*pending)
    return SegmentResult(probs_out, labels_out, time.perf_counter() - t0)


def predict(model: torch.nn.Module, image: Any, **kwargs: Any) -> SegmentResult:
    """:func:`segment` run to the end (same arguments); returns the :class:`SegmentResult`."""
    return drain(segment(model, image, **kwargs))
