"""Soak: train and segment many times in one napari session; watch threads, layers, temporary
zarr outputs and host memory.

Every round trains a tiny model with the Train widget (UNet, width 4, depth 2, patch 64, with
live previews) and segments with the Segment widget three ways: the in-memory stack (whole),
a lazy dask copy of it (whole stack, zarr-backed output) and the lazy copy's shown slice.
After each round it records ``threading.active_count()``, the number of layers, the number of
``napari-unetseg-*`` temporary folders and the RSS. Round 1 is the warm-up; growth is measured
from it. Prints a table and a JSON record naming the machine.

    xvfb-run -a python benchmarks/soak.py --rounds 20
"""

from __future__ import annotations

import argparse
import gc
import glob
import json
import os
import platform
import sys
import tempfile
import threading
import time
from typing import Any

import dask.array as da
import numpy as np
import psutil
import torch

PLUGIN = "napari-unetseg"


def wait(widget: Any, timeout: float = 600.0) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + timeout
    while widget.job is None or widget.job.running:
        QApplication.processEvents()
        time.sleep(0.01)
        if time.monotonic() > end:
            sys.exit(f"timed out waiting for {type(widget).__name__}")


def setup(size: int) -> tuple[Any, Any, Any, Any]:
    import napari

    viewer = napari.Viewer(show=False)
    viewer.open_sample(PLUGIN, "em_stack")
    image, gt = viewer.layers[0], viewer.layers[1]
    for layer in (image, gt):
        layer.data = np.ascontiguousarray(layer.data[:2, :size, :size])
    painted = np.zeros_like(gt.data)
    painted[:, ::6, ::6] = gt.data[:, ::6, ::6]
    viewer.add_labels(painted, name="scribbles")
    viewer.add_image(da.from_array(np.asarray(image.data), chunks=(1, size, size)),
                     name="lazy", contrast_limits=(0, 255))
    _, train = viewer.window.add_plugin_dock_widget(PLUGIN, "Train")
    _, seg = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    train.image_picker.set_layer(image.name)
    train.labels_picker.set_layer("scribbles")
    form = train.form
    form.arch.setCurrentText("UNet")
    form.depth.setValue(2)
    form.width.setValue(4)
    form.iterations.setValue(10)
    form.patch.setValue(64)
    form.batch.setValue(2)
    form.augment.setChecked(False)
    form.device.setCurrentText("cpu")
    form.preview_every.setValue(5)
    seg.tile.setValue(128)
    seg.device.setCurrentText("cpu")
    return viewer, image, train, seg


def one_round(image: Any, train: Any, seg: Any) -> None:
    train.train_button.click()
    wait(train)
    for name, scope in ((image.name, "whole stack"), ("lazy", "whole stack"),
                        ("lazy", "current slice")):
        seg.image_picker.set_layer(name)
        seg.scope.setCurrentText(scope)
        seg.run_button.click()
        wait(seg)


def temp_outputs() -> int:
    return len(glob.glob(os.path.join(tempfile.gettempdir(), "napari-unetseg-*")))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--size", type=int, default=256, help="crop of the EM sample (pixels)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    viewer, image, train, seg = setup(args.size)
    proc, rows = psutil.Process(), []
    for r in range(args.rounds):
        t0 = time.perf_counter()
        one_round(image, train, seg)
        gc.collect()
        rows.append({"round": r + 1, "seconds": round(time.perf_counter() - t0, 2),
                     "threads": threading.active_count(), "layers": len(viewer.layers),
                     "temp_outputs": temp_outputs(),
                     "rss_mb": round(proc.memory_info().rss / 2**20, 1)})
        print("  ".join(f"{k} {v}" for k, v in rows[-1].items()), flush=True)
    warm, last = rows[0], rows[-1]
    record = {
        "benchmark": f"soak: {args.rounds} x (train 10 steps + 3 segment runs) in one viewer",
        "machine": f"{platform.node()}: {platform.processor() or platform.machine()}, "
                   f"{os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} thread(s)",
        "image": [2, args.size, args.size],
        "threads": {"after_warmup": warm["threads"], "max": max(r["threads"] for r in rows),
                    "last": last["threads"]},
        "layers": sorted({r["layers"] for r in rows}),
        "temp_outputs_max": max(r["temp_outputs"] for r in rows),
        "rss_mb": {"after_warmup": warm["rss_mb"], "max": max(r["rss_mb"] for r in rows),
                   "last": last["rss_mb"],
                   "growth_after_warmup": round(max(r["rss_mb"] for r in rows[1:]) -
                                                warm["rss_mb"], 1) if len(rows) > 1 else 0.0},
        "seconds_per_round": round(float(np.median([r["seconds"] for r in rows])), 2),
        "rounds": rows,
    }
    print(json.dumps({k: v for k, v in record.items() if k != "rounds"}))
    viewer.close()
    return record


if __name__ == "__main__":
    main()
