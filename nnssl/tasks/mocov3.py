"""MoCo v3 (Chen, Xie, He, "An empirical study of training self-supervised vision transformers", ICCV 2021,
https://arxiv.org/abs/2104.02057), in 3D on the Swin encoder.

Online branch: encoder -> global token of the last stage (B, 16F) -> projector (3-layer MLP, BN, last BN without
affine, as for ViT) -> predictor (2-layer MLP) -> q (B, proj_dim). Momentum branch: EMA copies of encoder and projector
-> k (B, proj_dim), no gradient. Loss: ctr(q1, k2) + ctr(q2, k1) with ctr = 2 * tau * InfoNCE (cosine similarity, the
other samples' keys are the negatives). The momentum follows a cosine schedule from 0.99 to 1 over the global steps.

Shapes (B batch >= 2, crop D x H x W divisible by 32, F = encoder feature size):
    make_views: crops (B, C, D, H, W) -> {"view1": (B, C, D, H, W), "view2": (B, C, D, H, W)}
    forward: both views in one call -> mean last-stage tokens (2B, 16F) -> q (2B, proj_dim) online,
             k (2B, proj_dim) momentum -> {"loss": ctr(q1, k2) + ctr(q2, k1), "loss/infonce": same}
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from nnssl.ema import ema_update, make_teacher
from nnssl.encoders.swin import SwinEncoder
from nnssl.heads import MLP, global_token
from nnssl.losses.infonce import symmetric_info_nce
from nnssl.schedules import at, cosine_schedule
from nnssl.tasks.base import PretextTask
from nnssl.views import augment, random_subcrop


@dataclass
class MoCoV3Config:
    #: InfoNCE temperature: 0.2 for ViT in MoCo v3 (1.0 for ResNet).
    temperature: float = 0.2
    #: Momentum of the EMA: cosine from ``momentum`` to ``momentum_end`` over all global steps (MoCo v3: 0.99 -> 1).
    momentum: float = 0.99
    momentum_end: float = 1.0
    #: Projector: 3 layers (ViT setting), hidden 4096 (MoCo v3's mlp_dim), output 256 (its dim), BN, last BN
    #: non-affine. Predictor: 2 layers, same widths.
    hidden_dim: int = 4096
    proj_dim: int = 256
    proj_layers: int = 3
    pred_layers: int = 2
    #: Volume fraction of each view's random sub-crop (our 3D choice; MoCo v3 uses BYOL's 2D (0.08, 1)).
    crop_scale: tuple[float, float] = (0.25, 1.0)
    noise_std: float = 0.05


class MoCoV3(PretextTask):
    """MoCo v3: views {"view1", "view2"} (B, C, D, H, W) -> symmetric InfoNCE of predictions vs momentum keys."""

    name: ClassVar[str] = "mocov3"
    family: ClassVar[str] = "contrastive"
    paper: ClassVar[str] = ("Chen, Xie, He, An Empirical Study of Training Self-Supervised Vision Transformers, "
                            "ICCV 2021")
    Config: ClassVar[type] = MoCoV3Config

    def __init__(self, encoder: SwinEncoder, cfg: MoCoV3Config | None = None) -> None:
        super().__init__(encoder, cfg)
        c = self.cfg
        if not 0.0 <= c.momentum <= c.momentum_end <= 1.0:
            raise ValueError(f"need 0 <= momentum <= momentum_end <= 1, got {c.momentum} -> {c.momentum_end}")
        self.projector = MLP(encoder.out_channels[-1], c.hidden_dim, c.proj_dim, layers=c.proj_layers, norm="bn",
                             last_norm=True)
        self.predictor = MLP(c.proj_dim, c.hidden_dim, c.proj_dim, layers=c.pred_layers, norm="bn")
        # Momentum branch: frozen copies, updated only by EMA in on_step_end.
        self.momentum_encoder = make_teacher(encoder)
        self.momentum_projector = make_teacher(self.projector)
        self.momentum_schedule = cosine_schedule(c.momentum, c.momentum_end, 1)

    def setup(self, total_steps: int) -> None:
        super().setup(total_steps)
        self.momentum_schedule: np.ndarray = cosine_schedule(self.cfg.momentum, self.cfg.momentum_end, total_steps)

    def train(self, mode: bool = True) -> "MoCoV3":
        super().train(mode)
        # The momentum branch stays in eval mode (no drop-path; BN uses the running statistics it copies from the
        # online branch). MoCo v3 runs its momentum BN on batch statistics; on the tiny per-GPU batches of 3D
        # pretraining running statistics are the steadier choice.
        self.momentum_encoder.eval()
        self.momentum_projector.eval()
        return self

    def make_views(self, crops: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        if crops.shape[0] < 2:
            raise ValueError("MoCo v3 needs a batch of at least 2 crops: the other samples' keys are the negatives")
        size = tuple(crops.shape[2:])
        return {f"view{v}": augment(random_subcrop(crops, size, self.cfg.crop_scale, generator), generator,
                                    noise_std=self.cfg.noise_std)
                for v in (1, 2)}

    def momentum_at(self, step: int) -> float:
        """EMA momentum used after global step ``step``."""
        return at(self.momentum_schedule, step)

    def forward(self, views: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        b = views["view1"].shape[0]
        x = torch.cat([views["view1"], views["view2"]])
        q = self.predictor(self.projector(global_token(self.student(x)[-1])))
        with torch.no_grad():
            k = self.momentum_projector(global_token(self.momentum_encoder(x)[-1]))
        loss = symmetric_info_nce(q[:b], q[b:], k[:b], k[b:], temperature=self.cfg.temperature)
        return {"loss": loss, "loss/infonce": loss.detach()}

    @torch.no_grad()
    def on_step_end(self, step: int) -> None:
        m = self.momentum_at(step)
        ema_update(self.momentum_encoder, self.student, m)
        ema_update(self.momentum_projector, self.projector, m)
