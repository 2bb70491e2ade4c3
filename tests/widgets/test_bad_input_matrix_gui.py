"""The bad-input matrix through the dock widgets: every case is one napari error notification
naming the problem; nothing is raised, no layer is made, the widget stays usable. Odd but valid
images (tiny, 16-bit, huge float range, constant) are segmented. The API/CLI side is
``tests/test_bad_input_matrix.py``.

Cases run in a loop inside a few tests (one viewer each), so the matrix stays fast.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import stat
import zipfile

import numpy as np
import pytest
import torch

from napari_unetseg import ModelConfig, Normalization, build_model, inference
from napari_unetseg._widgets import _files
from napari_unetseg._widgets._registry import store_for
from napari_unetseg._widgets.segment import SegmentWidget
from napari_unetseg._widgets.train import TrainWidget
from napari_unetseg.io import SavedModel, save_model

MC = ModelConfig(arch="unet", depth=2, width=4)


def _errors(notes) -> list[str]:
    return [text for kind, text in notes if kind == "error"]


def _img(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def _lab(shape) -> np.ndarray:
    lab = np.zeros(shape, np.uint8)
    lab[..., :4] = 1
    lab[..., -4:] = 2
    return lab


def _saved(in_channels: int = 1) -> SavedModel:
    torch.manual_seed(0)
    cfg = ModelConfig(arch="unet", depth=2, width=4, in_channels=in_channels)
    return SavedModel(build_model(cfg).eval(), cfg, Normalization(0.0, 1.0), [1, 2])


def _expect_one_error(widget, notes, wait_job, expected: str, case: str) -> None:
    """Start ``widget``; exactly one error naming ``expected``, the widget usable again."""
    job = widget.start()
    if job is not None:  # found by the worker: still one notification, nothing raised
        wait_job(widget)
        assert job.failed is not None, case
    errors = _errors(notes)
    assert len(errors) == 1 and expected in errors[0], (case, notes)
    button = getattr(widget, "train_button", None) or widget.run_button
    assert button.isEnabled(), case


def _nan(shape):
    img = _img(shape)
    img[0, 0] = np.nan
    return img


def _inf(shape):
    img = _img(shape)
    img[-1, -1] = -np.inf
    return img


_NEG = np.where(_lab((32, 32)) == 2, -1, _lab((32, 32))).astype(np.int8)
_NEG[0, :4] = 2
TRAIN_CASES = [  # id, image, labels, labels mode, device, expected message
    ("4-D layer", _img((2, 2, 32, 32)), _lab((2, 2, 32, 32)), None, None,
     "must be a single-channel 2D image or 3D stack"),
    ("5-D layer", _img((1, 2, 2, 32, 32)), _lab((1, 2, 2, 32, 32)), None, None,
     "shape (1, 2, 2, 32, 32)"),
    ("negative labels", _img((32, 32)), _NEG, None, None,
     "Training failed: labels must be >= 0, got minimum -1"),
    ("NaN pixels", _nan((32, 32)), _lab((32, 32)), None, None,
     "Training failed: image contains NaN or infinite pixels"),
    ("-Inf pixels", _inf((2, 32, 32)), _lab((2, 32, 32)), None, None, "NaN or infinite"),
    ("instances, nothing painted", _img((32, 32)), np.zeros((32, 32), np.uint8),
     "instances (U-Net weight map)", None, "no painted pixel"),
    ("dense, one value", _img((32, 32)), np.full((32, 32), 3, np.uint8),
     "dense (every value is a class)", None, "single class"),
    ("device cuda:7", _img((32, 32)), _lab((32, 32)), None, "cuda:7",
     "Training failed: device 'cuda:7' is not available here"),
    ("device tpu", _img((32, 32)), _lab((32, 32)), None, "tpu", "device 'tpu' is not available"),
]


def test_train_widget_bad_input_matrix(make_napari_viewer, notes, wait_job, tiny):
    viewer = make_napari_viewer()
    for case, image, labels, mode, device, expected in TRAIN_CASES:
        if device == "cuda:7" and torch.cuda.device_count() > 7:
            continue
        viewer.layers.clear()
        notes.clear()
        viewer.add_image(image, name="img")
        viewer.add_labels(labels, name="lab")
        w = TrainWidget(viewer)
        tiny(w, arch="U-Net", iterations=2, preview_every=0)
        if mode is not None:
            w.form.labels_mode.setCurrentText(mode)
        if device is not None:
            w.form.device.addItem(device)
            w.form.device.setCurrentText(device)
        _expect_one_error(w, notes, wait_job, expected, case)
        assert [layer.name for layer in viewer.layers] == ["img", "lab"], case
        assert w.saved is None and store_for(viewer).saved is None, case


@pytest.mark.parametrize(
    ("image", "labels"),
    [(np.array([[0, 65535, 0], [65535, 0, 65535], [0, 65535, 0]], np.uint16),
      np.array([[1, 2, 1], [2, 1, 2], [1, 2, 1]], np.uint8)),
     (np.full((20, 24), -2.5e6, np.float32), _lab((20, 24)))],
    ids=["3x3-uint16-full-range", "constant-float-smaller-than-patch"],
)
def test_train_widget_tiny_and_odd_images_train(make_napari_viewer, notes, wait_job, tiny,
                                                image, labels):
    viewer = make_napari_viewer()
    viewer.add_image(image, name="img")
    viewer.add_labels(labels, name="lab")
    w = TrainWidget(viewer)
    tiny(w, arch="U-Net", iterations=2, preview_every=0)
    if np.count_nonzero(labels) == labels.size:  # labels everywhere: dense, not scribbles
        w.form.labels_mode.setCurrentText("dense (every value is a class)")
    assert w.start() is not None
    wait_job(w)
    assert not notes and w.saved is not None and w.saved.metadata["steps"] == 2
    assert np.isfinite([w.saved.normalization.low, w.saved.normalization.high]).all()


SEGMENT_CASES = [  # id, image, rgb, model channels, device, expected message
    ("RGB image", (_img((32, 32, 3)) * 255).astype(np.uint8), True, 1, None, "(RGB)"),
    ("4-D layer", _img((2, 2, 32, 32)), False, 1, None, "shape (2, 2, 32, 32)"),
    ("5-D layer", _img((1, 1, 2, 32, 32)), False, 1, None, "shape (1, 1, 2, 32, 32)"),
    ("model for 3 channels", _img((32, 32)), False, 3, None,
     "the model expects 3 channels"),
    ("NaN pixels", _nan((32, 32)), False, 1, None,
     "Segmentation failed: slice 0 contains NaN or infinite pixels"),
    ("device cuda:7", _img((32, 32)), False, 1, "cuda:7",
     "Segmentation failed: device 'cuda:7' is not available here"),
    ("device tpu", _img((32, 32)), False, 1, "tpu",
     "Segment: device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'; got 'tpu'"),
]


def test_segment_widget_bad_input_matrix(make_napari_viewer, notes, wait_job):
    viewer = make_napari_viewer()
    for case, image, rgb, channels, device, expected in SEGMENT_CASES:
        if device == "cuda:7" and torch.cuda.device_count() > 7:
            continue
        viewer.layers.clear()
        notes.clear()
        viewer.add_image(image, name="img", rgb=rgb)
        store_for(viewer).set_model(_saved(channels), "test")
        w = SegmentWidget(viewer)
        w.device.setCurrentText("cpu")
        if device is not None:
            w.device.addItem(device)
            w.device.setCurrentText(device)
        _expect_one_error(w, notes, wait_job, expected, case)
        assert [layer.name for layer in viewer.layers] == ["img"], case


ODD_IMAGES = [
    ("1x1", _img((1, 1))), ("3x3", _img((3, 3))), ("1x50", _img((1, 50))),
    ("stack smaller than a tile", _img((2, 9, 11))),
    ("uint16 0..65535", np.linspace(0, 65535, 40 * 40).reshape(40, 40).astype(np.uint16)),
    ("float -1e6..1e6", (_img((40, 40)) - 0.5) * 2e6),
    ("constant", np.full((40, 40), 7, np.uint8)),
]


def test_segment_widget_odd_images_work(make_napari_viewer, notes, wait_job, monkeypatch):
    viewer = make_napari_viewer()
    store_for(viewer).set_model(_saved(), "test")
    w = SegmentWidget(viewer)
    w.device.setCurrentText("cpu")
    w.scope.setCurrentText("whole stack")
    for case, image in ODD_IMAGES:
        viewer.add_image(image, name=case)
        w.image_picker.set_layer(case)
        assert w.start() is not None, case
        wait_job(w)
        out = viewer.layers[f"{case} segmentation"]
        assert out.data.shape == image.shape and np.isin(out.data, [1, 2]).all(), case
        assert np.isfinite(viewer.layers[f"{case} probabilities"].data).all(), case
    assert not notes
    # out of GPU memory (simulated) on batches above one tile: retried smaller, same result
    real, sizes = inference.make_predictor, []

    def make(*a, **k):
        fn = real(*a, **k)

        def run(x):
            sizes.append(len(x))
            if len(x) > 1:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory")
            return fn(x)

        return run

    w.tile.setValue(32)
    w.batch.setValue(4)
    w.image_picker.set_layer("uint16 0..65535")
    w.start()
    wait_job(w)
    before = np.array(viewer.layers["uint16 0..65535 segmentation"].data)
    monkeypatch.setattr(inference, "make_predictor", make)
    w.start()
    wait_job(w)
    assert not notes and sizes[0] == 4 and sizes[-1] == 1
    assert w.job.failed is None
    np.testing.assert_array_equal(viewer.layers["uint16 0..65535 segmentation"].data, before)


def test_bad_model_files_are_one_notification(make_napari_viewer, notes, tmp_path,
                                              monkeypatch):
    good = save_model(tmp_path / "good.unetseg", build_model(MC), normalization=Normalization())
    (tmp_path / "truncated.unetseg").write_bytes(good.read_bytes()[:2000])
    (tmp_path / "pickle.unetseg").write_bytes(pickle.dumps({"weights": [1, 2]}))
    (tmp_path / "folder.unetseg").mkdir()
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(tmp_path / "newer.unetseg", "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "model.json":
                data = json.dumps({**json.loads(data), "version": 42}).encode()
            dst.writestr(info, data)
    viewer = make_napari_viewer()
    store = store_for(viewer)
    store.set_model(_saved(), "before")
    kept = store.saved
    seg, train = SegmentWidget(viewer), TrainWidget(viewer)
    for name, expected in [("truncated", "is not a readable napari-unetseg model file"),
                           ("pickle", "is not a readable napari-unetseg model file"),
                           ("newer", "model format version 42; this napari-unetseg reads"),
                           ("folder", "is a directory"), ("missing", "does not exist")]:
        for widget in (seg, train):
            notes.clear()
            path = tmp_path / f"{name}.unetseg"
            monkeypatch.setattr(_files, "ask_open_path", lambda parent, p=path: str(p))
            assert widget.load_model() is None, name
            errors = _errors(notes)
            assert len(errors) == 1 and errors[0].startswith("Load model: "), (name, notes)
            assert expected in errors[0] and f"{name}.unetseg" in errors[0], (name, errors)
            assert store.saved is kept


def test_save_without_permission_or_space_keeps_the_old_file(make_napari_viewer, notes,
                                                             tmp_path, monkeypatch):
    viewer = make_napari_viewer()
    w = TrainWidget(viewer)
    w.saved = _saved()
    target = tmp_path / "model.unetseg"
    monkeypatch.setattr(_files, "ask_save_path", lambda parent: str(target))
    monkeypatch.setattr(_files, "confirm_overwrite", lambda parent, path: True)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda *a, **k: False)  # root ignores chmod: simulate
    assert w.save_model() is None
    assert _errors(notes) == [f"Save model: could not write {target}: no permission to write "
                              f"in {tmp_path}"]
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(os, "access", real_access)
    assert w.save_model() == target
    before = target.read_bytes()
    real, calls = zipfile.ZipFile.writestr, []

    def full(self, *a, **k):
        calls.append(1)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *a, **k)

    notes.clear()
    monkeypatch.setattr(zipfile.ZipFile, "writestr", full)
    assert w.save_model() is None
    errors = _errors(notes)
    assert len(errors) == 1 and "No space left on device" in errors[0]
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [
        "model.unetseg"]


def test_training_that_diverges_keeps_the_last_good_model(make_napari_viewer, notes, wait_job,
                                                          tiny, monkeypatch):
    """A NaN loss stops training with one notification; the model of the last good step
    becomes the viewer's model (never NaN weights)."""
    from napari_unetseg import training

    real, calls = training._step, []

    def step(s, *a, **k):
        loss = real(s, *a, **k)
        calls.append(1)
        if len(calls) == 11:  # NaN weights after step 11: the loss of step 12 is NaN
            with torch.no_grad():
                first = next(s.model.parameters())  # channels_last: index, not view
                first[(0,) * first.ndim] = float("nan")
        return loss

    monkeypatch.setattr(training, "_step", step)
    viewer = make_napari_viewer()
    viewer.add_image(_img((64, 64)), name="img")
    viewer.add_labels(_lab((64, 64)), name="lab")
    w = TrainWidget(viewer)
    tiny(w, arch="U-Net", iterations=20, preview_every=0)
    w.start()
    wait_job(w)
    errors = _errors(notes)
    assert len(errors) == 1 and "training diverged: the loss became nan at step 12" in errors[0]
    kept = store_for(viewer).saved
    assert kept is w.saved and 1 <= kept.metadata["steps"] <= 11
    assert all(torch.isfinite(t).all() for t in kept.model.state_dict().values()
               if t.is_floating_point())


