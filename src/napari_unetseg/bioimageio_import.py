"""Run a 2-D bioimage.io model package with this project's tiler.

:func:`load_bioimageio` reads a package (a ``.zip``, or an ``rdf.yaml`` / ``bioimageio.yaml`` with
its files beside it) with ``bioimageio.spec`` (format 0.4 packages are converted to 0.5) and
returns a :class:`~napari_unetseg.io.SavedModel` that :func:`napari_unetseg.inference.segment`,
the Segment widget and ``napari-unetseg predict`` run like a model file:

* ``model`` is a :class:`PackagedNet`: the package's TorchScript program (weights in other
  formats would need the package's own Python code, which is never run here), padded to the
  sizes the package accepts and followed by the output's declared postprocessing;
* ``normalization`` is a :class:`Preprocessing`: the input's declared preprocessing, applied
  to each whole slice before tiling (so statistics such as percentiles are those of the slice,
  not of a tile).

Supported operations: ``scale_linear``, ``scale_range``, ``zero_mean_unit_variance``,
``fixed_zero_mean_unit_variance``, ``clip``, ``sigmoid``, ``binarize``, ``ensure_dtype``
(inputs) and ``scale_linear``, ``fixed_zero_mean_unit_variance``, ``clip``, ``sigmoid``,
``softmax``, ``binarize``, ``ensure_dtype`` (outputs; statistics of a whole output are not
available to a tiler). Anything else is refused with a ValueError naming it. Only local files
are read: nothing is downloaded.
"""

from __future__ import annotations

import math
import os
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .bioimageio_export import require_bioimageio
from .config import ModelConfig
from .io import SavedModel

__all__ = ["PackagedNet", "Preprocessing", "is_bioimageio", "load_any", "load_bioimageio"]

_RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
_INPUT_OPS = ("scale_linear", "scale_range", "zero_mean_unit_variance",
              "fixed_zero_mean_unit_variance", "clip", "sigmoid", "binarize", "ensure_dtype")
_OUTPUT_OPS = ("scale_linear", "fixed_zero_mean_unit_variance", "clip", "sigmoid", "softmax",
               "binarize", "ensure_dtype")


def is_bioimageio(path: str | os.PathLike) -> bool:
    """Whether ``path`` looks like a bioimage.io package: a zip holding ``rdf.yaml`` or
    ``bioimageio.yaml``, or a file with one of those names (or ending in ``.yaml``)."""
    p = Path(path)
    if p.name.endswith(_RDF_NAMES) or p.suffix in (".yaml", ".yml"):
        return p.is_file()
    if not zipfile.is_zipfile(p):
        return False
    with zipfile.ZipFile(p) as zf:
        return any(n.split("/")[-1] in _RDF_NAMES for n in zf.namelist())


def load_any(path: str | os.PathLike, device: str = "cpu") -> SavedModel:
    """A model file (:func:`napari_unetseg.io.load_model`) or a bioimage.io package
    (:func:`load_bioimageio`), whichever ``path`` is."""
    from .io import load_model

    if Path(path).is_file() and is_bioimageio(path):
        return load_bioimageio(path, device)
    return load_model(path, device)


