"""What to train and what training reports: :class:`TrainConfig`, :class:`TrainEvent`,
:class:`TrainResult` (used by :mod:`napari_unetseg.training`)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .augment import AugmentConfig
from .config import ModelConfig
from .normalize import Normalization

_CHOICES = {
    "optimizer": ("adam", "sgd"),
    "schedule": ("cosine", "constant", "poly"),
    "loss": ("wce", "ce", "dice", "bce_dice"),
    "teacher": ("none", "forest"),
}
_NUMBERS = {  # name: (lo, hi, integer)
    "iterations": (1, 10_000_000, True), "batch_size": (1, 4096, True),
    "patch_size": (4, 8192, True), "lr": (1e-12, 10.0, False),
    "weight_decay": (0.0, 1.0, False), "val_fraction": (0.0, 0.9, False),
    "val_every": (1, 10_000_000, True), "val_patches": (1, 100_000, True),
    "log_every": (1, 100_000, True), "seed": (0, 2**63 - 1, True),
    "w0": (0.0, 1e3, False), "sigma": (1e-3, 1e3, False),
    "patience": (0, 10_000_000, True), "consistency": (0.0, 1e3, False),
    "self_training_s": (0.0, 1e7, False), "pseudo_slices": (1, 100_000, True),
    "pseudo_confidence": (0.5, 1.0, False), "bn_momentum": (1e-3, 1.0, False),
    "pseudo_portion": (1e-3, 1.0, False), "teacher_slices": (1, 100_000, True),
    "teacher_confidence": (0.5, 1.0, False), "teacher_weight": (0.0, 1.0, False),
}


@dataclass(frozen=True)
class TrainConfig:
    """How to train; validated on creation.

    Parameters
    ----------
    iterations, batch_size, patch_size : int
        Optimiser steps, patches per step, input patch side in pixels.
    lr, weight_decay : float
        Learning rate and L2 weight decay.
    optimizer : {"adam", "sgd"}
        Adam (fused on CUDA), or SGD with momentum 0.99 as in Ronneberger et al. (2015).
    schedule : {"cosine", "constant", "poly"}
        Learning-rate decay over ``iterations`` (poly: ``(1 - t/T) ** 0.9``).
    loss : {"wce", "ce", "dice", "bce_dice"}
        ``wce`` is the U-Net pixel-weighted cross entropy (Ronneberger et al. 2015, eq. 1) with
        the weight map of :mod:`napari_unetseg.targets`; ``bce_dice`` weighs its BCE term
        with it. ``ce`` and ``dice`` use no weights, so none are computed.
    augment : AugmentConfig
    val_fraction, val_slices
        Validation hold-out, see :func:`napari_unetseg.data.prepare_data`.
    time_budget_s : float or None
        Stop after this many seconds of training (None: after ``iterations`` steps). With a
        budget the learning-rate schedule runs over the budget (its progress is the larger of
        the time and step fractions), so a run that ends on time has decayed fully.
    val_every, val_patches : int
        Validate every so many steps, on at most so many patches.
    device : str
        ``"auto"`` (cuda > mps > cpu), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
    amp : bool
        bfloat16 autocast on CUDA (ignored elsewhere).
    log_every : int
        Read the losses back from the device every so many steps (see module docstring).
    seed : int
        Seeds weights, patch positions, augmentation and the validation split.
    ds_weights : tuple of float or None
        UNet++ deep-supervision weight of each head (None: equal).
    w0, sigma : float
        Border term of the U-Net weight map (Ronneberger et al. 2015, eq. 2) on dense and
        instance labels; ``w0 = 0`` switches it off.
    class_balance : bool
        Class-balance term ``wc`` of the weight map (inverse class frequency), also on
        sparse strokes; the forest teacher's targets weigh what the strokes of their class
        weigh.
    patience : int
        Stop after this many validations in a row without a better validation Dice (the
        best weights are kept); 0: never stop early.
    consistency : float
        Training from an ``init`` model with the same classes: weight of the KL term that
        keeps the predictions on unlabelled pixels close to the starting model's
        (:func:`napari_unetseg.losses.consistency_loss`); 0: off.
    self_training_s, pseudo_slices, pseudo_confidence
        Self-training (:mod:`napari_unetseg.selftrain`): every ``self_training_s`` seconds
        of training (0: off), ``pseudo_slices`` slices are predicted and their pixels of
        class probability >= ``pseudo_confidence`` become training targets where nothing is
        painted. Sparse labels only (dense and instance labels leave no pixel to fill).
    pseudo_portion : float
        Class-balanced self-training: of the pixels predicted as each class, only this most
        confident share (and at least ``pseudo_confidence``) becomes a pseudo label, so a
        class the network is surer of cannot crowd out the others (Zou et al. 2018); 1: off.
    teacher, teacher_slices, teacher_confidence
        Strokes only: ``"forest"`` fits a random forest on the strokes' multiscale features
        (:mod:`napari_unetseg.teacher`) and, where nothing is painted, trains on the pixels of
        ``teacher_slices`` slices it predicts with a probability of at least
        ``teacher_confidence`` (the time it takes counts as training time; refit after new
        strokes). ``"none"``: off. Not used when training starts from a model (``init``): on
        another stack the bundled model scored 0.96 V_Rand where a forest of the same strokes
        scored 0.81, so the forest's targets would pull the model down.
    teacher_weight : float
        With a weight map (``loss="wce"``), a teacher's target weighs this share of what a
        stroke of its class weighs (1: the same).
    bn_momentum : float
        Momentum of the BatchNorm running statistics while training (PyTorch's 0.1 by
        default): the share of each step's batch statistics in the statistics a preview, a
        snapshot or the final model predicts with. In the first steps the weights move fast
        and 0.1 lags behind them: a network 25 steps into training predicts nearly one class
        with 0.1 and a usable map with 0.5 (docs/performance.md).
    """

    iterations: int = 2000
    batch_size: int = 4
    patch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adam"
    schedule: str = "cosine"
    loss: str = "wce"
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    val_fraction: float = 0.1
    val_slices: tuple[int, ...] | None = None
    val_every: int = 100
    val_patches: int = 64
    device: str = "auto"
    amp: bool = True
    log_every: int = 10
    seed: int = 0
    ds_weights: tuple[float, ...] | None = None
    w0: float = 10.0
    sigma: float = 5.0
    time_budget_s: float | None = None
    patience: int = 0
    consistency: float = 0.0
    class_balance: bool = True
    self_training_s: float = 0.0
    pseudo_slices: int = 6
    pseudo_confidence: float = 0.9
    pseudo_portion: float = 1.0
    bn_momentum: float = 0.1
    teacher: str = "none"
    teacher_slices: int = 4
    teacher_confidence: float = 0.8
    teacher_weight: float = 1.0

    def __post_init__(self) -> None:
        for name in ("val_slices", "ds_weights"):  # accept lists (e.g. from JSON)
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        self.validate()

    def validate(self) -> None:
        """Raise TypeError/ValueError naming the bad field and what is allowed."""
        for name, (lo, hi, integer) in _NUMBERS.items():
            v = getattr(self, name)
            kind = int if integer else (int, float)
            if isinstance(v, bool) or not isinstance(v, kind):
                raise TypeError(f"{name} must be {'an int' if integer else 'a number'}, got {v!r}")
            if not (math.isfinite(v) and lo <= v <= hi):
                raise ValueError(f"{name} must be in [{lo}, {hi}], got {v!r}")
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        b = self.time_budget_s
        if b is not None and (isinstance(b, bool) or not isinstance(b, (int, float))
                              or not (math.isfinite(b) and 0 < b <= 1e7)):
            raise ValueError(f"time_budget_s must be None or a number of seconds in (0, 1e7], "
                             f"got {b!r}")
        if not isinstance(self.augment, AugmentConfig):
            raise TypeError(f"augment must be an AugmentConfig, got {type(self.augment)}")
        for name in ("amp", "class_balance"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if not isinstance(self.device, str):
            raise TypeError(f"device must be a str, got {self.device!r}")
        for name in ("val_slices", "ds_weights"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, tuple) or not v):
                raise TypeError(f"{name} must be None or a non-empty tuple, got {v!r}")
        if self.ds_weights is not None and (
            not all(isinstance(w, (int, float)) and w >= 0 for w in self.ds_weights)
            or sum(self.ds_weights) <= 0
        ):
            raise ValueError(f"ds_weights must be >= 0 with a positive sum: {self.ds_weights}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["augment"] = self.augment.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        d = dict(data)
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown train config field(s) {unknown}")
        if isinstance(d.get("augment"), Mapping):
            d["augment"] = AugmentConfig.from_dict(dict(d["augment"]))
        return cls(**d)


@dataclass(frozen=True)
class TrainEvent:
    """Progress after one step; ``val_*`` are None except on validation steps.

    ``elapsed_s`` is the training time so far (by the run's clock, from the first step's
    start), so a caller can preview every few seconds; ``eta_s`` is the time left, from the
    step rate and, with ``time_budget_s``, at most the budget left.
    """

    step: int
    epoch: int
    loss: float
    val_loss: float | None
    val_dice: float | None
    images_per_s: float
    eta_s: float
    lr: float
    elapsed_s: float = 0.0


@dataclass
class TrainResult:
    """A trained model (best on validation, on CPU, in eval mode) and what is needed to use it.

    ``model``, ``normalization`` and ``class_values`` are what
    :func:`napari_unetseg.io.save_model` stores; ``history`` has one dict per step (the
    :class:`TrainEvent` fields).
    """

    model: torch.nn.Module
    model_config: ModelConfig
    normalization: Normalization
    class_values: tuple[int, ...]
    history: list[dict[str, Any]] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
