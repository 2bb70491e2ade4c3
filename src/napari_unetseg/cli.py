"""Command line: ``napari-unetseg train | predict | evaluate | demo``.

Works on TIFF files through tifffile. Every command reports progress on stderr, and any input
error ends with a one-line message and a non-zero exit code instead of a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .devices import drain

log = logging.getLogger("napari_unetseg")


class CliError(Exception):
    """An error to report to the user as one line."""


# ---------------------------------------------------------------------------- helpers


def parse_slices(text: str | None) -> slice | None:
    """``"0:25"`` -> slice(0, 25); ``"7"`` -> slice(7, 8); None -> None."""
    if text is None:
        return None
    try:
        if ":" in text:
            parts = [int(p) if p.strip() else None for p in text.split(":")]
            if len(parts) > 3:
                raise ValueError
            return slice(*parts)
        i = int(text)
        return slice(i, i + 1)
    except ValueError:
        raise CliError(f"--slices must look like 0:25 or 7, got {text!r}") from None


class Progress:
    """A one-line progress bar on stderr (redrawn at most a few times a second)."""

    def __init__(self, label: str, stream=None, min_interval: float = 0.25) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.min_interval = min_interval
        self._last = 0.0
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, done: int, total: int, extra: str = "", force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.min_interval and done < total:
            return
        self._last = now
        frac = done / total if total else 1.0
        bar = "#" * int(frac * 24)
        line = f"{self.label} [{bar:<24}] {done}/{total} {extra}"
        if self._tty:
            self.stream.write("\r" + line[:120].ljust(120))
        elif force or done >= total or now - getattr(self, "_last_nl", 0.0) > 5.0:
            self._last_nl = now
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()


def _read(path: str) -> np.ndarray:
    from .io import read_tif

    return read_tif(path)


def _check_output(out: Path, overwrite: bool) -> None:
    """Refuse an output path that cannot be written before any long work starts."""
    from .io import _check_writable_target

    if out.exists() and not out.is_dir() and not overwrite:
        raise CliError(f"{out} already exists; pass --overwrite to replace it")
    _check_writable_target(out, overwrite=True)  # a folder, a missing folder, no permission


def _refuse_rgb(image: np.ndarray, channel_axis: int | None) -> None:
    """A (Y, X, 3|4) TIFF is RGB(A), not a stack of 3-pixel-wide slices."""
    if channel_axis is None and image.ndim == 3 and image.shape[-1] in (3, 4) and min(
            image.shape[:2]) > image.shape[-1]:
        raise CliError(f"image of shape {image.shape} looks like RGB(A) (Y, X, channels); "
                       "convert it to one channel, or pass --channel-axis -1 for a model "
                       "trained on that many channels")


# ---------------------------------------------------------------------------- train


def cmd_train(args: argparse.Namespace) -> int:
    from . import ModelConfig, presets
    from .io import save_model
    from .training import TrainConfig, train

    out = Path(args.output)
    _check_output(out, args.overwrite)
    image, labels = _read(args.image), _read(args.labels)
    sl = parse_slices(args.slices)
    if sl is not None:
        if image.ndim < 3 or labels.ndim < 3:
            raise CliError("--slices needs a stack (Z, Y, X) image and labels")
        image, labels = image[sl], labels[sl]
    resume = None
    if args.resume:
        from .io import load_model

        resume = load_model(args.resume)
        model_cfg = resume.config
    model_kw, train_kw = presets.split(presets.preset(args.preset))
    for key in ("depth", "width"):
        if getattr(args, key) is not None:
            model_kw[key] = getattr(args, key)
    for key in ("iterations", "batch_size", "patch_size"):
        if getattr(args, key) is not None:
            train_kw[key] = getattr(args, key)
    if not args.resume:
        model_cfg = ModelConfig(
            arch=args.arch, classes=args.classes or _count_classes(labels, args.labels_mode),
            in_channels=1 if args.channel_axis is None else image.shape[args.channel_axis],
            **model_kw,
        )
    train_cfg = TrainConfig(
        lr=args.lr, loss=args.loss, device=args.device, seed=args.seed, **train_kw,
        **({"optimizer": args.optimizer} if args.optimizer else {}),
    )
    bar = Progress("train")
    gen = train(image, labels, model_cfg, train_cfg, labels_mode=args.labels_mode,
                channel_axis=args.channel_axis, resume=resume)

    def show(ev) -> None:
        extra = f"loss {ev.loss:.4f}"
        if ev.val_dice is not None:
            extra += f" val-dice {ev.val_dice:.4f}"
        if ev.eta_s is not None:
            extra += f" eta {ev.eta_s:.0f}s"
        bar.update(ev.step, train_cfg.iterations, extra)

    try:
        result = drain(gen, show)
    except KeyboardInterrupt:
        bar.close()
        gen.close()
        print("interrupted: no model written", file=sys.stderr)
        return 130
    bar.close()
    save_model(out, result.model, normalization=result.normalization,
               class_values=result.class_values, metadata=result.metadata,
               overwrite=args.overwrite)
    print(json.dumps({"model": str(out), **_summary(result.metadata)}))
    return 0


def _count_classes(labels: np.ndarray, mode: str) -> int:
    """Classes the labels define: sparse 1..K -> K; dense -> distinct values; instances -> 2."""
    if mode == "instances":
        return 2
    if mode == "sparse":
        return max(2, int(np.max(labels)))
    return max(2, len(np.unique(labels)))


def _summary(meta: dict[str, Any]) -> dict[str, Any]:
    keys = ("steps", "seconds", "best_step", "best_val_dice", "device")
    return {k: meta[k] for k in keys if k in meta}


# ---------------------------------------------------------------------------- predict


def run_prediction(saved, image: np.ndarray, cfg, show=None, channel_axis: int | None = None):
    """Segment ``image`` with a loaded model; returns the inference result."""
    from .inference import segment

    gen = segment(saved.model, image, normalization=saved.normalization, config=cfg,
                  channel_axis=channel_axis)
    return drain(gen, show or (lambda ev: None))


def _inference_config(args: argparse.Namespace, saved: Any) -> Any:
    """The InferenceConfig of ``predict``'s options (the level only for a UNet++)."""
    from .inference import InferenceConfig

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


