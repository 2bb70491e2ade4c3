"""Synthetic EM-like images of touching cells, for tests, demos and quick training runs.

The cells are a warped Voronoi tessellation of random, well-spread seeds. Between most
neighbouring cells a thin gap of "membrane" is carved out, but some pairs touch directly with no
background between them: the case the U-Net weight map (Ronneberger et al. 2015, eq. 2) is made
for. The image mimics ssTEM: dark membranes, textured bright interiors with a few dark granules,
a slight blur and Gaussian noise.

:func:`organelles` adds an object task to the same cells: mitochondria-like ellipses (a dark
double rim, striped "cristae", mid-grey) whose mask is the target, while the cell membranes and
granules around them are dark distractors.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree
from skimage.segmentation import relabel_sequential

__all__ = ["membrane_labels", "organelles", "touching_cells"]

MEMBRANE_VALUE = 0
INTERIOR_VALUE = 255


def _check_int(name: str, value: object, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value}")
    return int(value)


def _check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    if not isinstance(shape, (tuple, list)) or len(shape) not in (2, 3):
        raise ValueError(f"shape must be (Y, X) or (Z, Y, X), got {shape!r}")
    dims = tuple(_check_int("shape entry", s, 1) for s in shape)
    if min(dims[-2:]) < 8:
        raise ValueError(f"shape must be at least 8 x 8 in Y and X, got {dims}")
    return dims


def _in_plane_neighbours(a: np.ndarray) -> Iterator[np.ndarray]:
    """The 4-connected neighbours of every pixel in the last two axes (edges replicated)."""
    pad = [(0, 0)] * (a.ndim - 2) + [(1, 1), (1, 1)]
    p = np.pad(a, pad, mode="edge")
    ny, nx = a.shape[-2:]
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        yield p[..., dy:dy + ny, dx:dx + nx]


def _spread_seeds(shape: tuple[int, int], n: int, rng: np.random.Generator) -> np.ndarray:
    """n seed points at least ~0.7 cell radius apart (greedy dart throwing, shrinking the gap)."""
    area = shape[0] * shape[1]
    min_dist = 0.7 * np.sqrt(area / (np.pi * n))
    candidates = rng.uniform((0, 0), shape, size=(30 * n, 2))
    chosen = np.empty((n, 2))
    while True:
        k = 0
        for c in candidates:
            if k == 0 or np.hypot(*(chosen[:k] - c).T).min() >= min_dist:
                chosen[k] = c
                k += 1
                if k == n:
                    return chosen
        min_dist *= 0.8


def _tessellation(shape: tuple[int, int], n: int, rng: np.random.Generator) -> np.ndarray:
    """Warped Voronoi labels 1..n covering every pixel (stray fragments refilled)."""
    seeds = _spread_seeds(shape, n, rng)
    radius = np.sqrt(shape[0] * shape[1] / (np.pi * n))
    grid = np.indices(shape, dtype=np.float64)
    for axis in range(2):  # smooth random displacement makes the borders curved
        field = ndi.gaussian_filter(rng.standard_normal(shape), sigma=max(radius / 2, 1.0))
        grid[axis] += 0.4 * radius * field / (np.abs(field).max() + 1e-12)
    nearest = cKDTree(seeds).query(grid.reshape(2, -1).T)[1]
    labels = (nearest + 1).reshape(shape).astype(np.int32)
    keep = np.zeros_like(labels, dtype=bool)  # drop stray fragments, refill from neighbours
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        parts, count = ndi.label(labels[sl] == i)
        if count:
            biggest = np.argmax(np.bincount(parts.ravel())[1:]) + 1
            keep[sl] |= parts == biggest
    idx = ndi.distance_transform_edt(~keep, return_distances=False, return_indices=True)
    return labels[tuple(idx)]


def _carve_gaps(
    labels: np.ndarray, gap: int, touch_fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """Instances with a gap of width 0, gap or gap + 1 between each pair of neighbours."""
    other = np.zeros_like(labels)
    for nb in _in_plane_neighbours(labels):
        new = (nb != labels) & (other == 0)
        other[new] = nb[new]
    edge = other > 0
    if not edge.any():
        return labels.copy()
    dist, idx = ndi.distance_transform_edt(~edge, return_indices=True)
    near = tuple(idx)
    partner = np.where(labels[near] == labels, other[near], labels[near])
    n = int(labels.max()) + 1
    probs = [touch_fraction, 0.6 * (1 - touch_fraction), 0.4 * (1 - touch_fraction)]
    widths = rng.choice([0, gap, gap + 1], size=(n, n), p=probs) if gap > 0 else np.zeros((n, n))
    widths = np.triu(widths) + np.triu(widths, 1).T  # one width per unordered pair
    widths = widths.astype(np.int64)
    w = widths[labels, partner]
    half = w // 2
    band = (dist < half) | ((w % 2 == 1) & (labels < partner) & (dist < half + 1))
    inst = np.where(band, 0, labels).astype(np.int32)
    # near junctions the nearest border may be another pair's: cut any contact left between
    # two cells that should not touch, on the side of the higher label
    fix = np.zeros(inst.shape, dtype=bool)
    for nb in _in_plane_neighbours(inst):
        fix |= (nb > 0) & (nb < inst) & (widths[inst, nb] > 0)
    inst[fix] = 0
    return inst


def _contacts(instances: np.ndarray) -> np.ndarray:
    """Pixels with a 4-neighbour of a lower non-zero label: one side of each direct contact."""
    out = np.zeros(instances.shape, dtype=bool)
    for nb in _in_plane_neighbours(instances):
        out |= (nb > 0) & (nb < instances)
    return out


def _render(instances: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """EM-like intensities in [0, 1]: dark membranes, textured cells, faint direct contacts."""
    shape = instances.shape
    level = rng.uniform(0.55, 0.8, size=int(instances.max()) + 1)
    texture = ndi.gaussian_filter(rng.standard_normal(shape), 1.5)
    texture *= 0.06 / (texture.std() + 1e-12)
    granules = (rng.random(shape) < 1 / 120) & (instances > 0)
    granules = ndi.gaussian_filter(granules.astype(np.float64), 1.2) * 3.0
    image = np.where(instances > 0, level[instances] + texture - granules, 0.1)
    image[_contacts(instances)] -= 0.2  # touching cells still show a faint line, as in EM
    image = ndi.gaussian_filter(image, 0.8) + noise * rng.standard_normal(shape)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def _one_slice(
    shape: tuple[int, int], n_cells: int, gap: int, noise: float, touch: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    instances = _carve_gaps(_tessellation(shape, n_cells, rng), gap, touch, rng)
    instances = relabel_sequential(instances)[0].astype(np.int32)
    return _render(instances, noise, rng), instances


def touching_cells(
    shape: Sequence[int] = (128, 128),
    n_cells: int = 20,
    seed: int = 0,
    *,
    gap: int = 1,
    noise: float = 0.1,
    touch_fraction: float = 0.25,
) -> tuple[np.ndarray, np.ndarray]:
    """Make an EM-like image of touching cells and its instance labels.

    Parameters
    ----------
    shape : (Y, X) or (Z, Y, X)
        Output shape; for a stack every slice is an independent tessellation.
    n_cells : int
        Seeds per slice (cells cut to nothing by the gaps disappear, so a few less may remain).
    seed : int
        Random seed; the same arguments give the same arrays.
    gap : int
        Width in pixels of the gap between cells that do not touch: each pair of neighbours gets
        ``gap`` or ``gap + 1`` pixels of background, or none. 0 makes every cell touch.
    noise : float
        Standard deviation of the additive Gaussian noise (image range is [0, 1]).
    touch_fraction : float
        Fraction of neighbouring pairs that touch directly, with no background between them.

    Returns
    -------
    image : numpy.ndarray
        float32 in [0, 1]: dark membranes (0.1 before blur and noise), bright textured cells.
    instances : numpy.ndarray
        int32 instance labels, 0 = gap/background, 1..k per slice (sequential).
    """
    dims = _check_shape(shape)
    n_cells = _check_int("n_cells", n_cells, 1)
    seed = _check_int("seed", seed, 0)
    gap = _check_int("gap", gap, 0)
    if not np.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    if not 0.0 <= touch_fraction <= 1.0:
        raise ValueError(f"touch_fraction must be in [0, 1], got {touch_fraction!r}")
    if n_cells > dims[-1] * dims[-2] // 16:
        raise ValueError(f"n_cells={n_cells} is too many for {dims[-2:]}: at most "
                         f"{dims[-1] * dims[-2] // 16} (cells of at least 16 pixels)")
    args = (n_cells, gap, float(noise), float(touch_fraction))
    if len(dims) == 2:
        return _one_slice(dims, *args, np.random.default_rng(seed))
    children = np.random.SeedSequence(seed).spawn(dims[0])
    slices = [_one_slice(dims[1:], *args, np.random.default_rng(c)) for c in children]
    return np.stack([s[0] for s in slices]), np.stack([s[1] for s in slices])


def membrane_labels(instances: np.ndarray) -> np.ndarray:
    """ISBI-style membrane labels: 0 = membrane, 255 = cell interior.

    Background (0) is membrane, and where two cells touch directly the pixels of the higher label
    along the contact become membrane too, so the 4-connected components of the interior separate
    every pair of cells, as in the ISBI 2012 labels. Works on (Y, X) or per slice on (Z, Y, X).

    Parameters
    ----------
    instances : numpy.ndarray
        Integer instance labels, 0 = background.

    Returns
    -------
    numpy.ndarray
        uint8 of the same shape.
    """
    inst = np.asarray(instances)
    if not np.issubdtype(inst.dtype, np.integer):
        raise TypeError(f"instances must be an integer label image, got dtype {inst.dtype}")
    if inst.ndim not in (2, 3):
        raise ValueError(f"instances must be (Y, X) or (Z, Y, X), got shape {inst.shape}")
    interior = (inst > 0) & ~_contacts(inst)
    return np.where(interior, INTERIOR_VALUE, MEMBRANE_VALUE).astype(np.uint8)


def _ellipses(shape: tuple[int, int], n: int, size: float, rng: np.random.Generator
              ) -> np.ndarray:
    """Up to n non-overlapping random ellipses (labels 1..), semi-axes ~size and ~size/2."""
    out = np.zeros(shape, np.int32)
    yy, xx = np.indices(shape, dtype=np.float64)
    placed = 0
    for _ in range(40 * n):
        if placed == n:
            break
        a = size * rng.uniform(0.7, 1.3)
        b = a * rng.uniform(0.35, 0.7)
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        t = rng.uniform(0, np.pi)
        u = (yy - cy) * np.cos(t) + (xx - cx) * np.sin(t)
        v = -(yy - cy) * np.sin(t) + (xx - cx) * np.cos(t)
        inside = (u / a) ** 2 + (v / b) ** 2 <= 1
        if not inside.any() or (ndi.binary_dilation(inside, iterations=3) & (out > 0)).any():
            continue
        placed += 1
        out[inside] = placed
    return out


def organelles(
    shape: Sequence[int] = (128, 128),
    n_objects: int = 6,
    seed: int = 0,
    *,
    size: float = 12.0,
    n_cells: int = 12,
    noise: float = 0.08,
) -> tuple[np.ndarray, np.ndarray]:
    """Make an EM-like image of cells holding mitochondria-like objects, and the objects' labels.

    Parameters
    ----------
    shape : (Y, X) or (Z, Y, X)
        Output shape; every slice is independent.
    n_objects : int
        Objects per slice (fewer if they do not fit without overlapping).
    seed : int
        Random seed; the same arguments give the same arrays.
    size : float
        Typical long semi-axis of an object in pixels (the short one is 0.35-0.7 of it).
    n_cells : int
        Cells of the background (:func:`touching_cells`), whose membranes are distractors.
    noise : float
        Standard deviation of the additive Gaussian noise (image range [0, 1]).

    Returns
    -------
    image : numpy.ndarray
        float32 in [0, 1].
    objects : numpy.ndarray
        int32 object labels, 0 = background, 1..k per slice.
    """
    dims = _check_shape(shape)
    n_objects = _check_int("n_objects", n_objects, 1)
    seed = _check_int("seed", seed, 0)
    n_cells = _check_int("n_cells", n_cells, 1)
    if not (np.isfinite(size) and 2 <= size <= min(dims[-2:]) / 2):
        raise ValueError(f"size must be in [2, {min(dims[-2:]) / 2}], got {size!r}")
    if not np.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    children = np.random.SeedSequence(seed).spawn(1 if len(dims) == 2 else dims[0])
    images, masks = [], []
    for child in children:
        rng = np.random.default_rng(child)
        cells, _ = touching_cells(dims[-2:], n_cells, int(rng.integers(2**31)), noise=0.0)
        obj = _ellipses(dims[-2:], n_objects, float(size), rng)
        inside = obj > 0
        rim = inside & ~ndi.binary_erosion(inside, iterations=2)
        dist = ndi.distance_transform_edt(inside)
        angle = rng.uniform(0, np.pi, int(obj.max()) + 1)[obj]
        yy, xx = np.indices(obj.shape)
        stripes = 0.12 * np.sin((yy * np.cos(angle) + xx * np.sin(angle)) * 2 * np.pi / 5)
        body = 0.42 + stripes * (dist > 3)
        image = np.where(rim, 0.18, np.where(inside, body, cells))
        image = ndi.gaussian_filter(image, 0.7) + noise * rng.standard_normal(obj.shape)
        images.append(np.clip(image, 0, 1).astype(np.float32))
        masks.append(obj)
    if len(dims) == 2:
        return images[0], masks[0]
    return np.stack(images), np.stack(masks)
