"""MoCo v3 (Chen, Xie, He, "An empirical study of training self-supervised vision transformers", ICCV 2021,
https://arxiv.org/abs/2104.02057), in 3D on the Swin encoder; reference code facebookresearch/moco-v3 (cited in
documentation/methods/mocov3.md with file and line).

Online branch: encoder -> global token of the last stage (B, 16F) -> projector (3-layer MLP, BN, ReLU, last BN without
affine) -> predictor (2-layer MLP, last BN without affine: the ViT recipe, moco/builder.py:118-122) -> q (B, proj_dim).
Momentum branch: EMA copies of encoder and projector -> k (B, proj_dim), no gradient, in train mode so that its
BatchNorm uses the statistics of the batch (moco-v3 puts the whole model in train mode). Each view passes through both
branches on its own, so BatchNorm statistics are per view (builder.py:86-94); under DDP on CUDA the loop converts
BatchNorm to SyncBatchNorm as the reference does (main_moco.py:195-196). Loss: ctr(q1, k2) + ctr(q2, k1) with
ctr = 2 * tau * InfoNCE (cosine similarity, the other samples' keys of all ranks are the negatives). The momentum
follows a cosine schedule from 0.99 to 1 over the global steps.

Shapes (B batch >= 2, crop D x H x W divisible by 32, F = encoder feature size):
    make_views: crops (B, C, D, H, W) -> {"view1": (B, C, D, H, W), "view2": (B, C, D, H, W)}
    forward: per view: mean last-stage tokens (B, 16F) -> q (B, proj_dim) online, k (B, proj_dim) momentum
             -> {"loss": ctr(q1, k2) + ctr(q2, k1), "loss/infonce": same}
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import torch
from torch import Tensor, nn

from nnssl.encoders.swin import SwinEncoder
from nnssl.heads import MLP, global_token
from nnssl.losses.infonce import symmetric_info_nce
from nnssl.recipes import OptimRecipe
from nnssl.tasks.base import PretextTask, ViewFn
from nnssl.teacher import MomentumTeacher
from nnssl.views import MOCO_PHOTOMETRIC, two_views

#: The global batch below which the loop warns (15 negatives per query; BatchNorm statistics of fewer crops per view
#: are nearly degenerate; see documentation/methods/mocov3.md).
RECOMMENDED_BATCH = 16


@dataclass
class MoCoV3Config:
    """MoCo v3 settings (Chen, Xie, He, ICCV 2021): its ViT values for temperature, momentum and heads; the crop
    scale is our 3D choice (see the field comments)."""

    #: InfoNCE temperature: 0.2 for ViT in MoCo v3 (1.0 for ResNet).
    temperature: float = 0.2
    #: Momentum of the EMA: cosine from ``momentum`` to ``momentum_end`` over all global steps (MoCo v3: 0.99 -> 1).
    momentum: float = 0.99
    momentum_end: float = 1.0
    #: Projector: 3 layers (ViT setting), hidden 4096 (MoCo v3's mlp_dim), output 256 (its dim). Predictor: 2 layers.
    hidden_dim: int = 4096
    proj_dim: int = 256
    proj_layers: int = 3
    pred_layers: int = 2
    #: Volume fraction of each view's random sub-crop (MoCo v3 uses RandomResizedCrop area (0.08, 1) in 2D; 3D crops
    #: hold less context, so at least a quarter of the voxels is kept, as for SimCLR; our choice).
    crop_scale: tuple[float, float] = (0.25, 1.0)

    def __post_init__(self) -> None:
        self.crop_scale = tuple(float(v) for v in self.crop_scale)
        if not self.temperature > 0:
            raise ValueError(f"temperature={self.temperature} must be > 0")
        if not 0.0 <= self.momentum <= self.momentum_end <= 1.0:
            raise ValueError(f"need 0 <= momentum <= momentum_end <= 1, got {self.momentum} -> {self.momentum_end}")
        if min(self.hidden_dim, self.proj_dim, self.proj_layers, self.pred_layers) < 1:
            raise ValueError("head sizes must be >= 1")
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"crop_scale={self.crop_scale} must satisfy 0 < low <= high <= 1")


def mocov3_views(crops: Tensor, generator: torch.Generator, *, cfg: MoCoV3Config) -> dict[str, Tensor]:
    """Crops (B, C, D, H, W) -> {"view1", "view2"}: two augmented views (MoCo v3's asymmetric photometrics)."""
    if crops.shape[0] < 2:
        raise ValueError("MoCo v3 needs a batch of at least 2 crops: the other samples' keys are the negatives")
    return two_views(crops, generator, cfg.crop_scale, MOCO_PHOTOMETRIC)


class MoCoV3(PretextTask):
    """MoCo v3: views {"view1", "view2"} (B, C, D, H, W) -> symmetric InfoNCE of predictions vs momentum keys."""

    name: ClassVar[str] = "mocov3"
    family: ClassVar[str] = "contrastive"
    paper: ClassVar[str] = ("Chen, Xie, He, An Empirical Study of Training Self-Supervised Vision Transformers, "
                            "ICCV 2021")
    Config: ClassVar[type] = MoCoV3Config
    recommended_batch: ClassVar[int | None] = RECOMMENDED_BATCH
    #: CONFIG.md's ViT recipe: AdamW (torch's betas), lr 1.5e-4 per 256, weight decay 0.1 on every parameter, 40
    #: warm-up epochs of 300, cosine to 0, no gradient clipping.
    recipe: ClassVar[OptimRecipe] = OptimRecipe(
        base_lr=1.5e-4, reference_batch=256, warmup_fraction=40 / 300, weight_decay=0.1, decay_all_parameters=True,
        source="facebookresearch/moco-v3 CONFIG.md ViT recipe (300 epochs)")

    def __init__(self, encoder: SwinEncoder, cfg: MoCoV3Config | None = None) -> None:
        super().__init__(encoder, cfg)
        c = self.cfg
        self.projector = MLP(encoder.out_channels[-1], c.hidden_dim, c.proj_dim, layers=c.proj_layers, norm="bn",
                             last_norm=True, activation="relu")
        self.predictor = MLP(c.proj_dim, c.hidden_dim, c.proj_dim, layers=c.pred_layers, norm="bn", last_norm=True,
                             activation="relu")
        self.teacher = MomentumTeacher({"encoder": encoder, "projector": self.projector}, c.momentum, c.momentum_end,
                                       train_mode=True)

    def setup(self, total_steps: int) -> None:
        """Set up the momentum branch's cosine schedule (``momentum`` -> ``momentum_end``) over ``total_steps``."""
        super().setup(total_steps)
        self.teacher.setup(total_steps)

    def negatives_per_anchor(self, batch: int, world_size: int = 1) -> int:
        """``batch * world_size - 1``: the keys of every other sample of the global batch."""
        return batch * world_size - 1

    def view_fn(self) -> ViewFn:
        """``mocov3_views`` bound to the config: two views per crop with MoCo v3's asymmetric photometrics."""
        return partial(mocov3_views, cfg=self.cfg)

    def _embed(self, encoder: nn.Module, projector: nn.Module, x: Tensor) -> Tensor:
        return projector(global_token(encoder(x)[-1]))

    def forward(self, views: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        """Each view (B, C, D, H, W) through the online branch (encoder, projector, predictor -> q (B, proj_dim))
        and, without gradient, the momentum branch (-> k); returns {"loss": ctr(q1, k2) + ctr(q2, k1),
        "loss/infonce": same}."""
        x1, x2 = views["view1"], views["view2"]
        q1 = self.predictor(self._embed(self.student, self.projector, x1))
        q2 = self.predictor(self._embed(self.student, self.projector, x2))
        with torch.no_grad():
            k1 = self._embed(self.teacher["encoder"], self.teacher["projector"], x1)
            k2 = self._embed(self.teacher["encoder"], self.teacher["projector"], x2)
        loss = symmetric_info_nce(q1, q2, k1, k2, temperature=self.cfg.temperature)
        return {"loss": loss, "loss/infonce": loss.detach()}

    @torch.no_grad()
    def on_step_end(self, step: int) -> None:
        """EMA update of the momentum encoder and projector from the online ones (the predictor has no copy)."""
        self.teacher.update(step, {"encoder": self.student, "projector": self.projector})
