"""Inference speed (GitHub issue 5): this package's engine, lever by lever, vs MONAI, in one run.

Every method segments the same **uint8** inputs held in host memory into **uint8 labels** in
host memory, with the same network and weights, so the ratios are like for like:

* ``tiler``: :func:`napari_unetseg.inference.predict` with every lever on and "auto"
  tiling (up to 1024-px tiles on CUDA, 768 on a CPU, with an 80-px halo that is computed and
  cropped: seamless), BatchNorm folded, channels_last, the uint8
  image normalised on the device, labels computed on the device;
* ``tiler-monai-tiles``: the same engine with MONAI's tiling (tile 512, overlap 0.25, no
  halo, Gaussian blend): the *plain tiled result* the other rows' labels are checked against;
* ``tiler-no-fold``: every lever but BatchNorm folding;
* ``tiler-no-cl``: every lever but channels_last;
* ``tiler-host-norm``: every lever but device normalisation (a plain callable normalises on
  the host, so float32 crosses to the device instead of uint8);
* ``naive``: one 512-px tile at a time (overlap 0.25), each tile copied to the device and its
  probabilities back, cosine blend and argmax in numpy;
* ``monai``: ``monai.inferers.sliding_window_inference`` (roi 512, overlap 0.25, Gaussian
  blend, ``sw_batch_size`` 8), one slice at a time, argmax on the device (skipped when MONAI
  is not installed).

Inputs: a stack (default 30 x 512 x 512) and one large 2D image (default 8192 x 8192 on
CUDA, 2048 x 2048 on CPU) of smooth random intensities (Gaussian-filtered noise, seeded).
Network: U-Net depth 4, 2 classes, width 64 on CUDA (31.0 M parameters, 1.468 MFLOP per
pixel) and 16 on CPU; BatchNorm running statistics are set from a few train-mode passes (so
folding them changes the numbers) and the head bias is shifted so that about half the pixels
are foreground (so label agreement is not trivially 100 %).

For each input the table gives seconds and MP/s (best of ``--repeat`` after a warm-up), the
speed ratio to MONAI (to ``naive`` without MONAI), the peak memory (CUDA allocator peak, or
sampled RSS above the start on CPU), the percentage of pixels whose label agrees with
``tiler`` (do the levers change the result?), with ``tiler-monai-tiles`` (the plain tiled
result of the same engine) and with ``monai``, and with ``--peak-tflops`` the fraction of the
compute limit (MP/s x FLOPs per pixel / peak FLOP/s). A JSON record naming the machine is
printed last (and written to ``--json``).

    python benchmarks/infer_speed.py --peak-tflops 790     # H100/H200: width 64, bf16, 8192^2
    python benchmarks/infer_speed.py --device cpu --stack 30 512 512 --image 2048 --repeat 3

Issue 5's reference (H100, bf16, 31.0 M parameters, 1.468 MFLOP per pixel, uint8 in host
memory to uint8 labels in host memory): MONAI ``sliding_window_inference`` (tile 512, overlap
0.25, Gaussian) ~ 168 MP/s on 30 x 512 x 512 and ~ 98 MP/s on 8192 x 8192; compute limit
~ 538 MP/s (790 TFLOP/s). Target: >= 1.5x MONAI on the stack, >= 2x on 8192 x 8192, aiming
at >= 60 % of the compute limit.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import gc
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from _record import emit  # benchmarks/_record.py, beside this script
from scipy.ndimage import gaussian_filter

import napari_unetseg.predictor as predictor_mod
from napari_unetseg.config import ModelConfig
from napari_unetseg.inference import InferenceConfig, predict, resolve_device
from napari_unetseg.models import build_model, describe
from napari_unetseg.normalize import Normalization
from napari_unetseg.predictor import amp_dtype
from napari_unetseg.tiling import blend_window, mirror_pad, plan_tiles

#: issue 5's MONAI numbers on an H100 (bf16, width 64), MP/s, and the speed-up asked for
REFERENCE = {"stack": (168.0, 1.5), "image": (98.0, 2.0)}
PLAIN, MONAI = "tiler-monai-tiles", "monai"


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
            _release_freed()  # so that memory freed by earlier blocks is not reused unseen
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


def _release_freed() -> None:
    """Hand memory that Python and glibc keep after frees back to the OS (Linux only)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: no sampling
        return 0


