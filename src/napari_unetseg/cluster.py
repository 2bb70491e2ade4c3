"""Blockwise segmentation on a ``dask.distributed`` cluster: every block is a task, each worker
loads the model file once (see :mod:`napari_unetseg.blockwise` for the block layout, the output
store and resuming)."""

from __future__ import annotations

import os
import time
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .blockwise import (
    _FORMAT,
    BlockEvent,
    VolumeResult,
    _bounds,
    _load,
    _open_input,
    _result,
    _Runner,
    _setup,
    _worker_name,
    _write,
)
from .devices import drain
from .inference import InferenceConfig

__all__ = ["predict_volume_distributed", "segment_volume_distributed"]


def _block_task(idx: tuple, *, model: str, source: Any, store: Any, config: InferenceConfig,
                probabilities: bool) -> tuple[tuple, float, str]:
    """One block on a worker: the model file is loaded once per worker (see :func:`_load`)."""
    import zarr

    t = time.perf_counter()
    image, group = _open_input(source), zarr.open_group(store, mode="r+")
    runner = _Runner(_load(model), image, config)
    block = tuple(group.attrs[_FORMAT]["block"])
    bounds = _bounds(idx, block, tuple(image.shape))
    _write(group, idx, bounds, *runner.block(image, bounds, probabilities))
    return idx, time.perf_counter() - t, _worker_name()


def _shared(path: str | os.PathLike) -> str:
    """An absolute path (workers may run elsewhere), or a URL such as ``s3://...`` as is."""
    text = str(path)
    return text if "://" in text else str(Path(text).resolve())


def segment_volume_distributed(
    client: Any,
    model: str | os.PathLike,
    input: Any,
    output_store: str | os.PathLike,
    *,
    block: Sequence[int] | None = None,
    config: InferenceConfig | None = None,
    probabilities: bool = False,
    resume: bool = True,
) -> Generator[BlockEvent, None, VolumeResult]:
    """:func:`segment_volume` with every block a task on a ``dask.distributed`` cluster.

    ``client`` is a ``distributed.Client`` (``Client("tcp://host:8786")`` or a
    ``LocalCluster``). ``model`` must be a model file and ``output_store`` a path (or URL)
    that every worker can reach; ``input`` a zarr path on shared storage, or an array that is
    sent to the workers (numpy arrays are scattered once). Each worker loads the model once
    and writes its blocks' chunks itself; events come as blocks finish (in any order), and
    closing the generator cancels the blocks not yet started. Arguments as
    :func:`segment_volume`.
    """
    from distributed import as_completed

    if not isinstance(model, (str, os.PathLike)) or not isinstance(output_store,
                                                                    (str, os.PathLike)):
        raise TypeError("model and output_store must be paths the workers can open, got "
                        f"{type(model).__name__} and {type(output_store).__name__}")
    t0 = time.perf_counter()
    model, store = _shared(model), _shared(output_store)
    runner, image, _, block, n, todo = _setup(
        model, input, store, block, config, probabilities, resume)
    source = _shared(input) if isinstance(input, (str, os.PathLike)) else input
    if isinstance(source, np.ndarray):
        source = client.scatter(source, broadcast=True)
    futures = client.map(_block_task, todo, model=model, source=source, store=store,
                         config=runner.config, probabilities=probabilities, pure=False)
    done0, computed = n - len(todo), 0
    try:
        for fut in as_completed(futures):
            idx, dt, worker = fut.result()
            computed += 1
            yield BlockEvent(done0 + computed, n, idx, True, dt,
                             f"block {idx} {done0 + computed}/{n} on {worker}: {dt:.2f} s",
                             worker)
    finally:
        client.cancel([f for f in futures if not f.done()])
    return _result(store, image, block, runner, n, computed, t0)


def predict_volume_distributed(client: Any, model: Any, input: Any, output_store: Any,
                               **kwargs: Any) -> VolumeResult:
    """:func:`segment_volume_distributed` run to the end (same arguments)."""
    return drain(segment_volume_distributed(client, model, input, output_store, **kwargs))
