"""Where to paint next: do strokes placed where the model is uncertain beat random strokes?

The loop of the Train widget, simulated on ISBI 2012 (train on slices 0-24, score 25-29):

1. **Round 1.** Simulated strokes (:func:`napari_unetseg.strokes.membrane_strokes`, 40 per
   slice) on slices 0 and 1; a network trains from scratch for ``--round1`` steps. ``--recipe
   scribbles`` (the default) is what Train does from strokes: the fast preset (U-Net depth 4,
   width 16, the multiscale filter bank, the random-forest teacher), without its timed
   self-training rounds, which would make a step-count run depend on the machine's speed.
   ``--recipe legacy`` is the first measurement's: a UNet++ (depth 4, width 8, 128 px
   patches) with TrainConfig's defaults.
2. **Uncertainty.** The round-1 model's maps (:mod:`napari_unetseg.uncertainty`: predictive
   entropy, flip-TTA variance, UNet++ head disagreement) on the candidate slices 2-24. How well
   each points at the model's errors (argmax class != ground truth) is its ROC AUC over the
   pixels, and how well its slice means rank the slices by error rate is a Spearman rho.
3. **Round 2.** ``--add-slices`` slices get ``--strokes`` new strokes each, placed
   - ``random``: on random candidate slices, starts drawn uniformly (a user without a hint);
     ``--random-draws`` > 1 adds more such draws (``random#2``, ...), other slices and
     strokes: how far two equally uninformed users differ is the noise a map must beat;
   - ``<method>:<placement>`` (``--placements``), where the method's map guides
     - ``rank``: the slices, the most uncertain ones ("jump to the worst slice"), at least
       ``--spread`` slices apart (``uncertainty.visit_order``, as *Worst slice* visits them;
       neighbouring EM sections look alike); starts uniform;
     - ``where``: the starts, drawn with probability proportional to the uncertainty
       smoothed over ``--smooth`` px (a user painting where the layer is hot), on random
       slices;
     - ``rank+where``: both.
   ``--user`` is the simulated user: ``share`` (the default) paints half membrane, half interior
   strokes, each started where the map is hot among its class's pixels; ``look`` draws a spot
   from the map and paints what is there: along the membrane if one lies within 3 px (a faint
   true membrane), else the cell interior over it (a false line, an organelle's rim).
   (``strokes.simulate_strokes(user=...)``; round 1 is always ``share``.)
   ``--schedule``: round 2 restarts the learning rate's cosine at ``lr`` (``restart``, the
   first runs), or goes on from where round 1 left it (``continue``: round 1 is a run planned
   for ``--round1 + --round2`` steps, stopped after ``--round1``; round 2 starts at the
   learning rate reached there and decays it to 0, as the live loop takes new strokes without
   a restart). A restart lifts the learning rate back to its peak and can undo round 1.
   Each condition continues training the round-1 model for ``--round2`` steps on all its
   strokes, with the same seed, and is scored on slices 25-29 (V_Rand / V_Info, best over the
   ISBI threshold sweep, membrane probability, no TTA).

``--control`` adds *none*: round 2 trains on round 1's strokes only, the same steps, so that
what new strokes add at all can be told from what their placement adds.

``--methods errors`` adds an oracle: the round-1 model's wrong pixels, taken from the ground
truth, placed like a map. No user has that map, though a user sees gross errors in the preview;
if strokes placed on the errors themselves do not beat random ones, no uncertainty map can.

Step counts, not seconds, so that a loaded machine gives the same numbers. Every seed redraws
the round-1 strokes, the training and the random slices.

    python benchmarks/where_to_paint.py --seeds 0,1,2 --json docs/benchmarks/where_to_paint.json
    python benchmarks/where_to_paint.py --quick       # a few-minute smoke run

Data: ../shared/data/isbi2012 (or --data); the ISBI 2012 challenge data of Arganda-Carreras et al.
2015, images from Cardona et al. 2010.
"""

from __future__ import annotations

