"""Blockwise segmentation on a dask.distributed LocalCluster: same output as the local run,
the model file loaded once per worker, resume across local and distributed runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

zarr = pytest.importorskip("zarr")
distributed = pytest.importorskip("distributed")

from napari_unetseg import blockwise  # noqa: E402
from napari_unetseg import cluster as distributed_blocks  # noqa: E402
from napari_unetseg.config import ModelConfig  # noqa: E402
from napari_unetseg.inference import InferenceConfig  # noqa: E402
from napari_unetseg.io import save_model  # noqa: E402
from napari_unetseg.models import build_model  # noqa: E402
from napari_unetseg.normalize import Normalization  # noqa: E402

CFG = InferenceConfig(tile=64, device="cpu")
BLOCK = (2, 64, 80)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny model file, a (3, 150, 170) zarr volume, and the local blockwise result."""
    d = tmp_path_factory.mktemp("dist")
    torch.manual_seed(0)
    model = build_model(ModelConfig(depth=2, width=4, classes=3)).eval()
    save_model(d / "m.unetseg", model, normalization=Normalization(20.0, 200.0))
    vol = np.random.default_rng(0).integers(0, 255, (3, 150, 170)).astype(np.uint8)
    src = zarr.open_array(d / "in.zarr", mode="w", shape=vol.shape, chunks=(1, 64, 64),
                          dtype="uint8")
    src[...] = vol
    blockwise.predict_volume(d / "m.unetseg", d / "in.zarr", d / "local.zarr", block=BLOCK,
                             config=CFG, probabilities=True)
    return d, vol


def _read(path, name="labels"):
    return zarr.open_group(path, mode="r")[name][...]


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster, distributed.Client(
            cluster) as c:
        yield c


def test_equals_local_and_loads_model_once_per_worker(files, client):
    d, _ = files
    before = blockwise.load_counts()
    events = list(distributed_blocks.segment_volume_distributed(
        client, d / "m.unetseg", str(d / "in.zarr"), str(d / "dist.zarr"), block=BLOCK,
        config=CFG, probabilities=True))
    np.testing.assert_array_equal(_read(d / "dist.zarr"), _read(d / "local.zarr"))
    np.testing.assert_array_equal(_read(d / "dist.zarr", "probabilities"),
                                  _read(d / "local.zarr", "probabilities"))
    assert sorted(e.block for e in events) == sorted(np.ndindex(2, 3, 3))
    assert [e.done for e in events] == list(range(1, 19)) and events[-1].total == 18
    workers, used = set(client.scheduler_info()["workers"]), {e.worker for e in events}
    assert used and used <= workers
    after = blockwise.load_counts()  # in-process workers share this module's counter
    for w in workers:
        assert after.get(w, 0) - before.get(w, 0) == (w in used), (w, before, after)
    # a second run on the same workers loads nothing again
    distributed_blocks.predict_volume_distributed(client, d / "m.unetseg", str(d / "in.zarr"),
                                         str(d / "dist2.zarr"), block=BLOCK, config=CFG)
    assert {w: blockwise.load_counts().get(w, 0) for w in workers} == {
        w: after.get(w, 0) for w in workers}


def test_resume_a_local_run_on_the_cluster_with_numpy_input(files, client):
    d, vol = files
    gen = blockwise.segment_volume(d / "m.unetseg", vol, d / "mixed.zarr", block=BLOCK,
                                   config=CFG)
    for _ in range(5):
        next(gen)
    gen.close()
    res = distributed_blocks.predict_volume_distributed(client, d / "m.unetseg", vol,
                                               str(d / "mixed.zarr"), config=CFG)
    assert (res.computed, res.skipped, res.blocks) == (13, 5, 18)
    np.testing.assert_array_equal(_read(d / "mixed.zarr"), _read(d / "local.zarr"))


def test_model_must_be_a_file(files, client):
    d, vol = files
    saved = blockwise._load(d / "m.unetseg")
    with pytest.raises(TypeError, match="paths the workers can open"):
        distributed_blocks.predict_volume_distributed(client, saved, vol, str(d / "x.zarr"))


def test_worker_processes_each_load_once(files):
    d, _ = files
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, distributed.Client(
            cluster) as c:
        distributed_blocks.predict_volume_distributed(c, d / "m.unetseg", str(d / "in.zarr"),
                                             str(d / "procs.zarr"), block=BLOCK, config=CFG)
        counts = c.run(blockwise.load_counts)  # each worker process's own counter
    np.testing.assert_array_equal(_read(d / "procs.zarr"), _read(d / "local.zarr"))
    assert counts and all(c == {addr: 1} for addr, c in counts.items()), counts
