"""Export a trained model as a bioimage.io model package (format 0.5).

The package is a ZIP archive written and validated by ``bioimageio.spec`` (the optional
``bioimageio`` extra: ``pip install "napari-unetseg[bioimageio]"``). It holds

* ``rdf.yaml``: the model description: input ``raw`` ``(batch, channel, y, x)`` whose height
  and width are multiples of ``2**depth``, preprocessed with ``scale_linear`` (the model's
  :class:`~napari_unetseg.normalize.Normalization`, exactly); output ``probabilities``
  ``(batch, channel, y, x)`` of the same size, one channel per class;
* TorchScript weights (a traced :class:`~napari_unetseg.models.packaged.ProbabilityNet`), which
  any bioimage.io consumer runs without this package, and ``pytorch_state_dict`` weights that
  name the architecture ``napari_unetseg.models.packaged.ProbabilityNet`` with the
  :class:`~napari_unetseg.config.ModelConfig` fields as keyword arguments;
* a test input (a crop of the given sample, or of the bundled EM sample) and the model's output
  for it, a cover image made from them, and a README naming the training data and its terms.

:func:`run_model_test` runs ``bioimageio.core``'s model test on a package (offline: every file is
inside the package).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .files import atomic_write, check_output
from .io import SavedModel

__all__ = ["DEFAULT_LICENSE", "export_bioimageio", "export_steps", "require_bioimageio",
           "run_model_test"]

#: License of the exported weights unless one is given (an SPDX id).
DEFAULT_LICENSE = "CC-BY-4.0"
_CITES = (
    ("Ronneberger, Fischer and Brox 2015: U-Net: Convolutional Networks for Biomedical Image "
     "Segmentation. MICCAI", "10.1007/978-3-319-24574-4_28"),
    ("Zhou et al. 2018: UNet++: A Nested U-Net Architecture for Medical Image Segmentation. "
     "DLMIA", "10.1007/978-3-030-00889-5_1"),
    ("Drozdzal et al. 2016: The Importance of Skip Connections in Biomedical Image "
     "Segmentation. DLMIA", "10.1007/978-3-319-46976-8_19"),
)
_ARCH_NAMES = {"unet": "U-Net", "unetpp": "UNet++", "resunet": "residual U-Net"}
_CITE_OF = {"unet": 0, "unetpp": 1, "resunet": 2}
_TEST_SIZE = 256  # side of the test tensors (cropped from the sample)


def require_bioimageio() -> None:
    """Raise ImportError with the install command unless bioimageio.spec/core import."""
    try:
        import bioimageio.core  # noqa: F401
        import bioimageio.spec  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "bioimage.io export/import needs the optional libraries bioimageio.spec and "
            "bioimageio.core: pip install \"napari-unetseg[bioimageio]\""
        ) from e
    from ._bioimageio_compat import patch

    patch()


def export_bioimageio(
    saved: SavedModel,
    path: str | os.PathLike,
    *,
    name: str | None = None,
    description: str | None = None,
    authors: Sequence[str] = ("napari-unetseg user",),
    license: str = DEFAULT_LICENSE,
    training_data: str = "",
    sample: np.ndarray | None = None,
    tags: Sequence[str] = (),
    overwrite: bool = False,
) -> Path:
    """Write ``saved`` as a bioimage.io model package (a ``.zip``) at ``path``.

    Parameters
    ----------
    saved : SavedModel
        A trained model (:func:`napari_unetseg.io.load_model`, or the Train widget's).
    path : path-like
        The ``.zip`` to write; an existing file is replaced only with ``overwrite``.
    name, description : str, optional
        Shown on bioimage.io; defaults name the architecture and the classes.
    authors : sequence of str
        Names of the people who trained the model.
    license : str
        SPDX identifier of the weights' license (default CC-BY-4.0). Choose one that the
        training data's terms allow.
    training_data : str
        What the model was trained on, where the data comes from and its terms of use; goes
        into the description and the README.
    sample : ndarray, optional
        A 2D image (or a stack: its middle slice) of the kind the model segments, in the raw
        intensities of the training images; a centre crop of it is the test input and the
        cover. Default: the bundled ISBI 2012 EM sample.
    tags : sequence of str
        Extra tags (``segmentation``, ``2d``, ``pytorch`` and the architecture are always set).

    Returns
    -------
    Path
        ``path``, written atomically and validated by ``bioimageio.spec``. The work is
        :func:`export_steps` drained.

    Raises
    ------
    ImportError
        bioimageio.spec / bioimageio.core are not installed (the message says how).
    ValueError
        The model cannot be packaged (a ``valid``-padded U-Net), or a bad argument.
    """
    from .devices import drain

    return drain(export_steps(
        saved, path, name=name, description=description, authors=authors, license=license,
        training_data=training_data, sample=sample, tags=tags, overwrite=overwrite))


def export_steps(
    saved: SavedModel,
    path: str | os.PathLike,
    *,
    name: str | None = None,
    description: str | None = None,
    authors: Sequence[str] = ("napari-unetseg user",),
    license: str = DEFAULT_LICENSE,
    training_data: str = "",
    sample: np.ndarray | None = None,
    tags: Sequence[str] = (),
    overwrite: bool = False,
) -> Generator[str, None, Path]:
    """:func:`export_bioimageio` as a generator: yields what it is doing (a few steps of
    seconds each) and returns the path; closing it leaves no file behind."""
    require_bioimageio()
    path = Path(path)
    if path.suffix.lower() != ".zip":
        raise ValueError(f"a bioimage.io package is a .zip file, got {path.name!r}")
    check_output(path, overwrite)
    if not isinstance(saved, SavedModel):
        raise TypeError(f"saved must be a SavedModel, got {type(saved).__name__}")
    from .models import SegmentationNet

    if not isinstance(saved.model, SegmentationNet):
        raise ValueError("this model came from a bioimage.io package (or is not a "
                         "napari-unetseg network); only models trained here can be exported")
    if saved.config.padding != "same":
        raise ValueError("only 'same'-padded networks can be exported to bioimage.io; this "
                         "U-Net has padding='valid'")
    if not [a.strip() for a in authors if a.strip()]:
        raise ValueError("give at least one author name")
    with tempfile.TemporaryDirectory(prefix="napari-unetseg-bmz-") as tmp:
        folder = Path(tmp)
        yield "tracing the network, writing the test tensors and the cover"
        descr = _describe(saved, folder, name=name, description=description,
                          authors=authors, license=license, training_data=training_data,
                          sample=sample, tags=tags)
        zipped = folder / "package.zip"
        from bioimageio.spec import save_bioimageio_package

        yield "packaging and validating with bioimageio.spec"
        save_bioimageio_package(descr, output_path=zipped)
        yield f"writing {path.name}"
        with atomic_write(path, overwrite=overwrite) as fh, open(zipped, "rb") as src:
            shutil.copyfileobj(src, fh)
    return path


def run_model_test(path: str | os.PathLike, *, weight_format: str | None = None) -> Any:
    """``bioimageio.core.test_model`` on a package: every weight format is run on the test
    input and compared with the test output. Returns the ``ValidationSummary``
    (``.status`` is ``"passed"`` or ``"failed"``; ``.format()`` explains)."""
    require_bioimageio()
    from bioimageio.core import test_model

    return test_model(str(path), weight_format=weight_format, devices=["cpu"])


# --------------------------------------------------------------------------- the description


def _test_input(saved: SavedModel, sample: np.ndarray | None) -> np.ndarray:
    """A ``(1, C, S, S)`` float32 crop of the sample, S a multiple of ``2**depth``."""
    if sample is None:
        from ._sample_data import load_sample

        sample = load_sample()[0]
    arr = np.asarray(sample)
    c = saved.config.in_channels
    if arr.ndim == 3 and c == 1:
        arr = arr[arr.shape[0] // 2]
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[0] != c:
        raise ValueError(f"sample must be a 2D image (or a stack) with {c} channel(s) first, "
                         f"got shape {np.shape(sample)}")
    step = 2**saved.config.depth
    side = min(_TEST_SIZE, *arr.shape[1:]) // step * step
    if side < step:
        raise ValueError(f"sample of shape {arr.shape} is smaller than the network's "
                         f"{step}-pixel grid")
    top, left = ((n - side) // 2 for n in arr.shape[1:])
    return np.ascontiguousarray(arr[None, :, top:top + side, left:left + side], np.float32)


def _networks(saved: SavedModel, x: np.ndarray, folder: Path) -> tuple[Any, np.ndarray]:
    """Save the state dict and the traced TorchScript; return the net and its test output."""
    import torch

    from .models.packaged import ProbabilityNet

    net = ProbabilityNet(**saved.config.to_dict()).eval()
    net.net.load_state_dict(saved.model.state_dict())
    offset, scale = saved.normalization.affine()
    inp = torch.from_numpy((x - offset) * scale)
    with torch.no_grad(), warnings.catch_warnings():
        # torch 2.13 deprecates TorchScript, but it is the format bioimage.io consumers run
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch.jit")
        out = net(inp).numpy()
        traced = torch.jit.trace(net, inp, check_trace=False)
        bigger = torch.zeros((1, x.shape[1], 2 * x.shape[2], x.shape[3]))
        if traced(bigger).shape[-2:] != bigger.shape[-2:]:  # the program must not fix a size
            raise RuntimeError("the traced network does not follow the input size")
        torch.jit.save(traced, str(folder / "weights_torchscript.pt"))
    torch.save(net.state_dict(), folder / "weights.pt")
    return net, out


def _cover(x: np.ndarray, out: np.ndarray, folder: Path) -> Path:
    """A 2:1 PNG: the test input beside the probability of the last class."""
    import imageio.v3 as iio

    raw = x[0, 0].astype(np.float64)
    lo, hi = np.percentile(raw, [1, 99.8])
    raw = np.clip((raw - lo) / max(hi - lo, 1e-12), 0, 1)
    prob = np.clip(out[0, -1].astype(np.float64), 0, 1)
    img = (np.concatenate([raw, prob], axis=1) * 255).round().astype(np.uint8)
    path = folder / "cover.png"
    iio.imwrite(path, img)
    return path


def _describe(saved: SavedModel, folder: Path, *, name: str | None, description: str | None,
              authors: Sequence[str], license: str, training_data: str,
              sample: np.ndarray | None, tags: Sequence[str]) -> Any:
    import torch
    from bioimageio.spec import ValidationContext
    from bioimageio.spec.model import v0_5 as m

    from . import __version__

    cfg = saved.config
    x = _test_input(saved, sample)
    _, out = _networks(saved, x, folder)
    np.save(folder / "test_input.npy", x)
    np.save(folder / "test_output.npy", out)
    cover = _cover(x, out, folder)
    classes = saved.class_names or [str(v) for v in saved.class_values] or [
        str(k) for k in range(cfg.classes)]
    arch = _ARCH_NAMES[cfg.arch]
    name = name or _safe_name(f"napari-unetseg {arch} {' '.join(classes)}")
    summary = (description or f"2D {arch} (depth {cfg.depth}, width {cfg.width}) segmenting "
               f"{cfg.classes} class(es) ({', '.join(classes)}), trained with napari-unetseg.")
    if training_data:
        summary = f"{summary} Training data: {training_data}"
    (folder / "README.md").write_text(_readme(saved, name, summary, training_data, license,
                                              classes))
    offset, scale = (float(v) for v in saved.normalization.affine())
    step = 2**cfg.depth
    space = [m.SpaceInputAxis(id=m.AxisId(a), size=m.ParameterizedSize(min=step, step=step))
             for a in ("y", "x")]
    in_names = ["raw"] if cfg.in_channels == 1 else [f"c{i}" for i in range(cfg.in_channels)]
    cite = [m.CiteEntry(text=_CITES[_CITE_OF[cfg.arch]][0],
                        doi=m.Doi(_CITES[_CITE_OF[cfg.arch]][1]))]
    state_arch = m.ArchitectureFromLibraryDescr(
        callable=m.Identifier("ProbabilityNet"), import_from="napari_unetseg.models.packaged",
        kwargs=cfg.to_dict())
    version = m.Version(torch.__version__.split("+")[0])
    with ValidationContext(root=folder, perform_io_checks=True):
        return m.ModelDescr(
            name=name,
            description=summary[:1024],
            authors=[m.Author(name=a.strip()) for a in authors if a.strip()],
            cite=cite,
            license=license,
            documentation=m.FileDescr(source=folder / "README.md"),
            covers=[m.FileDescr(source=cover)],
            tags=sorted({"segmentation", "2d", "pytorch", "napari-unetseg", cfg.arch, *tags}),
            inputs=[m.InputTensorDescr(
                id=m.TensorId("raw"), description="raw image intensities",
                axes=[m.BatchAxis(), m.ChannelAxis(channel_names=[m.Identifier(n)
                                                                  for n in in_names]), *space],
                test_tensor=m.FileDescr(source=folder / "test_input.npy"),
                data=m.IntervalOrRatioDataDescr(type="float32"),
                preprocessing=[m.ScaleLinearDescr(kwargs=m.ScaleLinearKwargs(
                    gain=scale, offset=-offset * scale))],
            )],
            outputs=[m.OutputTensorDescr(
                id=m.TensorId("probabilities"), description="class probabilities",
                axes=[m.BatchAxis(), m.ChannelAxis(channel_names=[
                    m.Identifier(_identifier(c, k)) for k, c in enumerate(classes)]),
                    *(m.SpaceOutputAxis(id=m.AxisId(a), size=m.SizeReference(
                        tensor_id=m.TensorId("raw"), axis_id=m.AxisId(a)))
                      for a in ("y", "x"))],
                test_tensor=m.FileDescr(source=folder / "test_output.npy"),
                data=m.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
            )],
            weights=m.WeightsDescr(
                torchscript=m.TorchscriptWeightsDescr(
                    source=folder / "weights_torchscript.pt", pytorch_version=version),
                pytorch_state_dict=m.PytorchStateDictWeightsDescr(
                    source=folder / "weights.pt", architecture=state_arch,
                    pytorch_version=version),
            ),
            config={"napari_unetseg": {
                "version": __version__, "model_config": cfg.to_dict(),
                "normalization": saved.normalization.to_dict(),
                "class_values": [int(v) for v in saved.class_values],
                "class_names": list(classes),
            }},
        )


def _safe_name(text: str) -> str:
    """A package name bioimage.io accepts: letters, digits, space and ``_+-()``, <= 128."""
    keep = "".join(ch if ch.isascii() and (ch.isalnum() or ch in " _+-()") else " "
                   for ch in text)
    return " ".join(keep.split())[:128]


def _identifier(text: str, k: int) -> str:
    """A channel name bioimage.io accepts (letters, digits, _ ; not starting with a digit)."""
    clean = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in text).strip("_")
    return clean if clean and not clean[0].isdigit() else f"class_{clean or k}"


def _readme(saved: SavedModel, name: str, summary: str, training_data: str, license: str,
            classes: list[str]) -> str:
    cfg = saved.config
    meta = saved.metadata or {}
    steps = meta.get("steps")
    lines = [
        f"# {name}", "", summary, "",
        "## Model", "",
        f"- {_ARCH_NAMES[cfg.arch]}, depth {cfg.depth}, width {cfg.width}, "
        f"{cfg.in_channels} input channel(s), {cfg.classes} class(es): {', '.join(classes)}.",
        f"- Input `raw` (batch, channel, y, x): raw intensities; height and width multiples "
        f"of {2**cfg.depth}. Preprocessing `scale_linear` maps the "
        f"{saved.normalization.p_low:g}th / {saved.normalization.p_high:g}th percentiles of "
        "the training images to 0 and 1.",
        "- Output `probabilities` (batch, channel, y, x): class probabilities "
        "(softmax; sigmoid for one class), the same size as the input.",
        "- Weights: TorchScript, and a PyTorch state dict for "
        "`napari_unetseg.models.packaged.ProbabilityNet(**kwargs)` "
        "(`pip install napari-unetseg`).",
        "", "## Training", "",
        f"- Data: {training_data or 'not recorded'}",
    ]
    if steps:
        lines.append(f"- {steps} optimisation steps"
                     + (f", best validation Dice {meta['best_val_dice']:.4f}"
                        if isinstance(meta.get("best_val_dice"), (int, float)) else "") + ".")
    lines += [
        "", "## Use", "",
        "In napari with napari-unetseg: *Segment* > *Load model…* and pick this .zip; or "
        "`napari-unetseg predict package.zip image.tif -o labels.tif`. Any bioimage.io "
        "consumer (bioimageio.core, deepImageJ, ilastik) runs the TorchScript weights.",
        "", "## License", "",
        f"Weights: {license}. The training data's own terms apply to any use of this model.",
        "",
    ]
    return "\n".join(lines)
