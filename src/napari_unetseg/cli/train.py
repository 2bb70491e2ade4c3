"""``napari-unetseg train``: fit a model on an image and a label image."""

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
    example,
    interrupted,
    read_image,
    summary,
    z_slices,
)


def run(args: argparse.Namespace) -> int:
    from .. import ModelConfig, presets
    from ..training import TrainConfig, TrainingDiverged, train

    out = Path(args.output)
    check_output(out, args.overwrite, (args.image, args.labels, args.resume))
    settings = presets.preset(args.preset)
    model_kw, train_kw = presets.split(settings)
    for key in ("depth", "width", "block", "blocks_per_level", "dropout", "features"):
        if getattr(args, key) is not None:
            model_kw[key] = getattr(args, key)
    for key in ("iterations", "batch_size", "patch_size", "lr", "optimizer", "self_training_s",
                "teacher"):
        if getattr(args, key) is not None:
            train_kw[key] = getattr(args, key)
    if args.init != "scratch" and args.lr is None and train_kw.get("optimizer", "adam") == "adam":
        from ..finetune import FINETUNE_LR  # from a model: small steps keep what it knows

        train_kw["lr"] = FINETUNE_LR
    train_kw["loss"] = args.loss or train_kw.get("loss", "wce")
    train_kw.update(_weight_options(args, train_kw["loss"]))
    train_cfg = TrainConfig(device=args.device, seed=args.seed, **train_kw)
    arch = args.arch or settings.get("arch", "unet")
    if not args.resume:  # the architecture options, checked before any file is read
        ModelConfig(arch=arch, classes=args.classes or 2, **model_kw)
    init = _init(args)
    resume = None
    if args.resume:
        from ..io import load_model

        resume = load_model(args.resume)
        model_cfg = resume.config
        _check_resume(args, model_cfg)
    image, labels = read_image(args.image), read_image(args.labels)
    check_channel_axis(image.shape, args.channel_axis)
    image = z_slices(image, args.slices, args.channel_axis, args.image)
    labels = z_slices(labels, args.slices, None, args.labels)
    classes = args.classes or _count_classes(labels, args.labels_mode)
    channels = 1 if args.channel_axis is None else image.shape[args.channel_axis]
    if init is not None:
        from ..finetune import config_for

        model_cfg = config_for(init, classes, channels)
    elif not args.resume:
        model_cfg = ModelConfig(arch=arch, classes=classes, in_channels=channels, **model_kw)
    bar = Progress("train")
    gen = train(image, labels, model_cfg, train_cfg, labels_mode=args.labels_mode,
                channel_axis=args.channel_axis, resume=resume, init=init)

    def show(ev) -> None:
        extra = f"loss {ev.loss:.4f}"
        if ev.val_dice is not None:
            extra += f" val-dice {ev.val_dice:.4f}"
        if ev.eta_s is not None:
            extra += f" eta {ev.eta_s:.0f}s"
        bar.update(ev.step, train_cfg.iterations, extra)

    try:
        result = drain(gen, show)
    except KeyboardInterrupt as e:
        bar.close()
        gen.close()
        raise interrupted(e, "no model written") from None
    except TrainingDiverged as e:
        bar.close()
        raise CliError(_diverged(e, out, args)) from None
    bar.close()
    _save(out, result, args.overwrite)
    print(json.dumps({"model": str(out), **summary(result.metadata)}))
    return 0


def _init(args: argparse.Namespace) -> Any:
    """The model ``--init`` names (None for scratch), or a one-line CliError."""
    if args.init == "scratch":
        return None
    if args.resume:
        raise CliError("--init and --resume exclude each other: --resume continues a training, "
                       "--init starts a new one from a model")
    from ..finetune import resolve_init

    try:
        init = resolve_init(args.init)
    except (OSError, ValueError) as e:
        raise CliError(f"--init: {e}") from None
    for flag, given in (("--arch", args.arch), ("--depth", args.depth), ("--width", args.width)):
        if given is not None:
            raise CliError(f"{flag} does not apply with --init {args.init}: the network is "
                           "the init model's")
    return init


