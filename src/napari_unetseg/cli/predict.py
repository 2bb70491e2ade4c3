"""``napari-unetseg predict``: segment a TIFF (or zarr, blockwise) with a model file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..devices import drain
from ._common import (
    CliError,
    Progress,
    check_channel_axis,
    check_output,
    check_output_store,
    example,
    interrupted,
    read_image,
    refuse_rgb,
    z_slices,
)


def run_prediction(saved, image: np.ndarray, cfg, show=None, channel_axis: int | None = None):
    """Segment ``image`` with a loaded model; returns the inference result."""
    from ..inference import segment

    gen = segment(saved.model, image, normalization=saved.normalization, config=cfg,
                  channel_axis=channel_axis)
    return drain(gen, show or (lambda ev: None))


def _inference_config(args: argparse.Namespace, saved: Any) -> Any:
    """The InferenceConfig of ``predict``'s options, checked against the model."""
    from ..inference import InferenceConfig

    cfg = saved.config
    level = args.level
    if level is not None and cfg.arch != "unetpp":
        raise CliError(f"--level applies to UNet++ models; this model is a {cfg.arch}")
    if level not in (None, "accurate"):
        if not level.isdigit() or not 1 <= int(level) <= cfg.depth:
            raise CliError(f"--level must be 'accurate' or 1..{cfg.depth}, got {level!r}")
        level = int(level)
    if cfg.arch == "unetpp" and level is None:
        level = "accurate"
    tiling = {}
    for name, kind in (("tile", int), ("halo", int), ("overlap", float)):
        value = getattr(args, name)
        try:
            tiling[name] = value if value == "auto" else kind(value)
        except ValueError:
            raise CliError(f"--{name} must be 'auto' or a number, got {value!r}") from None
    return InferenceConfig(device=args.device, tta=args.tta, level=level, **tiling)


def _check_kind(args: argparse.Namespace, zarr: bool) -> None:
    """Options that only some output kinds use are refused with the others, not ignored."""
    kind = args.output_kind
    if zarr:
        for flag, given in (("--slices", args.slices), ("--channel-axis", args.channel_axis),
                            ("--class", args.class_index),
                            ("--output instances", kind == "instances"),
                            ("--split-touching", args.split_touching),
                            ("--boundary-class", args.boundary_class)):
            if given is not None and given is not False:
                raise CliError(f"{flag} applies to a TIFF output, not to {args.output}")
        return
    if args.block or args.scheduler:
        raise CliError(f"--{'block' if args.block else 'scheduler'} applies to a zarr output "
                       f"(-o OUT.zarr), not to {args.output}")
    if args.class_index is not None and kind == "labels":
        raise CliError("--class applies to --output probabilities or instances, not labels")
    if args.split_touching and kind != "instances":
        raise CliError(f"--split-touching applies to --output instances, not {kind}")
    if args.boundary_class is not None:
        if kind != "instances":
            raise CliError(f"--boundary-class applies to --output instances, not {kind}")
        if args.split_touching or args.class_index is not None:
            raise CliError("--boundary-class makes instances between boundaries; --class and "
                           "--split-touching are for objects of a class: give one or the other")
        _boundary_settings(args)  # bad settings are refused before the work


_SETTING_FLAGS = {"threshold": "--seed-threshold", "sigma": "--smooth", "h": "--seed-h",
                  "min_size": "--min-size"}


def _boundary_settings(args: argparse.Namespace) -> Any:
    """The :class:`BoundaryInstances` of the --seeds ... options (errors name the flags)."""
    from ..postprocess import BoundaryInstances

    try:
        return BoundaryInstances(seeds=args.seeds, threshold=args.seed_threshold,
                                 sigma=args.smooth, h=args.seed_h, min_size=args.min_size,
                                 stretch=args.stretch)
    except ValueError as e:
        text = str(e)
        for name, flag in _SETTING_FLAGS.items():
            if text.startswith(f"{name} must"):
                text = flag + text[len(name):]
        raise CliError(text) from None


def _check_channels(shape: tuple, axis: int | None, expected: int) -> None:
    have = 1 if axis is None else shape[axis]
    if have != expected:
        where = "" if axis is None else f" along --channel-axis {axis}"
        hint = "; pass --channel-axis" if axis is None else ""
        raise CliError(f"the image has {have} channel(s){where} but the model expects "
                       f"in_channels={expected}{hint}")


def _check_class(args: argparse.Namespace, saved: Any) -> None:
    for flag, k in (("--class", args.class_index), ("--boundary-class", args.boundary_class)):
        if k is not None and not 0 <= k < saved.config.classes:
            raise CliError(f"{flag} must be in 0..{saved.config.classes - 1}, got {k}")


def load_for(name: str) -> Any:
    """The model ``name``: a model file (.unetseg), a bioimage.io package (one-line error if
    its libraries are missing), or "bundled" for the bundled model when no file of that name
    exists."""
    from ..bioimageio_import import load_any
    from ..bundled import BUNDLED, load_bundled

    if name == BUNDLED and not Path(name).exists():
        return load_bundled()
    try:
        return load_any(name)
    except ImportError as e:
        raise CliError(str(e)) from None


