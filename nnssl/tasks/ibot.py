"""iBOT: image BERT pre-training with an online tokenizer.

Zhou et al., "iBOT: Image BERT Pre-Training with Online Tokenizer", ICLR 2022 (arXiv:2111.07832); reference code
bytedance/ibot (cited in documentation/methods/ibot.md with file and line).
DINO's global self-distillation (``DINOLoss`` over all view pairs except same-view, on the global token) plus masked
patch-token self-distillation (``PatchDistillationLoss``): the two global crops reach the student with blocks of
tokens replaced by the mask token (BEiT-style 3D block masking; each global crop independently unmasked or masked with
a ratio in 0.3 +- 0.2, iBOT's ``--pred_ratio 0 0.3 --pred_ratio_var 0 0.2``), the EMA teacher sees them unmasked, and
the student's hidden patch tokens predict the teacher's patch distributions of the same view. One head serves global
and patch tokens (``--shared_head true``); local crops (no mask) enter the global loss only. Masked modelling starts
after ``pred_start_fraction`` of the run (``--pred_start_epoch 50`` of 300 in the Swin-T command).

Tokens: as iBOT's Swin (models/swin_transformer.py:622-645), the final stage's tokens after a LayerNorm are the patch
tokens and their mean is the class token, so every stage of the encoder is trained. Masks are drawn on that token
grid (stride 32: a 96^3 crop has 3^3 = 27 tokens) and expanded to the encoder's patch grid for the mask token, as
iBOT's mask grid for Swin is ``patch_size * 8`` (main_ibot.py:167).

Shapes (B batch, C channels, crop D x H x W divisible by 32, N = D/32 * H/32 * W/32 tokens, L local crops of size
d x h x w, c = 16F channels of the last stage):
    make_views: crops (B, C, D, H, W) -> {"global": (2B, C, D, H, W), "masks": (2B, D/32, H/32, W/32) bool,
                "local": (L*B, C, d, h, w)} (view-major; "local" absent when L = 0)
    student/teacher: tokens (N_img, N, c) -> global logits (N_img, out_dim), patch logits (N_img, N, patch_out_dim)
    forward -> {"loss", "loss/global", "loss/patch"}
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import torch
from torch import Tensor

from nnssl.distillation import DistillationSchedule, HeadSettings, distillation_heads, global_logits, normalized_tokens
from nnssl.encoders.swin import SWIN_DIVISOR, SwinEncoder, encode_by_size
from nnssl.losses.dino import DINOLoss
from nnssl.losses.ibot import PatchDistillationLoss
from nnssl.masking import block_mask, expand_mask
from nnssl.recipes import OptimRecipe
from nnssl.tasks.base import PretextTask, ViewFn
from nnssl.teacher import MomentumTeacher
from nnssl.views import DINO_GLOBAL_PHOTOMETRIC, DINO_LOCAL_PHOTOMETRIC, local_crop_size, multi_crop

N_GLOBAL = 2


@dataclass
class IBOTConfig:
    """iBOT defaults: the README's Swin-T/14 command (README.md:88-107) over main_ibot.py's defaults."""

    out_dim: int = 8192
    patch_out_dim: int = 8192
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    head_layers: int = 3
    norm_last_layer: bool = False
    shared_head: bool = True
    student_temp: float = 0.1
    teacher_temp_start: float = 0.04
    teacher_temp: float = 0.07
    teacher_patch_temp: float = 0.07
    #: Warm-up of both teacher temperatures: 30 epochs of 300.
    teacher_temp_warmup_fraction: float = 0.1
    center_momentum: float = 0.9
    patch_center_momentum: float = 0.9
    ema_start: float = 0.996
    ema_end: float = 1.0
    #: The heads' last layer is frozen during the first epoch of 300.
    freeze_last_layer_fraction: float = 1 / 300
    global_weight: float = 1.0
    patch_weight: float = 1.0
    #: Prediction (mask) ratio of a masked crop, drawn uniformly from pred_ratio +- pred_ratio_var.
    pred_ratio: float = 0.3
    pred_ratio_var: float = 0.2
    #: Probability that a global crop is masked at all (``--pred_ratio 0 0.3`` picks one of the two per crop).
    masked_image_prob: float = 0.5
    mask_min_aspect: float = 0.3
    #: No masked modelling during this fraction of the run (``--pred_start_epoch 50`` of 300 for Swin).
    pred_start_fraction: float = 50 / 300
    local_crops_number: int = 10
    global_crop_scale: tuple[float, float] = (0.25, 1.0)
    local_crop_scale: tuple[float, float] = (0.05, 0.25)
    local_crop_fraction: float = 0.5

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
        for name in ("masked_image_prob", "pred_start_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must lie in [0, 1]")
        if self.local_crops_number < 0:
            raise ValueError(f"local_crops_number={self.local_crops_number} must be >= 0")
        for name in ("global_crop_scale", "local_crop_scale"):
            lo, hi = getattr(self, name)
            if not 0.0 < lo <= hi <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must satisfy 0 < low <= high <= 1")
        if min(self.student_temp, self.teacher_temp_start, self.teacher_temp, self.teacher_patch_temp) <= 0:
            raise ValueError("temperatures must be > 0")


def token_grid(size: tuple[int, ...]) -> tuple[int, int, int]:
    """Final-stage tokens per axis of a crop of ``size`` voxels."""
    return tuple(s // SWIN_DIVISOR for s in size)  # type: ignore[return-value]


def ibot_views(crops: Tensor, generator: torch.Generator, *, cfg: IBOTConfig) -> dict[str, Tensor]:
    """Crops (B, C, D, H, W) -> DINO's multi-crop plus "masks" (2B, tD, tH, tW) bool: block masks of the global
    crops' final-stage tokens (ratio pred_ratio +- pred_ratio_var on a masked_image_prob share of the crops)."""
    c = cfg
    views = multi_crop(crops, generator, c.global_crop_scale, DINO_GLOBAL_PHOTOMETRIC, c.local_crops_number,
                       c.local_crop_fraction, c.local_crop_scale, DINO_LOCAL_PHOTOMETRIC)
    n = views["global"].shape[0]
    ratios = c.pred_ratio + c.pred_ratio_var * (2.0 * torch.rand(n, generator=generator, dtype=torch.float64) - 1)
    masked = torch.rand(n, generator=generator) < c.masked_image_prob
    ratios = torch.where(masked, ratios, torch.zeros_like(ratios))
    views["masks"] = block_mask(n, token_grid(tuple(crops.shape[2:])), ratios, c.mask_min_aspect, generator=generator)
    return views


