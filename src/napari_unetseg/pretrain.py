"""Self-supervised pretraining on the user's own, unlabelled slices (masked reconstruction).

While the user paints, the network can already learn what the stack looks like: random square
blocks of a patch are hidden (replaced by noise) and the network, the same architecture as the
one that will segment with one output channel, learns to fill them in from their context
(masked image modelling, as in He et al. 2022 "Masked Autoencoders Are Scalable Vision
Learners", here with a U-Net and a loss on the hidden pixels only). Its weights, all but the
output head, are then the starting point of :func:`napari_unetseg.training.train`
(``resume=result.state_dict``).

:func:`pretrain` is a generator, like training: it yields a :class:`PretrainEvent` every few
steps and returns a :class:`PretrainResult`; ``stop`` is asked before every step, a time
budget ends it, and closing it is safe, so a GUI worker can run it with progress and Cancel
while the user paints.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from .config import ModelConfig
from .data import as_stack
from .devices import resolve_device
from .normalize import Normalization

__all__ = ["PretrainConfig", "PretrainEvent", "PretrainResult", "pretrain", "transfer"]


@dataclass(frozen=True)
class PretrainConfig:
    """How to pretrain; validated on creation.

    Parameters
    ----------
    time_budget_s : float
        Stop after this many seconds (the learning rate decays over it, cosine).
    iterations : int
        At most this many steps.
    batch_size, patch_size : int
        Patches per step and their side.
    lr : float
        Adam learning rate.
    block, mask_fraction : int, float
        Side of the hidden square blocks and the share of the patch they cover.
    device : str
    seed : int
    """

    time_budget_s: float = 120.0
    iterations: int = 100_000
    batch_size: int = 8
    patch_size: int = 96
    lr: float = 2e-3
    block: int = 8
    mask_fraction: float = 0.3
    device: str = "cpu"
    seed: int = 0

    def __post_init__(self) -> None:
        for name, lo, hi in (("time_budget_s", 1e-3, 1e7), ("lr", 1e-12, 10.0),
                             ("mask_fraction", 0.01, 0.95)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (
                    math.isfinite(v) and lo <= v <= hi):
                raise ValueError(f"{name} must be a number in [{lo}, {hi}], got {v!r}")
        for name, lo in (("iterations", 1), ("batch_size", 1), ("patch_size", 8),
                         ("block", 1), ("seed", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
        resolve_device(self.device)


@dataclass(frozen=True)
class PretrainEvent:
    """Progress: step, mean loss on the hidden pixels since the last event, seconds so far
    and the seconds left (of the budget)."""

    step: int
    loss: float
    elapsed_s: float
    eta_s: float


@dataclass
class PretrainResult:
    """``state_dict``: weights for a model of ``model_config`` (its head freshly initialised),
    to pass as ``resume`` to :func:`napari_unetseg.training.train`."""

    state_dict: dict[str, torch.Tensor]
    model_config: ModelConfig
    normalization: Normalization
    metadata: dict[str, Any] = field(default_factory=dict)


def transfer(source: torch.nn.Module, target: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``target``'s state dict with every tensor of ``source`` of the same name and shape,
    except the output heads (their names contain ``head``)."""
    src = source.state_dict()
    out = {}
    for k, v in target.state_dict().items():
        take = k in src and src[k].shape == v.shape and "head" not in k
        out[k] = (src[k] if take else v).detach().to("cpu", copy=True)
    return out


