"""Named training recipes shared by the widgets, the CLI and the benchmarks.

=============  ==============================================================================
``fast``       A small U-Net that trains on a 2-core laptop CPU in a few minutes (measured on
               ISBI 2012 in ``benchmarks/isbi.py``, see docs/performance.md), fed by the
               multiscale filter bank (``features="multiscale"``), which makes it learn from
               a few strokes within a minute, and, from strokes (sparse labels), trained
               on the sure pixels of a random forest fitted on them (``teacher``: it puts
               the network ahead of the forest within a minute) and on its own surest
               predictions every 20 s (self-training,
               ``self_training_s``; class-balanced: the surer half of the pixels
               predicted as each class, ``pseudo_portion``, so that it does not drift),
               with BatchNorm statistics that follow the weights within a few steps
               (``bn_momentum`` 0.5), so the first previews are usable
               (``benchmarks/scribbles.py``).
``paper``      Ronneberger et al. (2015), as the paper trains it: the unpadded ("valid")
               U-Net of width 64 and depth 4 without BatchNorm, dropout at the end of the
               contracting path, one 572x572 tile per step, SGD with momentum 0.99, the
               weighted cross entropy with the weight map (w0 = 10, sigma = 5). For a GPU.
``wide``       The same width-64, depth-4 U-Net in the modern recipe: "same" padding,
               BatchNorm, Adam, 8 tiles of 256x256 per step. For a GPU.
``resunet-em`` Drozdzal et al. (2016)'s EM network: a residual U-Net of bottleneck blocks,
               stacked 3, 8 and 10 deep on the deeper levels and 3 at the bottom, with dropout
               in every block and a soft Dice loss (their EM recipe; Adam stands in for their
               RMSprop). Hundreds of layers: for a GPU.
=============  ==============================================================================
"""

from __future__ import annotations

from typing import Any

#: Preset name -> model and training settings.
PRESETS: dict[str, dict[str, Any]] = {
    "fast": {"arch": "unet", "depth": 4, "width": 16, "iterations": 400, "patch_size": 192,
             "batch_size": 4, "features": "multiscale", "self_training_s": 20.0,
             "pseudo_confidence": 0.5, "pseudo_portion": 0.5, "bn_momentum": 0.5,
             "teacher": "forest"},
    "paper": {"arch": "unet", "depth": 4, "width": 64, "padding": "valid", "batchnorm": False,
              "dropout": 0.5, "iterations": 2000, "patch_size": 572, "batch_size": 1,
              "optimizer": "sgd", "lr": 1e-3, "loss": "wce", "w0": 10.0, "sigma": 5.0},
    "wide": {"arch": "unet", "depth": 4, "width": 64, "iterations": 2000, "patch_size": 256,
             "batch_size": 8},
    "resunet-em": {"arch": "resunet", "depth": 5, "width": 32, "block": "bottleneck",
                   "blocks_per_level": (1, 1, 3, 8, 10, 3), "dropout": 0.1,
                   "iterations": 3000, "patch_size": 256, "batch_size": 4, "loss": "dice",
                   "lr": 1e-3},
}

#: ModelConfig settings a preset may hold besides ``arch`` (which callers pick themselves:
#: ``settings.get("arch", "unet")``), and TrainConfig settings.
MODEL_KEYS = ("depth", "width", "padding", "batchnorm", "block", "blocks_per_level", "dropout",
              "features")
TRAIN_KEYS = ("iterations", "patch_size", "batch_size", "optimizer", "lr", "loss", "w0",
              "sigma", "self_training_s", "pseudo_confidence", "pseudo_portion", "bn_momentum",
              "teacher")


def preset(name: str) -> dict[str, Any]:
    """The settings of preset ``name`` (a copy); ValueError lists the known names."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return dict(PRESETS[name])


def split(settings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split preset settings into ModelConfig (without ``arch``) and TrainConfig keyword
    arguments."""
    model = {k: v for k, v in settings.items() if k in MODEL_KEYS}
    train = {k: v for k, v in settings.items() if k in TRAIN_KEYS}
    return model, train
