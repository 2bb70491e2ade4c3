"""The compute core must import and run without Qt, magicgui or napari."""

import subprocess
import sys

import pytest

GUI_MODULES = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "napari")


def _run(code: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_import_loads_no_gui_module():
    code = (
        "import sys, napari_unetseg\n"
        f"bad = [m for m in {GUI_MODULES!r} if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    assert _run(code).strip() == ""


CORE_MODULES = [
    "config", "normalize", "models", "weightmap", "losses", "metrics", "synthetic", "tiling",
    "inference", "augment", "data", "training", "train_config", "devices", "postprocess", "io",
    "cli", "_sample_data", "sampler", "blockwise", "cluster",
]


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_loads_no_gui_module(module):
    code = (
        "import importlib, sys\n"
        f"importlib.import_module('napari_unetseg.{module}')\n"
        f"bad = [m for m in {GUI_MODULES!r} if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    assert _run(code).strip() == ""
