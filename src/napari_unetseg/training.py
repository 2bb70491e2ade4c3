"""Training loop: a generator of :class:`TrainEvent` that returns a :class:`TrainResult`.

``train(...)`` checks every input eagerly (ValueError before any step) and returns the
generator; ``fit(...)`` drains it. The loop samples patches on the training device
(:class:`~napari_unetseg.data.PatchSampler`), augments them there
(:func:`~napari_unetseg.augment.augment_batch`), and keeps the weights with the best
validation Dice. UNet++ with ``deep_supervision`` is trained on every head (Zhou et al. 2018,
eq. 2 sums the loss over the heads X(0,1..depth)).

Host syncs on CUDA: the per-step losses stay on the device and are read in one transfer
every ``log_every`` steps (or every 0.5 s, or at validation), so the events of such a window
are yielded together; ``stop`` is still called before every step.

Training may start from another model's weights (``init``: the bundled model, a model file;
see :mod:`napari_unetseg.finetune`): the starting weights are validated before the first step
and compete for "best", so fine-tuning never returns a model worse on validation than where it
started; ``consistency`` keeps the predictions on unpainted pixels close to the starting
model's, and ``patience`` stops when validation no longer improves.

Out of CUDA memory, a training step is retried (same step) with half the batch, down to one
patch, and validation runs its fixed patches in halved chunks; the batch used is logged,
reported in the events' rate and in ``metadata["batch_size_used"]``.

A loss that becomes NaN or infinite stops training with :class:`TrainingDiverged`, which carries
the result of the last good weights (a snapshot taken whenever the losses are read back and the
weights are finite).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from .augment import augment_batch, context_size
from .config import ModelConfig
from .data import TrainingData, prepare_data, relabel
from .devices import drain, resolve_device
from .live import LabelsInbox
from .models.unetpp import mean_probability_logits
from .normalize import Normalization
from .sampler import PatchSampler
from .selftrain import PseudoLabels
from .teacher import ForestTeacher
from .train_config import TrainConfig, TrainEvent, TrainResult

__all__ = [
    "TrainConfig", "TrainEvent", "TrainResult", "TrainRun", "TrainingDiverged", "fit",
    "resolve_device", "train",
]

_FLUSH_S = 0.5
#: Self-training rounds and the teacher's refits take at most 1 / (1 + ROUND_SPACING) of the
#: training time: after one that took ``c`` seconds the next waits at least
#: ``ROUND_SPACING * c``. Without it a round slower than its period (a slow CPU, big slices)
#: would come after every step and training would all but stop.
ROUND_SPACING = 2.0
log = logging.getLogger(__name__)


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite; ``result`` holds the model of the last good step."""

    def __init__(self, message: str, result: TrainResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass
class _Setup:
    """Everything checked before the first step."""

    model: torch.nn.Module
    model_config: ModelConfig
    data: TrainingData
    cfg: TrainConfig
    device: torch.device
    criterion: Callable[..., torch.Tensor]
    patch: int
    margin: int
    stop: Callable[[], bool] | None
    batch: int  # patches per training step; halved on CUDA OOM (cfg is frozen)
    val_batch: int  # patches per validation forward; halved on CUDA OOM
    inbox: LabelsInbox = field(default_factory=lambda: LabelsInbox(()))  # labels painted live
    clock: Callable[[], float] | None = None  # time source of the budget (None: perf_counter)
    warm: bool = False  # starts from given weights (resume or init): validate them first
    init: dict[str, Any] | None = None  # metadata of the init: name, fresh tensors, ...
    teacher: torch.nn.Module | None = None  # frozen starting model (consistency term)
    pseudo: PseudoLabels | None = None  # self-training rounds (cfg.self_training_s)
    forest: ForestTeacher | None = None  # the random-forest teacher (cfg.teacher)
    best: dict[str, Any] = field(default_factory=lambda: {"dice": -1.0, "step": 0,
                                                          "state": None})


def _initial_model(
    model_config: ModelConfig, resume: Any, seed: int
) -> tuple[torch.nn.Module, Normalization | None, tuple[int, ...] | None]:
    """Build (seeded) or resume a model; also the resumed normalisation and class values."""
    from .models import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(model_config)
    if resume is None:
        return model, None, None
    norm = values = None
    if isinstance(getattr(resume, "model", None), torch.nn.Module):  # TrainResult, SavedModel
        old = getattr(resume, "model_config", None) or getattr(resume, "config", None)
        if old is not None and old != model_config:
            raise ValueError(f"resume was trained with {old}, which differs from "
                             f"model_config {model_config}")
        state = resume.model.state_dict()
        norm = getattr(resume, "normalization", None)
        values = getattr(resume, "class_values", None)
    elif isinstance(resume, Mapping):
        state = resume.get("model_state_dict", resume)
    else:
        raise TypeError(f"resume must be a TrainResult, a SavedModel or a state dict, got "
                        f"{type(resume).__name__}")
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise ValueError(f"resume state does not fit model_config {model_config}: {e}") from e
    return model, norm, values


def _geometry(model: torch.nn.Module, patch_size: int) -> tuple[int, int]:
    """Input patch side and margin (the unpadded U-Net's output is smaller by 2*margin)."""
    margin = int(getattr(model, "margin", 0))
    patch = int(model.valid_input_size(patch_size)) if margin else patch_size
    if patch < model.min_size:
        raise ValueError(f"patch_size {patch_size} is below the model's minimum "
                         f"{model.min_size} (2**depth)")
    return patch, margin


def _uses_weights(cfg: TrainConfig, labels_mode: str) -> bool:
    """Whether the loss uses the weight map; warn when instance labels lose theirs."""
    from .losses import WEIGHTED_LOSSES

    if cfg.loss in WEIGHTED_LOSSES:
        return True
    if labels_mode == "instances":
        log.warning("loss=%r ignores the U-Net weight map of instance labels (the border "
                    "weights between touching objects); use loss='wce' to train with it",
                    cfg.loss)
    return False


def _criterion(cfg: TrainConfig, model_config: ModelConfig) -> Callable[..., torch.Tensor]:
    from .losses import DeepSupervisionLoss, make_loss

    base = make_loss(cfg.loss)
    if model_config.arch != "unetpp" or not model_config.deep_supervision:
        return base
    weights = cfg.ds_weights or (1.0,) * model_config.depth
    if len(weights) != model_config.depth:
        raise ValueError(f"ds_weights needs one weight per UNet++ head ({model_config.depth}), "
                         f"got {len(weights)}: {weights}")
    return DeepSupervisionLoss(base, list(weights))


def train(
    image: Any,
    labels: Any,
    model_config: ModelConfig,
    train_config: TrainConfig | None = None,
    *,
    labels_mode: str = "sparse",
    channel_axis: int | None = None,
    resume: Any = None,
    stop: Callable[[], bool] | None = None,
    clock: Callable[[], float] | None = None,
    init: Any = None,
) -> Generator[TrainEvent, None, TrainResult]:
    """Check the inputs, then return the training generator.

    Parameters
    ----------
    image, labels : array-like
        Image layer data and labels layer data, see :func:`napari_unetseg.data.prepare_data`.
    model_config : ModelConfig
        The network; ``classes`` must equal the number of label classes and ``in_channels``
        the image channels.
    train_config : TrainConfig or None
        Defaults to ``TrainConfig()``.
    labels_mode : {"sparse", "dense", "instances"}
    channel_axis : int or None
    resume : TrainResult, SavedModel (``io.load_model``), state dict or None
        Start from these weights (and, for a TrainResult or SavedModel, its normalisation;
        its model config and class values must match).
    stop : callable or None
        Called before every step; returning True ends training with a result.
    clock : callable or None
        Seconds for ``time_budget_s`` and the events' ``elapsed_s`` (None: wall clock,
        ``time.perf_counter``); e.g. process CPU time per thread to budget on a shared machine.
    init : "scratch", "bundled", a model file path, SavedModel, TrainResult or None
        Start from this model's weights (:func:`napari_unetseg.finetune.resolve_init`);
        ``model_config`` must be its architecture, ``classes`` may differ (the output head
        is then new). Unlike ``resume``, the normalisation is fitted on ``image`` and the
        head's classes are put in the order of the labels (by agreement with them).

    Returns
    -------
    generator
        Yields a :class:`TrainEvent` per step and returns a :class:`TrainResult`
        (``result = yield from train(...)``). ``gen.close()`` is safe at any time.

    Raises
    ------
    ValueError, TypeError
        On bad data, configs or device, before any training.
    """
    cfg = TrainConfig() if train_config is None else train_config
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"train_config must be a TrainConfig, got {type(cfg).__name__}")
    if not isinstance(model_config, ModelConfig):
        raise TypeError(f"model_config must be a ModelConfig, got {type(model_config).__name__}")
    device = resolve_device(cfg.device)
    if resume is not None and init is not None:
        raise ValueError("pass either resume (continue a training) or init (start from a "
                         "model), not both")
    from .finetune import load_weights, resolve_init

    source = resolve_init(init)
    model, norm, resumed_values = _initial_model(model_config, resume, cfg.seed)
    start = None
    if source is not None:
        start = {"init": str(init) if isinstance(init, (str, os.PathLike))
                 else type(init).__name__, "init_fresh": load_weights(model, source)}
    patch, margin = _geometry(model, cfg.patch_size)
    weighted = _uses_weights(cfg, labels_mode)
    data = prepare_data(
        image, labels, labels_mode=labels_mode, channel_axis=channel_axis,
        val_fraction=cfg.val_fraction, val_slices=cfg.val_slices, min_size=patch - 2 * margin,
        margin=margin, normalization=norm, w0=cfg.w0, sigma=cfg.sigma, weights=weighted,
        class_balance=cfg.class_balance, seed=cfg.seed,
    )
    if model_config.classes != data.num_classes:
        raise ValueError(f"labels give {data.num_classes} classes (values {data.class_values}) "
                         f"but model_config.classes is {model_config.classes}")
    if model_config.in_channels != data.channels:
        raise ValueError(f"image has {data.channels} channel(s) but model_config.in_channels "
                         f"is {model_config.in_channels}")
    if resumed_values is not None and tuple(resumed_values) != data.class_values:
        raise ValueError(f"resume was trained on class values {resumed_values}, the labels "
                         f"give {data.class_values}")
    crit = _criterion(cfg, model_config)
    setup = _Setup(model, model_config, data, cfg, device, crit, patch, margin, stop,
                   cfg.batch_size, cfg.batch_size, LabelsInbox(np.shape(labels)), clock,
                   warm=resume is not None or start is not None, init=start)
    return TrainRun(setup)


