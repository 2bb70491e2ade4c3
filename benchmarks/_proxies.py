"""Transfer proxies: other-looking EM stacks made from the held-out ISBI 2012 slices 25-29.

A model pretrained on ISBI proves little when it is scored on ISBI, and we have no other
labelled EM stack. These proxies change what differs between microscopes and labs, on slices
no model of ours trains on (25-29): the pixel size (content rescaled 0.5x and 2x, the latter a
1024^2 section), the contrast (inverted, gamma 0.5 and 2), the noise and the blur, and one
that combines several. Labels follow the image (nearest-neighbour rescaling).

    from _proxies import load_isbi, proxies
    image, labels = load_isbi()                  # (30, 512, 512) uint8 each
    for name, (img, lab) in proxies(image[25:30], labels[25:30]).items(): ...
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = [ROOT.parent / "shared/data/isbi2012", ROOT / "shared/data/isbi2012"]

#: The held-out slices every proxy is made from (never trained on).
HELD_OUT = slice(25, 30)


def load_isbi(data: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ISBI 2012 training volume and labels (255 = cell, 0 = membrane)."""
    import tifffile

    for d in [data] if data else DATA:
        if d is not None and (d / "train-volume.tif").exists():
            return tifffile.imread(d / "train-volume.tif"), tifffile.imread(d / "train-labels.tif")
    sys.exit("ISBI 2012 data not found; pass --data DIR holding train-volume.tif")


def _rescale(image: np.ndarray, labels: np.ndarray, factor: float) -> tuple:
    from skimage.transform import rescale

    img = np.stack([rescale(s.astype(np.float32), factor, order=1, anti_aliasing=factor < 1,
                            preserve_range=True) for s in image])
    lab = np.stack([rescale(s, factor, order=0, anti_aliasing=False, preserve_range=True)
                    for s in labels])
    return np.clip(img, 0, 255).round().astype(np.uint8), lab.astype(labels.dtype)


def _gamma(image: np.ndarray, g: float) -> np.ndarray:
    return (255 * (image / 255.0) ** g).round().astype(np.uint8)


def _noise(image: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(image + rng.normal(0, sigma, image.shape), 0, 255).round().astype(np.uint8)


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    out = np.stack([gaussian_filter(s.astype(np.float32), sigma) for s in image])
    return out.round().astype(np.uint8)


def _combo(image: np.ndarray, labels: np.ndarray) -> tuple:
    """Another lab, roughly: coarser pixels (0.7x), darker (gamma 1.5), blurred and noisy."""
    img, lab = _rescale(image, labels, 0.7)
    return _noise(_blur(_gamma(img, 1.5), 1.0), 12.0, seed=1), lab


PROXIES: dict[str, Callable[[np.ndarray, np.ndarray], tuple]] = {
    "isbi": lambda i, lab: (i, lab),
    "zoom_0.5": lambda i, lab: _rescale(i, lab, 0.5),
    "zoom_2": lambda i, lab: _rescale(i, lab, 2.0),
    "invert": lambda i, lab: (255 - i, lab),
    "gamma_0.5": lambda i, lab: (_gamma(i, 0.5), lab),
    "gamma_2": lambda i, lab: (_gamma(i, 2.0), lab),
    "noise_25": lambda i, lab: (_noise(i, 25.0), lab),
    "blur_2": lambda i, lab: (_blur(i, 2.0), lab),
    "combo": _combo,
}


def proxies(image: np.ndarray, labels: np.ndarray, names: list[str] | None = None) -> dict:
    """``name -> (image, labels)`` for the proxies named (default: all), uint8 stacks."""
    return {n: PROXIES[n](image, labels) for n in (names or list(PROXIES))}
