"""SimCLR (Chen, Kornblith, Norouzi, Hinton, "A simple framework for contrastive learning of visual
representations", ICML 2020, https://arxiv.org/abs/2002.05709), in 3D on the Swin encoder.

Two augmented views of each crop -> encoder -> global token of the last stage (B, 16F) -> projection head
(MLP, BN) -> z (B, proj_dim); NT-Xent between the two views, every other view of the batch is a negative.

Shapes (B batch >= 2, C channels, crop D x H x W divisible by 32, F = encoder feature size):
    make_views: crops (B, C, D, H, W) -> {"view1": (B, C, D, H, W), "view2": (B, C, D, H, W)}
    forward: encoder(cat(view1, view2))[-1] (2B, 16F, D/32, H/32, W/32) -> mean tokens (2B, 16F) -> projector
             (2B, proj_dim) -> {"loss": NT-Xent, "loss/nt_xent": same}
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from nnssl.encoders.swin import SwinEncoder
from nnssl.heads import MLP, global_token
from nnssl.losses.infonce import nt_xent
from nnssl.tasks.base import PretextTask
from nnssl.views import augment, random_subcrop


@dataclass
class SimCLRConfig:
    #: NT-Xent temperature. 0.5: Tang et al. 2022's 3D contrastive loss (SwinUNETR pretraining code) and SimCLR's
    #: own CIFAR-10 setting; SimCLR's large-batch ImageNet runs used lower values.
    temperature: float = 0.5
    #: Projection head g(.): SimCLR's 2-layer MLP, hidden width 2048 (ResNet-50's feature width), output 128.
    proj_hidden_dim: int = 2048
    proj_dim: int = 128
    proj_layers: int = 2
    #: Volume fraction of the random sub-crop of each view (resized back to the crop size). SimCLR's 2D
    #: random-resized-crop uses area (0.08, 1); 3D volumes are smaller and sparser, so we keep >= 25 % (our choice).
    crop_scale: tuple[float, float] = (0.25, 1.0)
    #: Std of the Gaussian noise of the photometric augmentation (nnU-Net-normalised intensities).
    noise_std: float = 0.05


class SimCLR(PretextTask):
    """SimCLR: views {"view1", "view2"} (B, C, D, H, W) -> NT-Xent of their projections (B, proj_dim)."""

    name: ClassVar[str] = "simclr"
    family: ClassVar[str] = "contrastive"
    paper: ClassVar[str] = ("Chen et al., A Simple Framework for Contrastive Learning of Visual Representations, "
                            "ICML 2020")
    Config: ClassVar[type] = SimCLRConfig

    def __init__(self, encoder: SwinEncoder, cfg: SimCLRConfig | None = None) -> None:
        super().__init__(encoder, cfg)
        self.projector = MLP(encoder.out_channels[-1], self.cfg.proj_hidden_dim, self.cfg.proj_dim,
                             layers=self.cfg.proj_layers, norm="bn")

    def make_views(self, crops: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        if crops.shape[0] < 2:
            raise ValueError("SimCLR needs a batch of at least 2 crops: the other samples are the negatives")
        size = tuple(crops.shape[2:])
        return {f"view{v}": augment(random_subcrop(crops, size, self.cfg.crop_scale, generator), generator,
                                    noise_std=self.cfg.noise_std)
                for v in (1, 2)}

    def embed(self, x: Tensor) -> Tensor:
        """(B, C, D, H, W) -> projections (B, proj_dim)."""
        return self.projector(global_token(self.student(x)[-1]))

    def forward(self, views: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        b = views["view1"].shape[0]
        # One encoder pass over both views (LayerNorm only, so samples do not interact; BN in the head sees 2B).
        z = self.embed(torch.cat([views["view1"], views["view2"]]))
        loss = nt_xent(z[:b], z[b:], temperature=self.cfg.temperature)
        return {"loss": loss, "loss/nt_xent": loss.detach()}
