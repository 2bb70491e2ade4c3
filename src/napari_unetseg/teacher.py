"""A random-forest teacher for training from strokes.

A random forest on multiscale pixel features (the pixel classifier of ilastik,
napari-convpaint and APOC) learns from a few strokes in a second or two and does not overfit
them the way a network does in its first minute. :class:`ForestTeacher` fits one on the
training strokes (``TrainConfig.teacher = "forest"``), predicts a few slices (the painted
ones, then others spread over the stack) and keeps the pixels it is sure of
(``teacher_confidence``) as extra targets where nothing is painted; the network then trains
on the strokes, the forest's sure pixels and, with self-training, its own
(:class:`~napari_unetseg.selftrain.PseudoLabels`, which holds the targets). The network ends
up better than its teacher: it learns the context the forest's per-pixel features lack.
Strokes painted during training refit the forest at most every :data:`REFIT_S` seconds, and
after a fit that took ``c`` seconds not before ``2 c`` more (``training.ROUND_SPACING``).
Measured in ``benchmarks/scribbles.py`` (docs/performance.md).

The features are scikit-image's ``multiscale_basic_features`` (intensity, edges and Hessian
texture at sigma 1-16) and the forest scikit-learn's ``RandomForestClassifier(100)``, as in
the benchmark's random-forest anchor.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator

import numpy as np

from .data import IGNORE, TrainingData

__all__ = ["MAX_SAMPLES", "REFIT_S", "WINDOW", "ForestTeacher", "features", "painted_features"]

#: At most this many painted pixels (drawn at random) train the forest: fit time stays ~1-2 s.
MAX_SAMPLES = 60_000
#: The forest predicts at most a WINDOW x WINDOW window of each of its slices (a random one on
#: bigger slices): about a second per slice on 2 cores.
WINDOW = 512
#: Seconds of training between two fits after the strokes changed.
REFIT_S = 20.0


#: Painted slices are featurised in tiles of this side (plus a :data:`HALO` on every side), so
#: that a large slice never needs all its features at once (20 floats per pixel).
TILE = 1024
#: Context around a tile: four times the largest sigma.
HALO = 64


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """scikit-learn's joblib workers warn about its configuration (once per tree) whenever
    the warning filters are empty, e.g. under some test runners: nothing a user can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*sklearn.utils.parallel.delayed")
        yield


