"""Draw the benchmark JSON records as one SVG bar chart (no plotting library needed).

    python benchmarks/plot.py --infer docs/benchmarks/infer_cpu.json \
        --train docs/benchmarks/train_cpu.json --levels docs/benchmarks/levels_cpu.json \
        -o docs/images/performance.svg

Each panel shows one benchmark's numbers from a single run, so bars within a panel compare
methods measured side by side on the same machine; inference bars also give each method's
speed ratio to the record's baseline (MONAI, or the naive loop without it).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from xml.sax.saxutils import escape

W, BAR_H, GAP, LEFT, RIGHT = 720, 18, 6, 210, 160
COLORS = ["#3b7dd8", "#e07b39", "#4aa564", "#b04fb0", "#888888", "#c9a227", "#2aa7a7"]
Row = tuple[str, float] | tuple[str, float, str]  # label, value, optional note after the unit


def _json_from(path: Path) -> dict:
    """A JSON record from a file that is JSON or ends with a JSON line (the scripts' stdout)."""
    text = path.read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        last = [ln for ln in text.splitlines() if ln.startswith("{")][-1]
        return json.loads(last)


def panel(title: str, rows: list[Row], unit: str, y: int) -> tuple[str, int]:
    top = max((r[1] for r in rows), default=1.0) or 1.0
    out = [f'<text x="10" y="{y + 14}" font-weight="bold">{escape(title)}</text>']
    y += 24
    for i, (label, value, *note) in enumerate(rows):
        w = (W - LEFT - RIGHT) * value / top
        color = COLORS[i % len(COLORS)]
        out.append(f'<text x="{LEFT - 8}" y="{y + 13}" text-anchor="end">{escape(label)}</text>')
        out.append(f'<rect x="{LEFT}" y="{y}" width="{w:.1f}" height="{BAR_H}" fill="{color}"/>')
        text = f"{value:.3g} {unit}" + (f", {note[0]}" if note else "")
        out.append(f'<text x="{LEFT + w + 6:.1f}" y="{y + 13}">{escape(text)}</text>')
        y += BAR_H + GAP
    return "\n".join(out), y + 14


def infer_rows(rec: dict) -> list[tuple[str, list[Row]]]:
    """Per input: (method, MP/s, "N.NN× baseline") rows (benchmarks/infer_speed.py)."""
    base = rec.get("ratio_baseline")
    groups: dict[str, list[Row]] = {}
    for r in rec["results"]:
        row: Row = (r["method"], float(r["mpix_per_s"]))
        if base and r.get("ratio") is not None:
            row = (*row, f"{r['ratio']:.2f}× {base}")
        groups.setdefault(r["input"], []).append(row)
    return list(groups.items())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--infer", type=Path)
    p.add_argument("--train", type=Path)
    p.add_argument("--levels", type=Path)
    p.add_argument("--machine", default="2-core x86-64 CPU")
    p.add_argument("-o", "--output", type=Path, required=True)
    args = p.parse_args()
    parts, y = [], 10
    if args.infer:
        for name, rows in infer_rows(_json_from(args.infer)):
            title = f"Inference, {name}, uint8 to labels ({args.machine})"
            svg, y = panel(title, rows, "MP/s", y)
            parts.append(svg)
    if args.train:
        rec = _json_from(args.train)
        rows = [(k, float(v)) for k, v in rec["images_per_s"].items()]
        svg, y = panel(f"Training images/s ({args.machine})", rows, "img/s", y)
        parts.append(svg)
    if args.levels:
        rec = _json_from(args.levels)
        rows = [(f"UNet++ {r['level']}", float(r["ms_per_slice"])) for r in rec["rows"]]
        svg, y = panel(f"UNet++ time per 512² slice ({args.machine})", rows, "ms", y)
        parts.append(svg)
    body = "\n".join(parts)
    args.output.write_text(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{y}" '
        f'font-family="sans-serif" font-size="12">\n'
        f'<rect width="100%" height="100%" fill="white"/>\n{body}\n</svg>\n'
    )
    print("wrote", args.output)


if __name__ == "__main__":
    main()