def run(args: argparse.Namespace) -> int:
    from ..bundled import for_image
    from ..io import write_tif

    if args.scheduler or _is_zarr(args.output):
        return _predict_zarr(args)
    _check_kind(args, zarr=False)
    out = Path(args.output)
    check_output(out, args.overwrite, (args.model, args.image))
    saved = load_for(args.model)
    cfg = _inference_config(args, saved)
    _check_class(args, saved)
    image = read_image(args.image)
    check_channel_axis(image.shape, args.channel_axis)
    saved = for_image(saved, image)  # the bundled model: percentiles of this image
    refuse_rgb(image, args.channel_axis)
    _check_channels(image.shape, args.channel_axis, saved.config.in_channels)
    image = z_slices(image, args.slices, args.channel_axis, args.image)
    bar = Progress("predict")
    try:
        res = run_prediction(saved, image, cfg,
                             lambda ev: bar.update(ev.done, ev.total, f"slice {ev.slice_index}"),
                             channel_axis=args.channel_axis)
    except KeyboardInterrupt as e:
        bar.close()
        raise interrupted(e, "no output written") from None
    bar.close()
    if args.output_kind == "labels":
        from ..postprocess import class_lut

        data = class_lut(saved.class_values, saved.config.classes)[np.asarray(res.labels)]
    elif args.output_kind == "instances":
        data = _instances(res.probabilities, saved, args)
    else:
        data = np.asarray(res.probabilities, dtype=np.float32)
        if args.class_index is not None:
            data = data[..., args.class_index, :, :]
    try:
        write_tif(out, data, overwrite=args.overwrite)
    except KeyboardInterrupt as e:  # the temporary file is gone, an old file untouched
        raise interrupted(e, "no output written") from None
    print(json.dumps({"output": str(out), "shape": list(data.shape), "dtype": str(data.dtype),
                      "seconds": round(float(res.seconds), 3)}))
    return 0


def _is_zarr(path: str) -> bool:
    return str(path).rstrip("/\\").endswith(".zarr")


def _parse_block(text: str | None) -> tuple[int, int, int] | None:
    if not text:
        return None
    try:
        block = tuple(int(b) for b in text.split(","))
    except ValueError:
        block = ()
    if len(block) != 3 or min(block) < 1:
        raise CliError(f"--block must be three integers >= 1 (Z,Y,X), got {text!r}")
    return block


def _predict_zarr(args: argparse.Namespace) -> int:
    """predict -o OUT.zarr: blockwise into zarr, resumable, on a dask scheduler if given."""
    from .. import blockwise
    from ..bundled import for_image, per_image

    if not _is_zarr(args.output):
        raise CliError(f"--scheduler needs a zarr output (-o OUT.zarr), got {args.output}")
    _check_kind(args, zarr=True)
    block = _parse_block(args.block)
    check_output_store(args.output, args.image)
    saved = load_for(args.model)
    if args.scheduler and getattr(saved.model, "returns_probabilities", False):
        raise CliError("--scheduler runs model files (.unetseg); run a bioimage.io package "
                       "without --scheduler")
    if args.scheduler and per_image(saved):
        raise CliError(f"{args.model} fits its normalisation to each image, which the workers "
                       "of --scheduler do not do; use a model file trained on this data "
                       "(train --init bundled)")
    cfg = _inference_config(args, saved)
    src = args.image if _is_zarr(args.image) else read_image(args.image)
    if isinstance(src, np.ndarray) and src.ndim == 2:
        src = src[None]
    saved = for_image(saved, blockwise._open_input(src))
    kw = {"block": block, "config": cfg, "resume": not args.overwrite,
          "probabilities": args.output_kind == "probabilities"}
    bar, done = Progress("predict"), [0]

    def show(ev: Any) -> None:
        done[0] += ev.computed
        bar.update(ev.done, ev.total, ev.message)

    try:
        if args.scheduler:
            from distributed import Client

            from .. import cluster

            with Client(args.scheduler) as client:
                res = drain(cluster.segment_volume_distributed(
                    client, args.model, src, args.output, **kw), show)
        else:
            res = drain(blockwise.segment_volume(saved, src, args.output, **kw), show)
    except KeyboardInterrupt as e:
        bar.close()
        raise interrupted(e, f"{done[0]} new block(s) written; run the same command again "
                             "to resume") from None
    bar.close()
    print(json.dumps({"output": res.store, "shape": list(res.shape), "block": list(res.block),
                      "blocks": res.blocks, "computed": res.computed, "skipped": res.skipped,
                      "seconds": round(res.seconds, 3)}))
    return 0


def _instances(probabilities: Any, saved, args: argparse.Namespace) -> np.ndarray:
    """Objects of the foreground class (``--class``, default the last) per slice, or the
    regions between the boundaries of ``--boundary-class`` (a seeded watershed)."""
    from ..postprocess import instances_from_boundaries, instances_from_probs

    probs = np.asarray(probabilities, dtype=np.float32)
    if args.boundary_class is not None:
        b = args.boundary_class
        return instances_from_boundaries(probs[:, b] if probs.ndim == 4 else probs[b],
                                         _boundary_settings(args))
    k = saved.config.classes - 1 if args.class_index is None else args.class_index
    fg = probs[:, k] if probs.ndim == 4 else probs[k]
    if fg.ndim == 2:
        return instances_from_probs(fg, split_touching=args.split_touching)
    return np.stack([instances_from_probs(p, split_touching=args.split_touching) for p in fg])


