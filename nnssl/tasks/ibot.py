"""iBOT: image BERT pre-training with an online tokenizer.

Zhou et al., "iBOT: Image BERT Pre-Training with Online Tokenizer", ICLR 2022 (arXiv:2111.07832).
DINO's global self-distillation (``DINOLoss`` over all view pairs except same-view, on the global token) plus masked
patch-token self-distillation (``PatchDistillationLoss``): the two global crops reach the student with blocks of
tokens (BEiT-style 3D block masking, prediction ratio 0.3 +- 0.2, half of the images unmasked as in iBOT's released
commands) replaced by the mask token, the EMA teacher sees them unmasked, and the student's hidden patch tokens
predict the teacher's patch distributions of the same view. One head serves global and patch tokens by default
(``shared_head``, as iBOT's ViT-S/B runs); local crops (no mask) enter the global loss only.

Tokens: those of encoder output ``token_stage`` (default 3, stride 16: a 96^3 crop gives 6^3 = 216 tokens, close to
a ViT's 14^2 = 196) after a LayerNorm; the global token is their mean (iBOT's Swin variant averages the tokens it
distils). Masks are drawn on that token grid and expanded to the encoder's patch grid for the mask token.

Shapes (B batch, C channels, crop D x H x W divisible by 32, s = 2^(token_stage+1) voxels per token, N = D/s * H/s
* W/s, L local crops of size d x h x w, c = encoder channels at the stage):
    make_views: crops (B, C, D, H, W) -> {"global": (2B, C, D, H, W), "masks": (2B, D/s, H/s, W/s) bool,
                "local": (L*B, C, d, h, w)} (view-major; "local" absent when L = 0)
    student/teacher: tokens (N_img, N, c) -> global logits (N_img, out_dim), patch logits (N_img, N, patch_out_dim)
    forward -> {"loss", "loss/global", "loss/patch"}
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from nnssl.ema import make_teacher
from nnssl.encoders.swin import SwinEncoder
from nnssl.heads import DINOHead, tokens
from nnssl.losses.dino import DINOLoss
from nnssl.losses.ibot import PatchDistillationLoss
from nnssl.masking import block_mask, expand_mask
from nnssl.schedules import at, warmup_then_constant
from nnssl.tasks._teacher import EMATeacher
from nnssl.tasks.base import PretextTask
from nnssl.views import augment, local_crop_size, random_subcrop

N_GLOBAL = 2


@dataclass
class IBOTConfig:
    """iBOT defaults (paper and released ViT-S/16 command: out 8192, shared head, 10 local crops, ratio 0.3+-0.2)."""

    out_dim: int = 8192
    patch_out_dim: int = 8192
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    head_layers: int = 3
    norm_last_layer: bool = True
    shared_head: bool = True
    student_temp: float = 0.1
    teacher_temp_start: float = 0.04
    teacher_temp: float = 0.07
    teacher_patch_temp: float = 0.07
    #: Warm-up of both teacher temperatures as a fraction of the run (30 of 100 epochs).
    teacher_temp_warmup_fraction: float = 0.3
    center_momentum: float = 0.9
    patch_center_momentum: float = 0.9
    ema_start: float = 0.996
    ema_end: float = 1.0
    freeze_last_layer_fraction: float = 0.01  # DINO/iBOT: last head layer frozen for epoch 1 of 100
    global_weight: float = 1.0
    patch_weight: float = 1.0
    #: Prediction (mask) ratio of a masked image, drawn uniformly from pred_ratio +- pred_ratio_var per image.
    pred_ratio: float = 0.3
    pred_ratio_var: float = 0.2
    #: Probability that a global crop is masked at all (iBOT's "--pred_ratio 0 0.3" picks 0 or 0.3 at random).
    masked_image_prob: float = 0.5
    mask_min_aspect: float = 0.3
    token_stage: int = 3
    local_crops_number: int = 10
    global_crop_scale: tuple[float, float] = (0.4, 1.0)
    local_crop_scale: tuple[float, float] = (0.05, 0.4)
    local_crop_fraction: float = 0.5
    noise_std: float = 0.05

    def __post_init__(self) -> None:
        self.global_crop_scale = tuple(float(v) for v in self.global_crop_scale)
        self.local_crop_scale = tuple(float(v) for v in self.local_crop_scale)
        if self.shared_head and self.out_dim != self.patch_out_dim:
            raise ValueError("shared_head=true needs out_dim == patch_out_dim")
        if self.pred_ratio_var < 0 or not 0.0 <= self.pred_ratio - self.pred_ratio_var \
                or not self.pred_ratio + self.pred_ratio_var < 1.0:
            raise ValueError(
                f"pred_ratio +- pred_ratio_var = {self.pred_ratio} +- {self.pred_ratio_var} must stay within [0, 1)"
            )
        if not 0.0 <= self.masked_image_prob <= 1.0:
            raise ValueError(f"masked_image_prob={self.masked_image_prob} must lie in [0, 1]")
        if not 1 <= self.token_stage <= 4:
            raise ValueError(f"token_stage={self.token_stage} must be 1..4")
        if self.local_crops_number < 0:
            raise ValueError(f"local_crops_number={self.local_crops_number} must be >= 0")
        for name in ("global_crop_scale", "local_crop_scale"):
            lo, hi = getattr(self, name)
            if not 0.0 < lo <= hi <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must satisfy 0 < low <= high <= 1")
        if not 0.0 <= self.teacher_temp_warmup_fraction <= 1.0:
            raise ValueError(f"teacher_temp_warmup_fraction={self.teacher_temp_warmup_fraction} must lie in [0, 1]")
        if min(self.student_temp, self.teacher_temp_start, self.teacher_temp, self.teacher_patch_temp) <= 0:
            raise ValueError("temperatures must be > 0")


class IBOT(EMATeacher, PretextTask):
    """iBOT (Zhou et al., ICLR 2022) on the 3D Swin encoder; see the module docstring for shapes."""

    name: ClassVar[str] = "ibot"
    family: ClassVar[str] = "self-distillation"
    paper: ClassVar[str] = "Zhou et al., iBOT: Image BERT Pre-Training with Online Tokenizer, ICLR 2022"
    Config: ClassVar[type] = IBOTConfig
    uses_mask_token: ClassVar[bool] = True

    def __init__(self, encoder: SwinEncoder, cfg: IBOTConfig | None = None) -> None:
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
        self.global_loss = DINOLoss(c.out_dim, c.student_temp, c.center_momentum)
        self.patch_loss = PatchDistillationLoss(c.patch_out_dim, c.student_temp, c.patch_center_momentum)
        self.teacher_encoder = make_teacher(encoder)
        self.teacher_heads = make_teacher(self.heads)
        self._momentum: np.ndarray | None = None

    def setup(self, total_steps: int) -> None:
        super().setup(total_steps)
        c = self.cfg
        self._patch_temp = warmup_then_constant(c.teacher_temp_start, c.teacher_patch_temp, total_steps,
                                                self._warmup_steps)

    def patch_temperature(self, step: int) -> float:
        self._check_setup()
        return at(self._patch_temp, step)

    def token_grid(self, size: tuple[int, ...]) -> tuple[int, int, int]:
        stride = self.patch * self.token_factor
        return tuple(s // stride for s in size)  # type: ignore[return-value]

    def make_views(self, crops: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        c = self.cfg
        size = tuple(crops.shape[2:])
        g = torch.cat([augment(random_subcrop(crops, size, c.global_crop_scale, generator), generator, c.noise_std)
                       for _ in range(N_GLOBAL)])
        n = g.shape[0]
        ratios = c.pred_ratio + c.pred_ratio_var * (2.0 * torch.rand(n, generator=generator, dtype=torch.float64) - 1)
        masked = torch.rand(n, generator=generator) < c.masked_image_prob
        ratios = torch.where(masked, ratios, torch.zeros_like(ratios))
        views = {"global": g, "masks": block_mask(n, self.token_grid(size), ratios, c.mask_min_aspect,
                                                  generator=generator)}
        if c.local_crops_number:
            small = local_crop_size(size, c.local_crop_fraction)
            views["local"] = torch.cat([
                augment(random_subcrop(crops, small, c.local_crop_scale, generator), generator, c.noise_std)
                for _ in range(c.local_crops_number)])
        return views

    def _tokens(self, feats: list[Tensor], heads: nn.ModuleDict) -> Tensor:
        """Encoder outputs -> normalised tokens (N_img, N, c) of the distilled stage."""
        return heads["norm"](tokens(feats[self.cfg.token_stage]))

    def forward(self, views: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        self._check_setup()
        g, masks, loc = views["global"], views["masks"], views.get("local")
        batch = g.shape[0] // N_GLOBAL
        patch_mask = expand_mask(masks, self.token_factor)
        if loc is not None and loc.shape[2:] == g.shape[2:]:
            # Same size: one encoder call, the local crops with an all-visible mask.
            visible = torch.zeros((loc.shape[0], *patch_mask.shape[1:]), dtype=torch.bool, device=patch_mask.device)
            tok = self._tokens(self.student(torch.cat([g, loc]), torch.cat([patch_mask, visible])), self.heads)
            s_global = self.heads["global"](tok.mean(dim=1))
            tok = tok[: g.shape[0]]
        else:
            tok = self._tokens(self.student(g, patch_mask), self.heads)
            s_global = self.heads["global"](tok.mean(dim=1))
            if loc is not None:
                l_tok = self._tokens(self.student(loc), self.heads)
                s_global = torch.cat([s_global, self.heads["global"](l_tok.mean(dim=1))])
        s_patch = self.heads["patch"](tok)  # local crops have no patch loss: only the global crops' tokens
        with torch.no_grad():
            t_tok = self._tokens(self.teacher_encoder(g), self.teacher_heads)
            t_global, t_patch = self.teacher_heads["global"](t_tok.mean(dim=1)), self.teacher_heads["patch"](t_tok)
        loss_global = self.global_loss(s_global.split(batch), t_global.split(batch), self.teacher_temperature(step))
        loss_patch = self.patch_loss(s_patch.split(batch), t_patch.split(batch), masks.flatten(1).split(batch),
                                     self.patch_temperature(step))
        c = self.cfg
        loss = c.global_weight * loss_global + c.patch_weight * loss_patch
        return {"loss": loss, "loss/global": loss_global.detach(), "loss/patch": loss_patch.detach()}
