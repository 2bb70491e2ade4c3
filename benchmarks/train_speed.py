"""Training throughput: the trainer with augmentation on, off, and a minimal PyTorch loop.

All three rows train the same network (same config, same seed) on the same synthetic data
in one run, so the ratios compare like with like on this machine:

* ``trainer+aug``  - ``napari_unetseg.training.train`` with the default augmentation
  (flips, rot90, elastic 3x3 grid, intensity), instances mode (weight map), no validation;
* ``trainer``      - the same with augmentation off;
* ``trainer sync/step`` - with augmentation, reading the loss back every step
  (``log_every=1``) instead of every ``warmup`` steps: the cost of a host sync per step;
* ``plain loop``   - random crops of pre-cropped patches already on the device, weighted
  cross entropy, Adam (fused on CUDA), bf16 autocast and channels_last on CUDA: the
  ceiling the trainer's own
  overhead (sampling, event bookkeeping) is measured against.

Usage::

    python benchmarks/train_speed.py --small --repeat 3 # CPU-sized, best of 3
    python benchmarks/train_speed.py --device cuda      # GPU, bf16 autocast
    python benchmarks/train_speed.py --json out.json

Prints a table and a JSON record with the machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F

from napari_unetseg.augment import AugmentConfig
from napari_unetseg.config import ModelConfig
from napari_unetseg.data import prepare_data
from napari_unetseg.models import build_model
from napari_unetseg.sampler import PatchSampler
from napari_unetseg.synthetic import touching_cells
from napari_unetseg.training import TrainConfig, resolve_device, train


def _trainer_rate(image, inst, mc: ModelConfig, cfg: TrainConfig, warmup: int) -> float:
    """Images/s of :func:`train` after ``warmup`` steps (the flush at ``warmup`` syncs)."""
    gen = train(image, inst, mc, cfg, labels_mode="instances")
    t_start = None
    while True:
        try:
            ev = next(gen)
        except StopIteration:
            break
        if ev.step == warmup:
            t_start = time.perf_counter()
    dt = time.perf_counter() - t_start
    return (cfg.iterations - warmup) * cfg.batch_size / dt


def _plain_rate(image, inst, mc: ModelConfig, cfg: TrainConfig, warmup: int) -> float:
    """Images/s of a minimal loop over pre-cropped patches on the device."""
    device = resolve_device(cfg.device)
    data = prepare_data(image, inst, labels_mode="instances", val_fraction=0,
                        min_size=cfg.patch_size)
    pool = PatchSampler(data, cfg.patch_size, device, seed=0).sample(64)  # crops on the device
    torch.manual_seed(cfg.seed)
    model = build_model(mc).to(device).train()
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    model = model.to(memory_format=fmt)  # as the trainer does
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=device.type == "cuda")
    amp = cfg.amp and device.type == "cuda"
    gen = torch.Generator(device).manual_seed(0)

    def step() -> None:
        idx = torch.randint(0, 64, (cfg.batch_size,), generator=gen, device=device)
        img, tgt, wgt = (t.index_select(0, idx) for t in pool)
        img = img.contiguous(memory_format=fmt)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(img)
        loss = F.cross_entropy(logits.float(), tgt, ignore_index=-1, reduction="none")
        loss = (loss * wgt).sum() / (tgt >= 0).sum().clamp_min(1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(cfg.iterations - warmup):
        step()
    _sync(device)
    return (cfg.iterations - warmup) * cfg.batch_size / (time.perf_counter() - t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _machine(device: torch.device) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="CPU-sized problem")
    p.add_argument("--device", default="auto")
    p.add_argument("--arch", default="unet", choices=["unet", "unetpp", "resunet"])
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--patch", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--depth", type=int, default=None)
    p.add_argument("--no-amp", action="store_true", help="float32 on CUDA")
    p.add_argument("--repeat", type=int, default=1, help="best of so many runs per row")
    p.add_argument("--json", default=None, help="also write the record here")
    a = p.parse_args(argv)
    small = {"steps": 60, "batch": 4, "patch": 96, "width": 8, "depth": 3, "shape": (2, 128, 128)}
    big = {"steps": 120, "batch": 8, "patch": 256, "width": 32, "depth": 4, "shape": (4, 512, 512)}
    d = small if a.small else big
    steps, batch = a.steps or d["steps"], a.batch or d["batch"]
    patch, width, depth = a.patch or d["patch"], a.width or d["width"], a.depth or d["depth"]
    warmup = max(3, steps // 5)
    image, inst = touching_cells(d["shape"], 40 if a.small else 150, seed=0)
    mc = ModelConfig(arch=a.arch, depth=depth, width=width)
    base = TrainConfig(iterations=steps, batch_size=batch, patch_size=patch, device=a.device,
                       amp=not a.no_amp, val_fraction=0, log_every=warmup, seed=0)
    device = resolve_device(a.device)
    runs = {
        "trainer+aug": lambda: _trainer_rate(image, inst, mc, base, warmup),
        "trainer": lambda: _trainer_rate(
            image, inst, mc, dataclasses.replace(base, augment=AugmentConfig.off()), warmup),
        "trainer sync/step": lambda: _trainer_rate(
            image, inst, mc, dataclasses.replace(base, log_every=1), warmup),
        "plain loop": lambda: _plain_rate(image, inst, mc, base, warmup),
    }
    rows = {name: max(run() for _ in range(max(1, a.repeat))) for name, run in runs.items()}
    ref = rows["plain loop"]
    print(f"{a.arch} depth {depth} width {width}, batch {batch} x {patch}^2, {steps} steps "
          f"({warmup} warm-up), device {device}, amp {base.amp and device.type == 'cuda'}")
    print(f"{'loop':<20}{'images/s':>10}{'vs plain':>10}")
    for name, rate in rows.items():
        print(f"{name:<20}{rate:>10.1f}{rate / ref:>10.2f}")
    record = {"benchmark": "train_speed", "machine": _machine(device),
              "setup": {"arch": a.arch, "depth": depth, "width": width, "batch": batch,
                        "patch": patch, "steps": steps, "warmup": warmup, "repeat": a.repeat,
                        "amp": base.amp and device.type == "cuda"},
              "images_per_s": {k: round(v, 2) for k, v in rows.items()},
              "ratio_to_plain": {k: round(v / ref, 3) for k, v in rows.items()}}
    print(json.dumps(record))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(record, f, indent=2)
    return record


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
