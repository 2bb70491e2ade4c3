"""A tiny live line plot drawn with QPainter (no plotting library needed).

Used by the Train widget for the training / validation loss and the validation Dice.
"""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

__all__ = ["LinePlot"]

_COLORS = ("#4da6ff", "#ff9f40", "#7bd17b", "#e377c2")
_MAX_POINTS = 2000  # older points are thinned out, so drawing stays cheap


def _int(flag: object) -> int:
    return int(getattr(flag, "value", flag))  # PyQt6 enums are not ints


class LinePlot(QWidget):
    """Named series of ``(x, y)`` points drawn as lines on shared axes.

    Parameters
    ----------
    title : str
        Shown in the top left corner.
    series : sequence of str
        Names of the series, in legend order.
    y_range : (float, float), optional
        Fixed y axis (e.g. ``(0, 1)`` for Dice); by default it follows the data.
    """

    def __init__(
        self,
        title: str,
        series: tuple[str, ...],
        y_range: tuple[float, float] | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.title = title
        self.y_range = y_range
        self.data: dict[str, list[tuple[float, float]]] = {name: [] for name in series}
        self.note = ""
        self.setMinimumHeight(90)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)

    def add(self, name: str, x: float, y: float | None) -> None:
        """Append a point to series ``name`` (None and non-finite values are skipped)."""
        if y is None or not math.isfinite(y):
            return
        points = self.data[name]
        points.append((float(x), float(y)))
        if len(points) > _MAX_POINTS:
            del points[1::2]
        self.update()

    def set_note(self, text: str) -> None:
        """Text shown, wrapped, inside the empty plot (why it is empty, what will fill it)."""
        self.note = text
        self.setToolTip(text)
        self.update()

    def clear(self) -> None:
        """Remove every point."""
        for points in self.data.values():
            points.clear()
        self.update()

    def _ranges(self) -> tuple[float, float, float, float] | None:
        pts = [p for points in self.data.values() for p in points]
        if not pts:
            return None
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
        if self.y_range is not None:
            y0, y1 = self.y_range
        if x1 <= x0:
            x1 = x0 + 1
        if y1 <= y0:
            y0, y1 = y0 - 0.5, y1 + 0.5
        return x0, x1, y0, y1

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt override)
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        rect = QRectF(self.rect()).adjusted(4, 16, -4, -14)
        painter.setPen(QPen(QColor("#808080"), 1))
        painter.drawRect(rect)
        painter.drawText(QPointF(4, 12), self.title)
        ranges = self._ranges()
        if ranges is None:
            if self.note:
                flags = _int(Qt.AlignmentFlag.AlignCenter) | _int(Qt.TextFlag.TextWordWrap)
                painter.drawText(rect.adjusted(6, 2, -6, -2), flags, self.note)
            painter.end()
            return
        x0, x1, y0, y1 = ranges
        painter.drawText(QPointF(rect.left() + 2, rect.bottom() + 12), f"{y0:.3g} .. {y1:.3g}")

        def to_screen(x: float, y: float) -> QPointF:
            px = rect.left() + (x - x0) / (x1 - x0) * rect.width()
            py = rect.bottom() - (y - y0) / (y1 - y0) * rect.height()
            return QPointF(px, py)

        legend_x = rect.right()
        for i, (name, points) in enumerate(self.data.items()):
            color = QColor(_COLORS[i % len(_COLORS)])
            painter.setPen(QPen(color, 1.5))
            if len(points) == 1:
                painter.drawEllipse(to_screen(*points[0]), 2, 2)
            elif points:
                painter.drawPolyline(QPolygonF([to_screen(x, y) for x, y in points]))
            label = name if not points else f"{name} {points[-1][1]:.3g}"
            width = painter.fontMetrics().horizontalAdvance(label) + 8
            legend_x -= width
            painter.drawText(
                QRectF(legend_x, 0, width, 14), Qt.AlignmentFlag.AlignRight, label
            )
        painter.end()
