"""Blockwise volume segmentation: equals in-memory inference, bounded reads, resume, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

zarr = pytest.importorskip("zarr")

from napari_unetseg import blockwise  # noqa: E402
from napari_unetseg.blockwise import (  # noqa: E402
    BlockEvent,
    VolumeResult,
    load_counts,
    predict_volume,
    segment_volume,
)
from napari_unetseg.config import ModelConfig  # noqa: E402
from napari_unetseg.inference import InferenceConfig, _prepare, predict  # noqa: E402
from napari_unetseg.io import SavedModel, save_model  # noqa: E402
from napari_unetseg.models import build_model  # noqa: E402
from napari_unetseg.normalize import Normalization  # noqa: E402

NORM = Normalization(20.0, 200.0)
CFG = InferenceConfig(tile=64, device="cpu")
BLOCK = (2, 64, 80)  # blocks straddle tiles, slabs straddle nothing (3 slices -> 2 + 1)


def _saved(seed=0, values=None, **kw):
    """A tiny random network whose classes all occur (wide weights, so no class dominates)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(**{"depth": 2, "width": 4, "classes": 3, **kw})
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1:
                p.normal_(0.0, 0.4)
    values = values or ([1] if cfg.classes == 1 else list(range(cfg.classes)))
    return SavedModel(model, cfg, NORM, values)


class ValidNet(nn.Module):
    """Stand-in unpadded network (two valid 3x3 convolutions, margin 2), fast on CPU."""

    margin = 2

    def __init__(self):
        super().__init__()
        self.config = ModelConfig(depth=1, classes=2, padding="valid")
        torch.manual_seed(1)
        self.net = nn.Sequential(nn.Conv2d(1, 6, 3), nn.Tanh(), nn.Conv2d(6, 2, 3))

    def valid_input_size(self, n):
        return n

    def forward(self, x):
        return self.net(x)


@pytest.fixture
def volume():
    return np.random.default_rng(0).integers(0, 255, (3, 150, 170)).astype(np.uint8)


@pytest.fixture
def saved():
    return _saved()


class Counting:
    """An array that records every read (the slices asked for and the pixels returned)."""

    def __init__(self, data, fail_after=None):
        self.data, self.reads, self.fail_after = data, [], fail_after
        self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim

    def __getitem__(self, key):
        if self.fail_after is not None and len(self.reads) >= self.fail_after:
            raise RuntimeError("disk gone")
        out = self.data[key]
        self.reads.append(out.size)
        return out

    def __array__(self, *a, **k):
        raise AssertionError("the whole volume was loaded")


@pytest.mark.parametrize(
    ("kw", "dtype"),
    [({}, np.uint8), ({"arch": "unetpp"}, np.uint8), ({"classes": 1, "values": [255]}, np.uint8),
     ({"arch": "resunet", "values": [7, 20, 300]}, np.uint16)],
)
def test_equals_in_memory_predict(tmp_path, volume, kw, dtype):
    saved = _saved(**kw)
    # batches of one tile: a convolution's float rounding can depend on the batch it is in
    cfg = InferenceConfig(tile=64, device="cpu", dtype="float16", batch_size=1)
    ref = predict(saved.model, volume, normalization=NORM, config=cfg)
    assert len(np.unique(ref.labels)) >= 2
    res = predict_volume(saved, volume, tmp_path / "o.zarr", block=BLOCK, config=cfg,
                         probabilities=True)
    out = zarr.open_group(tmp_path / "o.zarr", mode="r")
    values = saved.class_values
    lut = np.asarray([0, *values] if len(values) == 1 else values)
    # identical to the whole-volume result (no seams), in the model's label values
    np.testing.assert_array_equal(out["labels"][...], lut[ref.labels])
    np.testing.assert_array_equal(out["probabilities"][...], ref.probabilities)
    assert out["labels"].chunks == BLOCK and out["labels"].dtype == dtype
    assert out.attrs["napari-unetseg-blockwise"]["class_values"] == lut.tolist()
    assert isinstance(res, VolumeResult) and res.blocks == res.computed == 2 * 3 * 3
    plan = _prepare(saved.model, volume, cfg, None, None).plan  # a tile reaches this far out
    reach = tuple(t - plan.margin - 1 for t in plan.tile)
    assert res.skipped == 0 and res.halo == reach and res.block == BLOCK


def test_valid_model_and_tta(tmp_path, volume):
    net = ValidNet()
    saved = SavedModel(net, net.config, NORM, [0, 1])
    cfg = InferenceConfig(tile=48, overlap=0.3, tta=True, device="cpu")
    ref = predict(net, volume, normalization=NORM, config=cfg)
    predict_volume(saved, volume, tmp_path / "o.zarr", block=(1, 40, 50), config=cfg)
    np.testing.assert_array_equal(zarr.open_group(tmp_path / "o.zarr")["labels"][...],
                                  ref.labels)