def _hide(img: torch.Tensor, cfg: PretrainConfig, gen: torch.Generator
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocks of ``img`` replaced by noise of the image's scale, and the hidden mask."""
    n, _, h, w = img.shape
    b = cfg.block
    grid = torch.rand(n, 1, -(-h // b), -(-w // b), generator=gen) < cfg.mask_fraction
    mask = grid.repeat_interleave(b, 2).repeat_interleave(b, 3)[..., :h, :w]
    noise = torch.randn(img.shape, generator=gen) * img.std() + img.mean()
    return torch.where(mask, noise, img), mask


def pretrain(
    image: Any,
    model_config: ModelConfig,
    config: PretrainConfig | None = None,
    *,
    channel_axis: int | None = None,
    stop: Callable[[], bool] | None = None,
    clock: Callable[[], float] | None = None,
) -> Generator[PretrainEvent, None, PretrainResult]:
    """Check the inputs, then return the pretraining generator.

    Parameters
    ----------
    image : array-like
        The stack (or a 2D image), optionally with channels: every slice is used.
    model_config : ModelConfig
        The network that will be trained on the strokes (its ``classes`` head is not
        pretrained).
    config : PretrainConfig or None
    channel_axis : int or None
    stop : callable or None
        Asked before every step; True ends pretraining with a result.
    clock : callable or None
        Seconds for the budget (None: ``time.perf_counter``).

    Raises
    ------
    ValueError, TypeError
        Bad image, configs or a stack smaller than ``2**depth``.
    """
    from .models import build_model

    cfg = PretrainConfig() if config is None else config
    if not isinstance(cfg, PretrainConfig):
        raise TypeError(f"config must be a PretrainConfig, got {type(cfg).__name__}")
    if not isinstance(model_config, ModelConfig):
        raise TypeError(f"model_config must be a ModelConfig, got {type(model_config).__name__}")
    stack = as_stack(image, channel_axis)
    if stack.shape[1] != model_config.in_channels:
        raise ValueError(f"image has {stack.shape[1]} channel(s) but model_config.in_channels "
                         f"is {model_config.in_channels}")
    norm = Normalization.fit(stack)
    data = torch.from_numpy(np.ascontiguousarray(norm(stack)))
    size = min(cfg.patch_size, *data.shape[-2:])
    size -= size % 2**model_config.depth
    if size < 2**model_config.depth:
        raise ValueError(f"slices of {tuple(data.shape[-2:])} are smaller than the network's "
                         f"minimum {2**model_config.depth}")
    recon_cfg = ModelConfig(**{**model_config.to_dict(), "classes": 1,
                               "deep_supervision": False})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = build_model(recon_cfg)
    return _run(net, model_config, data, norm, cfg, size, stop, clock or time.perf_counter)


def _run(net, model_config, data, norm, cfg, size, stop, clock
         ) -> Generator[PretrainEvent, None, PretrainResult]:
    from .models import build_model

    device = resolve_device(cfg.device)
    net.to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    s, _, h, w = data.shape
    t0 = clock()
    step, losses, t_event = 0, [], t0
    while step < cfg.iterations and not (stop is not None and stop()):
        used = clock() - t0
        if used >= cfg.time_budget_s:
            break
        for g in opt.param_groups:
            g["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, used / cfg.time_budget_s)))
        z = torch.randint(s, (cfg.batch_size,), generator=gen)
        y = torch.randint(h - size + 1, (cfg.batch_size,), generator=gen)
        x = torch.randint(w - size + 1, (cfg.batch_size,), generator=gen)
        img = torch.stack([data[a, :, b:b + size, c:c + size] for a, b, c in
                           zip(z.tolist(), y.tolist(), x.tolist(), strict=True)])
        if torch.rand((), generator=gen) < 0.5:
            img = img.flip(-1)
        seen, mask = _hide(img, cfg, gen)
        out = net(seen.to(device))
        err = (out - img.to(device)) ** 2
        loss = (err * mask.to(device)).sum() / mask.sum().clamp_min(1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        losses.append(float(loss.detach()))
        now = clock()
        if now - t_event >= 0.5 or step == cfg.iterations:
            yield PretrainEvent(step, float(np.mean(losses)), now - t0,
                                max(0.0, cfg.time_budget_s - (now - t0)))
            losses, t_event = [], now
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        target = build_model(model_config)
    net.to("cpu")
    meta = {"steps": step, "seconds": clock() - t0, "config": asdict(cfg),
            "method": "masked reconstruction"}
    return PretrainResult(transfer(net, target), model_config, norm, meta)
