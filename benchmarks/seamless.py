"""Seamless overlap-tile: does the tile size change the labels, and what does seamlessness cost?

U-Net's overlap-tile (Ronneberger et al. 2015, Fig. 2) is seamless when every output pixel
sees enough real or mirrored context: then the labels do not depend on where the tiles are
cut. For each halo, ISBI 2012 slices 25-29 are segmented by a trained model at ``--tile 256``
and at ``--tile 512``, and the share of pixels whose label agrees between the two is reported
(the issue's bar: >= 99.99 %), with the agreement against one pass over the whole
mirror-padded slice and V_Rand / V_Info. The old CPU default (no halo, a blended 1/8 overlap,
zero padding at the image border) is the first row.

Speed: the CPU time (``time.process_time``, one thread, so other processes on the machine do
not count) of segmenting the five slices with each candidate default, as a ratio to the old
CPU default measured in the same run.

    python benchmarks/seamless.py                          # the bundled model (ISBI 0-22)
    python benchmarks/seamless.py --model fast.unetseg     # any model trained on slices 0-24

The model must not have seen slices 25-29.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from _record import emit  # benchmarks/_record.py, beside this script
from isbi import load, machine  # benchmarks/isbi.py, beside this script

from napari_unetseg.cli import evaluate_arrays
from napari_unetseg.inference import InferenceConfig, predict
from napari_unetseg.io import load_model

OLD_CPU = {"tile": 384, "halo": 0, "overlap": 0.125}
HALOS = (0, 32, 48, 64, 80, 96)
SPEED = {  # name: InferenceConfig fields
    "old CPU default: tile 384, no halo, overlap 1/8": OLD_CPU,
    "tile 384, halo 80": {"tile": 384, "halo": 80},
    "tile 768, halo 64": {"tile": 768, "halo": 64},
    "tile 768, halo 80": {"tile": 768, "halo": 80},
    "tile 768, halo 96": {"tile": 768, "halo": 96},
    "tile 1024, halo 80": {"tile": 1024, "halo": 80},
    "default (auto)": {},
}


def _run(model, image, norm, fields):
    cfg = InferenceConfig(device="cpu", **fields)
    t0 = time.process_time()
    out = predict(model, image, normalization=norm, config=cfg)
    return out, time.process_time() - t0


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="model file not trained on slices 25-29 (default: bundled)")
    p.add_argument("--data", default=None)
    p.add_argument("--repeat", type=int, default=1, help="timing runs (the best is kept)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    image, gt = load(args.data)
    if args.model:
        saved = load_model(args.model)
    else:
        from napari_unetseg.bundled import load_bundled

        saved = load_bundled()
    model, norm = saved.model, saved.normalization
    membrane = list(saved.class_values).index(0) if 0 in saved.class_values else 0
    test, truth = image[25:30], gt[25:30]
    whole, _ = _run(model, test, norm, {"tile": 2048, "halo": 128})  # > the 92-px field
    rows = []
    for halo in HALOS:
        extra = {"overlap": 0.125} if halo == 0 else {}
        a, _ = _run(model, test, norm, {"tile": 256, "halo": halo, **extra})
        b, _ = _run(model, test, norm, {"tile": 512, "halo": halo, **extra})
        probs = np.asarray(b.probabilities[:, membrane], np.float32)
        scores = evaluate_arrays(probs, truth, boundary_value=0)
        row = {"halo": halo, "overlap": extra.get("overlap", 0.0),
               "agree_256_512_pct": 100 * float(np.mean(a.labels == b.labels)),
               "agree_512_whole_pct": 100 * float(np.mean(b.labels == whole.labels)),
               "v_rand_512": scores["v_rand"], "v_info_512": scores["v_info"]}
        rows.append(row)
        print(f"halo {halo:>3} {'(+1/8 blend)' if halo == 0 else '':13s} "
              f"256 vs 512 agree {row['agree_256_512_pct']:.4f} %  512 vs whole "
              f"{row['agree_512_whole_pct']:.4f} %  V_Rand {row['v_rand_512']:.4f}", flush=True)
    speed = []
    for name, fields in SPEED.items():
        best = min(_run(model, test, norm, fields)[1] for _ in range(args.repeat))
        speed.append({"scheme": name, **fields, "cpu_s": round(best, 3)})
    base = speed[0]["cpu_s"]
    for row in speed:
        row["cost_vs_old_cpu_default"] = round(row["cpu_s"] / base, 3)
        print(f"{row['scheme']:<52} {row['cpu_s']:>8.2f} CPU s  "
              f"x{row['cost_vs_old_cpu_default']:.2f}", flush=True)
    record = {"benchmark": "seamless overlap-tile, ISBI 2012 slices 25-29",
              "machine": machine("cpu"), "torch_threads": torch.get_num_threads(),
              "model": args.model or "bundled", "agreement": rows, "speed": speed}
    return emit(record, args.json)


if __name__ == "__main__":
    main()