def load_bioimageio(path: str | os.PathLike, device: str = "cpu") -> SavedModel:
    """A :class:`~napari_unetseg.io.SavedModel` running the package at ``path``.

    Raises
    ------
    ImportError
        bioimageio.spec / bioimageio.core are not installed (the message says how).
    ValueError
        The package is invalid, not 2-D, has no TorchScript weights, or declares an operation
        this tiler cannot apply (the message names it).
    """
    require_bioimageio()
    from bioimageio.spec import InvalidDescr, load_model_description
    from bioimageio.spec.model import v0_5

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no bioimage.io package at {p} (expected a local .zip or "
                                "rdf.yaml)")
    try:
        descr = load_model_description(p, format_version="latest")
    except ValueError as e:
        raise ValueError(f"{p.name} is not a valid bioimage.io model: {_first_line(e)}") from e
    if isinstance(descr, InvalidDescr) or not isinstance(descr, v0_5.ModelDescr):
        raise ValueError(f"{p.name} is not a valid bioimage.io model (format 0.5)")
    ts = descr.weights.torchscript
    if ts is None:
        have = ", ".join(k for k, v in descr.weights if v is not None)
        raise ValueError(f"{p.name} has no TorchScript weights (it has: {have}); only "
                         "TorchScript is run, since other formats need the package's code")
    if "://" in str(ts.source):
        raise ValueError(f"the weights of {p.name} are remote ({ts.source}); download the "
                         "whole package (.zip) first")
    inp, out = _one(descr.inputs, "input"), _one(descr.outputs, "output")
    in_ch, y_in, x_in = _spatial_2d(inp, "input")
    classes, y_out, x_out = _spatial_2d(out, "output")
    for a_out, a_in in ((y_out, y_in), (x_out, x_in)):
        ref = getattr(a_out, "size", None)
        if not (isinstance(ref, v0_5.SizeReference) and ref.tensor_id == inp.id
                and ref.axis_id == a_in.id and ref.offset == 0
                and a_out.scale == a_in.scale):
            raise ValueError(f"the output of {p.name} must have the input's height and width "
                             f"(axis {a_out.id}: size {ref})")
    min_size, step = _sizes(y_in, x_in, p.name)
    with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; packages use it
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch.jit")
        program = torch.jit.load(ts.get_reader(), map_location=device).eval()
    for param in program.parameters():
        param.requires_grad_(False)
    cfg = ModelConfig(arch="unet", depth=min(8, max(1, int(math.log2(step)) if step > 1 else 1)),
                      width=1, in_channels=in_ch, classes=classes)
    net = PackagedNet(program, cfg, min_size, step,
                      _ops(out.postprocessing, _OUTPUT_OPS, "output"))
    pre = Preprocessing(_ops(inp.preprocessing, _INPUT_OPS, "input"))
    names = _channel_names(out, classes)
    ours = (descr.config.model_extra or {}).get("napari_unetseg") if descr.config else None
    values = list(range(classes)) if classes > 1 else [1]
    if isinstance(ours, dict) and len(ours.get("class_values", [])) == classes:
        values = [int(v) for v in ours["class_values"]]
    if isinstance(ours, dict) and isinstance(ours.get("model_config"), dict) and ours[
            "model_config"].get("features") == "multiscale":
        from .models.features import FilterBank

        net.reach = FilterBank().radius
    meta = {"bioimageio": {"name": descr.name, "path": str(p), "min_size": min_size,
                           "step": step, "format_version": descr.format_version}}
    return SavedModel(net, cfg, pre, values, names, meta)


