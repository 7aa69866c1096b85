"""SwinUNETR's pretraining recipe (Tang et al., "Self-supervised pre-training of Swin transformers for 3D medical
image analysis", CVPR 2022, https://arxiv.org/abs/2111.14791; code: Project-MONAI/research-contributions,
SwinUNETR/Pretrain, cited in documentation/methods/swinunetr.md with file and line).

Each crop x gives two views: x_v = cutout(rot_v(x)) for v = 1, 2, where rot_v is one of 4 rotations (0/90/180/270
degrees in the sagittal plane, about the left-right axis: ``nnssl.rotations.ROTATIONS_4``, Tang's
``rot90(k, (2, 3))`` on RAS arrays) and cutout replaces random boxes by noise or by the voxels of a donor from the same
view's batch (never the partner view). Three heads on the last Swin stage s (2B, 16F, D/32, H/32, W/32) of both
views:

* rotation: global token -> Linear(16F, 4) -> cross-entropy against the rotation label;
* contrastive: global token -> Linear(16F, 512) -> NT-Xent (tau 0.5) between the two views of each crop, on this
  rank's batch (Tang's ``Contrast`` gathers nothing across GPUs);
* inpainting: s -> ``InpaintingDecoder`` -> (2B, C, D, H, W) -> L1 against the rotated, uncut rot_v(x) over the whole
  volume (Tang's ``nn.L1Loss``; ``inpaint_region="cutout"`` restricts it to the replaced voxels).

loss = 1 * rotation + 1 * contrastive + 1 * inpainting (the paper's weights).

Shapes: make_views: crops (B, C, D, H, W) -> {"image": (2B, C, D, H, W) cut-out views, "target": (2B, C, D, H, W)
rotated uncut views, "mask": (2B, 1, D, H, W) bool cut-out voxels, "rotation": (2B,) long in [0, 4)}; rows b and
B + b are the two views of crop b.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import torch
from torch import Tensor, nn
import torch.nn.functional as F

from nnssl.decoders import InpaintingDecoder
from nnssl.encoders.swin import SWIN_DIVISOR, SwinEncoder, check_swin_input_size
from nnssl.heads import global_token
from nnssl.losses.infonce import nt_xent
from nnssl.losses.reconstruction import masked_l1
from nnssl.recipes import OptimRecipe
from nnssl.rotations import ROTATIONS_4, balanced_labels, rotate_batch
from nnssl.tasks.base import PretextTask, ViewFn
from nnssl.views import cutout

_REGIONS = ("volume", "cutout")


@dataclass
class SwinUNETRConfig:
    """Tang et al.'s pretraining settings (CVPR 2022): loss weights, temperature, head width and cut-out from the
    authors' code, plus the L1 region (see the field comments)."""

    #: Loss weights (alpha1, alpha2, alpha3 = 1, 1, 1 in the paper and code).
    rotation_weight: float = 1.0
    contrastive_weight: float = 1.0
    inpainting_weight: float = 1.0
    #: NT-Xent temperature of the authors' ``Contrast`` loss.
    temperature: float = 0.5
    #: Output width of the contrastive head (Linear(768, 512) in the authors' code).
    contrastive_dim: int = 512
    #: Cut-out generator (authors' ``patch_rand_drop``): up to 30 % of the voxels, boxes of 5 %-25 % per axis.
    max_drop: float = 0.3
    max_block: float = 0.25
    min_block: float = 0.05
    #: Where the L1 is taken: "volume" (the authors' nn.L1Loss over the whole reconstructed volume) or "cutout" (only
    #: the replaced voxels).
    inpaint_region: str = "volume"

    def __post_init__(self) -> None:
        if self.inpaint_region not in _REGIONS:
            raise ValueError(f"inpaint_region must be one of {_REGIONS}, got {self.inpaint_region!r}")
        if not self.temperature > 0 or self.contrastive_dim < 1:
            raise ValueError("need temperature > 0 and contrastive_dim >= 1")
        if not 0.0 < self.max_drop < 1.0 or not 0.0 < self.min_block <= self.max_block <= 1.0:
            raise ValueError(f"need 0 < max_drop < 1 and 0 < min_block <= max_block <= 1, got max_drop="
                             f"{self.max_drop}, min_block={self.min_block}, max_block={self.max_block}")


def swinunetr_views(crops: Tensor, generator: torch.Generator, *, cfg: SwinUNETRConfig,
                    table: Tensor) -> dict[str, Tensor]:
    """Crops (B, C, D, H, W) -> {"target": two rotated copies (2B, ...), "image": the targets with cut-out boxes,
    "mask": the boxes, "rotation": (2B,) rotation indices}."""
    b = crops.shape[0]
    if b < 2:
        raise ValueError("the SwinUNETR recipe needs a batch of at least 2 crops (contrastive negatives)")
    SwinUNETRPretraining.check_crop(tuple(crops.shape[2:]), cfg)
    labels = torch.cat([balanced_labels(b, len(table), generator) for _ in range(2)])
    target = rotate_batch(torch.cat([crops, crops]), labels, table).contiguous()
    image, mask = cutout(target, generator, cfg.max_drop, cfg.max_block, cfg.min_block, groups=2)
    return {"image": image, "target": target, "mask": mask, "rotation": labels}


