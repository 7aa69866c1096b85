"""SimMIM: masked image modelling with a mask token and a one-layer decoder.

Xie et al., "SimMIM: A Simple Framework for Masked Image Modeling", CVPR 2022 (arXiv:2111.09886); reference code
microsoft/SimMIM (cited in documentation/methods/simmim.md with file and line).
The crop is augmented as SimMIM's images (a random resized sub-volume holding 67-100 % of the voxels, flips); random
cubes of it are hidden behind the encoder's learned mask token (ratio 0.6 of the cubes), the last
encoder stage is mapped back to voxels by a 1x1x1 convolution and a pixel shuffle (``LightDecoder``), and the loss is
the L1 error on the hidden voxels only.

Shapes (B batch, C channels, crop D x H x W, each divisible by 32; F = encoder feature size):
    make_views: crops (B, C, D, H, W) -> {"image": (B, C, D, H, W), "mask": (B, D/2, H/2, W/2) bool}
    forward: encoder(image, mask)[-1] (B, 16F, D/32, H/32, W/32) -> decoder -> prediction (B, C, D, H, W)
             -> {"loss": L1 over masked voxels, "loss/recon": same}
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import torch
from torch import Tensor

from nnssl.decoders import LightDecoder
from nnssl.encoders.swin import SwinEncoder
from nnssl.losses.reconstruction import masked_reconstruction_loss
from nnssl.masking import random_cube_mask, upsample_mask
from nnssl.recipes import OptimRecipe
from nnssl.tasks.base import PretextTask, ViewFn
from nnssl.views import random_flip, random_subcrop


@dataclass
class SimMIMConfig:
    """SimMIM defaults (paper: ratio 0.6, L1 loss, random flips; mask patches of 1/6 of the image edge).

    SimMIM masks 32-px patches of 192-px images, 1/6 of the edge; the 3D equivalent for the default 96^3 crop is a
    16^3-voxel cube, which is also what SMIT (SimMIM-style masking for 3D CT) uses.
    """

    mask_ratio: float = 0.6
    #: Edge of the masked cubes in voxels (SimMIM's mask_patch_size); a multiple of the encoder patch size (2).
    mask_cube_voxels: int = 16
    #: "l1" (paper) or "l2".
    loss: str = "l1"
    #: Random flips of the crop along each axis and the voxel fraction of its random resized sub-volume (SimMIM's
    #: RandomResizedCrop scale (0.67, 1) and horizontal flip, data/data_simmim.py:50-56; areas read as volumes).
    flip: bool = True
    crop_scale: tuple[float, float] = (0.67, 1.0)

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio={self.mask_ratio} must lie in (0, 1)")
        if self.mask_cube_voxels < 2 or self.mask_cube_voxels % 2:
            raise ValueError(f"mask_cube_voxels={self.mask_cube_voxels} must be an even number >= 2 (patch size 2)")
        if self.loss not in ("l1", "l2"):
            raise ValueError(f"loss={self.loss!r} must be 'l1' or 'l2'")
        self.crop_scale = tuple(float(v) for v in self.crop_scale)
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"crop_scale={self.crop_scale} must satisfy 0 < low <= high <= 1")


def simmim_views(crops: Tensor, generator: torch.Generator, *, cfg: SimMIMConfig, patch: int) -> dict[str, Tensor]:
    """Crops (B, C, D, H, W) -> {"image": random resized crop (+ flip), "mask": (B, D/p, H/p, W/p) bool cubes of
    mask_cube_voxels on the encoder's patch grid (p = patch)}."""
    image = random_subcrop(crops, tuple(crops.shape[2:]), cfg.crop_scale, generator)
    image = random_flip(image, generator) if cfg.flip else image
    grid = tuple(s // patch for s in crops.shape[2:])
    mask = random_cube_mask(crops.shape[0], grid, cfg.mask_cube_voxels // patch, cfg.mask_ratio, generator)
    return {"image": image, "mask": mask}


class SimMIM(PretextTask):
    """SimMIM (Xie et al., CVPR 2022) on the 3D Swin encoder; see the module docstring for shapes."""

    name: ClassVar[str] = "simmim"
    family: ClassVar[str] = "MIM"
    paper: ClassVar[str] = "Xie et al., SimMIM: A Simple Framework for Masked Image Modeling, CVPR 2022"
    Config: ClassVar[type] = SimMIMConfig
    uses_mask_token: ClassVar[bool] = True
    #: The Swin-B 100-epoch config: AdamW, lr 2e-4 per 512 images, 10 warm-up epochs of 100, cosine to 1e-5 (scaled
    #: like the lr), weight decay 0.05, global gradient-norm clipping at 5.0.
    recipe: ClassVar[OptimRecipe] = OptimRecipe(
        base_lr=2e-4, reference_batch=512, min_lr=1e-5, scale_min_lr=True, warmup_fraction=0.1, weight_decay=0.05,
        clip_grad=5.0, source="microsoft/SimMIM configs/swin_base__100ep (cosine schedule)")

    def __init__(self, encoder: SwinEncoder, cfg: SimMIMConfig | None = None) -> None:
        super().__init__(encoder, cfg)
        self.patch = encoder.cfg.patch_size
        self.decoder = LightDecoder(encoder.out_channels[-1], encoder.cfg.in_channels, stride=32)

    def view_fn(self) -> ViewFn:
        """``simmim_views`` bound to the config and patch size: a random resized sub-volume (flipped) and its cube
        mask."""
        return partial(simmim_views, cfg=self.cfg, patch=self.patch)

    def predict(self, image: Tensor, mask: Tensor) -> Tensor:
        """(B, C, D, H, W), patch mask (B, D/2, H/2, W/2) -> reconstruction (B, C, D, H, W)."""
        return self.decoder(self.student(image, mask)[-1])

    def loss(self, prediction: Tensor, image: Tensor, mask: Tensor) -> Tensor:
        """Masked L1/L2 between prediction and image over the voxels under the patch mask (B, D/2, H/2, W/2)."""
        return masked_reconstruction_loss(prediction, image, upsample_mask(mask, self.patch), self.cfg.loss)

    def forward(self, views: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        """Masked image (B, C, D, H, W) -> reconstruction (B, C, D, H, W); returns {"loss": L1 (or L2) over the
        hidden voxels, "loss/recon": same}."""
        image, mask = views["image"], views["mask"]
        loss = self.loss(self.predict(image, mask), image, mask)
        return {"loss": loss, "loss/recon": loss.detach()}
