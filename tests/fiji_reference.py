"""An independent, deliberately simple scorer that follows Fiji's ISBI 2012 evaluation step by
step, to check :func:`napari_unetseg.metrics.isbi_scores` against.

Written from the algorithm of Fiji's Trainable Weka Segmentation
(``trainableSegmentation.metrics.RandError.getMaximalVRandAfterThinning(0, 1, 0.1, true)``,
``VariationOfInformation.getMaximalVInfoAfterThinning(0, 1, 0.1)`` and the classic watershed
``utils.WatershedTransform2D`` they thin with), one pixel at a time, with no numpy tricks and
sharing no code with the package:

* thresholds ``t = 0, 0.1, ...`` accumulated in double precision while ``t <= 1`` (so the
  last is 0.9999999999999999, not 1);
* per slice: ground truth foreground = ``label > t``; proposal interior = ``proposal > t``
  (the proposal is a cell-interior map, high = cell); the ground truth is split into
  4-connected segments;
* the proposal is thinned by Vincent & Soille's flooding on the binary image (interior 0,
  border 255), 4-connected: pixels sorted by value, ties in creation order (x outer, y
  inner); interior pixels flood into basins; border pixels next to a basin are queued in
  that order and the queue is processed first-in first-out, a pixel taking the one label
  among its already-processed neighbours, or becoming a watershed pixel (0) when it sees two
  labels or only watershed pixels; border pixels no basin reaches become new segments;
* Rand (N^2 normalisation, watershed pixels are singletons) and information-theoretic
  scores from the foreground-restricted contingency table, with Fiji's placeholders for
  degenerate cases; both averaged over all slices; the best over the thresholds (a later
  threshold must be strictly better).
"""

from __future__ import annotations

import math
from collections import deque

MASK, WSHED, INIT, INQUEUE = -2, 0, -1, -3


def thresholds(lo: float = 0.0, hi: float = 1.0, step: float = 0.1) -> list[float]:
    out, t = [], lo
    while t <= hi:
        out.append(t)
        t += step
    return out


def _neighbours(x: int, y: int):
    return ((x - 1, y), (x, y - 1), (x + 1, y), (x, y + 1))


def components4(fg: list[list[bool]], w: int, h: int) -> list[list[int]]:
    """4-connected components of ``fg[x][y]``, 0 = background."""
    lab = [[0] * h for _ in range(w)]
    n = 0
    for x in range(w):
        for y in range(h):
            if fg[x][y] and lab[x][y] == 0:
                n += 1
                lab[x][y] = n
                todo = deque([(x, y)])
                while todo:
                    px, py = todo.popleft()
                    for u, v in _neighbours(px, py):
                        if 0 <= u < w and 0 <= v < h and fg[u][v] and lab[u][v] == 0:
                            lab[u][v] = n
                            todo.append((u, v))
    return lab


def watershed(value: list[list[int]], w: int, h: int) -> list[list[int]]:
    """Vincent-Soille flooding of ``value[x][y]`` (4-connected), dams = 0."""
    tab = [[INIT] * h for _ in range(w)]
    records = [(value[x][y], k, x, y) for k, (x, y) in
               enumerate((x, y) for x in range(w) for y in range(h))]
    records.sort()
    current = 0
    flag = False
    fifo: deque = deque()
    i = 0
    while i < len(records):
        level = records[i][0]
        j = i
        while j < len(records) and records[j][0] == level:
            j += 1
        group = records[i:j]
        for _, _, x, y in group:
            tab[x][y] = MASK
            for u, v in _neighbours(x, y):
                if 0 <= u < w and 0 <= v < h and tab[u][v] >= WSHED:
                    fifo.append((x, y))
                    tab[x][y] = INQUEUE
                    break
        while fifo:
            x, y = fifo.popleft()
            for u, v in _neighbours(x, y):
                if not (0 <= u < w and 0 <= v < h):
                    continue
                if tab[u][v] > 0:
                    if tab[x][y] == INQUEUE or (tab[x][y] == WSHED and flag):
                        tab[x][y] = tab[u][v]
                    elif tab[x][y] > 0 and tab[x][y] != tab[u][v]:
                        tab[x][y] = WSHED
                        flag = False
                elif tab[u][v] == WSHED:
                    if tab[x][y] == INQUEUE:
                        tab[x][y] = WSHED
                        flag = True
                elif tab[u][v] == MASK:
                    tab[u][v] = INQUEUE
                    fifo.append((u, v))
        for _, _, x, y in group:
            if tab[x][y] == MASK:
                current += 1
                tab[x][y] = current
                fifo.append((x, y))
                while fifo:
                    px, py = fifo.popleft()
                    for u, v in _neighbours(px, py):
                        if 0 <= u < w and 0 <= v < h and tab[u][v] == MASK:
                            tab[u][v] = current
                            fifo.append((u, v))
        i = j
    return [[0 if tab[x][y] == INIT else tab[x][y] for y in range(h)] for x in range(w)]


