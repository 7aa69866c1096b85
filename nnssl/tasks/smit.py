"""SMIT: self-distilled masked image transformer.

Jiang et al., "Self-supervised 3D anatomy segmentation using self-distilled masked image transformer (SMIT)",
MICCAI 2022 (arXiv:2205.10342), and the authors' code (github.com/The-Veeraraghavan-Lab/SMIT,
train_self_supervised.py, models/Trans.py).

Two views of a crop go through the student with random 16^3-voxel cubes (ratio 0.7) replaced by the mask token and
through an EMA teacher unmasked. Three losses:
  * masked voxel reconstruction: L1 between the student's light-decoder output and the input on hidden voxels;
  * masked patch-token self-distillation (iBOT-style): student patch tokens of a view vs the teacher's tokens of the
    same view, on hidden tokens only;
  * global self-distillation (DINO-style) across the two views, the global token being the mean of the stage tokens.
Total = 1.0 recon + 0.1 patch + 0.1 global. The tokens are those of the encoder stage at stride 16 (output index 3,
8F channels), as SMIT distils its stage-3 tokens (384 channels for feature size 48), followed by a LayerNorm (eps
1e-6) as in SMIT. With 16^3-voxel cubes every stride-16 token is either fully hidden or fully visible.

Deliberate differences from the released code: the EMA momentum follows one cosine 0.996 -> 1 over all *global*
steps (the code restarts it every epoch), and schedules are fractions of the run instead of epochs. SMIT crops two
96^3 views from a 128^3 region; here each view is a random sub-volume holding ``view_volume_fraction`` of the crop
(default 0.42 = (96/128)^3), resized back to the crop size.

Shapes (B batch, C channels, crop D x H x W divisible by 32, F feature size, N = D/16 * H/16 * W/16 tokens):
    make_views: crops (B, C, D, H, W) -> {"views": (2B, C, D, H, W) view-major, "masks": (2B, D/2, H/2, W/2) bool}
    student: tokens (2B, N, 8F) -> global logits (2B, out_dim), patch logits (2B, N, patch_out_dim);
             last stage (2B, 16F, D/32, ...) -> reconstruction (2B, C, D, H, W)
    teacher: the same logits from the unmasked views, no gradient.
    forward -> {"loss", "loss/recon", "loss/patch", "loss/global"}
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from nnssl.decoders import LightDecoder
from nnssl.ema import make_teacher
from nnssl.encoders.swin import SwinEncoder
from nnssl.heads import DINOHead, tokens
from nnssl.losses.dino import DINOLoss
from nnssl.losses.ibot import PatchDistillationLoss
from nnssl.losses.reconstruction import masked_l1
from nnssl.masking import downsample_mask, random_cube_mask, upsample_mask
from nnssl.schedules import at, warmup_then_constant
from nnssl.tasks._teacher import EMATeacher
from nnssl.tasks.base import PretextTask
from nnssl.views import random_subcrop


@dataclass
class SMITConfig:
    """SMIT defaults from the paper and train_self_supervised.py (500 epochs, warm-ups of 30 epochs)."""

    mask_ratio: float = 0.7
    mask_cube_voxels: int = 16
    #: Heads: SMIT uses iBOT heads with out_dim 8192 for both the global and the patch tokens, separate by default.
    out_dim: int = 8192
    patch_out_dim: int = 8192
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    head_layers: int = 3
    norm_last_layer: bool = True
    shared_head: bool = False
    student_temp: float = 0.1
    teacher_temp_start: float = 0.04
    teacher_temp: float = 0.07
    #: Linear teacher-temperature warm-up length as a fraction of the run (30 of 500 epochs).
    teacher_temp_warmup_fraction: float = 0.06
    #: The patch temperature stays at its start value this long before its warm-up (pred_start_epoch 30 of 500).
    patch_temp_delay_fraction: float = 0.06
    center_momentum: float = 0.9
    patch_center_momentum: float = 0.9
    ema_start: float = 0.996
    ema_end: float = 1.0
    freeze_last_layer_fraction: float = 0.01  # DINO/iBOT: last head layer frozen for epoch 1 of 100
    recon_weight: float = 1.0
    patch_weight: float = 0.1
    global_weight: float = 0.1
    #: Encoder output whose tokens are distilled (3 = stride 16, 8F channels, SMIT's stage-3 tokens).
    token_stage: int = 3
    #: Voxel fraction of the crop each of the two views covers (range sampled uniformly), resized to the crop size.
    view_volume_fraction: tuple[float, float] = (0.42, 0.42)

    def __post_init__(self) -> None:
        self.view_volume_fraction = tuple(float(v) for v in self.view_volume_fraction)
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio={self.mask_ratio} must lie in (0, 1)")
        if self.mask_cube_voxels < 2 or self.mask_cube_voxels % 2:
            raise ValueError(f"mask_cube_voxels={self.mask_cube_voxels} must be an even number >= 2 (patch size 2)")
        if not 1 <= self.token_stage <= 4:
            raise ValueError(f"token_stage={self.token_stage} must be 1..4 (encoder outputs after the first stage)")
        if self.shared_head and self.out_dim != self.patch_out_dim:
            raise ValueError("shared_head=true needs out_dim == patch_out_dim")
        for name in ("teacher_temp_warmup_fraction", "patch_temp_delay_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must lie in [0, 1]")
        if min(self.student_temp, self.teacher_temp_start, self.teacher_temp) <= 0:
            raise ValueError("temperatures must be > 0")
        lo, hi = self.view_volume_fraction
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"view_volume_fraction={self.view_volume_fraction} must satisfy 0 < low <= high <= 1")


class SMIT(EMATeacher, PretextTask):
    """SMIT (Jiang et al., MICCAI 2022) on the 3D Swin encoder; see the module docstring for shapes."""

    name: ClassVar[str] = "smit"
    family: ClassVar[str] = "MIM + self-distillation"
    paper: ClassVar[str] = ("Jiang et al., Self-supervised 3D anatomy segmentation using self-distilled masked image "
                            "transformer (SMIT), MICCAI 2022")
    Config: ClassVar[type] = SMITConfig
    uses_mask_token: ClassVar[bool] = True

    def __init__(self, encoder: SwinEncoder, cfg: SMITConfig | None = None) -> None:
        super().__init__(encoder, cfg)
        c = self.cfg
        self.patch = encoder.cfg.patch_size
        self.token_factor = 2 ** c.token_stage  # token grid stride relative to the patch grid
        dim = encoder.out_channels[c.token_stage]
        global_head = DINOHead(dim, c.out_dim, c.head_hidden_dim, c.head_bottleneck_dim, c.head_layers,
                               c.norm_last_layer)
        patch_head = global_head if c.shared_head else DINOHead(
            dim, c.patch_out_dim, c.head_hidden_dim, c.head_bottleneck_dim, c.head_layers, c.norm_last_layer)
        self.heads = nn.ModuleDict({"norm": nn.LayerNorm(dim, eps=1e-6), "global": global_head, "patch": patch_head})
        self.decoder = LightDecoder(encoder.out_channels[-1], encoder.cfg.in_channels, stride=32)
        self.global_loss = DINOLoss(c.out_dim, c.student_temp, c.center_momentum)
        self.patch_loss = PatchDistillationLoss(c.patch_out_dim, c.student_temp, c.patch_center_momentum)
        # The teacher reconstructs nothing: encoder + token norm + heads only.
        self.teacher_encoder = make_teacher(encoder)
        self.teacher_heads = make_teacher(self.heads)
        self._momentum: np.ndarray | None = None

    # ---------------------------------------------------------------- schedules and teacher
    def setup(self, total_steps: int) -> None:
        super().setup(total_steps)
        c = self.cfg
        # Patch distillation starts later (SMIT's pred_start_epoch); its temperature warms up from then on.
        delay = min(round(c.patch_temp_delay_fraction * total_steps), total_steps)
        rest = warmup_then_constant(c.teacher_temp_start, c.teacher_temp, total_steps - delay, self._warmup_steps) \
            if total_steps > delay else np.zeros(0)
        self._patch_temp = np.concatenate([np.full(delay, c.teacher_temp_start), rest])

    def patch_temperature(self, step: int) -> float:
        self._check_setup()
        return at(self._patch_temp, step)

    # ---------------------------------------------------------------- views and forward
    def make_views(self, crops: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        size = tuple(crops.shape[2:])
        scale = self.cfg.view_volume_fraction
        views = torch.cat([random_subcrop(crops, size, scale, generator) for _ in range(2)])
        grid = tuple(s // self.patch for s in size)
        masks = random_cube_mask(views.shape[0], grid, self.cfg.mask_cube_voxels // self.patch, self.cfg.mask_ratio,
                                 generator)
        return {"views": views, "masks": masks}

    def _logits(self, features: list[Tensor], heads: nn.ModuleDict) -> tuple[Tensor, Tensor]:
        """Encoder outputs -> (global logits (N_img, out_dim), patch logits (N_img, N_tok, patch_out_dim))."""
        tok = heads["norm"](tokens(features[self.cfg.token_stage]))
        return heads["global"](tok.mean(dim=1)), heads["patch"](tok)

    def token_mask(self, masks: Tensor) -> Tensor:
        """Patch-grid mask (B, D/2, H/2, W/2) -> token mask (B, N) at the distilled stage (True = mostly hidden)."""
        return (downsample_mask(masks, self.token_factor) > 0.5).flatten(1)

    def forward(self, views: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        self._check_setup()
        x, masks = views["views"], views["masks"]
        feats = self.student(x, masks)
        s_global, s_patch = self._logits(feats, self.heads)
        recon = self.decoder(feats[-1])
        with torch.no_grad():
            t_global, t_patch = self._logits(self.teacher_encoder(x), self.teacher_heads)
        loss_recon = masked_l1(recon, x, upsample_mask(masks, self.patch))
        loss_global = self.global_loss(s_global.chunk(2), t_global.chunk(2), self.teacher_temperature(step))
        loss_patch = self.patch_loss(s_patch.chunk(2), t_patch.chunk(2), self.token_mask(masks).chunk(2),
                                     self.patch_temperature(step))
        c = self.cfg
        loss = c.recon_weight * loss_recon + c.patch_weight * loss_patch + c.global_weight * loss_global
        return {"loss": loss, "loss/recon": loss_recon.detach(), "loss/patch": loss_patch.detach(),
                "loss/global": loss_global.detach()}
