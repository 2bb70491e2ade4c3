"""ISBI scores against Fiji's algorithm on real soft probability maps.

A trained model's membrane probabilities on ISBI 2012 slices 25-29 are cut into square crops
(the reference is pure Python, pixel by pixel), and each crop stack is scored three ways:

* ``isbi_scores`` (the package: Fiji's thinning order, Fiji's cuts);
* ``tests/fiji_reference.py``, an independent step-by-step re-implementation of Fiji's
  ``getMaximalVRandAfterThinning(0, 1, 0.1, true)`` / ``getMaximalVInfoAfterThinning(0, 1,
  0.1)`` on the float32 interior map ``1 - p``;
* the previous scorer (scikit-image's ``watershed_line`` thinning, cuts ``p < t``), for the
  size of what changed.

Prints the largest differences to the reference (the issue's bar: <= 1e-6) and a JSON record.

    python benchmarks/fiji_check.py                       # the bundled model (ISBI 0-22)
    python benchmarks/fiji_check.py --model fast.unetseg --crop 128
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from _record import emit  # benchmarks/_record.py, beside this script
from isbi import load  # benchmarks/isbi.py, beside this script
from skimage.measure import label as cc_label
from skimage.segmentation import watershed

from napari_unetseg.inference import InferenceConfig, predict
from napari_unetseg.io import load_model
from napari_unetseg.metrics import _info_from, _overlap, _rand_from, isbi_scores

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import fiji_reference as fiji  # noqa: E402  tests/fiji_reference.py


def previous_scores(prob: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """The scorer before the port: watershed_line thinning, interior ``p < t``."""
    best_r = best_i = 0.0
    for t in np.round(np.arange(11) * 0.1, 1):
        r = i = 0.0
        for p, g in zip(prob, gt, strict=True):
            interior = p < t
            markers = cc_label(interior, connectivity=1)
            seg = (np.ones(interior.shape, np.int32) if markers.max() == 0 else
                   watershed((~interior).astype(np.uint8), markers, connectivity=1,
                             watershed_line=True))
            o = _overlap(seg, cc_label(g > 0, connectivity=1))
            r += _rand_from(o)[0]
            i += _info_from(o)[0]
        best_r, best_i = max(best_r, r / len(prob)), max(best_i, i / len(prob))
    return best_r, best_i


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="model file not trained on slices 25-29 (default: bundled)")
    p.add_argument("--data", default=None)
    p.add_argument("--crop", type=int, default=96, help="crop side in pixels")
    p.add_argument("--crops", type=int, default=4, help="crops per slice, along the diagonal")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    image, gt = load(args.data)
    if args.model:
        saved = load_model(args.model)
    else:
        from napari_unetseg.bundled import load_bundled

        saved = load_bundled()
    membrane = list(saved.class_values).index(0) if 0 in saved.class_values else 0
    out = predict(saved.model, image[25:30], normalization=saved.normalization,
                  config=InferenceConfig(device="cpu"))
    probs = np.asarray(out.probabilities[:, membrane], np.float32)
    truth = gt[25:30]
    c, h = args.crop, probs.shape[-1]
    rows = []
    for k in range(args.crops):
        y = x = k * (h - c) // max(args.crops - 1, 1)
        pc, gc = probs[:, y : y + c, x : x + c], truth[:, y : y + c, x : x + c]
        ours = isbi_scores(pc, gc)
        q = (1.0 - pc).astype(np.float32).astype(np.float64)
        ref = fiji.best_scores([g.tolist() for g in gc], [qq.tolist() for qq in q])
        old = previous_scores(pc, gc)
        row = {"crop": [y, x, c], "v_rand": ours["v_rand"], "v_info": ours["v_info"],
               "fiji_v_rand": ref["v_rand"], "fiji_v_info": ref["v_info"],
               "previous_v_rand": old[0], "previous_v_info": old[1]}
        rows.append(row)
        print(f"crop at {y:>3}: V_Rand {row['v_rand']:.6f} (Fiji {row['fiji_v_rand']:.6f}, "
              f"previous {old[0]:.6f})  V_Info {row['v_info']:.6f} (Fiji "
              f"{row['fiji_v_info']:.6f}, previous {old[1]:.6f})", flush=True)
    worst = {k: max(abs(r[k] - r[f"fiji_{k}"]) for r in rows) for k in ("v_rand", "v_info")}
    before = {k: max(abs(r[f"previous_{k}"] - r[f"fiji_{k}"]) for r in rows)
              for k in ("v_rand", "v_info")}
    print(f"largest |package - Fiji|: V_Rand {worst['v_rand']:.1e}, V_Info "
          f"{worst['v_info']:.1e}; previous scorer: {before['v_rand']:.1e}, "
          f"{before['v_info']:.1e}")
    record = {"benchmark": "ISBI scores vs Fiji's algorithm, soft maps, slices 25-29",
              "model": args.model or "bundled", "rows": rows,
              "max_abs_diff": worst, "previous_max_abs_diff": before}
    return emit(record, args.json)


if __name__ == "__main__":
    main()
