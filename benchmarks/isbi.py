"""ISBI 2012 accuracy benchmark: train on slices 0-24, score slices 25-29.

For each architecture the default recipe is trained for a fixed wall-clock budget (the number of
iterations is calibrated from a short warm-up so the learning-rate schedule completes), then the
held-out slices are segmented (overlap-tile, flip TTA) and scored with V_Rand / V_Info (the
challenge's foreground-restricted scores, best over a threshold sweep), Dice and pixel error.
UNet++ is scored at every pruned level and in "accurate" mode.

    python benchmarks/isbi.py --minutes 3                     # GPU (auto)
    python benchmarks/isbi.py --device cpu --small            # a few-minute CPU smoke run

Ablations (the same fixed recipe and number of steps for every row, so the rows compare;
``--seeds 0,1`` trains each row once per seed and also reports the mean):

    python benchmarks/isbi.py --device cpu --preset fast --ablation weightmap  # w0, sigma
    python benchmarks/isbi.py --device cpu --preset fast --ablation skips      # long/short skips

Each row records its training wall time and process CPU time (``train_cpu_s``, all threads).

Data: ../shared/data/isbi2012 (or --data); the ISBI 2012 challenge data of Arganda-Carreras et al.
2015, images from Cardona et al. 2010.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from napari_unetseg import ModelConfig, describe, presets
from napari_unetseg.cli import evaluate_arrays
from napari_unetseg.inference import InferenceConfig, predict
from napari_unetseg.training import TrainConfig, fit

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = [ROOT.parent / "shared/data/isbi2012", ROOT / ".gpudata"]


def machine(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def load(data: Path | None):
    for d in [data] if data else DEFAULT_DATA:
        if d and (d / "train-volume.tif").exists():
            return tifffile.imread(d / "train-volume.tif"), tifffile.imread(d / "train-labels.tif")
    sys.exit("ISBI 2012 data not found; pass --data DIR holding train-volume.tif")


def train_budgeted(image, labels, model_cfg, base: dict, seconds: float):
    """Calibrate s/step with a short run, then train for ~`seconds` with a full schedule."""
    warm = fit(image, labels, model_cfg, TrainConfig(**{**base, "iterations": 20,
                                                          "val_every": 10_000}),
               labels_mode="dense")
    per_step = warm.metadata["seconds"] / 20
    iterations = max(50, int(seconds / per_step))
    t0 = time.perf_counter()
    result = fit(image, labels, model_cfg, TrainConfig(**{**base, "iterations": iterations}),
                 labels_mode="dense")
    return result, iterations, time.perf_counter() - t0


#: --ablation weightmap: (row name, TrainConfig overrides) on the U-Net (U-Net eq. 2).
WEIGHTMAP_ROWS = [
    ("off (plain CE)", {"loss": "ce"}),
    ("wc only (w0=0)", {"loss": "wce", "w0": 0.0}),
    ("w0=10 sigma=5 (paper)", {"loss": "wce", "w0": 10.0, "sigma": 5.0}),
    ("w0=20 sigma=5", {"loss": "wce", "w0": 20.0, "sigma": 5.0}),
    ("w0=10 sigma=3", {"loss": "wce", "w0": 10.0, "sigma": 3.0}),
    ("w0=10 sigma=10", {"loss": "wce", "w0": 10.0, "sigma": 10.0}),
]
#: --ablation skips: (row name, ModelConfig overrides) on a deeper ResUNet (Drozdzal 2016).
SKIP_ROWS = [
    ("long + short", {"long_skips": True, "short_skips": True}),
    ("long only", {"long_skips": True, "short_skips": False}),
    ("short only", {"long_skips": False, "short_skips": True}),
    ("neither", {"long_skips": False, "short_skips": False}),
]


def score(result, image, gt, level, args):
    tile = args.tile if args.tile == "auto" else int(args.tile)
    cfg = InferenceConfig(tile=tile, device=args.device, tta=not args.no_tta, level=level)
    t0 = time.perf_counter()
    res = predict(result.model, image, normalization=result.normalization, config=cfg)
    if args.device != "cpu" and torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    membrane = list(result.class_values).index(0)
    probs = np.asarray(res.probabilities, dtype=np.float32)[:, membrane]
    scores = evaluate_arrays(probs, gt, boundary_value=0)
    scores["infer_s"] = round(seconds, 2)
    return scores, probs


def _save(args, name: str, result, probs) -> None:
    """Keep the model and the membrane probabilities of a row (to rescore or re-tile)."""
    if not args.save:
        return
    from napari_unetseg.io import save_model

    args.save.mkdir(parents=True, exist_ok=True)
    stem = "".join(c if c.isalnum() else "_" for c in name).strip("_")
    save_model(args.save / f"{stem}.unetseg", result.model, normalization=result.normalization,
               class_values=result.class_values, metadata=result.metadata, overwrite=True)
    np.save(args.save / f"{stem}_membrane.npy", probs)


def _rows(args) -> list[tuple[str, str, dict, dict]]:
    """(row name, arch, ModelConfig overrides, TrainConfig overrides) to train."""
    if args.ablation == "weightmap":
        return [(name, "unet", {}, train) for name, train in WEIGHTMAP_ROWS]
    if args.ablation == "skips":
        model = {"block": args.block, "blocks_per_level": args.blocks_per_level}
        return [(name, "resunet", {**model, **m}, {}) for name, m in SKIP_ROWS]
    return [(arch, arch, {}, {}) for arch in args.archs.split(",")]


def _means(rows: list[dict]) -> list[dict]:
    """V_Rand / V_Info of each (row, level) averaged over its seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["row"], r["level"]), []).append(r)
    return [{"row": name, "level": level, "seeds": len(g),
             **{k: float(np.mean([r[k] for r in g])) for k in ("v_rand", "v_info")}}
            for (name, level), g in groups.items()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path)
    p.add_argument("--archs", default="unet,unetpp,resunet")
    p.add_argument("--minutes", type=float, default=3.0, help="training budget per architecture")
    p.add_argument("--preset", choices=list(presets.PRESETS),
                   help="train with a preset's fixed settings instead of a time budget")
    p.add_argument("--device", default="auto")
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--patch", type=int, default=None, help="default: the preset's, else 256")
    p.add_argument("--batch", type=int, default=None, help="default: the preset's, else 8")
    p.add_argument("--tile", default="auto", help="largest tile; auto: the engine's choice")
    p.add_argument("--loss", default="wce")
    p.add_argument("--ablation", choices=["weightmap", "skips"],
                   help="train the rows of an ablation instead of --archs")
    p.add_argument("--block", default="bottleneck", help="skips ablation: ResUNet block")
    p.add_argument("--blocks-per-level", type=int, default=2,
                   help="skips ablation: residual blocks per level")
    p.add_argument("--iterations", type=int, help="override the preset's iterations")
    p.add_argument("--seeds", default="0", help="comma-separated training seeds per row")
    p.add_argument("--save", type=Path, help="folder for each row's model and probabilities")
    p.add_argument("--no-tta", action="store_true")
    p.add_argument("--small", action="store_true", help="tiny CPU smoke settings")
    p.add_argument("--json", type=Path, help="also write the JSON here")
    args = p.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.small:
        args.width, args.depth, args.patch, args.batch = 8, 3, 128, 4
        args.minutes = min(args.minutes, 0.5)
    extra: dict = {}
    if args.preset:
        model_kw, train_kw = presets.split(presets.preset(args.preset))
        args.depth, args.width = model_kw["depth"], model_kw["width"]
        args.patch = args.patch or train_kw["patch_size"]
        args.batch = args.batch or train_kw["batch_size"]
        extra = {"iterations": args.iterations or train_kw["iterations"]}
    args.patch, args.batch = args.patch or 256, args.batch or 8
    image, labels = load(args.data)
    train_img, train_lab = image[:25], labels[:25]
    test_img, test_gt = image[25:30], labels[25:30]
    base = {"batch_size": args.batch, "patch_size": args.patch, "device": args.device,
            "loss": args.loss, "val_slices": (23, 24),
            "amp": args.device.startswith("cuda"), **extra}
    rows = []
    seeds = [int(x) for x in args.seeds.split(",")]
    for (name, arch, model_kw, train_kw), seed in itertools.product(_rows(args), seeds):
        cfg = ModelConfig(arch=arch, depth=args.depth, width=args.width, **model_kw)
        info = describe(cfg)
        recipe = {**base, "seed": seed, **train_kw}
        cpu0 = time.process_time()
        if args.preset:
            t0 = time.perf_counter()
            result = fit(train_img, train_lab, cfg, TrainConfig(**recipe), labels_mode="dense")
            iters, train_s = result.metadata["steps"], time.perf_counter() - t0
        else:
            result, iters, train_s = train_budgeted(train_img, train_lab, cfg, recipe,
                                                    args.minutes * 60)
        train_cpu_s = time.process_time() - cpu0
        levels = ["accurate", *range(1, args.depth + 1)] if arch == "unetpp" else [None]
        for level in levels:
            s, probs = score(result, test_img, test_gt, level, args)
            if level in (None, "accurate"):
                _save(args, name, result, probs)
            row = {"row": name, "arch": arch, "level": level, "seed": seed,
                   "params": info["params"],
                   "model": {k: str(v) for k, v in model_kw.items()},
                   "train": {k: str(v) for k, v in train_kw.items()},
                   "iterations": iters, "train_s": round(train_s, 1),
                   "train_cpu_s": round(train_cpu_s, 1),
                   "best_val_dice": result.metadata.get("best_val_dice"), **s}
            rows.append(row)
            print(f"{name:24s} s{seed} {str(level or ''):9s} "
                  f"V_Rand {s.get('v_rand', float('nan')):.4f} "
                  f"V_Info {s.get('v_info', float('nan')):.4f} pixel-err "
                  f"{s['pixel_error']:.4f} train {train_s:.0f}s ({iters} it) "
                  f"infer {s['infer_s']}s", flush=True)
    means = _means(rows) if len(seeds) > 1 else []
    for m in means:
        print(f"mean over seeds: {m['row']:24s} {str(m['level'] or ''):9s} V_Rand "
              f"{m['v_rand']:.4f} V_Info {m['v_info']:.4f}", flush=True)
    out = {"benchmark": "isbi2012 train 0-24 / score 25-29", "machine": machine(args.device),
           "device": args.device, "settings": {k: str(v) for k, v in vars(args).items()},
           "rows": rows, "means": means}
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
