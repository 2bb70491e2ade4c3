"""Pieces of the stroke benchmark (benchmarks/scribbles.py): clocks, data, the random-forest
anchor, snapshots of a training run at given times, and scoring.

Every method is scored the same way: its membrane (or object) probability on the held-out
slices, V_Rand / V_Info best over the ISBI threshold sweep (``metrics.isbi_scores``), or IoU of
the object class at 0.5.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch

from napari_unetseg import metrics
from napari_unetseg.inference import InferenceConfig, predict
from napari_unetseg.postprocess import BoundaryInstances, instances_from_boundaries

ROOT = Path(__file__).resolve().parents[1]
ISBI = ROOT.parent / "shared/data/isbi2012"


def make_clock(kind: str) -> Callable[[], float]:
    """``wall``: perf_counter. ``cpu``: process CPU time / torch threads (about the wall time
    on an idle machine, while other users' load does not count; single-threaded work counts
    half on 2 threads, so it favours single-threaded steps a little)."""
    if kind == "wall":
        return time.perf_counter
    if kind == "cpu":
        threads = max(1, torch.get_num_threads())
        return lambda: time.process_time() / threads
    raise ValueError(f"clock must be wall or cpu, got {kind!r}")


def load_isbi(data: Path | None = None) -> dict[str, np.ndarray]:
    d = data or ISBI
    if not (d / "train-volume.tif").exists():
        raise SystemExit(f"ISBI 2012 data not found in {d}; pass --data")
    out = {"image": tifffile.imread(d / "train-volume.tif"),
           "labels": tifffile.imread(d / "train-labels.tif")}
    if (d / "test-volume.tif").exists():
        out["unlabelled"] = tifffile.imread(d / "test-volume.tif")
    return out


# ----------------------------------------------------------------------------- random forest
def rf_features(img: np.ndarray) -> np.ndarray:
    """scikit-image multiscale features (intensity, edges, texture, sigma 1..16) of a slice:
    the product's forest teacher's (``teacher.features``)."""
    from napari_unetseg.teacher import features

    return features(np.asarray(img)[None])


def rf_fit(image: np.ndarray, strokes: np.ndarray, seed: int = 0):
    """A 100-tree random forest on the painted pixels' features (as ilastik / convpaint)."""
    from sklearn.ensemble import RandomForestClassifier

    xs, ys = [], []
    for z in np.flatnonzero(strokes.reshape(len(strokes), -1).any(1)):
        f = rf_features(image[z])
        m = strokes[z] > 0
        xs.append(f[m])
        ys.append(strokes[z][m])
    rf = RandomForestClassifier(n_estimators=100, n_jobs=-1, random_state=seed)
    rf.fit(np.concatenate(xs), np.concatenate(ys))
    return rf


def rf_proba(rf, image: np.ndarray, value: int = 1) -> np.ndarray:
    """Probability of painted class ``value`` on every slice of ``image``."""
    col = list(rf.classes_).index(value)
    out = []
    for img in image:
        f = rf_features(img)
        out.append(rf.predict_proba(f.reshape(-1, f.shape[-1]))[:, col].reshape(img.shape))
    return np.stack(out).astype(np.float32)


# ----------------------------------------------------------------------------- snapshots
@dataclass
class Snapshot:
    """A copy of the network at a point of a training run (by the run's clock)."""

    at_s: float
    step: int
    model: torch.nn.Module
    normalization: Any
    class_values: tuple[int, ...]


@dataclass
class Run:
    snapshots: list[Snapshot] = field(default_factory=list)
    prep_s: float = 0.0  # from the call until the first step can run (data, model)
    steps: int = 0
    metadata: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    first_s: float | None = None  # training seconds at the run's first event
    forest: Any = None  # the run's random-forest teacher (TrainConfig.teacher), if any


