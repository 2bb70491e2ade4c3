"""Training speed in the Train tab while the other widgets are docked behind it, the user
moving through the stack.

Every widget of the plugin is docked (one tabbed dock, Train in front), a UNet++ model is in
the model store (so the UNet++ levels widget has something to show), and Train trains a UNet++
of the *fast* preset from simulated strokes with a time budget while the viewer's slice moves
every ``--move-s`` seconds. Until 2026-12-03 the UNet++ levels and the weight-map preview
recomputed their view on every slice move behind their tabs, on the cores the training uses;
now they wait until their tab is shown (``_widgets/_onscreen.OnScreen``). Both conditions run
in turn in one session (``ungated``: ``OnScreen.allows`` forced to True, the old behaviour):
training steps done in the budget, and the recomputations of the hidden widgets.

    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/hidden_tabs.py \
        --json docs/benchmarks/hidden_tabs_cpu.json

Data: the packaged ISBI 2012 sample (Cardona et al. 2010; Arganda-Carreras et al. 2015).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import emit  # noqa: E402


def pump(seconds: float) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def train(widget, budget_s: int, moves: float, viewer) -> dict:
    """Train with a budget, moving the slice every ``moves`` seconds; steps and seconds."""
    from qtpy.QtWidgets import QApplication

    widget.form.budget.setValue(budget_s)
    widget.train_button.click()
    n, z, last = viewer.dims.nsteps[0], 0, time.monotonic()
    while widget.job is None or widget.job.running:
        QApplication.processEvents()
        time.sleep(0.02)
        if moves and time.monotonic() - last >= moves:
            z, last = (z + 1) % n, time.monotonic()
            viewer.dims.set_current_step(0, z)
    pump(0.5)
    meta = widget.saved.metadata
    return {"steps": int(meta["steps"]), "seconds": round(float(meta["seconds"]), 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget-s", type=int, default=60, help="training budget per run")
    p.add_argument("--move-s", type=float, default=2.0, help="a slice move every so many s")
    p.add_argument("--rounds", type=int, default=2, help="runs of each condition, alternated")
    p.add_argument("--json")
    args = p.parse_args()

    import napari

    from napari_unetseg._sample_data import load_sample
    from napari_unetseg._widgets import _onscreen
    from napari_unetseg._widgets.launch import launch
    from napari_unetseg._widgets.levels import LevelsWidget
    from napari_unetseg._widgets.weightmap import WeightMapWidget
    from napari_unetseg.strokes import membrane_strokes

    counts = {"levels": 0, "weight map": 0}
    done, update = LevelsWidget._done, WeightMapWidget.update_slice

    def counted_done(self, *a, **k):
        counts["levels"] += 1
        return done(self, *a, **k)

    def counted_update(self, *a, **k):
        counts["weight map"] += 1
        return update(self, *a, **k)

    LevelsWidget._done, WeightMapWidget.update_slice = counted_done, counted_update
    gated = _onscreen.OnScreen.allows

    viewer = napari.Viewer()
    docks = launch(viewer, widgets=("Train", "Segment", "Weight map preview", "UNet++ levels"))
    pump(1.0)
    image = viewer.layers[0]
    strokes = membrane_strokes(load_sample()[1], slices=(0, 1), n_strokes=40, seed=0)
    labels = viewer.add_labels(strokes, name="Labels")
    tr = docks["Train"]
    tr.image_picker.set_layer(image.name)
    tr.labels_picker.set_layer(labels.name)
    form = tr.form
    form.preset.setCurrentText("fast, CPU friendly")
    form.arch.setCurrentText("UNet++")
    form.device.setCurrentText("cpu")
    form.preview_every.setValue(3.0)
    docks["Weight map preview"].labels_picker.set_layer(labels.name)
    docks["UNet++ levels"].image_picker.set_layer(image.name)
    from napari_unetseg._widgets._layout import dock_of

    dock_of(tr).raise_()
    pump(1.0)
    first = train(tr, 10, 0.0, viewer)  # a UNet++ in the store: the levels have work
    print(f"first model: {first}", flush=True)
    rows = []
    for r in range(args.rounds):
        for name in ("ungated", "gated"):
            _onscreen.OnScreen.allows = gated if name == "gated" else (lambda self: True)
            before = dict(counts)
            got = train(tr, args.budget_s, args.move_s, viewer)
            row = {"condition": name, "round": r, **got,
                   "s_per_step": round(got["seconds"] / max(got["steps"], 1), 3),
                   **{f"{k} recomputes": counts[k] - before[k] for k in counts}}
            rows.append(row)
            print(row, flush=True)
    _onscreen.OnScreen.allows = gated
    viewer.close()
    mean = {c: float(np.mean([r["steps"] for r in rows if r["condition"] == c]))
            for c in ("ungated", "gated")}
    emit({"benchmark": "hidden_tabs", "data": "packaged ISBI sample (8 x 512 x 512), strokes "
          "on slices 0-1", "machine": f"{platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}",
          "settings": vars(args), "rows": rows, "mean_steps": mean,
          "gated_over_ungated": round(mean["gated"] / max(mean["ungated"], 1), 2)}, args.json)


if __name__ == "__main__":
    main()