def painted_features(plane: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Features ``(N, F)`` and classes ``(N,)`` of the painted pixels (``target >= 0``) of a
    ``(C, H, W)`` slice, computed tile by tile (only tiles with painted pixels)."""
    h, w = target.shape
    xs, ys = [], []
    for y0 in range(0, h, TILE):
        for x0 in range(0, w, TILE):
            tile = target[y0:y0 + TILE, x0:x0 + TILE]
            painted = tile >= 0
            if not painted.any():
                continue
            a, b = max(0, y0 - HALO), max(0, x0 - HALO)
            f = features(plane[:, a:min(h, y0 + TILE + HALO), b:min(w, x0 + TILE + HALO)])
            xs.append(f[y0 - a:y0 - a + tile.shape[0], x0 - b:x0 - b + tile.shape[1]][painted])
            ys.append(tile[painted])
    if not xs:
        return np.zeros((0, 0), np.float32), np.zeros(0, target.dtype)
    return np.concatenate(xs), np.concatenate(ys)


def features(plane: np.ndarray) -> np.ndarray:
    """``(H, W, F)`` features of a ``(C, H, W)`` slice: scikit-image's multiscale intensity,
    edges and texture at sigma 1-16, per channel."""
    from skimage.feature import multiscale_basic_features

    plane = np.asarray(plane, np.float32)
    if plane.shape[0] == 1:
        return multiscale_basic_features(plane[0], sigma_min=1, sigma_max=16)
    return multiscale_basic_features(plane, sigma_min=1, sigma_max=16, channel_axis=0)


class ForestTeacher:
    """Fits a random forest on a run's training strokes and labels its sure pixels.

    Parameters
    ----------
    slices : int
        Slices the forest labels: the painted ones first, then others evenly spread.
    confidence : float
        Smallest forest probability that makes a pixel a target.
    seed : int
        Seeds the forest, the sampled pixels and the windows.
    """

    def __init__(self, slices: int = 4, confidence: float = 0.8, seed: int = 0) -> None:
        self.slices, self.confidence, self.seed = slices, confidence, seed
        self.fits = 0
        self.fitted_on: TrainingData | None = None  # the data of the last fit (its strokes)
        self.last_s = -np.inf  # run time of the last fit
        self.not_before_s = -np.inf  # no refit before this run time (set by the training)
        self.seconds = 0.0  # spent fitting and predicting, all fits
        self.forest = None  # the last fitted forest (None before a fit with two classes)

    def due(self, data: TrainingData, elapsed_s: float) -> bool:
        """True before the first fit, and when ``data`` (the strokes: new strokes make new
        training data) is not what the last fit saw, :data:`REFIT_S` seconds after it and not
        before :attr:`not_before_s`."""
        if self.fitted_on is None:
            return True
        return (data is not self.fitted_on and elapsed_s - self.last_s >= REFIT_S
                and elapsed_s >= self.not_before_s)

    def pick(self, data: TrainingData) -> list[int]:
        """The painted slices, then evenly spread others, :attr:`slices` in all (at least
        the painted ones)."""
        painted = list(data.train_slices)
        others = [z for z in range(len(data.image)) if z not in painted]
        extra = min(len(others), max(0, self.slices - len(painted)))
        spread = np.linspace(0, len(others) - 1, extra).astype(int) if extra else []
        return painted + [others[i] for i in spread]

    def targets(self, data: TrainingData, elapsed_s: float = 0.0) -> dict[int, np.ndarray]:
        """Fit on ``data``'s training strokes; per picked slice, ``(H, W)`` int16 class
        indices where the forest is sure, else IGNORE. Empty without two painted classes."""
        t0 = time.perf_counter()
        try:
            return self._targets(data, elapsed_s)
        finally:
            self.seconds += time.perf_counter() - t0

    def _targets(self, data: TrainingData, elapsed_s: float) -> dict[int, np.ndarray]:
        from sklearn.ensemble import RandomForestClassifier

        self.fitted_on, self.last_s = data, elapsed_s
        rng = np.random.default_rng(self.seed + self.fits)
        self.fits += 1
        xs, ys = [], []
        for z in data.train_slices:
            x, y = painted_features(data.image[z], data.train_target[z])
            xs.append(x)
            ys.append(y)
        if not xs:
            return {}
        x, y = np.concatenate(xs), np.concatenate(ys)
        if len(np.unique(y)) < 2:
            return {}
        if len(y) > MAX_SAMPLES:
            keep = rng.choice(len(y), MAX_SAMPLES, replace=False)
            x, y = x[keep], y[keep]
        forest = RandomForestClassifier(n_estimators=100, n_jobs=-1, random_state=self.seed)
        with _quiet():
            forest.fit(x, y)
        self.forest = forest
        out = {}
        for z in self.pick(data):
            h, w = data.train_target[z].shape
            y0 = int(rng.integers(h - min(h, WINDOW) + 1))
            x0 = int(rng.integers(w - min(w, WINDOW) + 1))
            win = (slice(y0, y0 + min(h, WINDOW)), slice(x0, x0 + min(w, WINDOW)))
            prob = self.probabilities(data.image[z][(slice(None), *win)])
            cls = np.asarray(forest.classes_)[prob.argmax(-1)]
            target = np.full((h, w), IGNORE, np.int16)
            target[win] = np.where(prob.max(-1) >= self.confidence, cls, IGNORE)
            out[z] = target
        return out

    def probabilities(self, plane: np.ndarray) -> np.ndarray | None:
        """``(H, W, K)`` probabilities of the forest's classes (``forest.classes_``) on a
        normalised ``(C, H, W)`` slice, by the last fitted forest (None before one)."""
        forest = self.forest
        if forest is None:
            return None
        f = features(plane)
        with _quiet():
            prob = forest.predict_proba(f.reshape(-1, f.shape[-1]))
        return prob.reshape(*f.shape[:2], -1)

    def predict(self, plane: np.ndarray) -> np.ndarray | None:
        """``(H, W)`` class indices of a normalised ``(C, H, W)`` slice by the last fitted
        forest (None before one): e.g. a first preview while the network has barely begun."""
        prob = self.probabilities(plane)
        if prob is None:
            return None
        return np.asarray(self.forest.classes_)[prob.argmax(-1)].astype(np.int16)
