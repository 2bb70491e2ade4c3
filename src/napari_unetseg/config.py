"""Model configuration: one frozen dataclass that validates itself and round-trips to JSON."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

ARCHS = ("unet", "unetpp", "resunet")
PADDINGS = ("same", "valid")
BLOCKS = ("basic", "bottleneck", "simple")
FEATURES = ("none", "multiscale")


def _check_int(name: str, value: Any, lo: int, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise ValueError(f"{name} must be {rng}, got {value}")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a 2D segmentation network of the U-Net family.

    Parameters
    ----------
    arch : {"unet", "unetpp", "resunet"}
        U-Net (Ronneberger 2015), UNet++ (Zhou 2018) or residual U-Net (Drozdzal 2016).
    depth : int
        Number of 2x2 down-samplings (the paper's U-Net has 4).
    width : int
        Channels of the first level; level i has ``width * 2**i`` (the paper uses 64).
    in_channels : int
        Channels of the input image.
    classes : int
        Number of output classes K (logits have K channels).
    padding : {"same", "valid"}
        ``same`` keeps the image size (any input size is padded internally to a multiple of
        ``2**depth`` and cropped back). ``valid`` is the paper's unpadded U-Net: the output is
        smaller than the input by ``model.margin`` pixels on each side (UNet only).
    batchnorm : bool
        BatchNorm after each convolution (UNet and UNet++; ResUNet always uses pre-activation BN).
    block : {"basic", "bottleneck", "simple"}
        ResUNet residual block: 3x3-3x3, 1x1-3x3-1x1 or a single 3x3.
    long_skips, short_skips : bool
        ResUNet ablation switches (Drozdzal 2016, table 1).
    deep_supervision : bool
        UNet++: train every head X(0,1..depth); when off only the last head is trained, and
        the pruned levels ``1..depth-1`` are refused (their heads are untrained).
    features : {"none", "multiscale"}
        ``multiscale``: a fixed filter bank in front of the network
        (:class:`~napari_unetseg.models.features.FilterBank`: smoothed intensity, gradient
        magnitude and Hessian eigenvalues at scales 1-16 px, the features of ilastik's pixel
        classifier) feeds the first layer with ``in_channels * 21`` channels; no trainable
        weights. It makes training from a few strokes fast and steady (docs/performance.md).
    blocks_per_level : int or tuple of int
        ResUNet: residual blocks stacked per level, one number for every level or one per
        level of the contracting path then the bottom (``depth + 1`` numbers; the expanding
        path mirrors the contracting one). Drozdzal et al. (2016) stack 3, 8 and 10
        bottleneck blocks on their deeper EM levels. Other networks: 1.
    dropout : float
        Dropout probability in ``[0, 1)``. ResUNet: at the end of every residual block's
        branch (Drozdzal 2016 use dropout in every block); U-Net: at the end of the
        contracting path (the two deepest feature maps, Ronneberger 2015). UNet++: 0.
    """

    arch: str = "unet"
    depth: int = 4
    width: int = 32
    in_channels: int = 1
    classes: int = 2
    padding: str = "same"
    batchnorm: bool = True
    block: str = "basic"
    long_skips: bool = True
    short_skips: bool = True
    deep_supervision: bool = True
    blocks_per_level: int | tuple[int, ...] = 1
    dropout: float = 0.0
    features: str = "none"

    def __post_init__(self) -> None:
        if isinstance(self.blocks_per_level, list):  # from JSON
            object.__setattr__(self, "blocks_per_level", tuple(self.blocks_per_level))
        self.validate()

    def level_blocks(self) -> tuple[int, ...]:
        """Residual blocks of each contracting level and of the bottom (``depth + 1``)."""
        b = self.blocks_per_level
        return (b,) * (self.depth + 1) if isinstance(b, int) else tuple(b)

    def validate(self) -> None:
        """Raise ValueError/TypeError naming the bad field and what is allowed."""
        _check_choice("arch", self.arch, ARCHS)
        _check_int("depth", self.depth, 1, 8)
        _check_int("width", self.width, 1, 1024)
        _check_int("in_channels", self.in_channels, 1, 64)
        _check_int("classes", self.classes, 1, 1024)
        _check_choice("padding", self.padding, PADDINGS)
        _check_choice("block", self.block, BLOCKS)
        _check_choice("features", self.features, FEATURES)
        for name in ("batchnorm", "long_skips", "short_skips", "deep_supervision"):
            _check_bool(name, getattr(self, name))
        if self.padding == "valid" and self.arch != "unet":
            raise ValueError(
                f"padding='valid' is only available for arch='unet', got arch={self.arch!r}"
            )
        self._validate_depth_options()

    def _validate_depth_options(self) -> None:
        b = self.blocks_per_level
        if isinstance(b, tuple):
            if len(b) != self.depth + 1:
                raise ValueError(f"blocks_per_level needs depth + 1 = {self.depth + 1} numbers "
                                 f"(contracting levels, then the bottom), got {len(b)}: {b}")
            for i, n in enumerate(b):
                _check_int(f"blocks_per_level[{i}]", n, 1, 64)
        else:
            _check_int("blocks_per_level", b, 1, 64)
        if self.arch != "resunet" and self.level_blocks() != (1,) * (self.depth + 1):
            raise ValueError(f"blocks_per_level is for arch='resunet' (residual blocks); "
                             f"arch={self.arch!r} has one block per level")
        d = self.dropout
        if isinstance(d, bool) or not isinstance(d, (int, float)):
            raise TypeError(f"dropout must be a number, got {type(d).__name__} {d!r}")
        if not 0.0 <= d < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {d}")
        if d and self.arch == "unetpp":
            raise ValueError("dropout is for arch='unet' and 'resunet'; UNet++ has none")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        if not isinstance(data, dict):
            raise TypeError(f"model config must be a dict, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown model config field(s) {unknown}; known fields: {sorted(known)}"
            )
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"model config is not valid JSON: {e}") from e
        return cls.from_dict(data)
