"""Blockwise prediction on a dask.distributed cluster vs the same prediction in one process.

Writes a zarr volume, then segments it twice into fresh outputs: locally with
``blockwise.predict_volume`` (the baseline, same run) and on a ``LocalCluster`` of N worker
processes with ``cluster.predict_volume_distributed``. Reports throughput, the ratio to the local
run, model loads per worker (each worker must load the model file once), peak RSS of the
workers, and checks that both outputs are identical.

    python benchmarks/cluster_speed.py                       # 16 x 2048 x 2048, 2 workers
    python benchmarks/cluster_speed.py --shape 8,1024,1024 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zarr

from napari_unetseg import ModelConfig, Normalization, build_model
from napari_unetseg.blockwise import load_counts, predict_volume
from napari_unetseg.cluster import predict_volume_distributed
from napari_unetseg.inference import InferenceConfig
from napari_unetseg.io import save_model


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(t) for t in text.split(","))


def _worker_rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=_ints, default=(16, 2048, 2048))
    p.add_argument("--block", type=_ints, default=(2, 1024, 1024))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    from distributed import Client, LocalCluster

    work = Path(tempfile.mkdtemp(prefix="unetseg-dist-"))
    rng = np.random.default_rng(0)
    src = zarr.create_array(work / "in.zarr", shape=args.shape, chunks=(1, 1024, 1024),
                            dtype="uint8")
    for z in range(args.shape[0]):
        src[z] = rng.integers(0, 256, args.shape[1:], dtype=np.uint8)
    torch.manual_seed(0)
    model = build_model(ModelConfig(depth=3, width=args.width)).eval()
    save_model(work / "m.unetseg", model, normalization=Normalization(0.0, 255.0))
    cfg = InferenceConfig(tile=256, device="cpu", batch_size=1)
    mp = float(np.prod(args.shape)) / 1e6

    torch.set_num_threads(1)  # the same per-task threads as a worker with --nthreads 1
    t0 = time.perf_counter()
    predict_volume(work / "m.unetseg", str(work / "in.zarr"), str(work / "local.zarr"),
                   block=args.block, config=cfg)
    local_s = time.perf_counter() - t0

    env = {"OMP_NUM_THREADS": "1"}
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                      env=env, dashboard_address=None) as lc, Client(lc) as client:
        client.run(lambda: torch.set_num_threads(1))
        t0 = time.perf_counter()
        predict_volume_distributed(client, work / "m.unetseg", str(work / "in.zarr"),
                                   str(work / "dist.zarr"), block=args.block, config=cfg)
        dist_s = time.perf_counter() - t0
        loads = client.run(lambda: sum(load_counts().values()))
        rss = client.run(_worker_rss)
    a = zarr.open_group(work / "local.zarr")["labels"][...]
    b = zarr.open_group(work / "dist.zarr")["labels"][...]
    record = {
        "benchmark": "distributed blockwise", "shape": list(args.shape),
        "block": list(args.block), "workers": args.workers,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "local_s": round(local_s, 2), "local_mp_s": round(mp / local_s, 2),
        "distributed_s": round(dist_s, 2), "distributed_mp_s": round(mp / dist_s, 2),
        "speedup": round(local_s / dist_s, 2),
        "model_loads_per_worker": sorted(loads.values()),
        "worker_rss_mb": sorted(round(v / 2**20) for v in rss.values()),
        "identical_labels": bool(np.array_equal(a, b)),
    }
    print(f"volume {args.shape} ({mp:.0f} MP), blocks {args.block}, {args.workers} workers")
    print(f"local (1 process, 1 thread): {local_s:.1f} s  {mp / local_s:.2f} MP/s")
    print(f"distributed:                 {dist_s:.1f} s  {mp / dist_s:.2f} MP/s  "
          f"({local_s / dist_s:.2f}x)")
    print(f"model loads per worker {record['model_loads_per_worker']}, worker RSS MB "
          f"{record['worker_rss_mb']}, identical labels {record['identical_labels']}")
    print(json.dumps(record))
    if args.json:
        args.json.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
