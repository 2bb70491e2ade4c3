"""Questions the widgets ask before doing something the user may not mean.

Module functions, so that tests replace them (a modal dialog would block a test).
"""

from __future__ import annotations

from qtpy.QtWidgets import QMessageBox, QWidget

__all__ = ["DENSE_COVERAGE", "ask_dense"]

#: Sparse scribbles rarely cover this much of an image; labels that do look dense.
DENSE_COVERAGE = 0.5


def ask_dense(parent: QWidget | None, name: str, coverage: float) -> str:
    """Labels ``name`` cover ``coverage`` (0..1) of the image in sparse mode: train them as
    dense labels? Returns ``"dense"``, ``"sparse"`` (train as asked) or ``""`` (cancel)."""
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Question)
    box.setWindowTitle("Dense-looking labels")
    box.setText(f"Labels {name!r} cover {coverage:.0%} of the image. Train them as dense "
                "labels (every value a class)?")
    box.setInformativeText(
        "In sparse mode 0 means unlabelled and values 1, 2, ... are classes: meant for a few "
        "painted strokes. A ground truth painted everywhere is dense.")
    dense = box.addButton("Train as dense", QMessageBox.ButtonRole.YesRole)
    sparse = box.addButton("Keep sparse", QMessageBox.ButtonRole.NoRole)
    box.addButton(QMessageBox.StandardButton.Cancel)
    box.setDefaultButton(dense)
    box.exec()
    clicked = box.clickedButton()
    return "dense" if clicked is dense else "sparse" if clicked is sparse else ""
