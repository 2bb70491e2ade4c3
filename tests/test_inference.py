"""Tiled inference: tiled == untiled, stop/resume semantics, lazy stacks, OOM retry, inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from napari_unetseg import inference
from napari_unetseg.config import ModelConfig
from napari_unetseg.inference import (
    InferenceConfig,
    ProgressEvent,
    SegmentResult,
    _prepare,
    drain,
    instances_from_probs,
    predict,
    resolve_device,
    segment,
)
from napari_unetseg.models import build_model
from napari_unetseg.normalize import Normalization
from napari_unetseg.predictor import tile_geometry
from napari_unetseg.tiling import plan_tiles

IDENTITY = Normalization(0.0, 1.0)
CPU = {"device": "cpu"}


def _img(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    opts = {"depth": 2, "width": 4, "classes": 3, **kw}
    return build_model(ModelConfig(**opts)).eval()


class ValidStack(nn.Module):
    """Stand-in unpadded network: two 3x3 valid convolutions (margin 2), no pooling."""

    margin = 2

    def __init__(self, channels=1, classes=3):
        super().__init__()
        self.config = ModelConfig(depth=1, in_channels=channels, classes=classes, padding="valid")
        torch.manual_seed(1)
        self.net = nn.Sequential(nn.Conv2d(channels, 6, 3), nn.Tanh(), nn.Conv2d(6, classes, 3))

    def valid_input_size(self, n):
        return n

    def forward(self, x):
        return self.net(x)


def untiled(model, img, level=None):
    """Softmax of one forward pass over the whole (C, H, W) image, mirror-padded by margin."""
    m, (h, w) = model.margin, img.shape[-2:]
    if m:
        hh, ww = model.valid_input_size(h + 2 * m), model.valid_input_size(w + 2 * m)
        img = np.pad(img, ((0, 0), (m, hh - h - m), (m, ww - w - m)), mode="reflect")
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(img))[None]
        logits = model(x) if level is None else model(x, level=level)
    return torch.softmax(logits, 1)[0, :, :h, :w].numpy()


@pytest.mark.parametrize("overlap", [0.0, 0.3])
def test_valid_standin_tiled_equals_untiled(overlap):
    model, img = ValidStack(), _img((1, 61, 47))
    cfg = InferenceConfig(tile=20, overlap=overlap, batch_size=3, **CPU)
    res = predict(model, img[0], normalization=IDENTITY, config=cfg)
    assert res.probabilities.shape == (3, 61, 47) and res.labels.shape == (61, 47)
    np.testing.assert_allclose(res.probabilities, untiled(model, img), atol=1e-5)


@pytest.mark.parametrize("overlap", [0.0, 0.25])
def test_valid_unet_tiled_equals_untiled(overlap):
    model = _model(padding="valid")  # depth 2: margin 20, origins on the 4-pixel pooling grid
    assert model.margin == 20
    img = _img((1, 70, 45))
    cfg = InferenceConfig(tile=60, overlap=overlap, batch_size=2, **CPU)
    res = predict(model, img[0], normalization=IDENTITY, config=cfg)
    ref = untiled(model, img)
    assert np.abs(res.probabilities - ref).max() < 1e-4
    np.testing.assert_array_equal(res.labels, ref.argmax(0))


@pytest.mark.parametrize("arch", ["unet", "resunet", "unetpp"])
def test_same_models_tiled_close_to_untiled(arch):
    """Zero-padded convolutions differ near tile borders; the cosine blend hides the seams.

    Measured (depth 2, width 4, 96x80, tile 48, overlap 0.25): max |dp| 0.001-0.003 with
    the cosine blend versus 0.004-0.057 with flat weights.
    """
    model, img = _model(arch=arch), _img((1, 96, 80))
    ref = untiled(model, img)
    errs = {}
    for blend in ("cosine", "constant"):
        cfg = InferenceConfig(tile=48, overlap=0.25, halo=0, batch_size=4, blend=blend, **CPU)
        res = predict(model, img[0], normalization=IDENTITY, config=cfg)
        errs[blend] = np.abs(res.probabilities - ref)
    assert errs["cosine"].mean() < 1e-3 and errs["cosine"].max() < 0.01
    assert errs["cosine"].max() < errs["constant"].max() / 2


def test_single_tile_is_exact_and_unetpp_level_is_passed():
    model, img = _model(arch="unetpp", depth=3), _img((1, 40, 40))
    for level in (1, 2, "accurate"):
        cfg = InferenceConfig(tile=64, level=level, halo=0, **CPU)
        res = predict(model, img[0], normalization=IDENTITY, config=cfg)
        np.testing.assert_allclose(res.probabilities, untiled(model, img, level), atol=1e-5)
    lv1 = predict(model, img[0], normalization=IDENTITY, config=InferenceConfig(level=1, **CPU))
    lv3 = predict(model, img[0], normalization=IDENTITY, config=InferenceConfig(level=3, **CPU))
    assert not np.allclose(lv1.probabilities, lv3.probabilities)
    with pytest.raises(ValueError, match="1..3"):
        predict(model, img[0], normalization=IDENTITY, config=InferenceConfig(level=4, **CPU))
    with pytest.raises(ValueError, match="only for UNet\\+\\+"):
        predict(_model(), img[0], normalization=IDENTITY, config=InferenceConfig(level=1, **CPU))


def test_flip_tta_averages_flipped_predictions():
    class Skew(nn.Module):  # not flip-equivariant: an asymmetric kernel
        margin = 0

        def __init__(self):
            super().__init__()
            self.config = ModelConfig(depth=2, classes=2)
            self.conv = nn.Conv2d(1, 2, 3, padding=1)
            torch.manual_seed(0)
            nn.init.normal_(self.conv.weight)

        def forward(self, x):
            return self.conv(x)

    model, img = Skew(), _img((1, 32, 32))
    x = torch.from_numpy(img)[None]
    with torch.no_grad():
        probs = [torch.softmax(model(x), 1)]
        probs += [torch.softmax(model(x.flip(d)), 1).flip(d) for d in ((-1,), (-2,), (-2, -1))]
        want = (sum(probs) / 4)[0].numpy()
    cfg = InferenceConfig(tta=True, halo=0, **CPU)  # whole image, zero-padded, as ``want``
    res = predict(model, img[0], normalization=IDENTITY, config=cfg)
    np.testing.assert_allclose(res.probabilities, want, atol=1e-5)
    plain = predict(model, img[0], normalization=IDENTITY, config=InferenceConfig(halo=0, **CPU))
    assert not np.allclose(plain.probabilities, want, atol=1e-3)


def test_stack_outputs_dtypes_and_slices():
    model, stack = _model(), _img((4, 30, 34))
    cfg = InferenceConfig(tile=32, dtype="float16", **CPU)
    res = predict(model, stack, normalization=IDENTITY, config=cfg, slices=[3, 1])
    assert isinstance(res, SegmentResult) and res.seconds > 0
    assert res.probabilities.shape == (2, 3, 30, 34) and res.probabilities.dtype == np.float16
    assert res.labels.shape == (2, 30, 34) and res.labels.dtype == np.uint8
    np.testing.assert_array_equal(res.labels, res.probabilities.argmax(1))
    np.testing.assert_allclose(res.probabilities.sum(1), 1, atol=2e-3)
    one = predict(model, stack[3], normalization=IDENTITY, config=cfg)
    np.testing.assert_array_equal(one.probabilities, res.probabilities[0])
    lab = predict(model, stack, normalization=IDENTITY, config=cfg, return_probabilities=False)
    assert lab.probabilities is None and lab.labels.shape == (4, 30, 34)


def test_normalization_and_channel_axis_are_applied():
    model = _model(in_channels=2)
    yxc = _img((24, 40, 2)) * 50 + 100
    norm, cfg = Normalization(100.0, 150.0), InferenceConfig(halo=0, **CPU)
    a = predict(model, yxc, normalization=norm, channel_axis=-1, config=cfg)
    cyx = np.moveaxis(yxc, -1, 0)
    b = predict(model, cyx, normalization=norm, channel_axis=0, config=cfg)
    np.testing.assert_array_equal(a.probabilities, b.probabilities)
    ref = untiled(model, (cyx - 100) / 50)
    np.testing.assert_allclose(a.probabilities, ref, atol=1e-5)


def test_early_close_leaves_out_untouched_beyond_finished_slices():
    model, stack = _model(), _img((3, 40, 40))
    probs = np.full((3, 3, 40, 40), -1, np.float32)
    labels = np.full((3, 40, 40), 255, np.uint8)
    cfg = InferenceConfig(tile=16, overlap=0.0, halo=0, batch_size=2, **CPU)
    gen = segment(model, stack, normalization=IDENTITY, config=cfg, out=(probs, labels))
    model.train()  # segment must run in eval mode and restore the caller's mode
    events = []
    for ev in gen:
        events.append(ev)
        if ev.slice_index == 1:
            break
    gen.close()
    assert all(isinstance(e, ProgressEvent) for e in events) and events[0].total == 27
    assert [e.done for e in events] == [2, 4, 6, 8, 9, 11]
    assert model.training
    assert probs[0].min() >= 0 and labels[0].max() < 3  # slice 0 finished
    assert np.all(probs[1:] == -1) and np.all(labels[1:] == 255)  # the rest untouched
    full = drain(segment(model, stack, normalization=IDENTITY, config=cfg, out=(probs, labels)))
    assert full.probabilities is probs and np.all(probs[1:] >= 0)


def test_lazy_stack_is_read_one_slice_at_a_time():
    class Lazy:  # zarr-like: records every read
        def __init__(self, data):
            self.data, self.shape, self.dtype, self.reads = data, data.shape, data.dtype, []

        def __getitem__(self, key):
            self.reads.append(key)
            return self.data[key]

    model, stack = _model(), _img((3, 20, 24))
    lazy = Lazy(stack)
    res = predict(model, lazy, normalization=IDENTITY, config=InferenceConfig(**CPU))
    assert len(lazy.reads) == 3 and all(isinstance(k[0], int) for k in lazy.reads)
    ref = predict(model, stack, normalization=IDENTITY, config=InferenceConfig(**CPU))
    np.testing.assert_array_equal(res.probabilities, ref.probabilities)


def test_dask_input():
    da = pytest.importorskip("dask.array")
    model, stack = _model(), _img((2, 33, 21))
    lazy = da.from_array(stack, chunks=(1, 33, 21))
    res = predict(model, lazy, normalization=IDENTITY, config=InferenceConfig(**CPU))
    ref = predict(model, stack, normalization=IDENTITY, config=InferenceConfig(**CPU))
    np.testing.assert_array_equal(res.labels, ref.labels)


def test_cuda_oom_halves_the_batch_and_retries():
    base, seen = _model(), []

    class OOMOnce(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.config, self.raised = base, base.config, False

        def forward(self, x):
            seen.append(x.shape[0])
            if x.shape[0] > 1 and not self.raised:
                self.raised = True
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return self.inner(x)

    img = _img((48, 48))
    cfg = InferenceConfig(tile=16, overlap=0.0, batch_size=4, **CPU)
    res = predict(OOMOnce(), img, normalization=IDENTITY, config=cfg)
    assert seen[:3] == [4, 2, 2] and max(seen[3:]) == 2
    ref = predict(base, img, normalization=IDENTITY, config=cfg)
    np.testing.assert_allclose(res.probabilities, ref.probabilities, atol=1e-6)

    class AlwaysOOM(OOMOnce):
        def forward(self, x):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    with pytest.raises(RuntimeError, match="single tile"):
        predict(AlwaysOOM(), img, normalization=IDENTITY, config=cfg)


def test_small_images_are_mirror_padded():
    img = _img((20, 20))
    for model in (_model(depth=4), _model(padding="valid")):
        res = predict(model, img, normalization=IDENTITY, config=InferenceConfig(**CPU))
        assert res.probabilities.shape == (3, 20, 20)
        assert np.isfinite(res.probabilities).all()
    res = predict(_model(), _img((1, 5)), normalization=IDENTITY, config=InferenceConfig(**CPU))
    assert res.labels.shape == (1, 5)


def test_bad_inputs_raise():
    model = _model()
    run = lambda img, **kw: predict(  # noqa: E731
        model, img, normalization=IDENTITY, config=InferenceConfig(**CPU), **kw
    )
    bad = _img((2, 20, 20))
    bad[1, 3, 4] = np.nan
    with pytest.raises(ValueError, match="slice 1 contains NaN"):
        run(bad)
    with pytest.raises(ValueError, match=r"3 channel\(s\).*in_channels=1"):
        run(_img((20, 20, 3)), channel_axis=2)
    with pytest.raises(ValueError, match="empty"):
        run(np.zeros((0, 20, 20), np.float32))
    with pytest.raises(ValueError, match="\\(Y, X\\) or \\(Z, Y, X\\)"):
        run(_img((2, 2, 20, 20)))
    with pytest.raises(ValueError, match="out of range"):
        run(_img((2, 20, 20)), slices=[2])
    with pytest.raises(ValueError, match="slices is empty"):
        run(_img((2, 20, 20)), slices=[])
    with pytest.raises(ValueError, match="out labels must have shape"):
        run(_img((2, 20, 20)), out=(None, np.zeros((3, 20, 20), np.uint8)))
    with pytest.raises(TypeError, match="numeric"):
        run(np.array([["a"] * 4] * 4))
    with pytest.raises(TypeError, match="ModelConfig"):
        drain(segment(nn.Conv2d(1, 2, 1), _img((8, 8)), normalization=IDENTITY))


@pytest.mark.parametrize(
    ("field", "value", "err"),
    [
        ("tile", 4, ValueError),
        ("tile", 64.0, TypeError),
        ("overlap", 1.0, ValueError),
        ("overlap", -0.1, ValueError),
        ("batch_size", 0, ValueError),
        ("batch_size", "big", ValueError),
        ("device", "tpu", ValueError),
        ("tta", 1, TypeError),
        ("level", 0, ValueError),
        ("level", "all", ValueError),
        ("dtype", "float64", ValueError),
        ("amp", "int8", ValueError),
        ("blend", "hann", ValueError),
    ],
)
def test_config_validation(field, value, err):
    with pytest.raises(err, match=field):
        InferenceConfig(**{field: value})


def test_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="available: cpu"):
            resolve_device("cuda:0")
        with pytest.raises(ValueError, match="CUDA"):
            predict(_model(), _img((16, 16)), normalization=IDENTITY,
                    config=InferenceConfig(amp="bf16", **CPU))  # fmt: skip


def test_instances_from_probs():
    yy, xx = np.mgrid[:40, :60]
    a = (yy - 20) ** 2 + (xx - 15) ** 2 < 81
    b = (yy - 20) ** 2 + (xx - 31) ** 2 < 81  # touches a
    c = (yy - 5) ** 2 + (xx - 52) ** 2 < 2  # tiny
    prob = np.where(a | b | c, 0.9, 0.1)
    assert instances_from_probs(prob).max() == 2
    assert instances_from_probs(prob, min_size=10).max() == 1
    split = instances_from_probs(prob, split_touching=True, min_size=10)
    assert split.max() == 2 and split.dtype == np.int32
    assert split[20, 15] != split[20, 31] and split[20, 15] > 0
    with pytest.raises(ValueError, match="threshold"):
        instances_from_probs(prob, 1.5)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
def test_cuda_matches_cpu_and_auto_batch_and_amp(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # compare in true fp32
    model, stack = _model(depth=3, width=8), _img((2, 150, 130))
    kw = {"normalization": IDENTITY}
    tiling = {"tile": 64, "halo": 0, "overlap": 0.125}  # "auto" differs per device
    cpu = predict(model, stack, config=InferenceConfig(**tiling, **CPU), **kw)
    gpu = predict(model, stack, config=InferenceConfig(**tiling, device="cuda", amp="off"), **kw)
    assert next(model.parameters()).device.type == "cuda"
    np.testing.assert_allclose(gpu.probabilities, cpu.probabilities, atol=1e-4)
    bf16 = predict(model, stack, config=InferenceConfig(**tiling, device="cuda", amp="bf16"), **kw)
    assert np.abs(bf16.probabilities - cpu.probabilities).mean() < 0.02
    assert np.mean(bf16.labels == cpu.labels) > 0.95


@cuda
def test_cuda_auto_tiling_batches_slices_and_copies_back_asynchronously(monkeypatch):
    """uint8 upload, halo tiles, slices sharing a batch, pinned copies written one group late."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    model, norm = _model(depth=3, width=8), Normalization(10.0, 240.0)
    stack = np.random.default_rng(5).integers(0, 256, (5, 100, 90), dtype=np.uint8)
    job = _prepare(model, stack, InferenceConfig(device="cuda"), None, None)
    assert job.halo == 24 and job.plan.tile == (152, 144)  # one tile per slice
    probs = np.full((5, 3, 100, 90), -1, np.float32)
    labels = np.full((5, 100, 90), 255, np.uint8)
    cfg = InferenceConfig(device="cuda", amp="off", batch_size=2)
    res = predict(model, stack, normalization=norm, config=cfg, out=(probs, labels))
    assert res.probabilities is probs and probs.min() >= 0 and labels.max() < 3
    same = InferenceConfig(tile=1024, halo=24, overlap=0.0, **CPU)
    cpu = predict(model.cpu(), stack, normalization=norm, config=same)
    np.testing.assert_allclose(probs, cpu.probabilities, atol=1e-4)
    assert np.mean(labels == cpu.labels) > 0.999