def _table(gt: list[list[int]], seg: list[list[int]], w: int, h: int):
    n = 0
    pij: dict[tuple[int, int], float] = {}
    for x in range(w):
        for y in range(h):
            if gt[x][y] != 0:
                n += 1
            key = (gt[x][y], seg[x][y])
            pij[key] = pij.get(key, 0.0) + 1.0
    for key in pij:
        pij[key] /= n
    a: dict[int, float] = {}
    b: dict[int, float] = {}
    aux = 0.0
    for (i, j), p in pij.items():
        if i > 0:
            a[i] = a.get(i, 0.0) + p
            if j > 0:
                b[j] = b.get(j, 0.0) + p
            else:
                aux += p
    return n, pij, a, b, aux


def rand_fscore(gt, seg, w, h) -> float:
    n, pij, a, b, aux = _table(gt, seg, w, h)
    sum_a2 = sum(v * v for v in a.values())
    sum_b2 = sum(v * v for v in b.values()) + aux / n
    sum_ab2 = sum(p * p for (i, j), p in pij.items() if i > 0 and j > 0) + aux / n
    n2 = n * n
    tp = n2 * sum_ab2
    fp = n2 * sum_b2 - tp
    fn = n2 * sum_a2 - tp
    precision = 1.0 if fp == 0 else tp / (tp + fp)
    recall = 1.0 if fn == 0 else tp / (tp + fn)
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def info_fscore(gt, seg, w, h) -> float:
    n, pij, a, b, aux = _table(gt, seg, w, h)
    sum_a = sum(v * math.log(v) for v in a.values() if v != 0)
    sum_b = sum(v * math.log(v) for v in b.values() if v != 0) - aux * math.log(n)
    sum_ab = sum(p * math.log(p) for (i, j), p in pij.items() if i > 0 and j > 0 and p != 0)
    sum_ab -= aux * math.log(n)
    ha, hb = -sum_a, -sum_b
    hab, hba = sum_b - sum_ab, sum_a - sum_ab
    prec = (ha - hab) / ha if ha != 0 else 0.0
    rec = (hb - hba) / hb if hb != 0 else 1.0
    if ha == 0:
        prec, rec = 0.0, 1.0
    if hb == 0:
        prec, rec = 1.0, 0.0
    if prec + rec == 0:
        return math.nan
    return 2.0 * prec * rec / (prec + rec)


def slice_scores(label, proposal, t: float) -> tuple[float, float]:
    """V_Rand and V_Info after thinning of one slice; ``label[y][x]``, ``proposal[y][x]``."""
    h, w = len(label), len(label[0])
    gt_fg = [[label[y][x] > t for y in range(h)] for x in range(w)]
    border = [[0 if proposal[y][x] > t else 255 for y in range(h)] for x in range(w)]
    gt = components4(gt_fg, w, h)
    seg = watershed(border, w, h)
    return rand_fscore(gt, seg, w, h), info_fscore(gt, seg, w, h)


def best_scores(labels, proposals) -> dict[str, float]:
    """Fiji's maximal V_Rand and V_Info after thinning over a stack (lists of 2D lists)."""
    best = {"v_rand": 0.0, "v_info": 0.0}
    for t in thresholds():
        rand = info = 0.0
        for label, proposal in zip(labels, proposals, strict=True):
            r, i = slice_scores(label, proposal, t)
            rand += r
            info += i
        rand /= len(labels)
        info /= len(labels)
        if rand > best["v_rand"]:
            best["v_rand"] = rand
        if info > best["v_info"]:
            best["v_info"] = info
    return best