class SwinUNETRPretraining(PretextTask):
    """Rotation (4 classes) + contrastive (NT-Xent) + inpainting (L1) on one Swin encoder, weights 1/1/1."""

    name: ClassVar[str] = "swinunetr"
    family: ClassVar[str] = "hybrid"
    paper: ClassVar[str] = ("Tang et al., Self-Supervised Pre-Training of Swin Transformers for 3D Medical Image "
                            "Analysis, CVPR 2022")
    Config: ClassVar[type] = SwinUNETRConfig
    recommended_batch: ClassVar[int | None] = 16
    gathers_negatives: ClassVar[bool] = False
    #: README.md's 8-GPU run: AdamW, lr 6e-6, weight decay 0.1 on every parameter, 500 warm-up steps of 100000
    #: (--lrdecay: cosine to 0), no clipping under AMP.
    recipe: ClassVar[OptimRecipe] = OptimRecipe(
        base_lr=6e-6, reference_batch=None, warmup_fraction=500 / 100_000, weight_decay=0.1,
        decay_all_parameters=True,
        source="Project-MONAI/research-contributions SwinUNETR/Pretrain README.md command (8 GPUs, 100k steps)")
    table = ROTATIONS_4

    def __init__(self, encoder: SwinEncoder, cfg: SwinUNETRConfig | None = None) -> None:
        super().__init__(encoder, cfg)
        dim = encoder.out_channels[-1]
        # The authors read token 0 (rotation) and token 1 (contrastive) of the last stage; we pool all tokens,
        # which works for every crop size (a 32^3 crop has a single last-stage token).
        self.rotation_head = nn.Linear(dim, len(self.table))
        self.contrastive_head = nn.Linear(dim, self.cfg.contrastive_dim)
        self.decoder = InpaintingDecoder(dim, encoder.cfg.in_channels)

    def negatives_per_anchor(self, batch: int, world_size: int = 1) -> int:
        """``2 * batch - 2``: the other views of this rank's batch (Tang's loss gathers nothing across ranks, so
        ``world_size`` does not count)."""
        return 2 * batch - 2  # this rank's batch only: Tang's loss gathers nothing

    @classmethod
    def check_crop(cls, crop: tuple[int, ...], cfg: SwinUNETRConfig) -> list[str]:
        """Swin's rule, and a ValueError when D != H (the sagittal rotations turn the (D, H) plane into itself) or
        when no axis exceeds 32 (a single last-stage token, too small for the inpainting decoder)."""
        check_swin_input_size(crop)
        if crop[0] != crop[1]:
            raise ValueError(f"the sagittal rotations turn the (D, H) plane into itself: the crop needs D == H, got "
                             f"{tuple(crop)}")
        if all(s <= SWIN_DIVISOR for s in crop):
            raise ValueError(f"crop {tuple(crop)} leaves a single last-stage token; the inpainting decoder needs at "
                             "least 64 voxels along one axis (the paper uses 96^3 crops)")
        return []

    def view_fn(self) -> ViewFn:
        """``swinunetr_views`` bound to the config and the 4 sagittal rotations: two rotated, cut-out views per crop."""
        return partial(swinunetr_views, cfg=self.cfg, table=self.table)

    def forward(self, views: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        """Cut-out views (2B, C, D, H, W) -> last stage -> rotation cross-entropy and NT-Xent between the two views
        (this rank only) on the pooled token, L1 inpainting of the uncut rotated targets over the whole volume or the
        cut-out voxels. Returns {"loss": weighted sum, "loss/rotation", "loss/contrastive", "loss/inpainting"}."""
        image, target = views["image"], views["target"]
        b = image.shape[0] // 2
        deepest = self.student(image)[-1]
        pooled = global_token(deepest)
        rot = F.cross_entropy(self.rotation_head(pooled), views["rotation"].long())
        z = self.contrastive_head(pooled)
        con = nt_xent(z[:b], z[b:], temperature=self.cfg.temperature, gather=False)
        recon = self.decoder(deepest)
        rec = masked_l1(recon, target, views["mask"]) if self.cfg.inpaint_region == "cutout" \
            else F.l1_loss(recon, target)
        c = self.cfg
        loss = c.rotation_weight * rot + c.contrastive_weight * con + c.inpainting_weight * rec
        return {"loss": loss, "loss/rotation": rot.detach(), "loss/contrastive": con.detach(),
                "loss/inpainting": rec.detach()}
