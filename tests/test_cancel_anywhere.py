"""Cancel anywhere, lose nothing: a stopped training returns its best model so far, a save
interrupted at any point leaves the previous file byte-identical and no temporary file, and a
segmentation closed after any batch of tiles has written only whole slices.

Where the cancel lands is drawn from seeded generators, so every run replays the same points.
"""

from __future__ import annotations

import copy
import os
import zipfile

import numpy as np
import pytest
import torch

from napari_unetseg import ModelConfig, Normalization, build_model, io
from napari_unetseg.augment import AugmentConfig
from napari_unetseg.cli import main
from napari_unetseg.inference import InferenceConfig, predict, segment
from napari_unetseg.io import load_model, save_model
from napari_unetseg.synthetic import touching_cells
from napari_unetseg.training import TrainConfig, fit, train

MC = ModelConfig(arch="unet", depth=2, width=4)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def cells():
    """A 3-slice stack of touching cells with dense labels (1 = background, 2 = cell)."""
    images, labels = zip(*(touching_cells((48, 48), 6, seed=s) for s in range(3)), strict=True)
    return np.stack(images).astype(np.float32), (np.stack(labels) > 0).astype(np.uint8) + 1


# ---------------------------------------------------------------------------- training


class _StopAt:
    """A ``stop`` callback that says stop once ``steps`` steps have run."""

    def __init__(self, steps: int) -> None:
        self.steps, self.calls = steps, 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.calls > self.steps


def test_stop_at_random_steps_keeps_the_best_model_so_far(cells, tmp_path):
    image, labels = cells
    cfg = TrainConfig(iterations=24, batch_size=1, patch_size=32, device="cpu", val_every=4,
                      val_slices=(2,), val_patches=2, log_every=1, augment=AugmentConfig.off())
    stops = sorted(np.random.default_rng(11).choice(np.arange(1, 24), 4, replace=False))
    for k in [0, *stops]:
        snapshots, stop = {}, _StopAt(int(k))
        gen = train(image, labels, MC, cfg, labels_mode="dense", stop=stop)
        while True:
            try:
                ev = next(gen)
            except StopIteration as done:
                result = done.value
                break
            if ev.val_dice is not None:  # what the model was at each validation
                snapshots[ev.step] = copy.deepcopy(gen.model.state_dict())
        meta = result.metadata
        assert meta["stopped"] and meta["steps"] == k, (k, meta["steps"])
        assert len(result.history) == k
        if k >= 4:  # validated at least once: the best validated weights are returned
            assert meta["best_step"] in snapshots and meta["best_step"] <= k
            assert meta["best_val_dice"] == max(h["val_dice"] for h in result.history
                                                if h["val_dice"] is not None)
            for name, t in result.model.state_dict().items():
                torch.testing.assert_close(t, snapshots[meta["best_step"]][name].cpu())
        else:
            assert meta["best_val_dice"] is None and meta["best_step"] == k
        # usable: it segments, and survives a save/load round trip unchanged
        path = save_model(tmp_path / f"stop{k}.unetseg", result.model,
                          normalization=result.normalization,
                          class_values=list(result.class_values))
        cfg_i = InferenceConfig(tile=32, device="cpu")
        a = predict(result.model, image[:1], normalization=result.normalization, config=cfg_i)
        b = predict(load_model(path).model, image[:1], normalization=result.normalization,
                    config=cfg_i)
        assert a.labels.shape == (1, 48, 48)
        np.testing.assert_array_equal(a.labels, b.labels)


def test_closing_the_training_generator_anywhere_is_safe(cells):
    image, labels = cells
    cfg = TrainConfig(iterations=12, batch_size=1, patch_size=32, device="cpu", val_every=3,
                      val_fraction=0.3, log_every=1, augment=AugmentConfig.off())
    for k in np.random.default_rng(5).integers(0, 12, 4):
        gen = train(image, labels, MC, cfg, labels_mode="dense")
        events = [next(gen) for _ in range(int(k))]
        gen.close()
        assert [e.step for e in events] == list(range(1, int(k) + 1))
        with pytest.raises(StopIteration):
            next(gen)
    # the next run is unaffected (no state leaked from the closed ones)
    assert fit(image, labels, MC, cfg, labels_mode="dense").metadata["steps"] == 12


# ---------------------------------------------------------------------------- saving


class _Cancelled(Exception):
    """A custom cancel raised into the save."""


