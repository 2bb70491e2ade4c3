"""Intensity normalisation fitted at training time and stored with the model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Normalization:
    """Map raw intensities so that the ``low``/``high`` percentile values go to 0 and 1.

    Values outside are not clipped (a robust linear map, as CSBDeep/StarDist do), so
    contrast outside the fitted range is kept. The map is computed in float32: ``low`` and
    ``high`` must be finite there and ``1 / (high - low)`` a normal float32 (ValueError
    otherwise), and :meth:`check_range` tells whether an image's values stay finite under it.
    """

    low: float = 0.0
    high: float = 1.0
    p_low: float = 1.0
    p_high: float = 99.8

    def __post_init__(self) -> None:
        vals = (self.low, self.high, self.p_low, self.p_high)
        if not all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
                   for v in vals) or not np.isfinite(np.asarray(vals, np.float64)).all():
            raise ValueError(f"normalisation needs finite numbers, got {_short(self)}")
        if not 0 <= self.p_low < self.p_high <= 100:
            raise ValueError(f"normalisation needs 0 <= p_low < p_high <= 100, got {_short(self)}")
        if not self.low < self.high:
            raise ValueError(f"normalisation needs low < high, got {_short(self)}")
        with np.errstate(over="ignore", under="ignore"):
            low, high = np.float32(self.low), np.float32(self.high)
            scale = np.float32(1.0 / (float(self.high) - float(self.low)))
        if not (np.isfinite(low) and np.isfinite(high)) or not (
                np.finfo(np.float32).tiny <= scale < np.inf):
            raise ValueError(
                f"normalisation range {self.low:.3g}..{self.high:.3g} cannot be applied in "
                "float32 (its bounds or its scale 1/(high - low) overflow or underflow); "
                "rescale the image to a smaller range")

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
                hi = lo + max(1.0, abs(lo) * 1e-6)  # a step float32 still resolves
        try:
            norm = cls(float(lo), float(hi), float(p_low), float(p_high))
        except ValueError as e:
            raise ValueError(f"image intensities cannot be normalised: {e}") from None
        norm.check_range(float(flat.min()), float(flat.max()))
        return norm

    def check_range(self, lo: float, hi: float, where: str = "image") -> None:
        """Raise ValueError if values in ``lo..hi`` overflow float32 once normalised (a NaN or
        infinite bound is refused too), instead of feeding infinities to a network."""
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise ValueError(f"{where} contains NaN or infinite pixels; expected finite values")
        offset, scale = self.affine()
        with np.errstate(over="ignore", invalid="ignore"):
            ends = (np.float32([lo, hi]) - offset) * scale
        if not np.isfinite(ends).all():
            raise ValueError(
                f"{where} values {lo:.3g}..{hi:.3g} overflow float32 once normalised with the "
                f"model's range {self.low:.3g}..{self.high:.3g}; rescale the image")

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
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise ValueError(_cut(f"bad normalisation record {_short(data)}: {e}")) from e
        return cls(**vals)


def _short(obj: Any, limit: int = 200) -> str:
    return _cut(repr(obj), limit)


def _cut(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
