"""The live loop of the Train widget: paint while it trains, see the slice on screen improve.

- :class:`LiveTraining` runs :func:`napari_unetseg.training.train` in the worker thread; labels
  painted meanwhile reach the run through :meth:`LiveTraining.update_labels` (any thread) and
  enter its training set before its next step. Every ``every_s`` seconds, and at once when
  the user moves to another slice, a copy of the model segments the slice on screen
  (:class:`Preview`); the first preview is the random-forest teacher's when the run has one
  (``TrainConfig.teacher``: fitted on the strokes in a few seconds, it is as good as the
  network's first ten seconds); when the run ends, the model it kept is previewed once more.
  Previews are spaced so that they take at most a quarter of the time
  (:data:`PREVIEW_SPACING`), also those of a user moving through the stack.
- :class:`LabelsFeed` follows the painted Labels layer (paint, fill, erase, undo, a new
  array) and hands a copy of its data to the run once the painting pauses for
  :data:`DEBOUNCE_MS`.
- :func:`show_preview` writes the preview layer without taking the selection, the active
  layer or the tool away from the layer the user paints (:func:`place_above`).
- :meth:`LiveTraining.request_model` asks the run for a copy of its model, taken between two
  steps and yielded as a :class:`ModelCopy` (e.g. for the "where to paint next" layer).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import threading
import time
import weakref
from collections.abc import Callable, Generator, Iterator
from typing import Any, NamedTuple

import numpy as np
from qtpy.QtCore import QObject, QTimer

from ..inference import InferenceConfig, predict
from ..training import TrainEvent, TrainResult, TrainRun, train
from . import _common

__all__ = [
    "DEBOUNCE_MS", "PREVIEW_S", "LabelsApplied", "LabelsFeed", "LiveTraining", "ModelCopy",
    "Preview", "kept_selection", "place_above", "put_overlay", "show_preview", "status_text",
    "weak_callback",
]

#: Default seconds between two previews of the slice on screen.
PREVIEW_S = 3.0
#: The random forest previews slices of up to this many pixels (about a second on 2 cores).
FOREST_PREVIEW_PX = 1024 * 1024
#: Quiet time after the last brush event before the labels go to the running training.
DEBOUNCE_MS = 250
#: Previews take at most 1 / (1 + PREVIEW_SPACING) of the time: after a preview that took
#: ``c`` seconds the next one waits at least ``PREVIEW_SPACING * c`` (a slow CPU, a big slice).
PREVIEW_SPACING = 3.0


def weak_callback(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn``, holding a bound method's object weakly (a child of a widget that calls the
    widget back must not keep it alive: Qt widgets in reference cycles are collected in an
    order that can crash); once the object is gone the call does nothing."""
    if not inspect.ismethod(fn):
        return fn
    ref = weakref.WeakMethod(fn)

    def call(*args: Any, **kwargs: Any) -> Any:
        method = ref()
        return None if method is None else method(*args, **kwargs)

    return call


class Preview(NamedTuple):
    """The model's labels for slice ``z`` after ``step`` steps (class values); ``by``:
    ``"network"``, or ``"forest"`` for the random-forest teacher's (the first preview)."""

    step: int
    z: int
    labels: np.ndarray
    by: str = "network"


class ModelCopy(NamedTuple):
    """A copy of the model being trained (CPU, eval mode) after ``step`` steps."""

    step: int
    model: Any
    normalization: Any
    class_values: tuple[int, ...]


class LabelsApplied(NamedTuple):
    """The run took the labels painted last (``problem`` None) or skipped them (why)."""

    version: int
    problem: str | None


def _plane(image: np.ndarray, z: int) -> tuple[int, np.ndarray]:
    """Slice ``z`` of a stack (clipped to it), or the 2D image itself (``z`` 0)."""
    if image.ndim != 3:
        return 0, np.asarray(image)
    z = int(np.clip(z, 0, image.shape[0] - 1))
    return z, np.asarray(image[z])


def _preview(model: Any, normalization: Any, class_values: Any, device: Any,
             image: np.ndarray, z: int, step: int) -> Preview | None:
    """Segment slice ``z`` with a copy of ``model`` (in the worker thread)."""
    z, plane = _plane(image, z)
    try:
        result = predict(copy.deepcopy(model), plane, normalization=normalization,
                         config=InferenceConfig(device=str(device), batch_size=4))
    except (RuntimeError, ValueError):  # e.g. out of GPU memory: skip this preview, keep training
        return None
    return Preview(step, z, _common.class_lut(class_values)[np.asarray(result.labels)])


