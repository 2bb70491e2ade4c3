"""CLI: train -> predict -> evaluate round trip on real EM data, and clean errors."""

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_unetseg.cli import evaluate_arrays, main, parse_slices
from napari_unetseg.io import load_model
from napari_unetseg.metrics import isbi_scores

ISBI = Path(__file__).resolve().parents[2] / "shared" / "data" / "isbi2012"

TINY = ["--iterations", "4", "--depth", "2", "--width", "4", "--patch-size", "64",
        "--batch-size", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def em_files(tmp_path_factory):
    """3 slices of ISBI 2012 (the shared copy if present, else the packaged sample)."""
    tmp = tmp_path_factory.mktemp("em")
    if (ISBI / "train-volume.tif").exists():
        img = tifffile.imread(ISBI / "train-volume.tif")[:3, :192, :160]
        lab = tifffile.imread(ISBI / "train-labels.tif")[:3, :192, :160]
    else:
        from napari_unetseg._sample_data import load_sample

        img, lab = (a[:3, :192, :160] for a in load_sample())
    tifffile.imwrite(tmp / "img.tif", img, photometric="minisblack")
    tifffile.imwrite(tmp / "lab.tif", lab, photometric="minisblack")
    return tmp


def _json_out(capsys):
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def trained(em_files):
    """The model the CLI trains on slices 0-1 (every test that needs one gets it here)."""
    d = em_files
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["train", str(d / "img.tif"), str(d / "lab.tif"), "-o",
                   str(d / "m.unetseg"), "--labels-mode", "dense", "--slices", "0:2", *TINY,
                   "--iterations", "20", "--lr", "0.01"])  # enough to predict some cells
    assert rc == 0
    return d / "m.unetseg", json.loads(out.getvalue())


def test_round_trip_train_predict_evaluate(em_files, trained, capsys):
    d = em_files
    path, info = trained
    assert info["model"].endswith("m.unetseg")
    saved = load_model(path)
    assert saved.class_values == [0, 255]
    # the default loss follows the labels: dense membranes train on the weighted CE
    assert saved.metadata["train_config"]["loss"] == "wce"

    assert main(["predict", str(d / "m.unetseg"), str(d / "img.tif"), "-o", str(d / "pred.tif"),
                 "--slices", "2:3", "--tile", "64", "--device", "cpu"]) == 0
    pred = tifffile.imread(d / "pred.tif")
    assert pred.shape == (1, 192, 160) and pred.dtype == np.uint8
    assert set(np.unique(pred)) <= {0, 255}

    assert main(["predict", str(d / "m.unetseg"), str(d / "img.tif"), "-o", str(d / "prob.tif"),
                 "--slices", "2:3", "--output", "probabilities", "--class", "0",
                 "--device", "cpu"]) == 0
    prob = tifffile.imread(d / "prob.tif")
    assert prob.shape == (1, 192, 160) and prob.dtype == np.float32
    assert prob.min() >= 0.0 and prob.max() <= 1.0
    capsys.readouterr()

    assert main(["evaluate", str(d / "pred.tif"), str(d / "lab.tif"), "--slices", "2:3"]) == 0
    scores = _json_out(capsys)
    for key in ("pixel_error", "dice", "iou", "v_rand", "v_info"):
        assert key in scores
    # the scores of exactly the predicted slice against slice 2 of the ground truth
    gt = tifffile.imread(d / "lab.tif")[2:3] == 0
    want = isbi_scores((pred == 0).astype(np.float32), gt, thresholds=[0.5])
    assert (scores["v_rand"], scores["v_info"]) == (want["v_rand"], want["v_info"])
    assert scores["pixel_error"] == np.mean((pred == 0) != gt)

    assert main(["evaluate", str(d / "prob.tif"), str(d / "lab.tif"), "--slices", "2:3"]) == 0
    want = isbi_scores(prob, gt)  # the best over the threshold sweep
    assert _json_out(capsys)["v_info"] == want["v_info"]