@contextlib.contextmanager
def patched(module: Any, name: str, value: Any) -> Iterator[None]:
    """``module.name = value`` for the duration of the block (restored on exit)."""
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


def _slices(data: np.ndarray) -> np.ndarray:
    """``(Y, X)`` or ``(Z, Y, X)`` as ``(N, Y, X)`` (a view)."""
    return data.reshape(-1, *data.shape[-2:])


# --- methods: (model, uint8 data, args, device) -> uint8 labels of data's shape -------------


def _engine(model, data, args, device, **kw: Any) -> np.ndarray:
    norm = kw.pop("normalization", Normalization(0.0, 255.0))
    cfg = InferenceConfig(device=str(device), amp=args.amp, batch_size=args.batch, **kw)
    res = predict(model, data, normalization=norm, config=cfg, return_probabilities=False)
    return res.labels


def run_tiler(model, data, args, device) -> np.ndarray:
    return _engine(model, data, args, device)


def run_tiler_monai_tiles(model, data, args, device) -> np.ndarray:
    return _engine(model, data, args, device, tile=args.tile, overlap=args.overlap, halo=0,
                   blend="gaussian")  # fmt: skip


def run_tiler_no_fold(model, data, args, device) -> np.ndarray:
    with patched(predictor_mod, "fold_batchnorm", lambda m: copy.deepcopy(m).eval()):
        return _engine(model, data, args, device)


def run_tiler_no_cl(model, data, args, device) -> np.ndarray:
    with patched(predictor_mod, "_channels_last", lambda device: False):
        return _engine(model, data, args, device)


def run_tiler_host_norm(model, data, args, device) -> np.ndarray:
    return _engine(model, data, args, device,
                   normalization=lambda a: a.astype(np.float32) / 255)  # fmt: skip


def run_naive(model, data, args, device) -> np.ndarray:
    amp = amp_dtype(args.amp, device)
    plan = plan_tiles(data.shape[-2:], args.tile, overlap=args.overlap,
                      align=2**model.config.depth)  # fmt: skip
    win = blend_window(plan.out_tile, plan.overlap, "cosine")
    (th, tw), (h, w), out = plan.tile, plan.shape, []
    for img in _slices(data):
        src = mirror_pad(img.astype(np.float32)[None] / 255, plan.pad_width)
        acc, norm = None, np.zeros(plan.extent, np.float32)
        for y, x in plan.origins().tolist():
            t = torch.from_numpy(np.ascontiguousarray(src[None, :, y : y + th, x : x + tw]))
            with torch.no_grad(), torch.autocast(device.type, amp, enabled=amp is not None):
                p = torch.softmax(model(t.to(device)).float(), 1)[0].cpu().numpy()
            if acc is None:
                acc = np.zeros((p.shape[0], *plan.extent), np.float32)
            acc[:, y : y + th, x : x + tw] += p * win
            norm[y : y + th, x : x + tw] += win
        out.append(np.argmax(acc[:, :h, :w] / norm[:h, :w], axis=0).astype(np.uint8))
    return np.stack(out).reshape(data.shape)


def run_monai(model, data, args, device) -> np.ndarray:
    from monai.inferers import sliding_window_inference

    amp = amp_dtype(args.amp, device)
    batch = 8 if args.batch == "auto" else args.batch

    def net(x: torch.Tensor) -> torch.Tensor:  # blends probabilities, as the engine does
        with torch.autocast(device.type, amp, enabled=amp is not None):
            return torch.softmax(model(x).float(), 1)

    out = []
    for img in _slices(data):
        x = torch.from_numpy(img)[None, None].to(device).float() / 255
        with torch.no_grad():
            p = sliding_window_inference(x, (args.tile, args.tile), batch, net,
                                         overlap=args.overlap, mode="gaussian")  # fmt: skip
            out.append(p[0].argmax(0).to(torch.uint8).cpu().numpy())
    return np.stack(out).reshape(data.shape)


METHODS: dict[str, Callable] = {
    "tiler": run_tiler,
    PLAIN: run_tiler_monai_tiles,
    "tiler-no-fold": run_tiler_no_fold,
    "tiler-no-cl": run_tiler_no_cl,
    "tiler-host-norm": run_tiler_host_norm,
    "naive": run_naive,
    MONAI: run_monai,
}


# --- setup ------------------------------------------------------------------------------


