"""Instances between boundaries: a seeded watershed on the membrane probability."""

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries

from napari_unetseg.devices import drain
from napari_unetseg.metrics import instance_scores
from napari_unetseg.postprocess import (
    BoundaryInstances,
    instances_from_boundaries,
    instances_from_probs,
    iter_instances,
)
from napari_unetseg.synthetic import touching_cells


def _wall(gap: int = 0) -> np.ndarray:
    """Boundary probability of two 40 x 30 cells split by a 2-px wall (a ``gap`` in it)."""
    p = np.zeros((40, 64), np.float32)
    p[:, 31:33] = 0.95
    p[[0, -1], :], p[:, [0, -1]] = 0.95, 0.95  # the outer membrane
    if gap:
        p[20 - gap // 2:20 + gap - gap // 2, 31:33] = 0.3
    return p


def test_cells_meet_on_the_ridge_and_fill_the_plane():
    p = _wall()
    x = np.arange(64, dtype=np.float32)
    p = np.maximum(p, np.exp(-((x - 31.5) ** 2) / 20.0)[None] * 0.9)  # a wide ridge at 31.5
    lab = instances_from_boundaries(p, sigma=0.0, min_seed_size=0)
    assert lab.dtype == np.int32 and lab.min() >= 1  # every pixel belongs to a cell
    assert np.unique(lab[1:-1, 1:-1]).size == 2
    left, right = lab[20, 5], lab[20, 58]
    assert left != right
    assert (lab[1:-1, 2:31] == left).all() and (lab[1:-1, 33:62] == right).all()


def test_distance_and_minima_seeds_split_cells_a_gap_would_join():
    p = ndi.gaussian_filter(_wall(gap=6), 1.0)
    joined = instances_from_boundaries(p, seeds="threshold", threshold=0.5, sigma=0.0)
    assert joined[20, 5] == joined[20, 58]  # one interior piece through the gap: one cell
    split = instances_from_boundaries(p, seeds="distance", threshold=0.5, sigma=0.0, h=2.0)
    assert split[20, 5] != split[20, 58]
    minima = instances_from_boundaries(p, seeds="minima", sigma=2.0, h=0.05)
    assert minima[20, 5] != minima[20, 58]


def test_synthetic_cells_are_recovered_from_their_boundaries():
    _, cells = touching_cells((96, 96), n_cells=12, seed=3)
    rng = np.random.default_rng(0)
    boundary = find_boundaries(cells, mode="inner") | (cells == 0)
    p = np.clip(ndi.gaussian_filter(boundary.astype(np.float32), 1.0) * 1.5
                + rng.normal(0, 0.05, cells.shape), 0, 1).astype(np.float32)
    gt = np.where(boundary, 0, 255)
    stack = instances_from_boundaries(np.stack([p, p]), threshold=0.3)
    assert stack[0].max() < stack[1].min()  # labels unique over the stack
    s = instance_scores(stack, np.stack([gt, gt]))
    assert s["v_rand"] > 0.95 and s["v_info"] > 0.95


def test_cells_come_from_a_map_whose_interior_is_not_near_zero():
    # A network trained on a few strokes with class balance: the interior sits at 0.25, above
    # the seed threshold (0.2). Stretched to its percentiles, the map still gives the cells.
    _, cells = touching_cells((96, 96), n_cells=12, seed=3)
    boundary = find_boundaries(cells, mode="inner") | (cells == 0)
    p = (0.25 + 0.7 * ndi.gaussian_filter(boundary.astype(np.float32), 1.0)).astype(np.float32)
    gt = np.where(boundary, 0, 255)
    as_is = instances_from_boundaries(p, stretch=False)
    assert np.unique(as_is).size == 1  # no interior below 0.2: one object
    lab = instances_from_boundaries(p)
    s = instance_scores(lab, gt)
    assert s["v_rand"] > 0.9 and s["v_info"] > 0.9
    # one span for the whole stack: a faint slice (no boundaries, a 0.1 texture) is not
    # stretched into cells of its own, as it would be alone
    faint = (0.25 + 0.1 * ndi.gaussian_filter(boundary.astype(np.float32), 1.0)).astype(
        np.float32)
    labels = drain(iter_instances(np.stack([p, faint]), BoundaryInstances()))
    assert instance_scores(labels[0], gt)["v_rand"] > 0.9
    assert np.unique(labels[1]).size == 1
    assert np.unique(instances_from_boundaries(faint)).size > 5


def test_the_stretch_leaves_a_calibrated_map_alone():
    _, cells = touching_cells((96, 96), n_cells=12, seed=3)
    boundary = find_boundaries(cells, mode="inner") | (cells == 0)
    p = np.where(boundary, 1.0, 0.0).astype(np.float32)
    np.testing.assert_array_equal(instances_from_boundaries(p),
                                  instances_from_boundaries(p, stretch=False))


def test_min_size_merges_small_objects_and_iter_reports_slices():
    p = _wall()
    p[5:8, 5:8] = 0.95  # a small closed compartment: a 1-px interior speck
    p[6, 6] = 0.0
    with_speck = instances_from_boundaries(p, sigma=0.0, min_seed_size=0)
    assert np.unique(with_speck).size == 3
    assert np.unique(instances_from_boundaries(p, sigma=0.0, min_seed_size=0,
                                               min_size=20)).size == 2
    assert np.unique(instances_from_boundaries(p, sigma=0.0, min_seed_size=5)).size == 2
    gen = iter_instances(np.stack([p, p, p]), BoundaryInstances(sigma=0.0))
    done = []
    while True:
        try:
            done.append(next(gen))
        except StopIteration as stop:
            labels = stop.value
            break
    assert done == [0, 1, 2] and labels.shape == (3, 40, 64)
    fg = 1.0 - p  # no settings: the connected objects of a foreground map
    np.testing.assert_array_equal(drain(iter_instances(fg)), instances_from_probs(fg))


@pytest.mark.parametrize("kwargs,message", [
    ({"seeds": "random"}, "seeds must be one of"),
    ({"threshold": 1.5}, "threshold must be in"),
    ({"sigma": -1.0}, "sigma must be"),
    ({"min_size": 2.5}, "min_size must be an int"),
])
def test_bad_settings_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        instances_from_boundaries(_wall(), **kwargs)


def test_stretch_must_be_a_bool():
    with pytest.raises(TypeError, match="stretch must be True or False"):
        BoundaryInstances(stretch="no")


def test_instance_scores_split_and_merge():
    gt = np.full((20, 41), 255, np.uint8)
    gt[:, 20] = 0  # two cells
    perfect = np.where(np.arange(41) < 20, 1, 2)[None].repeat(20, 0)
    s = instance_scores(perfect, gt)
    assert s["v_rand"] == pytest.approx(1.0) and s["v_info"] == pytest.approx(1.0)
    merged = instance_scores(np.ones_like(perfect), gt)
    assert merged["v_rand_split"] == pytest.approx(1.0) and merged["v_rand_merge"] < 0.6
    assert merged["v_info_split"] < 1.0 or merged["v_info_merge"] < 1.0


def test_cli_instances_between_boundaries(tmp_path, capsys):
    import tifffile
    import torch

    from napari_unetseg import ModelConfig, Normalization, build_model
    from napari_unetseg.cli import main
    from napari_unetseg.io import save_model

    torch.manual_seed(0)
    cfg = ModelConfig(depth=2, width=4)
    save_model(tmp_path / "m.unetseg", build_model(cfg), normalization=Normalization(0.0, 255.0),
               class_values=[0, 255])
    image = np.random.default_rng(0).integers(0, 255, (2, 48, 40)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "img.tif", image)
    common = [str(tmp_path / "m.unetseg"), str(tmp_path / "img.tif"), "--device", "cpu"]
    assert main(["predict", *common, "-o", str(tmp_path / "p.tif"), "--output",
                 "probabilities", "--class", "0"]) == 0
    assert main(["predict", *common, "-o", str(tmp_path / "i.tif"), "--output", "instances",
                 "--boundary-class", "0", "--seeds", "minima", "--smooth", "0.5",
                 "--seed-h", "0"]) == 0
    got = tifffile.imread(tmp_path / "i.tif")
    want = instances_from_boundaries(tifffile.imread(tmp_path / "p.tif"), seeds="minima",
                                     sigma=0.5, h=0.0)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.int32 and got.min() >= 1 and got[0].max() < got[1].min()
    assert np.unique(got).size > 2
    assert main(["predict", *common, "-o", str(tmp_path / "n.tif"), "--output", "instances",
                 "--boundary-class", "0", "--no-stretch"]) == 0
    np.testing.assert_array_equal(
        tifffile.imread(tmp_path / "n.tif"),
        instances_from_boundaries(tifffile.imread(tmp_path / "p.tif"), stretch=False))
    capsys.readouterr()
    for extra in (["--output", "labels", "--boundary-class", "0"],
                  ["--output", "instances", "--boundary-class", "0", "--class", "1"],
                  ["--output", "instances", "--boundary-class", "2"],
                  ["--output", "instances", "--boundary-class", "0", "--seed-threshold", "2"]):
        assert main(["predict", *common, "-o", str(tmp_path / "x.tif"), *extra]) == 2
        err = capsys.readouterr().err  # refused before predicting: one line, no progress
        assert ("--boundary-class" in err or "--seed-threshold" in err) and (
            "\n" not in err.strip())
