"""Self-training on the stack's unpainted pixels: the network's own confident predictions.

Strokes label about 2 % of a slice or two, and a network fitted to them alone starts to overfit
them after a few hundred steps. Every ``self_training_s`` seconds of training
(:class:`~napari_unetseg.training.TrainConfig`), :class:`PseudoLabels` predicts a few slices of
the stack with the network being trained (the painted slices, then the others in turn) and
keeps, as extra training targets, the pixels it predicts with a probability of at least
``pseudo_confidence`` (classic self-training, e.g. Lee 2013 "Pseudo-Label"; here the labels are
renewed each round, so early mistakes are not frozen). With ``pseudo_portion`` below 1 the
rounds are class-balanced (Zou et al. 2018, "class-balanced self-training"): of the pixels
predicted as each class only the surest share is kept, so the class the network is surer of
(cell interior, or membrane once it has grown) cannot take over the unpainted pixels round
after round. A round takes at most a third of the training time: after one that took ``c``
seconds the next waits at least ``2 c`` (``training.ROUND_SPACING``), so slow predictions (a
slow CPU, big slices) cannot leave one step between rounds. The user's strokes always win:
pseudo labels only fill pixels that are neither training nor validation strokes, and are never
used for validation. A teacher's targets (:mod:`napari_unetseg.teacher`, held in ``taught``)
come between the two: under the strokes, over the network's own. Measured in
``benchmarks/scribbles.py`` (docs/performance.md): with the plain rule (p >= 0.9) a run can
drift after a minute, the membranes growing onto organelles or thinning into gaps; the fast
preset's class-balanced rounds (the surer half of each class, ``pseudo_portion=0.5``) held
every run at V_Rand 0.818 or more at 180 s.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch

from .data import IGNORE, TrainingData
from .targets import class_balance

__all__ = ["PseudoLabels", "confident"]


def _identity(x: Any) -> np.ndarray:
    return np.asarray(x, np.float32)


def confident(probs: np.ndarray, confidence: float, portion: float = 1.0
              ) -> tuple[np.ndarray, np.ndarray]:
    """Predicted class and pseudo-label mask of ``probs`` ``(N, K, H, W)``: probability at
    least ``confidence`` and, per predicted class, at least the ``1 - portion`` quantile of
    the probabilities of the pixels predicted as that class (over all ``N`` slices): its
    ``portion`` most confident pixels, and any tied with the last of them."""
    cls, conf = probs.argmax(1), probs.max(1)
    sure = conf >= confidence
    if portion < 1.0:  # ties with the cut (flat regions) pass together
        for k in range(probs.shape[1]):
            mine = cls == k
            if mine.any():
                sure &= ~mine | (conf >= np.quantile(conf[mine], 1.0 - portion))
    return cls, sure


class PseudoLabels:
    """Rounds of pseudo labels for one training run.

    Parameters
    ----------
    every_s : float
        Seconds of training between rounds (the first comes after ``every_s``).
    slices : int
        Slices predicted per round: the painted ones first, then the others in turn.
    confidence : float
        Smallest class probability that makes a pixel a pseudo label.
    portion : float
        Of the round's pixels predicted as each class, only this most confident share may
        become pseudo labels (class-balanced self-training); 1: every pixel above
        ``confidence``.
    balance : bool
        With a weight map, weigh a teacher's targets as the strokes of their class are
        weighed (``class_balance``: the inverse frequency of the class among the strokes).
        Balancing over the strokes and the teacher's targets together (mostly the larger
        class) over-weighs the smaller class: the network then over-predicts it (objects:
        0.60 IoU against 0.75 with the strokes' weights, ``benchmarks/scribbles.py``).
    taught_weight : float
        With a weight map, a teacher's target weighs this much of what a stroke of its class
        weighs: below 1 the strokes, a few thousand pixels among hundreds of thousands of
        the teacher's, can overrule the teacher where they say something else.
    """

    def __init__(self, every_s: float, slices: int, confidence: float,
                 portion: float = 1.0, balance: bool = True,
                 taught_weight: float = 1.0) -> None:
        self.every_s, self.slices, self.confidence = every_s, slices, confidence
        self.portion, self.balance, self.taught_weight = portion, balance, taught_weight
        self.next_s = every_s
        self.not_before_s = 0.0  # no round before this run time (set by the training)
        self.rounds = 0
        self._turn = 0
        self.targets: dict[int, np.ndarray] = {}  # slice -> (H, W) int16 class or IGNORE
        #: a teacher's targets (:mod:`napari_unetseg.teacher`), under the strokes and over
        #: the network's own; their slices count as painted in :meth:`pick`
        self.taught: dict[int, np.ndarray] = {}
        self.base: TrainingData | None = None  # the data with the user's strokes only

    def due(self, elapsed_s: float) -> bool:
        return self.every_s > 0 and elapsed_s >= max(self.next_s, self.not_before_s)

    def pick(self, data: TrainingData) -> list[int]:
        """The slices of this round: the painted (or taught) ones, then the next others in
        turn."""
        painted = sorted({*data.train_slices, *data.val_slices, *self.taught})
        others = [z for z in range(len(data.image)) if z not in painted]
        n = min(len(others), max(0, self.slices - len(painted)))
        rest = [others[(self._turn + i) % len(others)] for i in range(n)]
        self._turn += n
        return painted[: max(self.slices, 1)] + rest

    def update(self, model: torch.nn.Module, device: torch.device, elapsed_s: float
               ) -> TrainingData:
        """Predict this round's slices with ``model`` (untouched: a folded copy runs) and
        return the last :meth:`apply` 's data with the pseudo labels of every round so far."""
        from .inference import InferenceConfig, predict

        data = self.base
        if data is None:
            raise RuntimeError("PseudoLabels.apply(data) must come before update()")
        self.next_s = elapsed_s + self.every_s
        self.rounds += 1
        pick = self.pick(data)
        image = data.image[pick]
        channels = image.shape[1]
        res = predict(model, image[:, 0] if channels == 1 else image,
                      channel_axis=None if channels == 1 else 1, normalization=_identity,
                      config=InferenceConfig(device=str(device)))
        probs = np.asarray(res.probabilities, np.float32)
        cls, sure = confident(probs, self.confidence, self.portion)
        for i, z in enumerate(pick):
            self.targets[z] = np.where(sure[i], cls[i], IGNORE).astype(np.int16)
        return self.apply(data)

    def apply(self, data: TrainingData) -> TrainingData:
        """``data`` (with the user's strokes only: it is kept for the next rounds) with the
        teacher's targets, then the pseudo labels, filling the pixels that carry no stroke.
        With a weight map (a weighted loss) a pseudo label weighs 1, the mean weight of the
        strokes; a teacher's target weighs what a stroke of its class weighs (``balance``;
        else it weighs 1 too)."""
        self.base = data
        if not (self.targets or self.taught):
            return data
        train = data.train_target.copy()
        weight = None if data.weight is None else data.weight.copy()

        def fill(targets: dict[int, np.ndarray]) -> None:
            for z, target in targets.items():
                free = train[z] == IGNORE
                if data.val_target is not None:
                    free &= data.val_target[z] == IGNORE
                train[z][free] = target[free]
                if weight is not None:  # the strokes keep theirs (mean 1); a pseudo label: 1
                    weight[z][free & (target != IGNORE)] = 1.0

        fill(self.taught)
        if self.taught and weight is not None and self.balance:  # by the strokes' shares:
            weight = class_balance(train, data.num_classes, of=data.train_target)
        if self.taught and weight is not None and self.taught_weight != 1.0:
            weight[(train != IGNORE) & (data.train_target == IGNORE)] *= self.taught_weight
        fill(self.targets)
        slices = tuple(i for i in range(len(train)) if (train[i] >= 0).any())
        return replace(data, train_target=train, weight=weight, train_slices=slices)