def smooth_uint8(shape: tuple[int, ...], seed: int, sigma: float = 4.0) -> np.ndarray:
    """Gaussian-filtered white noise (each 2D slice on its own), stretched to 0..255."""
    noise = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    x = gaussian_filter(noise, sigma=(0.0,) * (len(shape) - 2) + (sigma, sigma))
    lo, hi = np.percentile(x[..., ::7, ::7], [0.5, 99.5])
    return np.clip((x - lo) * (255 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)


def make_model(cfg: ModelConfig, calib: np.ndarray, device: torch.device) -> torch.nn.Module:
    """The network with seeded weights, BatchNorm running statistics from train-mode passes
    over ``calib`` (uint8, ``(N, Y, X)``) and a head bias that splits the classes ~50/50."""
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:  # cumulative average of the passes' statistics
        m.momentum = None
        m.reset_running_stats()
    x = torch.from_numpy(calib)[:, None].to(device).float() / 255
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(x)
    for m in bns:
        m.momentum = 0.1
    model.eval()
    with torch.no_grad():
        logits = model(x).float()
        shift = (logits[:, 1] - logits[:, 0]).median()
        model.head.bias[1] -= shift
    return model


def _warmup_data(data: np.ndarray, device: torch.device) -> np.ndarray:
    if device.type == "cuda":  # cheap there, and warms up the real tile shapes
        return data
    return data[..., :512, :512] if data.ndim == 2 else data[:1, :512, :512]


def bench(fn: Callable, model, data, args, device) -> tuple[dict[str, Any], np.ndarray]:
    fn(model, _warmup_data(data, device), args, device)  # allocator, cuDNN, oneDNN caches
    secs, labels = float("inf"), None
    with PeakMemory(device) as mem:
        for _ in range(args.repeat):  # best of N: robust to other load on the machine
            t0 = time.perf_counter()
            labels = fn(model, data, args, device)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            secs = min(secs, time.perf_counter() - t0)
    assert labels.dtype == np.uint8 and labels.shape == data.shape, (labels.dtype, labels.shape)
    row = {"seconds": round(secs, 3), "mpix_per_s": round(data.size / 1e6 / secs, 3),
           "peak_mib": round(mem.peak / 2**20, 1)}  # fmt: skip
    return row, labels


def machine(device: torch.device, threads: int) -> dict[str, Any]:
    info = {"host": platform.node(), "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "torch_threads": threads, "torch": torch.__version__,
            "device": str(device), "python": sys.version.split()[0]}  # fmt: skip
    with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo") as f:
        info["cpu_model"] = next(ln for ln in f if ln.startswith("model name")).split(":")[1]
        info["cpu_model"] = info["cpu_model"].strip()
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    with contextlib.suppress(ImportError):
        import monai

        info["monai"] = monai.__version__
    return info


def _has_monai() -> bool:
    try:
        import monai  # noqa: F401
    except ImportError:
        return False
    return True


def _fmt(v: Any, spec: str | None, align: str) -> str:
    """``v`` in a column (``align`` like ">9"); "-" for a missing value."""
    if v is None:
        return f"{'-':{align}}"
    return f"{v:{align}{spec}}" if spec else f"{v:{align}}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--width", type=int, default=None, help="default 64 (16 on CPU)")
    p.add_argument("--stack", type=int, nargs=3, default=[30, 512, 512], metavar=("Z", "Y", "X"))
    p.add_argument("--image", type=int, default=None,
                   help="side of the large 2D image (default 8192; 2048 on CPU)")  # fmt: skip
    p.add_argument("--tile", type=int, default=512, help="MONAI-style tile (naive, monai, "
                   f"{PLAIN})")  # fmt: skip
    p.add_argument("--overlap", type=float, default=0.25, help="MONAI-style overlap")
    p.add_argument("--batch", default="auto", help="tiles per pass: auto or an int")
    p.add_argument("--amp", default="auto", help="auto (bf16 on CUDA, off on CPU), off, bf16")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: cores)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's dense peak (e.g. 790 for bf16 on H100/H200)")  # fmt: skip
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--repeat", type=int, default=3, help="time the best of N runs")
    p.add_argument("--json", default=None, help="also write the JSON record here")
    args = p.parse_args(argv)
    args.batch = args.batch if args.batch == "auto" else int(args.batch)
    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        p.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    threads = args.threads or cores
    torch.set_num_threads(threads)
    width = args.width or (64 if cuda else 16)
    side = args.image or (8192 if cuda else 2048)
    cfg = ModelConfig(arch="unet", depth=args.depth, width=width, classes=2)
    info = describe(cfg)
    fpp = float(info["flops_per_pixel"])
    inputs = {"stack": smooth_uint8(tuple(args.stack), seed=1),
              "image": smooth_uint8((side, side), seed=2)}  # fmt: skip
    model = make_model(cfg, smooth_uint8((2, 256, 256), seed=3), device)
    amp = amp_dtype(args.amp, device)
    have_monai = _has_monai()
    base = MONAI if have_monai and MONAI in names else "naive" if "naive" in names else None
    limit = args.peak_tflops * 1e12 / fpp / 1e6 if args.peak_tflops else None
    record: dict[str, Any] = {
        "benchmark": "infer_speed (issue 5)", "machine": machine(device, threads),
        "model": cfg.to_dict(), "params": info["params"], "flops_per_pixel": fpp,
        "amp": str(amp), "batch": args.batch, "repeat": args.repeat,
        "reference_tiling": {"tile": args.tile, "overlap": args.overlap, "blend": "gaussian"},
        "peak_tflops": args.peak_tflops, "compute_limit_mpix_per_s": limit,
        "ratio_baseline": base, "results": [],
    }  # fmt: skip
    print(f"# {record['machine'].get('gpu') or record['machine'].get('cpu_model', '')} "
          f"{device}, {threads} torch threads, torch {torch.__version__}")  # fmt: skip
    print(
        f"# U-Net depth {args.depth} width {width}: {info['params'] / 1e6:.2f} M params, "
        f"{fpp / 1e6:.4f} MFLOP/pixel; amp {amp}; batch {args.batch}; best of {args.repeat}"
        + (f"; compute limit {limit:.0f} MP/s at {args.peak_tflops:g} TFLOP/s" if limit else "")
    )
    if not have_monai and MONAI in names:
        print("# monai: not installed (pip install monai); ratios are vs naive")
    cols = [
        ("method", "<19", None),
        ("seconds", ">9", ".3f"),
        ("MP/s", ">9", ".2f"),
        (f"x {base}" if base else "ratio", ">9", ".2f"),
        ("peak MiB", ">10", ".0f"),
        ("=tiler %", ">10", ".3f"),
        ("=plain %", ">10", ".3f"),
        ("=monai %", ">10", ".3f"),
    ]
    keys = ["method", "seconds", "mpix_per_s", "ratio", "peak_mib", "agree_tiler_pct",
            "agree_plain_pct", "agree_monai_pct"]  # fmt: skip
    if limit:
        cols.append(("% limit", ">9", ".1f"))
        keys.append("limit_pct")
    for kind, data in inputs.items():
        tag = f"{kind} {'x'.join(map(str, data.shape))}"
        rows: dict[str, dict[str, Any]] = {}
        labels: dict[str, np.ndarray] = {}
        for name in names:
            if name == MONAI and not have_monai:
                continue
            rows[name], labels[name] = bench(METHODS[name], model, data, args, device)
        print(f"\n{'input':<20}" + "".join(f"{c:{a}}" for c, a, _ in cols))
        for name, r in rows.items():
            r = {"input": tag, "method": name, **r}
            r["ratio"] = round(rows[base]["seconds"] / r["seconds"], 3) if base in rows else None
            for col, ref in zip(keys[5:8], ("tiler", PLAIN, MONAI), strict=True):
                same = labels[name] == labels[ref] if ref in labels else None
                r[col] = None if same is None else round(float(same.mean() * 100), 4)
            r["fg_pct"] = round(float(labels[name].mean() * 100), 2)
            r["limit_pct"] = round(100 * r["mpix_per_s"] / limit, 2) if limit else None
            record["results"].append(r)
            cells = [
                _fmt(r[k], spec, align) for k, (_, align, spec) in zip(keys, cols, strict=True)
            ]
            print(f"{tag:<20}" + "".join(cells))
        if "tiler" in rows and base == MONAI:
            ref, want = REFERENCE[kind]
            print(f"# {tag}: tiler {rows['tiler']['mpix_per_s']:.2f} MP/s = "
                  f"{rows[MONAI]['seconds'] / rows['tiler']['seconds']:.2f}x MONAI here "
                  f"(issue 5 asks >= {want}x on CUDA; H100 MONAI reference {ref:g} MP/s); "
                  f"foreground {100 * float(np.mean(labels['tiler'])):.1f} %")  # fmt: skip
    return emit(record, args.json)


if __name__ == "__main__":
    main()
