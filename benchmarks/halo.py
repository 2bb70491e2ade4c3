"""How much context a tile needs: tiling schemes against one pass over the whole slice.

A trained ``same``-padded U-Net segments ISBI 2012 slices 25-29 once as one tile with a
96-pixel mirrored halo (more than the network's receptive-field radius, so the reference is
what the network computes on the mirror-padded slice), then with each tiling scheme. For each
scheme: the share of labels that differ from the reference, the mean and max difference of the
membrane probability, V_Rand / V_Info against the ground truth, and the time. Prints a table
and a JSON record.

    python benchmarks/halo.py --model fast.unetseg      # a model trained on slices 0-24
    python benchmarks/halo.py                           # trains the "fast" preset first (~2 min)

The model must not have seen slices 25-29 (``napari-unetseg train ... --slices 0:25``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from _record import emit  # benchmarks/_record.py, beside this script
from isbi import load, machine  # benchmarks/isbi.py, beside this script

from napari_unetseg import ModelConfig, presets
from napari_unetseg.cli import evaluate_arrays
from napari_unetseg.inference import InferenceConfig, predict
from napari_unetseg.io import load_model
from napari_unetseg.training import TrainConfig, fit

SCHEMES = {  # name: InferenceConfig fields
    "reference: one tile, halo 96": {"tile": 2048, "halo": 96},
    "tile 256, overlap 0.125, no halo (old default)": {"tile": 256, "overlap": 0.125, "halo": 0},
    "one tile, no halo (zero padding at the border)": {"tile": 2048, "halo": 0},
    "tile 256, halo 16": {"tile": 256, "halo": 16},
    "tile 256, halo 32": {"tile": 256, "halo": 32},
    "tile 256, halo 48": {"tile": 256, "halo": 48},
    "tile 256, halo 64": {"tile": 256, "halo": 64},
    "tile 1024, halo 32": {"tile": 1024, "halo": 32},
    "tile 768, halo 80 (default on every device)": {"tile": 768, "halo": 80},
    "tile 1024, halo 48 (old CUDA default)": {"tile": 1024, "halo": 48},
    "tile 384, overlap 0.125, no halo (old CPU default)":
        {"tile": 384, "halo": 0, "overlap": 0.125},
}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="model file trained on slices 0-24 (default: train one)")
    p.add_argument("--data", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    image, gt = load(args.data)
    if args.model:
        saved = load_model(args.model)
        model, norm, values = saved.model, saved.normalization, saved.class_values
    else:
        model_kw, train_kw = presets.split(presets.preset("fast"))
        res = fit(image[:25], gt[:25], ModelConfig(**model_kw), TrainConfig(device=args.device,
                  **train_kw), labels_mode="dense")  # fmt: skip
        model, norm, values = res.model, res.normalization, res.class_values
    membrane = list(values).index(0)
    test, truth = image[25:30], gt[25:30]
    rows, ref = [], None
    for name, fields in SCHEMES.items():
        cfg = InferenceConfig(device=args.device, **fields)
        t0 = time.perf_counter()
        out = predict(model, test, normalization=norm, config=cfg)
        seconds = time.perf_counter() - t0
        probs = np.asarray(out.probabilities[:, membrane], np.float32)
        if ref is None:
            ref = (probs, out.labels)
        diff = np.abs(probs - ref[0])
        scores = evaluate_arrays(probs, truth, boundary_value=0)
        differ = 100 * float(np.mean(out.labels != ref[1]))
        row = {"scheme": name, **fields, "labels_differ_pct": differ,
               "mean_abs_dp": float(diff.mean()), "max_abs_dp": float(diff.max()),
               "v_rand": scores["v_rand"], "v_info": scores["v_info"],
               "seconds": round(seconds, 2)}  # fmt: skip
        rows.append(row)
        print(f"{name:<50}{row['labels_differ_pct']:>8.3f}%{row['mean_abs_dp']:>10.1e}"
              f"{row['max_abs_dp']:>8.3f}{row['v_rand']:>8.4f}{row['v_info']:>8.4f}"
              f"{seconds:>7.2f}s")  # fmt: skip
    record = {"machine": machine(args.device), "torch_threads": torch.get_num_threads(),
              "slices": "25-29", "rows": rows}  # fmt: skip
    return emit(record, args.json)


if __name__ == "__main__":
    main()
