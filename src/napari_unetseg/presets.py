"""Named training recipes shared by the widgets, the CLI and the benchmarks."""

from __future__ import annotations

from typing import Any

#: Preset name -> model and training settings.
#: "fast": a small U-Net-family network that trains on a 2-core laptop CPU in a few minutes
#: (measured on ISBI 2012 in benchmarks/isbi.py, see docs/performance.md).
#: "paper": the full-width network of Ronneberger et al. (2015), width 64, depth 4, for a GPU.
PRESETS: dict[str, dict[str, Any]] = {
    "fast": {"depth": 4, "width": 16, "iterations": 400, "patch_size": 192, "batch_size": 4},
    "paper": {"depth": 4, "width": 64, "iterations": 2000, "patch_size": 256, "batch_size": 8},
}

MODEL_KEYS = ("depth", "width")
TRAIN_KEYS = ("iterations", "patch_size", "batch_size")


def preset(name: str) -> dict[str, Any]:
    """The settings of preset ``name`` (a copy); ValueError lists the known names."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return dict(PRESETS[name])


def split(settings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split preset settings into ModelConfig and TrainConfig keyword arguments."""
    model = {k: v for k, v in settings.items() if k in MODEL_KEYS}
    train = {k: v for k, v in settings.items() if k in TRAIN_KEYS}
    return model, train
