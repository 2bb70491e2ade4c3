"""Check the built distributions: the wheel holds the manifest and every file of the package's
data/ folder, declares the napari entry point and the hub's links; the sdist holds the hub
description. Usage: python .ci/check_dist.py dist/   (after python -m build --outdir dist)."""

from __future__ import annotations

import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = "napari_unetseg"
URLS = ("Bug Tracker", "Documentation", "Source Code", "User Support")


def check_wheel(wheel: Path) -> list[str]:
    problems = []
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(zf.read(info).decode())
        entry = zf.read(info.replace("METADATA", "entry_points.txt")).decode()
    data = sorted(p.relative_to(ROOT / "src").as_posix()
                  for p in (ROOT / "src" / PKG / "data").iterdir() if p.is_file())
    for want in [f"{PKG}/napari.yaml", *data]:
        if want not in names:
            problems.append(f"wheel lacks {want}")
    if f"napari-unetseg = {PKG}:napari.yaml" not in entry:
        problems.append("wheel has no napari.manifest entry point")
    urls = {u.split(",")[0].strip() for u in meta.get_all("Project-URL") or []}
    problems += [f"wheel metadata lacks the {u!r} link" for u in URLS if u not in urls]
    if "Framework :: napari" not in (meta.get_all("Classifier") or []):
        problems.append("wheel metadata lacks the 'Framework :: napari' classifier")
    if meta.get("Description-Content-Type") != "text/markdown" or "## Installation" not in (
            meta.get_payload() or ""):
        problems.append("wheel's long description is not the markdown hub description")
    return problems


def check_sdist(sdist: Path) -> list[str]:
    with tarfile.open(sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    return [f"sdist lacks {n}" for n in (".napari-hub/DESCRIPTION.md", ".napari-hub/config.yml",
                                         "LICENSE", f"src/{PKG}/napari.yaml") if n not in names]


def main(folder: str) -> int:
    dist = Path(folder)
    wheels, sdists = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        print(f"expected one wheel and one sdist in {dist}, found {wheels + sdists}")
        return 1
    problems = check_wheel(wheels[0]) + check_sdist(sdists[0])
    for p in problems:
        print(f"dist: {p}")
    if not problems:
        print(f"dist: {wheels[0].name} and {sdists[0].name} hold what napari and the hub need")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "dist"))
