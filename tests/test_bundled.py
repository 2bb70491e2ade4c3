"""The bundled EM membrane model: a safe, small file that segments EM with no training."""

from __future__ import annotations

import dataclasses
import json
import zipfile

import numpy as np
import pytest
import tifffile
import torch

from napari_unetseg._sample_data import load_sample
from napari_unetseg.bundled import (
    bundled_path,
    for_image,
    is_bundled,
    load_bundled,
    normalization_for,
    per_image,
)
from napari_unetseg.cli import main
from napari_unetseg.inference import InferenceConfig, predict
from napari_unetseg.io import load_model
from napari_unetseg.models import build_model
from napari_unetseg.training import TrainConfig, fit

CPU = InferenceConfig(device="cpu")


@pytest.fixture(scope="module")
def bundled():
    return load_bundled()


@pytest.fixture(scope="module")
def em():
    """Sample slice 3 (ISBI slice 25: never trained on), a 256 x 256 crop, and its membranes."""
    image, labels = load_sample()
    return image[3, :256, :256], labels[3, :256, :256] == 0


def _membrane_dice(saved, image, truth) -> float:
    norm = normalization_for(saved, image)
    res = predict(saved.model, image, normalization=norm, config=CPU)
    pred = np.asarray(res.labels) == saved.class_values.index(0)
    return float(2 * (pred & truth).sum() / (pred.sum() + truth.sum()))


def test_the_file_is_small_data_only_and_credits_its_data():
    path = bundled_path()
    assert path.exists() and path.stat().st_size < 3_000_000
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        header = json.loads(zf.read("model.json"))
        dtypes = {_npy_dtype(zf, n) for n in names if n.endswith(".npy")}
    assert all(n == "model.json" or (n.startswith("tensors/") and n.endswith(".npy"))
               for n in names)  # JSON and arrays: nothing to unpickle or run
    assert np.dtype("float16") in dtypes  # half the size; loaded as float32
    meta = header["metadata"]
    assert meta["bundled"] and meta["normalize_per_image"]
    assert "slices 0-22" in meta["training_data"] and "25-29 unseen" in meta["training_data"]
    assert "non-commercial" in meta["terms"]
    assert any("Cardona" in c for c in meta["credit"])
    assert any("Arganda-Carreras" in c for c in meta["credit"])
    assert header["class_values"] == [0, 255]


def _npy_dtype(zf, name):
    with zf.open(name) as fh:
        version = np.lib.format.read_magic(fh)
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        return read(fh)[2]


def test_loads_as_float32_through_the_safe_loader(bundled):
    again = load_model(bundled_path())  # the same loader as any model file
    assert is_bundled(bundled) and per_image(bundled) and is_bundled(again)
    assert all(p.dtype == torch.float32 for p in bundled.model.parameters())
    assert bundled.config.depth == 4 and bundled.class_names == ["membrane", "cell"]


def test_segments_unseen_em_far_better_than_an_untrained_network(bundled, em):
    image, truth = em
    dice = _membrane_dice(bundled, image, truth)
    torch.manual_seed(0)
    untrained = dataclasses.replace(bundled, model=build_model(bundled.config).eval())
    chance = _membrane_dice(untrained, image, truth)
    assert dice > 0.7 and chance < 0.45, (dice, chance)


def test_normalisation_is_fitted_on_each_image(bundled, em):
    image, truth = em
    as16 = image.astype(np.uint16) * 257 + 1000  # another camera's range
    assert normalization_for(bundled, as16).high > 60_000
    assert for_image(bundled, as16).normalization != bundled.normalization
    a = predict(bundled.model, image, normalization=normalization_for(bundled, image),
                config=CPU).labels
    b = predict(bundled.model, as16, normalization=normalization_for(bundled, as16),
                config=CPU).labels
    assert np.mean(np.asarray(a) == np.asarray(b)) > 0.99
    plain = dataclasses.replace(bundled, metadata={})  # a model without the flag keeps its own
    assert normalization_for(plain, as16) is bundled.normalization


def test_init_from_bundled_with_three_classes(em):
    image, truth = em
    labels = np.zeros(image.shape, np.uint8)
    labels[truth] = 1
    labels[~truth] = 2
    labels[::2] = 0  # sparse: every other row painted
    labels[100:104, 100:104] = 3
    bundled = load_bundled()
    cfg = dataclasses.replace(bundled.config, classes=3)
    res = fit(image, labels, cfg, TrainConfig(iterations=1, batch_size=1, patch_size=64,
                                              device="cpu", val_fraction=0, lr=1e-12),
              init="bundled")
    assert res.metadata["init"] == "bundled"
    assert res.metadata["init_fresh"] == ["head.bias", "head.weight"]
    enc = "encoder.0.0.weight"
    torch.testing.assert_close(res.model.state_dict()[enc], bundled.model.state_dict()[enc],
                               atol=1e-6, rtol=0)


def test_cli_predict_bundled(tmp_path, em, capsys):
    image, truth = em
    tifffile.imwrite(tmp_path / "em.tif", image[:128, :128])
    out = tmp_path / "seg.tif"
    assert main(["predict", "bundled", str(tmp_path / "em.tif"), "-o", str(out),
                 "--device", "cpu"]) == 0
    seg = tifffile.imread(out)
    assert seg.shape == (128, 128) and set(np.unique(seg)) <= {0, 255}
    assert (seg == 0).mean() > 0.05 and (seg == 255).mean() > 0.4


@pytest.mark.parametrize(("extra", "want"), [((), 1e-4), (("--lr", "0.002"), 2e-3)])
def test_cli_train_from_bundled_takes_small_steps(tmp_path, em, extra, want):
    """From a model, Adam's default learning rate is finetune.FINETUNE_LR (1e-3 first undoes
    what the bundled model knows); a given --lr is kept."""
    image, truth = em
    labels = np.zeros(image.shape, np.uint8)
    labels[truth] = 1
    labels[~truth] = 2
    labels[::2] = 0
    tifffile.imwrite(tmp_path / "em.tif", image[:96, :96])
    tifffile.imwrite(tmp_path / "lab.tif", labels[:96, :96])
    out = tmp_path / "m.unetseg"
    assert main(["train", str(tmp_path / "em.tif"), str(tmp_path / "lab.tif"), "-o", str(out),
                 "--init", "bundled", "--iterations", "1", "--batch-size", "1",
                 "--patch-size", "64", "--device", "cpu", *extra]) == 0
    assert load_model(out).metadata["train_config"]["lr"] == pytest.approx(want)
