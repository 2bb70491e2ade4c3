"""Where training starts: from scratch, from the bundled model or from a model file.

:func:`resolve_init` turns the ``init`` argument of :func:`napari_unetseg.training.train`
into a model (or None for scratch); :func:`load_weights` copies its weights into the network
being trained, keeping the new network's freshly initialised output head when the class count
differs; :func:`match_classes` puts the head's classes in the order the painted labels use
(e.g. membrane painted as 2 instead of 1) by the starting model's agreement with the strokes.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import torch

from .config import ModelConfig

__all__ = ["FINETUNE_LR", "INITS", "class_tensors", "config_for", "load_weights", "match_classes",
           "resolve_init"]

#: Named starting points; anything else is a model file path or a model object.
INITS = ("scratch", "bundled")
#: Learning rate when training starts from a model and none is given. Measured with
#: ``benchmarks/finetune.py`` (bundled model, strokes on a proxy stack it never saw): at 1e-3
#: the strokes first undo what the model knows (V_Rand 0.958 -> 0.709 after 10 s, 0.913 at
#: 60 s), at 1e-4 they improve on it (0.950, 0.969, 0.970 at 10, 30, 60 s).
FINETUNE_LR = 1e-4


def resolve_init(init: Any) -> Any:
    """The starting model of ``init``, as a :class:`~napari_unetseg.io.SavedModel`, or None.

    ``None`` or ``"scratch"``: None (random weights). ``"bundled"``: the bundled EM membrane
    model (:func:`napari_unetseg.bundled.load_bundled`). A path: that model file. A
    SavedModel or a TrainResult: itself.

    Raises
    ------
    FileNotFoundError, IsADirectoryError, ModelFileError
        A path that is not a readable model file.
    TypeError
        Anything else.
    """
    from .io import SavedModel, load_model

    if init is None or (isinstance(init, str) and init == "scratch"):
        return None
    if isinstance(init, str) and init == "bundled":
        from .bundled import load_bundled

        return load_bundled()
    if isinstance(init, (str, os.PathLike)):
        return load_model(init)
    if isinstance(init, SavedModel):
        return init
    model = getattr(init, "model", None)
    config = getattr(init, "model_config", None)
    if isinstance(model, torch.nn.Module) and isinstance(config, ModelConfig):  # TrainResult
        return SavedModel(model, config, init.normalization, list(init.class_values),
                          metadata=dict(getattr(init, "metadata", {}) or {}))
    raise TypeError(f"init must be 'scratch', 'bundled', a model file path, a SavedModel or a "
                    f"TrainResult, got {type(init).__name__}")


def config_for(source: Any, classes: int, in_channels: int | None = None) -> ModelConfig:
    """The network to train from ``source`` (a SavedModel): its architecture, ``classes``."""
    extra = {} if in_channels is None else {"in_channels": in_channels}
    return dataclasses.replace(source.config, classes=classes, **extra)


def class_tensors(config: ModelConfig) -> set[str]:
    """Names of the state-dict tensors whose shape depends on the number of classes."""
    from .models import build_model

    with torch.device("meta"):
        a = build_model(config).state_dict()
        other = dataclasses.replace(config, classes=config.classes + 1)
        b = build_model(other).state_dict()
    return {k for k in a if a[k].shape != b[k].shape}


def load_weights(model: torch.nn.Module, source: Any) -> list[str]:
    """Copy ``source``'s weights into ``model``; return the tensors left as initialised.

    The two networks must have the same configuration up to ``classes``; with another class
    count the output head keeps ``model``'s fresh initialisation.

    Raises
    ------
    ValueError
        The architectures differ.
    """
    new, old = model.config, source.config
    if dataclasses.replace(old, classes=new.classes) != new:
        raise ValueError(f"init model is {old}; the network to train must have the same "
                         f"architecture (only classes may differ), got {new}")
    own = model.state_dict()
    state = source.model.state_dict()
    fresh = sorted(k for k in own if state[k].shape != own[k].shape)
    model.load_state_dict({k: state[k] if k not in fresh else own[k] for k in own})
    return fresh


@torch.no_grad()
def match_classes(model: torch.nn.Module, image: torch.Tensor, target: torch.Tensor,
                  ignore_index: int = -1) -> tuple[list[int], float]:
    """Reorder ``model``'s output classes to agree best with the labelled pixels.

    ``image`` ``(N, C, H, W)`` and ``target`` ``(N, H, W)`` are labelled patches. The class
    permutation that maximises the agreement of the model's argmax with the target (Hungarian
    assignment on the confusion matrix) is applied to the output head in place.

    Returns
    -------
    perm : list of int
        New class ``i`` is the model's former class ``perm[i]``.
    balanced_accuracy : float
        Mean over the painted classes of the share of their pixels the reordered model
        predicts right: how well the starting model already fits the strokes.
    """
    from scipy.optimize import linear_sum_assignment

    k = model.config.classes
    was_training = model.training
    model.eval()
    try:
        out = model(image)
    finally:
        model.train(was_training)
    logits = torch.stack(out).mean(0) if isinstance(out, list) else out
    keep = target != ignore_index
    pairs = target[keep].long() * k + logits.argmax(1)[keep]
    conf = torch.bincount(pairs, minlength=k * k).view(k, k).double().cpu().numpy()
    recall = conf / np.maximum(conf.sum(1, keepdims=True), 1)  # rows: painted, cols: model
    rows, cols = linear_sum_assignment(-recall)  # the order with the best balanced accuracy
    perm = [int(c) for _, c in sorted(zip(rows, cols, strict=True))]
    painted = conf.sum(1) > 0
    right = recall[np.arange(k), perm]
    bacc = float(right[painted].mean()) if painted.any() else 0.0
    if perm != list(range(k)):
        state = model.state_dict()
        index = torch.tensor(perm)
        for name in class_tensors(model.config):
            t = state[name]
            state[name] = t.index_select(0, index.to(t.device))
        model.load_state_dict(state)
    return perm, bacc