def _forest_preview(forest: Any, normalization: Any, class_values: Any, image: np.ndarray,
                    z: int, step: int) -> Preview | None:
    """Segment slice ``z`` with the run's random-forest teacher (in the worker thread); None
    before its fit, or for a slice of more than :data:`FOREST_PREVIEW_PX` pixels."""
    z, plane = _plane(image, z)
    if plane.size > FOREST_PREVIEW_PX:
        return None
    labels = forest.predict(normalization(plane)[None])
    if labels is None:
        return None
    return Preview(step, z, _common.class_lut(class_values)[labels], "forest")


class LiveTraining:
    """A training run that takes new labels while it runs and previews the slice on screen.

    Parameters
    ----------
    image, labels : np.ndarray
        The image and the labels at the start (copies are not made: pass snapshots).
    model_config, train_config, mode
        As for :func:`napari_unetseg.training.train` (``mode`` is ``labels_mode``).
    stop : callable
        Returns True when the user asked to stop (the best model so far is kept).
    every_s : float
        Seconds between previews (0: no preview at all).
    where : callable
        The slice on screen (read in the worker thread).
    """

    def __init__(self, image: np.ndarray, labels: np.ndarray, model_config: Any,
                 train_config: Any, mode: str, *, stop: Callable[[], bool], every_s: float,
                 where: Callable[[], int], init: Any = None) -> None:
        self.image, self._labels = image, labels
        self.model_config, self.train_config, self.mode = model_config, train_config, mode
        self.stop, self.every_s, self.where = stop, float(every_s), where
        self.init = init  # where training starts (``init`` of train)
        self.run: TrainRun | None = None
        self._lock = threading.Lock()
        self._early: np.ndarray | None = None  # painted before the run existed
        self._want_model = False

    def update_labels(self, labels: np.ndarray) -> None:
        """Train on ``labels`` from the run's next step (any thread; a copy is taken)."""
        with self._lock:
            if self.run is None:
                self._early = np.array(labels, copy=True)
                return
            run = self.run
        with contextlib.suppress(ValueError):  # another shape: the run keeps its labels
            run.update_labels(labels)

    def request_model(self) -> None:
        """Ask for a :class:`ModelCopy` after the next step (any thread)."""
        self._want_model = True

    def _start(self) -> TrainRun:
        gen = train(self.image, self._labels, self.model_config, self.train_config,
                    labels_mode=self.mode, stop=self.stop, init=self.init)
        with self._lock:
            self.run, early, self._early = gen, self._early, None
        if early is not None:
            with contextlib.suppress(ValueError):
                gen.update_labels(early)
        return gen

    def events(self) -> Generator[TrainEvent | Preview | LabelsApplied, None, TrainResult]:
        """The worker's generator: training events, previews and label updates; returns the
        :class:`~napari_unetseg.training.TrainResult`."""
        run = self._start()
        seen = (0, None)
        last_t, last_z, cost = time.perf_counter(), None, 0.0
        try:
            while True:
                try:
                    event = next(run)
                except StopIteration as finished:
                    result = finished.value
                    break
                yield event
                if self._want_model:
                    self._want_model = False
                    net = copy.deepcopy(run.model).to("cpu").eval()
                    yield ModelCopy(event.step, net, run.normalization, run.class_values)
                inbox = run.labels
                if (inbox.version, inbox.problem) != seen:
                    seen = (inbox.version, inbox.problem)
                    yield LabelsApplied(*seen)
                z = self.where()
                z = (last_z or 0) if z is None else z  # None: the widget is gone
                since = time.perf_counter() - last_t
                # the spacing holds for slice moves too: a user moving through the stack
                # would otherwise leave no time to train
                if (self.every_s and since >= PREVIEW_SPACING * cost
                        and (z != last_z or since >= self.every_s)):
                    t = time.perf_counter()
                    forest = run.forest if last_z is None else None  # the first preview:
                    # the forest fitted on the strokes, while the network has barely begun
                    preview = None if forest is None else _forest_preview(
                        forest, run.normalization, run.class_values, self.image, z, event.step)
                    if preview is None:
                        preview = _preview(run.model, run.normalization, run.class_values,
                                           run.device, self.image, z, event.step)
                    last_t, last_z = time.perf_counter(), z
                    cost = last_t - t
                    if preview is not None:
                        yield preview
        finally:
            run.close()
        if self.every_s:  # the model the run kept
            steps, z = int(result.metadata.get("steps", 0)), self.where()
            preview = _preview(result.model, result.normalization, result.class_values, "cpu",
                               self.image, last_z or 0 if z is None else z,
                               steps) if steps else None
            if preview is not None:
                yield preview
        return result


