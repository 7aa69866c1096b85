"""The momentum teacher, written once: EMA copies of student modules with their schedule, mode and update.

Used by the self-distillation methods (DINO, iBOT, SMIT: an EMA teacher always in eval mode, Caron et al. 2021) and
by MoCo v3's momentum branch (Chen et al. 2021), which the reference runs in train mode so that its BatchNorm layers
use the statistics of the current batch (facebookresearch/moco-v3 main_moco.py:331-332 puts the whole model in train
mode; moco/builder.py:89-94 runs the momentum encoder under no_grad only).

    teacher = MomentumTeacher({"encoder": student_encoder, "heads": heads}, start=0.996, end=1.0)
    teacher.setup(total_steps)             # cosine momentum schedule over the global steps
    t = teacher["encoder"](x)              # a copy: no gradient, never in the optimiser
    teacher.update(step, {"encoder": student_encoder, "heads": heads})   # after the optimiser step

The copies are made from the students at construction (identical start, as DINO's teacher loads the student's
state dict, facebookresearch/dino main_dino.py:207-211). Only parameters are averaged. In eval mode the copies' buffers
(e.g. BatchNorm running statistics) are copied from the student with every update; in train mode they are the copy's
own, updated by its forward passes (MoCo v3 averages parameters only, moco/builder.py:57-61).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from nnssl.ema import ema_update, make_teacher
from nnssl.schedules import at, cosine_schedule


class MomentumTeacher(nn.Module):
    """EMA copies of named student modules.

    ``students``: name -> student module to copy (the task keeps owning the students). ``start``/``end``: the
    momentum's cosine schedule over the global steps (computed in ``setup``). ``train_mode``: run the copies in train
    mode (batch statistics in BatchNorm, as MoCo v3) instead of eval mode (DINO's rule for a teacher).
    """

    def __init__(self, students: dict[str, nn.Module], start: float, end: float = 1.0,
                 train_mode: bool = False) -> None:
        super().__init__()
        if not 0.0 <= start <= end <= 1.0:
            raise ValueError(f"need 0 <= momentum start <= end <= 1, got {start} -> {end}")
        if not students:
            raise ValueError("a momentum teacher needs at least one student module")
        self.copies = nn.ModuleDict({name: make_teacher(module) for name, module in students.items()})
        self.start, self.end, self.train_mode = float(start), float(end), bool(train_mode)
        self._momentum: np.ndarray = cosine_schedule(self.start, self.end, 1)
        self.train(False)

    def __getitem__(self, name: str) -> nn.Module:
        return self.copies[name]

    def setup(self, total_steps: int) -> None:
        """Precompute the momentum per global step: cosine from ``start`` to ``end`` over ``total_steps``."""
        self._momentum = cosine_schedule(self.start, self.end, total_steps)

    def momentum(self, step: int) -> float:
        """Momentum of the update after global step ``step`` (the last value past the end of the schedule)."""
        return at(self._momentum, step)

    def train(self, mode: bool = True) -> "MomentumTeacher":
        """Eval mode always, unless the teacher was built with ``train_mode`` (then it follows the task's mode)."""
        return super().train(mode and self.train_mode)

    @torch.no_grad()
    def update(self, step: int, students: dict[str, nn.Module]) -> None:
        """theta_t <- m theta_t + (1 - m) theta_s for every copy, m = ``momentum(step)``; ``students`` are the
        modules the copies were made from, by the same names."""
        if students.keys() != self.copies.keys():
            raise ValueError(f"the teacher holds copies of {sorted(self.copies)}, got students {sorted(students)}")
        m = self.momentum(step)
        for name, student in students.items():
            ema_update(self.copies[name], student, m, copy_buffers=not self.train_mode)


__all__ = ["MomentumTeacher"]