def _check_resume(args: argparse.Namespace, cfg: Any) -> None:
    """Architecture options given with --resume must be the resumed model's (not ignored)."""
    for flag, given, has in (("--arch", args.arch, cfg.arch), ("--depth", args.depth, cfg.depth),
                             ("--width", args.width, cfg.width),
                             ("--features", args.features, cfg.features),
                             ("--classes", args.classes, cfg.classes)):
        if given is not None and given != has:
            raise CliError(f"{flag} {given} differs from the --resume model ({has}); leave it "
                           "out to continue that model, or train a new one without --resume")


def _save(out: Path, result: Any, overwrite: bool) -> None:
    from ..io import save_model

    try:
        save_model(out, result.model, normalization=result.normalization,
                   class_values=result.class_values, metadata=result.metadata,
                   overwrite=overwrite)
    except KeyboardInterrupt as e:  # the temporary file is gone, an old file untouched
        raise interrupted(e, "no model written") from None


def _diverged(e: Any, out: Path, args: argparse.Namespace) -> str:
    """Write the last good model of a diverged run (if it trained at all); the error line."""
    meta = e.result.metadata
    text = f"training diverged: the loss became NaN or infinite at step {meta['diverged_step']}"
    if not meta["steps"]:
        return f"{text}; no model written. Lower --lr, or check the image for extreme values"
    _save(out, e.result, args.overwrite)
    return (f"{text}; the model of step {meta['best_step']} was written to {out}. Lower --lr, "
            "or check the image for extreme values")


def _weight_options(args: argparse.Namespace, loss: str) -> dict[str, Any]:
    """TrainConfig weight-map fields set on the command line; refused with a loss that
    ignores the weight map, where they would silently do nothing."""
    from ..losses import WEIGHTED_LOSSES

    given = {k: v for k, v in (("w0", args.w0), ("sigma", args.sigma)) if v is not None}
    if args.no_class_balance:
        given["class_balance"] = False
    if given and loss not in WEIGHTED_LOSSES:
        flags = ", ".join("--no-class-balance" if k == "class_balance" else f"--{k}"
                          for k in given)
        raise CliError(f"{flags} set the weight map, which --loss {loss} ignores; use "
                       f"--loss {' or '.join(WEIGHTED_LOSSES)}")
    return given


