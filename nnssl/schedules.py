"""Schedules precomputed per global step (as DINO does), indexed by the step: resuming cannot shift them."""
from __future__ import annotations

import math

import numpy as np


def cosine_schedule(start: float, end: float, total_steps: int, warmup_steps: int = 0,
                    warmup_start: float = 0.0) -> np.ndarray:
    """Linear warm-up from ``warmup_start`` to ``start`` over ``warmup_steps``, then cosine from ``start`` to ``end``.

    Returns float64 values, shape (total_steps,). value[k] = end + (start - end) * (1 + cos(pi * j / J)) / 2 with
    j = k - warmup_steps and J = total_steps - warmup_steps - 1 (so the last step reaches ``end``).
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps={warmup_steps} must lie in [0, total_steps={total_steps}]")
    warmup = np.linspace(warmup_start, start, warmup_steps, endpoint=False) if warmup_steps else np.zeros(0)
    n = total_steps - warmup_steps
    j = np.arange(n)
    denom = max(n - 1, 1)
    cosine = end + (start - end) * 0.5 * (1.0 + np.cos(math.pi * j / denom))
    return np.concatenate([warmup, cosine]).astype(np.float64)


def warmup_then_constant(start: float, end: float, total_steps: int, warmup_steps: int) -> np.ndarray:
    """Linear from ``start`` to ``end`` over ``warmup_steps``, then ``end`` (DINO's teacher temperature)."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    warmup_steps = min(max(int(warmup_steps), 0), total_steps)
    ramp = np.linspace(start, end, warmup_steps) if warmup_steps else np.zeros(0)
    return np.concatenate([ramp, np.full(total_steps - warmup_steps, end)]).astype(np.float64)


def at(schedule: np.ndarray, step: int) -> float:
    """schedule[step], holding the last value past the end (a run extended beyond its planned length)."""
    return float(schedule[min(max(step, 0), len(schedule) - 1)])
