"""The interactive loop as a benchmark: a few simulated strokes, train, score; a random forest
(scikit-image multiscale features + scikit-learn RandomForestClassifier(100), the pixel
classifier of ilastik / napari-convpaint / APOC) on the same strokes in the same run.

Tasks (``--tasks``):

* ``isbi``: ISBI 2012, strokes (``strokes.membrane_strokes``: 3-px along membranes = 1, 5-px in
  cells = 2) on ``--slices`` (default 0 and 1) of the training stack, V_Rand / V_Info on slices
  25-29 (``metrics.isbi_scores``, threshold sweep).
* ``synthetic``: the same on the project's synthetic touching cells (``synthetic``), scored on
  slices it was not painted on.
* ``objects``: mitochondria-like objects (``synthetic.organelles``), 5-px strokes in the
  background (1) and inside objects (2), IoU of the objects at 0.5.

The network trains once per task with snapshots of the model at ``--marks`` seconds of
training, scored afterwards (scoring time does not count). Time to first preview: from the
call that starts training until one 512x512 slice is predicted by the model after
``--preview-s`` seconds of training (the random forest: fit plus one slice); with the forest
teacher (``teacher="forest"``, the fast preset's) the live loop's first preview is the
teacher's, so it is timed (the first training event, i.e. the teacher's fit and one step,
plus one slice predicted by the forest) and scored as ``first_preview``. The strokes sweep
(``--sweep``) trains both methods on 10, 20, 40, 80 strokes per slice and scores the network
at ``--sweep-s`` seconds.

Clocks: ``--clock wall`` (the figures for the docs, on an idle machine) or ``--clock cpu``
(process CPU time / torch threads, with ``OMP_WAIT_POLICY=PASSIVE`` so that threads waiting
for a busy core do not burn CPU time; about the wall time of an idle machine, for
development on a shared one).

    python benchmarks/scribbles.py --clock wall --json docs/benchmarks/scribbles_cpu.json
    python benchmarks/scribbles.py --clock cpu --tasks isbi --marks 10,30,60 --no-sweep

Dependencies: scikit-learn (``pip install napari-unetseg[benchmark]``). Data: ISBI 2012 in
../shared/data/isbi2012 (or --data): Arganda-Carreras et al. 2015, images from Cardona et al.
2010.
"""

from __future__ import annotations

import os
import sys

if "cpu" in sys.argv:  # before torch starts its threads: waiting threads sleep
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import platform  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _loop import (  # noqa: E402
    forest_probability,
    load_isbi,
    make_clock,
    membrane_scores,
    object_scores,
    probability,
    rf_fit,
    rf_proba,
)
from _recipes import RECIPES, deep_run  # noqa: E402
from _record import emit  # noqa: E402

from napari_unetseg.strokes import membrane_strokes, object_strokes  # noqa: E402
from napari_unetseg.synthetic import membrane_labels, organelles, touching_cells  # noqa: E402


def task_data(name: str, args) -> dict:
    """Image (painted stack), strokes, scored slices and their ground truth, and the whole
    unlabelled stack (self-supervision may use its images, never labels of scored slices)."""
    if name == "isbi":
        d = load_isbi(args.data)
        strokes = membrane_strokes(d["labels"][:25], slices=args.slices, n_strokes=args.strokes,
                                   seed=args.seed)
        if args.dense:  # reference: every pixel of the painted slices labelled
            dense = np.where(d["labels"][:25] == 0, 1, 2).astype(np.uint8)
            strokes = np.where((strokes > 0).any((1, 2))[:, None, None], dense, 0)
        stack = [d["image"]] + ([d["unlabelled"]] if "unlabelled" in d else [])
        return {"image": d["image"][:25], "strokes": strokes, "test": d["image"][25:30],
                "gt": d["labels"][25:30], "kind": "membrane", "stack": np.concatenate(stack)}
    if name == "synthetic":
        img, inst = touching_cells((8, 512, 512), 150, seed=args.seed + 1, gap=2)
        gt = membrane_labels(inst)
        img = (img * 255).astype(np.uint8)
        strokes = membrane_strokes(gt[:5], slices=args.slices, n_strokes=args.strokes,
                                   seed=args.seed)
        return {"image": img[:5], "strokes": strokes, "test": img[5:], "gt": gt[5:],
                "kind": "membrane", "stack": img}
    if name == "objects":
        img, obj = organelles((8, 512, 512), 25, seed=args.seed + 2, size=20, n_cells=40)
        img = (img * 255).astype(np.uint8)
        strokes = object_strokes(obj[:5], slices=args.slices, n_strokes=args.strokes,
                                 seed=args.seed)
        return {"image": img[:5], "strokes": strokes, "test": img[5:], "gt": obj[5:],
                "kind": "objects", "stack": img}
    raise SystemExit(f"unknown task {name!r}")


