"""Non-finite and overflowing numbers: refused with a message, never an all-NaN or all-class-0
result. Images, normalisation and model weights are followed through to the prediction;
training stops on a NaN loss and keeps the last good model; label values are never wrapped."""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile

import numpy as np
import pytest
import torch

from napari_unetseg import ModelConfig, Normalization, build_model, training
from napari_unetseg.augment import AugmentConfig
from napari_unetseg.inference import InferenceConfig, predict
from napari_unetseg.io import ModelFileError, load_model, save_model
from napari_unetseg.postprocess import class_lut
from napari_unetseg.training import TrainConfig, TrainingDiverged, fit

MC = ModelConfig(arch="unet", depth=2, width=4)
TC = TrainConfig(iterations=12, batch_size=1, patch_size=16, device="cpu", val_fraction=0.0,
                 augment=AugmentConfig.off(), log_every=2)
IC = InferenceConfig(tile=32, batch_size=4, device="cpu")


def _img(shape=(32, 32), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def _lab(shape=(32, 32)) -> np.ndarray:
    lab = np.zeros(shape, np.uint8)
    lab[..., :4] = 1
    lab[..., -4:] = 2
    return lab


# ---------------------------------------------------------------------------- training


def _poison_after(monkeypatch, n: int) -> list[int]:
    """The ``n``-th training step leaves a NaN weight behind (its own loss is still finite)."""
    real, calls = training._step, []

    def step(s, *a, **k):
        loss = real(s, *a, **k)
        calls.append(1)
        if len(calls) == n:
            with torch.no_grad():
                next(s.model.parameters()).view(-1)[0] = float("nan")
        return loss

    monkeypatch.setattr(training, "_step", step)
    return calls


def test_nan_loss_stops_training_and_keeps_the_last_good_model(monkeypatch):
    _poison_after(monkeypatch, 5)  # weights NaN after step 5, loss NaN at step 6
    seen: list[int] = []
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 6; kept the model "
                                               r"of step 4\. Lower the learning rate") as err:
        fit(_img(), _lab(), MC, TC, on_event=lambda ev: seen.append(ev.step))
    result = err.value.result
    assert seen == [1, 2, 3, 4, 5]  # the finite steps were reported, the NaN one was not
    assert result.metadata["steps"] == 4 and result.metadata["diverged_step"] == 6
    assert all(torch.isfinite(t).all() for t in result.model.state_dict().values()
               if t.is_floating_point())
    assert all(np.isfinite(h["loss"]) for h in result.history)


def test_nan_at_the_first_steps_keeps_nothing_trained(monkeypatch):
    _poison_after(monkeypatch, 1)
    with pytest.raises(TrainingDiverged, match="no step before it was good") as err:
        fit(_img(), _lab(), MC, TC)
    assert err.value.result.metadata["steps"] == 0
    assert isinstance(err.value, ValueError)  # one line in the CLI, a notification in the GUI


# ---------------------------------------------------------------------------- label values


@pytest.mark.parametrize(("values", "dtype"), [([0, 255], np.uint8), ([1, 65535], np.uint16),
                                               ([0, 4_000_000_000], np.uint32),
                                               ([-5, 2**31 - 1], np.int32)])
def test_class_values_keep_their_value(values, dtype):
    lut = class_lut(values)
    assert lut.dtype == dtype and lut.tolist() == values


def test_uint32_labels_round_trip_without_wrapping():
    lab = _lab().astype(np.uint32)
    lab[lab == 2] = 4_000_000_000
    result = fit(_img(), lab, dataclasses.replace(MC, classes=3),
                 dataclasses.replace(TC, iterations=1), labels_mode="dense")
    assert result.class_values == (0, 1, 4_000_000_000)
    assert class_lut(result.class_values)[2] == 4_000_000_000  # was -294967296 as int32


def test_label_values_beyond_uint32_are_refused_at_training_time(monkeypatch):
    monkeypatch.setattr(training, "_run", lambda *a: pytest.fail("training started"))
    lab = _lab().astype(np.uint64)
    lab[lab == 2] = 2**40
    with pytest.raises(ValueError, match=f"label value {2**40} does not fit a label image"):
        training.train(_img(), lab, MC, TC, labels_mode="dense")


# ---------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize(("kw", "match"), [
    ({"low": 0.0, "high": 1e300}, "cannot be applied in float32"),  # scale 1e-300
    ({"low": 0.0, "high": 1e-300}, "cannot be applied in float32"),  # scale 1e300
    ({"low": -3e38, "high": 3e38}, "cannot be applied in float32"),  # high - low overflows
    ({"low": 0.0, "high": np.inf}, "finite numbers"),
    ({"low": np.nan, "high": 1.0}, "finite numbers"),
    ({"low": 2.0, "high": 1.0}, "low < high"),
    ({"p_low": 50.0, "p_high": 50.0}, "p_low < p_high"),
])
def test_normalisations_float32_cannot_apply_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        Normalization(**kw)
    with pytest.raises(ValueError, match=match):
        Normalization.from_dict({**Normalization().to_dict(), **kw})


