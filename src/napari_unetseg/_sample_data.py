"""The packaged EM sample: slices 22-29 of the ISBI 2012 training stack and its labels.

Plain numpy and tifffile: this module imports no napari or Qt, and napari's sample-data hook
gets plain ``(data, kwargs, layer_type)`` tuples. Credit and terms: ``data/README.md``
(Cardona et al. 2010, PLoS Biol 8:e1000502; Arganda-Carreras et al. 2015, Front Neuroanat 9:142).
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import numpy as np
import tifffile

IMAGE_FILE = "isbi2012_sample.tif"
LABELS_FILE = "isbi2012_sample_labels.tif"
#: Slices of the full 30-slice ISBI 2012 training stack that the sample holds, in order.
SAMPLE_SLICES = tuple(range(22, 30))
#: Values of the labels layer made by :func:`make_sample_data`.
MEMBRANE = 1
INTERIOR = 2
#: Layer names: the sample's layers say so, and its labels say they are the ground truth,
#: so neither is taken for a layer the user made (napari names a new labels layer "Labels").
IMAGE_NAME = "EM image (ISBI sample)"
LABELS_NAME = "membrane ground truth (ISBI sample)"
#: ``layer.metadata`` key set (True) on the ground-truth labels layer: widgets that pick a
#: layer to train on prefer the user's own labels to it.
GROUND_TRUTH = "ground_truth"

_CITATION = (
    "ISBI 2012 EM challenge training stack, slices 22-29. Cardona et al. 2010, PLoS Biol "
    "8(10):e1000502; Arganda-Carreras et al. 2015, Front Neuroanat 9:142. Non-commercial "
    "segmentation software use; see napari_unetseg/data/README.md."
)


def _read(name: str) -> np.ndarray:
    ref = resources.files("napari_unetseg") / "data" / name
    with resources.as_file(ref) as path:
        return tifffile.imread(path)


def load_sample() -> tuple[np.ndarray, np.ndarray]:
    """Load the packaged EM sample.

    Returns
    -------
    image : numpy.ndarray
        uint8, shape (8, 512, 512): ssTEM slices 22-29 of the ISBI 2012 training volume.
    labels : numpy.ndarray
        uint8, shape (8, 512, 512), the original ISBI convention: 255 = cell interior,
        0 = membrane.

    Notes
    -----
    Our benchmarks train on slices 0-24 and score on 25-29, so sample indices 0-2 are training
    slices and 3-7 are evaluation slices.
    """
    return _read(IMAGE_FILE), _read(LABELS_FILE)


def membrane_classes(labels: np.ndarray) -> np.ndarray:
    """Convert ISBI labels (0 = membrane, 255 = interior) to napari Labels values.

    Parameters
    ----------
    labels : numpy.ndarray
        ISBI-style labels: 0 = membrane, any other value = cell interior.

    Returns
    -------
    numpy.ndarray
        uint8 of the same shape: :data:`MEMBRANE` (1) on membrane, :data:`INTERIOR` (2) inside
        cells. 0 is left unused because napari draws 0 transparent and treats it as "not
        annotated", so every pixel of this dense ground truth carries a class.
    """
    labels = np.asarray(labels)
    return np.where(labels == 0, MEMBRANE, INTERIOR).astype(np.uint8)


def make_sample_data() -> list[tuple[Any, dict[str, Any], str]]:
    """napari sample-data hook: the EM stack and its membrane ground truth as two layers.

    Returns
    -------
    list of (data, kwargs, layer_type)
        ``(image, {"name": IMAGE_NAME, ...}, "image")`` and
        ``(classes, {"name": LABELS_NAME, ...}, "labels")`` where ``classes`` is 1 on
        membrane and 2 inside cells (see :func:`membrane_classes`); the labels' metadata has
        ``GROUND_TRUTH: True``.
    """
    image, labels = load_sample()
    meta = {"source": _CITATION, "slices": list(SAMPLE_SLICES)}
    image_kwargs = {"name": IMAGE_NAME, "colormap": "gray", "metadata": meta}
    labels_kwargs = {
        "name": LABELS_NAME,
        "opacity": 0.4,
        "metadata": {**meta, GROUND_TRUTH: True,
                     "classes": {MEMBRANE: "membrane", INTERIOR: "cell interior"}},
    }
    return [
        (image, image_kwargs, "image"),
        (membrane_classes(labels), labels_kwargs, "labels"),
    ]