class PackagedNet(nn.Module):
    """A package's TorchScript program as a network of this project.

    Inputs of any size are reflect-padded (edge-replicated where too short) to the next size
    the package accepts (``min_size + k * step``), run, and cropped back; the declared output
    postprocessing follows. ``config`` describes only the interface (channels, classes, the
    pooling grid ``2**depth`` used to size tiles); ``returns_probabilities`` tells the
    inference engine not to apply its own softmax / sigmoid.
    """

    returns_probabilities = True
    margin = 0
    reach = 0  # the exported network's filter-bank reach (set on import), added to the halo

    def __init__(self, program: Any, config: ModelConfig, min_size: int, step: int,
                 post: list[tuple[str, dict]]) -> None:
        super().__init__()
        self.program = program
        self.config = config
        self.min_size, self.step, self.post = int(min_size), int(step), post

    def valid_input_size(self, n: int) -> int:
        """Smallest size ``>= n`` the package accepts."""
        if n <= self.min_size:
            return self.min_size
        return self.min_size + -(-(n - self.min_size) // self.step) * self.step

    def forward(self, x: torch.Tensor, level: Any = None) -> torch.Tensor:
        if level is not None:
            raise ValueError(f"a bioimage.io package has one output; level must be None, "
                             f"got {level!r}")
        h, w = x.shape[-2:]
        ph, pw = self.valid_input_size(h) - h, self.valid_input_size(w) - w
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = nn.functional.pad(x, (0, pw, 0, ph), mode=mode)
        y = self.program(x.float())
        if isinstance(y, (tuple, list)):
            y = y[0]
        if y.ndim == 3:  # (batch, y, x): one class
            y = y[:, None]
        y = y[..., :h, :w].float()
        for name, kw in self.post:
            y = _apply_torch(name, kw, y)
        return y


class Preprocessing:
    """The input preprocessing of a package, applied to one ``(C, Y, X)`` (or ``(Y, X)``)
    slice at a time; returns float32. Statistics (percentiles, mean, std) are taken over the
    axes the package names, per channel unless ``channel`` is among them."""

    def __init__(self, ops: list[tuple[str, dict]]) -> None:
        self.ops = ops

    def __call__(self, array: Any) -> np.ndarray:
        x = np.asarray(array, dtype=np.float32)
        lead = x.ndim == 2
        if lead:
            x = x[None]
        for name, kw in self.ops:
            x = _apply_numpy(name, kw, x)
        return (x[0] if lead else x).astype(np.float32, copy=False)

    def __repr__(self) -> str:
        return f"Preprocessing({[n for n, _ in self.ops]})"


# ------------------------------------------------------------------------------ parsing


def _first_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300]


def _one(tensors: Sequence[Any], what: str) -> Any:
    if len(tensors) != 1:
        raise ValueError(f"the package has {len(tensors)} {what} tensors; napari-unetseg runs "
                         f"models with one {what}")
    return tensors[0]


def _spatial_2d(tensor: Any, what: str) -> tuple[int, Any, Any]:
    """(channels, y axis, x axis) of a (batch?, channel?, y, x) tensor; ValueError else."""
    kinds = [a.type for a in tensor.axes]
    space = [a for a in tensor.axes if a.type == "space"]
    if len(space) != 2 or any(k not in ("batch", "channel", "space") for k in kinds):
        raise ValueError(f"the {what} {tensor.id} has axes {[str(a.id) for a in tensor.axes]}; "
                         "napari-unetseg runs 2-D models: (batch, channel, y, x)")
    channel = next((a for a in tensor.axes if a.type == "channel"), None)
    c = 1 if channel is None else len(channel.channel_names)
    return c, space[0], space[1]


def _sizes(y: Any, x: Any, name: str) -> tuple[int, int]:
    """(min, step) of the input's spatial sizes, equal for y and x."""
    from bioimageio.spec.model import v0_5

    found = []
    for a in (y, x):
        if isinstance(a.size, v0_5.ParameterizedSize):
            found.append((a.size.min, a.size.step))
        elif isinstance(a.size, int):
            found.append((a.size, 0))
        else:
            raise ValueError(f"the input axis {a.id} of {name} has a size napari-unetseg "
                             f"cannot tile ({a.size})")
    (m1, s1), (m2, s2) = found
    if s1 == 0 or s2 == 0:
        raise ValueError(f"{name} takes only fixed-size inputs ({m1}x{m2}); napari-unetseg "
                         "tiles models that accept sizes min + k * step")
    return max(m1, m2), math.lcm(s1, s2)


def _ops(procs: Sequence[Any], allowed: tuple[str, ...], what: str) -> list[tuple[str, dict]]:
    out = []
    for proc in procs:
        name = str(proc.id)
        if name not in allowed:
            raise ValueError(f"the {what} processing {name!r} is not supported here; "
                             f"supported: {', '.join(allowed)}")
        kwargs = proc.kwargs.model_dump() if getattr(proc, "kwargs", None) is not None else {}
        if what == "output" and (
                (name == "clip" and (kwargs.get("min_percentile") is not None
                                     or kwargs.get("max_percentile") is not None))
                or (name == "softmax" and str(kwargs.get("axis", "channel")) != "channel")):
            raise ValueError(f"the output processing {name!r} with {kwargs} needs the whole "
                             "output or another axis; not supported here")
        if kwargs.get("reference_tensor"):
            raise ValueError(f"the {what} processing {name!r} refers to another tensor "
                             f"({kwargs['reference_tensor']}); not supported here")
        out.append((name, kwargs))
    return out


