"""Strokes on a stack the bundled model has not seen: fine-tuning levers, scratch and the RF.

On each transfer proxy (``_proxies.py``: ISBI slices 25-29 rescaled, re-contrasted, noisy,
blurred; the bundled model never saw them), strokes are simulated on proxy slices 0-1
(``napari_unetseg.strokes.membrane_strokes``: 40 per slice) and slices 2-4 are scored
(V_Rand / V_Info, best over the ISBI threshold sweep). In one run:

* ``bundled``: the bundled model with no strokes (per-image normalisation);
* ``rf``: a random forest on scikit-image multiscale features of the strokes (the anchor);
* ``scratch``: the fast preset U-Net trained from the strokes alone;
* one row per fine-tuning recipe (``--variants``, see ``VARIANTS``) started from the bundled
  model, each scored at the training-time marks (``--marks``, seconds).

Training time is process CPU time divided by the torch threads (``--clock cpu``: close to the
wall time of an idle machine, not inflated by other users' load) or wall time.

    python benchmarks/finetune.py --proxies isbi,zoom_0.5,zoom_2,combo --marks 10,30,60,120 \\
        --json docs/benchmarks/finetune_cpu.json
    python benchmarks/finetune.py --proxies combo --marks 10 --variants naive   # smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _proxies import HELD_OUT, load_isbi, proxies  # noqa: E402
from _record import emit  # noqa: E402

from napari_unetseg import ModelConfig, metrics, presets  # noqa: E402
from napari_unetseg.bundled import for_image, load_bundled  # noqa: E402
from napari_unetseg.inference import InferenceConfig, predict  # noqa: E402
from napari_unetseg.strokes import membrane_strokes, object_strokes  # noqa: E402
from napari_unetseg.synthetic import organelles  # noqa: E402
from napari_unetseg.training import TrainConfig, train  # noqa: E402

STROKED, SCORED = [0, 1], [2, 3, 4]  # proxy slices (ISBI 25-26 painted, 27-29 scored)

#: Fine-tuning recipes from the bundled model: TrainConfig changes (+ "freeze": encoder).
VARIANTS: dict[str, dict[str, Any]] = {
    "naive": {"lr": 1e-3, "val_fraction": 0.0},  # the report: strokes alone, lr 1e-3
    "lr1e-4": {"lr": 1e-4, "val_fraction": 0.0},
    "consistency": {"lr": 1e-3, "val_fraction": 0.0, "consistency": 1.0},
    "freeze": {"lr": 1e-3, "val_fraction": 0.0, "freeze": True},
    "keepbest": {"lr": 1e-3, "val_fraction": 0.2, "val_every": 10},
    "lr1e-4+cons+keep": {"lr": 1e-4, "val_fraction": 0.2, "val_every": 10, "consistency": 1.0},
}


def make_clock(kind: str):
    if kind == "wall":
        return time.perf_counter
    threads = max(1, torch.get_num_threads())
    return lambda: time.process_time() / threads


def class_prob(model, normalization, class_values, image, value) -> np.ndarray:
    res = predict(model, image, normalization=normalization,
                  config=InferenceConfig(device="cpu"))
    k = list(class_values).index(value)
    return np.asarray(res.probabilities, np.float32)[:, k]


def scores(prob: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    s = metrics.isbi_scores(np.clip(prob, 0, 1), gt == 0)
    return {"v_rand": round(s["v_rand"], 4), "v_info": round(s["v_info"], 4)}


def rf_row(task, clock) -> dict[str, Any]:
    from skimage.feature import multiscale_basic_features
    from sklearn.ensemble import RandomForestClassifier

    def feats(img):
        return multiscale_basic_features(np.asarray(img, np.float32), sigma_min=1, sigma_max=16)

    t0 = clock()
    xs, ys = [], []
    for img, lab in zip(task["image"], task["strokes"], strict=True):
        f, m = feats(img), lab > 0
        xs.append(f[m])
        ys.append(lab[m])
    rf = RandomForestClassifier(n_estimators=100, n_jobs=1, random_state=0)
    rf.fit(np.concatenate(xs), np.concatenate(ys))
    fit_s = clock() - t0
    feats_test = [feats(img) for img in task["test"]]

    def prob_of(v):
        col = list(rf.classes_).index(v)
        return np.stack([rf.predict_proba(f.reshape(-1, f.shape[-1]))[:, col].reshape(
            f.shape[:2]) for f in feats_test])

    return {"method": "rf", "train_s": round(fit_s, 2), **score(task, prob_of)}


class _FrozenEncoder:
    """While active, training optimises only the decoder and head (the encoder keeps the
    bundled weights): a benchmark-only switch, measured before it earns a TrainConfig field."""

    def __enter__(self):
        from napari_unetseg import training

        self.module, self.real = training, training._optimizer

        def optimizer(model, cfg, device):
            for name, prm in model.named_parameters():
                prm.requires_grad_(not name.startswith(("encoder.", "bottom.", "stem.")))
            return self.real(model, cfg, device)

        training._optimizer = optimizer
        return self

    def __exit__(self, *exc):
        self.module._optimizer = self.real


def timed_run(image, strokes, model_cfg, cfg, marks, clock, init=None, freeze=False):
    """Train from the strokes for the last mark's seconds (the learning-rate schedule runs
    over that budget); at each mark of training time (the clock, from the call) take
    the model the user would get by stopping there: the best so far when validating, else the
    live one. Returns ``[(mark, step, model)]``, the normalisation and the class values."""
    with _FrozenEncoder() if freeze else contextlib.nullcontext():
        gen = train(image, strokes, model_cfg, cfg, labels_mode="sparse", init=init,
                    clock=clock)
        todo, snaps = sorted(marks), []
        try:
            for ev in gen:
                while todo and ev.elapsed_s >= todo[0]:
                    snaps.append((todo.pop(0), ev.step, _kept(gen, cfg)))
                if not todo:
                    break
        finally:
            gen.close()
    return snaps, gen.normalization, gen.class_values


def _kept(gen, cfg) -> torch.nn.Module:
    model = copy.deepcopy(gen.model)
    if cfg.val_fraction > 0 and gen.best["state"] is not None:
        model.load_state_dict(gen.best["state"])
    return model.to("cpu", memory_format=torch.contiguous_format).eval()


def tasks(args) -> dict[str, dict[str, Any]]:
    """Each task: training image and strokes (2 slices), test image and truth, kind."""
    out = {}
    image, labels = load_isbi(args.data)
    names = [n for n in args.tasks.split(",") if n]
    wanted = [n for n in names if n != "objects"]  # none: no proxy (proxies([]) is all)
    for name, (img, gt) in (proxies(image[HELD_OUT], labels[HELD_OUT], wanted).items()
                            if wanted else []):
        strokes = membrane_strokes(gt[STROKED], slices=None, n_strokes=args.strokes,
                                   seed=args.seed)
        out[name] = {"image": img[STROKED], "strokes": strokes, "test": img[SCORED],
                     "gt": gt[SCORED], "kind": "membrane", "stack": img}
    if "objects" in names:  # as benchmarks/scribbles.py: mitochondria-like objects in cells
        img, obj = organelles((8, 512, 512), 25, seed=args.seed + 2, size=20, n_cells=40)
        img = (img * 255).astype(np.uint8)
        strokes = object_strokes(obj[STROKED], slices=None, n_strokes=args.strokes,
                                 seed=args.seed)
        out["objects"] = {"image": img[STROKED], "strokes": strokes, "test": img[5:],
                          "gt": obj[5:], "kind": "objects", "stack": img}
    return out


def score(task: dict, prob_of) -> dict[str, float]:
    """V_Rand / V_Info of the membrane probability, or IoU of the objects at 0.5."""
    if task["kind"] == "membrane":
        return scores(prob_of(1), task["gt"])
    iou = metrics.iou((prob_of(2) >= 0.5).astype(np.uint8), (task["gt"] > 0).astype(np.uint8),
                      [1])
    return {"iou": round(float(iou[1]), 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path)
    p.add_argument("--tasks", default="isbi,zoom_0.5,zoom_2,combo",
                   help="transfer proxies (see _proxies.py) and/or 'objects'")
    p.add_argument("--marks", default="10,30,60,120")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--no-scratch", action="store_true")
    p.add_argument("--no-rf", action="store_true")
    p.add_argument("--strokes", type=int, default=40, help="strokes per painted slice")
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    clock = make_clock(args.clock)
    marks = [float(m) for m in args.marks.split(",")]
    bundled = load_bundled()
    rows = []
    for name, task in tasks(args).items():
        base = {"task": name, "shape": list(task["image"].shape[1:]),
                "painted": round(float((task["strokes"] > 0).mean()), 4)}

        def log(row, base=base):
            rows.append({**base, **row})
            print({**base, **row}, flush=True)

        fitted = for_image(bundled, task["stack"])
        prob = class_prob(fitted.model, fitted.normalization, fitted.class_values,
                             task["test"], 0)
        log({"method": "bundled", "train_s": 0,  # no strokes: membrane = 1, the rest = 2
             **score(task, lambda v, prob=prob: prob if v == 1 else 1 - prob)})
        if not args.no_rf:
            log(rf_row(task, clock))
        base_cfg = TrainConfig(iterations=10_000_000, batch_size=4, patch_size=192, loss="ce",
                               device="cpu", seed=args.seed, log_every=1, val_fraction=0.0,
                               time_budget_s=max(marks))
        jobs = []
        if not args.no_scratch:
            mk, tk = presets.split(presets.preset("fast"))
            tk.pop("iterations")
            jobs.append(("scratch", ModelConfig(**mk), dataclasses.replace(base_cfg, **tk),
                         None, False))
        for v in [v for v in args.variants.split(",") if v]:
            changes = dict(VARIANTS[v])
            freeze = changes.pop("freeze", False)
            jobs.append((v, dataclasses.replace(bundled.config, classes=2),
                         dataclasses.replace(base_cfg, **changes), bundled, freeze))
        for method, mcfg, cfg, init, freeze in jobs:
            snaps, norm, values = timed_run(task["image"], task["strokes"], mcfg, cfg, marks,
                                            clock, init=init, freeze=freeze)
            for at, step, model in snaps:
                def prob_of(v, model=model, norm=norm, values=values, test=task["test"]):
                    return class_prob(model, norm, values, test, v)

                log({"method": method, "train_s": at, "steps": step, **score(task, prob_of)})
    record = {"benchmark": "fine-tuning the bundled model vs scratch vs RF, on transfer proxies "
                           "(ISBI 25-29) and the object task", "clock": args.clock,
              "threads": args.threads, "machine": platform.processor() or platform.machine(),
              "torch": torch.__version__, "strokes_per_slice": args.strokes,
              "stroked_slices": "proxy 0-1 (ISBI 25-26); objects 0-1",
              "scored_slices": "proxy 2-4 (ISBI 27-29); objects 5-7",
              "command": "python benchmarks/finetune.py " + " ".join(sys.argv[1:]), "rows": rows}
    emit(record, args.json)


if __name__ == "__main__":
    main()