import argparse
import copy
import math
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import tifffile
import torch
from scipy import ndimage as ndi
from scipy.stats import rankdata, spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _recipes import parse_overrides  # noqa: E402
from _record import emit  # noqa: E402

from napari_unetseg import metrics  # noqa: E402
from napari_unetseg.config import ModelConfig  # noqa: E402
from napari_unetseg.devices import drain  # noqa: E402
from napari_unetseg.inference import InferenceConfig, predict  # noqa: E402
from napari_unetseg.presets import MODEL_KEYS, TRAIN_KEYS, preset  # noqa: E402
from napari_unetseg.ridges import boundary_class, ridge_lines  # noqa: E402
from napari_unetseg.strokes import USERS, membrane_strokes  # noqa: E402
from napari_unetseg.training import TrainConfig, TrainResult, train  # noqa: E402
from napari_unetseg.uncertainty import (  # noqa: E402
    SPREAD,
    TILE_METHODS,
    rank_slices,
    uncertainty_maps,
    visit_order,
)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared/data/isbi2012"
FIRST = (0, 1)  # round-1 slices
CANDIDATES = tuple(range(2, 25))  # where round-2 strokes may go
#: not a map a user gets: the round-1 model's errors on the candidate slices (needs the ground
#: truth). A user sees some of them in the preview; as a placement it bounds what any map can do
ORACLE = "errors"
#: the round-1 model's topological errors (needs the ground truth): what V_Rand counts
TOPO = "topo"
#: the package's unsure cell boundaries (napari_unetseg.ridges), before their blur
RIDGES = "ridges"
TEST = slice(25, 30)
#: the control: round 2 goes on with round 1's strokes only (do new strokes help at all?)
NONE = "none"


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC of ``score`` for ``positive`` (Mann-Whitney U, ties averaged)."""
    s, p = score.ravel(), positive.ravel().astype(bool)
    n_pos, n_neg = int(p.sum()), int((~p).sum())
    if not n_pos or not n_neg:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[p].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def membrane_prob(result, image: np.ndarray) -> np.ndarray:
    res = predict(result.model, image, normalization=result.normalization,
                  config=InferenceConfig(device="cpu"))
    return np.asarray(res.probabilities, np.float32)[:, list(result.class_values).index(1)]


def round1(image, strokes, model_cfg, cfg, stop: int) -> TrainResult:
    """The model after ``stop`` steps of a run planned for ``cfg.iterations`` (the learning
    rate has decayed only as far as it has at ``stop``, as in a live run going on)."""
    gen = train(image, strokes, model_cfg, cfg)
    if stop >= cfg.iterations:
        return drain(gen)
    for ev in gen:
        if ev.step >= stop:
            break
    model = copy.deepcopy(gen.model).cpu().eval()
    gen.close()
    return TrainResult(model, model_cfg, gen.normalization, gen.class_values)


def round2(image, strokes, model_cfg, cfg, r1, last: int) -> tuple:
    """Round 2 trained from ``r1``: its result and copies of the model every 10 steps over its
    last ``10 * (last - 1)`` steps (the final model is the result's)."""
    gen = train(image, strokes, model_cfg, cfg, resume=r1)
    first = cfg.iterations - 10 * (last - 1)
    copies = []

    def keep(ev) -> None:  # events come after every 10th step
        if last > 1 and first <= ev.step < cfg.iterations and ev.step % 10 == 0:
            copies.append(copy.deepcopy(gen.model))

    return drain(gen, keep), copies


def averaged(result, copies: list, image: np.ndarray, gt: np.ndarray) -> dict:
    """V_Rand / V_Info averaged over the copies and the final model: the snapshot-to-snapshot
    swing (up to 0.1 V_Rand) is noise that no placement causes."""
    scores = [score(result, image, gt)]
    for model in copies:
        scores.append(score(replace(result, model=model), image, gt))
    return {f"{k}_avg": round(float(np.mean([x[k] for x in scores])), 4)
            for k in ("v_rand", "v_info")}


def score(result, image: np.ndarray, gt: np.ndarray) -> dict:
    s = metrics.isbi_scores(membrane_prob(result, image), gt)
    return {k: round(s[k], 4) for k in ("v_rand", "v_info", "v_rand_split", "v_rand_merge")}


def errors(unc, gt: np.ndarray) -> np.ndarray:
    """The round-1 model's wrong pixels on the candidate slices (argmax class != truth)."""
    truth = np.where(gt[list(CANDIDATES)] == 0, 0, 1)  # class index: 0 membrane, 1 cell
    return (unc.probabilities.argmax(1) != truth).astype(np.float32)


def topo_errors(membrane: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """What V_Rand counts, from the ground truth: the lines of the cells Segment makes of
    ``membrane`` that lie over 2 px from a true membrane (splits), and the true membranes'
    skeleton over 3 px from those lines (merges)."""
    from skimage import segmentation
    from skimage.morphology import skeletonize

    from napari_unetseg.postprocess import instances_from_boundaries

    cells = instances_from_boundaries(membrane)
    out = np.zeros(membrane.shape, np.float32)
    for i, (c, g) in enumerate(zip(cells, gt, strict=True)):
        lines = segmentation.find_boundaries(c, mode="inner")
        true = g == 0
        split = lines & (ndi.distance_transform_edt(~true) > 2)
        merge = skeletonize(true) & (ndi.distance_transform_edt(~lines) > 3)
        out[i] = split | merge
    return out


def how_well_it_points(unc, gt: np.ndarray, topo: np.ndarray | None = None) -> dict:
    """AUC of each map for the model's pixel errors and Spearman rho of slice means vs slice
    error rates, over the candidate slices. With ``topo`` (:func:`topo_errors`), also the AUC
    of each map, blurred by 8 px (the default ``--smooth``), for those errors widened by 3 px."""
    wrong = errors(unc, gt).astype(bool)
    out = {"pixel_error": round(float(wrong.mean()), 4)}
    near = None if topo is None else ndi.binary_dilation(topo > 0, np.ones((1, 3, 3)), 3)
    for name, m in unc.maps.items():
        rho = spearmanr(m.reshape(len(m), -1).mean(1), wrong.reshape(len(m), -1).mean(1))[0]
        out[name] = {"auc": round(auroc(m, wrong), 4), "slice_rho": round(float(rho), 3)}
        if near is not None:
            smooth = np.stack([ndi.gaussian_filter(x.astype(np.float32), 8.0) for x in m])
            out[name]["topo_auc"] = round(auroc(smooth, near), 4)
    return out


def add_strokes(gt: np.ndarray, old: np.ndarray, condition: str, unc, args, seed: int
                ) -> tuple[np.ndarray, list[int]]:
    """Round-1 strokes plus the new ones of one condition, and the slices painted."""
    if condition == NONE:
        return old, []
    method, _, placement = condition.partition(":")
    draw = int(method.partition("#")[2] or 1)  # random#k: the k-th uninformed user
    rng = np.random.default_rng([seed, 7] if draw == 1 else [seed, 7, draw])
    if method.startswith("random") or "rank" not in placement:
        slices = sorted(rng.choice(CANDIDATES, args.add_slices, replace=False).tolist())
    else:
        ranked = rank_slices(unc.maps[method], unc.slices)
        slices = sorted(visit_order(ranked, args.spread)[:args.add_slices])
    weights = None
    if "where" in placement:
        weights = np.zeros(gt.shape, np.float64)
        for i, z in enumerate(unc.slices):
            if z in slices:
                weights[z] = ndi.gaussian_filter(unc.maps[method][i].astype(np.float64),
                                                 args.smooth) ** args.power
    new = membrane_strokes(gt, slices=slices, n_strokes=args.strokes,
                           seed=1000 + seed + 100 * (draw - 1), where=weights, user=args.user)
    return np.where(old > 0, old, new), slices


def recipe(args) -> tuple[ModelConfig, dict]:
    """The network and the training settings of ``--recipe`` (iterations and seed apart)."""
    if args.recipe == "legacy":
        return (ModelConfig(arch="unetpp", depth=args.depth, width=args.width),
                {"batch_size": args.batch, "patch_size": args.patch})
    fast = preset("fast")
    model = ModelConfig(arch=fast["arch"], **{k: fast[k] for k in MODEL_KEYS if k in fast})
    train = {k: fast[k] for k in TRAIN_KEYS if k in fast and k != "iterations"}
    train["self_training_s"] = 0.0  # timed rounds: a step-count run would depend on speed
    if args.quick:
        model = ModelConfig(**{**model.to_dict(), "width": 4})
    fixed = ("iterations", "seed", "device", "val_fraction")  # set by the run
    for key, value in parse_overrides(args.set).items():  # --set KEY=VALUE: TrainConfig
        if key not in TrainConfig.__dataclass_fields__ or key in fixed:
            raise SystemExit(f"--set {key}: not a TrainConfig field this run may set")
        train[key] = value
    return model, train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--recipe", choices=["scribbles", "legacy"], default="scribbles")
    p.add_argument("--methods", help="uncertainty maps (default: entropy,tta for a U-Net, "
                   "all for the legacy UNet++)")
    p.add_argument("--random-draws", type=int, default=1,
                   help="random placements per seed (0: none)")
    p.add_argument("--control", action="store_true",
                   help="add 'none': round 2 on round 1's strokes only, no new strokes")
    p.add_argument("--round1", type=int, default=300, help="steps from scratch")
    p.add_argument("--round2", type=int, default=200, help="steps after the new strokes")
    p.add_argument("--add-slices", type=int, default=2)
    p.add_argument("--strokes", type=int, default=20, help="new strokes per added slice")
    p.add_argument("--placements", default="rank+where",
                   help="comma-separated among rank, where, rank+where")
    p.add_argument("--spread", type=int, default=SPREAD, help="min distance of ranked slices")
    p.add_argument("--smooth", type=float, default=8.0, help="px, Gaussian on the map")
    p.add_argument("--power", type=float, default=2.0, help="weights = smoothed map ** power")
    p.add_argument("--schedule", choices=["restart", "continue"], default="restart",
                   help="round 2's learning rate: restart the cosine at lr, or go on from "
                   "where round 1 stopped (round 1 planned for round1 + round2 steps, as a "
                   "live run that takes new strokes without restarting)")
    p.add_argument("--user", choices=USERS, default="share",
                   help="round 2's strokes: half membrane, half interior (share), or what the "
                   "user finds at each spot (look: along a membrane within 3 px, else interior)")
    p.add_argument("--depth", type=int, default=4, help="legacy recipe only")
    p.add_argument("--width", type=int, default=8, help="legacy recipe only")
    p.add_argument("--patch", type=int, default=128, help="legacy recipe only")
    p.add_argument("--batch", type=int, default=4, help="legacy recipe only")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 seed, few steps")
    p.add_argument("--average", type=int, default=1,
                   help="also score the mean over round 2's last N models, 10 steps apart")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a TrainConfig setting of the scribbles recipe (repeatable)")
    p.add_argument("--json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.seeds, args.round1, args.round2, args.width = "0", 40, 20, 4
    if args.methods is None:
        args.methods = ",".join(TILE_METHODS) if args.recipe == "legacy" else "entropy,tta"
    methods = [m for m in args.methods.split(",") if m]
    randoms = ["random", *(f"random#{k}" for k in range(2, args.random_draws + 1))]
    randoms = randoms if args.random_draws >= 1 else []
    conditions = [*([NONE] if args.control else []), *randoms,
                  *(f"{m}:{p}" for m in methods for p in args.placements.split(","))]
    image = tifffile.imread(args.data / "train-volume.tif")
    gt = tifffile.imread(args.data / "train-labels.tif")
    train_img, train_gt = image[:25], gt[:25]
    model_cfg, train_kw = recipe(args)
    rows, t_start = [], time.perf_counter()
    for seed in (int(s) for s in args.seeds.split(",")):
        steps = args.round1 + (args.round2 if args.schedule == "continue" else 0)
        cfg = TrainConfig(iterations=steps, device="cpu", val_fraction=0, seed=seed,
                          **train_kw)
        first = membrane_strokes(train_gt, slices=FIRST, seed=seed)
        r1 = round1(train_img, first, model_cfg, cfg, args.round1)
        maps = [m for m in methods if m in TILE_METHODS] or ["entropy"]  # one forward pass
        unc = uncertainty_maps(r1.model, train_img, normalization=r1.normalization,
                               methods=maps, slices=CANDIDATES)
        if ORACLE in methods:
            unc.maps[ORACLE] = errors(unc, train_gt)
        membrane = unc.probabilities[:, list(r1.class_values).index(1)]
        guessed = boundary_class(unc.probabilities)  # as the package guesses it
        if RIDGES in methods:  # placed as the other maps: blurred by --smooth, then ** power
            unc.maps[RIDGES] = ridge_lines(unc.probabilities[:, guessed])
        topo = topo_errors(membrane, train_gt[list(CANDIDATES)])
        if TOPO in methods:
            unc.maps[TOPO] = topo
        row = {"seed": seed, "round1": score(r1, image[TEST], gt[TEST]),
               "boundary_class_right": guessed == list(r1.class_values).index(1),
               "pointing": how_well_it_points(unc, train_gt, topo), "round2": {}}
        print(f"seed {seed} round 1 {row['round1']} pointing {row['pointing']}", flush=True)
        lr2 = cfg.lr * (1.0 if args.schedule == "restart" else  # where round 1 stopped
                        0.5 * (1 + math.cos(math.pi * args.round1 / cfg.iterations)))
        cfg2 = TrainConfig(**{**cfg.to_dict(), "iterations": args.round2, "lr": lr2,
                              "augment": cfg.augment})
        for where in conditions:
            strokes, slices = add_strokes(train_gt, first, where, unc, args, seed)
            r2, copies = round2(train_img, strokes, model_cfg, cfg2, r1, args.average)
            s = {**score(r2, image[TEST], gt[TEST]), "slices": slices,
                 "painted": int((strokes > 0).sum() - (first > 0).sum())}
            if args.average > 1:
                s.update(averaged(r2, copies, image[TEST], gt[TEST]))
            row["round2"][where] = s
            print(f"seed {seed} round 2 {where:16s} {s}", flush=True)
        rows.append(row)
    summary = {"round1": {f"{k}_mean": round(float(np.mean([r["round1"][k] for r in rows])), 4)
                          for k in ("v_rand", "v_info")}}
    for where in conditions:
        keys = ("v_rand", "v_info") + (("v_rand_avg", "v_info_avg") if args.average > 1 else ())
        vals = {k: [r["round2"][where][k] for r in rows] for k in keys}
        summary[where] = {f"{k}_mean": round(float(np.mean(v)), 4) for k, v in vals.items()}
        summary[where].update({f"{k}_sd": round(float(np.std(v)), 4) for k, v in vals.items()})
        if where != "random" and "random" in conditions:  # random#k: two uninformed users
            for k in keys:
                d = [r["round2"][where][k] - r["round2"]["random"][k] for r in rows]
                summary[where][f"{k}_minus_random"] = [round(x, 4) for x in d]
                summary[where][f"{k}_wins"] = f"{sum(x > 0 for x in d)} of {len(d)}"
        print(f"{where:16s} {summary[where]}", flush=True)
    emit({"benchmark": "where_to_paint", "data": "ISBI 2012: strokes on 0-24, scored on 25-29",
          "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
          "torch": torch.__version__, "settings": vars(args) | {"data": str(args.data)},
          "seconds": round(time.perf_counter() - t_start, 1), "rows": rows,
          "summary": summary}, args.json)


if __name__ == "__main__":
    main()