def test_batched_tiles_agree_to_rounding(tmp_path, volume, saved):
    cfg = InferenceConfig(tile=64, device="cpu", dtype="float16", batch_size=4)
    ref = predict(saved.model, volume, normalization=NORM, config=cfg)
    predict_volume(saved, volume, tmp_path / "o.zarr", block=BLOCK, config=cfg,
                   probabilities=True)
    out = zarr.open_group(tmp_path / "o.zarr")
    np.testing.assert_allclose(out["probabilities"][...], ref.probabilities, atol=1e-3)
    assert np.mean(out["labels"][...] != ref.labels) < 1e-4  # ties only


def test_reads_bounded_blocks_never_the_whole_volume(tmp_path, volume, saved):
    src, cfg = Counting(volume), InferenceConfig(tile=32, device="cpu")
    gen = segment_volume(saved, src, tmp_path / "o.zarr", block=BLOCK, config=cfg)
    events = list(gen)
    assert [e.done for e in events] == list(range(1, 19)) and all(e.computed for e in events)
    assert isinstance(events[0], BlockEvent) and events[0].total == 18
    assert len(src.reads) == 18  # one read per block: the block and its halo
    halo = 31
    assert max(src.reads) <= 2 * (64 + 2 * halo) * (80 + 2 * halo) < volume.size / 2


def test_zarr_paths_and_model_file_loaded_once(tmp_path, volume, saved):
    save_model(tmp_path / "m.unetseg", saved.model, normalization=NORM)
    src = zarr.open_array(tmp_path / "in.zarr", mode="w", shape=volume.shape,
                          chunks=(1, 64, 64), dtype=volume.dtype)
    src[...] = volume
    before = load_counts().get("local", 0)
    for out in ("a.zarr", "b.zarr"):
        predict_volume(str(tmp_path / "m.unetseg"), str(tmp_path / "in.zarr"),
                       str(tmp_path / out), block=BLOCK, config=CFG)
    assert load_counts()["local"] == before + 1
    ref = predict(saved.model, volume, normalization=NORM, config=CFG).labels
    np.testing.assert_array_equal(zarr.open_group(tmp_path / "b.zarr")["labels"][...], ref)


def test_stop_between_blocks_then_resume(tmp_path, volume, saved):
    store = tmp_path / "o.zarr"
    gen = segment_volume(saved, volume, store, block=BLOCK, config=CFG)
    for _ in range(3):
        next(gen)
    gen.close()  # stopped between blocks: three finished, kept
    assert int(zarr.open_group(store)["done"][...].sum()) == 3
    res = predict_volume(saved, volume, store, config=CFG)  # block comes from the store
    assert (res.computed, res.skipped, res.block) == (15, 3, BLOCK)
    ref = predict(saved.model, volume, normalization=NORM, config=CFG).labels
    np.testing.assert_array_equal(zarr.open_group(store)["labels"][...], ref)
    again = predict_volume(saved, volume, store, config=CFG)
    assert (again.computed, again.skipped) == (0, 18)
    redo = predict_volume(saved, volume, store, config=CFG, resume=False)
    assert redo.computed == 18


