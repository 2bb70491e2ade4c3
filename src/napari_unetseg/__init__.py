"""napari-unetseg: U-Net, UNet++ and residual U-Net segmentation for napari.

The package root imports no Qt, magicgui or napari: the compute core (models, weight maps,
losses, metrics, training, tiled inference, model files) is usable from scripts and the CLI.
"""

from __future__ import annotations

try:
    from ._version import version as __version__
except ImportError:  # pragma: no cover - running from a source tree without setuptools_scm
    __version__ = "0.0.0+unknown"

from .config import ModelConfig
from .normalize import Normalization

__all__ = ["ModelConfig", "Normalization", "__version__", "build_model", "describe", "weight_map"]


def __getattr__(name: str):
    # Lazy so that `import napari_unetseg` stays light (torch loads on first use).
    if name in ("build_model", "describe"):
        from . import models

        return getattr(models, name)
    if name == "weight_map":
        from .weightmap import weight_map

        return weight_map
    raise AttributeError(f"module 'napari_unetseg' has no attribute {name!r}")
