"""Convergence of nnU-Net fine-tuning from its per-epoch training log.

nnU-Net logs a validation *pseudo-Dice* every epoch (``mean_fg_dice``: Dice of the foreground classes computed on
the validation patches of that epoch, aggregated over the epoch) and its exponential moving average
``ema_fg_dice`` (ema_t = 0.9 ema_{t-1} + 0.1 dice_t, ema_0 = dice_0); it selects its "best" checkpoint on the EMA.

Definitions used here (documented in documentation/report.md):
* final pseudo-Dice = the EMA pseudo-Dice at the last logged epoch;
* epochs to reach x% = the first epoch (1-based: "after e epochs of training") whose EMA pseudo-Dice is >= x% of
  the final value. The last epoch always qualifies, so it is never larger than the number of epochs trained;
* AUC / epochs = the area under the EMA pseudo-Dice curve over the epochs trained (each epoch's value held for one
  epoch) divided by the number of epochs, i.e. the mean EMA pseudo-Dice over training, in [0, 1]: higher = good
  sooner. Comparable between runs of the same length only (the report compares runs of one regime).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

FRACTIONS = (0.90, 0.95)
EMA_MOMENTUM = 0.9  # nnU-Net's MetaLogger: ema = 0.9 * previous + 0.1 * new


@dataclass(frozen=True)
class Convergence:
    """Convergence summary of one training run. Epochs are 1-based counts; None when undefined."""

    n_epochs: int
    final: float
    best: float
    epochs_to: dict[float, int | None]
    seconds_to: dict[float, float | None]
    seconds_per_epoch: float
    note: str = ""
    auc: float = math.nan  # area under the EMA curve / epochs (normalised_auc)


def ema_from_log(logging: Mapping[str, Sequence[Any]]) -> tuple[np.ndarray, str]:
    """The EMA pseudo-Dice curve (n_epochs,) from an nnU-Net 'logging' dict, plus a note.

    Uses 'ema_fg_dice' as logged; if only 'mean_fg_dice' is present, recomputes the EMA with nnU-Net's rule and says so.
    """
    if logging.get("ema_fg_dice"):
        return np.asarray(logging["ema_fg_dice"], dtype=np.float64), ""
    raw = logging.get("mean_fg_dice")
    if not raw:
        raise ValueError("training log has neither 'ema_fg_dice' nor 'mean_fg_dice'; is it an nnU-Net v2 checkpoint?")
    raw = np.asarray(raw, dtype=np.float64)
    ema = np.empty_like(raw)
    for i, v in enumerate(raw):
        ema[i] = v if i == 0 else EMA_MOMENTUM * ema[i - 1] + (1 - EMA_MOMENTUM) * v
    return ema, "EMA recomputed from mean_fg_dice (ema_fg_dice not logged)"


def epochs_to_fraction(ema: Any, fraction: float, final: float | None = None) -> int | None:
    """First 1-based epoch whose value is >= ``fraction`` * final (final defaults to the last finite value)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    y = np.asarray(ema, dtype=np.float64)
    if final is None:
        finite = y[np.isfinite(y)]
        if finite.size == 0:
            return None
        final = float(finite[-1])
    if not math.isfinite(final) or final <= 0.0:
        return None  # a run that never segments anything has no meaningful "x% of final"
    hits = np.flatnonzero(np.isfinite(y) & (y >= fraction * final))
    return int(hits[0]) + 1 if hits.size else None


def normalised_auc(ema: Any) -> float:
    """Area under a per-epoch curve divided by its number of epochs (rectangle rule: the mean of its values).

    Non-finite epochs are left out (mean over the finite ones); NaN when none is finite.
    """
    y = np.asarray(ema, dtype=np.float64)
    finite = y[np.isfinite(y)]
    return float(finite.mean()) if finite.size else math.nan


def analyse_log(logging: Mapping[str, Sequence[Any]], fractions: Sequence[float] = FRACTIONS) -> Convergence:
    """Convergence summary of one nnU-Net training log (see the module docstring for the definitions)."""
    ema, note = ema_from_log(logging)
    finite = ema[np.isfinite(ema)]
    n = int(ema.size)
    final = float(finite[-1]) if finite.size else math.nan
    best = float(finite.max()) if finite.size else math.nan
    epochs_to = {f: epochs_to_fraction(ema, f, final) for f in fractions}
    starts = np.asarray(logging.get("epoch_start_timestamps") or [], dtype=np.float64)
    ends = np.asarray(logging.get("epoch_end_timestamps") or [], dtype=np.float64)
    seconds_to: dict[float, float | None] = {f: None for f in fractions}
    sec_per_epoch = math.nan
    if starts.size and ends.size:
        m = min(starts.size, ends.size)
        sec_per_epoch = float(np.mean(ends[:m] - starts[:m]))
        for f, e in epochs_to.items():
            if e is not None and e <= ends.size:
                seconds_to[f] = float(ends[e - 1] - starts[0])
    if not math.isfinite(final) or final <= 0:
        note = (note + "; " if note else "") + "final pseudo-Dice is not positive: epochs-to-x% undefined"
    return Convergence(n, final, best, epochs_to, seconds_to, sec_per_epoch, note, auc=normalised_auc(ema))


def plot_curves(
    curves: Mapping[str, Any],
    title: str = "",
    path: Any = None,
    styles: Mapping[str, Mapping[str, Any]] | None = None,
    mark_fraction: float | None = 0.95,
):
    """EMA pseudo-Dice vs epoch, one line per entry of ``curves`` (label -> (n_epochs,) values).

    With ``mark_fraction``, a dot marks where each curve first reaches that fraction of its final value.
    Saves a PNG to ``path`` if given; returns the figure.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for label, y in curves.items():
        y = np.asarray(y, dtype=np.float64)
        x = np.arange(1, y.size + 1)
        kw = dict(styles.get(label, {})) if styles else {}
        (line,) = ax.plot(x, y, label=label, linewidth=1.4, **kw)
        if mark_fraction is not None and y.size:
            e = epochs_to_fraction(y, mark_fraction)
            if e is not None:
                ax.plot([e], [y[e - 1]], "o", color=line.get_color(), markersize=4)
    ax.set_xlabel("epoch")
    ax.set_ylabel("EMA pseudo-Dice (validation)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=9)
    if curves:
        ax.legend(fontsize=7, loc="lower right", ncol=2 if len(curves) > 6 else 1)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig
