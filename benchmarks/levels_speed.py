"""UNet++ pruned levels: time per 512x512 slice for L1..Ldepth and "accurate".

Each level runs the pruned network (only the nodes X(i,j) with i+j <= L) through the same
tiled inference the Segment widget uses; "accurate" computes every head and averages them.
Parameters and FLOPs per pixel come from ``describe()``. The ratio column is the time relative to
"accurate" in the same run.

    python benchmarks/levels_speed.py                 # CPU (or CUDA if available)
    python benchmarks/levels_speed.py --width 32 --device cuda
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
from _record import emit  # benchmarks/_record.py, beside this script

from napari_unetseg import ModelConfig, Normalization, build_model, describe
from napari_unetseg.inference import InferenceConfig, predict


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--width", type=int, default=16, help="16 = the 'fast' preset")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--slices", type=int, default=3)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--tile", default="auto", help="as the widget: auto tiling for the device")
    p.add_argument("--json", default=None, help="also write the JSON record here")
    args = p.parse_args()
    tile = args.tile if args.tile == "auto" else int(args.tile)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    cfg = ModelConfig(arch="unetpp", depth=args.depth, width=args.width)
    info = describe(cfg)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (args.slices, args.size, args.size), dtype=np.uint8)
    norm = Normalization(0.0, 255.0)
    rows = []
    for level in ["accurate", *range(1, args.depth + 1)]:
        cfg_inf = InferenceConfig(tile=tile, device=device, level=level)
        predict(model, image[:1], normalization=norm, config=cfg_inf)  # warm-up
        best = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            predict(model, image, normalization=norm, config=cfg_inf)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            best = min(best, (time.perf_counter() - t0) / args.slices)
        key = level if level == "accurate" else int(level) - 1
        params = info["params"] if level == "accurate" else info["params_by_level"][key]
        flops = (info["flops_per_pixel"] if level == "accurate"
                 else info["flops_per_pixel_by_level"][key])
        rows.append({"level": str(level), "params": int(params), "flops_per_pixel": float(flops),
                     "ms_per_slice": round(best * 1000, 1)})
    acc = rows[0]["ms_per_slice"]
    for r in rows:
        r["time_vs_accurate"] = round(r["ms_per_slice"] / acc, 3)
    machine = (torch.cuda.get_device_name() if device.startswith("cuda")
               else f"{platform.machine()} CPU, {torch.get_num_threads()} threads")
    print(f"UNet++ depth {args.depth} width {args.width}, {args.size}x{args.size} slice, "
          f"{device} ({machine})")
    print(f"{'level':9s} {'params':>10s} {'kFLOP/px':>9s} {'ms/slice':>9s} {'vs acc':>7s}")
    for r in rows:
        print(f"{r['level']:9s} {r['params']:>10,d} {r['flops_per_pixel'] / 1e3:>9.0f} "
              f"{r['ms_per_slice']:>9.1f} {r['time_vs_accurate']:>7.3f}")
    record = {"benchmark": "unetpp levels", "device": device, "machine": machine,
              "depth": args.depth, "width": args.width, "tile": args.tile, "rows": rows}
    emit(record, args.json)


if __name__ == "__main__":
    main()
