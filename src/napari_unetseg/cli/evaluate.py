"""``napari-unetseg evaluate``: score a prediction against ground truth (JSON)."""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

from ._common import (
    CliError,
    example,
    read_image,
    select_slices,
)


def evaluate_arrays(pred: np.ndarray, gt: np.ndarray, boundary_value: int = 0) -> dict:
    """Scores of a prediction against ground truth (both (Z,)Y,X).

    ``pred`` is either labels in the ground truth's values, or a float map of the boundary
    (membrane) probability in [0, 1]; ``boundary_value`` is the ground-truth value of boundary
    pixels (ISBI 2012: 0 = membrane). For a probability map, pixel error, Dice and IoU are taken
    at 0.5 (the argmax of two classes) and V_Rand / V_Info are the best over the threshold sweep
    (as the ISBI 2012 challenge reported them).
    """
    from .. import metrics

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


def run(args: argparse.Namespace) -> int:
    pred, gt = read_image(args.prediction), read_image(args.ground_truth)
    if args.slices is not None:
        if gt.ndim < 3:
            raise CliError("--slices needs a stack (Z, Y, X); these images are 2-D")
        n = gt.shape[0]
        sl = select_slices(args.slices, n)
        gt = gt[sl]
        if pred.shape[0] == n:  # else the prediction holds only the selected slices
            pred = pred[sl]
    print(json.dumps(evaluate_arrays(pred, gt, args.boundary_value), indent=1))
    return 0


def add_parser(sub: Any) -> None:
    e = sub.add_parser("evaluate", help="score a prediction against ground truth (JSON)",
                       epilog=example("napari-unetseg evaluate probabilities.tif "
                                      "train-labels.tif --slices 25:30"))
    e.add_argument("prediction", help="labels in the ground truth's values, or a float "
                                      "boundary probability map in [0, 1] (TIFF)")
    e.add_argument("ground_truth", help="ground-truth labels (TIFF)")
    e.add_argument("--slices", help="slices to score, e.g. 25:30 (a prediction of just "
                                    "those slices is accepted too); default: all")
    e.add_argument("--boundary-value", type=int, default=0,
                   help="ground-truth value of boundary/membrane pixels (ISBI: 0)")
    e.set_defaults(func=run)