# ---------------------------------------------------------------------------- hostile files


def test_save_gives_normal_file_modes(make_napari_viewer, notes, tmp_path, monkeypatch):
    """A new model file gets the umask's mode (every file was 0600 before); a replaced file
    keeps its own."""
    w = TrainWidget(make_napari_viewer())
    w.saved = _saved()
    target = tmp_path / "model.unetseg"
    monkeypatch.setattr(_files, "ask_save_path", lambda parent: str(target))
    monkeypatch.setattr(_files, "confirm_overwrite", lambda parent, path: True)
    old = os.umask(0o002)
    try:
        assert w.save_model() == target
        assert stat.S_IMODE(target.stat().st_mode) == 0o664
        os.chmod(target, 0o640)
        assert w.save_model() == target
        assert stat.S_IMODE(target.stat().st_mode) == 0o640
    finally:
        os.umask(old)
    assert notes == [("info", f"Saved the model to {target}")] * 2


def test_special_files_are_one_notification(make_napari_viewer, notes, tmp_path, monkeypatch):
    """Save over a FIFO or a link, load a FIFO or a link to /dev/zero: one notification each,
    nothing blocks, reads forever or replaces the special file."""
    fifo = tmp_path / "fifo.unetseg"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.unetseg"
    zero.symlink_to("/dev/zero")
    real = tmp_path / "real.unetseg"
    real.write_bytes(b"keep")
    link = tmp_path / "link.unetseg"
    link.symlink_to(real)
    viewer = make_napari_viewer()
    w = TrainWidget(viewer)
    w.saved = _saved()
    monkeypatch.setattr(_files, "confirm_overwrite", lambda parent, path: True)
    for path, expected in [(fifo, "is a FIFO (named pipe), not a regular file"),
                           (link, "is a symbolic link (to")]:
        notes.clear()
        monkeypatch.setattr(_files, "ask_save_path", lambda parent, p=path: str(p))
        assert w.save_model() is None
        errors = _errors(notes)
        assert len(errors) == 1 and expected in errors[0], errors
    for path, expected in [(fifo, "is a FIFO"), (zero, "is a character device")]:
        notes.clear()
        monkeypatch.setattr(_files, "ask_open_path", lambda parent, p=path: str(p))
        assert w.load_model() is None
        errors = _errors(notes)
        assert len(errors) == 1 and errors[0].startswith("Load model: ") and expected in errors[
            0], errors
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and link.is_symlink()
    assert real.read_bytes() == b"keep"