def test_evaluate_scores_hand_made_images_exactly(tmp_path, capsys):
    """V_Rand / V_Info of images small enough to score by hand (issue 11: exact values)."""
    gt = np.full((8, 8), 255, np.uint8)
    gt[:, 4] = 0  # a membrane between a 32-px and a 24-px cell
    merged = np.full((8, 8), 255, np.uint8)  # the membrane missed: one segment
    prob = np.where(gt == 0, 0.8, 0.1).astype(np.float32)  # right for 0.1 < t <= 0.8
    for name, arr in (("gt", gt), ("merged", merged), ("prob", prob)):
        tifffile.imwrite(tmp_path / f"{name}.tif", arr, photometric="minisblack")

    def scores(name):
        assert main(["evaluate", str(tmp_path / f"{name}.tif"), str(tmp_path / "gt.tif")]) == 0
        return _json_out(capsys)

    s = scores("gt")
    assert (s["v_rand"], s["v_info"], s["pixel_error"]) == (1.0, 1.0, 0.0)
    s = scores("merged")
    # Rand: sum p_ij^2 / (sum s_i^2 / 2 + sum t_j^2 / 2) = 1600 / (3136 / 2 + 1600 / 2) = 25/37
    assert s["v_rand"] == pytest.approx(25 / 37, abs=1e-12)
    assert (s["v_rand_split"], s["v_rand_merge"]) == pytest.approx((1.0, 1600 / 3136))
    assert s["v_info"] == 0.0  # no mutual information (Fiji: 0 when an entropy is 0)
    assert s["pixel_error"] == pytest.approx(8 / 64)
    s = scores("prob")
    assert (s["v_rand"], s["v_info"]) == (1.0, 1.0)


def test_full_probabilities_have_class_axis(em_files, trained, capsys):
    d = em_files
    assert main(["predict", str(d / "m.unetseg"), str(d / "img.tif"), "-o",
                 str(d / "allprob.tif"), "--output", "probabilities", "--device", "cpu"]) == 0
    prob = tifffile.imread(d / "allprob.tif")
    assert prob.shape == (3, 2, 192, 160)
    np.testing.assert_allclose(prob.sum(axis=1), 1.0, atol=1e-5)


def test_instances_output(em_files, trained, capsys):
    d = em_files
    assert main(["predict", str(d / "m.unetseg"), str(d / "img.tif"), "-o", str(d / "inst.tif"),
                 "--output", "instances", "--device", "cpu"]) == 0
    assert main(["predict", str(d / "m.unetseg"), str(d / "img.tif"), "-o",
                 str(d / "cellprob.tif"), "--output", "probabilities", "--class", "1",
                 "--device", "cpu"]) == 0
    inst = tifffile.imread(d / "inst.tif")
    assert inst.shape == (3, 192, 160) and inst.dtype == np.int32
    prob = tifffile.imread(d / "cellprob.tif")
    assert prob.shape == inst.shape
    assert (prob >= 0.5).any() and (prob < 0.5).any()  # else the check below is vacuous
    # objects are exactly the connected pixels of p(cell) >= 0.5
    assert ((inst > 0) == (prob >= 0.5)).all()


def test_presets_and_architecture_options_reach_the_model(em_files, capsys):
    """--preset paper is Ronneberger's recipe; ResUNet blocks per level, dropout and the
    weight-map settings reach the saved model (issue 11, points 1, 5 and 6)."""
    d = em_files
    tiny = [a for a in TINY if a != "--patch-size" and a != "64"]
    assert main(["train", str(d / "img.tif"), str(d / "lab.tif"), "-o", str(d / "p.unetseg"),
                 "--slices", "0:1", "--preset", "paper", *tiny, "--patch-size", "92"]) == 0
    saved = load_model(d / "p.unetseg")
    cfg, train = saved.config, saved.metadata["train_config"]
    assert (cfg.padding, cfg.batchnorm, cfg.dropout) == ("valid", False, 0.5)
    assert (train["optimizer"], train["loss"], train["w0"], train["sigma"]) == (
        "sgd", "wce", 10.0, 5.0)
    assert main(["train", str(d / "img.tif"), str(d / "lab.tif"), "-o", str(d / "r.unetseg"),
                 "--slices", "0:1", "--arch", "resunet", "--block", "bottleneck",
                 "--blocks-per-level", "1,2,3", "--dropout", "0.2", "--w0", "4", "--sigma",
                 "2", "--no-class-balance", *TINY]) == 0
    saved = load_model(d / "r.unetseg")
    cfg, train = saved.config, saved.metadata["train_config"]
    assert (cfg.arch, cfg.block, cfg.blocks_per_level, cfg.dropout) == (
        "resunet", "bottleneck", (1, 2, 3), 0.2)
    assert (train["loss"], train["w0"], train["sigma"], train["class_balance"]) == (
        "wce", 4.0, 2.0, False)
    # the fast preset (the default) brings the filter bank and self-training; flags override
    assert main(["train", str(d / "img.tif"), str(d / "lab.tif"), "-o", str(d / "f.unetseg"),
                 "--slices", "0:1", *TINY]) == 0
    saved = load_model(d / "f.unetseg")
    assert saved.config.features == "multiscale"
    assert saved.metadata["train_config"]["self_training_s"] == 20.0
    assert saved.metadata["train_config"]["teacher"] == "forest"
    assert main(["train", str(d / "img.tif"), str(d / "lab.tif"), "-o", str(d / "n.unetseg"),
                 "--slices", "0:1", "--features", "none", "--self-training", "0",
                 "--teacher", "none", *TINY]) == 0
    saved = load_model(d / "n.unetseg")
    assert saved.config.features == "none"
    assert saved.metadata["train_config"]["self_training_s"] == 0.0
    assert saved.metadata["train_config"]["teacher"] == "none"
    capsys.readouterr()