def _score(task: dict, prob_of: dict[int, np.ndarray]) -> dict:
    if task["kind"] == "membrane":
        return membrane_scores(prob_of[1], task["gt"])
    return object_scores(prob_of[2], task["gt"])


def _value(task: dict) -> int:
    return 1 if task["kind"] == "membrane" else 2


def random_forest(task: dict, clock, seed: int) -> dict:
    t0 = clock()
    rf = rf_fit(task["image"], task["strokes"], seed=seed)
    fit_s = clock() - t0
    rf_proba(rf, task["test"][:1])
    preview_s = clock() - t0
    v = _value(task)
    scores = _score(task, {v: rf_proba(rf, task["test"], v)})
    return {"method": "random forest", "fit_s": round(fit_s, 2),
            "first_preview_s": round(preview_s, 2), **scores}


def deep(task: dict, args, clock, marks: list[float], recipe: str | None = None) -> dict:
    recipe = recipe or args.recipes[0]
    marks = sorted({*marks, args.preview_s})
    run = deep_run(task, recipe, args.set, marks, clock, args.seed)
    v = _value(task)
    rows = []
    preview = None
    for snap in run.snapshots:
        t0 = clock()
        prob = probability(snap, task["test"], v, tta=args.tta)
        if snap.at_s == args.preview_s:
            one = clock()
            probability(snap, task["test"][:1], v)
            preview = run.prep_s + snap.at_s + (clock() - one)
        if args.save:
            args.save.mkdir(parents=True, exist_ok=True)
            np.save(args.save / f"{task['name'].replace('/', '_')}_{recipe}_{snap.at_s:g}s.npy",
                    prob.astype(np.float16))
        row = {"at_s": snap.at_s, "step": snap.step, **_score(task, {v: prob}),
               "score_s": round(clock() - t0, 1)}
        rows.append(row)
        print(f"  {task['name']:9s} {recipe} @{snap.at_s:>5}s step {snap.step:5d} "
              f"{ {k: v for k, v in row.items() if k not in ('at_s', 'step')} }", flush=True)
    first = None if preview is None else {
        "by": "network", "at_s": round(preview, 2),
        **{k: r[k] for r in rows if r["at_s"] == args.preview_s for k in r if k != "at_s"}}
    if run.forest is not None and run.forest.forest is not None:  # the live loop's first
        snap = run.snapshots[0]  # preview is the forest teacher's (_widgets/_live.py)
        one = clock()
        forest_probability(run.forest, snap.normalization, snap.class_values,
                           task["test"][:1], v)
        preview = run.prep_s + run.first_s + (clock() - one)
        prob = forest_probability(run.forest, snap.normalization, snap.class_values,
                                  task["test"], v)
        first = {"by": "forest", "at_s": round(preview, 2), **_score(task, {v: prob})}
        print(f"  {task['name']:9s} {recipe} first preview (forest) {first}", flush=True)
    return {"method": f"network ({recipe})", "prep_s": round(run.prep_s, 2),
            "steps": run.steps, "first_preview_s": None if preview is None else round(preview, 2),
            "first_preview": first, "curve": rows, "settings": run.settings}