def _overflowing(saved: SavedModel) -> SavedModel:
    with torch.no_grad():
        for p in saved.model.parameters():
            if p.ndim == 4:
                p.fill_(1e37)  # finite, but the network's sums overflow
    return saved


NUMBER_CASES = [  # id, image, model, expected message
    ("image 1e36 x a model scale of 1000", np.full((32, 32), 1e36, np.float32),
     lambda: SavedModel(_saved().model, MC, Normalization(0.0, 1e-3), [1, 2]),
     "slice 0 values 1e+36..1e+36 overflow float32 once normalised"),
    ("float64 image of 1e300", np.full((32, 32), 1e300), _saved, "overflow float32"),
    ("weights of 1e37", _img((32, 32)), lambda: _overflowing(_saved()),
     "the model gave NaN or infinite values on slice 0"),
]


def test_segment_refuses_numbers_that_overflow(make_napari_viewer, notes, wait_job):
    """Never an all-NaN probability layer or an all-class-0 segmentation: one notification,
    no layer."""
    viewer = make_napari_viewer()
    for case, image, model, expected in NUMBER_CASES:
        viewer.layers.clear()
        notes.clear()
        viewer.add_image(image, name="img")
        store_for(viewer).set_model(model(), "test")
        w = SegmentWidget(viewer)
        w.device.setCurrentText("cpu")
        _expect_one_error(w, notes, wait_job, expected, case)
        assert [layer.name for layer in viewer.layers] == ["img"], case


def test_train_refuses_an_image_float32_cannot_normalise(make_napari_viewer, notes, wait_job,
                                                         tiny):
    viewer = make_napari_viewer()
    image = np.where(_lab((32, 32)) == 1, -3e38, 3e38).astype(np.float32)
    viewer.add_image(image, name="img")
    viewer.add_labels(_lab((32, 32)), name="lab")
    w = TrainWidget(viewer)
    tiny(w, arch="U-Net", iterations=2, preview_every=0)
    _expect_one_error(w, notes, wait_job, "cannot be normalised", "3e38")
    assert w.saved is None and store_for(viewer).saved is None
