"""The bundled pretrained EM membrane model, shipped inside the package.

A small U-Net trained on the dense ISBI 2012 membrane labels (slices 0-24 only) with
augmentation for other EM stacks (zoom, contrast, gamma, inversion, noise, blur, elastic);
``benchmarks/make_bundled_model.py`` makes it, and its metadata names the data and its terms.
It segments membranes (class value 0) and cell interiors (255) with no training, and is the
starting point of Train's "bundled" init.

Its intensities are normalised on each image it is applied to (percentiles fitted there, the
``normalize_per_image`` metadata flag), not with the training stack's numbers, so another
lab's stack, or a uint16 one, is mapped as ISBI was.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from .normalize import Normalization

__all__ = ["BUNDLED", "bundled_path", "for_image", "is_bundled", "load_bundled",
           "normalization_for", "per_image"]

#: The name that stands for the bundled model (CLI ``predict bundled``, ``train --init``).
BUNDLED = "bundled"
_FILE = "bundled_em_membranes.unetseg"
_FLAG = "normalize_per_image"


def bundled_path() -> Path:
    """Path of the bundled model file inside the installed package."""
    return Path(__file__).parent / "data" / _FILE


def load_bundled(device: str = "cpu") -> Any:
    """Load the bundled EM membrane model (a :class:`~napari_unetseg.io.SavedModel`).

    Like any model file it is read without executing code (:func:`napari_unetseg.io.load_model`);
    float16 weights are restored to float32.
    """
    from .io import load_model

    path = bundled_path()
    if not path.exists():
        raise FileNotFoundError(f"the bundled model {path} is missing from this installation")
    return load_model(path, device=device)


def is_bundled(saved: Any) -> bool:
    """True for a model whose metadata says it is the bundled model."""
    meta = getattr(saved, "metadata", None) or {}
    return bool(meta.get("bundled"))


def per_image(saved: Any) -> bool:
    """True for a model whose intensities are normalised on each image it segments."""
    return bool((getattr(saved, "metadata", None) or {}).get(_FLAG))


def normalization_for(saved: Any, image: Any, max_slices: int = 8) -> Normalization:
    """The normalisation to segment ``image`` with.

    A model flagged ``normalize_per_image`` in its metadata (the bundled one) gets percentiles
    fitted on ``image`` (at most ``max_slices`` evenly spaced slices of a stack are read);
    any other model keeps the normalisation it was trained with.
    """
    norm = saved.normalization
    if not per_image(saved):
        return norm
    shape = np.shape(image)
    if len(shape) >= 3 and shape[0] > max_slices:
        picks = np.linspace(0, shape[0] - 1, max_slices).round().astype(int)
        sample = np.stack([np.asarray(image[int(z)]) for z in picks])
    else:
        sample = np.asarray(image)
    return Normalization.fit(sample, norm.p_low, norm.p_high)


def for_image(saved: Any, image: Any) -> Any:
    """``saved`` with the normalisation :func:`normalization_for` gives for ``image``."""
    norm = normalization_for(saved, image)
    return saved if norm is saved.normalization else dataclasses.replace(saved, normalization=norm)