class TrainRun(Generator):
    """The training generator returned by :func:`train`.

    Iterate it (or ``yield from`` it) for :class:`TrainEvent` s; its return value is the
    :class:`TrainResult`. Between events, ``model`` is the network being trained (on the
    training device, in train mode) and ``normalization``/``class_values``/``device`` describe
    how to apply it, so a caller can preview predictions on a *copy* of it while it trains.
    :meth:`update_labels` (from any thread) makes it train on new labels from its next step.
    """

    def __init__(self, setup: _Setup) -> None:
        self._setup = setup
        self._gen = _run(setup)

    @property
    def model(self) -> torch.nn.Module:
        return self._setup.model

    @property
    def normalization(self) -> Normalization:
        return self._setup.data.normalization

    @property
    def class_values(self) -> tuple[int, ...]:
        return self._setup.data.class_values

    @property
    def device(self) -> torch.device:
        return self._setup.device

    @property
    def best(self) -> dict[str, Any]:
        """The best weights so far: ``{"dice", "step", "state"}`` (``state``: a CPU state
        dict, None before the first validation; step 0 is the starting weights)."""
        return self._setup.best

    @property
    def forest(self) -> ForestTeacher | None:
        """The random-forest teacher (``TrainConfig.teacher``), or None."""
        return self._setup.forest

    @property
    def data(self) -> TrainingData:
        """The training data the patches are sampled from now."""
        return self._setup.data

    @property
    def labels(self) -> LabelsInbox:
        """The inbox of live labels: ``version`` counts the updates applied, ``problem``
        says why the last one was not."""
        return self._setup.inbox

    def update_labels(self, labels: Any) -> None:
        """Train on ``labels`` (same shape and classes as at the start) from the next step on.

        Thread-safe and cheap (a copy): the loop rebuilds the targets, the validation split
        and the stroke-centred sampling before its next step; if several updates come
        between two steps only the newest is used. Labels the run cannot use (a class the
        model does not have, a single class) are skipped and ``labels.problem`` says why.
        The best-on-validation model is chosen again among the models validated after the
        update (the old validation labels are gone). ValueError if the shape differs.
        """
        self._setup.inbox.put(labels)

    def send(self, value: Any) -> TrainEvent:
        return self._gen.send(value)

    def throw(self, *args: Any) -> TrainEvent:  # noqa: D102 - generator protocol
        return self._gen.throw(*args)

    def close(self) -> None:
        self._gen.close()


