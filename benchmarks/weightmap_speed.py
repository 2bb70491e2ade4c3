"""Speed of the U-Net weight map (Ronneberger 2015, eq. 2) on one CPU core.

Builds a 512 x 512 layout of about 300 touching cells (a watershed/Voronoi tessellation of
random seeds with 1-2 px background gaps) and times ``weight_map`` (best of N). In the same run
it times a brute-force baseline: one full-image EDT per instance with a running two-smallest
update, the same values as stacking and sorting, without the n x H x W memory. Two harder
layouts are reported too: EM-like 6 px membranes and sparse discs, where the second pass
(full-margin windows) does most of the work.

Prints a table, then one JSON line with the timings, the speed-up, the largest difference to
the baseline and the machine. Only the 1-2 px layout is checked against the 100 ms target
(PASS/FAIL); the exit code is 0 either way.

    python benchmarks/weightmap_speed.py [--repeat 20] [--ref-repeat 2] [--seed 0]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402
import scipy  # noqa: E402
from scipy import ndimage as ndi  # noqa: E402
from skimage.segmentation import watershed  # noqa: E402

from napari_unetseg.weightmap import weight_map  # noqa: E402

TARGET_MS = 100.0


def pin_one_core() -> str:
    """Restrict this process to one CPU (Linux); return a description."""
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return f"pinned to cpu {cpu}"
    return "not pinned (no sched_setaffinity); numpy/scipy calls used are single-threaded"


def voronoi(shape: tuple[int, int], n: int, seed: int, membrane: int = 0) -> np.ndarray:
    """Tessellation of ``n`` random seeds; gaps of 1-2 px, or ``membrane`` px when > 0."""
    rng = np.random.default_rng(seed)
    markers = np.zeros(shape, np.int32)
    markers[rng.integers(0, shape[0], n), rng.integers(0, shape[1], n)] = np.arange(1, n + 1)
    labels = watershed(ndi.distance_transform_edt(markers == 0), markers)
    if membrane:
        edges = ndi.maximum_filter(labels, size=3) != ndi.minimum_filter(labels, size=3)
        return np.where(ndi.binary_dilation(edges, iterations=membrane // 2 - 1), 0, labels)
    cut = ndi.maximum_filter(labels, size=3) != labels  # 1 px: the larger id's neighbour
    both = ndi.minimum_filter(labels, size=3) != labels
    cut |= both & (labels % 2 == 0)  # even cells also give up their side: 2 px gaps
    return np.where(cut, 0, labels)


def sparse_discs(shape: tuple[int, int], n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.indices(shape)
    labels = np.zeros(shape, np.int32)
    for k in range(n):
        cy, cx, r = rng.integers(0, shape[0]), rng.integers(0, shape[1]), rng.uniform(4, 9)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k + 1
    return labels


def brute_force(labels: np.ndarray, w0: float = 10.0, sigma: float = 5.0) -> np.ndarray:
    """Eq. 2 with a full-image EDT per instance (the baseline)."""
    d1 = np.full(labels.shape, np.inf)
    d2 = np.full(labels.shape, np.inf)
    for i in np.unique(labels)[1:]:
        dist = ndi.distance_transform_edt(labels != i)
        d2 = np.minimum(d2, np.maximum(d1, dist))
        d1 = np.minimum(d1, dist)
    term = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
    term[labels != 0] = 0
    fg = labels > 0
    wc = np.where(fg, fg.size / (2 * fg.sum()), fg.size / (2 * (~fg).sum()))
    return wc + term


def best_ms(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=20, help="runs of weight_map (best of)")
    parser.add_argument("--ref-repeat", type=int, default=2, help="runs of the baseline")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    pinned = pin_one_core()
    shape = (512, 512)
    layouts = {
        "voronoi 1-2px gaps": voronoi(shape, 300, args.seed),
        "voronoi 6px membranes": voronoi(shape, 300, args.seed, membrane=6),
        "sparse discs r4-9": sparse_discs(shape, 300, args.seed),
    }
    rows = []
    for name, labels in layouts.items():
        fast = best_ms(lambda labels=labels: weight_map(labels), args.repeat)
        ref = best_ms(lambda labels=labels: brute_force(labels), args.ref_repeat)
        diff = float(np.abs(weight_map(labels).astype(np.float64) - brute_force(labels)).max())
        rows.append({
            "layout": name,
            "cells": int(len(np.unique(labels)) - 1),
            "background_fraction": round(float((labels == 0).mean()), 3),
            "weight_map_ms": round(fast, 2),
            "brute_force_ms": round(ref, 1),
            "speedup": round(ref / fast, 1),
            "max_abs_diff": diff,
        })
    print(f"weight_map on {shape[0]}x{shape[1]}, one core ({pinned})")
    print(f"{'layout':24s} {'cells':>5s} {'bg':>5s} {'ms':>8s} {'brute ms':>9s} "
          f"{'speedup':>8s} {'max|diff|':>10s}")
    for r in rows:
        print(f"{r['layout']:24s} {r['cells']:5d} {r['background_fraction']:5.2f} "
              f"{r['weight_map_ms']:8.2f} {r['brute_force_ms']:9.1f} {r['speedup']:8.1f} "
              f"{r['max_abs_diff']:10.2e}")
    verdict = "PASS" if rows[0]["weight_map_ms"] < TARGET_MS else "FAIL"
    print(f"{verdict}: {rows[0]['weight_map_ms']:.1f} ms vs the {TARGET_MS:.0f} ms target "
          f"({rows[0]['layout']}, {rows[0]['cells']} cells)")
    machine = {
        "processor": platform.processor() or platform.machine(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
    }
    print(json.dumps({"target_ms": TARGET_MS, "verdict": verdict, "pinning": pinned,
                      "repeat": args.repeat, "rows": rows, "machine": machine}))


if __name__ == "__main__":
    main()
