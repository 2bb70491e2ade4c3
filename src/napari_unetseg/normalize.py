"""Intensity normalisation fitted at training time and stored with the model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Normalization:
    """Map raw intensities so that the ``low``/``high`` percentile values go to 0 and 1.

    Values outside are not clipped (a robust linear map, as CSBDeep/StarDist do), so
    contrast outside the fitted range is kept.
    """

    low: float = 0.0
    high: float = 1.0
    p_low: float = 1.0
    p_high: float = 99.8

    @classmethod
    def fit(
        cls, image: Any, p_low: float = 1.0, p_high: float = 99.8, max_samples: int = 2_000_000
    ) -> Normalization:
        """Fit on an image or stack (any array-like; sub-sampled for big data)."""
        if not 0 <= p_low < p_high <= 100:
            raise ValueError(f"need 0 <= p_low < p_high <= 100, got {p_low}, {p_high}")
        arr = np.asarray(image)
        if arr.size == 0:
            raise ValueError("cannot fit a normalisation on an empty image")
        flat = arr.reshape(-1)
        if flat.size > max_samples:
            step = flat.size // max_samples + 1
            flat = flat[::step]
        flat = flat.astype(np.float64, copy=False)
        if not np.all(np.isfinite(flat)):
            raise ValueError("image contains NaN or infinite pixels; expected finite values")
        lo, hi = np.percentile(flat, [p_low, p_high])
        if hi <= lo:  # constant image: fall back to min/max, then to a unit range
            lo, hi = float(flat.min()), float(flat.max())
            if hi <= lo:
                hi = lo + 1.0
        return cls(float(lo), float(hi), float(p_low), float(p_high))

    def affine(self) -> tuple[np.float32, np.float32]:
        """``(offset, scale)`` in float32: the map is ``(x - offset) * scale``, the same on the
        host (:meth:`__call__`) and on a torch device (inference normalises there)."""
        return np.float32(self.low), np.float32(1.0 / (self.high - self.low))

    def __call__(self, array: Any) -> np.ndarray:
        """Return ``(array - low) / (high - low)`` as float32."""
        offset, scale = self.affine()
        return (np.asarray(array, dtype=np.float32) - offset) * scale

    def to_dict(self) -> dict[str, float]:
        return {"low": self.low, "high": self.high, "p_low": self.p_low, "p_high": self.p_high}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normalization:
        try:
            vals = {k: float(data[k]) for k in ("low", "high", "p_low", "p_high")}
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"bad normalisation record {data!r}: {e}") from e
        if not np.isfinite(list(vals.values())).all() or vals["high"] <= vals["low"]:
            raise ValueError(f"bad normalisation record {data!r}: need finite low < high")
        return cls(**vals)
