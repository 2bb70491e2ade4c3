"""Inference speed: this package's tiler vs a naive tile loop vs MONAI, same network and weights.

Measures megapixels per second and peak memory of

* ``tiler``: :func:`napari_unetseg.inference.predict` (batched tiles gathered on the device,
  blending accumulated on the device, one host copy per slice; labels included),
* ``naive``: the same tile plan and blend window, one tile per forward pass, each tile copied
  to the device and its output back to the host, blended in numpy,
* ``monai``: ``monai.inferers.sliding_window_inference`` (Gaussian blend), when installed,

on a stack (default 30 x 512 x 512) and one large image (default 8192 x 8192). Peak memory is
``torch.cuda.max_memory_allocated`` on CUDA and the peak resident set size above the start
(sampled) on CPU. Prints a table and a JSON record naming the machine.

    python benchmarks/infer_speed.py                 # GPU defaults: UNet depth 4 width 64, bf16
    python benchmarks/infer_speed.py --small         # CPU-sized inputs and a narrower net
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from napari_unetseg.config import ModelConfig
from napari_unetseg.inference import (
    InferenceConfig,
    _amp_dtype,
    _tile_geometry,
    predict,
    resolve_device,
)
from napari_unetseg.models import build_model
from napari_unetseg.normalize import Normalization
from napari_unetseg.tiling import blend_window, mirror_pad, plan_tiles


class PeakMemory:
    """Peak memory of a block: CUDA allocator peak, or sampled RSS above the start on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak = device, 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            self.base, self.running = _rss(), True
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, _rss() - self.base)
            time.sleep(0.005)

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.base
        else:
            self.running = False
            self.thread.join()


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: no sampling
        return 0


def run_tiler(model, stack, args, device) -> np.ndarray:
    cfg = InferenceConfig(tile=args.tile, overlap=args.overlap, batch_size=args.batch,
                          device=str(device), amp=args.amp)  # fmt: skip
    return predict(model, stack, normalization=Normalization(0.0, 1.0), config=cfg).probabilities


def run_naive(model, stack, args, device) -> np.ndarray:
    amp = _amp_dtype(args.amp, device)
    shape = stack.shape[-2:]
    tile, _, align = _tile_geometry(model, model.config, args.tile, shape)  # as the tiler does
    plan = plan_tiles(shape, tile, overlap=args.overlap, align=align)
    win = blend_window(plan.out_tile, plan.overlap, "cosine")
    (th, tw), out = plan.tile, []
    for img in stack:
        src = mirror_pad(img[None], plan.pad_width)
        acc, norm = None, np.zeros(plan.extent, np.float32)
        for y, x in plan.origins().tolist():
            t = torch.from_numpy(np.ascontiguousarray(src[:, y : y + th, x : x + tw]))[None]
            with torch.no_grad(), torch.autocast(device.type, amp, enabled=amp is not None):
                p = torch.softmax(model(t.to(device)).float(), 1)[0].cpu().numpy()
            if acc is None:
                acc = np.zeros((p.shape[0], *plan.extent), np.float32)
            acc[:, y : y + th, x : x + tw] += p * win
            norm[y : y + th, x : x + tw] += win
        h, w = plan.shape
        out.append(acc[:, :h, :w] / norm[:h, :w])
    return np.stack(out)


def run_monai(model, stack, args, device) -> np.ndarray:
    from monai.inferers import sliding_window_inference

    amp = _amp_dtype(args.amp, device)
    batch = 8 if args.batch == "auto" else args.batch

    def net(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, amp, enabled=amp is not None):
            return torch.softmax(model(x).float(), 1)

    out = []
    for img in stack:
        x = torch.from_numpy(img)[None, None].to(device)
        with torch.no_grad():
            p = sliding_window_inference(x, (args.tile, args.tile), batch, net,
                                         overlap=args.overlap, mode="gaussian")  # fmt: skip
        out.append(p[0].cpu().numpy())
    return np.stack(out)


