"""New labels for a training run that is going on: a thread-safe inbox read between steps.

The GUI paints while :class:`~napari_unetseg.training.TrainRun` trains in a worker thread.
:meth:`LabelsInbox.put` (any thread) leaves a copy of the labels; the training loop
:meth:`~LabelsInbox.take` s the latest one before its next step, rebuilds what depends on the
labels (:func:`napari_unetseg.data.relabel`: targets, validation split, stroke-centred
sampling and class counts) and reports with :meth:`~LabelsInbox.done`. Only the newest labels
count: a put replaces one that was not taken yet.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

__all__ = ["LabelsInbox"]


class LabelsInbox:
    """Labels waiting to enter a running training.

    Parameters
    ----------
    shape : tuple of int
        Shape of the labels the run was started with; other shapes are refused.

    Attributes
    ----------
    version : int
        How many puts were applied to the training data so far.
    problem : str or None
        Why the last labels taken were not applied (e.g. a class the model does not have),
        None once labels were applied.
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = tuple(int(n) for n in shape)
        self.version = 0
        self.problem: str | None = None
        self._lock = threading.Lock()
        self._pending: np.ndarray | None = None

    def put(self, labels: Any) -> None:
        """Leave a copy of ``labels`` for the next step; ValueError if the shape differs."""
        arr = np.array(labels, copy=True)
        if arr.shape != self.shape:
            raise ValueError(f"labels shape {arr.shape} differs from the shape {self.shape} "
                             "the training was started with")
        with self._lock:
            self._pending = arr

    @property
    def waiting(self) -> bool:
        """Whether labels were put and not taken yet."""
        return self._pending is not None

    def take(self) -> np.ndarray | None:
        """The newest labels put since the last take, or None."""
        with self._lock:
            arr, self._pending = self._pending, None
        return arr

    def done(self, problem: str | None = None) -> None:
        """Record the outcome of the labels taken last: applied (None) or why not."""
        self.problem = problem
        if problem is None:
            self.version += 1