@pytest.fixture
def old_file(tmp_path):
    model = build_model(MC).eval()
    path = save_model(tmp_path / "model.unetseg", model, normalization=Normalization(1.0, 9.0))
    return path, path.read_bytes()


def _only(path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


@pytest.mark.parametrize("exc", [KeyboardInterrupt, _Cancelled])
def test_cancel_midway_through_writing_the_zip(old_file, monkeypatch, exc):
    path, before = old_file
    new = build_model(ModelConfig(arch="unet", depth=2, width=4, classes=3))
    n_entries = len(zipfile.ZipFile(path).namelist())
    real = zipfile.ZipFile.writestr
    for at in np.random.default_rng(3).integers(1, n_entries + 1, 5):
        calls = []

        def interrupted(self, *a, _at=int(at), _calls=calls, **k):
            _calls.append(1)
            if len(_calls) == _at:
                raise exc("cancelled while saving")
            return real(self, *a, **k)

        monkeypatch.setattr(zipfile.ZipFile, "writestr", interrupted)
        for target, overwrite in ((path, True), (path.with_name("fresh.unetseg"), False)):
            calls.clear()
            with pytest.raises(exc):
                save_model(target, new, normalization=Normalization(), overwrite=overwrite)
        assert path.read_bytes() == before
        assert _only(path) == ["model.unetseg"]  # no temp file, no half-made fresh file


@pytest.mark.parametrize("where", ["fsync", "replace", "link"])
def test_cancel_at_the_last_moment_of_a_save(old_file, monkeypatch, where):
    path, before = old_file
    target, overwrite = (path, True) if where != "link" else (path.with_name("b.unetseg"), False)

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, where, interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_model(target, build_model(MC), normalization=Normalization(), overwrite=overwrite)
    monkeypatch.undo()
    assert path.read_bytes() == before and _only(path) == ["model.unetseg"]
    assert load_model(path).normalization == Normalization(1.0, 9.0)


def test_ctrl_c_while_the_cli_saves(old_file, monkeypatch, capsys, cells, tmp_path):
    import tifffile

    path, before = old_file
    image, labels = cells
    tifffile.imwrite(tmp_path / "i.tif", image, photometric="minisblack")
    tifffile.imwrite(tmp_path / "l.tif", labels, photometric="minisblack")
    real = zipfile.ZipFile.writestr
    monkeypatch.setattr(zipfile.ZipFile, "writestr", lambda self, name, *a, **k: (
        (_ for _ in ()).throw(KeyboardInterrupt) if "decoder" in str(name)
        else real(self, name, *a, **k)))
    rc = main(["train", str(tmp_path / "i.tif"), str(tmp_path / "l.tif"), "-o", str(path),
               "--iterations", "1", "--depth", "2", "--width", "4", "--patch-size", "16",
               "--batch-size", "1", "--device", "cpu", "--overwrite"])
    assert rc == 130 and "interrupted" in capsys.readouterr().err
    assert path.read_bytes() == before
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert io.load_model(path).config == MC


# ---------------------------------------------------------------------------- segmentation


def test_closing_segmentation_at_random_batches_writes_only_whole_slices(cells):
    image = np.concatenate([cells[0], cells[0][::-1]])  # 6 slices
    model = build_model(MC).train()  # its mode must be restored after a cancel
    cfg = InferenceConfig(tile=16, overlap=0.0, batch_size=3, device="cpu")
    norm = Normalization.fit(image)
    ref = predict(model, image, normalization=norm, config=cfg)
    assert model.training
    events = list(segment(model, image, normalization=norm, config=cfg))
    per_slice = events[-1].total // len(image)
    for k in np.random.default_rng(17).integers(1, len(events) + 1, 8):
        probs = np.full((6, 2, 48, 48), -1.0, np.float32)
        labels = np.full((6, 48, 48), 255, np.uint8)
        gen = segment(model, image, normalization=norm, config=cfg, out=(probs, labels))
        last = [next(gen) for _ in range(int(k))][-1]
        gen.close()
        assert model.training
        written = [i for i in range(6) if (i + 1) * per_slice < last.done]
        for i in range(6):
            if i in written:
                np.testing.assert_array_equal(labels[i], ref.labels[i])
                np.testing.assert_allclose(probs[i], ref.probabilities[i], atol=1e-6)
            else:  # untouched: not a single pixel of a half-done slice
                assert (labels[i] == 255).all() and (probs[i] == -1).all(), (k, i)