def fit(
    image: Any,
    labels: Any,
    model_config: ModelConfig,
    train_config: TrainConfig | None = None,
    *,
    labels_mode: str = "sparse",
    channel_axis: int | None = None,
    resume: Any = None,
    stop: Callable[[], bool] | None = None,
    on_event: Callable[[TrainEvent], None] | None = None,
    clock: Callable[[], float] | None = None,
    init: Any = None,
) -> TrainResult:
    """Run :func:`train` to the end and return its :class:`TrainResult`.

    Same parameters as :func:`train`, plus ``on_event`` called with every event.
    """
    gen = train(image, labels, model_config, train_config, labels_mode=labels_mode,
                channel_axis=channel_axis, resume=resume, stop=stop, clock=clock, init=init)
    return drain(gen, on_event)


def _optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device):
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":  # Ronneberger 2015: momentum 0.99
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.99, weight_decay=cfg.weight_decay)
    fused = device.type == "cuda"
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)


def _lr_factor(schedule: str) -> Callable[[float], float]:
    """Learning-rate factor at a progress ``f`` in [0, 1] (steps or time done / planned)."""
    if schedule == "cosine":
        return lambda f: 0.5 * (1.0 + math.cos(math.pi * min(f, 1.0)))
    if schedule == "poly":
        return lambda f: max(0.0, 1.0 - f) ** 0.9
    return lambda f: 1.0


