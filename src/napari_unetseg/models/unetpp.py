"""UNet++ (Zhou, Rahman Siddiquee, Tajbakhsh & Liang 2018, "UNet++: A Nested U-Net
Architecture for Medical Image Segmentation", DLMIA, Fig. 1 and Eq. 1)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .base import Level, Output, SegmentationNet
from .blocks import conv_block, up_conv

__all__ = ["UNetPlusPlus", "mean_probability_logits"]


class UNetPlusPlus(SegmentationNet):
    """UNet++ with nested dense skip pathways, deep supervision and real pruning.

    Node ``X(i, j)`` (row ``i`` = down-sampling level, column ``j``) is, per Eq. 1 of the
    paper::

        X(i, 0) = H(pool(X(i-1, 0)))                                  (backbone encoder)
        X(i, j) = H([X(i, 0), ..., X(i, j-1), Up(X(i+1, j-1))])       (j >= 1)

    where ``H`` is two 3x3 conv (+ BatchNorm) + ReLU, ``Up`` a 2x2 up-convolution to the
    row's ``width * 2**i`` channels and ``[...]`` concatenation. The modules are named after
    the paper: ``self.nodes["x_1_2"]`` is ``H`` of ``X(1, 2)``, ``self.ups["x_1_2"]`` the
    ``Up`` feeding it, and ``self.heads["x_0_3"]`` the 1x1 deep-supervision head on ``X(0, 3)``.

    ``forward(x, level=L)`` (``L`` in ``1..depth``) computes only the nodes with
    ``i + j <= L`` - the sub-network X(0, L) depends on - so lower levels are really cheaper
    (the paper's pruned "fast mode", Sec. 2.3). ``level="accurate"`` (the default, also
    ``None``) averages the *probabilities* of every head, as the paper's accurate mode does
    (returned as their log, see :func:`mean_probability_logits`, so that a softmax of the
    output is that mean); ``level="all"`` returns each head's logits, ``X(0, 1)`` first.
    When ``config.deep_supervision`` is off only the last head is trained: ``"accurate"``
    returns the ``X(0, depth)`` head alone, and the levels ``1..depth-1`` and ``"all"``,
    whose heads were never trained, raise ValueError.

    Parameters
    ----------
    config : ModelConfig
        ``arch="unetpp"``; ``padding`` must be ``"same"``.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        d, w = config.depth, config.width
        ch = [w * 2**i for i in range(d + 1)]
        self.num_levels = d
        self.pool = nn.MaxPool2d(2)
        self.nodes = nn.ModuleDict()
        self.ups = nn.ModuleDict()
        for i in range(d + 1):
            cin = self.input_channels if i == 0 else ch[i - 1]
            self.nodes[_name(i, 0)] = conv_block(cin, ch[i], batchnorm=config.batchnorm)
        for j in range(1, d + 1):
            for i in range(d + 1 - j):
                self.ups[_name(i, j)] = up_conv(ch[i + 1], ch[i])
                self.nodes[_name(i, j)] = conv_block(
                    (j + 1) * ch[i], ch[i], batchnorm=config.batchnorm
                )
        self.heads = nn.ModuleDict(
            {_name(0, j): nn.Conv2d(ch[0], config.classes, 1) for j in range(1, d + 1)}
        )

    @property
    def levels(self) -> tuple[Level, ...]:
        """Every accepted ``level``: ``1..depth``, ``"accurate"``, ``"all"`` (and None)."""
        return (*range(1, self.config.depth + 1), "accurate", "all")

    def _resolve_level(self, level: Level) -> Level:
        if level is None:
            return "accurate"
        if isinstance(level, numbers.Integral) and not isinstance(level, bool):
            if 1 <= level <= self.num_levels:
                self.check_trained(int(level))
                return int(level)
        elif level in ("accurate", "all"):
            self.check_trained(level)
            return level
        valid = ", ".join(repr(v) for v in self.levels)
        raise ValueError(f"level must be one of {valid} (or None); got {level!r}")

    def check_trained(self, level: Level) -> None:
        """Raise ValueError for an output whose head was never trained (without deep
        supervision only ``X(0, depth)`` is: ``"accurate"`` and ``depth`` are allowed)."""
        d = self.config.depth
        if self.config.deep_supervision or level in ("accurate", None, d):
            return
        raise ValueError(
            f"this UNet++ was trained without deep supervision: only its level-{d} head was "
            f"trained, so level {level!r} would use untrained weights; use level={d} or "
            "'accurate' (the same), or train with deep_supervision=True to prune"
        )

    def modules_for_level(self, level: int) -> Iterator[nn.Module]:
        """The modules a level-``level`` forward uses (nodes ``i + j <= level``, its head)."""
        for i in range(level + 1):
            for j in range(level + 1 - i):
                yield self.nodes[_name(i, j)]
                if j > 0:
                    yield self.ups[_name(i, j)]
        yield self.heads[_name(0, level)]

    def parameters_for_level(self, level: int) -> list[nn.Parameter]:
        """Parameters of the pruned level-``level`` network (see :meth:`modules_for_level`)."""
        self._resolve_level(level)
        return [p for m in self.modules_for_level(level) for p in m.parameters()]

    def _forward_padded(self, x: torch.Tensor, level: Level) -> Output:
        d = self.config.depth
        if level == "accurate" and not self.config.deep_supervision:
            level = d
        top = d if isinstance(level, str) else int(level)
        feats = self._compute_nodes(x, top)
        if isinstance(level, int):
            return self.heads[_name(0, level)](feats[0, level])
        outs = [self.heads[_name(0, j)](feats[0, j]) for j in range(1, d + 1)]
        if level == "all":
            return outs
        return mean_probability_logits(outs)

    def _compute_nodes(self, x: torch.Tensor, top: int) -> dict[tuple[int, int], torch.Tensor]:
        """Evaluate ``X(i, j)`` for all ``i + j <= top``, column by column (Eq. 1)."""
        feats: dict[tuple[int, int], torch.Tensor] = {}
        for i in range(top + 1):
            inp = x if i == 0 else self.pool(feats[i - 1, 0])
            feats[i, 0] = self.nodes[_name(i, 0)](inp)
        for j in range(1, top + 1):
            for i in range(top + 1 - j):
                up = self.ups[_name(i, j)](feats[i + 1, j - 1])
                same_row = [feats[i, k] for k in range(j)]
                feats[i, j] = self.nodes[_name(i, j)](torch.cat([*same_row, up], dim=1))
        return feats


def mean_probability_logits(heads: list[torch.Tensor]) -> torch.Tensor:
    """Logits whose softmax (sigmoid for one class) is the mean of the heads' probabilities.

    Zhou et al. (2018) average the heads' segmentation maps in the accurate mode; the log of
    that mean is a valid logit, computed stably with logsumexp.
    """
    stacked = torch.stack(heads)
    log_n = math.log(len(heads))
    if stacked.shape[2] == 1:  # sigmoid: log(mean p) - log(mean (1 - p))
        pos = torch.logsumexp(F.logsigmoid(stacked), dim=0) - log_n
        neg = torch.logsumexp(F.logsigmoid(-stacked), dim=0) - log_n
        return pos - neg
    return torch.logsumexp(torch.log_softmax(stacked, dim=2), dim=0) - log_n


def _name(i: int, j: int) -> str:
    return f"x_{i}_{j}"
