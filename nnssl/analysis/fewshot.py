"""Few-to-many-shot gap: how much Dice is lost when fine-tuning on k labelled cases instead of all of them.

gap % = (Dice_all - Dice_kshot) / Dice_all * 100, with Dice the mean per-case foreground Dice on the same validation
cases (few-shot trainers validate on the fold's full validation set, so the cases pair up). A smaller gap means the
pretrained features carry more of the segmentation with few labels. Negative = the k-shot run did better.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from nnssl.analysis.dice_stats import finite_pairs


def gap_percent(dice_all: float, dice_k: float) -> float:
    """(dice_all - dice_k) / dice_all * 100; NaN when dice_all is not positive (no reference to lose from)."""
    if not (math.isfinite(dice_all) and math.isfinite(dice_k)) or dice_all <= 0.0:
        return math.nan
    return (dice_all - dice_k) / dice_all * 100.0


@dataclass(frozen=True)
class Gap:
    """Gap in % with a paired percentile-bootstrap CI over cases; n = paired cases."""

    dice_all: float
    dice_k: float
    gap: float
    low: float
    high: float
    n: int

    def fmt(self, digits: int = 1) -> str:
        """``gap [low, high]`` in % with ``digits`` decimals; the gap alone without a CI, ``n/a`` when undefined."""
        if not math.isfinite(self.gap):
            return "n/a"
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            return f"{self.gap:.{digits}f}"
        return f"{self.gap:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def paired_gap(dice_all: Any, dice_k: Any, n_boot: int = 10000, seed: int = 0, level: float = 0.95) -> Gap:
    """Gap % from paired per-case Dice (same cases, same order) with a case-resampling bootstrap CI.

    Cases with NaN on either side are dropped. The bootstrap resamples case indices once for both arms, so the CI
    reflects the paired design. CI bounds are NaN with fewer than 2 cases.
    """
    a, k = finite_pairs(dice_all, dice_k, "paired gap needs the same cases in both regimes")
    n = int(a.size)
    if n == 0:
        return Gap(math.nan, math.nan, math.nan, math.nan, math.nan, 0)
    ma, mk = float(a.mean()), float(k.mean())
    g = gap_percent(ma, mk)
    if n < 2 or not math.isfinite(g):
        return Gap(ma, mk, g, math.nan, math.nan, n)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    ba, bk = a[idx].mean(axis=1), k[idx].mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        boots = np.where(ba > 0, (ba - bk) / ba * 100.0, np.nan)
    boots = boots[np.isfinite(boots)]
    if boots.size == 0:
        return Gap(ma, mk, g, math.nan, math.nan, n)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(boots, [alpha, 1.0 - alpha])
    return Gap(ma, mk, g, float(low), float(high), n)