@cuda
def test_cuda_valid_unet_tiled_equals_untiled(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    model, img = _model(padding="valid"), _img((1, 90, 77))
    cfg = InferenceConfig(tile=64, overlap=0.25, device="cuda", amp="off")
    res = predict(model, img[0], normalization=IDENTITY, config=cfg)
    assert np.abs(res.probabilities - untiled(model.cpu(), img)).max() < 1e-4


def test_class_lut_maps_classes_to_training_values():
    from napari_unetseg.postprocess import class_lut

    np.testing.assert_array_equal(class_lut([0, 255])[np.array([1, 0, 1])], [255, 0, 255])
    assert class_lut([0, 255]).dtype == np.uint8
    assert class_lut([1, 2, 300]).dtype == np.uint16
    assert class_lut([-3, 7]).dtype == np.int32
    np.testing.assert_array_equal(class_lut([9], classes=1), [0, 9])  # sigmoid: 0 / 1
    np.testing.assert_array_equal(class_lut([], classes=3), [0, 1, 2])
    with pytest.raises(ValueError, match="3 classes but 2 class values"):
        class_lut([0, 1], classes=3)


# ---------------------------------------------------------------------------- speed levers


def _mirror_untiled(model, img, halo):
    """One pass over the image mirror-padded by ``halo``, cropped back (what halo tiles see)."""
    pad = np.pad(img, ((0, 0), (halo, halo), (halo, halo)), mode="reflect")
    return untiled(model, pad)[:, halo:-halo, halo:-halo]


@pytest.mark.parametrize("arch", ["unet", "unetpp"])
def test_halo_tiles_equal_one_pass_over_the_mirror_padded_image(arch):
    """Overlap-tile with a halo wider than the receptive field: abutting tiles, no seams."""
    model, img = _model(arch=arch), _img((1, 100, 84))
    cfg = InferenceConfig(tile=96, halo=32, batch_size=3, **CPU)
    job = _prepare(model, img[0], cfg, None, None)
    assert job.plan.n_tiles >= 4 and job.halo == 32 and job.plan.overlap == (0, 0)
    res = predict(model, img[0], normalization=IDENTITY, config=cfg)
    ref = _mirror_untiled(model, img, 32)
    np.testing.assert_allclose(res.probabilities, ref, atol=1e-5)
    # a halo too small for the receptive field leaves seams
    small = predict(model, img[0], normalization=IDENTITY,
                    config=InferenceConfig(tile=96, halo=4, batch_size=3, **CPU))  # fmt: skip
    assert np.abs(small.probabilities - ref).max() > 1e-5  # the 32-px halo: ~1e-7


def test_default_tiling_is_seamless():
    """Issue 11: the default tiling gives the same output whatever the tile size, with the
    image border mirror-padded as in the paper (a depth-2 U-Net's 20-px receptive field is
    inside the auto halo, so it is exact); the old default (no halo, blended) is not."""
    model, img = _model(), _img((1, 100, 84), seed=4)
    small = predict(model, img[0], normalization=IDENTITY,
                    config=InferenceConfig(tile=64, **CPU))
    large = predict(model, img[0], normalization=IDENTITY,
                    config=InferenceConfig(tile=128, **CPU))
    np.testing.assert_allclose(small.probabilities, large.probabilities, atol=1e-5)
    # 2e-6: the old CUDA default's 12-px halo leaves 5e-6 on this random network, 20 px 6e-8
    np.testing.assert_allclose(large.probabilities, _mirror_untiled(model, img, 20), atol=2e-6)
    blended = [predict(model, img[0], normalization=IDENTITY, config=InferenceConfig(
        tile=t, halo=0, overlap=0.125, **CPU)).probabilities for t in (64, 128)]
    assert np.abs(blended[0] - blended[1]).max() > 1e-3


def test_auto_tiling_per_device_and_balanced_tiles():
    model = build_model(ModelConfig(depth=4, width=2, classes=2))
    cfg, cuda = model.config, torch.device("cuda")  # resolving settings needs no GPU
    geo = tile_geometry(model, cfg, (512, 512), cuda)  # a 512 slice: one tile with the halo
    assert geo.tile == (672, 672) and (geo.halo, geo.margin, geo.overlap) == (80, 80, 0.0)
    geo = tile_geometry(model, cfg, (2048, 1500), cuda)
    plan = plan_tiles((2048, 1500), geo.tile, overlap=0.0, margin=geo.margin, align=16)
    assert (len(plan.ys), len(plan.xs)) == (3, 2) and max(geo.tile) <= 1024
    covered = [n * (t - 2 * geo.margin) for n, t in zip((3, 2), geo.tile, strict=True)]
    assert covered[0] - 2048 < 3 * 16 and covered[1] - 1500 < 2 * 16  # little waste
    # CPU too: seamless by default, the same 80-px halo (tiles up to 768 px)
    job = _prepare(model, np.zeros((512, 512), np.uint8), InferenceConfig(**CPU), None, None)
    assert job.plan.tile == (672, 672) and job.halo == 80 and job.plan.overlap == (0, 0)
    assert tile_geometry(model, cfg, (2048, 2048), torch.device("cpu")).tile[0] <= 768
    # the blended alternative stays: no halo, a 1/8 overlap
    job = _prepare(model, np.zeros((512, 512)), InferenceConfig(halo=0, tile=384, **CPU),
                   None, None)
    assert job.plan.tile == (288, 288) and job.halo == 0 and job.plan.overlap == (36, 36)
    assert tile_geometry(_model(), _model().config, (64, 64), cuda).halo == 20  # depth 2
    # on a small tile the auto halo leaves a quarter of it as output
    assert tile_geometry(_model(), _model().config, (64, 64), cuda, tile=32).halo == 12
    with pytest.raises(ValueError, match="halo"):
        _prepare(_model(padding="valid"), np.zeros((64, 64)), InferenceConfig(halo=8), None, None)
    with pytest.raises(ValueError, match="tile"):
        _prepare(_model(), np.zeros((64, 64)), InferenceConfig(tile=16, halo=8), None, None)
    for name, bad in (("halo", -1), ("halo", 2.5), ("tile", 4), ("overlap", 1.0)):
        with pytest.raises((TypeError, ValueError), match=name):
            InferenceConfig(**{name: bad})
    with pytest.raises(TypeError, match="tile"):
        InferenceConfig(tile="big")


def test_uint8_crosses_to_the_device_as_uint8_and_is_normalised_there(monkeypatch):
    model, norm = _model(), Normalization(20.0, 220.0)
    img = np.random.default_rng(3).integers(0, 256, (2, 40, 36), dtype=np.uint8)
    seen = []
    real = inference.iter_tiled

    def spy(arr, *a, **k):
        seen.append((arr.dtype, k["prepare"] is not None))
        return real(arr, *a, **k)

    monkeypatch.setattr(inference, "iter_tiled", spy)
    cfg = InferenceConfig(tile=32, **CPU)
    a = predict(model, img, normalization=norm, config=cfg)
    assert seen and all(s == (np.uint8, True) for s in seen)
    as_float = (img.astype(np.float32) - 20) / 200  # the host path (a plain callable)
    b = predict(model, as_float, normalization=lambda x: x, config=cfg)
    assert seen[-1] == (np.float32, False)
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-6)
    assert img.min() == 0 and img.max() == 255 and img.dtype == np.uint8  # input untouched


def test_small_slices_share_a_batch_and_the_model_is_left_as_it_was(monkeypatch):
    model, stack = _model(), _img((5, 32, 32))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sizes = []
    real = inference.make_predictor

    def make(*a, **k):
        fn = real(*a, **k)
        return lambda x: sizes.append(len(x)) or fn(x)

    monkeypatch.setattr(inference, "make_predictor", make)
    cfg = InferenceConfig(tile=64, halo=8, batch_size=4, **CPU)
    res = predict(model, stack, normalization=IDENTITY, config=cfg)
    assert sizes == [4, 1]  # one tile per slice: slices 0-3 in one pass, slice 4 in another
    for z in range(5):
        one = predict(model.eval(), stack[z], normalization=IDENTITY, config=cfg)
        np.testing.assert_allclose(res.probabilities[z], one.probabilities, atol=1e-5)
        np.testing.assert_array_equal(res.labels[z], one.labels)
        model.train()
    assert model.training and all(
        torch.equal(v, before[k]) for k, v in model.state_dict().items()
    )  # BatchNorm was folded into a copy; running statistics not updated
    events = list(segment(model, stack, normalization=IDENTITY, config=cfg))
    assert [(e.done, e.slice_index) for e in events] == [(4, 3), (5, 4)]