def cmd_predict(args: argparse.Namespace) -> int:
    from .io import load_model, write_tif

    if args.scheduler or str(args.output).rstrip("/\\").endswith(".zarr"):
        return _predict_zarr(args)
    out = Path(args.output)
    _check_output(out, args.overwrite)
    saved = load_model(args.model)
    image = _read(args.image)
    _refuse_rgb(image, args.channel_axis)
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
        from .postprocess import class_lut

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
    from . import blockwise
    from .io import load_model

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
    src = args.image if args.image.rstrip("/\\").endswith(".zarr") else _read(args.image)
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

            with Client(args.scheduler) as client:
                res = drain(blockwise.segment_volume_distributed(
                    client, args.model, src, args.output, **kw), show)
        else:
            res = drain(blockwise.segment_volume(saved, src, args.output, **kw), show)
    except KeyboardInterrupt:
        bar.close()
        print(f"interrupted after {done[0]} new block(s); run the same command again to "
              "resume", file=sys.stderr)
        return 130
    bar.close()
    print(json.dumps({"output": res.store, "shape": list(res.shape), "block": list(res.block),
                      "blocks": res.blocks, "computed": res.computed, "skipped": res.skipped,
                      "seconds": round(res.seconds, 3)}))
    return 0


def _instances(probabilities: Any, saved, args: argparse.Namespace) -> np.ndarray:
    """Objects of the foreground class (``--class``, default the last) per slice."""
    from .postprocess import instances_from_probs

    k = saved.config.classes - 1 if args.class_index is None else args.class_index
    if not 0 <= k < saved.config.classes:
        raise CliError(f"--class must be in 0..{saved.config.classes - 1}, got {k}")
    probs = np.asarray(probabilities, dtype=np.float32)
    fg = probs[:, k] if probs.ndim == 4 else probs[k]
    if fg.ndim == 2:
        return instances_from_probs(fg, split_touching=args.split_touching)
    return np.stack([instances_from_probs(p, split_touching=args.split_touching) for p in fg])


