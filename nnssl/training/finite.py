"""Non-finite steps never reach the weights, without a host synchronisation per step.

Each step computes one flag on the device, 1 when the loss and the gradients are finite (the gradients through
their global norm, which the clipping computes anyway), all-reduced with MIN across ranks so that every rank skips
the same steps. The optimiser step is made conditional on it on the device: AdamW's fused implementation takes a
``found_inf`` tensor (the path ``torch.amp.GradScaler`` uses) and leaves parameters, moments and step counts untouched
when it is 1. Under a GradScaler (fp16 on CUDA) the scaler does this itself for non-finite gradients, including
those of a non-finite loss, and the flag only checks the loss (an overflowing scaled gradient is routine there: the
scaler lowers its scale). The loop reads the flags on the host every ``--log-every`` steps and before every
checkpoint, together with the logged loss values (``PendingSteps``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


def step_flag(loss: Tensor, grad_norm: Tensor | None, distributed: bool = False) -> Tensor:
    """1.0 (float, on the loss's device) when ``loss`` and ``grad_norm`` are finite, else 0.0; MIN over ranks."""
    finite = torch.isfinite(loss.detach()).all()
    if grad_norm is not None:
        finite = finite & torch.isfinite(grad_norm.detach().to(finite.device))
    flag = finite.float()
    if distributed:
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return flag


def supports_found_inf(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step`` can skip on the device (fused AdamW/Adam/SGD declare it)."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False))


def step_if_finite(optimizer: torch.optim.Optimizer, flag: Tensor) -> None:
    """``optimizer.step()`` that changes nothing where ``flag`` is 0, decided on the device.

    Optimisers without the fused kernel's ``found_inf`` fall back to reading the flag on the host (one sync).
    """
    if supports_found_inf(optimizer):
        optimizer.grad_scale = None  # type: ignore[attr-defined]
        optimizer.found_inf = (1.0 - flag).float()  # type: ignore[attr-defined]
        try:
            optimizer.step()
        finally:
            del optimizer.grad_scale, optimizer.found_inf  # type: ignore[attr-defined]
    elif bool(flag):
        optimizer.step()


@dataclass
class StepRecord:
    """What one step leaves for the log, as device tensors until they are read."""

    step: int
    lr: float
    weight_decay: float
    losses: dict[str, Tensor]
    grad_norm: Tensor | None
    flag: Tensor
    timing: Any = None  # nnssl.training.anatomy.StepTiming: read with the values (its CUDA events are then done)


@dataclass
class PendingSteps:
    """The steps since the last host read; ``read()`` transfers all their values at once."""

    steps: list[StepRecord] = field(default_factory=list)

    def add(self, record: StepRecord) -> None:
        """Queue one step's record until the next ``read()``."""
        self.steps.append(record)

    def __len__(self) -> int:
        return len(self.steps)

    def read(self) -> tuple[list[dict[str, Any]], list[int]]:
        """(log records of the steps, in order, the steps whose flag is 0). One device-to-host transfer."""
        if not self.steps:
            return [], []
        scalars: list[Tensor] = []
        for r in self.steps:
            scalars.append(r.flag)
            scalars.extend(r.losses.values())
            if r.grad_norm is not None:
                scalars.append(r.grad_norm)
        device = self.steps[0].flag.device
        values = iter(torch.stack([s.detach().float().reshape(()).to(device) for s in scalars]).tolist())
        records, bad = [], []
        for r in self.steps:
            if next(values) < 1.0:
                bad.append(r.step)
            rec: dict[str, Any] = {"step": r.step, "lr": r.lr, "weight_decay": r.weight_decay}
            rec.update({k: next(values) for k in r.losses})
            if r.grad_norm is not None:
                rec["grad_norm"] = next(values)
            if r.timing is not None:
                rec.update(r.timing.to_ms())
            records.append(rec)
        self.steps.clear()
        return records, bad


__all__ = ["PendingSteps", "StepRecord", "step_flag", "step_if_finite", "supports_found_inf"]
