"""Instances (seeded watershed on the membrane probability) against thresholding, ISBI 2012.

The seeding is tuned on training slices and scored on the held-out slices 25-29, which neither
the tuning nor the training saw:

1. tune: a "fast" U-Net trained on slices 0-19 (18-19 held out for picking its best step)
   segments slices 20-24; every seeding setting of the grid makes instances of them, and the
   setting with the best V_Rand + V_Info there is kept (per seeding kind, and overall);
2. score: a "fast" U-Net trained on slices 0-24 (23-24 held out for its best step, as in
   benchmarks/isbi.py) segments slices 25-29 (flip TTA), which are scored as thresholded
   membrane maps (the challenge's sweep over thresholds 0.0-1.0 with thinning; its best
   threshold is picked on 25-29 themselves, so it is an upper bound for thresholding) and as
   instances with the settings from step 1, with the package's default settings
   (``BoundaryInstances()``, what Segment and ``predict --boundary-class`` use), and with the
   threshold seeding swept over the same thresholds (picked on 25-29, like for like).

    python benchmarks/instances.py --json docs/benchmarks/instances_cpu.json
    python benchmarks/instances.py --tune-model A.unetseg --model B.unetseg   # reuse models
    python benchmarks/instances.py --tune-model bundled --model bundled --tune-slices 23:25

The bundled EM membrane model (``bundled``) was trained on slices 0-22 with 23-24 held out for
its best step, so it may be scored on 25-29; tune it on 23-24, which it was not trained on.

Data: ../shared/data/isbi2012 (or --data); ISBI 2012 (Cardona et al. 2010; Arganda-Carreras
et al. 2015).
"""

from __future__ import annotations

import argparse
import itertools
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import emit  # noqa: E402
from isbi import load  # noqa: E402

from napari_unetseg import ModelConfig, metrics, presets  # noqa: E402
from napari_unetseg.bundled import BUNDLED, load_bundled, normalization_for  # noqa: E402
from napari_unetseg.inference import InferenceConfig, predict  # noqa: E402
from napari_unetseg.io import load_model, save_model  # noqa: E402
from napari_unetseg.postprocess import BoundaryInstances, instances_from_boundaries  # noqa: E402
from napari_unetseg.training import TrainConfig, fit  # noqa: E402

GRID = {
    "threshold": {"threshold": [0.05, 0.1, 0.15, 0.2, 0.3], "sigma": [0.0, 1.0, 2.0],
                  "min_seed_size": [0, 10, 50], "min_size": [0, 100]},
    "distance": {"threshold": [0.3, 0.5, 0.7], "sigma": [0.0, 1.0, 2.0],
                 "h": [1.0, 2.0, 4.0], "min_seed_size": [10]},
    "minima": {"sigma": [1.0, 2.0, 3.0], "h": [0.05, 0.1, 0.2]},
}