# ---------------------------------------------------------------------------- evaluate


def evaluate_arrays(pred: np.ndarray, gt: np.ndarray, boundary_value: int = 0) -> dict:
    """Scores of a prediction against ground truth (both (Z,)Y,X).

    ``pred`` is either labels in the ground truth's values, or a float map of the boundary
    (membrane) probability in [0, 1]; ``boundary_value`` is the ground-truth value of boundary
    pixels (ISBI 2012: 0 = membrane). For a probability map, pixel error, Dice and IoU are taken
    at 0.5 (the argmax of two classes) and V_Rand / V_Info are the best over the threshold sweep
    (as the ISBI 2012 challenge reported them).
    """
    from . import metrics

    if pred.shape != gt.shape:
        raise CliError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
    gt_boundary = gt == boundary_value
    if np.issubdtype(pred.dtype, np.floating):
        scores = metrics.isbi_scores(pred, gt_boundary)
        pred_boundary = pred >= 0.5  # pixel scores at the argmax; V_* take the best threshold
    else:
        pred_boundary = pred == boundary_value
        scores = metrics.isbi_scores(pred_boundary.astype(np.float32), gt_boundary,
                                     thresholds=[0.5])
    pred_cls, gt_cls = (~pred_boundary).astype(np.uint8), (~gt_boundary).astype(np.uint8)
    out = {"pixel_error": float(metrics.pixel_error(pred_cls, gt_cls))}
    out["dice"] = {str(k): float(v) for k, v in metrics.dice(pred_cls, gt_cls).items()}
    out["iou"] = {str(k): float(v) for k, v in metrics.iou(pred_cls, gt_cls).items()}
    out.update({k: (float(v) if isinstance(v, (float, np.floating)) else v)
                for k, v in scores.items() if np.isscalar(v)})
    return out


def cmd_evaluate(args: argparse.Namespace) -> int:
    pred, gt = _read(args.prediction), _read(args.ground_truth)
    sl = parse_slices(args.slices)
    if sl is not None:
        gt = gt[sl]
        if pred.shape[0] != gt.shape[0]:
            pred = pred[sl]
    print(json.dumps(evaluate_arrays(pred, gt, args.boundary_value), indent=1))
    return 0


# ---------------------------------------------------------------------------- demo


def cmd_demo(args: argparse.Namespace) -> int:
    from . import ModelConfig
    from ._sample_data import load_sample
    from .inference import InferenceConfig
    from .io import SavedModel
    from .training import TrainConfig, train

    image, labels = load_sample()
    n_train = image.shape[0] - 2
    print(f"sample: ISBI 2012 EM, {image.shape[0]} slices of {image.shape[1]}x{image.shape[2]}; "
          f"training on {n_train}, scoring on the last 2", file=sys.stderr)
    model_cfg = ModelConfig(arch=args.arch, depth=args.depth, width=args.width)
    train_cfg = TrainConfig(iterations=args.iterations, batch_size=4, patch_size=args.patch_size,
                            device=args.device, seed=0, loss="ce")
    bar = Progress("train")
    result = drain(
        train(image[:n_train], labels[:n_train], model_cfg, train_cfg, labels_mode="dense"),
        lambda ev: bar.update(ev.step, train_cfg.iterations, f"loss {ev.loss:.4f}"),
    )
    bar.close()
    saved = SavedModel(result.model, result.model_config, result.normalization,
                       list(result.class_values))
    bar = Progress("segment")
    res = run_prediction(saved, image[n_train:], InferenceConfig(device=args.device),
                         lambda ev: bar.update(ev.done, ev.total))
    bar.close()
    probs = np.asarray(res.probabilities, dtype=np.float32)
    boundary_class = saved.class_values.index(0) if 0 in saved.class_values else 0
    scores = evaluate_arrays(probs[:, boundary_class], labels[n_train:], boundary_value=0)
    scores["train_seconds"] = round(float(result.metadata.get("seconds", 0.0)), 1)
    scores["segment_seconds"] = round(float(res.seconds), 2)
    print(json.dumps(scores, indent=1))
    return 0