def _channel_names(tensor: Any, classes: int) -> list[str]:
    channel = next((a for a in tensor.axes if a.type == "channel"), None)
    if channel is None:
        return ["foreground"]
    return [str(n) for n in channel.channel_names][:classes]


# ----------------------------------------------------------------------------- operations


def _reduce_axes(kw: dict, ndim: int) -> tuple[int, ...]:
    """Axes of a (C, Y, X) slice to take statistics over: per channel unless 'channel' is
    named (no axes named: over everything)."""
    axes = kw.get("axes")
    if axes is None or "channel" in [str(a) for a in axes]:
        return tuple(range(ndim))
    return tuple(range(1, ndim))


def _along(kw: dict, key: str, n: int) -> Any:
    """A kwarg that may be a list along the channel axis, shaped to broadcast on (C, ...)."""
    v = kw.get(key)
    if isinstance(v, (list, tuple)):
        if kw.get("axis") not in (None, "channel"):
            raise ValueError(f"values along axis {kw.get('axis')!r} are not supported here")
        arr = np.asarray(v, np.float32)
        return arr.reshape((-1,) + (1,) * (n - 1))
    return v


def _apply_numpy(name: str, kw: dict, x: np.ndarray) -> np.ndarray:
    n, eps = x.ndim, float(kw.get("eps", 1e-6))
    if name == "scale_linear":
        return x * _along(kw, "gain", n) + _along(kw, "offset", n)
    if name == "fixed_zero_mean_unit_variance":
        return (x - _along(kw, "mean", n)) / (_along(kw, "std", n) + eps)
    if name == "zero_mean_unit_variance":
        ax = _reduce_axes(kw, n)
        return (x - x.mean(ax, keepdims=True)) / (x.std(ax, keepdims=True) + eps)
    if name == "scale_range":
        ax = _reduce_axes(kw, n)
        lo = np.percentile(x, kw.get("min_percentile", 0.0), axis=ax, keepdims=True)
        hi = np.percentile(x, kw.get("max_percentile", 100.0), axis=ax, keepdims=True)
        return (x - lo) / (hi - lo + eps)
    if name == "clip":
        ax = _reduce_axes(kw, n)
        lo, hi = kw.get("min"), kw.get("max")
        if kw.get("min_percentile") is not None:
            lo = np.percentile(x, kw["min_percentile"], axis=ax, keepdims=True)
        if kw.get("max_percentile") is not None:
            hi = np.percentile(x, kw["max_percentile"], axis=ax, keepdims=True)
        return np.clip(x, lo, hi)
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-x))
    if name == "binarize":
        return (x > _along(kw, "threshold", n)).astype(np.float32)
    return x  # ensure_dtype: float32 throughout


def _apply_torch(name: str, kw: dict, y: torch.Tensor) -> torch.Tensor:
    def t(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return torch.as_tensor(v, dtype=y.dtype, device=y.device).view(1, -1, 1, 1)
        return v

    eps = float(kw.get("eps", 1e-6))
    if name == "scale_linear":
        return y * t(kw.get("gain", 1.0)) + t(kw.get("offset", 0.0))
    if name == "fixed_zero_mean_unit_variance":
        return (y - t(kw["mean"])) / (t(kw["std"]) + eps)
    if name == "clip":
        return y.clamp(kw.get("min"), kw.get("max"))
    if name == "sigmoid":
        return torch.sigmoid(y)
    if name == "softmax":
        return torch.softmax(y, dim=1)
    if name == "binarize":
        return (y > t(kw["threshold"])).to(y.dtype)
    return y  # ensure_dtype