class IBOT(PretextTask):
    """iBOT (Zhou et al., ICLR 2022) on the 3D Swin encoder; see the module docstring for shapes."""

    name: ClassVar[str] = "ibot"
    family: ClassVar[str] = "self-distillation"
    paper: ClassVar[str] = "Zhou et al., iBOT: Image BERT Pre-Training with Online Tokenizer, ICLR 2022"
    Config: ClassVar[type] = IBOTConfig
    uses_mask_token: ClassVar[bool] = True
    #: main_ibot.py defaults (the README commands set none of them): AdamW, lr 5e-4 per 256, 10 warm-up epochs (of
    #: the Swin-T run's 300), cosine to 1e-6, weight decay 0.04 -> 0.4, per-parameter clipping at 3.0.
    recipe: ClassVar[OptimRecipe] = OptimRecipe(
        base_lr=5e-4, reference_batch=256, min_lr=1e-6, warmup_fraction=10 / 300, weight_decay=0.04,
        weight_decay_end=0.4, clip_grad=3.0, clip_mode="per-parameter",
        source="bytedance/ibot main_ibot.py defaults with the README's Swin-T/14 command (300 epochs)")

    def __init__(self, encoder: SwinEncoder, cfg: IBOTConfig | None = None) -> None:
        super().__init__(encoder, cfg)
        c = self.cfg
        self.patch = encoder.cfg.patch_size
        self.token_factor = SWIN_DIVISOR // self.patch  # final-stage token stride on the patch grid
        head = HeadSettings(c.out_dim, c.head_hidden_dim, c.head_bottleneck_dim, c.head_layers, c.norm_last_layer)
        self.heads = distillation_heads(encoder.out_channels[-1], head, c.patch_out_dim, c.shared_head)
        self.global_loss = DINOLoss(c.out_dim, c.student_temp, c.center_momentum)
        self.patch_loss = PatchDistillationLoss(c.patch_out_dim, c.student_temp, c.patch_center_momentum)
        self.teacher = MomentumTeacher({"encoder": encoder, "heads": self.heads}, c.ema_start, c.ema_end)
        self.schedule = DistillationSchedule(c.teacher_temp_start, c.teacher_temp, c.teacher_temp_warmup_fraction,
                                             c.freeze_last_layer_fraction, c.teacher_patch_temp,
                                             c.pred_start_fraction)
        self._pred_start = 0

    def setup(self, total_steps: int) -> None:
        """Set up the teacher's EMA momentum and the global and patch teacher-temperature schedules for
        ``total_steps``, and the step at which masked modelling starts (``pred_start_fraction`` of the run)."""
        super().setup(total_steps)
        self.teacher.setup(total_steps)
        self.schedule.setup(total_steps)
        self._pred_start = round(self.cfg.pred_start_fraction * total_steps)

    @classmethod
    def check_crop(cls, crop: tuple[int, ...], cfg: IBOTConfig) -> list[str]:
        """Swin's rule, and a ValueError when the crop has a single final-stage token (nothing to mask); warns below
        96^3 (fewer than 27 tokens) and when the local crops would have the global crops' size."""
        super().check_crop(crop, cfg)
        tokens = [s // SWIN_DIVISOR for s in crop]
        if tokens[0] * tokens[1] * tokens[2] < 2:
            raise ValueError(f"iBOT masks final-stage tokens (one per 32^3 voxels): a {tuple(crop)} crop has a single "
                             "token, nothing to mask and predict. Use a crop of at least 64 (96 recommended: 27 tokens)")
        warnings = []
        if min(crop) < 96:
            warnings.append(f"iBOT at {tuple(crop)}: {tokens[0] * tokens[1] * tokens[2]} final-stage tokens per crop; "
                            "its page recommends 96^3 crops (27 tokens) or larger")
        if cfg.local_crops_number and local_crop_size(crop, cfg.local_crop_fraction) == tuple(crop):
            warnings.append(f"iBOT's local crops of a {tuple(crop)} crop have the global crops' size")
        return warnings

    def token_grid(self, size: tuple[int, ...]) -> tuple[int, int, int]:
        """Final-stage tokens per axis of a crop of ``size`` voxels (the module's ``token_grid``)."""
        return token_grid(size)

    def view_fn(self) -> ViewFn:
        """``ibot_views`` bound to the config: DINO's multi-crop plus block masks (2B, D/32, H/32, W/32) of the
        global crops' final-stage tokens."""
        return partial(ibot_views, cfg=self.cfg)

    def forward(self, views: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        """Student: the global crops with their masks expanded to the patch grid (all visible before
        ``pred_start_fraction``) and the unmasked local crops; EMA teacher: the unmasked global crops. Returns
        {"loss": global_weight * DINO loss over all view pairs except same-view + patch_weight * patch distillation
        on the global crops' masked tokens, "loss/global", "loss/patch"}."""
        g, masks, loc = views["global"], views["masks"], views.get("local")
        if step < self._pred_start:  # before masked modelling starts every crop is shown whole (loader.py:33-35)
            masks = torch.zeros_like(masks)
        batch = g.shape[0] // N_GLOBAL
        inputs, input_masks = ([g], [expand_mask(masks, self.token_factor)]) if loc is None else \
            ([g, loc], [expand_mask(masks, self.token_factor), None])
        feats = encode_by_size(self.student, inputs, input_masks)
        tok = normalized_tokens(feats[0][-1], self.heads)
        s_global = torch.cat([global_logits(tok, self.heads)] + [
            global_logits(normalized_tokens(f[-1], self.heads), self.heads) for f in feats[1:]])
        s_patch = self.heads["patch"](tok)  # local crops have no patch loss: only the global crops' tokens
        with torch.no_grad():
            t_heads = self.teacher["heads"]
            t_tok = normalized_tokens(self.teacher["encoder"](g)[-1], t_heads)
            t_global, t_patch = global_logits(t_tok, t_heads), t_heads["patch"](t_tok)
        loss_global = self.global_loss(s_global.split(batch), t_global.split(batch), self.schedule.teacher_temp(step))
        loss_patch = self.patch_loss(s_patch.split(batch), t_patch.split(batch), masks.flatten(1).split(batch),
                                     self.schedule.patch_temp(step))
        c = self.cfg
        loss = c.global_weight * loss_global + c.patch_weight * loss_patch
        return {"loss": loss, "loss/global": loss_global.detach(), "loss/patch": loss_patch.detach()}

    def before_optimizer_step(self, step: int) -> None:
        """Cancel the gradients of the heads' last layer during the first ``freeze_last_layer_fraction`` of the run."""
        self.schedule.freeze(step, self.heads)

    @torch.no_grad()
    def on_step_end(self, step: int) -> None:
        """EMA update of the teacher's encoder and heads from the student's (cosine momentum schedule)."""
        self.teacher.update(step, {"encoder": self.student, "heads": self.heads})
