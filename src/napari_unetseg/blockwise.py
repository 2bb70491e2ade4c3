"""Blockwise segmentation of (Z, Y, X) volumes larger than memory, resumable, local or on a
``dask.distributed`` cluster.

The volume is cut into blocks (z-slab x Y-tile x X-tile) and every block is written to a zarr
group as soon as it is done: ``labels`` (Z, Y, X) and optionally ``probabilities``
(Z, K, Y, X) float16, chunked one block per chunk, plus ``done`` with one marker per block that
is set only *after* the block's data are written. A restart skips the marked blocks and redoes
any block whose write was interrupted, so an interruption never leaves a half-written block
counted as done. Memory is bounded by one block (plus its halo) per worker.

Each block is predicted with exactly the tiles that the in-memory overlap-tile inference
(:mod:`napari_unetseg.inference`, Ronneberger et al. 2015, Fig. 2) would use on the whole
slice, read from the input with their halo (up to one tile plus the model's margin beyond the
block, mirror-padded at the volume border as the tiler does) and blended with the same window,
so the result equals :func:`napari_unetseg.inference.predict` on the whole volume, without
seams between blocks. The ``dask.distributed`` variants are in :mod:`napari_unetseg.cluster`,
which builds on this module (this module never imports it).
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .devices import drain
from .files import SpecialFileError
from .inference import (
    InferenceConfig,
    _prepare,
    check_slice,
    finite_per_slice,
    refuse_nonfinite,
)
from .io import SavedModel, load_model
from .postprocess import class_lut
from .predictor import Chunked, auto_batch, inference_network, make_predictor
from .tiling import blend_window

__all__ = [
    "DEFAULT_BLOCK",
    "BlockEvent",
    "VolumeResult",
    "check_store",
    "load_counts",
    "predict_volume",
    "segment_volume",
]

#: Default block (z, y, x): two slices of 2048 x 2048 (about 100 MB of work memory on CPU).
DEFAULT_BLOCK = (2, 2048, 2048)
_FORMAT = "napari-unetseg-blockwise"


@dataclass(frozen=True)
class BlockEvent:
    """Progress of a volume run: ``done`` of ``total`` blocks; ``computed`` is False for a
    block skipped because an earlier run finished it; ``worker`` is the dask worker's address
    (``"local"`` in this process)."""

    done: int
    total: int
    block: tuple[int, int, int]
    computed: bool
    seconds: float
    message: str
    worker: str = "local"


@dataclass(frozen=True)
class VolumeResult:
    """Where the output went and what this run did (``computed`` + ``skipped`` blocks)."""

    store: str
    shape: tuple[int, int, int]
    block: tuple[int, int, int]
    halo: tuple[int, int]
    blocks: int
    computed: int
    skipped: int
    seconds: float


# ---------------------------------------------------------------------------- model cache

_MODELS: dict[tuple, SavedModel] = {}
_LOADS: Counter[str] = Counter()
_LOCK = threading.Lock()


def _worker_name() -> str:
    dist = sys.modules.get("distributed")  # only a worker has it imported already
    if dist is None:
        return "local"
    try:
        return str(dist.get_worker().address)
    except ValueError:
        return "local"


def _load(model: Any) -> SavedModel:
    """A :class:`SavedModel` as is, or a model file loaded once per worker (path + mtime)."""
    if isinstance(model, SavedModel):
        return model
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a model file path or a SavedModel, got {model!r}")
    path = Path(model).resolve()
    st = path.stat()
    owner = _worker_name()
    key = (owner, str(path), st.st_mtime_ns, st.st_size)
    with _LOCK:
        if key not in _MODELS:
            for old in [k for k in _MODELS if k[:2] == key[:2]] + list(_MODELS)[:-3]:
                _MODELS.pop(old, None)  # a stale version of this file, or beyond 4 models
            _MODELS[key] = load_model(path)
            _LOADS[owner] += 1
        return _MODELS[key]


def load_counts() -> dict[str, int]:
    """Model-file loads in this process per worker address (``"local"`` outside a worker)."""
    return dict(_LOADS)


def _fingerprint(saved: SavedModel, config: InferenceConfig, plan: Any) -> dict[str, Any]:
    """What decides the output: the network, its weights and normalisation, the inference
    settings and the tiling they resolve to (an "auto" tiling differs between devices)."""
    h = hashlib.sha256(saved.config.to_json().encode())
    for name, t in saved.model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    inf = {k: v for k, v in asdict(config).items() if k not in ("device", "batch_size")}
    inf["tiling"] = {"tile": list(plan.tile), "margin": plan.margin, "overlap": list(plan.overlap)}
    return {"weights": h.hexdigest(), "normalization": saved.normalization.to_dict(),
            "class_values": [int(v) for v in saved.class_values], "inference": inf}


# ---------------------------------------------------------------------------- geometry


def _open_input(source: Any) -> Any:
    if isinstance(source, (str, os.PathLike)):
        import zarr

        source = zarr.open_array(str(source), mode="r")
    if not all(hasattr(source, a) for a in ("shape", "dtype", "__getitem__")):
        raise TypeError(f"input must be a zarr path or an array-like, got {type(source).__name__}")
    if len(source.shape) != 3:
        raise ValueError(f"input must be a (Z, Y, X) volume, got shape {tuple(source.shape)}")
    return source


def _block_shape(block: Any, shape: tuple[int, ...]) -> tuple[int, int, int]:
    if (not isinstance(block, Sequence) or len(block) != 3 or not all(
            isinstance(b, (int, np.integer)) and not isinstance(b, bool) and b >= 1
            for b in block)):
        raise ValueError(f"block must be three ints >= 1 (z, y, x), got {block!r}")
    return tuple(min(int(b), int(n)) for b, n in zip(block, shape, strict=True))


def _grid(shape: tuple[int, ...], block: tuple[int, int, int]) -> tuple[int, int, int]:
    return tuple(-(-int(n) // b) for n, b in zip(shape, block, strict=True))


def _bounds(idx: tuple[int, ...], block: tuple[int, ...], shape: tuple[int, ...]) -> list:
    return [(i * b, min((i + 1) * b, int(n))) for i, b, n in zip(idx, block, shape, strict=True)]


class _Runner:
    """The model, tile plan and blend window of one volume; predicts one block at a time."""

    def __init__(self, saved: SavedModel, image: Any, config: InferenceConfig | None) -> None:
        self.config = InferenceConfig() if config is None else config
        self.saved, self.job = saved, _prepare(saved.model, image, self.config, None, None)
        job, plan = self.job, self.job.plan
        net = inference_network(saved.model, job.device)
        fn = make_predictor(net, job.level, self.config.tta, job.amp, job.classes == 1,
                            crop=job.halo,
                            activate=not getattr(saved.model, "returns_probabilities", False))
        batch = self.config.batch_size
        if batch == "auto":
            batch = auto_batch(fn, 1, plan.tile, job.device, plan.n_tiles)
        self.batch, self.fn = int(batch), Chunked(fn, int(batch))
        win = blend_window(plan.out_tile, plan.overlap, self.config.blend)
        self.window = torch.from_numpy(win).to(job.device)
        self.maps = [np.pad(np.arange(n), pw, mode="reflect" if n > 1 else "edge")
                     for n, pw in zip(plan.shape, plan.pad_width, strict=True)]
        # a tile touching a block reads at most this far beyond its edge
        self.halo = (plan.tile[0] - plan.margin - 1, plan.tile[1] - plan.margin - 1)
        self.lut = class_lut(saved.class_values, job.classes)

    def block(self, image: Any, bounds: list, keep_probs: bool) -> tuple[np.ndarray, Any]:
        """Labels (and float16 probabilities) of the block ``[(z0, z1), (y0, y1), (x0, x1)]``."""
        (z0, z1), (y0, y1), (x0, x1) = bounds
        plan = self.job.plan
        (oh, ow), (th, tw) = plan.out_tile, plan.tile
        ys = [y for y in plan.ys if y < y1 and y + oh > y0]
        xs = [x for x in plan.xs if x < x1 and x + ow > x0]
        rows, cols = self.maps[0][ys[0] : ys[-1] + th], self.maps[1][xs[0] : xs[-1] + tw]
        r0, c0 = int(rows.min()), int(cols.min())
        raw = np.asarray(image[z0:z1, r0 : int(rows.max()) + 1, c0 : int(cols.max()) + 1])
        raw = raw[:, rows - r0][:, :, cols - c0]  # the mirror-padded slice, as the tiler has it
        origins = [(y - ys[0], x - xs[0]) for y in ys for x in xs]  # row-major, as the plan
        span = (ys[-1] - ys[0] + oh, xs[-1] - xs[0] + ow)
        crop = (slice(y0 - ys[0], y1 - ys[0]), slice(x0 - xs[0], x1 - xs[0]))
        k = self.job.classes
        labels = np.empty((z1 - z0, y1 - y0, x1 - x0), self.lut.dtype)
        probs = np.empty((z1 - z0, k, *labels.shape[1:]), np.float16) if keep_probs else None
        for i in range(z1 - z0):
            try:
                check_slice(raw[i], self.saved.normalization, z0 + i)
            except ValueError as e:
                raise ValueError(f"{e} (in block {bounds})") from None
            arr = np.asarray(self.saved.normalization(raw[i][None]), dtype=np.float32)
            st = self._stitch(arr, origins, span)[:, crop[0], crop[1]]
            if not bool(finite_per_slice(st[None])[0]):
                refuse_nonfinite(np.zeros(1, bool), [z0 + i])
            lab = (st[0] >= 0.5) if k == 1 else st.argmax(0)
            labels[i] = self.lut[lab.to(torch.int64).cpu().numpy()]
            if probs is not None:
                probs[i] = st.to(torch.float16).cpu().numpy()
        return labels, probs

    def _stitch(self, arr: np.ndarray, origins: list, span: tuple[int, int]) -> torch.Tensor:
        """Blend the tiles at ``origins`` as :func:`napari_unetseg.tiling.iter_tiled` does."""
        dev, plan = self.job.device, self.job.plan
        (th, tw), (oh, ow) = plan.tile, plan.out_tile
        src = torch.from_numpy(np.ascontiguousarray(arr)).to(dev)
        acc, norm = None, torch.zeros(span, dtype=torch.float32, device=dev)
        for start in range(0, len(origins), self.batch):
            chunk = origins[start : start + self.batch]
            out = self.fn(torch.stack([src[:, y : y + th, x : x + tw] for y, x in chunk]))
            if acc is None:
                acc = torch.zeros((out.shape[1], *span), dtype=torch.float32, device=dev)
            for (y, x), o in zip(chunk, out, strict=True):
                acc[:, y : y + oh, x : x + ow].addcmul_(o, self.window)
                norm[y : y + oh, x : x + ow] += self.window
        return acc / norm


# ---------------------------------------------------------------------------- output store


def _array(group: Any, name: str, shape: tuple, chunks: tuple, dtype: Any) -> tuple[Any, bool]:
    """The existing array ``name`` (checked) or a new one; also whether it was created."""
    if name in group:
        arr = group[name]
        if tuple(arr.shape) != tuple(shape) or np.dtype(arr.dtype) != np.dtype(dtype):
            raise ValueError(
                f"output {name!r} exists with shape {tuple(arr.shape)} and dtype {arr.dtype}, "
                f"but this volume needs shape {tuple(shape)} and dtype {np.dtype(dtype)}; use "
                "another output path or delete the existing one")
        return arr, False
    return group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0), True


def _open_output(store: Any, shape: tuple, block: Any, classes: int, lut: np.ndarray,
                 keep_probs: bool, print_: dict, resume: bool) -> tuple[Any, tuple]:
    """Create or check the output group; reset the done markers unless resuming."""
    import zarr

    group = zarr.open_group(store, mode="a")
    meta = group.attrs.get(_FORMAT)
    if meta is None and len(list(group.array_keys())):
        raise ValueError(f"output {store} holds arrays not written by this module; "
                         "use another output path")
    if block is None:
        block = meta["block"] if meta else DEFAULT_BLOCK
    block = _block_shape(block, shape)
    if meta and tuple(meta["block"]) != block:
        raise ValueError(f"output {store} was written in blocks of {tuple(meta['block'])}, "
                         f"got block={block}; pass block=None to continue it")
    grid = _grid(shape, block)
    _, new = _array(group, "labels", shape, block, lut.dtype)  # first: checks the shape
    if resume and meta and meta["fingerprint"] != print_:
        raise ValueError(f"output {store} was written with another model or inference "
                         "settings; pass resume=False to redo every block")
    if keep_probs:
        pshape, pchunks = (shape[0], classes, *shape[1:]), (block[0], classes, *block[1:])
        new |= _array(group, "probabilities", pshape, pchunks, np.float16)[1]
    done, _ = _array(group, "done", grid, (1, 1, 1), np.uint8)
    if new or not resume:
        done[...] = 0
    group.attrs[_FORMAT] = {"version": 1, "shape": list(shape), "block": list(block),
                            "class_values": lut.tolist(), "fingerprint": print_}
    return group, block


def _write(group: Any, idx: tuple, bounds: list, labels: np.ndarray, probs: Any) -> None:
    """Write one block, then (only then) mark it done."""
    (z0, z1), (y0, y1), (x0, x1) = bounds
    group["labels"][z0:z1, y0:y1, x0:x1] = labels
    if probs is not None:
        group["probabilities"][z0:z1, :, y0:y1, x0:x1] = probs
    group["done"][idx] = 1


def check_store(store: Any, source: Any) -> None:
    """A local output path must be a zarr store, an empty folder or a new path in an existing
    folder, and not the input: checked before anything is created."""
    if not isinstance(store, (str, os.PathLike)) or "://" in str(store):
        return  # a zarr store object or a URL: zarr checks it
    path = Path(store)
    if os.path.islink(path):
        raise SpecialFileError(f"output {path} is a symbolic link; give the store's own path")
    if path.exists() and not path.is_dir():
        raise ValueError(f"output {path} is a file, not a zarr store")
    if isinstance(source, (str, os.PathLike)) and "://" not in str(source):
        a, b = path.resolve(), Path(source).resolve()
        if a == b or a.is_relative_to(b) or b.is_relative_to(a):
            raise ValueError(f"output {path} is (inside) the input {source}; write the output "
                             "to another path")
    if path.is_dir():
        names = set(os.listdir(path))
        if names and not names & {"zarr.json", ".zgroup", ".zattrs", ".zarray"}:
            raise ValueError(f"output {path} is a folder that is not a zarr store; give a new "
                             "path (or an empty folder)")
    elif not path.parent.is_dir():
        raise FileNotFoundError(f"folder {path.parent} does not exist (it is not created)")
    folder = path if path.is_dir() else path.parent
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"no permission to write in {folder}")


def _setup(model: Any, source: Any, store: Any, block: Any, config: Any, probabilities: bool,
           resume: bool) -> tuple:
    check_store(store, source)
    image = _open_input(source)
    if block is not None:
        _block_shape(block, tuple(image.shape))  # before anything is loaded or created
    saved = _load(model)
    runner = _Runner(saved, image, config)
    group, block = _open_output(store, tuple(int(s) for s in image.shape), block,
                                runner.job.classes, runner.lut, probabilities,
                                _fingerprint(saved, runner.config, runner.job.plan), resume)
    done = np.asarray(group["done"][...])
    todo = [tuple(int(i) for i in ix) for ix in np.argwhere(done == 0)]
    return runner, image, group, block, int(done.size), todo


def _result(store: Any, image: Any, block: tuple, runner: _Runner, n: int, computed: int,
            t0: float) -> VolumeResult:
    return VolumeResult(str(store), tuple(int(s) for s in image.shape), block,
                        runner.halo, n, computed, n - computed, time.perf_counter() - t0)


# ---------------------------------------------------------------------------- local


def segment_volume(
    model: str | os.PathLike | SavedModel,
    input: Any,
    output_store: Any,
    *,
    block: Sequence[int] | None = None,
    config: InferenceConfig | None = None,
    probabilities: bool = False,
    resume: bool = True,
) -> Generator[BlockEvent, None, VolumeResult]:
    """Segment a (Z, Y, X) volume block by block into a zarr group, in this process.

    Parameters
    ----------
    model : path or SavedModel
        A model file (loaded once per process and file version) or a loaded model.
    input : zarr path or array-like
        ``(Z, Y, X)``, single channel (zarr, dask, numpy, or anything with ``shape``,
        ``dtype`` and ``__getitem__``); only one block plus its halo is read at a time.
    output_store : path or zarr store
        Zarr group to write ``labels`` / ``probabilities`` / ``done`` into (created if
        missing, continued if it holds an earlier run of the same model and settings).
    block : (z, y, x), optional
        Block (and output chunk) shape; default :data:`DEFAULT_BLOCK`, or the block of the
        run being continued.
    config : InferenceConfig, optional
        Tile, overlap, blend, TTA, level, device ... as for :func:`inference.segment`.
    probabilities : bool
        Also write the class probabilities ``(Z, K, Y, X)`` as float16.
    resume : bool
        Skip blocks an earlier run finished; False redoes every block.

    Yields
    ------
    BlockEvent
        After every block (closing the generator stops between blocks; finished blocks stay).

    Returns
    -------
    VolumeResult

    Raises
    ------
    ValueError
        The output exists with another shape, dtype or block, or (when resuming) was written
        by another model or inference settings; the input is not (Z, Y, X).
    """
    t0 = time.perf_counter()
    runner, image, group, block, n, todo = _setup(
        model, input, output_store, block, config, probabilities, resume)
    shape, computed, todo = tuple(int(s) for s in image.shape), 0, set(todo)
    for i, idx in enumerate(np.ndindex(*_grid(shape, block))):
        if idx not in todo:
            yield BlockEvent(i + 1, n, idx, False, 0.0, f"block {idx}: done before")
            continue
        t = time.perf_counter()
        bounds = _bounds(idx, block, shape)
        _write(group, idx, bounds, *runner.block(image, bounds, probabilities))
        computed += 1
        dt = time.perf_counter() - t
        yield BlockEvent(i + 1, n, idx, True, dt, f"block {idx} {i + 1}/{n}: {dt:.2f} s")
    return _result(output_store, image, block, runner, n, computed, t0)


def predict_volume(model: Any, input: Any, output_store: Any, **kwargs: Any) -> VolumeResult:
    """:func:`segment_volume` run to the end (same arguments)."""
    return drain(segment_volume(model, input, output_store, **kwargs))

