"""AdamW with per-step learning-rate and weight-decay schedules and gradient clipping, driven by a method's resolved
recipe (``nnssl.recipes.ResolvedOptim``): warm-up + cosine (DINO, SimMIM, MAE, MoCo v3) or a constant rate (Taleb et
al.'s Adam), weight decay on weight matrices only or on every parameter, global or per-parameter clipping."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from nnssl.recipes import ResolvedOptim
from nnssl.schedules import at, cosine_schedule


def parameter_groups(model: nn.Module, decay_all: bool = False) -> list[dict]:
    """Trainable parameters in two groups: weights with decay; biases and one-dimensional parameters (norms, tokens)
    without, DINO's rule (facebookresearch/dino utils.py:632-643), or all with decay when ``decay_all`` (references
    that hand ``model.parameters()`` to AdamW)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if not decay_all and (p.ndim <= 1 or name.endswith(".bias")):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "apply_decay": True}, {"params": no_decay, "apply_decay": False, "weight_decay": 0.0}]


@dataclass
class OptimSchedules:
    """Learning rate and weight decay per global step (arrays of length total_steps)."""

    lr: np.ndarray
    weight_decay: np.ndarray

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> tuple[float, float]:
        """Set every parameter group's lr and weight decay for ``step`` (weight decay 0 in groups without decay);
        returns (lr, weight decay)."""
        lr, wd = at(self.lr, step), at(self.weight_decay, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
            group["weight_decay"] = wd if group.get("apply_decay", True) else 0.0
        return lr, wd


def make_schedules(total_steps: int, optim: ResolvedOptim) -> OptimSchedules:
    """Linear warm-up from 0 then a cosine to min_lr (or a constant rate), and the cosine weight-decay schedule."""
    warmup = min(optim.warmup_steps, max(total_steps - 1, 0))
    end = optim.lr if optim.schedule == "constant" else optim.min_lr
    return OptimSchedules(
        lr=cosine_schedule(optim.lr, end, total_steps, warmup_steps=warmup, warmup_start=0.0),
        weight_decay=cosine_schedule(optim.weight_decay, optim.weight_decay_end, total_steps),
    )


def make_optimizer(model: nn.Module, optim: ResolvedOptim) -> torch.optim.AdamW:
    """AdamW over the parameter groups, fused where the device has the kernel: its ``found_inf`` input lets the loop
    skip a non-finite step on the device (nnssl.training.finite) without reading a flag on the host every step."""
    groups = [g for g in parameter_groups(model, optim.decay_all_parameters) if g["params"]]
    if not groups:
        raise ValueError("the task has no trainable parameters")
    try:
        return torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas), fused=True)
    except (RuntimeError, ValueError):  # no fused kernel for these parameters' device or dtype
        return torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas))


def load_optimizer_state(optimizer: torch.optim.AdamW, state: dict, betas: tuple[float, float]) -> None:
    """Load a saved optimiser state, keeping this optimiser's implementation (fused or not: a checkpoint written by
    another one would otherwise switch it) and ``betas`` (the run's current setting; the others are set every step).
    """
    fused, foreach = optimizer.defaults.get("fused"), optimizer.defaults.get("foreach")
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        group["fused"], group["foreach"], group["betas"] = fused, foreach, tuple(betas)
    if fused:  # the fused kernel keeps its step counts as float32 on the parameters' device
        for p, st in optimizer.state.items():
            if torch.is_tensor(st.get("step")):
                st["step"] = st["step"].to(device=p.device, dtype=torch.float32)


def clip_gradients(params: list[Tensor], max_norm: float, mode: str = "global") -> Tensor:
    """Clip gradients in place and return the global gradient norm before clipping (a 0-dim tensor on the device:
    no host synchronisation).

    ``mode="global"``: scale all gradients together so that their joint norm is at most ``max_norm``
    (``clip_grad_norm_``). ``mode="per-parameter"``: scale each parameter's gradient on its own to a norm of at most
    ``max_norm``, as DINO's and iBOT's ``clip_gradients`` (facebookresearch/dino utils.py:132-141). ``max_norm`` 0
    measures without clipping.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), device=params[0].device if params else "cpu")
    norms = torch._foreach_norm(grads)
    total = torch.linalg.vector_norm(torch.stack(norms))
    if max_norm <= 0:
        return total
    if mode == "global":
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        torch._foreach_mul_(grads, coef)
    elif mode == "per-parameter":
        coefs = [torch.clamp(max_norm / (n + 1e-6), max=1.0) for n in norms]
        torch._foreach_mul_(grads, coefs)
    else:
        raise ValueError(f"clip mode must be 'global' or 'per-parameter', got {mode!r}")
    return total


__all__ = ["OptimSchedules", "clip_gradients", "load_optimizer_state", "make_optimizer", "make_schedules",
           "parameter_groups"]
