"""Which tiling is fastest on this machine: network throughput by tile size, and whole runs.

Part 1 times the network alone (BatchNorm folded, channels_last, as inference runs it) on one
square tile of each size and prints megapixels per second: on a CPU large tiles fall out of
cache and compute the same pixels more slowly; on a GPU they fill the device. Part 2 segments
a uint8 stack and a large image with several (tile, halo, overlap) schemes through
:func:`napari_unetseg.inference.predict` and prints the time of each, best of ``--repeat``;
"auto" is what the engine picks for the device. Prints a table and a JSON record.

    python benchmarks/tile_size.py --device cpu          # 2-core laptop: ~2 min
    python benchmarks/tile_size.py --device cuda --width 64
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch
from _record import emit  # benchmarks/_record.py, beside this script

from napari_unetseg.config import ModelConfig
from napari_unetseg.inference import InferenceConfig, predict, resolve_device
from napari_unetseg.models import build_model
from napari_unetseg.normalize import Normalization
from napari_unetseg.predictor import inference_network

SCHEMES = [  # (tile, halo, overlap)
    ("auto", "auto", "auto"),
    (256, 0, 0.125),
    (256, 48, 0.0),
    (384, 48, 0.0),
    (512, 48, 0.0),
    (1024, 48, 0.0),
    (768, 80, 0.0),
    (384, 0, 0.125),
    (512, 0, 0.125),
    (512, 0, 0.25),
]


def _best(fn, repeat: int, device: torch.device) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--stack", type=int, nargs=3, default=(10, 512, 512), metavar=("Z", "Y", "X"))
    p.add_argument("--image", type=int, default=2048)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = build_model(ModelConfig(depth=args.depth, width=args.width, classes=2)).eval()
    net = inference_network(model, device)
    info = {"host": platform.node(), "cpu": platform.processor(), "threads": args.threads,
            "device": str(device), "torch": torch.__version__}  # fmt: skip
    record: dict = {"machine": info, "width": args.width, "depth": args.depth,
                    "network": [], "runs": []}  # fmt: skip
    print(f"network alone ({device}): megapixels per second by tile size")
    for t in (128, 256, 384, 512, 768, 1024):
        x = torch.rand(1, 1, t, t, device=device).contiguous(memory_format=torch.channels_last)

        def run(x: torch.Tensor = x) -> None:
            with torch.no_grad():
                net(x)

        secs = _best(run, args.repeat, device)
        record["network"].append({"tile": t, "mpix_per_s": round(t * t / secs / 1e6, 3)})
        print(f"  tile {t:5}: {t * t / secs / 1e6:7.2f} MP/s")
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 256, args.stack, np.uint8)
    image = rng.integers(0, 256, (args.image, args.image), np.uint8)
    inputs = {"stack " + "x".join(map(str, args.stack)): stack, f"image {args.image}^2": image}
    norm = Normalization(0.0, 255.0)
    print(f"\n{'input':<22}{'tile':>6}{'halo':>6}{'overlap':>9}{'seconds':>9}{'MP/s':>8}")
    for label, data in inputs.items():
        for tile, halo, overlap in SCHEMES:
            cfg = InferenceConfig(tile=tile, halo=halo, overlap=overlap, device=str(device))

            def run(data: np.ndarray = data, cfg: InferenceConfig = cfg) -> None:
                predict(model, data, normalization=norm, config=cfg, return_probabilities=False)

            secs = _best(run, args.repeat, device)
            row = {"input": label, "tile": tile, "halo": halo, "overlap": overlap,
                   "seconds": round(secs, 3),
                   "mpix_per_s": round(data.size / secs / 1e6, 3)}  # fmt: skip
            record["runs"].append(row)
            print(f"{label:<22}{tile!s:>6}{halo!s:>6}{overlap!s:>9}{secs:>9.2f}"
                  f"{row['mpix_per_s']:>8.2f}")  # fmt: skip
    return emit(record, args.json)


if __name__ == "__main__":
    main()
