"""Train > Export bioimage.io… writes a package (in a worker); Segment > Load model… runs it."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

pytest.importorskip("bioimageio.core", reason="the optional 'bioimageio' extra")

from napari_unetseg._widgets import _bioimageio, _files  # noqa: E402
from napari_unetseg._widgets._registry import store_for  # noqa: E402


def test_export_then_segment_with_the_package(viewer, image, dock, wait_job, click, qtbot,
                                              tmp_path, monkeypatch, notes, train_tiny):
    train = train_tiny(arch="U-Net", iterations=2, preview_every=0)
    click(train.train_button)
    wait_job(train)
    trained = train.saved
    target = tmp_path / "membranes"
    seen = {}
    monkeypatch.setattr(_bioimageio, "ask_package_path", lambda parent: str(target))

    def details(parent, training_data):
        seen["training"] = training_data
        return {"name": None, "authors": ["A. Painter"], "license": "CC-BY-NC-4.0",
                "training_data": training_data}

    monkeypatch.setattr(_bioimageio, "ask_details", details)
    job = train.export_bioimageio()
    assert job is not None
    qtbot.waitUntil(lambda: not job.running, timeout=180_000)
    package = tmp_path / "membranes.zip"
    assert job.failed is None and package.exists()
    assert image.name in seen["training"] and "Cardona" in seen["training"]
    with zipfile.ZipFile(package) as zf:
        assert "Cardona" in zf.read("README.md").decode()
    assert str(package) in train.status.text() and ("info", f"Exported the bioimage.io "
                                                    f"package {package}") in notes

    seg = dock("Segment")
    monkeypatch.setattr(_files, "ask_open_path", lambda parent: str(package))
    assert seg.load_model() is None  # read in a worker
    store = store_for(viewer)
    qtbot.waitUntil(lambda: not seg.bioimageio_job.running, timeout=60_000)
    assert store.saved is not trained
    assert "bioimage.io model" in seg.model_label.text()
    assert store.saved.class_values == trained.class_values
    click(seg.run_button)
    wait_job(seg)
    got = np.array(viewer.layers[f"{image.name} segmentation"].data)
    assert got.any()
    store.set_model(trained, "trained")  # the same slice with the model itself
    click(seg.run_button)
    wait_job(seg)
    want = viewer.layers[f"{image.name} segmentation"].data
    assert got.shape == want.shape == image.data.shape
    np.testing.assert_array_equal(got, want)
    assert not [n for n in notes if n[0] == "error"]


def test_export_without_a_model_says_so(dock, notes):
    train = dock("Train")
    assert train.export_bioimageio() is None
    assert notes and notes[-1][0] == "error" and "no model yet" in notes[-1][1]
