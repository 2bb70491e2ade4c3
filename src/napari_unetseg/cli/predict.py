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
    check_output,
    interrupted,
    parse_slices,
    read_image,
    refuse_rgb,
)


def run_prediction(saved, image: np.ndarray, cfg, show=None, channel_axis: int | None = None):
    """Segment ``image`` with a loaded model; returns the inference result."""
    from ..inference import segment

    gen = segment(saved.model, image, normalization=saved.normalization, config=cfg,
                  channel_axis=channel_axis)
    return drain(gen, show or (lambda ev: None))


def _inference_config(args: argparse.Namespace, saved: Any) -> Any:
    """The InferenceConfig of ``predict``'s options (the level only for a UNet++)."""
    from ..inference import InferenceConfig

    level = args.level
    if level not in (None, "accurate"):
        if not level.isdigit():
            raise CliError(f"--level must be 'accurate' or 1..depth, got {level!r}")
        level = int(level)
    level = None if saved.config.arch != "unetpp" else (level or "accurate")
    tiling = {}
    for name, kind in (("tile", int), ("halo", int), ("overlap", float)):
        value = getattr(args, name)
        try:
            tiling[name] = value if value == "auto" else kind(value)
        except ValueError:
            raise CliError(f"--{name} must be 'auto' or a number, got {value!r}") from None
    return InferenceConfig(device=args.device, tta=args.tta, level=level, **tiling)


def run(args: argparse.Namespace) -> int:
    from ..io import load_model, write_tif

    if args.scheduler or str(args.output).rstrip("/\\").endswith(".zarr"):
        return _predict_zarr(args)
    out = Path(args.output)
    check_output(out, args.overwrite, (args.model, args.image))
    saved = load_model(args.model)
    image = read_image(args.image)
    refuse_rgb(image, args.channel_axis)
    sl = parse_slices(args.slices)
    if sl is not None:
        if image.ndim < 3:
            raise CliError("--slices needs a stack (Z, Y, X) image")
        image = image[sl]
    cfg = _inference_config(args, saved)
    bar = Progress("predict")
    res = run_prediction(saved, image, cfg,
                         lambda ev: bar.update(ev.done, ev.total, f"slice {ev.slice_index}"),
                         channel_axis=args.channel_axis)
    bar.close()
    if args.output_kind == "labels":
        from ..postprocess import class_lut

        data = class_lut(saved.class_values, saved.config.classes)[np.asarray(res.labels)]
    elif args.output_kind == "instances":
        data = _instances(res.probabilities, saved, args)
    else:
        data = np.asarray(res.probabilities, dtype=np.float32)
        if args.class_index is not None:
            k = args.class_index
            if not 0 <= k < saved.config.classes:
                raise CliError(f"--class must be in 0..{saved.config.classes - 1}, got {k}")
            data = data[..., k, :, :]
    write_tif(out, data, overwrite=args.overwrite)
    print(json.dumps({"output": str(out), "shape": list(data.shape), "dtype": str(data.dtype),
                      "seconds": round(float(res.seconds), 3)}))
    return 0


def _predict_zarr(args: argparse.Namespace) -> int:
    """predict -o OUT.zarr: blockwise into zarr, resumable, on a dask scheduler if given."""
    from .. import blockwise
    from ..io import load_model

    if not str(args.output).rstrip("/\\").endswith(".zarr"):
        raise CliError(f"--scheduler needs a zarr output (-o OUT.zarr), got {args.output}")
    if args.slices or args.output_kind == "instances" or args.channel_axis is not None:
        raise CliError("--slices, --channel-axis and --output instances need a TIFF output")
    try:
        block = tuple(int(b) for b in args.block.split(",")) if args.block else None
    except ValueError:
        raise CliError(f"--block must look like 2,2048,2048, got {args.block!r}") from None
    saved = load_model(args.model)
    cfg = _inference_config(args, saved)
    src = args.image if args.image.rstrip("/\\").endswith(".zarr") else read_image(args.image)
    if isinstance(src, np.ndarray) and src.ndim == 2:
        src = src[None]
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
    """Objects of the foreground class (``--class``, default the last) per slice."""
    from ..postprocess import instances_from_probs

    k = saved.config.classes - 1 if args.class_index is None else args.class_index
    if not 0 <= k < saved.config.classes:
        raise CliError(f"--class must be in 0..{saved.config.classes - 1}, got {k}")
    probs = np.asarray(probabilities, dtype=np.float32)
    fg = probs[:, k] if probs.ndim == 4 else probs[k]
    if fg.ndim == 2:
        return instances_from_probs(fg, split_touching=args.split_touching)
    return np.stack([instances_from_probs(p, split_touching=args.split_touching) for p in fg])


def add_parser(sub: Any) -> None:
    r = sub.add_parser("predict", help="segment an image or stack (TIFF) with a model file")
    r.add_argument("model")
    r.add_argument("image")
    r.add_argument("-o", dest="output", required=True, metavar="OUT.tif",
                   help="TIFF file to write, or OUT.zarr: blockwise, resumable (see --block)")
    r.add_argument("--level", default=None, help="UNet++: accurate or 1..depth")
    r.add_argument("--tile", default="auto",
                   help="largest input tile in pixels; auto: 1024 on CUDA, 384 on a CPU")
    r.add_argument("--halo", default="auto",
                   help="context pixels per tile side, computed and discarded (U-Net's "
                        "overlap-tile); auto: 3*2**depth (48 at depth 4) on CUDA, 0 on a CPU")
    r.add_argument("--overlap", default="auto",
                   help="blended overlap of output tiles, a fraction; auto: 0 with a halo, "
                        "else 0.125")
    r.add_argument("--slices")
    r.add_argument("--output", dest="output_kind",
                   choices=["probabilities", "labels", "instances"], default="labels",
                   help="labels: argmax in the training label values; probabilities: float32 "
                        "(Z, C, Y, X), or (Z, Y, X) with --class K; instances: connected "
                        "objects of the foreground class (--class K, default the last)")
    r.add_argument("--split-touching", action="store_true",
                   help="instances: split touching objects by a distance-transform watershed")
    r.add_argument("--device", default="auto")
    r.add_argument("--tta", action="store_true", help="flip test-time augmentation")
    r.add_argument("--block", help="OUT.zarr: block (and chunk) shape Z,Y,X; default 2,2048,2048")
    r.add_argument("--scheduler", metavar="ADDRESS",
                   help="OUT.zarr: run the blocks on this dask scheduler (tcp://host:8786)")
    r.add_argument("--class", dest="class_index", type=int, default=None)
    r.add_argument("--channel-axis", type=int, default=None,
                   help="axis of the image holding channels, for a multichannel model")
    r.add_argument("--overwrite", action="store_true")
    r.set_defaults(func=run)
