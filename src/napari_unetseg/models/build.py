"""``build_model``: the network a :class:`ModelConfig` describes (re-exported by
:mod:`napari_unetseg.models`)."""

from __future__ import annotations

from ..config import ModelConfig
from .base import SegmentationNet
from .resunet import ResUNet
from .unet import UNet
from .unetpp import UNetPlusPlus

__all__ = ["ARCHITECTURES", "build_model"]

#: ``config.arch`` -> network class.
ARCHITECTURES: dict[str, type[SegmentationNet]] = {
    "unet": UNet,
    "unetpp": UNetPlusPlus,
    "resunet": ResUNet,
}


def build_model(cfg: ModelConfig) -> SegmentationNet:
    """Build the (randomly initialised) network that ``cfg`` describes.

    Parameters
    ----------
    cfg : ModelConfig
        The architecture; available afterwards as ``model.config``.

    Returns
    -------
    SegmentationNet
        A ``torch.nn.Module`` mapping float ``(N, C, H, W)`` to logits ``(N, K, H', W')``.

    Raises
    ------
    TypeError
        If ``cfg`` is not a :class:`ModelConfig` (use ``ModelConfig.from_dict`` for a dict).
    ValueError
        If ``cfg.arch`` names no known architecture.
    """
    if not isinstance(cfg, ModelConfig):
        raise TypeError(
            f"build_model needs a ModelConfig, got {type(cfg).__name__}; "
            "use ModelConfig.from_dict(...) for a dict"
        )
    try:
        cls = ARCHITECTURES[cfg.arch]
    except KeyError:
        names = ", ".join(sorted(ARCHITECTURES))
        raise ValueError(f"unknown architecture {cfg.arch!r}; known: {names}") from None
    return cls(cfg)