def _forward(s: _Setup, img: torch.Tensor, model: torch.nn.Module | None = None) -> Any:
    """Logits, or the list of head logits for deep supervision, under bf16 autocast on CUDA."""
    model = s.model if model is None else model
    amp = s.cfg.amp and s.device.type == "cuda"
    ds = s.model_config.arch == "unetpp" and s.model_config.deep_supervision
    if s.device.type in ("cuda", "cpu"):  # channels_last: ~20 % faster steps on an H100,
        img = img.contiguous(memory_format=torch.channels_last)  # ~30 % on a 2-core CPU
    with torch.autocast(s.device.type, dtype=torch.bfloat16, enabled=amp):
        out = model(img, level="all") if ds else model(img)
    return [o.float() for o in out] if isinstance(out, list) else out.float()


def _mean_logits(out: Any) -> torch.Tensor:
    """Logits of the heads' mean probabilities (UNet++'s accurate mode), or ``out``."""
    return mean_probability_logits(out) if isinstance(out, list) else out


def _crop(t: torch.Tensor | None, m: int) -> torch.Tensor | None:
    return t if t is None or m == 0 else t[..., m:-m, m:-m]


@torch.no_grad()
def _evaluate(s: _Setup, batches: list) -> tuple[float, float]:
    """Validation loss and mean Dice over classes (on labelled pixels, argmax prediction).

    Dice is ``2 TP / (2 TP + FP + FN)`` per class, averaged over classes that occur in the
    prediction or the target.
    """
    s.model.eval()
    try:
        conf, loss = _shrinking(s, "val_batch", "validating", lambda n: _val_sums(s, batches, n))
    finally:
        s.model.train()
    k = s.model_config.classes
    conf = conf.view(k, k)  # rows: target, columns: prediction
    tp = conf.diagonal()
    denom = conf.sum(0) + conf.sum(1)
    dice = (2 * tp / denom.clamp_min(1))[denom > 0].mean()
    vals = torch.stack([loss / max(len(batches), 1), dice.float()]).tolist()
    return float(vals[0]), float(vals[1])


