"""Device choice and small helpers shared by training and inference."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported on first use, so `drain` costs no torch import
    import torch


def available_devices() -> list[str]:
    """Devices usable here, ``"cpu"`` first, e.g. ``["cpu", "cuda", "cuda:0"]``."""
    import torch

    devs = ["cpu"]
    if torch.cuda.is_available():
        devs += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devs.append("mps")
    return devs


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """Map a device spec to a ``torch.device``; ``"auto"`` prefers cuda, then mps, then cpu.

    Raises
    ------
    ValueError
        The device does not exist or is not available here (the message lists those that are).
    """
    import torch

    if isinstance(spec, torch.device):
        spec = str(spec)
    if not isinstance(spec, str):
        raise TypeError(f"device must be a string such as 'auto' or 'cpu', got {spec!r}")
    avail = available_devices()
    if spec == "auto":
        return torch.device("cuda" if "cuda" in avail else "mps" if "mps" in avail else "cpu")
    if spec not in avail:
        raise ValueError(
            f"device {spec!r} is not available here; available: {', '.join(avail)} or 'auto'"
        )
    return torch.device(spec)


def drain(gen: Generator[Any, Any, Any], on_event: Callable[[Any], None] | None = None) -> Any:
    """Run a generator to the end and return its return value.

    ``on_event`` is called with every yielded event (they are discarded when it is None).
    """
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if on_event is not None:
            on_event(event)