class LabelsFeed(QObject):
    """Hands a copy of a Labels layer's data to ``sink`` when the painting pauses.

    Listens to the layer's ``paint`` (a stroke, a fill, an erase), ``labels_update``,
    ``set_data`` (undo, redo) and ``data`` (a new array) events through ``subscriptions``
    (cut when the widget closes); after :data:`DEBOUNCE_MS` without events it sends the data
    if it changed since the last send.
    """

    def __init__(self, subscriptions: _common.Subscriptions, sink: Callable[[np.ndarray], None],
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._subs, self._sink = subscriptions, weak_callback(sink)
        self.layer: Any = None
        self._sent: np.ndarray | None = None
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.setInterval(DEBOUNCE_MS)
        self.timer.timeout.connect(self.flush)

    def _emitters(self) -> Iterator[Any]:
        events = self.layer.events
        for name in ("paint", "labels_update", "set_data", "data"):
            if hasattr(events, name):
                yield getattr(events, name)

    def watch(self, layer: Any) -> None:
        """Follow ``layer`` (None: nothing); its data now counts as sent."""
        if self.layer is not None:
            for emitter in self._emitters():
                self._subs.disconnect(emitter, self._changed)
        self.timer.stop()
        self.layer = layer
        self._sent = None if layer is None else np.array(layer.data, copy=True)
        if layer is not None:
            for emitter in self._emitters():
                self._subs.connect(emitter, self._changed)

    def _changed(self, event: Any = None) -> None:
        self.timer.start()

    def flush(self) -> None:
        """Send the layer's data now if it differs from what was sent last."""
        self.timer.stop()
        if self.layer is None:
            return
        data = np.array(self.layer.data, copy=True)
        if self._sent is not None and data.shape == self._sent.shape and np.array_equal(
                data, self._sent):
            return
        self._sent = data
        self._sink(data)


@contextlib.contextmanager
def kept_selection(viewer: Any) -> Iterator[None]:
    """Restore the selected layers, the active layer and its mode (paint, erase, fill…)
    after the block, e.g. after napari made an added layer the only selected one."""
    selection = viewer.layers.selection
    chosen, active = set(selection), selection.active
    mode = getattr(active, "mode", None)
    try:
        yield
    finally:
        chosen = {layer for layer in chosen if layer in viewer.layers}
        if set(selection) != chosen or selection.active is not active:
            if active is not None and active in viewer.layers:
                selection.active = active
            else:
                selection.clear()
                selection.update(chosen)
        if mode is not None and active in viewer.layers and active.mode != mode:
            active.mode = mode


def place_above(viewer: Any, layer: Any, image: Any) -> None:
    """Move ``layer`` just above ``image`` in the layer list (under the strokes painted on
    it); the selection is not changed."""
    at, above = viewer.layers.index(layer), viewer.layers.index(image) + 1
    if at != above:
        viewer.layers.move(at, above if above < at else above - 1)


def put_overlay(viewer: Any, owner: str, role: str, image: Any, data: np.ndarray, kind: str,
                name: str, **kwargs: Any) -> Any:
    """:func:`~napari_unetseg._widgets._common.put_output` for a layer shown over ``image``
    while the user paints: it goes just above the image (under the strokes), and the
    selection, the active layer and its tool stay as they were."""
    with kept_selection(viewer):
        layer = _common.put_output(viewer, owner, role, image, data, kind, name, **kwargs)
        place_above(viewer, layer, image)
    return layer


def show_preview(viewer: Any, owner: str, image: Any, preview: Preview) -> Any:
    """Write ``preview`` into the owner's preview layer of ``image`` (other slices blank).

    A new preview layer goes just above the image (under the strokes being painted); the
    selection, the active layer and its tool stay as they were.
    """
    shape = tuple(image.data.shape)
    layer = _common.find_output(viewer, owner, "preview", image.name)
    if layer is not None and tuple(layer.data.shape) == shape:
        data = np.asarray(layer.data)
        if data.ndim == 3:
            data[:] = 0
            data[preview.z] = preview.labels
        else:
            data[:] = preview.labels
        layer.refresh()
        return layer
    data = np.zeros(shape, dtype=preview.labels.dtype)
    data[preview.z if data.ndim == 3 else Ellipsis] = preview.labels
    return put_overlay(viewer, owner, "preview", image, data, "labels",
                       f"{image.name} preview", opacity=0.5)


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds < 3600 else (
        f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}")


def status_text(event: TrainEvent, val_dice: float | None = None, note: str = "",
                budget_s: float | None = None) -> str:
    """The status line of a running training: step, loss, last validation Dice, time left
    (and the time trained of the budget, with one)."""
    parts = [f"step {event.step}", f"loss {event.loss:.4f}"]
    if val_dice is not None:
        parts.append(f"val Dice {val_dice:.3f}")
    if budget_s:
        parts.append(f"{_clock(event.elapsed_s)} of {_clock(budget_s)}")
    parts.append(f"{_clock(event.eta_s)} left")
    if note:
        parts.append(note)
    return " · ".join(parts)
