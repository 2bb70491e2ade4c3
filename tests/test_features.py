"""The multiscale filter bank (``ModelConfig.features="multiscale"``): what it computes, that
it is part of every architecture, that model files stay weights + JSON, and that the default
tiling stays seamless with its wider reach."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_unetseg.config import ARCHS, ModelConfig
from napari_unetseg.inference import InferenceConfig, predict
from napari_unetseg.models import build_model
from napari_unetseg.models.features import DEFAULT_SCALES, FilterBank
from napari_unetseg.normalize import Normalization
from napari_unetseg.predictor import tile_geometry

CPU = {"device": "cpu"}
IDENTITY = Normalization(0.0, 1.0)


def _image(shape=(80, 96), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.random(shape), 2).astype(np.float32)


def test_features_are_smoothed_image_gradient_and_hessian_eigenvalues():
    """Against scipy on the interior (the bank replicates borders, scipy reflects): the
    smoothed image, s * |grad| and s**2 * Hessian eigenvalues (larger first) at each scale."""
    img = _image()
    bank = FilterBank((1.0, 2.0))
    out = bank(torch.from_numpy(img)[None, None])[0].numpy()
    assert out.shape == (9, 80, 96) and bank.per_channel == 9
    np.testing.assert_array_equal(out[0], img)
    inner = (slice(12, -12), slice(12, -12))
    for i, s in enumerate((1.0, 2.0)):
        g = ndimage.gaussian_filter(img.astype(np.float64), s, truncate=3.0)
        gy, gx = np.gradient(g)
        hyy, hyx = np.gradient(gy)
        _, hxx = np.gradient(gx)
        tr, det = hxx + hyy, hxx * hyy - hyx**2
        root = np.sqrt(np.maximum(tr**2 / 4 - det, 0))
        want = [g, s * np.hypot(gx, gy), s * s * (tr / 2 + root), s * s * (tr / 2 - root)]
        for k, w in enumerate(want):
            np.testing.assert_allclose(out[1 + 4 * i + k][inner], w[inner], atol=2e-5,
                                       err_msg=f"scale {s} feature {k}")


def test_bank_is_fixed_and_not_stored():
    bank = FilterBank()
    assert bank.scales == DEFAULT_SCALES and bank.per_channel == 21 and bank.radius == 48
    assert list(bank.parameters()) == [] and bank.state_dict() == {}
    for bad in ((), (0.0,), (-1.0, 2.0), (100.0,)):
        with pytest.raises(ValueError, match="scales"):
            FilterBank(bad)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_architecture_takes_the_features(arch):
    plain = build_model(ModelConfig(arch=arch, depth=2, width=4))
    model = build_model(ModelConfig(arch=arch, depth=2, width=4, features="multiscale"))
    assert plain.features is None and isinstance(model.features, FilterBank)
    assert model.input_channels == 21 and plain.input_channels == 1
    # the first layer sees 21 channels; the state dict has no filter-bank entry
    first = next(p for n, p in model.named_parameters() if p.ndim == 4)
    assert first.shape[1] == 21
    assert set(model.state_dict()) == set(plain.state_dict())
    out = model(torch.rand(2, 1, 36, 40))
    out = out[-1] if isinstance(out, list) else out
    assert out.shape == (2, 2, 36, 40)


def test_config_round_trip_and_bad_value():
    cfg = ModelConfig(features="multiscale")
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    assert ModelConfig().features == "none"
    with pytest.raises(ValueError, match="features"):
        ModelConfig(features="gabor")


def test_model_file_round_trip(tmp_path):
    from napari_unetseg.io import load_model, save_model

    model = build_model(ModelConfig(depth=2, width=4, features="multiscale")).eval()
    path = tmp_path / "m.unetseg"
    save_model(path, model, normalization=IDENTITY, class_values=(1, 2))
    back = load_model(path)
    assert back.config.features == "multiscale"
    x = torch.rand(1, 1, 48, 48)
    torch.testing.assert_close(back.model.eval()(x), model(x))


def test_default_tiling_stays_seamless_with_the_bank():
    """The auto halo grows by the bank's 48-px reach, so tile size does not change labels."""
    model = build_model(ModelConfig(depth=2, width=4, features="multiscale")).eval()
    geo = tile_geometry(model, model.config, (512, 512), torch.device("cpu"))
    assert geo.halo == 20 + 48
    img = _image((150, 130), seed=3)
    a, b = (predict(model, img, normalization=IDENTITY,
                    config=InferenceConfig(tile=t, **CPU)).probabilities for t in (192, 512))
    np.testing.assert_allclose(a, b, atol=1e-5)
