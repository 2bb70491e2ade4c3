"""Small parts of the widgets: presets, configs, the live plot, the layer picker."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unetseg._widgets._common import LayerPicker, class_lut
from napari_unetseg._widgets._plot import LinePlot
from napari_unetseg._widgets._train_form import TrainForm
from napari_unetseg.presets import PRESETS


def test_presets_and_configs(qtbot):
    form = TrainForm()
    qtbot.addWidget(form)
    form.preset.setCurrentText("paper (Ronneberger 2015)")
    assert (form.depth.value(), form.width.value()) == (4, 64)
    paper, ptrain = form.model_config(classes=2), form.train_config()
    assert (paper.padding, paper.batchnorm, paper.dropout) == ("valid", False, 0.5)
    assert (ptrain.optimizer, ptrain.loss, ptrain.patch_size) == ("sgd", "wce", 572)
    form.preset.setCurrentText("ResUNet EM (Drozdzal 2016)")
    em = form.model_config(classes=2)
    assert (em.arch, em.block, em.blocks_per_level) == ("resunet", "bottleneck",
                                                         (1, 1, 3, 8, 10, 3))
    form.blocks.setValue(2)  # editing a preset field: custom, its hidden settings dropped
    assert form.preset.currentText() == "custom"
    assert form.model_config(classes=2).blocks_per_level == 2
    form.preset.setCurrentText("fast, CPU friendly")
    fast = PRESETS["fast"]  # the core's recipe, shared with the CLI and the benchmarks
    assert (form.depth.value(), form.width.value()) == (fast["depth"], fast["width"])
    assert (form.patch.value(), form.iterations.value()) == (
        fast["patch_size"], fast["iterations"])
    # the fast preset feeds the network the multiscale filter bank, shown as a checkbox that
    # survives editing another field (the custom form keeps what is shown)
    assert form.features.isChecked() and form.model_config(classes=2).features == "multiscale"
    assert form.train_config().bn_momentum == fast["bn_momentum"] == 0.5
    assert form.train_config().self_training_s == fast["self_training_s"] == 20.0
    form.width.setValue(4)  # editing a preset field makes the preset "custom"
    assert form.preset.currentText() == "custom"
    assert form.model_config(classes=2).features == "multiscale"
    assert form.train_config().bn_momentum == 0.5  # the recipe's, kept
    assert form.train_config().pseudo_portion == fast["pseudo_portion"] == 0.5
    # the random-forest teacher: a checkbox, on in the fast preset, kept through edits
    assert form.teacher.isChecked() and form.train_config().teacher == fast["teacher"]
    form.features.setChecked(False)
    assert form.model_config(classes=2).features == "none"
    assert form.train_config().teacher == "forest"
    form.teacher.setChecked(False)
    assert form.train_config().teacher == "none"
    form.start_from.setCurrentIndex(1)  # from the bundled model: no teacher (training.py)
    assert not form.teacher.isEnabled()
    form.start_from.setCurrentIndex(0)
    assert form.teacher.isEnabled()
    form.preset.setCurrentText("wide (width 64, same padding)")
    assert not form.features.isChecked() and form.train_config().bn_momentum == 0.1
    assert not form.teacher.isChecked() and form.train_config().teacher == "none"
    assert form.train_config().pseudo_portion == 1.0
    form.features.setChecked(True)  # editing it makes a preset custom too
    assert form.preset.currentText() == "custom"
    form.features.setChecked(False)
    form.width.setValue(4)
    form.arch.setCurrentText("ResUNet")
    form.labels_mode.setCurrentIndex(2)
    form.augment.setChecked(False)
    cfg = form.model_config(classes=3)
    assert (cfg.arch, cfg.depth, cfg.width, cfg.classes) == ("resunet", fast["depth"], 4, 3)
    tcfg = form.train_config()
    assert form.mode() == "instances" and not tcfg.augment.active
    assert tcfg.iterations == form.iterations.value() and tcfg.device == "auto"


def test_line_plot_draws(qtbot):
    plot = LinePlot("loss", ("train", "val"), y_range=None)
    qtbot.addWidget(plot)
    plot.resize(200, 100)
    blank = plot.grab().toImage()
    for step in range(1, 30):
        plot.add("train", step, 1.0 / step)
    plot.add("val", 29, float("nan"))  # skipped
    assert len(plot.data["train"]) == 29 and not plot.data["val"]
    drawn = plot.grab().toImage()
    assert drawn != blank
    plot.clear()
    assert not plot.data["train"]


def test_class_lut():
    assert class_lut([1, 2]).dtype == np.uint8
    assert class_lut([0, 300]).dtype == np.uint16
    assert class_lut([-1, 300]).dtype == np.int32
    np.testing.assert_array_equal(class_lut([5]), [0, 5])  # a one-class model: 0 / 1


@pytest.mark.parametrize("optional", [False, True])
def test_layer_picker_follows_the_layer_list(make_napari_viewer, optional):
    from napari.layers import Labels

    viewer = make_napari_viewer()
    picker = LayerPicker(viewer, Labels, optional=optional)
    assert picker.layer() is None
    viewer.add_image(np.zeros((8, 8)), name="img")
    a = viewer.add_labels(np.zeros((8, 8), np.uint8), name="a")
    viewer.add_labels(np.zeros((8, 8), np.uint8), name="b")
    names = [picker.itemText(i) for i in range(picker.count())]
    assert names == (["(none)"] if optional else []) + ["a", "b"]
    picker.set_layer("b")
    a.name = "renamed"
    assert picker.findText("renamed") >= 0 and picker.currentText() == "b"
    viewer.layers.remove("b")
    assert picker.findText("b") < 0


def test_segment_options_default_to_the_engine_and_halo_reaches_the_config(dock):
    from napari_unetseg.inference import InferenceConfig

    seg = dock("Segment")
    cfg, engine = seg._config(), InferenceConfig()
    assert (cfg.tile, cfg.halo, cfg.overlap) == (engine.tile, engine.halo, engine.overlap)
    assert [w.text() for w in (seg.tile, seg.halo, seg.overlap)] == ["auto"] * 3
    seg.halo.setValue(0)
    seg.tile.setValue(256)
    seg.overlap.setValue(0.25)
    assert (seg._config().halo, seg._config().tile, seg._config().overlap) == (0, 256, 0.25)
