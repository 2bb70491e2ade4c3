"""Segment > instances: an instances layer beside the probabilities and the segmentation."""

from __future__ import annotations

import numpy as np

from napari_unetseg.postprocess import BoundaryInstances, instances_from_boundaries


def test_segment_makes_cells_between_boundaries(viewer, image, dock, wait_job, click, notes,
                                                train_tiny):
    train = train_tiny(arch="U-Net", iterations=2, preview_every=0)
    click(train.train_button)
    wait_job(train)
    seg = dock("Segment")
    seg.scope.setCurrentText("current slice")
    viewer.dims.set_current_step(0, 1)
    seg.show_class.setCurrentIndex(0)  # class 1: membrane, the boundary
    seg.instances.setCurrentIndex(2)
    click(seg.run_button)
    wait_job(seg)
    inst = viewer.layers[f"{image.name} instances"].data
    probs = viewer.layers[f"{image.name} probabilities"].data
    assert inst.shape == image.data.shape and inst.dtype == np.int32
    assert (inst[1] > 0).all() and not inst[0].any()  # the current slice only, all of it
    want = instances_from_boundaries(np.asarray(probs[1]), BoundaryInstances())
    np.testing.assert_array_equal(inst[1], want)

    seg.instances.setCurrentIndex(1)  # objects of the chosen class instead
    seg.show_class.setCurrentIndex(1)
    click(seg.run_button)
    wait_job(seg)
    objects = viewer.layers[f"{image.name} instances"].data
    cells = np.asarray(viewer.layers[f"{image.name} probabilities"].data[1]) >= 0.5
    assert ((objects[1] > 0) == cells).all()
    assert not [n for n in notes if n[0] == "error"]