# ---------------------------------------------------------------------------- gui


def cmd_gui(args: argparse.Namespace) -> int:
    try:
        from ._widgets.launch import main as launch_napari
    except ImportError as e:
        raise CliError(f"napari is not installed ({e}); pip install 'napari[all]'") from e
    widgets = [w.strip() for w in args.widgets.split(",") if w.strip()]
    launch_napari(sample=not args.no_sample, widgets=widgets)
    return 0


# ---------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    from . import presets

    p = argparse.ArgumentParser(
        prog="napari-unetseg",
        description="Train and apply U-Net / UNet++ / residual U-Net segmentation models.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model on an image and a label image (TIFF)")
    t.add_argument("image")
    t.add_argument("labels")
    t.add_argument("-o", "--output", required=True, help="model file to write (.unetseg)")
    t.add_argument("--arch", default="unet", choices=["unet", "unetpp", "resunet"])
    t.add_argument("--labels-mode", default="dense", choices=["sparse", "dense", "instances"])
    t.add_argument("--slices", help="slices of the stack to train on, e.g. 0:25")
    t.add_argument("--preset", default="fast", choices=["fast", "paper"],
                   help="fast: small network for a CPU (default); paper: width 64, for a GPU")
    t.add_argument("--iterations", type=int, default=None, help="default: from the preset")
    t.add_argument("--depth", type=int, default=None)
    t.add_argument("--width", type=int, default=None)
    t.add_argument("--classes", type=int, default=None)
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--patch-size", type=int, default=None)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--loss", default="ce", choices=["ce", "wce", "dice", "bce_dice"])
    t.add_argument("--optimizer", choices=["adam", "sgd"])
    t.add_argument("--device", default="auto")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--channel-axis", type=int, default=None)
    t.add_argument("--resume", help="model file to continue training from")
    t.add_argument("--overwrite", action="store_true")
    t.set_defaults(func=cmd_train)

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
    r.set_defaults(func=cmd_predict)

    e = sub.add_parser("evaluate", help="score a prediction against ground truth (JSON)")
    e.add_argument("prediction")
    e.add_argument("ground_truth")
    e.add_argument("--slices")
    e.add_argument("--boundary-value", type=int, default=0,
                   help="ground-truth value of boundary/membrane pixels (ISBI: 0)")
    e.set_defaults(func=cmd_evaluate)

    d = sub.add_parser("demo", help="train briefly on the bundled EM sample and score it")
    fast = presets.preset("fast")
    d.add_argument("--iterations", type=int, default=300)
    d.add_argument("--arch", default="unet", choices=["unet", "unetpp", "resunet"])
    d.add_argument("--depth", type=int, default=fast["depth"])
    d.add_argument("--width", type=int, default=fast["width"])
    d.add_argument("--patch-size", type=int, default=fast["patch_size"])
    d.add_argument("--device", default="auto")
    d.set_defaults(func=cmd_demo)

    g = sub.add_parser("gui", help="open napari with the EM sample and the widgets docked")
    g.add_argument("--no-sample", action="store_true", help="do not open the EM sample")
    g.add_argument("--widgets", default="Train,Segment",
                   help="comma-separated: Train, Segment, Weight map preview, UNet++ levels")
    g.set_defaults(func=cmd_gui)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        return int(args.func(args) or 0)
    except (CliError, ValueError, TypeError, OSError) as e:
        print(f"napari-unetseg {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:  # CUDA OOM is a RuntimeError; others are bugs
        text = str(e).lower()
        if not isinstance(e, MemoryError) and "out of memory" not in text and (
                "out of gpu memory" not in text):
            raise
        print(f"napari-unetseg {args.command}: error: out of memory ({_one_line(e)[:200]}); "
              "try a smaller --batch-size, --patch-size or --tile, or --device cpu",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"napari-unetseg {args.command}: interrupted", file=sys.stderr)
        return 130


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
