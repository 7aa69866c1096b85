"""AdamW with per-step learning-rate and weight-decay schedules (warm-up + cosine, as DINO and SimMIM)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from nnssl.schedules import at, cosine_schedule


def parameter_groups(model: nn.Module) -> list[dict]:
    """Two groups: weights with decay; biases, norms, position-bias tables and tokens without (as Swin/DINO do)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".bias") or "relative_position_bias_table" in name or "token" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "apply_decay": True}, {"params": no_decay, "apply_decay": False, "weight_decay": 0.0}]


@dataclass
class OptimSchedules:
    lr: np.ndarray
    weight_decay: np.ndarray

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> tuple[float, float]:
        lr, wd = at(self.lr, step), at(self.weight_decay, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
            group["weight_decay"] = wd if group.get("apply_decay", True) else 0.0
        return lr, wd


def make_schedules(total_steps: int, lr: float, min_lr: float, warmup_steps: int, weight_decay: float,
                   weight_decay_end: float) -> OptimSchedules:
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    return OptimSchedules(
        lr=cosine_schedule(lr, min_lr, total_steps, warmup_steps=warmup_steps, warmup_start=0.0),
        weight_decay=cosine_schedule(weight_decay, weight_decay_end, total_steps),
    )


def make_optimizer(model: nn.Module, lr: float, betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.AdamW:
    groups = [g for g in parameter_groups(model) if g["params"]]
    if not groups:
        raise ValueError("the task has no trainable parameters")
    return torch.optim.AdamW(groups, lr=lr, betas=betas)
