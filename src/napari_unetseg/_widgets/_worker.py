"""Run a core generator in a napari thread worker, with a progress bar and Cancel.

The compute core does long work as generators that yield small events and return a result
(``docs/design.md``). :class:`Job` runs one in a :func:`napari.qt.threading.create_worker`
worker: every event reaches ``on_event`` in the GUI thread and may advance a
:class:`napari.utils.progress` bar, the return value reaches ``on_result``, an exception becomes
one error notification, and :meth:`Job.cancel` asks the worker to stop at the next ``yield``
(the generator is then closed, so its ``finally`` blocks run and nothing partial is returned).
When the widget that owns a job is closed (its dock closed, see :class:`._common.Subscriptions`)
or deleted (the viewer is closed mid-run), the job is cancelled and none of its callbacks runs
again.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Generator
from typing import Any

from napari.qt.threading import GeneratorWorker, create_worker
from napari.utils import progress
from qtpy.QtCore import QObject

from . import _common

__all__ = ["Job"]


class Job:
    """One generator run in a worker thread.

    Parameters
    ----------
    gen : generator
        The work, created by the caller (not yet started). It runs in the worker thread.
    description : str
        Progress bar label, also used in the error message.
    total : int
        Progress bar length (0: indeterminate).
    on_event : callable, optional
        ``on_event(event)`` in the GUI thread for every yielded value; if it returns an int,
        the progress bar is set to that many done.
    on_result : callable, optional
        ``on_result(value)`` with the generator's return value (not called after a cancel or
        an error).
    on_finished : callable, optional
        ``on_finished(job)`` once the worker has stopped, whatever the outcome.
    owner : QObject, optional
        The widget the callbacks act on (default: the object of the first callback that is a
        bound method of a QObject). Once it is closed or deleted the job is cancelled and the
        callbacks are dropped, so nothing touches a closed or deleted widget.
    """

    def __init__(
        self,
        gen: Generator[Any, Any, Any],
        description: str,
        total: int = 0,
        on_event: Callable[[Any], int | None] | None = None,
        on_result: Callable[[Any], None] | None = None,
        on_finished: Callable[[Job], None] | None = None,
        owner: QObject | None = None,
    ) -> None:
        self._gen = gen
        self.description = description
        self.cancelled = False
        self.failed: BaseException | None = None
        self._on_event, self._on_result, self._on_finished = on_event, on_result, on_finished
        self.bar = progress(total=total, desc=description)

        def run() -> Generator[Any, Any, Any]:
            return (yield from gen)

        self.worker: GeneratorWorker = create_worker(
            run, _start_thread=False, _connect={"errored": self._errored}
        )
        # napari's worker also relays errors to the notification manager (with a traceback);
        # one message is enough, and ours says what failed.
        with contextlib.suppress(AttributeError, TypeError, RuntimeError):
            self.worker.errored.disconnect(self.worker._relay_error)
        self.worker.yielded.connect(self._yielded)
        self.worker.returned.connect(self._returned)
        self.worker.finished.connect(self._finished)
        if owner is None:
            owner = next((cb.__self__ for cb in (on_event, on_result, on_finished)
                          if isinstance(getattr(cb, "__self__", None), QObject)), None)
        self._owner = None if owner is None else weakref.ref(owner)
        me = weakref.ref(self)  # the connection must not keep a finished job (and its data) alive
        self._owner_slot = lambda *_: (job := me()) is not None and job._owner_gone()
        self._subscriptions = None if owner is None else _common.Subscriptions.of(owner)
        if owner is not None:
            owner.destroyed.connect(self._owner_slot)
        if self._subscriptions is not None:
            self._subscriptions.closed.connect(self._owner_slot)
            if self._subscriptions.is_closed:  # made by a widget already closed: never runs
                self._owner_gone()

    def start(self) -> Job:
        """Start the worker thread; returns self."""
        self.worker.start()
        return self

    def cancel(self) -> None:
        """Ask the worker to stop at the generator's next ``yield``."""
        self.cancelled = True
        self.worker.quit()

    def _owned(self) -> Any:
        """The owner widget while it is alive, else None."""
        return None if self._owner is None else self._owner()

    def _owner_gone(self) -> None:
        self._on_event = self._on_result = self._on_finished = None
        if self.running:
            self.cancel()

    @property
    def running(self) -> bool:
        return self.bar is not None

    def _yielded(self, event: Any) -> None:
        if self._on_event is None:
            return
        done = self._on_event(event)
        if done is not None and self.bar is not None:
            self.bar.n = int(done)
            self.bar.refresh()

    def _returned(self, value: Any) -> None:
        if self._on_result is not None and not self.cancelled:
            try:
                self._on_result(value)
            except (ValueError, TypeError, RuntimeError) as e:
                _common.error(f"{self.description}: could not show the result: {e}", self._owned())

    def _errored(self, exc: BaseException) -> None:
        self.failed = exc
        _common.error(f"{self.description} failed: {exc}", self._owned())

    def _finished(self) -> None:
        self._gen.close()  # a cancelled generator runs its finally blocks now
        owner = None if self._owner is None else self._owner()
        if owner is not None:
            with contextlib.suppress(TypeError, RuntimeError):  # RuntimeError: already deleted
                owner.destroyed.disconnect(self._owner_slot)
        if self._subscriptions is not None:
            with contextlib.suppress(TypeError, RuntimeError):
                self._subscriptions.closed.disconnect(self._owner_slot)
            self._subscriptions = None
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self._on_finished is not None:
            self._on_finished(self)
