"""Pieces of the self-distillation methods (DINO, iBOT, SMIT), written once: the heads, the temperature schedules
and the last-layer freeze.

DINO (Caron et al., ICCV 2021) and iBOT (Zhou et al., ICLR 2022) map tokens to K-way distributions through a DINO
head; the teacher's distribution is sharpened by a temperature warmed up linearly (facebookresearch/dino
main_dino.py:374-378) and, for iBOT's patch tokens, optionally held at its start value until masked modelling begins
(bytedance/ibot main_ibot.py:503-512; SMIT does the same, The-Veeraraghavan-Lab/SMIT train_self_supervised.py:84-93).
The head's last layer gets no update during the first epoch (``freeze_last_layer``, dino utils.py:144-149).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import Tensor, nn

from nnssl.heads import DINOHead, cancel_last_layer_gradients, tokens
from nnssl.schedules import at, warmup_then_constant


@dataclass(frozen=True)
class HeadSettings:
    """A DINO head's shape: MLP layers, hidden and bottleneck widths, output K, frozen last-layer norm."""

    out_dim: int
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    layers: int = 3
    norm_last_layer: bool = True

    def build(self, in_dim: int, out_dim: int | None = None) -> DINOHead:
        """A DINOHead from ``in_dim`` to ``out_dim`` (default: the settings' ``out_dim``)."""
        return DINOHead(in_dim, out_dim or self.out_dim, self.hidden_dim, self.bottleneck_dim, self.layers,
                        self.norm_last_layer)


def distillation_heads(dim: int, head: HeadSettings, patch_out_dim: int | None = None,
                       shared: bool = False) -> nn.ModuleDict:
    """``norm`` (LayerNorm, eps 1e-6, the affine final norm of a ViT/Swin backbone) + ``global`` head, and with
    ``patch_out_dim`` a ``patch`` head (the same module when ``shared``, as iBOT's ``--shared_head true``)."""
    if shared and patch_out_dim is not None and patch_out_dim != head.out_dim:
        raise ValueError(f"a shared head needs out_dim == patch_out_dim, got {head.out_dim} and {patch_out_dim}")
    heads = nn.ModuleDict({"norm": nn.LayerNorm(dim, eps=1e-6), "global": head.build(dim)})
    if patch_out_dim is not None:
        heads["patch"] = heads["global"] if shared else head.build(dim, patch_out_dim)
    return heads


def normalized_tokens(features: Tensor, heads: nn.ModuleDict) -> Tensor:
    """One encoder stage (N_img, C, d, h, w) -> its tokens (N_img, d*h*w, C) after the heads' LayerNorm."""
    return heads["norm"](tokens(features))


def global_logits(tok: Tensor, heads: nn.ModuleDict) -> Tensor:
    """Normalised tokens (N_img, N, C) -> global logits (N_img, out_dim): the head on the mean token (the average-
    pooled token iBOT's Swin uses as its class token, ibot models/swin_transformer.py:622-645)."""
    return heads["global"](tok.mean(dim=1))


class DistillationSchedule:
    """Teacher temperatures per global step and the steps during which the heads' last layer is frozen.

    ``teacher_temp(step)``: linear from ``temp_start`` to ``temp`` over ``warmup_fraction`` of the run, then
    constant. ``patch_temp(step)``: the same for ``patch_temp`` after ``patch_delay_fraction`` of the run during which
    it stays at ``temp_start``. ``freeze(step, heads)`` drops the last layers' gradients while
    ``step < freeze_fraction * total_steps``.
    """

    def __init__(self, temp_start: float, temp: float, warmup_fraction: float, freeze_fraction: float,
                 patch_temp: float | None = None, patch_delay_fraction: float = 0.0) -> None:
        for name, value in (("warmup_fraction", warmup_fraction), ("freeze_fraction", freeze_fraction),
                            ("patch_delay_fraction", patch_delay_fraction)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value} must lie in [0, 1]")
        if min(temp_start, temp, patch_temp if patch_temp is not None else temp) <= 0:
            raise ValueError("teacher temperatures must be > 0")
        self.temp_start, self.temp, self.patch_temp_end = float(temp_start), float(temp), patch_temp
        self.warmup_fraction, self.freeze_fraction = float(warmup_fraction), float(freeze_fraction)
        self.patch_delay_fraction = float(patch_delay_fraction)
        self._teacher: np.ndarray | None = None
        self._patch: np.ndarray | None = None
        self.freeze_steps = 0

    def setup(self, total_steps: int) -> None:
        """Precompute the temperature schedules and the freeze length for a run of ``total_steps``."""
        warmup = round(self.warmup_fraction * total_steps)
        self._teacher = warmup_then_constant(self.temp_start, self.temp, total_steps, warmup)
        self.freeze_steps = round(self.freeze_fraction * total_steps)
        if self.patch_temp_end is not None:
            delay = min(round(self.patch_delay_fraction * total_steps), total_steps)
            rest = warmup_then_constant(self.temp_start, self.patch_temp_end, total_steps - delay, warmup) \
                if total_steps > delay else np.zeros(0)
            self._patch = np.concatenate([np.full(delay, self.temp_start), rest])

    def _check(self) -> None:
        if self._teacher is None:
            raise RuntimeError("setup(total_steps) must be called before training (the loop does)")

    def teacher_temp(self, step: int) -> float:
        """Teacher temperature of the global head at ``step`` (after ``setup``)."""
        self._check()
        return at(self._teacher, step)  # type: ignore[arg-type]

    def patch_temp(self, step: int) -> float:
        """Teacher temperature of the patch head at ``step``; RuntimeError without ``patch_temp``."""
        self._check()
        if self._patch is None:
            raise RuntimeError("this schedule has no patch temperature")
        return at(self._patch, step)

    def freeze(self, step: int, heads: nn.Module) -> None:
        """Cancel the last-layer gradients of every DINO head in ``heads`` during the first steps."""
        if step < self.freeze_steps:
            cancel_last_layer_gradients(heads)


__all__ = ["DistillationSchedule", "HeadSettings", "distillation_heads", "global_logits", "normalized_tokens"]
