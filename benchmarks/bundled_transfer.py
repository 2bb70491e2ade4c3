"""The bundled model (or any model file) with no strokes, on the transfer proxies.

Each proxy (``_proxies.py``) is ISBI 2012 slices 25-29 (never trained on) made to look like
another microscope or lab: rescaled 0.5x and 2x (1024^2 sections), inverted, gamma 0.5 / 2,
noise, blur, and a combination. The model segments each proxy with its intensities normalised
on that proxy (the bundled model's per-image percentiles; other models too with
``--per-image``) and is scored with V_Rand / V_Info (best over the ISBI threshold sweep).

    python benchmarks/bundled_transfer.py --json docs/benchmarks/bundled_transfer_cpu.json
    python benchmarks/bundled_transfer.py --model other.unetseg --per-image
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _proxies import HELD_OUT, PROXIES, load_isbi, proxies  # noqa: E402
from _record import emit  # noqa: E402

from napari_unetseg import metrics  # noqa: E402
from napari_unetseg.bundled import load_bundled, normalization_for, per_image  # noqa: E402
from napari_unetseg.inference import InferenceConfig, predict  # noqa: E402
from napari_unetseg.io import load_model  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="bundled", help="'bundled' or a model file")
    p.add_argument("--per-image", action="store_true",
                   help="normalise every proxy on itself even if the model does not say so")
    p.add_argument("--proxies", default=",".join(PROXIES))
    p.add_argument("--data", type=Path)
    p.add_argument("--tta", action="store_true")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    saved = load_bundled() if args.model == "bundled" else load_model(args.model)
    if args.per_image:
        saved = dataclasses.replace(saved, metadata={**saved.metadata,
                                                     "normalize_per_image": True})
    membrane = saved.class_values.index(0)
    image, labels = load_isbi(args.data)
    rows = []
    for name, (img, gt) in proxies(image[HELD_OUT], labels[HELD_OUT],
                                   args.proxies.split(",")).items():
        t0 = time.perf_counter()
        res = predict(saved.model, img, normalization=normalization_for(saved, img),
                      config=InferenceConfig(device="cpu", tta=args.tta))
        seconds = time.perf_counter() - t0
        prob = np.asarray(res.probabilities, np.float32)[:, membrane]
        s = metrics.isbi_scores(prob, gt == 0)
        row = {"proxy": name, "shape": list(img.shape), "v_rand": round(s["v_rand"], 4),
               "v_info": round(s["v_info"], 4), "infer_s": round(seconds, 2)}
        rows.append(row)
        print(row, flush=True)
    emit({"benchmark": "no-stroke transfer to proxies of ISBI 25-29", "model": args.model,
          "params": sum(t.numel() for t in saved.model.parameters()),
          "model_name": saved.metadata.get("name"), "tta": args.tta,
          "per_image": per_image(saved),
          "command": "python benchmarks/bundled_transfer.py " + " ".join(sys.argv[1:]),
          "rows": rows}, args.json)


if __name__ == "__main__":
    main()
