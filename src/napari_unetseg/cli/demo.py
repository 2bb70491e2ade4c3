"""``napari-unetseg demo``: train briefly on the bundled EM sample and score it."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np

from ..devices import drain
from ._common import Progress, example
from .evaluate import evaluate_arrays
from .predict import run_prediction


def run(args: argparse.Namespace) -> int:
    from .. import ModelConfig
    from .._sample_data import load_sample
    from ..inference import InferenceConfig
    from ..io import SavedModel
    from ..training import TrainConfig, train

    image, labels = load_sample()
    n_train = image.shape[0] - 2
    print(f"sample: ISBI 2012 EM, {image.shape[0]} slices of {image.shape[1]}x{image.shape[2]}; "
          f"training on {n_train}, scoring on the last 2", file=sys.stderr)
    model_cfg = ModelConfig(arch=args.arch, depth=args.depth, width=args.width)
    train_cfg = TrainConfig(iterations=args.iterations, batch_size=4, patch_size=args.patch_size,
                            device=args.device, seed=0)  # the default loss and weight map
    bar = Progress("train")
    result = drain(
        train(image[:n_train], labels[:n_train], model_cfg, train_cfg, labels_mode="dense"),
        lambda ev: bar.update(ev.step, train_cfg.iterations, f"loss {ev.loss:.4f}"),
    )
    bar.close()
    saved = SavedModel(result.model, result.model_config, result.normalization,
                       list(result.class_values))
    bar = Progress("segment")
    res = run_prediction(saved, image[n_train:], InferenceConfig(device=args.device),
                         lambda ev: bar.update(ev.done, ev.total))
    bar.close()
    probs = np.asarray(res.probabilities, dtype=np.float32)
    boundary_class = saved.class_values.index(0) if 0 in saved.class_values else 0
    scores = evaluate_arrays(probs[:, boundary_class], labels[n_train:], boundary_value=0)
    scores["train_seconds"] = round(float(result.metadata.get("seconds", 0.0)), 1)
    scores["segment_seconds"] = round(float(res.seconds), 2)
    print(json.dumps(scores, indent=1))
    return 0


def add_parser(sub: Any) -> None:
    from .. import presets

    d = sub.add_parser("demo", help="train briefly on the bundled EM sample and score it",
                       epilog=example("napari-unetseg demo --iterations 100"))
    fast = presets.preset("fast")
    d.add_argument("--iterations", type=int, default=300, help="training steps")
    d.add_argument("--arch", default="unet", choices=["unet", "unetpp", "resunet"],
                   help="network")
    d.add_argument("--depth", type=int, default=fast["depth"], help="down-sampling levels")
    d.add_argument("--width", type=int, default=fast["width"],
                   help="channels of the first level")
    d.add_argument("--patch-size", type=int, default=fast["patch_size"],
                   help="patch side in pixels")
    d.add_argument("--device", default="auto",
                   help="cpu, cuda, cuda:N or mps; auto: CUDA, then MPS, then the CPU")
    d.set_defaults(func=run)
