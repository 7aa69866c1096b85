"""DINO: self-distillation with no labels.

Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021 (arXiv:2104.14294).
A student and an EMA teacher (same architecture, no gradient to the teacher) see different crops of a volume. The
teacher sees the two global crops, the student all crops (two global + several smaller local crops: 3D multi-crop).
Both map a global token to out_dim logits through the DINO head (MLP, L2-normalised bottleneck, weight-normalised
last layer). The teacher distribution is centred (running mean of teacher logits, momentum 0.9) and sharpened
(temperature 0.04 -> 0.07 warm-up), the student uses temperature 0.1, and the loss is the cross-entropy over all
(teacher view, student view) pairs except same-view (``nnssl.losses.dino.DINOLoss``).

3D multi-crop: global crops have the crop size (voxel fraction ``global_crop_scale`` of the crop, resized), local
crops half of it per axis rounded down to a multiple of 32 (at least 32, Swin's divisor), voxel fraction
``local_crop_scale``; flips and intensity jitter/noise stand in for DINO's colour augmentations. Crops of one size
go through the encoder in one call. The global token is the mean of the last-stage tokens after a LayerNorm (the
affine final norm a ViT/Swin backbone has and MONAI's normalised outputs lack).

Shapes (B batch, C channels, crop D x H x W divisible by 32, F feature size, L = local_crops_number, local crop
d x h x w):
    make_views: crops (B, C, D, H, W) -> {"global": (2B, C, D, H, W), "local": (L*B, C, d, h, w)} (view-major;
                "local" absent when L = 0)
    student/teacher: encoder last stage (N_img, 16F, D/32, ...) -> global token (N_img, 16F) -> logits (N_img, out_dim)
    forward -> {"loss", "loss/global"}
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
from nnssl.tasks._teacher import EMATeacher
from nnssl.tasks.base import PretextTask
from nnssl.views import augment, local_crop_size, random_subcrop

N_GLOBAL = 2


@dataclass
class DINOConfig:
    """DINO defaults (paper / main_dino.py). out_dim 65536 is the paper's; lower it for small runs and tests."""

    out_dim: int = 65536
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    head_layers: int = 3
    norm_last_layer: bool = True
    student_temp: float = 0.1
    teacher_temp_start: float = 0.04
    teacher_temp: float = 0.07
    #: Warm-up of the teacher temperature as a fraction of the run (30 of 100 epochs).
    teacher_temp_warmup_fraction: float = 0.3
    center_momentum: float = 0.9
    ema_start: float = 0.996
    ema_end: float = 1.0
    freeze_last_layer_fraction: float = 0.01  # DINO/iBOT: last head layer frozen for epoch 1 of 100
    local_crops_number: int = 8
    #: Voxel fractions of the crop covered by global / local crops (DINO's area fractions used as volume fractions).
    global_crop_scale: tuple[float, float] = (0.4, 1.0)
    local_crop_scale: tuple[float, float] = (0.05, 0.4)
    #: Local crop edge relative to the crop edge (rounded down to a multiple of 32, min 32).
    local_crop_fraction: float = 0.5
    #: Std of the Gaussian intensity noise of the augmentation (normalised intensity units).
    noise_std: float = 0.05

    def __post_init__(self) -> None:
        self.global_crop_scale = tuple(float(v) for v in self.global_crop_scale)
        self.local_crop_scale = tuple(float(v) for v in self.local_crop_scale)
        if self.local_crops_number < 0:
            raise ValueError(f"local_crops_number={self.local_crops_number} must be >= 0")
        for name in ("global_crop_scale", "local_crop_scale"):
            lo, hi = getattr(self, name)
            if not 0.0 < lo <= hi <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must satisfy 0 < low <= high <= 1")
        if not 0.0 < self.local_crop_fraction <= 1.0:
            raise ValueError(f"local_crop_fraction={self.local_crop_fraction} must lie in (0, 1]")
        if not 0.0 <= self.teacher_temp_warmup_fraction <= 1.0:
            raise ValueError(f"teacher_temp_warmup_fraction={self.teacher_temp_warmup_fraction} must lie in [0, 1]")
        if min(self.student_temp, self.teacher_temp_start, self.teacher_temp) <= 0:
            raise ValueError("temperatures must be > 0")


class DINO(EMATeacher, PretextTask):
    """DINO (Caron et al., ICCV 2021) with 3D multi-crop on the Swin encoder; see the module docstring."""

    name: ClassVar[str] = "dino"
    family: ClassVar[str] = "self-distillation"
    paper: ClassVar[str] = "Caron et al., Emerging Properties in Self-Supervised Vision Transformers (DINO), ICCV 2021"
    Config: ClassVar[type] = DINOConfig

    def __init__(self, encoder: SwinEncoder, cfg: DINOConfig | None = None) -> None:
        super().__init__(encoder, cfg)
        c = self.cfg
        # DINO never masks: freeze the unused mask token so that DDP does not wait for its gradient.
        encoder.mask_token.requires_grad_(False)
        dim = encoder.out_channels[-1]
        self.heads = nn.ModuleDict({
            "norm": nn.LayerNorm(dim, eps=1e-6),
            "global": DINOHead(dim, c.out_dim, c.head_hidden_dim, c.head_bottleneck_dim, c.head_layers,
                               c.norm_last_layer),
        })
        self.global_loss = DINOLoss(c.out_dim, c.student_temp, c.center_momentum)
        self.teacher_encoder = make_teacher(encoder)
        self.teacher_heads = make_teacher(self.heads)
        self._momentum: np.ndarray | None = None


    def make_views(self, crops: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        c = self.cfg
        size = tuple(crops.shape[2:])
        views = {"global": torch.cat([
            augment(random_subcrop(crops, size, c.global_crop_scale, generator), generator, c.noise_std)
            for _ in range(N_GLOBAL)])}
        if c.local_crops_number:
            small = local_crop_size(size, c.local_crop_fraction)
            views["local"] = torch.cat([
                augment(random_subcrop(crops, small, c.local_crop_scale, generator), generator, c.noise_std)
                for _ in range(c.local_crops_number)])
        return views

    def _logits(self, encoder: SwinEncoder, heads: nn.ModuleDict, x: Tensor) -> Tensor:
        """(N_img, C, D, H, W) -> (N_img, out_dim): mean of the normalised last-stage tokens through the head."""
        tok = heads["norm"](tokens(encoder(x)[-1]))
        return heads["global"](tok.mean(dim=1))

    def forward(self, views: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        self._check_setup()
        g = views["global"]
        loc = views.get("local")
        batch = g.shape[0] // N_GLOBAL
        if loc is not None and loc.shape[2:] == g.shape[2:]:
            # Local crops of the global size (small inputs): one encoder call for every crop.
            s_all = self._logits(self.student, self.heads, torch.cat([g, loc]))
        else:
            s_all = self._logits(self.student, self.heads, g)
            if loc is not None:
                s_all = torch.cat([s_all, self._logits(self.student, self.heads, loc)])
        with torch.no_grad():
            t_global = self._logits(self.teacher_encoder, self.teacher_heads, g)
        loss = self.global_loss(s_all.split(batch), t_global.split(batch), self.teacher_temperature(step))
        return {"loss": loss, "loss/global": loss.detach()}