def test_a_huge_record_gives_a_short_message():
    with pytest.raises(ValueError) as err:
        Normalization.from_dict({"low": "x" * 100_000})
    assert len(str(err.value)) < 400


@pytest.mark.parametrize("image", [
    np.array([[-3e38, 3e38], [0, 1]], np.float32).repeat(16, 0).repeat(16, 1),
    np.array([[-1e300, 1e300], [0, 1]], np.float64).repeat(16, 0).repeat(16, 1),
], ids=["float32-3e38", "float64-1e300"])
def test_images_whose_range_overflows_float32_are_refused(image):
    with pytest.raises(ValueError, match="cannot be normalised|overflow"):
        Normalization.fit(image)
    with pytest.raises(ValueError, match="cannot be normalised|overflow"):
        fit(image, _lab(), MC, dataclasses.replace(TC, iterations=1))


def test_constant_1e37_float64_image_trains_and_predicts():
    image = np.full((32, 32), 1e37)
    norm = Normalization.fit(image)  # was high == low: a division by zero
    assert norm.low < norm.high
    result = fit(image, _lab(), MC, dataclasses.replace(TC, iterations=1))
    res = predict(result.model, image, normalization=result.normalization, config=IC)
    assert np.isfinite(res.probabilities).all()


@pytest.mark.parametrize(("image", "norm", "match"), [
    (np.full((32, 32), 1e36, np.float32), Normalization(0.0, 1e-3),
     r"slice 0 values 1e\+36\.\.1e\+36 overflow float32 once normalised"),
    (np.full((32, 32), 1e300), Normalization(), "overflow float32"),
    (np.full((32, 32), 2**31 - 1, np.int32), Normalization(0.0, 1e-30), "overflow float32"),
    (np.where(_lab() > 0, np.nan, 0.5).astype(np.float32), Normalization(),
     "slice 0 contains NaN or infinite pixels"),
], ids=["float32-times-1000", "float64-1e300", "int32-times-1e30", "nan"])
def test_prediction_refuses_values_that_overflow_once_normalised(image, norm, match):
    with pytest.raises(ValueError, match=match):
        predict(_net(), image, normalization=norm, config=IC)


# ---------------------------------------------------------------------------- model weights


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(MC).eval()


def _model_file(tmp_path, edit=None, name="m.unetseg"):
    """A model file, with ``edit(state)`` applied to the arrays as they are stored."""
    path = save_model(tmp_path / name, _net(), normalization=Normalization())
    if edit is None:
        return path
    with zipfile.ZipFile(path) as zf:
        members = [(n, zf.read(n)) for n in zf.namelist()]
    out = []
    for n, data in members:
        if n.startswith("tensors/"):
            arr = np.load(io.BytesIO(data))
            new = edit(n[len("tensors/"):-len(".npy")], arr)
            if new is not None:
                buf = io.BytesIO()
                np.save(buf, new)
                data = buf.getvalue()
        out.append((n, data))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for n, data in out:
            zf.writestr(n, data)
    return path


def _first_conv(name, arr):
    return name == "encoder.0.0.weight"


@pytest.mark.parametrize(("edit", "match"), [
    (lambda n, a: np.full(a.shape, 1e39) if _first_conv(n, a) else None,
     "'encoder.0.0.weight' holds values that overflow torch.float32"),
    (lambda n, a: np.where(np.arange(a.size).reshape(a.shape) == 0, np.inf, a)
     if _first_conv(n, a) else None, "holds NaN or infinite values"),
    (lambda n, a: np.full(a.shape, -1.0, a.dtype) if n.endswith("running_var") else None,
     "holds a negative BatchNorm variance"),
], ids=["float64-1e39", "inf", "negative-bn-variance"])
def test_model_files_with_bad_weights_are_refused_at_load(tmp_path, edit, match):
    with pytest.raises(ModelFileError, match=match):
        load_model(_model_file(tmp_path, edit))


def test_weights_that_overflow_in_the_network_are_refused_at_prediction(tmp_path):
    """1e37 is finite in float32 (so the file loads), but the network's sums overflow: the
    prediction is refused instead of returning NaN probabilities and all-class-0 labels."""
    path = _model_file(tmp_path, lambda n, a: np.full(a.shape, 1e37)
                       if n.endswith("0.0.weight") else None)
    saved = load_model(path)
    with pytest.raises(ValueError, match="the model gave NaN or infinite values on slice 1"):
        predict(saved.model, np.stack([_img(), _img(seed=1)]),
                normalization=saved.normalization, config=IC, slices=[1, 0])


def test_normalisation_record_with_scale_1e_minus_300_is_refused_at_load(tmp_path):
    path = _model_file(tmp_path)
    with zipfile.ZipFile(path) as zf:
        members = [(n, zf.read(n)) for n in zf.namelist()]
    header = json.loads(members[0][1])
    header["normalization"].update(low=0.0, high=1e300)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("model.json", json.dumps(header))
        for n, data in members[1:]:
            zf.writestr(n, data)
    with pytest.raises(ModelFileError, match="cannot be applied in float32"):
        load_model(path)
