"""Seeded simulation of the strokes a user paints, from a ground truth.

The interactive loop (paint a few strokes, train, look, paint more) is benchmarked without a
user: :func:`simulate_strokes` paints strokes on chosen slices of a class map the way a careful
annotator does with napari's round brush, and returns them as a sparse labels layer
(0 = unpainted, ``k`` = class ``k``), ready for ``labels_mode="sparse"``.

How a stroke is drawn
---------------------
* Strokes are painted one after another; stroke ``i`` gets the class that is most behind its
  share (``fractions``), so classes alternate and the first ``n`` strokes of a run with more
  strokes are exactly the strokes of a run with ``n`` (a strokes sweep adds strokes, it does not
  redraw them).
* The start of a stroke is a random pixel of its class where the brush fits (``where`` can
  weight the draw, e.g. by a model's uncertainty), away from the strokes already painted.
* ``user="look"`` is a user who paints what is at the spot instead of keeping the classes'
  shares: a spot is drawn from ``where`` over the whole slice (away from earlier strokes). If
  a ``"line"`` class (a membrane) lies within ``LOOK_PX`` of it, the user paints along that
  line, from its nearest skeleton pixel; otherwise the stroke is of the class under the spot,
  from the nearest pixel where the brush fits. A hot spot on a faint true membrane so gets a
  membrane stroke, and one on a false line (an organelle's rim inside a cell) a stroke of the
  cell interior over it.
* A ``"line"`` class (membranes) is traced along its skeleton (the thin structure's centre
  line), keeping its direction at branch points, for ``length`` pixels; a ``"region"`` class
  (cell interiors, objects, background) is a smooth random walk of ``length`` pixels inside it
  that turns away from its border.
* The path is painted with a round brush of ``width`` pixels and clipped to the true class, so
  strokes never carry a wrong label (a real user's brush slips; this one does not).

:func:`membrane_strokes` is the EM membrane task (ISBI 2012 labels: 0 = membrane): 3-px
strokes along membranes (label 1) and 5-px strokes inside cells (label 2); 40 strokes on a
512x512 slice paint about 1.8 % of it. :func:`object_strokes` is the object task: 5-px strokes
in the background (label 1) and inside objects (label 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage as ndi

__all__ = ["KINDS", "LOOK_PX", "USERS", "membrane_strokes", "object_strokes",
           "simulate_strokes"]

KINDS = ("line", "region")
USERS = ("share", "look")
#: px: a ``user="look"`` stroke whose spot is this close to a line class follows that line
LOOK_PX = 3.0
_NEIGHBOURS = np.array([(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx])


def _brush(width: int) -> np.ndarray:
    """Offsets of a round brush of diameter ``width`` (3 -> 3x3, 5 -> a 21-pixel disk)."""
    r = width / 2
    k = int(np.ceil(r))
    dy, dx = np.mgrid[-k:k + 1, -k:k + 1]
    keep = dy**2 + dx**2 <= r * r
    return np.stack([dy[keep], dx[keep]], 1)


def _check_positive_int(name: str, value: Any, lo: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value}")
    return int(value)


def _per_class(name: str, value: Any, k: int, kind: type) -> tuple:
    vals = tuple(value) if isinstance(value, (tuple, list)) else (value,) * k
    if len(vals) != k:
        raise ValueError(f"{name} needs one value per class ({k}), got {len(vals)}: {vals}")
    return vals


def _schedule(n: int, fractions: Sequence[float]) -> list[int]:
    """Class index of each stroke: the class most behind its share goes next (prefix-stable)."""
    f = np.asarray(fractions, float) / float(np.sum(fractions))
    counts = np.zeros(len(f))
    out = []
    for i in range(n):
        c = int(np.argmax(f * (i + 1) - counts))
        counts[c] += 1
        out.append(c)
    return out


def _follow(skel: np.ndarray, start: tuple[int, int], steps: int, seen: set,
            rng: np.random.Generator) -> list[tuple[int, int]]:
    """Up to ``steps`` skeleton pixels from ``start``, keeping the heading at branch points."""
    h, w = skel.shape
    y, x = start
    heading = None
    out: list[tuple[int, int]] = []
    while len(out) < steps:
        cands = [(y + dy, x + dx) for dy, dx in _NEIGHBOURS
                 if 0 <= y + dy < h and 0 <= x + dx < w and skel[y + dy, x + dx]
                 and (y + dy, x + dx) not in seen]
        if not cands:
            break
        vecs = np.array(cands, float) - (y, x)
        vecs /= np.hypot(vecs[:, 0], vecs[:, 1])[:, None]
        i = int(rng.integers(len(cands))) if heading is None else int(np.argmax(vecs @ heading))
        heading = vecs[i] if heading is None else 0.6 * heading + 0.4 * vecs[i]
        y, x = cands[i]
        seen.add((y, x))
        out.append((y, x))
    return out


def _trace_line(skel: np.ndarray, start: tuple[int, int], length: int,
                rng: np.random.Generator) -> list[tuple[int, int]]:
    """A path of up to ``length`` pixels along the skeleton, both ways from ``start``."""
    seen = {start}
    ahead = _follow(skel, start, length - 1, seen, rng)
    back = _follow(skel, start, length - 1 - len(ahead), seen, rng)
    return back[::-1] + [start] + ahead


def _walk_region(safe: np.ndarray, start: tuple[int, int], length: int,
                 rng: np.random.Generator) -> list[tuple[int, int]]:
    """A smooth random walk of up to ``length`` 1-px steps that stays on ``safe`` pixels."""
    h, w = safe.shape
    pos = np.array(start, float)
    theta = rng.uniform(0, 2 * np.pi)
    path = [start]
    for _ in range(length - 1):
        theta += rng.normal(0, 0.25)
        for turn in (0, 0.5, -0.5, 1.0, -1.0, 1.6, -1.6):  # steer away from the border
            nxt = pos + (np.sin(theta + turn), np.cos(theta + turn))
            y, x = int(round(nxt[0])), int(round(nxt[1]))
            if 0 <= y < h and 0 <= x < w and safe[y, x]:
                theta += turn
                break
        else:
            break
        pos = nxt
        if (y, x) != path[-1]:
            path.append((y, x))
    return path


def _draw(cand: np.ndarray, where: np.ndarray | None, rng: np.random.Generator) -> int:
    """One of the flat indices ``cand``, in proportion to ``where`` (uniform without)."""
    if where is None:
        return int(cand[rng.integers(cand.size)])
    p = where.ravel()[cand].astype(np.float64)
    return int(cand[rng.choice(cand.size, p=p / p.sum() if p.sum() > 0 else None)])


class _Look:
    """What a user who looks at a spot paints there (``user="look"``, the module docstring)."""

    def __init__(self, classes: np.ndarray, kinds: tuple, starts: list) -> None:
        self.classes = classes
        #: per class: distance to its nearest start pixel and that pixel's indices (None: absent)
        self.edt = [ndi.distance_transform_edt(~s, return_indices=True) if s.any() else None
                    for s in starts]
        self.lines = [c for c, kind in enumerate(kinds)
                      if kind == "line" and self.edt[c] is not None]

    def __call__(self, spot: tuple[int, int]) -> tuple[int, tuple[int, int]]:
        y, x = spot
        near = [(self.edt[c][0][y, x], c) for c in self.lines]
        if near and min(near)[0] <= LOOK_PX:  # along the nearest line (its skeleton)
            c = min(near)[1]
        else:
            c = int(self.classes[y, x]) - 1
            if c < 0 or self.edt[c] is None:  # unpaintable pixel: the first paintable class
                c = next(k for k, e in enumerate(self.edt) if e is not None)
        idx = self.edt[c][1]
        return c, (int(idx[0][y, x]), int(idx[1][y, x]))


def _paint_slice(
    classes: np.ndarray, n: int, kinds: tuple, widths: tuple, fractions: tuple, length: int,
    where: np.ndarray | None, rng: np.random.Generator, user: str = "share",
) -> np.ndarray:
    from skimage.morphology import skeletonize

    h, w = classes.shape
    out = np.zeros((h, w), np.uint8)
    k = len(kinds)
    masks = [classes == c + 1 for c in range(k)]
    guides, starts = [], []
    for c in range(k):
        if kinds[c] == "line":
            guide = skeletonize(masks[c])
            start_ok = guide
        else:
            dist = ndi.distance_transform_edt(masks[c])
            guide = dist > widths[c] / 2  # the brush lies inside the class
            if not guide.any():  # thin everywhere: the deepest pixels
                guide = dist >= max(dist.max(), 1)
            start_ok = guide
        guides.append(guide)
        starts.append(start_ok)
    near = np.zeros((h, w), bool)  # pixels close to earlier strokes: no new start there
    if user == "look" and not any(s.any() for s in starts):
        return out  # nothing on this slice can be painted
    look = _Look(classes, kinds, starts) if user == "look" else None
    for c in (_schedule(n, fractions) if look is None else [None] * n):
        ok = starts[c] & ~near if look is None else ~near
        if not ok.any():
            ok = starts[c] if look is None else np.ones((h, w), bool)
        if not ok.any():
            continue  # this class is absent from the slice
        idx = _draw(np.flatnonzero(ok), where, rng)
        start = divmod(idx, w)
        if look is not None:
            c, start = look(start)
        if kinds[c] == "line":
            path = _trace_line(guides[c], start, length, rng)
        else:
            path = _walk_region(guides[c], start, length, rng)
        pts = np.array(path)[:, None, :] + _brush(widths[c])[None]
        pts = pts.reshape(-1, 2)
        pts = pts[(pts[:, 0] >= 0) & (pts[:, 0] < h) & (pts[:, 1] >= 0) & (pts[:, 1] < w)]
        ys, xs = pts[:, 0], pts[:, 1]
        keep = masks[c][ys, xs] & (out[ys, xs] == 0)
        out[ys[keep], xs[keep]] = c + 1
        y0, y1 = max(0, ys.min() - 6), min(h, ys.max() + 7)
        x0, x1 = max(0, xs.min() - 6), min(w, xs.max() + 7)
        near[y0:y1, x0:x1] |= ndi.binary_dilation(out[y0:y1, x0:x1] > 0, iterations=6)
    return out


def simulate_strokes(
    classes: Any,
    *,
    n_strokes: int = 40,
    kinds: str | Sequence[str] = "region",
    widths: int | Sequence[int] = 5,
    fractions: float | Sequence[float] = 1.0,
    length: int = 25,
    slices: Sequence[int] | None = None,
    where: Any = None,
    seed: int = 0,
    user: str = "share",
) -> np.ndarray:
    """Paint ``n_strokes`` simulated strokes per slice on a class map.

    Parameters
    ----------
    classes : array_like of int
        ``(Y, X)`` or ``(Z, Y, X)``: the true class of every pixel, ``1..K``; 0 = never painted.
    n_strokes : int
        Strokes per painted slice (shared among the classes by ``fractions``).
    kinds : "line", "region" or one per class
        ``"line"``: traced along the class's skeleton (membranes); ``"region"``: a smooth walk
        inside the class (see the module docstring).
    widths : int or one per class
        Brush diameter in pixels.
    fractions : float or one per class
        Relative share of the strokes for each class (default: equal).
    length : int
        Path length of a stroke in pixels (shorter where a structure ends).
    slices : sequence of int or None
        Slices to paint (default: all).
    where : array_like or None
        Non-negative weights of the classes' shape: a stroke starts at a pixel drawn with
        probability proportional to its weight (None: uniform), e.g. a model's uncertainty.
    seed : int
        The same arguments and seed give the same strokes; each slice has its own stream, so a
        slice's strokes do not depend on which other slices are painted.
    user : "share" or "look"
        ``"share"``: each stroke's class is the one most behind its share of ``fractions``.
        ``"look"``: each stroke paints what is at a spot drawn from ``where``; a spot within
        ``LOOK_PX`` of a line class follows that line (the module docstring). ``fractions`` is
        then unused.

    Returns
    -------
    numpy.ndarray
        uint8 sparse labels of ``classes``' shape: 0 = unpainted, ``k`` = class ``k``.
    """
    cls = np.asarray(classes)
    if cls.dtype.kind not in "iub" or cls.ndim not in (2, 3):
        raise ValueError(f"classes must be an integer (Y, X) or (Z, Y, X) map, got dtype "
                         f"{cls.dtype} shape {cls.shape}")
    k = int(cls.max()) if cls.size else 0
    if not 1 <= k <= 255 or cls.min() < 0:
        raise ValueError(f"classes must hold values 0..K with 1 <= K <= 255, got "
                         f"[{cls.min() if cls.size else None}, {k}]")
    n = _check_positive_int("n_strokes", n_strokes, 0)
    length = _check_positive_int("length", length)
    seed = _check_positive_int("seed", seed, 0)
    if user not in USERS:
        raise ValueError(f"user must be one of {USERS}, got {user!r}")
    kinds_t = _per_class("kinds", kinds, k, str)
    if any(x not in KINDS for x in kinds_t):
        raise ValueError(f"kinds must be among {KINDS}, got {kinds_t}")
    widths_t = tuple(_check_positive_int("widths", x) for x in _per_class("widths", widths, k,
                                                                            int))
    fr = _per_class("fractions", fractions, k, float)
    if any(not np.isfinite(f) or f < 0 for f in fr) or sum(fr) <= 0:
        raise ValueError(f"fractions must be >= 0 with a positive sum, got {fr}")
    stack = cls[None] if cls.ndim == 2 else cls
    wts = None
    if where is not None:
        wts = np.asarray(where, np.float64)
        if wts.shape != cls.shape or not np.all(np.isfinite(wts)) or (wts < 0).any():
            raise ValueError(f"where must be finite weights >= 0 of shape {cls.shape}")
        wts = wts[None] if cls.ndim == 2 else wts
    todo = range(len(stack)) if slices is None else [int(s) for s in slices]
    bad = [s for s in todo if not 0 <= s < len(stack)]
    if bad:
        raise ValueError(f"slices {bad} are outside the {len(stack)} slice(s)")
    out = np.zeros(stack.shape, np.uint8)
    for z in todo:
        rng = np.random.default_rng([seed, z])
        out[z] = _paint_slice(stack[z], n, kinds_t, widths_t, fr, length,
                              None if wts is None else wts[z], rng, user)
    return out[0] if cls.ndim == 2 else out


def membrane_strokes(
    gt: Any, *, slices: Sequence[int] | None = (0, 1), n_strokes: int = 40,
    membrane_value: int = 0, length: int = 25, seed: int = 0, where: Any = None,
    user: str = "share",
) -> np.ndarray:
    """Membrane-task strokes on an EM ground truth (ISBI 2012: 0 = membrane, 255 = cell).

    3-px strokes along membranes are label 1, 5-px strokes inside cells label 2, half each
    (``user="share"``) or as a user finds them at the spots (``"look"``; see
    :func:`simulate_strokes` for the other parameters; ``slices=None`` paints all).
    """
    g = np.asarray(gt)
    classes = np.where(g == membrane_value, 1, 2).astype(np.uint8)
    slices = slices if g.ndim == 3 else None
    return simulate_strokes(classes, n_strokes=n_strokes, kinds=("line", "region"),
                            widths=(3, 5), length=length, slices=slices, where=where, seed=seed,
                            user=user)


def object_strokes(
    objects: Any, *, slices: Sequence[int] | None = None, n_strokes: int = 40,
    length: int = 25, seed: int = 0, where: Any = None,
) -> np.ndarray:
    """Object-task strokes: 5-px strokes in the background (label 1) and inside objects
    (label 2), half each. ``objects`` is a mask or instance labels (non-zero = object)."""
    classes = np.where(np.asarray(objects) != 0, 2, 1).astype(np.uint8)
    return simulate_strokes(classes, n_strokes=n_strokes, kinds="region", widths=5,
                            length=length, slices=slices, where=where, seed=seed)
