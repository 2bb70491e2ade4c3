"""Model files: round trip, no silent overwrite, atomic writes, clear errors on bad files."""

import io
import json
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch

from napari_unetseg import ModelConfig, Normalization, build_model
from napari_unetseg.io import (
    FORMAT_VERSION,
    ModelFileError,
    atomic_write,
    load_model,
    read_tif,
    save_model,
    write_tif,
)

CFG = ModelConfig(arch="unet", depth=2, width=4)
NORM = Normalization(10.0, 200.0)


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = build_model(CFG).eval()
    path = save_model(
        tmp_path / "m.unetseg", model, normalization=NORM, class_values=[0, 255],
        class_names=["membrane", "cell"], metadata={"steps": 3},
    )
    return model, path


@pytest.mark.parametrize("arch", ["unet", "unetpp", "resunet"])
def test_round_trip_gives_identical_outputs(tmp_path, arch):
    torch.manual_seed(1)
    cfg = ModelConfig(arch=arch, depth=2, width=4, classes=3)
    model = build_model(cfg).eval()
    with torch.no_grad():  # non-trivial BN statistics must survive too
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    path = save_model(tmp_path / "m.unetseg", model, normalization=NORM)
    loaded = load_model(path)
    x = torch.randn(1, 1, 20, 24)
    with torch.no_grad():
        assert torch.equal(model(x), loaded.model(x))
    assert loaded.config == cfg
    assert loaded.normalization == NORM
    assert loaded.class_values == [0, 1, 2]


def test_metadata_and_classes_kept(saved):
    _, path = saved
    loaded = load_model(path)
    assert loaded.class_values == [0, 255]
    assert loaded.class_names == ["membrane", "cell"]
    assert loaded.metadata == {"steps": 3}
    assert not loaded.model.training


def test_existing_file_is_not_overwritten(saved):
    model, path = saved
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="already exists"):
        save_model(path, model, normalization=Normalization(0.0, 5.0))
    assert path.read_bytes() == before
    save_model(path, model, normalization=Normalization(0.0, 5.0), overwrite=True)
    assert load_model(path).normalization.high == 5.0


def test_failed_write_leaves_old_file_and_no_temp(saved):
    _, path = saved
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="cancelled"), atomic_write(path, overwrite=True) as fh:
        fh.write(b"half a file")
        raise RuntimeError("cancelled")
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_disk_full_during_save_keeps_old_file(saved, monkeypatch):
    model, path = saved
    before = path.read_bytes()

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space"):
        save_model(path, model, normalization=NORM, overwrite=True)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_truncated_file_gives_clear_error(saved, tmp_path):
    _, path = saved
    bad = tmp_path / "trunc.unetseg"
    bad.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(ModelFileError, match="not a readable"):
        load_model(bad)


def test_pickle_disguised_as_model_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    bad = tmp_path / "evil.unetseg"
    bad.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ModelFileError):
        load_model(bad)
    assert not (tmp_path / "pwned").exists()


def test_pickled_array_inside_archive_is_refused(saved, tmp_path):
    _, path = saved
    bad = tmp_path / "objarr.unetseg"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("head.weight.npy") or info.filename == sorted(
                n for n in src.namelist() if n.startswith("tensors/")
            )[0]:
                buf = io.BytesIO()
                np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
                data = buf.getvalue()
            dst.writestr(info, data)
    with pytest.raises(ModelFileError):
        load_model(bad)


def test_newer_format_version_is_refused(saved, tmp_path):
    _, path = saved
    bad = tmp_path / "new.unetseg"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "model.json":
                header = json.loads(data)
                header["version"] = FORMAT_VERSION + 1
                data = json.dumps(header).encode()
            dst.writestr(info, data)
    with pytest.raises(ModelFileError, match="upgrade"):
        load_model(bad)


def test_foreign_zip_and_directory_and_missing(tmp_path):
    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(foreign, "w") as zf:
        zf.writestr("hello.txt", "hi")
    with pytest.raises(ModelFileError, match="no model.json"):
        load_model(foreign)
    with pytest.raises(IsADirectoryError):
        load_model(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "nope.unetseg")


def test_save_refuses_foreign_module_and_wrong_class_count(tmp_path):
    with pytest.raises(TypeError, match="build_model"):
        save_model(tmp_path / "x.unetseg", torch.nn.Conv2d(1, 1, 1), normalization=NORM)
    with pytest.raises(ValueError, match="2 class values"):
        save_model(tmp_path / "x.unetseg", build_model(CFG), normalization=NORM,
                   class_values=[1, 2, 3])
    assert not (tmp_path / "x.unetseg").exists()


def test_tif_round_trip_and_no_overwrite(tmp_path):
    arr = (np.arange(3 * 8 * 9) % 251).astype(np.uint8).reshape(3, 8, 9)
    p = write_tif(tmp_path / "a.tif", arr)
    np.testing.assert_array_equal(read_tif(p), arr)
    with pytest.raises(FileExistsError):
        write_tif(p, arr)
    (tmp_path / "junk.tif").write_bytes(b"not a tiff")
    with pytest.raises(ValueError, match="not a readable TIFF"):
        read_tif(tmp_path / "junk.tif")
