"""SimCLR (Chen, Kornblith, Norouzi, Hinton, "A simple framework for contrastive learning of visual
representations", ICML 2020, https://arxiv.org/abs/2002.05709), in 3D on the Swin encoder; reference code
google-research/simclr (cited in documentation/methods/simclr.md with file and line).

Two augmented views of each crop (random resized sub-volume, flips, SimCLR's colour distortion in its 3D form:
``nnssl.views.SIMCLR_PHOTOMETRIC``) -> encoder -> global token of the last stage (B, 16F) -> projection head (MLP,
BN, ReLU) -> z (B, proj_dim); NT-Xent between the two views, every other view of the (global) batch is a negative:
2N - 2 negatives per anchor at N crops, gathered across ranks with gradient as SimCLR's cross-core concatenation.

Shapes (B batch >= 2, C channels, crop D x H x W divisible by 32, F = encoder feature size):
    make_views: crops (B, C, D, H, W) -> {"view1": (B, C, D, H, W), "view2": (B, C, D, H, W)}
    forward: encoder(cat(view1, view2))[-1] (2B, 16F, D/32, H/32, W/32) -> mean tokens (2B, 16F) -> projector
             (2B, proj_dim) -> {"loss": NT-Xent, "loss/nt_xent": same}
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import torch
from torch import Tensor

from nnssl.encoders.swin import SwinEncoder
from nnssl.heads import MLP, global_token
from nnssl.losses.infonce import nt_xent
from nnssl.recipes import OptimRecipe
from nnssl.tasks.base import PretextTask, ViewFn
from nnssl.views import SIMCLR_PHOTOMETRIC, two_views

#: The global batch below which the loop warns (30 negatives per anchor; see documentation/methods/simclr.md).
RECOMMENDED_BATCH = 16


@dataclass
class SimCLRConfig:
    """SimCLR settings (Chen et al., ICML 2020): v1's 2-layer projection head to 128; the temperature and crop scale
    are small-batch and 3D choices (see the field comments)."""

    #: NT-Xent temperature. 0.5: Tang et al. 2022's 3D contrastive loss and SimCLR's CIFAR-10 setting for small
    #: batches; SimCLR's ImageNet runs at batch 4096 use 0.1.
    temperature: float = 0.5
    #: Projection head g(.): SimCLR v1's 2-layer MLP, output 128; hidden width 0 = the encoder's width (SimCLR's
    #: mid_dim is the width of the features it projects, 2048 for ResNet-50).
    proj_hidden_dim: int = 0
    proj_dim: int = 128
    proj_layers: int = 2
    #: Volume fraction of each view's random sub-crop (SimCLR's RandomResizedCrop area (0.08, 1) in 2D; 3D crops hold
    #: less context, so at least a quarter of the voxels is kept; our choice).
    crop_scale: tuple[float, float] = (0.25, 1.0)

    def __post_init__(self) -> None:
        self.crop_scale = tuple(float(v) for v in self.crop_scale)
        if not self.temperature > 0:
            raise ValueError(f"temperature={self.temperature} must be > 0")
        if self.proj_hidden_dim < 0 or min(self.proj_dim, self.proj_layers) < 1:
            raise ValueError("projection head sizes must be >= 1")
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"crop_scale={self.crop_scale} must satisfy 0 < low <= high <= 1")


def simclr_views(crops: Tensor, generator: torch.Generator, *, cfg: SimCLRConfig) -> dict[str, Tensor]:
    """Crops (B, C, D, H, W) -> {"view1", "view2"}: two views with SimCLR's photometrics."""
    if crops.shape[0] < 2:
        raise ValueError("SimCLR needs a batch of at least 2 crops: the other samples are the negatives")
    return two_views(crops, generator, cfg.crop_scale, (SIMCLR_PHOTOMETRIC, SIMCLR_PHOTOMETRIC))


class SimCLR(PretextTask):
    """SimCLR: views {"view1", "view2"} (B, C, D, H, W) -> NT-Xent of their projections (B, proj_dim)."""

    name: ClassVar[str] = "simclr"
    family: ClassVar[str] = "contrastive"
    paper: ClassVar[str] = ("Chen et al., A Simple Framework for Contrastive Learning of Visual Representations, "
                            "ICML 2020")
    Config: ClassVar[type] = SimCLRConfig
    recommended_batch: ClassVar[int | None] = RECOMMENDED_BATCH
    #: SimCLR trains ResNets with LARS (lr 0.3 per 256, weight decay 1e-6, 10 warm-up epochs of 100); for the Swin
    #: transformer we keep its warm-up share and use AdamW with MoCo v3's transformer settings (lr 1.5e-4 per 256,
    #: weight decay 0.1): a documented deviation (documentation/methods/simclr.md).
    recipe: ClassVar[OptimRecipe] = OptimRecipe(
        base_lr=1.5e-4, reference_batch=256, warmup_fraction=0.1, weight_decay=0.1,
        source="SimCLR's warm-up with MoCo v3's AdamW transformer recipe (LARS is for ResNets)")

    def __init__(self, encoder: SwinEncoder, cfg: SimCLRConfig | None = None) -> None:
        super().__init__(encoder, cfg)
        width = encoder.out_channels[-1]
        self.projector = MLP(width, self.cfg.proj_hidden_dim or width, self.cfg.proj_dim,
                             layers=self.cfg.proj_layers, norm="bn", activation="relu", last_norm=True)

    def negatives_per_anchor(self, batch: int, world_size: int = 1) -> int:
        """``2 * batch * world_size - 2``: every other view of the global batch (gathered across ranks)."""
        return 2 * batch * world_size - 2

    def view_fn(self) -> ViewFn:
        """``simclr_views`` bound to the config: two views per crop with SimCLR's 3D colour distortion."""
        return partial(simclr_views, cfg=self.cfg)

    def embed(self, x: Tensor) -> Tensor:
        """(B, C, D, H, W) -> projections (B, proj_dim)."""
        return self.projector(global_token(self.student(x)[-1]))

    def forward(self, views: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        """Both views (B, C, D, H, W) in one pass (the head's BatchNorm sees 2B) -> projections (2B, proj_dim);
        returns {"loss": NT-Xent between view1 and view2, negatives gathered across ranks, "loss/nt_xent": same}."""
        b = views["view1"].shape[0]
        # One pass over both views, as SimCLR concatenates them (model.py:53-58): the head's BatchNorm sees 2B.
        z = self.embed(torch.cat([views["view1"], views["view2"]]))
        loss = nt_xent(z[:b], z[b:], temperature=self.cfg.temperature)
        return {"loss": loss, "loss/nt_xent": loss.detach()}
