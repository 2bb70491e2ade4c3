"""bioimage.io both ways: export -> bioimageio.core's model test -> import, all offline."""

import zipfile

import numpy as np
import pytest
import tifffile
import torch

pytest.importorskip("bioimageio.core", reason="the optional 'bioimageio' extra")

from napari_unetseg import ModelConfig, Normalization, build_model  # noqa: E402
from napari_unetseg.bioimageio_export import export_bioimageio, run_model_test  # noqa: E402
from napari_unetseg.bioimageio_import import (  # noqa: E402
    is_bioimageio,
    load_any,
    load_bioimageio,
)
from napari_unetseg.cli import main  # noqa: E402
from napari_unetseg.inference import InferenceConfig, predict  # noqa: E402
from napari_unetseg.io import SavedModel, save_model  # noqa: E402

CPU = InferenceConfig(device="cpu")


def _saved(arch="unet", classes=2, padding="same", features="none"):
    torch.manual_seed(0)
    cfg = ModelConfig(arch=arch, depth=2, width=4, classes=classes, padding=padding,
                      features=features)
    values = [0, 255] if classes == 2 else list(range(1, classes + 1))
    return SavedModel(build_model(cfg), cfg, Normalization(20.0, 220.0), values,
                      ["membrane", "cell"][:classes] if classes == 2 else [], {"steps": 3})


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny model file exported by the CLI with --test (bioimageio.core's model test)."""
    from napari_unetseg._sample_data import load_sample

    d = tmp_path_factory.mktemp("bmz")
    saved = _saved()
    save_model(d / "m.unetseg", saved.model, normalization=saved.normalization,
               class_values=saved.class_values, class_names=saved.class_names)
    image = load_sample()[0][3:5, :96, :80]
    tifffile.imwrite(d / "img.tif", image)
    rc = main(["export", str(d / "m.unetseg"), "-o", str(d / "pkg.zip"), "--sample",
               str(d / "img.tif"), "--author", "A. Tester", "--training-data",
               "two ISBI 2012 slices (non-commercial terms)", "--test"])
    return d, rc


def test_cli_export_passes_the_bioimageio_core_model_test(exported, capsys):
    d, rc = exported
    assert rc == 0
    with zipfile.ZipFile(d / "pkg.zip") as zf:
        names = set(zf.namelist())
        import yaml  # bioimageio.spec brings a YAML parser

        rdf = yaml.safe_load(zf.read("rdf.yaml"))
        readme = zf.read("README.md").decode()
    assert {"rdf.yaml", "README.md", "cover.png", "test_input.npy", "test_output.npy",
            "weights.pt", "weights_torchscript.pt"} <= names
    assert rdf["format_version"].startswith("0.5")
    arch = rdf["weights"]["pytorch_state_dict"]["architecture"]
    assert arch["callable"] == "ProbabilityNet"
    assert arch["import_from"] == "napari_unetseg.models.packaged"
    assert arch["kwargs"] == _saved().config.to_dict()
    assert "two ISBI 2012 slices (non-commercial terms)" in rdf["description"]
    assert "non-commercial terms" in readme and rdf["authors"] == [{"name": "A. Tester"}]
    pre = [p["id"] for p in rdf["inputs"][0]["preprocessing"] if p["id"] != "ensure_dtype"]
    assert pre == ["scale_linear"]


def test_a_broken_package_fails_the_model_test(exported, tmp_path):
    d, _ = exported
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(d / "pkg.zip") as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "test_output.npy":  # change the expected output
                arr = np.load(src.open(item))
                buf = __import__("io").BytesIO()
                np.save(buf, 1.0 - arr)
                data = buf.getvalue()
            dst.writestr(item, data)
    assert run_model_test(bad).status == "failed"


def test_import_runs_the_package_like_the_model_file(exported, capsys):
    d, _ = exported
    assert is_bioimageio(d / "pkg.zip") and not is_bioimageio(d / "m.unetseg")
    capsys.readouterr()
    outs = {}
    for name in ("m.unetseg", "pkg.zip"):
        for kind in ("probabilities", "labels"):
            out = d / f"{name}.{kind}.tif"
            assert main(["predict", str(d / name), str(d / "img.tif"), "-o", str(out),
                         "--output", kind, "--device", "cpu"]) == 0
            outs[name, kind] = tifffile.imread(out)
    np.testing.assert_allclose(outs["pkg.zip", "probabilities"],
                               outs["m.unetseg", "probabilities"], atol=1e-5)
    np.testing.assert_array_equal(outs["pkg.zip", "labels"], outs["m.unetseg", "labels"])
    assert set(np.unique(outs["pkg.zip", "labels"])) <= {0, 255}  # class values travel


@pytest.mark.parametrize("arch,classes,features", [("unetpp", 1, "none"),
                                                   ("resunet", 3, "none"),
                                                   ("unet", 2, "multiscale")])
def test_round_trip_other_networks(tmp_path, arch, classes, features):
    saved = _saved(arch, classes, features=features)
    image = np.random.default_rng(0).integers(0, 255, (70, 52)).astype(np.uint8)
    export_bioimageio(saved, tmp_path / "p.zip", sample=image)
    back = load_any(tmp_path / "p.zip")
    assert back.config.classes == classes
    a = predict(saved.model, image, normalization=saved.normalization, config=CPU)
    b = predict(back.model, image, normalization=back.normalization, config=CPU)
    np.testing.assert_allclose(b.probabilities, a.probabilities, atol=1e-5)
    np.testing.assert_array_equal(b.labels, a.labels)


def _variant(exported, tmp_path, pre, post, drop_torchscript=False):
    """The exported package unpacked, with other processing declared in its rdf.yaml."""
    import yaml

    d, _ = exported
    folder = tmp_path / "pkg"
    with zipfile.ZipFile(d / "pkg.zip") as zf:
        zf.extractall(folder)
    rdf = yaml.safe_load((folder / "rdf.yaml").read_text())
    rdf["inputs"][0]["preprocessing"] = pre
    rdf["outputs"][0]["postprocessing"] = post
    if drop_torchscript:
        del rdf["weights"]["torchscript"]
    (folder / "rdf.yaml").write_text(yaml.safe_dump(rdf))
    return folder / "rdf.yaml"


def test_processing_is_applied_as_bioimageio_core_applies_it(exported, tmp_path):
    from bioimageio.core import predict as core_predict

    pre = [{"id": "scale_range", "kwargs": {"axes": ["y", "x"], "min_percentile": 2.0,
                                            "max_percentile": 98.0}},
           {"id": "clip", "kwargs": {"min": 0.1, "max": 0.9}}]
    post = [{"id": "scale_linear", "kwargs": {"gain": 40.0, "offset": -20.0}},
            {"id": "sigmoid"}, {"id": "clip", "kwargs": {"min": 0.05, "max": 0.95}}]
    rdf = _variant(exported, tmp_path, pre, post)
    image = tifffile.imread(exported[0] / "img.tif")[0, :64, :64].astype(np.float32)
    ours = load_bioimageio(rdf)
    # one pass with the network's own border padding, as bioimage.io core runs it (the default
    # halo mirror-pads the image border, which changes the border pixels)
    whole = InferenceConfig(device="cpu", halo=0, tile=64)
    got = predict(ours.model, image, normalization=ours.normalization, config=whole)
    ref = core_predict(model=str(rdf), inputs=image[None, None])
    want = next(iter(ref.members.values())).data.values[0]
    assert want.std() > 0.05  # spread out: a wrong operation would show
    np.testing.assert_allclose(got.probabilities, want, atol=1e-4)


def test_binarize_and_standardising_operations():
    from napari_unetseg.bioimageio_import import Preprocessing

    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(
        Preprocessing([("binarize", {"threshold": 5.5})])(x), (x > 5.5).astype(np.float32))
    z = Preprocessing([("zero_mean_unit_variance", {"axes": ["y", "x"], "eps": 1e-6})])(x)
    assert abs(z.mean()) < 1e-6 and z.std() == pytest.approx(1.0, abs=1e-5)
    f = Preprocessing([("fixed_zero_mean_unit_variance", {"mean": 2.0, "std": 4.0})])(x)
    np.testing.assert_allclose(f, (x - 2.0) / (4.0 + 1e-6), rtol=1e-6)


@pytest.mark.parametrize("pre,post,drop,message", [
    ([], [{"id": "scale_range", "kwargs": {"axes": ["y", "x"]}}], False, "scale_range"),
    ([], [], True, "TorchScript"),
])
def test_unusable_packages_are_refused_in_one_line(exported, tmp_path, pre, post, drop,
                                                   message):
    rdf = _variant(exported, tmp_path, pre, post, drop_torchscript=drop)
    with pytest.raises(ValueError, match=message):
        load_bioimageio(rdf)


def test_export_refuses_what_it_cannot_write(tmp_path):
    with pytest.raises(ValueError, match="same"):
        export_bioimageio(_saved(padding="valid"), tmp_path / "v.zip")
    with pytest.raises(ValueError, match=".zip"):
        export_bioimageio(_saved(), tmp_path / "v.unetseg")
    (tmp_path / "x.zip").write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        export_bioimageio(_saved(), tmp_path / "x.zip")
    assert (tmp_path / "x.zip").read_bytes() == b"precious"


def test_cli_export_errors_are_one_line(tmp_path, capsys):
    rc = main(["export", str(tmp_path / "missing.unetseg"), "-o", str(tmp_path / "p.zip")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("napari-unetseg export: error:") and "\n" not in err

