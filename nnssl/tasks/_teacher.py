"""The EMA teacher shared by the self-distillation tasks (DINO, iBOT, SMIT), written once.

A task that mixes this in (``class DINO(EMATeacher, PretextTask)``) owns ``self.heads`` (an ``nn.ModuleDict`` of
DINO heads) and builds ``self.teacher_encoder`` / ``self.teacher_heads`` with ``nnssl.ema.make_teacher``; its config
has ``ema_start``, ``ema_end``, ``teacher_temp_start``, ``teacher_temp``, ``teacher_temp_warmup_fraction`` and
``freeze_last_layer_fraction``. Following DINO (Caron et al. 2021): momentum 0.996 -> 1 on a cosine over the global
steps, teacher temperature warmed up linearly then constant, the heads' last layer frozen for the first steps, the
teacher always in eval mode and updated only by EMA.
"""
from __future__ import annotations

import numpy as np
import torch

from nnssl.ema import ema_update
from nnssl.heads import cancel_last_layer_gradients
from nnssl.schedules import at, cosine_schedule, warmup_then_constant


class EMATeacher:
    """Schedules, EMA update, eval-mode teacher and last-layer freezing for a student/teacher task."""

    _momentum: np.ndarray | None = None

    def setup(self, total_steps: int) -> None:
        super().setup(total_steps)  # type: ignore[misc]
        c = self.cfg  # type: ignore[attr-defined]
        self._freeze_last_layer_steps = round(c.freeze_last_layer_fraction * total_steps)
        self._momentum = cosine_schedule(c.ema_start, c.ema_end, total_steps)
        self._warmup_steps = round(c.teacher_temp_warmup_fraction * total_steps)
        self._teacher_temp = warmup_then_constant(c.teacher_temp_start, c.teacher_temp, total_steps,
                                                  self._warmup_steps)

    def _check_setup(self) -> None:
        if self._momentum is None:
            raise RuntimeError(f"{type(self).__name__}.setup(total_steps) must be called before training")

    def teacher_temperature(self, step: int) -> float:
        self._check_setup()
        return at(self._teacher_temp, step)

    def ema_momentum(self, step: int) -> float:
        self._check_setup()
        return at(self._momentum, step)

    def train(self, mode: bool = True):
        super().train(mode)  # type: ignore[misc]
        # The teacher never trains: no dropout / drop-path, whatever the loop asks.
        self.teacher_encoder.eval()  # type: ignore[attr-defined]
        self.teacher_heads.eval()  # type: ignore[attr-defined]
        return self

    def before_optimizer_step(self, step: int) -> None:
        if step < self._freeze_last_layer_steps:
            cancel_last_layer_gradients(self.heads)  # type: ignore[attr-defined]

    @torch.no_grad()
    def on_step_end(self, step: int) -> None:
        m = self.ema_momentum(step)
        ema_update(self.teacher_encoder, self.student, m)  # type: ignore[attr-defined]
        ema_update(self.teacher_heads, self.heads, m)  # type: ignore[attr-defined]
