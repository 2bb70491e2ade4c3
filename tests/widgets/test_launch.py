"""`napari-unetseg gui` opens the sample with the widgets docked."""

from napari_unetseg._widgets.launch import launch
from napari_unetseg._widgets.segment import SegmentWidget
from napari_unetseg._widgets.train import TrainWidget


def test_launch_opens_sample_and_docks_widgets(make_napari_viewer):
    viewer = make_napari_viewer()
    docked = launch(viewer, widgets=["Train", "Segment", "Weight map preview", "UNet++ levels"])
    assert isinstance(docked["Train"], TrainWidget)
    assert isinstance(docked["Segment"], SegmentWidget)
    kinds = sorted(type(layer).__name__ for layer in viewer.layers)
    assert kinds == ["Image", "Labels"]
    image = next(layer for layer in viewer.layers if type(layer).__name__ == "Image")
    assert image.data.shape == (8, 512, 512)
