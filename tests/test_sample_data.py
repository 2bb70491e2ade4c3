"""The packaged ISBI 2012 sample: shapes, values, provenance and the napari sample hook."""

import hashlib
from pathlib import Path

import numpy as np
import pytest

from napari_unetseg import _sample_data
from napari_unetseg._sample_data import load_sample, make_sample_data, membrane_classes

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "isbi2012"
PIXEL_MD5 = {  # md5 of array.tobytes(), as in src/napari_unetseg/data/README.md
    "image": "52c5e22a9f7f22b10ddeadb3df9abe10",
    "labels": "c36136c8db3146c9ac5b6c3e0e1e3f09",
}


def _md5(a):
    return hashlib.md5(np.ascontiguousarray(a).tobytes()).hexdigest()


def test_load_sample_shapes_dtypes_and_binary_labels():
    image, labels = load_sample()
    assert image.shape == labels.shape == (8, 512, 512)
    assert image.dtype == labels.dtype == np.uint8
    assert set(np.unique(labels).tolist()) == {0, 255}
    assert 0.1 < (labels == 0).mean() < 0.35  # membranes are about a fifth of the pixels
    assert image.std() > 20  # a real image, not a blank
    assert _md5(image) == PIXEL_MD5["image"] and _md5(labels) == PIXEL_MD5["labels"]


def test_package_data_is_small():
    data = Path(_sample_data.__file__).parent / "data"
    total = sum(p.stat().st_size for p in data.iterdir())
    # the sample (about 2 MB) and the bundled model (about 2 MB, float16): under 4.5 MB in all
    assert total < 4.5 * 2**20
    assert (data / "README.md").read_text().count("Cardona") >= 2


@pytest.mark.skipif(not SHARED.is_dir(), reason="full ISBI 2012 stack not available here")
def test_slices_equal_the_full_training_stack():
    tifffile = pytest.importorskip("tifffile")
    image, labels = load_sample()
    volume = tifffile.imread(SHARED / "train-volume.tif")
    gt = tifffile.imread(SHARED / "train-labels.tif")
    for k, z in enumerate(_sample_data.SAMPLE_SLICES):
        assert _md5(image[k]) == _md5(volume[z]), f"sample slice {k} != training slice {z}"
        assert _md5(labels[k]) == _md5(gt[z])


def test_make_sample_data_returns_plain_layer_tuples():
    layers = make_sample_data()
    assert [layer[2] for layer in layers] == ["image", "labels"]
    (image, image_kw, _), (classes, labels_kw, _) = layers
    assert image_kw["name"] == "EM image (ISBI sample)"
    assert labels_kw["name"] == "membrane ground truth (ISBI sample)"
    assert labels_kw["metadata"][_sample_data.GROUND_TRUTH] is True
    assert _sample_data.GROUND_TRUTH not in image_kw["metadata"]
    assert "Cardona" in image_kw["metadata"]["source"]
    assert image.shape == classes.shape and classes.dtype == np.uint8
    _, labels = load_sample()
    assert np.array_equal(classes == 1, labels == 0)  # membrane = 1
    assert np.array_equal(classes == 2, labels == 255)  # interior = 2, 0 unused
    assert labels_kw["metadata"]["classes"] == {1: "membrane", 2: "cell interior"}


def test_membrane_classes_any_nonzero_is_interior():
    out = membrane_classes(np.array([[0, 1, 255]], np.uint8))
    assert out.tolist() == [[1, 2, 2]]

