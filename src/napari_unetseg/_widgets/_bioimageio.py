"""Export bioimage.io… (Train): the details dialog and the export in a worker.

The export runs in a worker (:class:`._worker.Job`): bioimageio.spec validates and packages for
a few seconds. The dialogs are module functions so that tests can replace them. Loading a
package is :func:`._files.load_with_dialog`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qtpy.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QLineEdit,
    QPlainTextEdit,
    QWidget,
)

from ..bioimageio_export import DEFAULT_LICENSE, export_steps, require_bioimageio
from ..io import SavedModel
from . import _common, _files
from ._worker import Job

__all__ = ["ask_details", "ask_package_path", "start_export"]

LICENSES = (DEFAULT_LICENSE, "CC-BY-NC-4.0", "CC0-1.0", "MIT", "BSD-3-Clause")


def ask_package_path(parent: QWidget | None) -> str:
    """Ask where to write the package; '' when cancelled. Overwriting is asked separately."""
    path, _ = QFileDialog.getSaveFileName(
        parent, "Export bioimage.io model package", "model.zip",
        "bioimage.io model package (*.zip);;All files (*)",
        options=QFileDialog.Option.DontConfirmOverwrite,
    )
    return path


class DetailsDialog(QDialog):
    """Name, authors, license and training data of the package."""

    def __init__(self, parent: QWidget | None, training_data: str) -> None:
        super().__init__(parent)
        self.setWindowTitle("bioimage.io package")
        self.name = QLineEdit()
        self.name.setPlaceholderText("default: the architecture and the classes")
        self.authors = QLineEdit("napari-unetseg user")
        self.authors.setToolTip("names, separated by commas")
        self.license = QComboBox()
        self.license.setEditable(True)
        self.license.addItems(list(LICENSES))
        self.license.setToolTip("SPDX identifier of the weights' license; choose one the "
                                "training data's terms allow")
        self.training = QPlainTextEdit(training_data)
        self.training.setToolTip("what the model was trained on, its source and its terms")
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok
                                   | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form = QFormLayout(self)
        form.addRow("name", self.name)
        form.addRow("authors", self.authors)
        form.addRow("license", self.license)
        form.addRow("training data", self.training)
        form.addRow(buttons)

    def values(self) -> dict[str, Any]:
        return {"name": self.name.text().strip() or None,
                "authors": [a.strip() for a in self.authors.text().split(",") if a.strip()],
                "license": self.license.currentText().strip(),
                "training_data": self.training.toPlainText().strip()}


def ask_details(parent: QWidget | None, training_data: str) -> dict[str, Any] | None:
    """The package details the user confirmed, or None when cancelled."""
    dialog = DetailsDialog(parent, training_data)
    return dialog.values() if dialog.exec() == QDialog.DialogCode.Accepted else None


def start_export(owner: Any, saved: SavedModel | None, sample: Any, training_data: str
                 ) -> Job | None:
    """Ask for a path and the details, then write the package in a worker; ``owner`` gets
    the progress in its ``status`` label and keeps the job as ``owner.bioimageio_job``.
    Returns the job, or None (after a message)."""
    if saved is None:
        _common.error("Export bioimage.io: there is no model yet; train one first.", owner)
        return None
    try:
        require_bioimageio()
    except ImportError as e:
        _common.error(f"Export bioimage.io: {e}", owner)
        return None
    text = ask_package_path(owner)
    if not text:
        return None
    path = Path(text) if Path(text).suffix else Path(text).with_suffix(".zip")
    overwrite = path.exists()
    if overwrite and not _files.confirm_overwrite(owner, path):
        return None
    details = ask_details(owner, training_data)
    if details is None:
        return None
    gen = export_steps(saved, path, sample=sample, overwrite=overwrite, **details)

    def done(written: Path) -> None:
        _common.info(f"Exported the bioimage.io package {written}", owner)

    job = Job(gen, "bioimage.io export", on_event=lambda msg: owner.status.setText(msg),
              on_result=done, owner=owner)
    owner.bioimageio_job = job  # the widget keeps its job alive (Qt holds slots weakly)
    return job.start()
