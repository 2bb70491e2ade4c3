""""Where to paint next": the model's uncertainty as a layer, and a jump to the worst slice.

A panel of the Train widget. *Where to paint next* computes a per-pixel uncertainty map of the
whole stack (:mod:`napari_unetseg.uncertainty`) with the current model (a copy of the one being
trained, taken between two steps, or the trained / loaded one) in a worker thread, and shows it
as an Image layer over the image: transparent where the model is surest (the surer half of the
pixels, :func:`display_limits`), yellow to red where it is least sure, so the image stays
visible. Slices are ranked by their mean uncertainty and visited in
:func:`napari_unetseg.uncertainty.visit_order`: *Worst slice* moves the viewer to the most
uncertain slice with no strokes yet, and each further click to the next one, at least
:data:`~napari_unetseg.uncertainty.SPREAD` slices from those proposed before (then the rest,
the painted slices last). Entropy is the measure offered first: one forward pass (flip TTA
takes four), and it points at the model's errors as well as flip TTA does in
``benchmarks/where_to_paint.py``. *Unsure cell boundaries* (:mod:`napari_unetseg.ridges`)
points at what the cells' scores count instead (gaps, organelle rims). The selection and the
tool of the layer being painted are left alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.utils.colormaps import Colormap
from qtpy.QtWidgets import QComboBox, QGridLayout, QLabel, QPushButton, QWidget

from ..uncertainty import rank_slices, uncertainty, visit_order
from . import _common
from ._live import put_overlay, weak_callback
from ._worker import Job

if TYPE_CHECKING:
    import napari

__all__ = ["COLORMAP", "MEASURES", "PaintNextPanel", "display_limits"]

#: Shown name -> :mod:`napari_unetseg.uncertainty` method; the first is the default.
MEASURES = {"entropy": "entropy", "unsure cell boundaries": "ridges",
            "flip-TTA disagreement": "tta", "UNet++ heads disagreement": "heads"}
#: Transparent where the model is sure, then yellow, orange, red.
COLORMAP = Colormap(
    colors=[[1.0, 1.0, 0.0, 0.0], [1.0, 0.85, 0.0, 0.55], [1.0, 0.45, 0.0, 0.8],
            [1.0, 0.0, 0.0, 0.95]],
    name="unetseg uncertainty",
)


class PaintNextPanel(QWidget):
    """Uncertainty layer, slice ranking and jump, for the Train widget.

    Parameters
    ----------
    viewer : napari.Viewer
    owner : str
        Owner id of the widget (marks the layer it makes).
    request : callable
        ``request()`` asks the Train widget for a model: it answers by calling
        :meth:`compute` (at once, or from the worker's next event while training runs), or
        returns False after telling the user why not.
    painted : callable, optional
        ``painted()`` gives the slices that hold strokes (visited last).
    """

    def __init__(self, viewer: napari.Viewer, owner: str, request: Callable[[], bool],
                 parent: QWidget | None = None,
                 painted: Callable[[], Iterable[int]] | None = None) -> None:
        super().__init__(parent)
        self.viewer, self.owner, self._request = viewer, owner, weak_callback(request)
        self._painted = weak_callback(painted) if painted is not None else None
        self.job: Job | None = None
        self.ranking: list[tuple[int, float]] = []
        self.order: list[int] = []
        self._next = 0
        self._image: Any = None
        self.measure = QComboBox()
        self.measure.addItems(list(MEASURES))
        self.measure.setToolTip("how the uncertainty is measured (see the user guide)")
        self.compute_button = QPushButton("Where to paint next")
        self.compute_button.setToolTip("show where the current model is unsure, over the "
                                       "whole stack")
        self.jump_button = QPushButton("Worst slice")
        self.jump_button.setToolTip("go to the most uncertain slice without strokes (again: "
                                    "the next one, a few slices away)")
        self.jump_button.setEnabled(False)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        grid = QGridLayout(self)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.addWidget(QLabel("uncertainty"), 0, 0)
        grid.addWidget(self.measure, 0, 1)
        grid.addWidget(self.compute_button, 1, 0)
        grid.addWidget(self.jump_button, 1, 1)
        grid.addWidget(self.status, 2, 0, 1, 2)
        self.compute_button.clicked.connect(self.ask)
        self.jump_button.clicked.connect(self.jump)

    def method(self) -> str:
        return MEASURES[self.measure.currentText()]

    def ask(self) -> bool:
        """Ask for a model to compute the map with (the button)."""
        if self.job is not None and self.job.running:
            return False
        return self._request()

    def compute(self, model: Any, normalization: Any, image: Any,
                device: str = "cpu") -> Job | None:
        """Compute the chosen measure of ``model`` over the ``image`` layer in a worker."""
        if self.job is not None and self.job.running:
            return None
        if image is None or image.name not in self.viewer.layers:
            _common.error("Where to paint next: the image layer is gone.")
            return None
        try:
            gen = uncertainty(model, image.data, normalization=normalization,
                              methods=(self.method(),), device=device)
        except (ValueError, TypeError) as e:
            _common.error(f"Where to paint next: {e}")
            return None
        self._image = image
        self.status.setText("measuring the uncertainty…")
        self.job = Job(gen, "Where to paint next", on_event=self._progress,
                       on_result=self._show, owner=self)
        return self.job.start()

    def _progress(self, event: Any) -> int:
        if self.job is not None and self.job.bar is not None:
            self.job.bar.total = event.total
        return event.done

    def _show(self, result: Any) -> None:
        image = self._image
        if image is None or image.name not in self.viewer.layers:
            return
        data = result.maps[self.method()]
        limits = display_limits(data)
        layer = put_overlay(self.viewer, self.owner, "uncertainty", image, data, "image",
                            f"{image.name} uncertainty", colormap=COLORMAP,
                            blending="translucent", opacity=0.8, contrast_limits=limits)
        layer.contrast_limits = limits
        self.ranking = rank_slices(data, result.slices if data.ndim == 3 else None)
        painted = self._painted() if self._painted is not None else ()
        self.order = visit_order(self.ranking, painted=painted or ())
        self._next = 0
        self.jump_button.setEnabled(data.ndim == 3 and len(self.ranking) > 1)
        worst = ", ".join(str(z) for z in self.order[:3])
        self.status.setText(f"paint next: slices {worst}" if data.ndim == 3
                            else f"mean uncertainty {self.ranking[0][1]:.3f}")

    def jump(self) -> int | None:
        """Show the next slice of :attr:`order` (the worst unpainted first); returns its
        index."""
        image = self._image
        if not self.order or image is None or image.name not in self.viewer.layers:
            return None
        z = self.order[self._next % len(self.order)]
        self._next += 1
        rank, value = next((i + 1, v) for i, (s, v) in enumerate(self.ranking) if s == z)
        world = image.data_to_world([z, 0, 0])[0]
        self.viewer.dims.set_point(0, world)
        self.status.setText(f"slice {z}: uncertainty rank {rank} of {len(self.ranking)} "
                            f"(mean {value:.3f})")
        return z


def display_limits(data: np.ndarray) -> tuple[float, float]:
    """Contrast limits of an uncertainty map: transparent up to its median, red from its
    99.5th percentile. A model unsure everywhere (early in training, or a two-class entropy,
    which is 0.6 at p = 0.85) would otherwise colour the whole slice; this way the surer half
    of the pixels stays clear and the colour says where the model is least sure."""
    if not data.size:
        return 0.0, 1.0
    low, top = (float(v) for v in np.percentile(data, [50.0, 99.5]))
    return low, max(top, low + 1e-3)