def trained(image, labels, slices: slice, val: tuple, path: Path | None, save: Path | None):
    """The membrane model: loaded from ``path`` (``bundled``: the bundled model), or trained
    with the "fast" preset."""
    if path is not None and str(path) == BUNDLED:
        return load_bundled()
    if path is not None:
        return load_model(path)
    model_kw, train_kw = presets.split(presets.preset("fast"))
    t0 = time.perf_counter()
    res = fit(image[slices], labels[slices], ModelConfig(arch="unet", **model_kw),
              TrainConfig(**train_kw, device="cpu", seed=0, loss="ce", val_slices=val),
              labels_mode="dense")
    print(f"trained on slices {slices.start}-{slices.stop - 1} in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    if save is not None:
        save_model(save, res.model, normalization=res.normalization,
                   class_values=res.class_values, metadata=res.metadata, overwrite=True)
        return load_model(save)
    from napari_unetseg.io import SavedModel

    return SavedModel(res.model, res.model_config, res.normalization, list(res.class_values))


def membranes(saved, image) -> np.ndarray:
    cfg = InferenceConfig(device="cpu", tta=True)
    res = predict(saved.model, image, normalization=normalization_for(saved, image), config=cfg)
    return np.asarray(res.probabilities, np.float32)[:, list(saved.class_values).index(0)]


def tune(prob: np.ndarray, gt: np.ndarray) -> tuple[dict, list]:  # (best per kind, all rows)
    """Best setting per seeding kind (and overall) by V_Rand + V_Info on these slices."""
    rows = []
    for seeds, grid in GRID.items():
        for values in itertools.product(*grid.values()):
            cfg = BoundaryInstances(seeds=seeds, **dict(zip(grid, values, strict=True)))
            s = metrics.instance_scores(instances_from_boundaries(prob, cfg), gt)
            rows.append({"settings": vars(cfg).copy(), "v_rand": s["v_rand"],
                         "v_info": s["v_info"]})
    best = {}
    for seeds in [*GRID, "overall"]:
        cands = [r for r in rows if seeds in ("overall", r["settings"]["seeds"])]
        best[seeds] = max(cands, key=lambda r: r["v_rand"] + r["v_info"])
    return best, rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, help="folder with train-volume.tif, train-labels.tif")
    p.add_argument("--tune-model", type=Path,
                   help="model not trained on the tuning slices (reused; 'bundled': the "
                        "bundled model); default: train one on 0-19")
    p.add_argument("--model", type=Path,
                   help="model not trained on 25-29 (reused; 'bundled': the bundled model); "
                        "default: train one on 0-24")
    p.add_argument("--tune-slices", default="20:25",
                   help="slices the seeding is tuned on, START:STOP (default: 20:25)")
    p.add_argument("--save-models", type=Path, help="folder to keep the trained models in")
    p.add_argument("--json", help="also write the JSON record here")
    args = p.parse_args()
    image, labels = load(args.data)
    gt_mem = labels == 0
    start, stop = (int(v) for v in args.tune_slices.split(":"))
    if stop > 25:
        sys.exit("--tune-slices must end at 25 at most: 25-29 are the scored slices")
    tune_on = slice(start, stop)
    save = args.save_models
    tune_model = trained(image, labels, slice(0, 20), (18, 19), args.tune_model,
                         save / "fast_0-19.unetseg" if save else None)
    tune_prob = membranes(tune_model, image[tune_on])
    t0 = time.process_time()
    best, rows = tune(tune_prob, gt_mem[tune_on])
    tune_cpu = time.process_time() - t0
    for seeds, row in best.items():
        print(f"tuned on {start}-{stop - 1}, {seeds:9s}: V_Rand {row['v_rand']:.4f} V_Info "
              f"{row['v_info']:.4f} {row['settings']}", flush=True)
    thr_tune = metrics.isbi_scores(tune_prob, gt_mem[tune_on])
    model = trained(image, labels, slice(0, 25), (23, 24), args.model,
                    save / "fast_0-24.unetseg" if save else None)
    prob = membranes(model, image[25:30])
    sweep = metrics.isbi_scores(prob, gt_mem[25:30])
    at = {name: sweep[f"{name}_curve"][sweep["thresholds"].index(
        thr_tune[f"{name}_threshold"])] for name in ("v_rand", "v_info")}
    print(f"25-29 thresholding, best of the sweep: V_Rand {sweep['v_rand']:.4f} "
          f"(t={sweep['v_rand_threshold']}) V_Info {sweep['v_info']:.4f} "
          f"(t={sweep['v_info_threshold']}); at the thresholds tuned on {start}-{stop - 1}: "
          f"V_Rand {at['v_rand']:.4f} V_Info {at['v_info']:.4f}", flush=True)
    scored = {}
    for seeds, row in best.items():
        t0 = time.process_time()
        inst = instances_from_boundaries(prob, BoundaryInstances(**row["settings"]))
        seconds = (time.process_time() - t0) / len(prob)
        scored[seeds] = {**metrics.instance_scores(inst, gt_mem[25:30]),
                         "settings": row["settings"], "cpu_s_per_slice": round(seconds, 3)}
        s = scored[seeds]
        print(f"25-29 instances, {seeds:9s}: V_Rand {s['v_rand']:.4f} V_Info "
              f"{s['v_info']:.4f} ({seconds:.2f} s CPU per slice)", flush=True)
    gt = gt_mem[25:30]
    defaults = metrics.instance_scores(instances_from_boundaries(prob, BoundaryInstances()), gt)
    print(f"25-29 instances, defaults : V_Rand {defaults['v_rand']:.4f} V_Info "
          f"{defaults['v_info']:.4f} {vars(BoundaryInstances())}", flush=True)
    # like for like with the thresholding sweep: the watershed from the interior p < t (no
    # smoothing, no stretch, every seed), t picked on 25-29 from the same thresholds, an
    # upper bound too
    curve = [metrics.instance_scores(instances_from_boundaries(prob, BoundaryInstances(
        threshold=t, sigma=0.0, min_seed_size=0, stretch=False)), gt)
        for t in sweep["thresholds"]]
    inst_sweep = {}
    for name in ("v_rand", "v_info"):
        k = int(np.argmax([c[name] for c in curve]))
        inst_sweep.update({name: curve[k][name], f"{name}_threshold": sweep["thresholds"][k]})
    print(f"25-29 instances, best of the sweep: V_Rand {inst_sweep['v_rand']:.4f} "
          f"(t={inst_sweep['v_rand_threshold']}) V_Info {inst_sweep['v_info']:.4f} "
          f"(t={inst_sweep['v_info_threshold']})", flush=True)
    record = {
        "benchmark": f"isbi2012 instances: seeding tuned on {start}-{stop - 1}, scored on "
                     "25-29",
        "models": {"tune": str(args.tune_model or "fast, trained on 0-19"),
                   "score": str(args.model or "fast, trained on 0-24")},
        "machine": f"{platform.processor() or platform.machine()}, "
                   f"{torch.get_num_threads()} threads, torch {torch.__version__}",
        "thresholding_25_29": {k: sweep[k] for k in (
            "v_rand", "v_rand_threshold", "v_rand_split", "v_rand_merge", "v_info",
            "v_info_threshold", "v_info_split", "v_info_merge")},
        "thresholding_25_29_at_tuned_thresholds": {
            "v_rand": at["v_rand"], "v_rand_threshold": thr_tune["v_rand_threshold"],
            "v_info": at["v_info"], "v_info_threshold": thr_tune["v_info_threshold"]},
        "instances_25_29": scored,
        "instances_25_29_defaults": {**defaults, "settings": vars(BoundaryInstances())},
        "instances_25_29_sweep": inst_sweep,
        "tuned": best,
        "tuning_cpu_s": round(tune_cpu, 1),
        "grid": GRID,
    }
    emit(record, args.json)


if __name__ == "__main__":
    main()
