"""Lazy (dask/zarr) stacks in the Segment widget, and a soak of repeated train + segment runs
in one viewer: no growth in threads, layers, temporary folders or host memory."""

from __future__ import annotations

import gc
import glob
import os
import tempfile
import threading

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
zarr = pytest.importorskip("zarr")
psutil = pytest.importorskip("psutil")

from napari_unetseg.inference import InferenceConfig, predict  # noqa: E402


class Recorded:
    """A (Z, Y, X) array that records the z range of every read and refuses to be loaded
    whole with ``np.asarray``."""

    def __init__(self, data):
        self.data, self.reads = data, []
        self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim

    def __getitem__(self, key):
        z = key[0] if isinstance(key, tuple) else key
        zs = range(self.shape[0])[z] if isinstance(z, slice) else [int(z)]
        self.reads.append(tuple(zs))
        return self.data[key]

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole stack was loaded with np.asarray")


def _lazy_layer(viewer, image, n=4):
    stack = np.concatenate([np.asarray(image.data)] * (n // 2))  # (n, 128, 128) uint8
    src = Recorded(stack)
    lazy = da.from_array(src, chunks=(1, *stack.shape[1:]), meta=np.empty((0, 0, 0), stack.dtype))
    layer = viewer.add_image(lazy, name="lazy", contrast_limits=(0, 255))
    return layer, src, stack


def _trained(train_tiny, click, wait_job, iterations=4):
    train = train_tiny(arch="UNet", iterations=iterations, preview_every=0)
    click(train.train_button)
    wait_job(train)
    assert train.saved is not None
    return train


def _outputs(viewer, source):
    from napari_unetseg._widgets import _common

    return {lyr.metadata[_common.MARKER]["role"]: lyr for lyr in viewer.layers
            if _common.MARKER in lyr.metadata and lyr.metadata[_common.MARKER].get(
                "source") == source}


def test_lazy_stack_reads_only_requested_slices(viewer, image, scribbles, dock, tiny, click,
                                                wait_job, notes, train_tiny):
    train = _trained(train_tiny, click, wait_job)
    layer, src, stack = _lazy_layer(viewer, image)
    seg = dock("Segment")
    seg.image_picker.set_layer("lazy")
    seg.tile.setValue(64)
    seg.device.setCurrentText("cpu")
    saved = train.saved
    ref = predict(saved.model, stack, normalization=saved.normalization,
                  config=InferenceConfig(tile=64, device="cpu"))
    lut = np.asarray(saved.class_values)

    viewer.dims.set_current_step(0, 2)
    src.reads.clear()
    seg.scope.setCurrentText("current slice")
    click(seg.run_button)
    wait_job(seg)
    assert not [n for n in notes if n[0] == "error"], notes
    assert src.reads and set(src.reads) == {(2,)}  # only the shown slice, never the stack
    out = _outputs(viewer, "lazy")
    assert isinstance(out["segmentation"].data, zarr.Array)  # disk-backed, not numpy
    assert isinstance(out["probabilities"].data, zarr.Array)
    np.testing.assert_array_equal(out["segmentation"].data[2], lut[ref.labels[2]])
    assert not out["segmentation"].data[1].any()  # slices not asked for stay empty

    src.reads.clear()
    seg.scope.setCurrentText("whole stack")
    n_layers = len(viewer.layers)
    click(seg.run_button)
    wait_job(seg)
    assert sorted(set(src.reads)) == [(0,), (1,), (2,), (3,)]  # one slice per read
    out = _outputs(viewer, "lazy")
    assert len(viewer.layers) == n_layers and isinstance(out["segmentation"].data, zarr.Array)
    np.testing.assert_array_equal(out["segmentation"].data[...], lut[ref.labels])
    k = seg.show_class.currentIndex()
    np.testing.assert_allclose(out["probabilities"].data[...], ref.probabilities[:, k],
                               atol=1e-6)


def _temp_outputs():
    return len(glob.glob(os.path.join(tempfile.gettempdir(), "napari-unetseg-*")))


def test_soak_train_and_segment_repeatedly(viewer, image, scribbles, dock, tiny, click,
                                           wait_job, notes, qtbot, train_tiny):
    rounds = 8
    train = train_tiny(arch="UNet", iterations=3, preview_every=2)
    seg = dock("Segment")
    lazy, _, _ = _lazy_layer(viewer, image)
    seg.tile.setValue(64)
    seg.device.setCurrentText("cpu")
    proc = psutil.Process()
    stats = []
    for _ in range(rounds):
        click(train.train_button)
        wait_job(train)
        for name, scope in ((image.name, "whole stack"), ("lazy", "whole stack"),
                            ("lazy", "current slice")):
            seg.image_picker.set_layer(name)
            seg.scope.setCurrentText(scope)
            click(seg.run_button)
            wait_job(seg)
        qtbot.wait(20)
        gc.collect()
        stats.append((threading.active_count(), len(viewer.layers), _temp_outputs(),
                      proc.memory_info().rss))
        assert not [n for n in notes if n[0] == "error"], notes
    print("soak (threads, layers, temp folders, rss MB):",
          [(t, n, d, round(m / 2**20)) for t, n, d, m in stats])
    threads, layers, temps, rss = zip(*stats, strict=True)
    # round 0 is the warm-up (imports, thread pools, first layers)
    assert max(threads[1:]) <= threads[1] + 2, threads
    assert set(layers[1:]) == {layers[0]}, layers  # outputs updated, never duplicated
    assert max(temps[1:]) <= temps[1] + 2, temps  # old zarr outputs are removed
    growth = (max(rss[1:]) - rss[1]) / 2**20
    assert growth < 300, f"RSS grew {growth:.0f} MB over {rounds - 1} rounds"
