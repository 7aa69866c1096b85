"""Learning-rate schedule of the Swin trainers: linear warmup, then cosine decay, per iteration."""
from __future__ import annotations

import math


def warmup_cosine_lr(step: int, total_steps: int, warmup_steps: int, base_lr: float, final_lr: float = 0.0) -> float:
    """lr at optimiser step `step` (0-based): linear from base_lr/warmup_steps up to base_lr over warmup_steps
    steps, then half a cosine from base_lr down to final_lr at total_steps."""
    if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"need total_steps >= 1 and 0 <= warmup_steps <= total_steps, got {total_steps}, "
                         f"{warmup_steps}")
    step = min(max(step, 0), total_steps)
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = (step - warmup_steps) / span
    return final_lr + 0.5 * (base_lr - final_lr) * (1.0 + math.cos(math.pi * progress))