def test_existing_output_is_not_overwritten(em_files, capsys):
    d = em_files
    target = d / "keep.tif"
    target.write_bytes(b"precious")
    rc = main(["train", str(d / "img.tif"), str(d / "lab.tif"), "-o", str(target), *TINY])
    assert rc == 2
    assert "already exists" in capsys.readouterr().err
    assert target.read_bytes() == b"precious"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "{d}/img.tif", "{d}/missing.tif", "-o", "{d}/x.unetseg"], "does not exist"),
        (["train", "{d}/img.tif", "{d}/lab.tif", "-o", "{d}/x.unetseg", "--slices", "a:b"],
         "--slices"),
        (["predict", "{d}/img.tif", "{d}/img.tif", "-o", "{d}/y.tif"], "not a readable"),
        (["predict", "{d}", "{d}/img.tif", "-o", "{d}/y.tif"], "directory"),
        (["evaluate", "{d}/lab.tif", "{d}/lab.tif", "--slices", "0:9:2:1"], "--slices"),
        (["train", "{d}/img.tif", "{d}/lab.tif", "-o", "{d}/x.unetseg", "--loss", "ce",
          "--w0", "5"], "--w0 set the weight map, which --loss ce ignores"),
        (["train", "{d}/img.tif", "{d}/lab.tif", "-o", "{d}/x.unetseg", "--loss", "dice",
          "--no-class-balance"], "--no-class-balance set the weight map"),
    ],
)
def test_bad_input_gives_one_line_error(em_files, capsys, argv, message):
    d = em_files
    rc = main([a.format(d=d) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert message in err


def test_parse_slices():
    assert parse_slices("0:25") == slice(0, 25)
    assert parse_slices("7") == slice(7, 8)
    assert parse_slices(None) is None


def test_demo_trains_segments_and_scores(capsys, monkeypatch):
    """The README's headless main job, with tiny settings."""
    from napari_unetseg.cli import demo

    seen = []

    def spy(probs, gt, boundary_value=0):
        seen.append((probs.copy(), gt.copy()))
        return evaluate_arrays(probs, gt, boundary_value)

    monkeypatch.setattr(demo, "evaluate_arrays", spy)
    assert main(["demo", "--iterations", "3", "--depth", "2", "--width", "4",
                 "--patch-size", "64", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    scores = json.loads(captured.out)
    for key in ("pixel_error", "dice", "v_rand", "v_info", "train_seconds", "segment_seconds"):
        assert key in scores
    # the scores printed are exactly those of the held-out slices' membrane probabilities
    (probs, gt), = seen
    assert probs.shape[0] == gt.shape[0] == 2
    want = isbi_scores(probs, gt == 0)
    assert (scores["v_rand"], scores["v_info"]) == (want["v_rand"], want["v_info"])
    assert scores["pixel_error"] == pytest.approx(np.mean((probs >= 0.5) != (gt == 0)), abs=1e-12)
    assert "training on 6, scoring on the last 2" in captured.err
