"""Did a pretraining run learn? Its loss curve from ``log.jsonl`` and the loss change between the first and the last
10% of its steps.

A run folder (written by ``nnssl_pretrain``) holds ``config.json`` (the run's settings, ``method`` among them) and
``log.jsonl`` (one JSON object per step: ``step``, ``loss``, ``loss/<part>``, ...). The statistic:

* window = the first and the last ``ceil(fraction * n)`` logged steps (fraction 0.1);
* relative change = (mean loss of the last window - mean of the first) / |mean of the first|;
* its CI: a moving-block bootstrap over the steps of each window, the two windows resampled independently
  (blocks of ``round(w ** (1/3))`` consecutive steps keep the short-range correlation of neighbouring steps, which
  share the optimiser state; Kuensch 1989);
* verdict: "falling" when the whole CI lies below zero, "flat/rising" otherwise; "too short" when a window has fewer
  than 2 steps.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FALLING, FLAT, TOO_SHORT = "falling", "flat/rising", "too short"
RUN_FILES = ("log.jsonl", "config.json")


@dataclass
class PretrainingLog:
    """The per-step records of a run (sorted by step, one per step), and what could not be read."""

    records: list[dict[str, Any]]
    bad_lines: int = 0  # unreadable lines before the last one (a damaged file)
    partial_last_line: bool = False  # the run was writing when the file was read (or was killed mid-line)

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of ``key`` over the records that hold a finite value of it."""
        pts = [(r["step"], float(r[key])) for r in self.records
               if isinstance(r.get(key), (int, float)) and math.isfinite(float(r[key]))]
        return np.array([p[0] for p in pts], dtype=np.int64), np.array([p[1] for p in pts], dtype=np.float64)

    def loss_keys(self) -> list[str]:
        """``loss`` first, then the parts ``loss/<part>``."""
        keys = {k for r in self.records for k in r if k == "loss" or k.startswith("loss/")}
        return sorted(keys, key=lambda k: (k != "loss", k))


def read_log(path: str | Path) -> PretrainingLog:
    """Read a ``log.jsonl`` robustly: blank lines and a partial last line (the writer was interrupted or is still
    running) are skipped; other unreadable lines are counted; a step logged twice keeps its last record."""
    lines = Path(path).read_text(encoding="utf-8", errors="replace").split("\n")
    # a complete file ends with "\n", so the last element is "": anything else there is an unfinished line
    last = len(lines) - 1
    by_step: dict[int, dict[str, Any]] = {}
    bad, partial = 0, False
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
                raise ValueError("no integer step")
        except ValueError:
            if i == last:
                partial = True
            else:
                bad += 1
            continue
        by_step[rec["step"]] = rec
    return PretrainingLog([by_step[s] for s in sorted(by_step)], bad, partial)


def is_run_folder(folder: Path) -> bool:
    """True when ``folder`` holds a pretraining run's ``log.jsonl`` or ``config.json``."""
    return folder.is_dir() and any((folder / f).is_file() for f in RUN_FILES)


def find_runs(folder: str | Path) -> list[Path]:
    """The run folders of ``folder``: itself when it is one, else its sub-folders that are (sorted by name)."""
    folder = Path(folder)
    if is_run_folder(folder):
        return [folder]
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if is_run_folder(p))


@dataclass(frozen=True)
class WindowChange:
    """Loss over the first and the last window of steps, and their relative change with a block-bootstrap CI."""

    n_steps: int
    window: int  # steps per window
    block: int  # block length of the bootstrap
    first: float
    last: float
    change: float  # (last - first) / |first|
    low: float
    high: float
    verdict: str

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict, with None for non-finite floats (JSON-safe)."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in self.__dict__.items()}


