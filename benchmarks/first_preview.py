"""Time from clicking Train to the first live preview, through the Train widget's loop.

Drives :class:`napari_unetseg._widgets._live.LiveTraining` (what the Train widget's worker
runs: data preparation, training steps, a preview of the slice on screen every
``--every`` seconds) on the packaged ISBI sample with simulated strokes
(``strokes.membrane_strokes``, ``--strokes`` per slice on slices 0 and 1), the "fast"
preset, until its first preview, for U-Net and UNet++. No Qt event loop runs, so the time is
the worker's: start (data, network) plus training plus one slice predicted. Both the wall time
and the CPU clock (process CPU time / torch threads, about the wall time of an idle machine
when others share the cores) are printed.

    python benchmarks/first_preview.py --json docs/benchmarks/first_preview_cpu.json
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import emit  # noqa: E402

from napari_unetseg import presets  # noqa: E402
from napari_unetseg._sample_data import load_sample  # noqa: E402
from napari_unetseg._widgets._live import LiveTraining  # noqa: E402
from napari_unetseg.config import ModelConfig  # noqa: E402
from napari_unetseg.strokes import membrane_strokes  # noqa: E402
from napari_unetseg.training import TrainConfig  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", default="unet,unetpp")
    p.add_argument("--every", type=float, default=3.0, help="preview every so many seconds")
    p.add_argument("--strokes", type=int, default=40)
    p.add_argument("--json")
    args = p.parse_args()
    image, gt = load_sample()
    strokes = membrane_strokes(gt, slices=(0, 1), n_strokes=args.strokes, seed=0)
    threads = torch.get_num_threads()
    model_kw, train_kw = presets.split(presets.preset("fast"))
    rows = []
    for arch in args.archs.split(","):
        live = LiveTraining(image, strokes, ModelConfig(arch=arch, **model_kw),
                            TrainConfig(**{**train_kw, "iterations": 100_000}, device="cpu"),
                            "sparse", stop=lambda: False, every_s=args.every, where=lambda: 0)
        c0, w0 = time.process_time(), time.perf_counter()
        events = live.events()
        for ev in events:
            if type(ev).__name__ == "Preview":
                break
        row = {"arch": arch, "wall_s": round(time.perf_counter() - w0, 2),
               "cpu_s": round((time.process_time() - c0) / threads, 2), "by": ev.by}
        events.close()
        rows.append(row)
        print(row, flush=True)
    emit({"benchmark": "first_preview", "data": "packaged ISBI sample, strokes on 2 slices",
          "machine": f"{platform.machine()}, {threads} torch threads, torch {torch.__version__}",
          "settings": vars(args), "rows": rows}, args.json)


if __name__ == "__main__":
    main()
