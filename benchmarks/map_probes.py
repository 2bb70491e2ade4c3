"""Levers tried on the stroke loop's maps (ISBI 2012, scored on slices 25-29) and not kept.

Every probe starts from the strokes of ``benchmarks/scribbles.py`` (``membrane_strokes`` on
slices 0-1, the seed of ``--seed``) and scores like it: V_Rand / V_Info of the membrane map,
best over the ISBI threshold sweep, and of the cells Segment makes of it (``cells_*``).

- ``forest``: the random-forest anchor, then *auto-context* (Tu and Bai 2010; ilastik's
  "autocontext" workflow): a second forest on the first one's features plus the multiscale
  features of its membrane probability, twice. ``--out-of-fold`` gives the second forest the
  first one's map of each painted slice as predicted by a forest fitted on the other slice, so
  that it does not learn to trust a map that has memorised the strokes.
- ``cells``: region merges after Segment's watershed, on saved maps (``scribbles.py --save``
  and the forest's of this script): *islands* (a region whose only neighbour is one other
  region and that does not touch the image border is merged into it: an organelle inside a
  cell) and *agglomeration* (adjacent regions merged, lowest first, while the mean of the
  stretched map along their shared boundary is below ``t``).
  ``--bundled`` adds the bundled EM model's map (flip TTA, as ``benchmarks/instances.py``
  scores it; trained on slices 0-22), a calibrated one.
- ``blend``: averages of saved maps: the network at 60 s with the forest, and the network's
  30-s and 60-s snapshots.

    python benchmarks/scribbles.py --clock wall --tasks isbi --marks 10,30,60 --no-sweep \\
        --seed S --save maps/S
    python benchmarks/map_probes.py --seed S --maps maps/S --json probes_S.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _loop import load_isbi, membrane_scores, rf_features  # noqa: E402
from _record import emit  # noqa: E402

from napari_unetseg import metrics  # noqa: E402
from napari_unetseg.postprocess import instances_from_boundaries, stretch_span  # noqa: E402
from napari_unetseg.strokes import membrane_strokes  # noqa: E402
from napari_unetseg.teacher import features  # noqa: E402

PAINTED = (0, 1)
TEST = range(25, 30)
KEYS = ("v_rand", "v_info", "cells_v_rand", "cells_v_info")


def _short(scores: dict) -> dict:
    return {k: scores[k] for k in KEYS if k in scores}


def _forest(x: np.ndarray, y: np.ndarray, seed: int):
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(100, n_jobs=-1, random_state=seed).fit(x, y)


def _membrane(rf, f: np.ndarray) -> np.ndarray:
    col = list(rf.classes_).index(1)
    return rf.predict_proba(f.reshape(-1, f.shape[-1]))[:, col].reshape(f.shape[:2]).astype(
        np.float32)


def forest_probe(image, strokes, gt, seed: int, out_of_fold: bool) -> tuple[dict, np.ndarray]:
    feats = {z: rf_features(image[z]) for z in (*PAINTED, *TEST)}

    def fit(fs: dict) -> object:
        return _forest(np.concatenate([fs[z][strokes[z] > 0] for z in PAINTED]),
                       np.concatenate([strokes[z][strokes[z] > 0] for z in PAINTED]), seed)

    rf = fit(feats)
    maps = {z: _membrane(rf, f) for z, f in feats.items()}
    anchor = np.stack([maps[z] for z in TEST])
    rows = {"forest": _short(membrane_scores(anchor, gt))}
    if out_of_fold:
        for z in PAINTED:
            other = next(w for w in PAINTED if w != z)
            one = _forest(feats[other][strokes[other] > 0], strokes[other][strokes[other] > 0],
                          seed)
            maps[z] = _membrane(one, feats[z])
    for stage in (2, 3):
        stacked = {z: np.concatenate([feats[z], features(maps[z][None])], -1) for z in feats}
        rf = fit(stacked)
        maps = {z: _membrane(rf, f) for z, f in stacked.items()}
        rows[f"autocontext stage {stage}"] = _short(membrane_scores(
            np.stack([maps[z] for z in TEST]), gt))
    return rows, anchor


def neighbours(labels: np.ndarray) -> dict[int, set[int]]:
    out: dict[int, set[int]] = {}
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1], labels[1:])):
        m = a != b
        for u, v in set(zip(a[m].tolist(), b[m].tolist(), strict=True)):
            out.setdefault(u, set()).add(v)
            out.setdefault(v, set()).add(u)
    return out


def merge_islands(labels: np.ndarray) -> np.ndarray:
    border = set(np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0],
                                           labels[:, -1]])).tolist())
    lut = np.arange(labels.max() + 1)
    for r, near in neighbours(labels).items():
        if len(near) == 1 and r not in border:
            lut[r] = next(iter(near))
    return lut[labels]


def agglomerate(labels: np.ndarray, prob: np.ndarray, t: float) -> np.ndarray:
    from skimage import graph

    rag = graph.rag_boundary(labels, prob)

    def weight(g, src, dst, n):
        a, b = g[src].get(n), g[dst].get(n)
        if a and b:
            c = a["count"] + b["count"]
            return {"weight": (a["weight"] * a["count"] + b["weight"] * b["count"]) / c,
                    "count": c}
        e = a or b
        return {"weight": e["weight"], "count": e["count"]}

    return graph.merge_hierarchical(labels.copy(), rag, thresh=t, rag_copy=False,
                                    in_place_merge=True, merge_func=lambda *a: None,
                                    weight_func=weight)


def cells_probe(prob: np.ndarray, gt_membrane: np.ndarray, ts: list[float]) -> dict:
    def score(lab: np.ndarray) -> dict:
        s = metrics.instance_scores(lab, gt_membrane)
        return {k: round(s[k], 4) for k in ("v_rand", "v_info")}

    lab = instances_from_boundaries(prob)
    lo, hi = stretch_span(prob) or (0.0, 1.0)
    smooth = np.stack([ndi.gaussian_filter(np.clip((p - lo) / (hi - lo), 0, 1), 1.0)
                       for p in prob])
    out = {"watershed": score(lab), "islands merged": score(np.stack([merge_islands(x)
                                                                       for x in lab]))}
    for t in ts:
        out[f"agglomerated t={t}"] = score(np.stack([agglomerate(x, q, t)
                                                     for x, q in zip(lab, smooth, strict=True)]))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--maps", type=Path, help="scribbles.py --save folder of this seed")
    p.add_argument("--out-of-fold", action="store_true")
    p.add_argument("--bundled", action="store_true", help="probe the bundled model's cells")
    p.add_argument("--t", default="0.5,0.6,0.7", help="agglomeration thresholds")
    p.add_argument("--data", type=Path)
    p.add_argument("--json")
    args = p.parse_args()
    d = load_isbi(args.data)
    gt = d["labels"][25:30]
    strokes = membrane_strokes(d["labels"][:25], slices=PAINTED, seed=args.seed)
    rows, anchor = forest_probe(d["image"], strokes, gt, args.seed, args.out_of_fold)
    ts = [float(t) for t in args.t.split(",")]
    record = {"benchmark": "map_probes", "seed": args.seed, "forest": rows,
              "cells": {"forest": cells_probe(anchor, gt == 0, ts)}}
    if args.maps:
        net = {s: np.load(args.maps / f"isbi_scribbles_{s}s.npy").astype(np.float32)
               for s in (30, 60)}
        record["cells"]["network 60 s"] = cells_probe(net[60], gt == 0, ts)
        record["blend"] = {
            "network 60 s": _short(membrane_scores(net[60], gt)),
            "network + forest": _short(membrane_scores((net[60] + anchor) / 2, gt)),
            "network 30 s + 60 s": _short(membrane_scores((net[30] + net[60]) / 2, gt))}
    if args.bundled:
        from instances import membranes

        from napari_unetseg.bundled import load_bundled

        record["cells"]["bundled model"] = cells_probe(
            membranes(load_bundled(), d["image"][25:30]), gt == 0, ts)
    emit(record, args.json)


if __name__ == "__main__":
    main()
