"""Save model… never replaces a file without asking; Load model… shares the model."""

from __future__ import annotations

import numpy as np

from napari_unetseg._widgets import _files
from napari_unetseg._widgets._registry import store_for


def test_save_asks_before_overwrite_and_load_shares(viewer, image, scribbles, dock, tiny,
                                                    wait_job, click, tmp_path, monkeypatch,
                                                    notes, train_tiny):
    train = train_tiny(arch="U-Net", iterations=2, preview_every=0)
    click(train.train_button)
    wait_job(train)
    target = tmp_path / "membranes"
    monkeypatch.setattr(_files, "ask_save_path", lambda parent: str(target))
    asked = []

    def answer(yes):
        def confirm(parent, path):
            asked.append(path)
            return yes
        return confirm

    monkeypatch.setattr(_files, "confirm_overwrite", answer(False))
    path = train.save_model()
    assert path == tmp_path / "membranes.unetseg" and path.exists() and not asked
    before = path.read_bytes()
    path.write_bytes(b"not a model")  # so that a replacement is visible
    assert train.save_model() is None and asked == [path]  # asked, said no: untouched
    assert path.read_bytes() == b"not a model"
    monkeypatch.setattr(_files, "confirm_overwrite", answer(True))
    assert train.save_model() == path and len(asked) == 2
    assert path.read_bytes()[:2] == before[:2] == b"PK"
    # each save said where, in a notification and in the widget's status line
    assert notes == [("info", f"Saved the model to {path}")] * 2
    assert str(path) in train.status.text()
    assert _files.last_folder() == tmp_path  # Load starts where the model was saved
    notes.clear()

    seg = dock("Segment")
    monkeypatch.setattr(_files, "ask_open_path", lambda parent: str(path))
    loaded = seg.load_model()
    assert loaded is not None and store_for(viewer).saved is loaded
    assert "membranes.unetseg" in seg.model_label.text()
    assert loaded.class_values == train.saved.class_values
    assert not notes

    viewer.add_image(image.data[1], name="plane")  # a 2D image, segmented with the loaded model
    seg.image_picker.set_layer("plane")
    click(seg.run_button)
    wait_job(seg)
    out = viewer.layers["plane segmentation"]
    assert out.data.shape == (128, 128) and np.isin(out.data, loaded.class_values).all()
    assert viewer.layers["plane probabilities"].data.shape == (128, 128)

    (tmp_path / "broken.unetseg").write_bytes(b"garbage")
    monkeypatch.setattr(_files, "ask_open_path", lambda parent: str(tmp_path / "broken.unetseg"))
    assert seg.load_model() is None and store_for(viewer).saved is loaded
    assert notes and notes[-1][0] == "error" and "Load model" in notes[-1][1]
