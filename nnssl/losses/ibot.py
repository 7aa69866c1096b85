"""iBOT masked patch-token self-distillation (Zhou et al., ICLR 2022, arXiv:2111.07832), also SMIT's patch loss.

For one view with teacher patch logits g (B, N, K) of the unmasked input, student patch logits f (B, N, K) of the
masked input, and the token mask m (B, N) (True = hidden from the student):

    P = softmax((g - c) / tau_t),   l[b, n] = sum_k -P[b, n, k] * log_softmax(f[b, n] / tau_s)[k]
    L_view = mean_b  ( sum_n m[b, n] l[b, n] / max(1, sum_n m[b, n]) )

L is the mean of L_view over views. Unmasked tokens do not enter the loss (a sample without hidden tokens adds 0,
as in iBOT). The patch centre c (1, 1, K) is a buffer of its own, updated from the mean teacher patch logit:
    c <- m_c c + (1 - m_c) mean_{views, b, n} g     (all-reduced when torch.distributed is initialised).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
import torch.nn.functional as F

from nnssl.losses.dino import CenteredDistillationLoss, _global_mean


class PatchDistillationLoss(CenteredDistillationLoss):
    """forward(student: V tensors (B, N, K), teacher: V tensors (B, N, K), masks: V tensors (B, N) bool,
    teacher_temp) -> scalar. View v of the student, teacher and mask must be the same crop."""

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__((1, 1, out_dim), student_temp, center_momentum)

    def forward(self, student: Sequence[Tensor], teacher: Sequence[Tensor], masks: Sequence[Tensor],
                teacher_temp: float, update_center: bool = True) -> Tensor:
        """student, teacher V x (B, N, K) logits, masks V x (B, N) bool -> scalar: the mean over views of the
        per-sample mean loss of the masked tokens; then moves the centre unless ``update_center=False``."""
        if teacher_temp <= 0:
            raise ValueError(f"teacher_temp must be > 0, got {teacher_temp}")
        if not (len(student) == len(teacher) == len(masks)) or len(student) == 0:
            raise ValueError(
                f"need the same positive number of student ({len(student)}), teacher ({len(teacher)}) and mask "
                f"({len(masks)}) views"
            )
        k = self.center.shape[-1]
        total = torch.zeros((), device=student[0].device)
        for v, (s, t, m) in enumerate(zip(student, teacher, masks)):
            if s.shape != t.shape or s.ndim != 3 or s.shape[-1] != k:
                raise ValueError(
                    f"view {v}: student {tuple(s.shape)} and teacher {tuple(t.shape)} must both be (B, N, {k})"
                )
            if m.shape != s.shape[:2]:
                raise ValueError(f"view {v}: token mask {tuple(m.shape)} must be (B, N) = {tuple(s.shape[:2])}")
            p = F.softmax((t.detach().float() - self.center) / teacher_temp, dim=-1)
            per_token = torch.sum(-p * F.log_softmax(s.float() / self.student_temp, dim=-1), dim=-1)  # (B, N)
            w = m.to(per_token.dtype)
            # Multiplying by the 0/1 mask zeroes both the value and the gradient of unmasked tokens.
            per_sample = (per_token * w).sum(dim=-1) / w.sum(dim=-1).clamp(min=1.0)
            total = total + per_sample.mean()
        if update_center:
            self.update_center(torch.cat([t.detach() for t in teacher]))
        return total / len(student)

    @torch.no_grad()
    def update_center(self, teacher_patches: Tensor) -> None:
        """c <- m c + (1 - m) mean over samples and tokens of ``teacher_patches`` (N_views*B, N, K)."""
        batch_center = _global_mean(teacher_patches.float().mean(dim=1))  # (1, K)
        self.center.mul_(self.center_momentum).add_(batch_center[:, None], alpha=1.0 - self.center_momentum)


__all__ = ["PatchDistillationLoss"]
