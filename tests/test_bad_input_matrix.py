"""Bad input, case by case, through the API and the CLI: the exact kind of error and a message
that names the problem; odd but valid input (tiny, 16-bit, huge float range, constant) works.

API cases assert ``type(error) is Kind``; CLI cases assert exit code 2, exactly one line on
stderr naming the problem, no traceback and no output file. The GUI side of the same matrix is
``tests/widgets/test_bad_input_matrix_gui.py``.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_unetseg import ModelConfig, Normalization, build_model, inference, training
from napari_unetseg.augment import AugmentConfig
from napari_unetseg.cli import main
from napari_unetseg.files import SpecialFileError
from napari_unetseg.inference import InferenceConfig, predict
from napari_unetseg.io import ModelFileError, load_model, read_tif, save_model, write_tif
from napari_unetseg.training import TrainConfig, TrainResult, fit

MC = ModelConfig(arch="unet", depth=2, width=4)
TC = TrainConfig(iterations=1, batch_size=1, patch_size=16, device="cpu", val_fraction=0.0,
                 augment=AugmentConfig.off())
IC = InferenceConfig(tile=32, batch_size=4, device="cpu")
TINY = ["--iterations", "1", "--depth", "2", "--width", "4", "--patch-size", "16",
        "--batch-size", "1", "--device", "cpu"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _img(shape=(32, 32), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def _lab(shape=(32, 32)) -> np.ndarray:
    lab = np.zeros(shape, np.uint8)
    lab[..., :4] = 1
    lab[..., -4:] = 2
    return lab


def _tif(path: Path, array: np.ndarray, rgb: bool = False) -> Path:
    tifffile.imwrite(path, array, photometric="rgb" if rgb else "minisblack")
    return path


@pytest.fixture(scope="module")
def ctx(tmp_path_factory) -> dict[str, Path]:
    """TIFFs and model files, good and bad, in one folder."""
    d = tmp_path_factory.mktemp("matrix")
    torch.manual_seed(0)
    m1 = save_model(d / "m1.unetseg", build_model(MC).eval(), normalization=Normalization())
    m3 = save_model(d / "m3.unetseg",
                    build_model(ModelConfig(arch="unet", depth=2, width=4, in_channels=3)).eval(),
                    normalization=Normalization())
    (d / "trunc.unetseg").write_bytes(m1.read_bytes()[: m1.stat().st_size // 2])
    (d / "pickle.unetseg").write_bytes(pickle.dumps({"state_dict": {"w": [1.0]}}))
    with zipfile.ZipFile(m1) as src, zipfile.ZipFile(d / "newer.unetseg", "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "model.json":
                header = json.loads(data)
                header["version"] = 99
                data = json.dumps(header).encode()
            dst.writestr(info, data)
    (d / "folder.unetseg").mkdir()
    img8 = (_img((2, 32, 32)) * 255).astype(np.uint8)
    nan = _img()
    nan[5, 5] = np.nan
    neg = _lab((2, 32, 32)).astype(np.int16)
    neg[0, 0, 0] = -1
    files = {
        "img": _tif(d / "img.tif", img8), "lab": _tif(d / "lab.tif", _lab((2, 32, 32))),
        "lab_small": _tif(d / "lab_small.tif", _lab((2, 16, 32))),
        "lab_one": _tif(d / "lab_one.tif", np.ones((2, 32, 32), np.uint8)),
        "lab_none": _tif(d / "lab_none.tif", np.zeros((2, 32, 32), np.uint8)),
        "lab_neg": _tif(d / "lab_neg.tif", neg),
        "lab_float": _tif(d / "lab_float.tif", _lab((2, 32, 32)) + np.float32(0.5)),
        "lab2d": _tif(d / "lab2d.tif", _lab()), "nan": _tif(d / "nan.tif", nan),
        "rgb": _tif(d / "rgb.tif", (_img((32, 32, 3)) * 255).astype(np.uint8), rgb=True),
        "img4d": _tif(d / "img4d.tif", np.zeros((2, 2, 32, 32), np.uint8)),
        "lab4d": _tif(d / "lab4d.tif", np.zeros((2, 2, 32, 32), np.uint8)),
        "tiny": _tif(d / "tiny.tif", np.arange(9, dtype=np.uint8).reshape(3, 3)),
        "u16": _tif(d / "u16.tif", np.linspace(0, 65535, 40 * 40).reshape(40, 40).astype(
            np.uint16)),
        "f_huge": _tif(d / "f_huge.tif", (_img((40, 40)) - 0.5) * 2e6),
        "const": _tif(d / "const.tif", np.full((40, 40), 7, np.uint8)),
        "f_3e38": _tif(d / "f_3e38.tif", np.where(_lab() > 0, 3e38, -3e38).astype(np.float32)),
    }
    return {"dir": d, "m1": m1, "m3": m3, **files, **{
        k: d / f"{k}.unetseg" for k in ("trunc", "pickle", "newer", "folder")}}


# ---------------------------------------------------------------------------- API errors


def _train(image, labels, model_config=MC, **kw):
    return fit(image, labels, model_config, kw.pop("train_config", TC), **kw)


def _predict(image, model=None, config=IC, **kw):
    model = build_model(MC).eval() if model is None else model
    return predict(model, image, normalization=Normalization(), config=config, **kw)


def _inf(image):
    image = image.copy()
    image[1, 1] = np.inf
    return image


_3CH = ModelConfig(arch="unet", depth=2, width=4, in_channels=3)
API_ERRORS = [
    ("labels-shape", lambda c: _train(_img(), _lab((16, 32))), ValueError,
     r"labels shape \(16, 32\) does not match the image shape \(32, 32\)"),
    ("labels-one-class", lambda c: _train(_img(), np.ones((32, 32), np.uint8)), ValueError,
     "single class"),
    ("labels-dense-one-value", lambda c: _train(_img(), np.full((32, 32), 9, np.uint8),
                                                labels_mode="dense"), ValueError, "single class"),
    ("train-1x1", lambda c: _train(_img((1, 1)), np.ones((1, 1), np.uint8)), ValueError,
     "single class"),
    ("no-labeled-pixel", lambda c: _train(_img(), np.zeros((32, 32), np.uint8)), ValueError,
     "no painted pixel"),
    ("no-instance", lambda c: _train(_img(), np.zeros((32, 32), np.uint8),
                                     labels_mode="instances"), ValueError, "no object"),
    ("labels-negative", lambda c: _train(_img(), _lab().astype(np.int8) - 1), ValueError,
     "labels must be >= 0, got minimum -1"),
    ("labels-float", lambda c: _train(_img(), _lab() + 0.5), ValueError, "integer values"),
    ("labels-nan", lambda c: _train(_img(), np.where(_lab() > 0, np.nan, 1.0)), ValueError,
     "NaN"),
    ("train-nan-pixel", lambda c: _train(np.where(_img() > 0.99, np.nan, _img()), _lab()),
     ValueError, "NaN or infinite pixels"),
    ("predict-inf-pixel", lambda c: _predict(_inf(_img())), ValueError,
     "slice 0 contains NaN or infinite pixels"),
    ("train-rgb-no-channel-axis", lambda c: _train(_img((32, 32, 3)), _lab()), ValueError,
     "pass channel_axis"),
    ("train-rgb-1ch-model", lambda c: _train(_img((32, 32, 3)), _lab(), channel_axis=-1),
     ValueError, r"image has 3 channel\(s\) but model_config.in_channels is 1"),
    ("train-gray-3ch-model", lambda c: _train(_img(), _lab(), model_config=_3CH), ValueError,
     r"image has 1 channel\(s\) but model_config.in_channels is 3"),
    ("predict-rgb-1ch-model", lambda c: _predict(_img((32, 32, 3)), channel_axis=-1),
     ValueError, r"3 channel\(s\).*expects in_channels=1"),
    ("predict-gray-3ch-model-file", lambda c: _predict(_img(), load_model(c["m3"]).model),
     ValueError, r"1 channel\(s\).*expects in_channels=3"),
    ("resume-other-channels", lambda c: _train(_img(), _lab(), resume=load_model(c["m3"])),
     ValueError, "resume was trained with .*in_channels=3"),
    ("train-empty-stack", lambda c: _train(np.zeros((0, 32, 32)), np.zeros((0, 32, 32), int)),
     ValueError, "image is empty"),
    ("predict-empty-stack", lambda c: _predict(np.zeros((0, 32, 32), np.float32)), ValueError,
     r"image is empty: shape \(0, 32, 32\)"),
    ("train-4d", lambda c: _train(_img((2, 2, 32, 32)), _lab((2, 2, 32, 32))), ValueError,
     r"got shape \(2, 2, 32, 32\); pass channel_axis"),
    ("predict-4d", lambda c: _predict(_img((2, 2, 32, 32))), ValueError,
     r"\(Y, X\) or \(Z, Y, X\).*\(2, 2, 32, 32\)"),
    ("predict-5d", lambda c: _predict(_img((1, 2, 2, 32, 32))), ValueError,
     r"\(Y, X\) or \(Z, Y, X\).*\(1, 2, 2, 32, 32\)"),
    ("model-truncated", lambda c: load_model(c["trunc"]), ModelFileError,
     "trunc.unetseg is not a readable napari-unetseg model file"),
    ("model-newer-version", lambda c: load_model(c["newer"]), ModelFileError,
     "format version 99.*please upgrade"),
    ("model-is-a-pickle", lambda c: load_model(c["pickle"]), ModelFileError,
     "pickle.unetseg is not a readable"),
    ("model-path-is-dir", lambda c: load_model(c["folder"]), IsADirectoryError,
     "folder.unetseg is a directory"),
    ("model-missing", lambda c: load_model(c["dir"] / "nope.unetseg"), FileNotFoundError,
     "nope.unetseg does not exist"),
    ("save-to-dir", lambda c: save_model(c["folder"], build_model(MC),
                                         normalization=Normalization()),
     IsADirectoryError, "is a directory"),
    ("tif-not-a-tif", lambda c: read_tif(c["m1"]), ValueError, "m1.unetseg is not a readable "
     "TIFF"),
    ("train-device-cuda7", lambda c: _train(_img(), _lab(), train_config=TrainConfig(
        device="cuda:7")), ValueError, "device 'cuda:7' is not available here; available: cpu"),
    ("train-device-tpu", lambda c: _train(_img(), _lab(), train_config=TrainConfig(
        device="tpu")), ValueError, "device 'tpu' is not available"),
    ("train-device-empty", lambda c: _train(_img(), _lab(), train_config=TrainConfig(
        device="")), ValueError, "device '' is not available"),
    ("predict-device-cuda7", lambda c: _predict(_img(), config=InferenceConfig(device="cuda:7")),
     ValueError, "device 'cuda:7' is not available"),
    ("predict-device-tpu", lambda c: InferenceConfig(device="tpu"), ValueError,
     "device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'; got 'tpu'"),
    ("predict-device-empty", lambda c: InferenceConfig(device=""), ValueError,
     "device must be .*; got ''"),
    ("model-is-dev-zero", lambda c: load_model("/dev/zero"), SpecialFileError,
     "/dev/zero is a character device, not a regular file"),
    ("tif-is-a-fifo", lambda c: read_tif(_fifo(c)), SpecialFileError, "is a FIFO"),
    ("save-over-a-fifo", lambda c: write_tif(_fifo(c), _img(), overwrite=True),
     SpecialFileError, "fifo.tif is a FIFO \\(named pipe\\), not a regular file; refusing"),
    ("train-float32-3e38", lambda c: _train(np.where(_lab() > 0, 3e38, -3e38).astype(
        np.float32), _lab()), ValueError, "cannot be normalised"),
    ("labels-beyond-uint32", lambda c: _train(_img(), _lab().astype(np.uint64) * 2**40,
                                              labels_mode="dense"),
     ValueError, "does not fit a label image"),
    ("normalisation-scale-1e-300", lambda c: Normalization(0.0, 1e300), ValueError,
     "cannot be applied in float32"),
]


def _fifo(c) -> Path:
    path = c["dir"] / "fifo.tif"
    if not path.exists():
        os.mkfifo(path)
    return path


@pytest.mark.parametrize(("call", "kind", "pattern"), [pytest.param(*c[1:], id=c[0])
                                                       for c in API_ERRORS])
def test_api_refuses(ctx, call, kind, pattern):
    if "cuda:7" in pattern and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    with pytest.raises(Exception) as err:  # noqa: PT011 - the exact kind is checked below
        call(ctx)
    assert type(err.value) is kind, f"{type(err.value).__name__}: {err.value}"
    assert re.search(pattern, str(err.value)), str(err.value)


# ---------------------------------------------------------------------------- API: must work


@pytest.mark.parametrize("shape", [(1, 1), (3, 3), (1, 50), (20, 20), (2, 5, 7)],
                         ids=["1x1", "3x3", "1x50", "smaller-than-tile", "stack-5x7"])
def test_images_smaller_than_a_tile_are_mirror_padded(shape):
    res = _predict(_img(shape), config=InferenceConfig(tile=64, device="cpu"))
    lead = shape[:-2]
    assert res.labels.shape == shape
    assert res.probabilities.shape == (*lead, 2, *shape[-2:])
    assert np.isfinite(res.probabilities).all()
    np.testing.assert_allclose(res.probabilities.sum(-3), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    "image",
    [np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16),
     ((_img() - 0.5) * 2e6).astype(np.float32),
     np.full((32, 32), 7, np.uint8),
     np.full((32, 32), -3.5e6, np.float64)],
    ids=["uint16-full-range", "float-1e6", "constant-uint8", "constant-float64"],
)
def test_odd_intensity_ranges_train_and_predict(image):
    result = _train(image, _lab())
    assert isinstance(result, TrainResult) and np.isfinite(
        [result.normalization.low, result.normalization.high]).all()
    res = predict(result.model, image, normalization=result.normalization, config=IC)
    assert res.labels.shape == image.shape and np.isfinite(res.probabilities).all()


def test_three_by_three_image_trains():
    lab = np.array([[1, 2, 1], [2, 1, 2], [1, 2, 1]], np.uint8)
    result = _train(_img((3, 3)), lab)
    assert result.metadata["steps"] == 1 and result.metadata["patch"] == 16


# ---------------------------------------------------------------------------- CLI errors


def _run_cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _out(c):
    return c["dir"] / "out.tif"


def _mout(c):
    return c["dir"] / "out.unetseg"


def _p(c, model, image, *extra):
    return ["predict", c[model], c[image], "-o", _out(c), *extra]


def _t(c, image, labels, *extra):
    return ["train", c[image], c[labels], "-o", _mout(c), *TINY, *extra]


CLI_ERRORS = [
    ("labels-shape", lambda c: _t(c, "img", "lab_small"), r"labels shape .* does not match"),
    ("labels-one-class", lambda c: _t(c, "img", "lab_one", "--labels-mode", "sparse"),
     "single class"),
    ("no-labeled-pixel", lambda c: _t(c, "img", "lab_none", "--labels-mode", "sparse"),
     "no painted pixel"),
    ("labels-negative", lambda c: _t(c, "img", "lab_neg"), "labels must be >= 0"),
    ("labels-float", lambda c: _t(c, "img", "lab_float"), "integer values"),
    ("train-nan", lambda c: _t(c, "nan", "lab2d"), "NaN or infinite pixels"),
    ("predict-nan", lambda c: _p(c, "m1", "nan"), "NaN or infinite pixels"),
    ("predict-rgb-1ch-model", lambda c: _p(c, "m1", "rgb"), r"looks like RGB"),
    ("predict-rgb-channel-axis-1ch-model", lambda c: _p(c, "m1", "rgb", "--channel-axis", "-1"),
     r"3 channel\(s\).*in_channels=1"),
    ("predict-gray-3ch-model", lambda c: _p(c, "m3", "img"), r"in_channels=3"),
    ("train-rgb-2d-labels", lambda c: _t(c, "rgb", "lab2d"), "pass --channel-axis"),
    ("train-4d", lambda c: _t(c, "img4d", "lab4d"), r"\(2, 2, 32, 32\)"),
    ("predict-4d", lambda c: _p(c, "m1", "img4d"), r"\(Y, X\) or \(Z, Y, X\)"),
    ("predict-empty-stack", lambda c: _p(c, "m1", "img", "--slices", "1:1"),
     "--slices 1:1 selects no slice of a stack of 2"),
    ("model-truncated", lambda c: _p(c, "trunc", "img"), "not a readable napari-unetseg model"),
    ("model-newer-version", lambda c: _p(c, "newer", "img"), "version 99.*upgrade"),
    ("model-is-a-pickle", lambda c: _p(c, "pickle", "img"), "pickle.unetseg is not a readable"),
    ("model-path-is-dir", lambda c: _p(c, "folder", "img"), "folder.unetseg is a directory"),
    ("resume-other-channels", lambda c: _t(c, "img", "lab", "--resume", c["m3"],
                                           "--labels-mode", "sparse"),
     r"image has 1 channel\(s\) but model_config.in_channels is 3"),
    ("train-init-missing", lambda c: _t(c, "img", "lab", "--init", c["dir"] / "nope.unetseg"),
     r"--init: .*nope.unetseg does not exist"),
    ("train-init-with-width", lambda c: _t(c, "img", "lab", "--init", c["m1"], "--width", "8"),
     r"--(depth|width) does not apply with --init"),
    ("predict-output-is-dir", lambda c: ["predict", c["m1"], c["img"], "-o", c["folder"]],
     "folder.unetseg is a directory"),
    ("train-output-folder-missing", lambda c: ["train", c["img"], c["lab"], "-o",
                                               c["dir"] / "no" / "m.unetseg", *TINY],
     r"folder .*no does not exist"),
    ("train-device-cuda7", lambda c: [*_t(c, "img", "lab")[:-2], "--device", "cuda:7"],
     "device 'cuda:7' is not available"),
    ("predict-device-tpu", lambda c: _p(c, "m1", "img", "--device", "tpu"), "'tpu'"),
    ("predict-device-empty", lambda c: _p(c, "m1", "img", "--device", ""), "got ''"),
    ("predict-tile-too-small", lambda c: _p(c, "m1", "img", "--tile", "4"), "tile must be.*>= 8"),
    ("predict-fifo-output", lambda c: ["predict", c["m1"], c["img"], "-o", _fifo(c),
                                       "--overwrite"], "is a FIFO .*refusing to write over it"),
    ("predict-output-is-the-image", lambda c: ["predict", c["m1"], c["img"], "-o", c["img"],
                                               "--overwrite"], "is the same file as the input"),
    ("predict-class-with-labels", lambda c: _p(c, "m1", "img", "--class", "1"),
     "--class applies to --output probabilities or instances"),
    ("predict-level-on-unet", lambda c: _p(c, "m1", "img", "--level", "2"),
     "--level applies to UNet\\+\\+ models"),
    ("predict-slices-reversed", lambda c: _p(c, "m1", "img", "--slices", "1:0"),
     "reversed range"),
    ("train-float32-3e38", lambda c: _t(c, "f_3e38", "lab2d"), "cannot be normalised"),
]


@pytest.mark.parametrize(("argv", "pattern"), [pytest.param(*c[1:], id=c[0])
                                               for c in CLI_ERRORS])
def test_cli_refuses_with_one_line(ctx, capsys, monkeypatch, argv, pattern):
    def no_training(*a, **k):
        raise AssertionError("training started although the input is bad")

    if "no does not exist" in pattern:  # an unwritable output is found before training
        monkeypatch.setattr(training, "train", no_training)
    rc, out, err = _run_cli(capsys, argv(ctx))
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert "Traceback" not in err and len(lines) == 1, err
    assert re.match(r"napari-unetseg (train|predict): error: ", lines[0])
    assert re.search(pattern, lines[0]), lines[0]
    assert out == "" and not _out(ctx).exists() and not _mout(ctx).exists()


@pytest.mark.parametrize("image", ["tiny", "u16", "f_huge", "const"])
def test_cli_predicts_odd_images(ctx, capsys, image):
    out = ctx["dir"] / f"pred_{image}.tif"
    rc, stdout, err = _run_cli(capsys, ["predict", ctx["m1"], ctx[image], "-o", out, "--tile",
                                        "32", "--device", "cpu"])
    assert rc == 0, err
    assert json.loads(stdout)["shape"] == list(tifffile.imread(ctx[image]).shape)
    assert np.isin(tifffile.imread(out), [0, 1]).all()


# ---------------------------------------------------------------------------- permissions


def test_no_write_permission_is_a_clean_error(ctx, monkeypatch, capsys):
    """Root ignores chmod, so the refusal is simulated where the OS would give it."""
    model = build_model(MC)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: mode != os.W_OK and real_access(
        p, mode, **k))
    with pytest.raises(PermissionError, match=f"no permission to write in {ctx['dir']}"):
        save_model(ctx["dir"] / "p.unetseg", model, normalization=Normalization())
    monkeypatch.setattr(training, "train", lambda *a, **k: pytest.fail("trained anyway"))
    rc, out, err = _run_cli(capsys, _t(ctx, "img", "lab"))
    assert rc == 2 and "no permission to write in" in err and len(err.splitlines()) == 1
    assert not any(p.name.endswith(".tmp") for p in ctx["dir"].iterdir())


def test_permission_denied_by_the_os_names_the_folder(ctx, monkeypatch):
    real_open = os.open

    def denied(path, flags, *a, **k):
        if flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(PermissionError, match=f"no permission to write in {ctx['dir']}"):
        write_tif(ctx["dir"] / "p.tif", np.zeros((4, 4), np.uint8))
    assert not (ctx["dir"] / "p.tif").exists()


# ---------------------------------------------------------------------------- disk full


def test_disk_full_while_saving_keeps_the_old_model(ctx, monkeypatch, capsys):
    target = ctx["dir"] / "keep.unetseg"
    target.write_bytes(ctx["m1"].read_bytes())
    before = target.read_bytes()
    real, calls = zipfile.ZipFile.writestr, []

    def full(self, *a, **k):  # the disk fills up after a few tensors
        calls.append(1)
        if len(calls) > 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *a, **k)

    monkeypatch.setattr(zipfile.ZipFile, "writestr", full)
    rc, out, err = _run_cli(capsys, ["train", ctx["img"], ctx["lab"], "-o", target, *TINY,
                                     "--overwrite"])
    assert rc == 2 and "No space left on device" in err.strip().splitlines()[-1]
    assert "Traceback" not in err and out == ""
    assert target.read_bytes() == before
    assert sorted(p.name for p in ctx["dir"].iterdir() if ".keep" in p.name) == []


def test_disk_full_while_writing_a_tif_keeps_the_old_one(ctx, monkeypatch):
    target = ctx["dir"] / "keep.tif"
    target.write_bytes(ctx["img"].read_bytes())

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", full)
    with pytest.raises(OSError, match="No space left") as err:
        write_tif(target, np.zeros((4, 4), np.uint8), overwrite=True)
    assert err.value.errno == errno.ENOSPC
    assert target.read_bytes() == ctx["img"].read_bytes()
    assert not [p for p in ctx["dir"].iterdir() if p.name.startswith(".keep.tif")]


# ---------------------------------------------------------------------------- GPU memory


def _oom_on_batches_above(limit: int, monkeypatch) -> list[int]:
    """Make the predictor raise CUDA OOM for batches larger than ``limit``; returns sizes."""
    sizes: list[int] = []
    real = inference.make_predictor

    def make(*a, **k):
        fn = real(*a, **k)

        def run(x):
            sizes.append(len(x))
            if len(x) > limit:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
            return fn(x)

        return run

    monkeypatch.setattr(inference, "make_predictor", make)
    return sizes


def test_out_of_gpu_memory_retries_with_smaller_batches(monkeypatch):
    image = _img((2, 64, 64))
    model = build_model(MC).eval()
    cfg = InferenceConfig(tile=16, overlap=0.0, batch_size=8, device="cpu")
    ref = predict(model, image, normalization=Normalization(), config=cfg)
    sizes = _oom_on_batches_above(2, monkeypatch)
    res = predict(model, image, normalization=Normalization(), config=cfg)
    assert sizes[:3] == [8, 4, 2]  # halved until it fits, then kept small
    assert max(sizes[3:]) <= 2
    np.testing.assert_array_equal(res.labels, ref.labels)
    np.testing.assert_allclose(res.probabilities, ref.probabilities, atol=1e-6)


def test_out_of_gpu_memory_on_one_tile_is_a_clear_error(monkeypatch, ctx, capsys):
    _oom_on_batches_above(0, monkeypatch)
    with pytest.raises(RuntimeError, match="out of GPU memory on a single tile.*smaller") as e:
        _predict(_img())
    assert type(e.value) is RuntimeError
    rc, out, err = _run_cli(capsys, _p(ctx, "m1", "img", "--device", "cpu"))
    assert rc == 2 and "Traceback" not in err and not _out(ctx).exists()
    assert "out of memory" in err.splitlines()[-1] and "--tile" in err.splitlines()[-1]


def test_out_of_gpu_memory_while_training_is_one_cli_line(ctx, monkeypatch, capsys):
    def oom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB\n"
                                          "GPU 0 has a total capacity of 79 GiB")

    monkeypatch.setattr(training, "_step", oom)
    rc, out, err = _run_cli(capsys, _t(ctx, "img", "lab"))
    last = err.strip().splitlines()[-1]
    assert rc == 2 and "Traceback" not in err and out == ""
    assert last.startswith("napari-unetseg train: error: out of memory") and "--batch-size" in last
    assert not _mout(ctx).exists()