def snapshots(gen: Any, marks: Iterable[float], clock: Callable[[], float],
              t_click: float, offset: float = 0.0, ema: float = 0.0,
              hook: Callable[[Any, Any], None] | None = None) -> Run:
    """Drain a :class:`~napari_unetseg.training.TrainRun`, copying its model at each mark
    (seconds of training by its events' ``elapsed_s``, plus ``offset`` seconds spent before
    the run, e.g. on a teacher); the copies are scored afterwards. ``ema``: snapshot an
    exponential moving average of the weights (this decay per step) instead. ``hook(event,
    run)`` is called after every event (its time counts)."""
    todo = sorted(marks)
    run = Run(prep_s=clock() - t_click)
    avg = None
    try:
        while True:
            ev = next(gen)
            run.steps = ev.step
            if run.first_s is None:
                run.first_s = ev.elapsed_s
            if ema:
                avg = _ema(avg, gen.model, ema)
            if hook is not None:
                hook(ev, gen)
            while todo and ev.elapsed_s + offset >= todo[0]:
                model = _copy(gen.model)
                if avg is not None:
                    model.load_state_dict(avg)
                run.snapshots.append(Snapshot(todo.pop(0), ev.step, model,
                                              gen.normalization, gen.class_values))
    except StopIteration as done:
        result = done.value
        run.metadata = result.metadata
        run.forest = getattr(gen, "forest", None)
        for m in todo:  # ended before these marks (e.g. out of steps): the final model
            run.snapshots.append(Snapshot(m, result.metadata["steps"], result.model,
                                          result.normalization, result.class_values))
    return run


@torch.no_grad()
def _ema(avg: dict | None, model: torch.nn.Module, decay: float) -> dict:
    state = model.state_dict()
    if avg is None:
        return {k: v.detach().clone() for k, v in state.items()}
    for k, v in state.items():
        if v.dtype.is_floating_point:
            avg[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
        else:
            avg[k].copy_(v)
    return avg


def _copy(model: torch.nn.Module) -> torch.nn.Module:
    m = copy.deepcopy(model).to("cpu", memory_format=torch.contiguous_format)
    return m.eval()


def forest_probability(teacher: Any, normalization: Any, class_values: tuple[int, ...],
                       image: np.ndarray, value: int = 1) -> np.ndarray:
    """Probability of painted class ``value`` on every slice by a run's forest teacher (what
    the live loop's first preview shows)."""
    col = list(teacher.forest.classes_).index(list(class_values).index(value))
    return np.stack([teacher.probabilities(normalization(img)[None])[..., col]
                     for img in image]).astype(np.float32)


def probability(snap: Snapshot, image: np.ndarray, value: int = 1,
                tta: bool = False) -> np.ndarray:
    """Probability of painted class ``value`` (a sparse label) on every slice."""
    cfg = InferenceConfig(device="cpu", tta=tta)
    res = predict(snap.model, image, normalization=snap.normalization, config=cfg)
    k = list(snap.class_values).index(value)
    return np.asarray(res.probabilities, np.float32)[:, k]


# ----------------------------------------------------------------------------- scores
def membrane_scores(prob: np.ndarray, gt: np.ndarray, membrane_value: int = 0) -> dict:
    """The map's ISBI scores (best of the threshold sweep), and the scores of the cells that
    Segment makes of it (``cells_*``: ``BoundaryInstances()``, no threshold picked on the
    scored slices; ``cells_unstretched_*``: the same without the stretch, as before
    2026-12-03)."""
    prob = np.clip(prob, 0, 1).astype(np.float32)
    s = metrics.isbi_scores(prob, gt == membrane_value)
    out = {k: round(s[k], 4) for k in ("v_rand", "v_info", "v_rand_split", "v_rand_merge")}
    for name, stretch in (("cells", True), ("cells_unstretched", False)):
        cells = metrics.instance_scores(instances_from_boundaries(
            prob, BoundaryInstances(stretch=stretch)), gt == membrane_value)
        out.update({f"{name}_{k}": round(cells[k], 4) for k in ("v_rand", "v_info")})
    return out


def object_scores(prob: np.ndarray, objects: np.ndarray) -> dict:
    iou = metrics.iou((prob >= 0.5).astype(np.uint8), (objects > 0).astype(np.uint8), [1])
    return {"iou": round(float(iou[1]), 4)}
