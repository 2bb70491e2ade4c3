"""The network side of benchmarks/scribbles.py: named recipes and one timed run with snapshots."""

from __future__ import annotations

import ast
import dataclasses
from typing import Any

import numpy as np
from _loop import Run, _copy, snapshots

from napari_unetseg import ModelConfig
from napari_unetseg.presets import preset
from napari_unetseg.training import TrainConfig, train

#: "today": the CLI's sparse default before issue 10 (fast preset, ce, 10 % validation),
#: trained by time. "raw": the loop's recipe on raw pixels (the previous sessions' default).
#: "scribbles": what Train does by default from strokes: the fast preset (its network with the
#: multiscale filter bank, ``features="multiscale"``, the random-forest teacher's sure pixels
#: on 4 slices, ``teacher="forest"``, class-balanced self-training every 20 s (the surer half
#: of each class) and BatchNorm momentum 0.5, see presets.py) with TrainConfig's defaults
#: (wce: class-balanced strokes; 10 % of the strokes held out for validation).
#: "scribbles-ce": the same with plain cross entropy and every stroke trained on.
#: the fast preset as Train takes it, trained by time (a run's budget replaces its iterations)
_FAST = {k: v for k, v in preset("fast").items() if k != "iterations"}
RECIPES: dict[str, dict[str, Any]] = {
    "today": {"depth": 4, "width": 16, "patch_size": 192, "batch_size": 4, "loss": "ce",
              "val_fraction": 0.1},
    "raw": {"depth": 4, "width": 16, "patch_size": 192, "batch_size": 4, "loss": "ce",
            "val_fraction": 0.0},
    "scribbles": {**_FAST, "loss": "wce", "val_fraction": 0.1},
    "scribbles-ce": {**_FAST, "loss": "ce", "val_fraction": 0.0},
}

#: recipe settings that are not ModelConfig / TrainConfig fields
_EXTRA = {"pretrain_s": 0, "pretrain_patch": 96, "pretrain_batch": 8, "pretrain_lr": 2e-3,
          "ema": 0.0, "self_train_at": (), "self_train_slices": 6, "self_train_conf": 0.9,
          "self_train_pool": 0, "self_train_tta": False}
_MODEL = {f.name for f in dataclasses.fields(ModelConfig)}
_TRAIN = {f.name for f in dataclasses.fields(TrainConfig)}


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` items as a dict; a VALUE that is not a Python literal is a str."""
    out = {}
    for item in items:
        key, _, text = item.partition("=")
        try:
            out[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            out[key] = text
    return out


def settings(recipe: str, overrides: list[str]) -> dict[str, Any]:
    return {**RECIPES[recipe], **parse_overrides(overrides)}


def deep_run(task: dict, recipe: str, overrides: list[str], marks: list[float], clock,
             seed: int) -> Run:
    """Train the recipe on the task's strokes for max(marks) seconds, with snapshots."""
    s = {**_EXTRA, **settings(recipe, overrides)}
    model_kw = {k: v for k, v in s.items() if k in _MODEL}
    train_kw = {k: v for k, v in s.items() if k in _TRAIN}
    unknown = set(s) - _MODEL - _TRAIN - set(_EXTRA)
    if unknown:
        raise SystemExit(f"unknown recipe settings {sorted(unknown)}")
    mc = ModelConfig(classes=int(task["strokes"].max()), **model_kw)
    resume, pre = None, {}
    if s["pretrain_s"]:  # while the user paints: not counted in the marks
        resume, pre = _pretrain(task, mc, s, clock, seed)
    t0 = clock()
    image, labels = task["image"], task["strokes"]
    tc = TrainConfig(**{"iterations": 10_000_000, "device": "cpu", "log_every": 1,
                        "seed": seed, "time_budget_s": max(marks), **train_kw})
    gen = train(image, labels, mc, tc, clock=clock, resume=resume)
    hook = _self_training(image, task["strokes"], s) if s["self_train_at"] else None
    run = snapshots(gen, marks, clock, t0, ema=s["ema"], hook=hook)
    run.settings = {**s, **pre}
    return run


def _pretrain(task: dict, mc: ModelConfig, s: dict, clock, seed: int):
    from napari_unetseg.devices import drain
    from napari_unetseg.pretrain import PretrainConfig, pretrain

    stack = task["stack"]
    cfg = PretrainConfig(time_budget_s=float(s["pretrain_s"]), patch_size=s["pretrain_patch"],
                         batch_size=s["pretrain_batch"], lr=s["pretrain_lr"], seed=seed)
    res = drain(pretrain(stack, mc, cfg, clock=clock))
    print(f"  pretrained {res.metadata['steps']} steps in {res.metadata['seconds']:.0f} s "
          f"on {len(stack)} slices", flush=True)
    return res.state_dict, {"pretrain_steps": res.metadata["steps"],
                            "pretrain_slices": len(stack)}


def _pick(strokes: np.ndarray, n_slices: int) -> list[int]:
    """The painted slices, then evenly spread others, ``n_slices`` in all."""
    painted = [int(z) for z in np.flatnonzero(strokes.reshape(len(strokes), -1).any(1))]
    others = [z for z in range(len(strokes)) if z not in painted]
    extra = min(len(others), max(0, n_slices - len(painted)))
    return painted + [others[i] for i in np.linspace(0, len(others) - 1, extra).astype(int)
                      ] if extra else painted


def _confident(prob: np.ndarray, values: list[int], conf: float, strokes: np.ndarray
               ) -> np.ndarray:
    """Sparse labels: the class of pixels predicted with ``prob.max() >= conf``, strokes on
    top. ``prob`` is (K, Y, X)."""
    out = np.zeros(strokes.shape, np.uint8)
    sure = prob.max(0) >= conf
    out[sure] = np.asarray(values, np.uint8)[prob.argmax(0)[sure]]
    out[strokes > 0] = strokes[strokes > 0]
    return out


def _self_training(image, strokes, s: dict):
    """A hook that, at each of ``self_train_at`` seconds, labels the run's confident
    predictions on ``self_train_slices`` slices and trains on them with the strokes."""
    from napari_unetseg.inference import InferenceConfig, predict

    todo = sorted(s["self_train_at"]) if isinstance(s["self_train_at"], (tuple, list)) else [
        s["self_train_at"]]
    k = s["self_train_slices"]
    pool = _pick(strokes, max(k, s["self_train_pool"]))
    painted = [z for z in pool if strokes[z].any()]
    others = [z for z in pool if z not in painted]
    labels = strokes.copy()
    turn = [0]

    def hook(ev, gen) -> None:
        if not todo or ev.elapsed_s < todo[0]:
            return
        todo.pop(0)
        n = max(0, k - len(painted))  # the painted slices, then the next others in turn
        rest = [others[(turn[0] + i) % len(others)] for i in range(min(n, len(others)))]
        turn[0] += n
        pick = painted + rest
        model = _copy(gen.model)
        res = predict(model, image[pick], normalization=gen.normalization,
                      config=InferenceConfig(device="cpu", tta=s["self_train_tta"]))
        values = list(gen.class_values)
        for i, z in enumerate(pick):
            labels[z] = _confident(np.asarray(res.probabilities[i]), values,
                                   s["self_train_conf"], strokes[z])
        gen.update_labels(labels)

    return hook