def _val_sums(s: _Setup, batches: list, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Confusion counts and summed batch losses, forwarding at most ``n`` patches at a time.

    A batch split into chunks adds its chunks' losses weighted by their share of the batch's
    labelled pixels: the same loss for the (weighted) cross-entropy, close for Dice losses.
    """
    k = s.model_config.classes
    conf = torch.zeros(k * k, device=s.device, dtype=torch.float64)
    loss = torch.zeros((), device=s.device)
    for batch in batches:
        split = len(batch[0]) > n
        labelled = (_crop(batch[1], s.margin) >= 0).sum().clamp_min(1) if split else None
        for i in range(0, len(batch[0]), n):
            img, tgt, wgt = (None if t is None else t[i : i + n] for t in batch)
            tgt, wgt = _crop(tgt, s.margin), _crop(wgt, s.margin)
            keep = tgt >= 0
            out = _forward(s, img)
            part = s.criterion(out, tgt, wgt)
            loss += part * (keep.sum() / labelled) if split else part
            pairs = tgt[keep] * k + _mean_logits(out).argmax(1)[keep]
            conf += torch.bincount(pairs, minlength=k * k).double()
    return conf, loss


def _shrinking(s: _Setup, attr: str, doing: str, fn: Callable[[int], Any]) -> Any:
    """``fn(s.<attr>)``; on CUDA OOM halve ``s.<attr>`` (down to 1) and call it again."""
    while True:
        n = getattr(s, attr)
        try:
            return fn(n)
        except torch.cuda.OutOfMemoryError as e:
            if n <= 1:
                raise RuntimeError(
                    f"out of GPU memory {doing} with a batch of 1 patch of {s.patch}x{s.patch}; "
                    "use a smaller patch_size, a narrower network (width) or device='cpu'"
                ) from e
        # outside the handler, so the failed attempt's tensors (held by the traceback) are freed
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        setattr(s, attr, n // 2)
        log.warning("out of GPU memory %s with a batch of %d patches of %dx%d; continuing with "
                    "batches of %d", doing, n, s.patch, s.patch, n // 2)


def _step(s: _Setup, sampler: PatchSampler, gen: torch.Generator, opt, n: int) -> torch.Tensor:
    # zeroing first also drops the gradients of an attempt that ran out of memory
    opt.zero_grad(set_to_none=True)
    img, tgt, wgt = sampler.sample(n)
    if s.cfg.augment.active:  # zoom samples context around the patch: return its centre
        size = s.patch if sampler.patch != s.patch else None
        img, tgt, wgt = augment_batch(img, tgt, wgt, config=s.cfg.augment, generator=gen,
                                      size=size)
    out, tgt = _forward(s, img), _crop(tgt, s.margin)
    loss = s.criterion(out, tgt, _crop(wgt, s.margin))
    if s.teacher is not None:
        from .losses import consistency_loss

        with torch.no_grad():
            taught = _mean_logits(_forward(s, img, s.teacher))
        loss = loss + s.cfg.consistency * consistency_loss(_mean_logits(out), taught, tgt)
    loss.backward()
    opt.step()
    return loss.detach()


def _events(s: _Setup, pending: list, val: tuple[float, float] | None, seconds: float,
            elapsed: float) -> list[TrainEvent]:
    """Events of the pending steps, with their losses read from the device in one transfer.

    ``pending`` holds ``(step, loss, lr, patches in the step, patches so far)``.
    """
    losses = torch.stack([p[1] for p in pending]).tolist()
    rate = sum(p[3] for p in pending) / max(seconds, 1e-9)
    area = max(1, len(s.data.train_slices) * int(np.prod(s.data.image.shape[-2:])))
    pixels = (s.patch - 2 * s.margin) ** 2
    out = []
    for (i, _, lr, _, seen), loss in zip(pending, losses, strict=True):
        vl, vd = val if val is not None and i == pending[-1][0] else (None, None)
        eta = (s.cfg.iterations - i) * s.batch / rate
        if s.cfg.time_budget_s is not None:
            eta = max(0.0, min(eta, s.cfg.time_budget_s - elapsed))
        out.append(TrainEvent(i, seen * pixels // area, float(loss), vl, vd, rate, eta, lr,
                              elapsed))
    return out


def _relabel(s: _Setup) -> bool:
    """Take the newest live labels into ``s.data``; False (and the reason in the inbox) if
    there were none or they do not fit."""
    labels = s.inbox.take()
    if labels is None:
        return False
    cfg = s.cfg
    try:
        s.data = relabel(s.data, labels, val_fraction=cfg.val_fraction,
                         val_slices=cfg.val_slices, w0=cfg.w0, sigma=cfg.sigma,
                         class_balance=cfg.class_balance, seed=cfg.seed)
    except (ValueError, TypeError) as e:
        log.info("live labels not used: %s", e)
        s.inbox.done(str(e))
        return False
    s.inbox.done()
    return True


def _samplers(s: _Setup) -> tuple[PatchSampler, list]:
    """The training patch sampler and the validation batches of ``s.data``.

    With zoom augmentation the training patches carry context around the patch size (see
    :func:`~napari_unetseg.augment.context_size`); validation patches have the patch size.
    """
    cfg = s.cfg
    context = min(context_size(s.patch, cfg.augment), *s.data.image.shape[-2:])
    size = context if cfg.augment.active else s.patch
    sampler = PatchSampler(s.data, size, s.device, seed=cfg.seed)
    val = sampler if size == s.patch else PatchSampler(s.data, s.patch, s.device, seed=cfg.seed)
    return sampler, val.validation_batches(cfg.batch_size, cfg.val_patches)


def _run_time(s: _Setup, c0: float) -> float:
    """Seconds on the run's clock since ``c0`` (its reading at the start)."""
    return (time.perf_counter() if s.clock is None else s.clock()) - c0


def _spaced(s: _Setup, c0: float, start: float) -> float:
    """Run time before which the next round may not start, after one that started at
    ``start`` and ends now (:data:`ROUND_SPACING`)."""
    end = _run_time(s, c0)
    return end + ROUND_SPACING * max(0.0, end - start)


def _resampled(s: _Setup, sampler: PatchSampler) -> tuple[PatchSampler, list]:
    """:func:`_samplers` of ``s.data`` (new labels), the random stream of ``sampler`` going
    on."""
    positions = sampler.generator
    sampler, val_batches = _samplers(s)
    sampler.generator = positions
    return sampler, val_batches


def _run(s: _Setup) -> Generator[TrainEvent, None, TrainResult]:
    cfg, model = s.cfg, s.model
    model.to(s.device).train()
    for m in model.modules():  # how fast the running statistics follow the weights
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = cfg.bn_momentum
    if s.device.type in ("cuda", "cpu"):
        model.to(memory_format=torch.channels_last)
    opt = _optimizer(model, cfg, s.device)
    factor = _lr_factor(cfg.schedule)
    budget = cfg.time_budget_s
    sampler, val_batches = _samplers(s)
    s.val_batch = max((len(b[0]) for b in val_batches), default=1)
    gen = torch.Generator(s.device).manual_seed(cfg.seed + 1)
    history: list[dict[str, Any]] = []
    pending: list[tuple[int, torch.Tensor, float, int, int]] = []
    best = s.best
    if s.init is not None:
        _start_from_init(s)
    sparse = s.data.labels_mode == "sparse"  # dense and instance labels: nothing to fill
    if sparse and (cfg.self_training_s > 0 or cfg.teacher != "none"):
        s.pseudo = PseudoLabels(cfg.self_training_s, cfg.pseudo_slices, cfg.pseudo_confidence,
                                cfg.pseudo_portion, cfg.class_balance, cfg.teacher_weight)
        s.data = s.pseudo.apply(s.data)
    if sparse and cfg.teacher == "forest" and s.init is None:  # a starting model (init)
        # knows more than a forest of a few strokes: its targets would pull it down
        s.forest = ForestTeacher(cfg.teacher_slices, cfg.teacher_confidence, cfg.seed)

    def keep_if_best(val: tuple[float, float], step: int) -> bool:
        if not (val[1] > best["dice"] and math.isfinite(val[0])):
            return False
        state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        best.update(dice=val[1], step=step, state=state)
        return True

    if s.warm and val_batches:  # the starting weights compete for "best"
        start = _evaluate(s, val_batches)
        best["start_dice"] = start[1]
        keep_if_best(start, 0)
    good: dict[str, Any] = {"step": 0, "state": None}  # the last weights known to be finite
    _keep_if_finite(model, good, 0)
    t0 = t_flush = time.perf_counter()
    c0 = t0 if s.clock is None else s.clock()
    step, seen, stopped, timeout, stale, early = 0, 0, False, False, 0, False
    while step < cfg.iterations and not (stopped or timeout or early):
        stopped = s.stop is not None and bool(s.stop())
        if not stopped and s.inbox.waiting and _relabel(s):  # new strokes: sample from them
            if s.pseudo is not None:
                s.data = s.pseudo.apply(s.data)
            sampler, val_batches = _resampled(s, sampler)
            best.update(dice=-1.0, step=step, state=None)
            stale = 0
        if budget is not None or s.pseudo is not None:
            used = _run_time(s, c0)
        if not stopped and s.forest is not None and s.forest.due(s.pseudo.base, used):
            s.pseudo.taught = s.forest.targets(s.pseudo.base, used)  # its time counts
            s.forest.not_before_s = _spaced(s, c0, used)
            s.data = s.pseudo.apply(s.pseudo.base)
            sampler, _ = _resampled(s, sampler)
        if not stopped and s.pseudo is not None and step and s.pseudo.due(used):
            s.data = s.pseudo.update(model, s.device, used)  # the time it takes counts
            s.pseudo.not_before_s = _spaced(s, c0, used)
            sampler, _ = _resampled(s, sampler)
            model.train()
        if budget is not None:
            timeout = step > 0 and used >= budget
        if not (stopped or timeout):
            step += 1
            done = (step - 1) / cfg.iterations
            lr = cfg.lr * factor(done if budget is None else max(done, used / budget))
            for group in opt.param_groups:
                group["lr"] = lr
            loss = _shrinking(s, "batch", "training",
                              lambda n, sampler=sampler: _step(s, sampler, gen, opt, n))
            seen += s.batch
            pending.append((step, loss, lr, s.batch, seen))
        last = step == cfg.iterations or timeout
        val = None
        if val_batches and not stopped and (step % cfg.val_every == 0 or last):
            val = _evaluate(s, val_batches)
            stale = 0 if keep_if_best(val, step) else stale + 1
            early = bool(cfg.patience) and stale >= cfg.patience
        due = len(pending) >= cfg.log_every or val or last or stopped or early
        if pending and (due or time.perf_counter() - t_flush > _FLUSH_S):
            now = time.perf_counter()
            elapsed = now - t0 if s.clock is None else s.clock() - c0
            events = _events(s, pending, val, now - t_flush, elapsed)
            pending = []
            for ev in events:
                if not math.isfinite(ev.loss):
                    raise _diverged(s, history, best, good, ev, seen, time.perf_counter() - t0)
                history.append(asdict(ev))
                yield ev
            _keep_if_finite(model, good, step)
            t_flush = time.perf_counter()
    result = _result(s, history, best, step, seen, time.perf_counter() - t0, stopped, timeout)
    result.metadata["early_stopped"] = early
    result.metadata["pseudo_rounds"] = 0 if s.pseudo is None else s.pseudo.rounds
    if s.forest is not None:
        result.metadata.update(teacher_fits=s.forest.fits,
                               teacher_s=round(s.forest.seconds, 2),
                               teacher_pixels=int(sum((t >= 0).sum()
                                                      for t in s.pseudo.taught.values())))
    if "start_dice" in best:
        result.metadata["start_val_dice"] = best["start_dice"]
    return result


def _start_from_init(s: _Setup) -> None:
    """Order the init model's classes as the labels', and make the teacher (consistency).

    With a new output head (another class count) there is nothing to order or to keep.
    """
    from .finetune import match_classes

    if s.init["init_fresh"]:
        return
    probe = PatchSampler(s.data, s.patch, s.device, seed=s.cfg.seed + 2)
    img, tgt, _ = probe.sample(min(16, 4 * s.cfg.batch_size))
    perm, agreement = match_classes(s.model, img, _crop(tgt, s.margin))
    s.init.update(init_class_order=perm, init_agreement=agreement)
    if s.cfg.consistency > 0:  # in train mode as the student: the same batch statistics,
        # so the term is 0 until the weights move (its own running statistics go unused)
        s.teacher = copy.deepcopy(s.model).train().requires_grad_(False)


def _keep_if_finite(model: torch.nn.Module, good: dict[str, Any], step: int) -> None:
    """Copy the weights into ``good`` (on their device) unless one of them is NaN or inf."""
    state = model.state_dict()
    floats = [t for t in state.values() if t.is_floating_point()]
    if floats and not bool(torch.stack([torch.isfinite(t).all() for t in floats]).all()):
        return
    if good["state"] is None:
        good["state"] = {k: v.detach().clone() for k, v in state.items()}
    else:
        for k, v in state.items():
            good["state"][k].copy_(v)
    good["step"] = step


def _diverged(s: _Setup, history: list, best: dict, good: dict, bad: TrainEvent, seen: int,
              seconds: float) -> TrainingDiverged:
    """The error for a non-finite loss at ``bad.step``, with the last good weights' result."""
    if good["state"] is not None:
        s.model.load_state_dict(good["state"])
    result = _result(s, history, best, good["step"], seen, seconds, True)
    result.metadata["diverged_step"] = bad.step
    kept = (f"kept the model of step {result.metadata['best_step']}" if good["step"]
            else "no step before it was good")
    return TrainingDiverged(
        f"training diverged: the loss became {bad.loss} at step {bad.step}; {kept}. "
        "Lower the learning rate, or check the image for extreme values", result)


def _result(s: _Setup, history: list, best: dict, steps: int, seen: int, seconds: float,
            stopped: bool, timeout: bool = False) -> TrainResult:
    model = s.model
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model = model.to("cpu", memory_format=torch.contiguous_format).eval()
    d = s.data
    meta = {
        "steps": steps, "seconds": seconds, "stopped": stopped, "out_of_time": timeout,
        "best_step": best["step"] if best["state"] is not None else steps,
        "best_val_dice": best["dice"] if best["state"] is not None else None,
        "images_per_s": seen / max(seconds, 1e-9), "batch_size_used": s.batch,
        "device": str(s.device), "amp": s.cfg.amp and s.device.type == "cuda",
        "torch": torch.__version__, "napari_unetseg": _version(), "labels_mode": d.labels_mode,
        "class_values": list(d.class_values), "patch": s.patch, "margin": s.margin,
        "train_slices": list(d.train_slices), "val_slices": list(d.val_slices),
        "labels_updates": s.inbox.version,
        "train_config": s.cfg.to_dict(), **(s.init or {}),
    }
    return TrainResult(model, s.model_config, d.normalization, d.class_values, history, meta)


def _version() -> str:
    from . import __version__

    return __version__
