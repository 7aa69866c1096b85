"""DINO self-distillation loss with centering and sharpening (Caron et al., ICCV 2021, arXiv:2104.14294).

For teacher views t (the global crops) and student views s (global and local crops), with teacher logits g_t,
student logits f_s, centre c, teacher temperature tau_t and student temperature tau_s:

    P_t = softmax((g_t - c) / tau_t)            (sharpened, centred teacher distribution; no gradient)
    log P_s = log_softmax(f_s / tau_s)
    L = mean over pairs (t, s) with s != t of  mean over the batch of  sum_k -P_t[k] * log P_s[k]

After each loss evaluation the centre moves towards the batch mean of the teacher logits:
    c <- m * c + (1 - m) * mean_{views, batch} g_t
with the mean taken over all processes when torch.distributed is initialised. The centre is a buffer, so it is
saved in the task's state_dict (checkpoints) and moved with the module.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn
import torch.nn.functional as F


def _global_mean(x: Tensor) -> Tensor:
    """Mean over dim 0 of ``x`` (N, ...) across all processes when torch.distributed is initialised."""
    total = x.sum(dim=0, keepdim=True)
    count = torch.tensor([float(x.shape[0])], device=x.device, dtype=total.dtype)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total)
        dist.all_reduce(count)
    return total / count


class CenteredDistillationLoss(nn.Module):
    """Shared set-up of the distillation losses: student temperature and a teacher centre of shape
    ``center_shape`` (a buffer, so it is checkpointed) with its EMA momentum."""

    def __init__(self, center_shape: tuple[int, ...], student_temp: float, center_momentum: float) -> None:
        super().__init__()
        if center_shape[-1] < 1:
            raise ValueError(f"out_dim must be >= 1, got {center_shape[-1]}")
        if student_temp <= 0:
            raise ValueError(f"student_temp must be > 0, got {student_temp}")
        if not 0.0 <= center_momentum <= 1.0:
            raise ValueError(f"center_momentum must lie in [0, 1], got {center_momentum}")
        self.student_temp = float(student_temp)
        self.center_momentum = float(center_momentum)
        self.register_buffer("center", torch.zeros(*center_shape))


class DINOLoss(CenteredDistillationLoss):
    """Cross-entropy between the centred, sharpened teacher and the student over all view pairs except same-view.

    forward(student: sequence of V_s tensors (B, K), teacher: sequence of V_t tensors (B, K), teacher_temp)
    -> scalar. Student view i and teacher view i must show the same crop for i < V_t (those pairs are skipped).
    ``center`` (1, K) is updated from the teacher logits on every call unless ``update_center=False``.
    """

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__((1, out_dim), student_temp, center_momentum)

    def teacher_probs(self, teacher_logits: Tensor, teacher_temp: float) -> Tensor:
        """softmax((g - c) / tau_t) in float32, detached. (B, K) -> (B, K)."""
        return F.softmax((teacher_logits.detach().float() - self.center) / teacher_temp, dim=-1)

    def forward(self, student: Sequence[Tensor], teacher: Sequence[Tensor], teacher_temp: float,
                update_center: bool = True) -> Tensor:
        """student V_s x (B, K), teacher V_t x (B, K) logits -> scalar: mean cross-entropy over the pairs of different
        views; then moves the centre unless ``update_center=False``."""
        if teacher_temp <= 0:
            raise ValueError(f"teacher_temp must be > 0, got {teacher_temp}")
        if len(teacher) < 1 or len(student) < 1:
            raise ValueError("DINO needs at least one teacher view and one student view")
        if len(student) == 1 and len(teacher) == 1:
            raise ValueError("with one student and one teacher view every pair is same-view: give two or more views")
        k = self.center.shape[1]
        for name, views in (("student", student), ("teacher", teacher)):
            for i, v in enumerate(views):
                if v.ndim != 2 or v.shape[1] != k:
                    raise ValueError(f"{name} view {i} has shape {tuple(v.shape)}, expected (B, {k})")
        probs = [self.teacher_probs(t, teacher_temp) for t in teacher]
        log_s = [F.log_softmax(s.float() / self.student_temp, dim=-1) for s in student]
        total = torch.zeros((), device=log_s[0].device)
        terms = 0
        for ti, p in enumerate(probs):
            for si, ls in enumerate(log_s):
                if si == ti:
                    continue  # same crop: no loss (DINO)
                total = total + torch.sum(-p * ls, dim=-1).mean()
                terms += 1
        if update_center:
            self.update_center(torch.cat([t.detach() for t in teacher]))
        return total / terms

    @torch.no_grad()
    def update_center(self, teacher_logits: Tensor) -> None:
        """c <- m c + (1 - m) mean(teacher_logits over batch and views, all processes). (N, K) -> in place."""
        batch_center = _global_mean(teacher_logits.float())
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1.0 - self.center_momentum)


__all__ = ["CenteredDistillationLoss", "DINOLoss"]
