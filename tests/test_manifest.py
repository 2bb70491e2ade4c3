"""The napari manifest is valid and every python_name it names imports (no Qt needed)."""

import importlib
from pathlib import Path

import pytest

npe2 = pytest.importorskip("npe2")

MANIFEST = Path(__file__).parents[1] / "src" / "napari_unetseg" / "napari.yaml"


def _manifest():
    return npe2.PluginManifest.from_file(MANIFEST)


def test_manifest_validates_and_is_registered():
    pm = _manifest()
    assert pm.name == "napari-unetseg"
    # discovered through the napari.manifest entry point of the installed package
    assert npe2.PluginManifest.from_distribution("napari-unetseg").name == "napari-unetseg"


@pytest.mark.parametrize("command", [c.id for c in _manifest().contributions.commands])
def test_every_python_name_imports(command):
    cmd = next(c for c in _manifest().contributions.commands if c.id == command)
    module, _, attr = cmd.python_name.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    assert callable(obj)


def test_one_plugin_name_in_menus_docs_and_window():
    """napari's menus show the manifest's display_name: it is the name the docs use."""
    from napari_unetseg._widgets.launch import PLUGIN, TITLE

    root = MANIFEST.parents[2]
    assert _manifest().display_name == _manifest().name == PLUGIN == TITLE
    guide = (root / "docs" / "user-guide.md").read_text(encoding="utf-8")
    assert f"*Plugins → {PLUGIN} → Train*" in guide
    assert f"*File → Open Sample → {PLUGIN} →" in guide
