"""Optimisation recipes: each method's reference settings for the one pretraining loop (AdamW + schedules).

A method's class carries its ``recipe`` (read from the authors' code and command lines; every value is cited in the
method's page under documentation/methods/); the loop resolves it against the run's global batch and whatever the
command line sets explicitly, which always wins. ``nnssl_pretrain -m METHOD --show-config`` prints the result.

Learning rate: ``base_lr`` at ``reference_batch`` crops, scaled linearly with the global batch (Goyal et al.'s rule,
as DINO main_dino.py:238-239 ``lr * batch / 256``, SimMIM ``/ 512``, MAE, MoCo v3); ``reference_batch=None`` means the
reference uses an absolute learning rate. Warm-up is linear from 0 over ``warmup_fraction`` of the steps, then a cosine
to ``min_lr`` (``schedule="cosine"``) or a constant (``"constant"``, Taleb et al.'s plain Adam). Weight decay follows
a cosine from ``weight_decay`` to ``weight_decay_end`` (DINO's 0.04 -> 0.4) and is applied to every weight matrix;
biases and one-dimensional parameters (norms, tokens) get none unless ``decay_all_parameters`` (the references that
pass ``model.parameters()`` to AdamW: MoCo v3, SMIT, Tang et al.). Gradient clipping: ``clip_grad`` (0 = none) on the
global norm of all gradients, or on each parameter's own gradient norm (``clip_mode="per-parameter"``, DINO's and
iBOT's ``clip_gradients``, dino utils.py:132-141).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

SCHEDULES = ("cosine", "constant")
#: The settings a command line or a grid spec may set explicitly.
OVERRIDABLE = ("lr", "min_lr", "warmup_steps", "weight_decay", "weight_decay_end", "clip_grad", "betas")
CLIP_MODES = ("global", "per-parameter")


@dataclass(frozen=True)
class OptimRecipe:
    """A method's reference optimisation settings (see the module docstring for each field's meaning)."""

    base_lr: float
    reference_batch: int | None = 256
    min_lr: float = 0.0
    scale_min_lr: bool = False
    warmup_fraction: float = 0.0
    schedule: str = "cosine"
    weight_decay: float = 0.0
    weight_decay_end: float | None = None
    decay_all_parameters: bool = False
    clip_grad: float = 0.0
    clip_mode: str = "global"
    betas: tuple[float, float] = (0.9, 0.999)
    #: The reference's run this recipe was read from (shown by --show-config; details in the method's page).
    source: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if not self.base_lr > 0:
            raise ValueError(f"base_lr must be > 0, got {self.base_lr}")
        if self.reference_batch is not None and self.reference_batch < 1:
            raise ValueError(f"reference_batch must be >= 1 or None, got {self.reference_batch}")
        if self.min_lr < 0 or not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError("need min_lr >= 0 and 0 <= warmup_fraction < 1")
        if self.schedule not in SCHEDULES or self.clip_mode not in CLIP_MODES:
            raise ValueError(f"schedule must be one of {SCHEDULES} and clip_mode one of {CLIP_MODES}")
        if self.weight_decay < 0 or (self.weight_decay_end is not None and self.weight_decay_end < 0):
            raise ValueError("weight decay must be >= 0")
        if self.clip_grad < 0 or len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError("need clip_grad >= 0 and two betas in [0, 1)")

    def scale(self, global_batch: int) -> float:
        """The factor the linear scaling rule applies at ``global_batch`` crops (1 without a reference batch)."""
        return 1.0 if self.reference_batch is None else global_batch / self.reference_batch

    def resolve(self, global_batch: int, total_steps: int, **explicit: Any) -> "ResolvedOptim":
        """The settings of a run of ``total_steps`` at ``global_batch``; keyword arguments that are not None
        (lr, min_lr, warmup_steps, weight_decay, weight_decay_end, clip_grad, betas) replace the recipe's values."""
        unknown = sorted(set(explicit) - set(OVERRIDABLE))
        if unknown:
            raise ValueError(f"unknown optimisation setting(s) {unknown}")
        scale = self.scale(global_batch)
        derived = {
            "lr": self.base_lr * scale,
            "min_lr": self.min_lr * (scale if self.scale_min_lr else 1.0),
            "warmup_steps": int(round(self.warmup_fraction * total_steps)),
            "weight_decay": self.weight_decay,
            "weight_decay_end": self.weight_decay if self.weight_decay_end is None else self.weight_decay_end,
            "clip_grad": self.clip_grad,
            "betas": self.betas,
        }
        values, sources = {}, {}
        for key, default in derived.items():
            given = explicit.get(key)
            values[key] = default if given is None else given
            sources[key] = "method default" if given is None else "set explicitly"
        if self.schedule == "constant" and explicit.get("min_lr") is None:
            values["min_lr"] = values["lr"]
        return ResolvedOptim(**values, schedule=self.schedule, clip_mode=self.clip_mode,
                             decay_all_parameters=self.decay_all_parameters, sources=sources)

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain data (betas as a list), for config.json and ``--show-config``."""
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d


@dataclass(frozen=True)
class ResolvedOptim:
    """The optimisation settings a run uses (recipe resolved at its batch, explicit values applied)."""

    lr: float
    min_lr: float
    warmup_steps: int
    weight_decay: float
    weight_decay_end: float
    clip_grad: float
    betas: tuple[float, float]
    schedule: str = "cosine"
    clip_mode: str = "global"
    decay_all_parameters: bool = False
    sources: dict[str, str] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The resolved settings as plain data (betas as a list, ``sources`` included), for config.json and
        ``--show-config``."""
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    def describe(self) -> str:
        """One line per setting with where it came from."""
        rows = [f"  {k:<18} {getattr(self, k)!s:<14} ({self.sources.get(k, 'method default')})" for k in OVERRIDABLE]
        rows += [f"  {'schedule':<18} {self.schedule}", f"  {'clip_mode':<18} {self.clip_mode}",
                 f"  {'decay_all_params':<18} {self.decay_all_parameters}"]
        return "\n".join(rows)


__all__ = ["CLIP_MODES", "OVERRIDABLE", "OptimRecipe", "ResolvedOptim", "SCHEDULES"]
