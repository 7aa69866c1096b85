"""Number formatting and figure saving shared by the report's sections."""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np


def slug(*parts: Any) -> str:
    """``parts`` joined into a file-name-safe identifier (runs of other characters become ``_``)."""
    return re.sub(r"[^A-Za-z0-9]+", "_", "_".join(str(p) for p in parts)).strip("_")


def fmt(x: float | None, digits: int = 3) -> str:
    """``x`` with ``digits`` decimals, ``n/a`` for None or non-finite values."""
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:.{digits}f}"


def fmt_p(p: float) -> str:
    """A p-value: scientific below 1e-3, else four decimals; ``n/a`` when not finite."""
    if not math.isfinite(p):
        return "n/a"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.4f}"


def fmt_spread(values: Sequence[float | None], digits: int = 1) -> str:
    """mean over folds, with (min-max) when several folds differ; n/a when none is defined."""
    v = [float(x) for x in values if x is not None and math.isfinite(x)]
    if not v:
        return "n/a"
    m = float(np.mean(v))
    if len(v) == 1 or min(v) == max(v):
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ({min(v):.{digits}f}-{max(v):.{digits}f})"


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (imported on first use: reports need no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> Path:
    """Save ``fig`` as a PNG at ``path`` (creating its folder), close it, return ``path``."""
    plt = pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