def block_bootstrap_means(x: np.ndarray, block: int, n_boot: int, rng: np.random.Generator,
                          chunk: int = 2_000_000) -> np.ndarray:
    """(n_boot,) means of moving-block bootstrap resamples of the series x (w,): ceil(w / block) blocks of
    ``block`` consecutive values, starts uniform over the w - block + 1 possible ones, cut to length w."""
    w = x.size
    block = max(1, min(int(block), w))
    n_blocks = math.ceil(w / block)
    out = np.empty(n_boot)
    rows = max(1, chunk // (n_blocks * block))  # bounds the index matrix of a long run's windows
    for start in range(0, n_boot, rows):
        stop = min(n_boot, start + rows)
        starts = rng.integers(0, w - block + 1, size=(stop - start, n_blocks))
        idx = (starts[:, :, None] + np.arange(block)).reshape(stop - start, n_blocks * block)[:, :w]
        out[start:stop] = x[idx].mean(axis=1)
    return out


def window_change(values: Any, fraction: float = 0.1, n_boot: int = 2000, seed: int = 0,
                  level: float = 0.95) -> WindowChange:
    """The loss change between the first and the last ``fraction`` of the steps (values: (n,) losses in step
    order), with a moving-block-bootstrap ``level`` CI; see the module docstring."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    n = x.size
    w = max(1, math.ceil(fraction * n)) if n else 0
    if n == 0:
        return WindowChange(0, 0, 0, math.nan, math.nan, math.nan, math.nan, math.nan, TOO_SHORT)
    first, last = x[:w], x[n - w:]
    f, l = float(first.mean()), float(last.mean())
    change = (l - f) / abs(f) if f != 0 else math.nan
    block = max(1, round(w ** (1 / 3)))
    if w < 2 or n < 2 * w or not math.isfinite(change):
        # the windows would overlap or hold a single step: no interval
        return WindowChange(n, w, block, f, l, change, math.nan, math.nan, TOO_SHORT)
    rng = np.random.default_rng(seed)
    bf = block_bootstrap_means(first, block, n_boot, rng)
    bl = block_bootstrap_means(last, block, n_boot, rng)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = (bl - bf) / np.abs(bf)
    ratios = ratios[np.isfinite(ratios)]
    lo, hi = np.percentile(ratios, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    verdict = FALLING if hi < 0 else FLAT
    return WindowChange(n, w, block, f, l, change, float(lo), float(hi), verdict)


@dataclass
class PretrainingRun:
    """One run folder as the report shows it."""

    folder: Path
    method: str
    steps_planned: int | None
    log: PretrainingLog
    change: WindowChange
    notes: list[str] = field(default_factory=list)


def read_run(folder: str | Path, fraction: float = 0.1, n_boot: int = 2000, seed: int = 0,
             level: float = 0.95) -> PretrainingRun:
    """Read a run folder's config.json and log.jsonl and compute its loss change; what is missing goes to notes."""
    folder = Path(folder)
    notes: list[str] = []
    config: dict[str, Any] = {}
    cfg_file = folder / "config.json"
    if cfg_file.is_file():
        try:
            config = json.loads(cfg_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            notes.append(f"config.json is not valid JSON ({e})")
    else:
        notes.append("no config.json: method taken from the folder name")
    method = str(config.get("method") or folder.name)
    planned = config.get("steps") if isinstance(config.get("steps"), int) else None
    log_file = folder / "log.jsonl"
    log = read_log(log_file) if log_file.is_file() else PretrainingLog([])
    if not log_file.is_file():
        notes.append("no log.jsonl")
    if log.partial_last_line:
        notes.append("partial last line of log.jsonl skipped (run still writing or interrupted)")
    if log.bad_lines:
        notes.append(f"{log.bad_lines} unreadable line(s) of log.jsonl skipped")
    _, loss = log.series("loss")
    if planned is not None and 0 < loss.size < planned:
        notes.append(f"unfinished: {loss.size} of {planned} steps logged")
    return PretrainingRun(folder, method, planned, log, window_change(loss, fraction, n_boot, seed, level), notes)


def smooth(values: np.ndarray, span: int) -> np.ndarray:
    """Exponential moving average with smoothing factor 2 / (span + 1) (the first value starts it)."""
    alpha = 2.0 / (max(1, span) + 1.0)
    out = np.empty_like(np.asarray(values, dtype=np.float64))
    acc = math.nan
    for i, v in enumerate(values):
        acc = v if i == 0 else alpha * v + (1 - alpha) * acc
        out[i] = acc
    return out


def plot_run(run: PretrainingRun, title: str = ""):
    """Figure of the total loss and its parts per step: raw values faint, EMA over ~5% of the steps bold; the two
    windows of the statistic shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8))
    values_all = []
    for i, key in enumerate(run.log.loss_keys()):
        steps, values = run.log.series(key)
        if not values.size:
            continue
        values_all.append(values)
        color = f"C{i % 10}"
        ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
        ax.plot(steps, smooth(values, max(1, values.size // 20)), color=color, linewidth=2.0 if key == "loss" else 1.2,
                label=key)
    steps, loss = run.log.series("loss")
    c = run.change
    if loss.size and c.window:
        ax.axvspan(steps[0], steps[c.window - 1], color="0.85", zorder=0)
        ax.axvspan(steps[-c.window], steps[-1], color="0.85", zorder=0)
    if values_all:
        v = np.concatenate(values_all)
        if v.min() > 0 and v.max() / v.min() > 100:  # parts on very different scales
            ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title or run.method, fontsize=9)
    ax.grid(alpha=0.3)
    if values_all:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
