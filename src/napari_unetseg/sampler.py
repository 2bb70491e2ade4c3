"""Random training patches and fixed validation patches, cropped on the training device."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .data import Batch, TrainingData

__all__ = ["PatchSampler"]


class PatchSampler:
    """Random training patches and a fixed grid of validation patches, cropped on a device.

    Positions are drawn with a ``torch.Generator`` on ``device`` and the crops are one
    gather each, so a GPU batch needs no host round trip. Sparse labels: each patch is
    centred (with a jitter of a quarter patch) on a labelled pixel of a class drawn
    uniformly, so rare scribbles are seen as often as common ones. Dense and instance
    labels: uniform positions on a slice with training labels.

    Parameters
    ----------
    data : TrainingData
    patch : int
        Side of the input patches (at most the padded image side).
    device : torch.device or str
        Where the data, the generator and the crops live.
    seed : int
        Seed of the position generator.
    """

    def __init__(self, data: TrainingData, patch: int, device: Any, seed: int = 0) -> None:
        h, w = data.image.shape[-2:]
        if not 1 <= patch <= min(h, w):
            raise ValueError(f"patch {patch} does not fit the padded image {h}x{w}")
        self.data, self.patch, self.device = data, patch, torch.device(device)
        self.generator = torch.Generator(self.device).manual_seed(seed)
        to = lambda a: None if a is None else torch.from_numpy(a).to(self.device)  # noqa: E731
        self.image, self.target = to(data.image), to(data.train_target)
        self.weight = to(data.weight)
        self.slices = torch.tensor(data.train_slices, device=self.device)
        self.centres = data.labels_mode == "sparse"
        if self.centres:
            flat = self.target.flatten()
            idx = torch.nonzero(flat >= 0).squeeze(1)
            order = torch.argsort(flat[idx], stable=True)
            self.coords = idx[order]
            counts = torch.bincount(flat[idx].long(), minlength=data.num_classes)
            self.present = torch.nonzero(counts).squeeze(1)
            self.counts = counts
            self.offsets = torch.cumsum(counts, 0) - counts

    def _rand(self, n: int) -> torch.Tensor:
        return torch.rand(n, generator=self.generator, device=self.device)

    def positions(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Slice index and top-left corner of ``n`` random training patches."""
        _, _, h, w = self.image.shape
        p = self.patch
        if not self.centres:
            s = self.slices[(self._rand(n) * len(self.slices)).long()]
            y0 = (self._rand(n) * (h - p + 1)).long()
            x0 = (self._rand(n) * (w - p + 1)).long()
            return s, y0, x0
        c = self.present[(self._rand(n) * len(self.present)).long()]
        k = self.offsets[c] + (self._rand(n) * self.counts[c]).long()
        flat = self.coords[k]
        s, rest = flat // (h * w), flat % (h * w)
        jit = max(1, (p - 2 * self.data.margin) // 4)
        y0 = rest // w - p // 2 + (self._rand(n) * (2 * jit + 1)).long() - jit
        x0 = rest % w - p // 2 + (self._rand(n) * (2 * jit + 1)).long() - jit
        return s, y0.clamp(0, h - p), x0.clamp(0, w - p)

    def crop(self, s: torch.Tensor, y0: torch.Tensor, x0: torch.Tensor, target=None) -> Batch:
        """Image ``(n, C, P, P)``, long target ``(n, P, P)`` and weight crops at the corners.

        Rows are picked with ``index_select`` and columns with ``gather`` (two kernels per
        array; multi-axis advanced indexing is far slower on the CPU).
        """
        n, p = s.shape[0], self.patch
        num, ch, h, w = self.image.shape
        ar = torch.arange(p, device=self.device)
        rows = (s[:, None] * h + y0[:, None] + ar).reshape(-1)
        cols = (x0[:, None] + ar)[:, None, :].expand(n, p, p)

        def take(t: torch.Tensor) -> torch.Tensor:
            return torch.gather(t.reshape(num * h, w).index_select(0, rows).view(n, p, w), 2, cols)

        img = self.image.transpose(0, 1).reshape(ch, num * h, w).index_select(1, rows)
        img = torch.gather(img.view(ch, n, p, w), 3, cols.expand(ch, n, p, p))
        tgt = take(self.target if target is None else target).long()
        wgt = None if self.weight is None else take(self.weight)
        return img.transpose(0, 1).contiguous(), tgt, wgt

    def sample(self, n: int) -> Batch:
        """A random training batch of ``n`` patches."""
        return self.crop(*self.positions(n))

    def validation_batches(self, batch_size: int, max_patches: int = 64) -> list[Batch]:
        """Patches tiling the validation labels (fixed; evenly thinned to ``max_patches``)."""
        d = self.data
        if d.val_target is None:
            return []
        m, p = d.margin, self.patch
        step = p - 2 * m
        h, w = d.image.shape[-2:]

        def starts(size: int) -> list[int]:
            return sorted({*range(m, size - m - step + 1, step), size - m - step})

        wins = [(s, ty - m, tx - m) for s in d.val_slices for ty in starts(h) for tx in starts(w)
                if (d.val_target[s, ty : ty + step, tx : tx + step] >= 0).any()]
        if len(wins) > max_patches:
            wins = [wins[i] for i in np.linspace(0, len(wins) - 1, max_patches).astype(int)]
        val = torch.from_numpy(d.val_target).to(self.device)
        out = []
        for i in range(0, len(wins), batch_size):
            pos = torch.tensor(wins[i : i + batch_size], device=self.device).T
            out.append(self.crop(pos[0], pos[1], pos[2], target=val))
        return out