def add_parser(sub: Any) -> None:
    r = sub.add_parser(
        "predict", help="segment an image or stack (TIFF) with a model file",
        epilog=example("napari-unetseg predict model.unetseg stack.tif -o labels.tif",
                       "napari-unetseg predict bundled stack.tif -o cells.tif --output "
                       "instances --boundary-class 0",
                       "napari-unetseg predict model.unetseg big.zarr -o out.zarr "
                       "--block 2,2048,2048"))
    r.add_argument("model", help="model file (.unetseg), bioimage.io package (.zip, rdf.yaml) "
                   "with TorchScript weights, or 'bundled' for the bundled EM membrane model")
    r.add_argument("image", help="image or stack (TIFF), or a zarr array (with -o OUT.zarr)")
    r.add_argument("-o", dest="output", required=True, metavar="OUT.tif",
                   help="TIFF file to write, or OUT.zarr: blockwise, resumable (see --block)")
    r.add_argument("--level", default=None,
                   help="UNet++: accurate (the full network) or a faster, pruned 1..depth; "
                        "default: accurate")
    r.add_argument("--tile", default="auto",
                   help="largest input tile in pixels; auto: 1024 on CUDA, 768 elsewhere")
    r.add_argument("--halo", default="auto",
                   help="context pixels per tile side, computed and discarded (U-Net's "
                        "overlap-tile); auto: 5*2**depth (80 at depth 4), seamless; 0 with "
                        "--overlap blends the tiles instead")
    r.add_argument("--overlap", default="auto",
                   help="blended overlap of output tiles, a fraction; auto: 0 with a halo, "
                        "else 0.125")
    r.add_argument("--slices", help="slices of the stack to segment, e.g. 25:30 or 7; "
                                    "default: all")
    r.add_argument("--output", dest="output_kind",
                   choices=["probabilities", "labels", "instances"], default="labels",
                   help="labels: argmax in the training label values; probabilities: float32 "
                        "(Z, C, Y, X), or (Z, Y, X) with --class K; instances: connected "
                        "objects of the foreground class (--class K; the last if not given), or "
                        "the regions between boundaries (--boundary-class K)")
    r.add_argument("--split-touching", action="store_true",
                   help="instances: split touching objects by a distance-transform watershed")
    from ..postprocess import SEEDINGS, BoundaryInstances

    d = BoundaryInstances()
    r.add_argument("--boundary-class", type=int, default=None, metavar="K",
                   help="instances: the regions between the boundaries of class K (EM "
                        "membranes: cells, neurites), a seeded watershed on p(K); "
                        "default: objects of --class instead")
    r.add_argument("--seeds", choices=SEEDINGS, default=d.seeds,
                   help="--boundary-class: seeds from the interior p(K) < --seed-threshold "
                        "(threshold), from its distance transform (distance), or from the "
                        "minima of p(K) (minima)")
    r.add_argument("--seed-threshold", type=float, default=d.threshold,
                   help="--boundary-class: interior below this boundary probability")
    r.add_argument("--smooth", type=float, default=d.sigma,
                   help="--boundary-class: Gaussian smoothing of p(K), sigma in pixels")
    r.add_argument("--seed-h", type=float, default=d.h,
                   help="--boundary-class: h-maxima height in pixels (distance) or h-minima "
                        "depth (minima)")
    r.add_argument("--min-size", type=int, default=d.min_size,
                   help="--boundary-class: merge objects smaller than this (pixels)")
    r.add_argument("--no-stretch", dest="stretch", action="store_false", default=d.stretch,
                   help="--boundary-class: seed on p(K) as it is, not stretched between its "
                        "1st and 99th percentiles (the default, for maps whose interior is "
                        "not near 0)")
    r.add_argument("--device", default="auto",
                   help="cpu, cuda, cuda:N or mps; auto: CUDA, then MPS, then the CPU")
    r.add_argument("--tta", action="store_true",
                   help="flip test-time augmentation (4 passes, averaged)")
    r.add_argument("--block", help="OUT.zarr: block (and chunk) shape Z,Y,X; default: 2,2048,2048")
    r.add_argument("--scheduler", metavar="ADDRESS",
                   help="OUT.zarr: run the blocks on this dask scheduler (tcp://host:8786); "
                        "default: none, this process")
    r.add_argument("--class", dest="class_index", type=int, default=None, metavar="K",
                   help="probabilities: only class K's map; instances: objects of class K; "
                        "default: every class's map, or the last class's objects")
    r.add_argument("--channel-axis", type=int, default=None,
                   help="axis of the image holding channels, for a multichannel model; "
                        "default: none (one channel)")
    r.add_argument("--overwrite", action="store_true",
                   help="replace an existing output (a zarr output restarts instead of "
                        "resuming)")
    r.set_defaults(func=run)