METHODS: dict[str, Callable] = {"tiler": run_tiler, "naive": run_naive, "monai": run_monai}


def bench(name: str, fn: Callable, model, stack, args, device) -> dict[str, Any]:
    fn(model, stack[:1, :512, :512], args, device)  # warm-up (cuDNN autotune, allocator)
    secs = float("inf")
    with PeakMemory(device) as mem:
        for _ in range(args.repeat):  # best of N: robust to other load on the machine
            t0 = time.perf_counter()
            probs = fn(model, stack, args, device)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            secs = min(secs, time.perf_counter() - t0)
    mpix = stack.size / 1e6
    return {"method": name, "seconds": round(secs, 3), "mpix_per_s": round(mpix / secs, 3),
            "peak_mib": round(mem.peak / 2**20, 1), "probs": probs}  # fmt: skip


def machine(device: torch.device) -> dict[str, Any]:
    info = {"host": platform.node(), "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "torch": torch.__version__, "device": str(device),
            "python": sys.version.split()[0]}  # fmt: skip
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--small", action="store_true", help="CPU sizes: 4x256x256, 1024^2, width 16")
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--width", type=int, default=None, help="default 64 (16 with --small)")
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--overlap", type=float, default=0.125)
    p.add_argument("--batch", default="auto")
    p.add_argument("--amp", default="auto", help="auto (bf16 on CUDA), off, bf16, fp16")
    p.add_argument("--stack", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"))
    p.add_argument("--image", type=int, default=None, help="side of the large 2D image")
    p.add_argument("--methods", default="tiler,naive,monai")
    p.add_argument("--repeat", type=int, default=1, help="time the best of N runs")
    p.add_argument("--json", default=None, help="also write the JSON record here")
    args = p.parse_args(argv)
    args.batch = args.batch if args.batch == "auto" else int(args.batch)
    width = args.width or (16 if args.small else 64)
    stack_shape = args.stack or ((4, 256, 256) if args.small else (30, 512, 512))
    side = args.image or (1024 if args.small else 8192)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    cfg = ModelConfig(arch="unet", depth=args.depth, width=width, classes=2)
    model = build_model(cfg).to(device).eval()
    n_params = sum(p.numel() for p in model.parameters())
    rng = np.random.default_rng(0)
    inputs = {"stack": rng.random(stack_shape, dtype=np.float32),
              "image": rng.random((1, side, side), dtype=np.float32)}  # fmt: skip
    record = {"machine": machine(device), "model": cfg.to_dict(), "params": n_params,
              "repeat": args.repeat,
              "amp": str(_amp_dtype(args.amp, device)), "tile": args.tile,
              "overlap": args.overlap, "batch": args.batch, "results": []}  # fmt: skip
    print(f"{'input':<22}{'method':<8}{'seconds':>10}{'Mpix/s':>10}{'peak MiB':>10}  max|dp|")
    for label, data in inputs.items():
        ref = None
        for name in args.methods.split(","):
            if name == "monai" and not _has_monai():
                print(f"{label:<22}{name:<8}  not installed")
                continue
            r = bench(name, METHODS[name], model, data, args, device)
            probs = r.pop("probs").reshape(-1, *data.shape[-2:])
            ref = probs if ref is None else ref
            r["max_abs_diff_vs_first"] = float(np.abs(probs - ref).max())
            r["input"] = f"{label} {'x'.join(map(str, data.shape))}"
            record["results"].append(r)
            print(f"{r['input']:<22}{name:<8}{r['seconds']:>10.2f}{r['mpix_per_s']:>10.2f}"
                  f"{r['peak_mib']:>10.0f}  {r['max_abs_diff_vs_first']:.1e}")  # fmt: skip
    print(json.dumps(record))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)
    return record


def _has_monai() -> bool:
    try:
        import monai  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
