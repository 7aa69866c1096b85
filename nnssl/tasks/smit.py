"""SMIT: self-distilled masked image transformer.

Jiang et al., "Self-supervised 3D anatomy segmentation using self-distilled masked image transformer (SMIT)",
MICCAI 2022 (arXiv:2205.10342); reference code The-Veeraraghavan-Lab/SMIT (train_self_supervised.py, models/Trans.py;
cited in documentation/methods/smit.md with file and line).

The loader's crop is SMIT's region (128^3 in the paper); two views of ``view_size``^3 voxels (96^3) are cut from it
at native resolution (no interpolation, as train_self_supervised.py:234-236). Each view goes through the student with
random 16^3-voxel cubes (ratio 0.7) replaced by the mask token and through an EMA teacher unmasked. Three losses:
  * masked voxel reconstruction: L1 between the student's light-decoder output and the view on hidden voxels;
  * masked patch-token self-distillation (iBOT-style): student patch tokens of a view vs the teacher's tokens of the
    same view, on hidden tokens only;
  * global self-distillation (DINO-style) across the two views, the global token being the mean of the stage tokens.
Total = 1.0 recon + 0.1 patch + 0.1 global. The tokens are those of the encoder stage at stride 16 (output index 3,
8F channels), as SMIT distils the tokens after its third patch merging (384 channels at feature size 48), followed by
a LayerNorm (eps 1e-6). With 16^3-voxel cubes every stride-16 token is either fully hidden or fully visible.

Shapes (B batch, C channels, region R^3, view V^3 (V divisible by 32), F feature size, N = (V/16)^3 tokens):
    make_views: crops (B, C, R, R, R) -> {"views": (2B, C, V, V, V) view-major, "masks": (2B, V/2, V/2, V/2) bool}
    student: tokens (2B, N, 8F) -> global logits (2B, out_dim), patch logits (2B, N, patch_out_dim);
             last stage (2B, 16F, V/32, ...) -> reconstruction (2B, C, V, V, V)
    teacher: the same logits from the unmasked views, no gradient.
    forward -> {"loss", "loss/recon", "loss/patch", "loss/global"}
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import torch
from torch import Tensor, nn

from nnssl.decoders import LightDecoder
from nnssl.distillation import DistillationSchedule, HeadSettings, distillation_heads, global_logits, normalized_tokens
from nnssl.encoders.swin import SWIN_DIVISOR, SwinEncoder, check_swin_input_size
from nnssl.losses.dino import DINOLoss
from nnssl.losses.ibot import PatchDistillationLoss
from nnssl.losses.reconstruction import masked_l1
from nnssl.masking import downsample_mask, random_cube_mask, upsample_mask
from nnssl.recipes import OptimRecipe
from nnssl.tasks.base import PretextTask, ViewFn
from nnssl.teacher import MomentumTeacher
from nnssl.views import native_subcrop

#: Encoder output whose tokens are distilled: stride 16, 8F channels (SMIT's tokens after the third patch merging).
TOKEN_STAGE = 3


@dataclass
class SMITConfig:
    """SMIT defaults from the paper and train_self_supervised.py (500 epochs)."""

    mask_ratio: float = 0.7
    mask_cube_voxels: int = 16
    #: Edge of the two views cut from the loader's crop (the region), in voxels: SMIT's 96 (from 128).
    view_size: int = 96
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
    #: The heads' last layer is frozen during the first epoch of 500.
    freeze_last_layer_fraction: float = 1 / 500
    recon_weight: float = 1.0
    patch_weight: float = 0.1
    global_weight: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio={self.mask_ratio} must lie in (0, 1)")
        if self.mask_cube_voxels < 2 or self.mask_cube_voxels % 2:
            raise ValueError(f"mask_cube_voxels={self.mask_cube_voxels} must be an even number >= 2 (patch size 2)")
        if self.view_size < SWIN_DIVISOR or self.view_size % SWIN_DIVISOR:
            raise ValueError(f"view_size={self.view_size} must be a multiple of 32 (Swin), e.g. 64 or 96")
        if self.shared_head and self.out_dim != self.patch_out_dim:
            raise ValueError("shared_head=true needs out_dim == patch_out_dim")
        for name in ("teacher_temp_warmup_fraction", "patch_temp_delay_fraction", "freeze_last_layer_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must lie in [0, 1]")
        if min(self.student_temp, self.teacher_temp_start, self.teacher_temp) <= 0:
            raise ValueError("temperatures must be > 0")


def smit_views(crops: Tensor, generator: torch.Generator, *, cfg: SMITConfig, patch: int) -> dict[str, Tensor]:
    """Crops (B, C, D, H, W) -> {"views": (2B, C, v, v, v) two native sub-crops per crop, "masks": (2B, v/p, v/p,
    v/p) bool cubes on the patch grid}."""
    size = (cfg.view_size,) * 3
    views = torch.cat([native_subcrop(crops, size, generator)[0] for _ in range(2)])
    grid = tuple(s // patch for s in size)
    masks = random_cube_mask(views.shape[0], grid, cfg.mask_cube_voxels // patch, cfg.mask_ratio, generator)
    return {"views": views, "masks": masks}


class SMIT(PretextTask):
    """SMIT (Jiang et al., MICCAI 2022) on the 3D Swin encoder; see the module docstring for shapes."""

    name: ClassVar[str] = "smit"
    family: ClassVar[str] = "MIM + self-distillation"
    paper: ClassVar[str] = ("Jiang et al., Self-supervised 3D anatomy segmentation using self-distilled masked image "
                            "transformer (SMIT), MICCAI 2022")
    Config: ClassVar[type] = SMITConfig
    uses_mask_token: ClassVar[bool] = True
    #: train_self_supervised.py: AdamW with torch's defaults (weight decay 0.01 on every parameter, no clipping),
    #: lr 1e-4 per volume, 20 warm-up epochs of 500, cosine to 0.
    recipe: ClassVar[OptimRecipe] = OptimRecipe(
        base_lr=1e-4, reference_batch=1, min_lr=0.0, warmup_fraction=20 / 500, weight_decay=0.01,
        decay_all_parameters=True, source="The-Veeraraghavan-Lab/SMIT train_self_supervised.py (500 epochs, batch 6)")

    def __init__(self, encoder: SwinEncoder, cfg: SMITConfig | None = None) -> None:
        super().__init__(encoder, cfg)
        c = self.cfg
        self.patch = encoder.cfg.patch_size
        self.token_factor = 2 ** TOKEN_STAGE  # token grid stride relative to the patch grid
        head = HeadSettings(c.out_dim, c.head_hidden_dim, c.head_bottleneck_dim, c.head_layers, c.norm_last_layer)
        self.heads = distillation_heads(encoder.out_channels[TOKEN_STAGE], head, c.patch_out_dim, c.shared_head)
        self.decoder = LightDecoder(encoder.out_channels[-1], encoder.cfg.in_channels, stride=32)
        self.global_loss = DINOLoss(c.out_dim, c.student_temp, c.center_momentum)
        self.patch_loss = PatchDistillationLoss(c.patch_out_dim, c.student_temp, c.patch_center_momentum)
        # The teacher reconstructs nothing: encoder + token norm + heads only.
        self.teacher = MomentumTeacher({"encoder": encoder, "heads": self.heads}, c.ema_start, c.ema_end)
        self.schedule = DistillationSchedule(c.teacher_temp_start, c.teacher_temp, c.teacher_temp_warmup_fraction,
                                             c.freeze_last_layer_fraction, c.teacher_temp, c.patch_temp_delay_fraction)

    def setup(self, total_steps: int) -> None:
        """Set up the teacher's EMA momentum and the global and patch teacher-temperature schedules (the patch one
        held at its start value for ``patch_temp_delay_fraction``) for ``total_steps``."""
        super().setup(total_steps)
        self.teacher.setup(total_steps)
        self.schedule.setup(total_steps)

    @classmethod
    def check_crop(cls, crop: tuple[int, ...], cfg: SMITConfig) -> list[str]:
        """Swin's rule and a ValueError when an axis of the crop is below ``view_size``; warns when the two views
        would be the same sub-volume (crop == view_size) and below the paper's 128^3 region with 96^3 views."""
        check_swin_input_size(crop)
        v = cfg.view_size
        if any(s < v for s in crop):
            raise ValueError(f"SMIT cuts two {v}^3 views from the crop, which is smaller ({tuple(crop)}): use a crop of "
                             f"at least {v} (SMIT: --crop 128 with view_size 96), or lower -o view_size")
        warnings = []
        if all(s == v for s in crop):
            warnings.append(f"SMIT's two views of a {v}^3 crop are the same sub-volume (only their masks differ): use "
                            f"a larger crop than view_size (SMIT: 128 for 96)")
        if v < 96 or min(crop) < 128:
            warnings.append(f"SMIT at crop {tuple(crop)} / view_size {v}: its page recommends the paper's 128^3 "
                            "region with 96^3 views")
        return warnings

    def view_fn(self) -> ViewFn:
        """``smit_views`` bound to the config and patch size: two native ``view_size``^3 sub-crops per crop and their
        cube masks on the patch grid."""
        return partial(smit_views, cfg=self.cfg, patch=self.patch)

    def _logits(self, features: list[Tensor], heads: nn.ModuleDict) -> tuple[Tensor, Tensor]:
        """Encoder outputs -> (global logits (N_img, out_dim), patch logits (N_img, N_tok, patch_out_dim))."""
        tok = normalized_tokens(features[TOKEN_STAGE], heads)
        return global_logits(tok, heads), heads["patch"](tok)

    def token_mask(self, masks: Tensor) -> Tensor:
        """Patch-grid mask (B, D/2, H/2, W/2) -> token mask (B, N) at the distilled stage (True = mostly hidden)."""
        return (downsample_mask(masks, self.token_factor) > 0.5).flatten(1)

    def forward(self, views: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        """Student: the masked views (2B, C, V, V, V) -> stage-3 global and patch logits and the light decoder's
        reconstruction; EMA teacher: the unmasked views. Returns {"loss": recon_weight * L1 on hidden voxels +
        patch_weight * patch distillation on hidden tokens + global_weight * DINO loss across the two views,
        "loss/recon", "loss/patch", "loss/global"}."""
        x, masks = views["views"], views["masks"]
        feats = self.student(x, masks)
        s_global, s_patch = self._logits(feats, self.heads)
        recon = self.decoder(feats[-1])
        with torch.no_grad():
            t_global, t_patch = self._logits(self.teacher["encoder"](x), self.teacher["heads"])
        loss_recon = masked_l1(recon, x, upsample_mask(masks, self.patch))
        loss_global = self.global_loss(s_global.chunk(2), t_global.chunk(2), self.schedule.teacher_temp(step))
        loss_patch = self.patch_loss(s_patch.chunk(2), t_patch.chunk(2), self.token_mask(masks).chunk(2),
                                     self.schedule.patch_temp(step))
        c = self.cfg
        loss = c.recon_weight * loss_recon + c.patch_weight * loss_patch + c.global_weight * loss_global
        return {"loss": loss, "loss/recon": loss_recon.detach(), "loss/patch": loss_patch.detach(),
                "loss/global": loss_global.detach()}

    def before_optimizer_step(self, step: int) -> None:
        """Cancel the gradients of the heads' last layer during the first ``freeze_last_layer_fraction`` of the run."""
        self.schedule.freeze(step, self.heads)

    @torch.no_grad()
    def on_step_end(self, step: int) -> None:
        """EMA update of the teacher's encoder and heads from the student's (the decoder has no teacher copy)."""
        self.teacher.update(step, {"encoder": self.student, "heads": self.heads})
