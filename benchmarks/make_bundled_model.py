"""Make the bundled EM membrane model (``src/napari_unetseg/data/bundled_em_membranes.unetseg``).

A small U-Net (depth 4, width 12: 1.09 M parameters, 2.2 MB in float16) trained on the dense
ISBI 2012 membrane labels of slices 0-22, validated (best weights kept) on slices 23 and 24.
Slices 25-29 are never seen: they are where the transfer proxies (``_proxies.py``) are made.
The augmentation is meant for EM stacks we do not have: zoom 0.5x-2x (other pixel sizes),
contrast inversion, gamma, contrast and brightness, blur, noise, and elastic deformation.

    python benchmarks/make_bundled_model.py --threads 1     # ~1.5 h on a busy 2-core VM
    python benchmarks/make_bundled_model.py --steps 50 --out /tmp/x.unetseg   # smoke run

The data's credit and terms go into the model's metadata (see src/napari_unetseg/data/README.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _proxies import load_isbi  # noqa: E402

from napari_unetseg import ModelConfig, describe  # noqa: E402
from napari_unetseg.augment import AugmentConfig  # noqa: E402
from napari_unetseg.io import save_model  # noqa: E402
from napari_unetseg.training import TrainConfig, fit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "src/napari_unetseg/data/bundled_em_membranes.unetseg"

#: The augmentation for transfer (see the module docstring).
TRANSFER_AUGMENT = AugmentConfig(zoom=1.0, invert=0.3, gamma=0.5, contrast=0.3,
                                 brightness=0.2, blur=1.5, noise=0.1)

CREDIT = [
    "A. Cardona et al., An integrated micro- and macroarchitectural analysis of the Drosophila "
    "brain by computer-assisted serial section electron microscopy, PLoS Biology 8(10): "
    "e1000502, 2010. doi:10.1371/journal.pbio.1000502",
    "I. Arganda-Carreras et al., Crowdsourcing the creation of image segmentation algorithms "
    "for connectomics, Frontiers in Neuroanatomy 9:142, 2015. doi:10.3389/fnana.2015.00142",
    "A. Cardona et al., TrakEM2 software for neural circuit reconstruction, PLoS ONE 7(6): "
    "e38011, 2012",
]
TERMS = ("Trained on the ISBI 2012 challenge data (ssTEM of the Drosophila first instar larva "
         "ventral nerve cord, Cardona et al. 2010). No explicit license for the challenge data "
         "is known; Cardona's data page states the data may be used freely to generate or test "
         "non-commercial image segmentation software, and that publications using it must cite "
         "TrakEM2 and Cardona et al. 2010. The BSD license of napari-unetseg covers its code "
         "only and grants nothing for this data or for weights learnt from it.")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--patch", type=int, default=192)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--width", type=int, default=12)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--plain", action="store_true",
                   help="default augmentation only (the comparison without transfer augment)")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    image, labels = load_isbi(args.data)
    image, labels = image[:25], labels[:25]  # slices 25-29 are never seen
    model_cfg = ModelConfig(arch="unet", depth=args.depth, width=args.width, classes=2)
    augment = AugmentConfig() if args.plain else TRANSFER_AUGMENT
    train_cfg = TrainConfig(
        iterations=args.steps, batch_size=args.batch, patch_size=args.patch, lr=args.lr,
        loss="ce", augment=augment, val_slices=(23, 24), val_every=max(args.steps // 20, 1),
        device=args.device, seed=args.seed,
    )
    t0 = time.perf_counter()
    last = [0.0]

    def show(ev) -> None:
        if ev.val_dice is not None or time.perf_counter() - last[0] > 30:
            last[0] = time.perf_counter()
            val = "" if ev.val_dice is None else f" val Dice {ev.val_dice:.4f}"
            print(f"step {ev.step}/{args.steps} loss {ev.loss:.4f}{val} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)

    stop = []  # Ctrl-C (SIGINT) ends training early; the best weights so far are saved
    signal.signal(signal.SIGINT, lambda *a: stop.append(True))
    result = fit(image, labels, model_cfg, train_cfg, labels_mode="dense", on_event=show,
                 stop=lambda: bool(stop))
    command = "python benchmarks/make_bundled_model.py " + " ".join(sys.argv[1:])
    meta = {
        **result.metadata,
        "bundled": True,
        "normalize_per_image": True,
        "name": f"EM membranes (ISBI 2012), U-Net depth {args.depth} width {args.width}",
        "task": "membrane (class value 0) vs cell interior (255) in electron micrographs",
        "training_data": "ISBI 2012 training stack (train-volume.tif / train-labels.tif), "
                         "slices 0-22 trained on, 23-24 for validation; slices 25-29 unseen",
        "credit": CREDIT,
        "terms": TERMS,
        "made_by": command,
        "params": describe(model_cfg)["params"],
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
    }
    save_model(args.out, result.model, normalization=result.normalization,
               class_values=list(result.class_values), class_names=["membrane", "cell"],
               metadata=meta, overwrite=args.overwrite, float16=True)
    args.out.chmod(0o644)  # package data: readable by everyone
    print(json.dumps({"model": str(args.out), "bytes": args.out.stat().st_size,
                      "steps": result.metadata["steps"],
                      "seconds": round(time.perf_counter() - t0),
                      "best_step": result.metadata["best_step"],
                      "best_val_dice": result.metadata["best_val_dice"]}))


if __name__ == "__main__":
    main()