def _blocks(text: str) -> int | tuple[int, ...]:
    """``--blocks-per-level``: one number, or depth + 1 numbers separated by commas."""
    try:
        parts = tuple(int(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number or comma-separated numbers, got {text!r}") from None
    return parts[0] if len(parts) == 1 else parts


def _count_classes(labels: np.ndarray, mode: str) -> int:
    """Classes the labels define: sparse 1..K -> K; dense -> distinct values; instances -> 2."""
    if mode == "instances":
        return 2
    if mode == "sparse":
        return max(2, int(np.max(labels)))
    return max(2, len(np.unique(labels)))


def add_parser(sub: Any) -> None:
    from .. import presets

    t = sub.add_parser(
        "train", help="train a model on an image and a label image (TIFF)",
        epilog=example("napari-unetseg train volume.tif labels.tif -o model.unetseg "
                       "--slices 0:25", "napari-unetseg train volume.tif strokes.tif "
                       "-o model.unetseg --labels-mode sparse --init bundled"))
    t.add_argument("image", help="image or stack (TIFF), (Z,) Y, X")
    t.add_argument("labels", help="label image (TIFF) of the same shape (see --labels-mode)")
    t.add_argument("-o", "--output", required=True, help="model file to write (.unetseg)")
    t.add_argument("--arch", default=None, choices=["unet", "unetpp", "resunet"],
                   help="network; default: the preset's, unet (or the --resume model's)")
    t.add_argument("--labels-mode", default="dense", choices=["sparse", "dense", "instances"],
                   help="sparse: strokes 1..K, 0 unlabelled; dense: every pixel a class value; "
                        "instances: objects (0 = background) trained with border weights")
    t.add_argument("--slices", help="slices of the stack to train on, e.g. 0:25 or 7; "
                                    "default: all")
    t.add_argument("--preset", default="fast", choices=list(presets.PRESETS),
                   help="fast: small U-Net for a CPU; paper: Ronneberger et al.'s recipe; "
                        "wide: width 64, same padding, Adam; resunet-em: Drozdzal et al.'s deep "
                        "residual EM network (the last three for a GPU); default: fast")
    t.add_argument("--iterations", type=int, default=None,
                   help="training steps; default: from the preset (fast: 400)")
    t.add_argument("--depth", type=int, default=None,
                   help="down-sampling levels; default: from the preset (fast: 4)")
    t.add_argument("--width", type=int, default=None,
                   help="channels of the first level; default: from the preset (fast: 16)")
    t.add_argument("--classes", type=int, default=None,
                   help="output classes; default: from the labels (sparse: largest value, "
                        "dense: distinct values, instances: 2)")
    t.add_argument("--batch-size", type=int, default=None,
                   help="patches per step; default: from the preset (fast: 4)")
    t.add_argument("--patch-size", type=int, default=None,
                   help="patch side in pixels; default: from the preset (fast: 192)")
    t.add_argument("--block", default=None, choices=["basic", "bottleneck", "simple"],
                   help="ResUNet residual block; default: the preset's (basic)")
    t.add_argument("--blocks-per-level", type=_blocks, default=None,
                   help="ResUNet: residual blocks per level, N or N0,..,Ndepth (last: bottom); "
                        "default: the preset's (1)")
    t.add_argument("--dropout", type=float, default=None,
                   help="dropout probability (ResUNet: every block; U-Net: deepest levels); "
                        "default: the preset's (fast: 0)")
    t.add_argument("--features", default=None, choices=["none", "multiscale"],
                   help="multiscale: a fixed filter bank (smoothed intensity, gradient, "
                        "Hessian at 1-16 px) in front of the network, fast from few strokes; "
                        "default: the preset's (fast: multiscale, others: none)")
    t.add_argument("--lr", type=float, default=None,
                   help="learning rate; default: the preset's or 1e-3, and 1e-4 (Adam) with "
                        "--init from a model")
    t.add_argument("--loss", default=None, choices=["wce", "ce", "dice", "bce_dice"],
                   help="wce: cross-entropy weighted by the U-Net weight map; ce: unweighted; "
                        "dice: soft Dice; bce_dice: the UNet++ loss (BCE weighted); default: "
                        "the preset's, else wce")
    t.add_argument("--self-training", dest="self_training_s", type=float, default=None,
                   metavar="S", help="sparse labels: every S seconds of training, the network's "
                   "confident predictions on a few slices become targets where nothing is "
                   "painted, 0 = off; default: the preset's (fast: 20)")
    t.add_argument("--teacher", default=None, choices=["none", "forest"],
                   help="sparse labels: forest = a random forest fitted on the strokes labels "
                        "the pixels it is sure of on a few slices, trained on where nothing is "
                        "painted; default: the preset's (fast: forest, others: none)")
    t.add_argument("--w0", type=float, default=None,
                   help="weight-map border term amplitude, 0 = off; default: 10")
    t.add_argument("--sigma", type=float, default=None,
                   help="weight-map border term width in pixels; default: 5")
    t.add_argument("--no-class-balance", action="store_true",
                   help="weight map without the class-balance term; default: with it")
    t.add_argument("--optimizer", choices=["adam", "sgd"],
                   help="default: the preset's (paper: sgd), else adam")
    t.add_argument("--device", default="auto",
                   help="cpu, cuda, cuda:N or mps; auto: CUDA, then MPS, then the CPU")
    t.add_argument("--seed", type=int, default=0, help="random seed (patches, weights)")
    t.add_argument("--channel-axis", type=int, default=None,
                   help="axis of the image holding channels; default: none (one channel)")
    t.add_argument("--resume", help="model file to continue training from; default: none "
                                    "(a new model)")
    t.add_argument("--init", default="scratch", metavar="{scratch,bundled,PATH}",
                   help="where training starts: random weights (scratch), the bundled EM "
                        "membrane model, or a model file; with a model the network is its "
                        "architecture (no --arch/--depth/--width) and a different class "
                        "count gets a new output head")
    t.add_argument("--overwrite", action="store_true", help="replace an existing model file")
    t.set_defaults(func=run)
