"""A volume larger than memory: generate it as zarr, segment it blockwise on CPU, kill the run,
resume it, and measure memory and throughput.

1. Writes a synthetic EM-like (Z, Y, X) uint8 zarr volume (default 256 x 4096 x 4096 = 4.3 GB,
   chunks 1 x 1024 x 1024): Voronoi cells with dark membranes and texture, shifted per slice,
   with fresh noise in every chunk (cheap, so writing is disk/compression bound).
2. Starts :func:`napari_unetseg.blockwise.predict_volume` with a tiny network (UNet, width 4,
   depth 2: the point is memory, not accuracy) in a child process and kills it (SIGKILL) once
   ``--kill-after`` blocks are done: a hard crash, possibly in the middle of a block.
3. Resumes in this process, sampling the resident set size in a thread: reports the peak RSS
   growth over the RSS before starting (target < 1.5 GB), throughput in megapixels per second,
   and how many blocks marked done before the crash were computed again (must be 0).

``--segment-slices N`` segments only the first N slices of the generated volume (a lazy view),
so the memory claim can be checked on the full-size volume within a time budget on a slow CPU.

    python benchmarks/large_volume.py                              # 4.3 GB, all 256 slices
    python benchmarks/large_volume.py --segment-slices 8           # same volume, 8 slices
    python benchmarks/large_volume.py --shape 16,2048,2048         # a quick run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
import zarr
from scipy import ndimage

from napari_unetseg.blockwise import segment_volume
from napari_unetseg.config import ModelConfig
from napari_unetseg.inference import InferenceConfig
from napari_unetseg.io import save_model
from napari_unetseg.models import build_model
from napari_unetseg.normalize import Normalization


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(t) for t in text.split(","))


def em_bank(n: int, side: int, seed: int = 0) -> np.ndarray:
    """``n`` textured Voronoi 'EM' images ``(side, side)`` uint8 with dark membranes."""
    rng = np.random.default_rng(seed)
    bank = np.empty((n, side, side), np.uint8)
    for i in range(n):
        seeds = np.zeros((side, side), np.int32)
        pts = rng.integers(0, side, (side * side // 4000, 2))
        seeds[pts[:, 0], pts[:, 1]] = np.arange(1, len(pts) + 1)
        _, (iy, ix) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
        cells = seeds[iy, ix]
        edge = (cells != np.roll(cells, 1, 0)) | (cells != np.roll(cells, 1, 1))
        edge = ndimage.binary_dilation(edge, iterations=2)
        texture = ndimage.gaussian_filter(rng.normal(size=(side, side)), 3) * 120
        img = 165 + texture + (cells % 7) * 6 - 110 * edge
        bank[i] = np.clip(img, 0, 255).astype(np.uint8)
    return bank


def generate(path: Path, shape: tuple, chunks: tuple, seed: int = 0) -> dict[str, Any]:
    """Write the synthetic volume slice by slice; returns seconds, GB raw and on disk."""
    t0 = time.perf_counter()
    arr = zarr.open_array(path, mode="w", shape=shape, chunks=chunks, dtype="uint8")
    side = min(1024, shape[1], shape[2])
    bank = em_bank(4, side, seed)
    reps = (-(-shape[1] // side), -(-shape[2] // side))
    rng = np.random.default_rng(seed + 1)
    for z in range(shape[0]):
        base = np.tile(bank[z % len(bank)], reps)[: shape[1], : shape[2]]
        base = np.roll(base, (z * 7, z * 13), axis=(0, 1))  # structures drift through z
        noise = rng.integers(0, 24, base.shape, dtype=np.uint8)
        arr[z] = np.minimum(base.astype(np.uint16) + noise, 255).astype(np.uint8)
    return {"seconds": time.perf_counter() - t0, "raw_gb": np.prod(shape) / 1e9,
            "disk_gb": _du(path) / 1e9}


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


class Slab:
    """The first ``n`` slices of a zarr array, read lazily."""

    def __init__(self, arr: Any, n: int) -> None:
        self.arr, self.shape, self.dtype = arr, (n, *arr.shape[1:]), arr.dtype

    def __getitem__(self, key: tuple) -> np.ndarray:
        z = range(self.shape[0])[key[0]]
        return self.arr[(slice(z.start, z.stop), *key[1:])]


class PeakRSS:
    """Peak resident set size above the value at entry, sampled every 20 ms in a thread."""

    def __enter__(self) -> PeakRSS:
        self.proc, self.running = psutil.Process(), True
        self.base = self.peak = self.proc.memory_info().rss
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.02)

    def __exit__(self, *exc: Any) -> None:
        self.running = False
        self.thread.join()
        self.end = self.proc.memory_info().rss

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.base) / 2**20


CHILD = """
import sys, torch, zarr
sys.path.insert(0, {bench!r})
from large_volume import Slab
from napari_unetseg.blockwise import predict_volume
from napari_unetseg.inference import InferenceConfig
src = Slab(zarr.open_array({src!r}, mode="r"), {n})
torch.set_num_threads({threads})
predict_volume({model!r}, src, {out!r}, block={block}, config=InferenceConfig(**{cfg}))
"""


def crash_run(args: argparse.Namespace, work: Path, n: int, cfg: dict) -> dict[str, Any]:
    """Segment in a child process and SIGKILL it once ``args.kill_after`` blocks are done."""
    code = CHILD.format(bench=str(Path(__file__).parent), src=str(work / "in.zarr"), n=n,
                        model=str(work / "model.unetseg"), out=str(work / "out.zarr"),
                        block=tuple(args.block), cfg=cfg, threads=torch.get_num_threads())
    t0, child = time.perf_counter(), subprocess.Popen([sys.executable, "-c", code])
    done = 0
    while child.poll() is None:
        time.sleep(0.05)
        if (work / "out.zarr" / "done").exists():
            done = int(np.asarray(zarr.open_group(work / "out.zarr")["done"][...]).sum())
        if done >= args.kill_after:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            break
    marked = np.asarray(zarr.open_group(work / "out.zarr")["done"][...]).copy()
    return {"killed_after_s": time.perf_counter() - t0, "done_at_kill": int(marked.sum()),
            "marked": marked, "returncode": child.returncode}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return (f"{platform.node()}: {cpu}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, {psutil.virtual_memory().total / 2**30:.0f} GiB")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=_ints, default=(256, 4096, 4096))
    p.add_argument("--chunks", type=_ints, default=(1, 1024, 1024))
    p.add_argument("--block", type=_ints, default=(2, 2048, 2048))
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--segment-slices", type=int, default=None)
    p.add_argument("--kill-after", type=int, default=3, help="blocks done before SIGKILL")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/unetseg-large-volume"))
    p.add_argument("--reuse-input", action="store_true", help="keep an existing in.zarr")
    p.add_argument("--keep", action="store_true", help="leave the zarr stores on disk")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work / "out.zarr", ignore_errors=True)
    if args.reuse_input and (work / "in.zarr").exists():
        gen = {"reused": True, "disk_gb": _du(work / "in.zarr") / 1e9}
    else:
        gen = generate(work / "in.zarr", tuple(args.shape), tuple(args.chunks))
    torch.manual_seed(0)
    mcfg = ModelConfig(arch="unet", depth=2, width=4, classes=2)
    save_model(work / "model.unetseg", build_model(mcfg).eval(),
               normalization=Normalization(20.0, 235.0), overwrite=True)
    src_arr = zarr.open_array(work / "in.zarr", mode="r")
    n = args.segment_slices or src_arr.shape[0]
    cfg = {"tile": args.tile, "device": "cpu"}
    crash = crash_run(args, work, n, cfg)

    src = Slab(src_arr, n)
    blk = tuple(min(b, s) for b, s in zip(args.block, src.shape, strict=True))
    computed, redone, done_px = 0, 0, 0
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        run = segment_volume(work / "model.unetseg", src, work / "out.zarr", block=blk,
                             config=InferenceConfig(**cfg))
        try:
            while True:
                ev = next(run)
                if ev.computed:
                    computed += 1
                    redone += bool(crash["marked"][ev.block])  # done before the crash
                    done_px += int(np.prod([min((i + 1) * b, s) - i * b for i, b, s in zip(
                        ev.block, blk, src.shape, strict=True)]))
        except StopIteration as stop:
            res = stop.value
        seconds = time.perf_counter() - t0
    z, y, x = src.shape
    record = {
        "benchmark": "blockwise segmentation of a larger-than-memory zarr volume",
        "machine": machine(), "input_shape": list(src_arr.shape), "chunks": list(args.chunks),
        "segmented_shape": [z, y, x], "block": list(res.block), "halo": list(res.halo),
        "tile": args.tile, "model": "unet width 4 depth 2 (random weights)",
        "generate": {k: round(v, 2) if isinstance(v, float) else v for k, v in gen.items()},
        "crash": {"done_at_kill": crash["done_at_kill"], "returncode": crash["returncode"],
                  "seconds": round(crash["killed_after_s"], 1)},
        "resume": {"blocks": res.blocks, "computed": res.computed, "skipped": res.skipped,
                   "redone_after_crash": redone, "seconds": round(seconds, 1)},
        "throughput_mp_s": round(done_px / seconds / 1e6, 2),
        "peak_rss_growth_mb": round(mem.growth_mb, 1),
        "rss_growth_at_end_mb": round((mem.end - mem.base) / 2**20, 1),
        "output_disk_gb": round(_du(work / "out.zarr") / 1e9, 3),
    }
    print(f"{'input':<22}{' x '.join(map(str, src_arr.shape))} uint8 "
          f"({record['generate']['disk_gb']} GB on disk)")
    for key in ("segmented_shape", "block", "crash", "resume", "throughput_mp_s",
                "peak_rss_growth_mb", "rss_growth_at_end_mb"):
        print(f"{key:<22}{record[key]}")
    print(json.dumps(record))
    if args.json:
        args.json.write_text(json.dumps(record, indent=1))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return record


if __name__ == "__main__":
    main()