def test_block_interrupted_while_writing_is_redone(tmp_path, volume, saved, monkeypatch):
    store = tmp_path / "o.zarr"
    real, calls = blockwise._write, []

    def crash_on_fourth(group, idx, bounds, labels, probs):
        calls.append(idx)
        if len(calls) == 4:  # the data half written, the process dies before the marker
            (z0, z1), (y0, y1), (x0, x1) = bounds
            group["labels"][z0:z1, y0:y1, x0:x1] = 7
            raise KeyboardInterrupt
        real(group, idx, bounds, labels, probs)

    monkeypatch.setattr(blockwise, "_write", crash_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        predict_volume(saved, volume, store, block=BLOCK, config=CFG)
    monkeypatch.setattr(blockwise, "_write", real)
    done = zarr.open_group(store)["done"][...]
    assert int(done.sum()) == 3 and done[calls[3]] == 0
    res = predict_volume(saved, Counting(volume), store, config=CFG)
    assert (res.computed, res.skipped) == (15, 3)  # the interrupted block and the rest
    ref = predict(saved.model, volume, normalization=NORM, config=CFG).labels
    np.testing.assert_array_equal(zarr.open_group(store)["labels"][...], ref)


def test_read_error_keeps_finished_blocks(tmp_path, volume, saved):
    store = tmp_path / "o.zarr"
    with pytest.raises(RuntimeError, match="disk gone"):
        predict_volume(saved, Counting(volume, fail_after=5), store, block=BLOCK, config=CFG)
    assert int(zarr.open_group(store)["done"][...].sum()) == 5


def test_existing_output_of_other_shape_or_dtype(tmp_path, volume, saved):
    store = tmp_path / "o.zarr"
    predict_volume(saved, volume[:, :64, :80], store, block=BLOCK, config=CFG)
    with pytest.raises(ValueError, match=r"\(3, 64, 80\).*\(3, 150, 170\)"):
        predict_volume(saved, volume, store, block=BLOCK, config=CFG)
    other = tmp_path / "u16.zarr"
    g = zarr.open_group(other, mode="w")
    g.create_array("labels", shape=volume.shape, chunks=BLOCK, dtype="uint16")
    g.attrs[blockwise._FORMAT] = {"block": list(BLOCK), "fingerprint": None}
    with pytest.raises(ValueError, match="uint16.*uint8"):
        predict_volume(saved, volume, other, block=BLOCK, config=CFG, resume=False)


def test_other_model_settings_or_block_refused_on_resume(tmp_path, volume, saved):
    store = tmp_path / "o.zarr"
    predict_volume(saved, volume[:1], store, block=BLOCK, config=CFG)
    with pytest.raises(ValueError, match="another model"):
        predict_volume(_saved(seed=1), volume[:1], store, config=CFG)
    with pytest.raises(ValueError, match="another model"):
        predict_volume(saved, volume[:1], store, config=InferenceConfig(tile=32, device="cpu"))
    with pytest.raises(ValueError, match="blocks of"):
        predict_volume(saved, volume[:1], store, block=(1, 32, 32), config=CFG)
    res = predict_volume(_saved(seed=1), volume[:1], store, config=CFG, resume=False)
    assert res.computed == res.blocks


def test_auto_tiling_that_resolves_differently_is_refused_on_resume(tmp_path, volume, saved,
                                                                     monkeypatch):
    """Same "auto" settings, other tiling (as on another device): the blocks would not match."""
    from napari_unetseg import predictor

    store, auto = tmp_path / "o.zarr", InferenceConfig(device="cpu")
    predict_volume(saved, volume[:1], store, block=BLOCK, config=auto)
    assert predict_volume(saved, volume[:1], store, config=auto).skipped > 0
    monkeypatch.setattr(predictor, "AUTO_TILE", {"cuda": 1024, "other": 64})
    with pytest.raises(ValueError, match="another model"):
        predict_volume(saved, volume[:1], store, config=auto)


@pytest.mark.parametrize(
    ("args", "kwargs", "exc", "match"),
    [
        ((np.zeros((8, 8), np.uint8),), {}, ValueError, r"\(Z, Y, X\).*\(8, 8\)"),
        (([1, 2, 3],), {}, TypeError, "array-like"),
        ((np.zeros((1, 8, 8), np.uint8),), {"block": (1, 0, 8)}, ValueError, "block"),
        ((np.zeros((1, 8, 8), np.uint8),), {"block": (1, 8)}, ValueError, "block"),
    ],
)
def test_bad_input(tmp_path, saved, args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        predict_volume(saved, *args, tmp_path / "o.zarr", config=CFG, **kwargs)


def test_foreign_store_and_bad_model(tmp_path, volume, saved):
    g = zarr.open_group(tmp_path / "foreign.zarr", mode="w")
    g.create_array("x", shape=(2,), dtype="uint8")
    with pytest.raises(ValueError, match="not written by"):
        predict_volume(saved, volume, tmp_path / "foreign.zarr", config=CFG)
    with pytest.raises(TypeError, match="model file path or a SavedModel"):
        predict_volume(saved.model, volume, tmp_path / "o.zarr", config=CFG)


def test_cli_predict_to_zarr_resumes(tmp_path, volume, saved, capsys):
    import json

    from napari_unetseg.cli import main

    save_model(tmp_path / "m.unetseg", saved.model, normalization=NORM)
    src = zarr.open_array(tmp_path / "in.zarr", mode="w", shape=volume.shape,
                          chunks=(1, 64, 64), dtype=volume.dtype)
    src[...] = volume
    args = ["predict", str(tmp_path / "m.unetseg"), str(tmp_path / "in.zarr"), "-o",
            str(tmp_path / "out.zarr"), "--tile", "64", "--device", "cpu", "--block", "2,64,80"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert (first["blocks"], first["computed"], first["block"]) == (18, 18, [2, 64, 80])
    assert main(args) == 0 and json.loads(capsys.readouterr().out)["skipped"] == 18
    ref = predict(saved.model, volume, normalization=NORM, config=CFG).labels
    np.testing.assert_array_equal(zarr.open_group(tmp_path / "out.zarr")["labels"][...], ref)
    assert main([*args[:-1], "1,2"]) == 2
    assert "--block must be three integers" in capsys.readouterr().err