def sweep(args, clock) -> list[dict]:
    out = []
    for n in args.sweep_strokes:
        a = argparse.Namespace(**{**vars(args), "strokes": n})
        task = {**task_data("isbi", a), "name": f"isbi/{n}"}
        painted = float((task["strokes"][list(args.slices)] > 0).mean())
        rf = random_forest(task, clock, args.seed)
        net = deep(task, a, clock, [args.sweep_s])
        out.append({"strokes_per_slice": n, "painted_fraction": round(painted, 4),
                    "random_forest": {k: rf[k] for k in ("v_rand", "v_info")},
                    "network": {k: net["curve"][-1][k] for k in ("v_rand", "v_info")}})
        print(f"sweep {n:3d} strokes ({painted:.2%}) RF {out[-1]['random_forest']} "
              f"net@{args.sweep_s}s {out[-1]['network']}", flush=True)
    return out


def needed(rows: list[dict], key: str, goals: tuple[float, ...]) -> dict:
    """Fewest strokes per slice (of the sweep) that reach each goal of ``key``, per method."""
    out = {}
    for method in ("random_forest", "network"):
        out[method] = {str(g): next((r["strokes_per_slice"] for r in rows
                                     if r[method][key] >= g), None) for g in goals}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    p.add_argument("--tasks", default="isbi,synthetic,objects")
    p.add_argument("--recipe", default="scribbles",
                   help=f"network recipe(s), comma-separated, each trained in turn after the "
                        f"forest: {', '.join(RECIPES)}")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe setting (repeatable)")
    p.add_argument("--marks", default="10,30,60,120,300",
                   help="training seconds at which the network is scored (isbi)")
    p.add_argument("--task-s", type=float, default=60.0,
                   help="training seconds of the synthetic and object tasks")
    p.add_argument("--preview-s", type=float, default=4.0,
                   help="training seconds before the first preview")
    p.add_argument("--slices", default="0,1", help="painted slices")
    p.add_argument("--strokes", type=int, default=40, help="strokes per painted slice")
    p.add_argument("--no-sweep", dest="do_sweep", action="store_false")
    p.add_argument("--sweep-strokes", default="10,20,40,80")
    p.add_argument("--sweep-s", type=float, default=60.0)
    p.add_argument("--dense", action="store_true",
                   help="reference: label every pixel of the painted ISBI slices")
    p.add_argument("--tta", action="store_true", help="score with flip TTA (all snapshots)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--data", type=Path)
    p.add_argument("--save", type=Path,
                   help="save the scored slices' probabilities here (.npy per snapshot)")
    p.add_argument("--json", help="write the JSON record here too")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.slices = tuple(int(s) for s in args.slices.split(","))
    args.recipes = args.recipe.split(",")
    if set(args.recipes) - set(RECIPES):
        p.error(f"unknown recipe in {args.recipe!r}; known: {', '.join(RECIPES)}")
    args.sweep_strokes = [int(s) for s in args.sweep_strokes.split(",")]
    clock = make_clock(args.clock)
    record = {
        "benchmark": "scribbles", "clock": args.clock,
        "machine": f"{platform.processor() or platform.machine()}, "
                   f"{torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "settings": {k: str(v) for k, v in vars(args).items()}, "tasks": {},
    }
    for name in args.tasks.split(","):
        task = {**task_data(name, args), "name": name}
        painted = float((task["strokes"][list(args.slices)] > 0).mean())
        rf = {} if args.dense else random_forest(task, clock, args.seed)
        print(f"{name:9s} random forest {rf}", flush=True)
        marks = ([float(m) for m in args.marks.split(",")] if name == "isbi"
                 else [args.task_s])
        nets = [deep(task, args, clock, marks, r) for r in args.recipes]
        record["tasks"][name] = {"painted_fraction": round(painted, 4), "rows": [rf, *nets]}
    if args.do_sweep and "isbi" in args.tasks:
        rows = sweep(args, clock)
        record["strokes_sweep"] = {"rows": rows, "seconds": args.sweep_s,
                                   "needed_v_rand": needed(rows, "v_rand", (0.85, 0.9, 0.93))}
    emit(record, args.json)


if __name__ == "__main__":
    main()
