"""MAE-style masked reconstruction on the Swin encoder (He et al., "Masked autoencoders are scalable vision learners",
CVPR 2022, https://arxiv.org/abs/2111.06377), adapted to a hierarchical encoder.

What stays from MAE: a high mask ratio (0.75) over patches, targets that are each patch's voxels normalised by
that patch's own mean and std ("norm_pix_loss"), a deeper transformer decoder (8 blocks of width 512) on all
positions with fixed sin-cos position embeddings, MSE on masked patches only. What changes: Swin's windows need
the full token grid, so masked positions are not dropped: they carry the encoder's learned mask token
(``SwinEncoder(x, mask)``), as SimMIM does. A masking/target patch ("unit") is ``mask_patch``^3 voxels (16^3 by
default, one token of encoder stage 3; SMIT masks 16^3 cubes as well); the decoder input at unit resolution is the
stage with that stride plus the last stage upsampled to it (pixel shuffle), so every encoder stage gets gradient.

Shapes (u = mask_patch, N = D*H*W / u^3 units):
    make_views: crops (B, C, D, H, W) -> {"image": (B, C, D, H, W) (random flips), "mask": (B, D/2, H/2, W/2) bool}
    forward: encoder(image, mask) -> decoder -> (B, N, C*u^3); target patchify(image) (B, N, C*u^3), normalised per
             unit; loss = mean over masked units of the per-unit MSE
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import torch
from torch import Tensor, nn

from nnssl.encoders.swin import SwinEncoder
from nnssl.masking import random_cube_mask
from nnssl.recipes import OptimRecipe
from nnssl.tasks.base import PretextTask, ViewFn
from nnssl.views import random_flip, random_subcrop

#: mask_patch (voxels) -> index of the encoder output with that stride (outputs have strides 2, 4, 8, 16, 32).
_STAGE_OF_UNIT = {8: 2, 16: 3, 32: 4}


@dataclass
class MAEConfig:
    """MAE settings (He et al., CVPR 2022) in 3D: MAE's mask ratio, decoder, norm_pix_loss and augmentation; the 16^3
    unit is our choice (see the field comments)."""

    #: Fraction of masking units hidden (MAE: 0.75).
    mask_ratio: float = 0.75
    #: Edge of a masking/target unit in voxels: 8, 16 or 32 (an encoder stride; 16 is our 3D choice).
    mask_patch: int = 16
    #: MAE's decoder: 8 transformer blocks, width 512, 16 heads.
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    #: Normalise each target unit by its mean and std (MAE's norm_pix_loss, the better setting in the paper).
    norm_pix_loss: bool = True
    #: Random flips and the voxel fraction of the random resized sub-volume (MAE augments with RandomResizedCrop
    #: scale (0.2, 1) and a horizontal flip only, main_pretrain.py:122-127; areas read as volumes).
    flip: bool = True
    crop_scale: tuple[float, float] = (0.2, 1.0)

    def __post_init__(self) -> None:
        self.crop_scale = tuple(float(v) for v in self.crop_scale)
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must lie in (0, 1), got {self.mask_ratio}")
        if self.mask_patch not in _STAGE_OF_UNIT:
            raise ValueError(f"mask_patch={self.mask_patch}: choose one of {sorted(_STAGE_OF_UNIT)} (an encoder stride)")
        if self.decoder_dim % self.decoder_heads or min(self.decoder_dim, self.decoder_depth, self.decoder_heads) < 1:
            raise ValueError(f"decoder_dim={self.decoder_dim} must be a positive multiple of decoder_heads="
                             f"{self.decoder_heads}, decoder_depth >= 1")
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"crop_scale={self.crop_scale} must satisfy 0 < low <= high <= 1")


def patchify(x: Tensor, u: int) -> Tensor:
    """(B, C, D, H, W) -> (B, N, u^3 * C), units in row-major (d, h, w) order, voxels then channels inside a unit."""
    b, c, d, h, w = x.shape
    x = x.reshape(b, c, d // u, u, h // u, u, w // u, u)
    return x.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(b, (d // u) * (h // u) * (w // u), u**3 * c)


def unpatchify(p: Tensor, u: int, channels: int, grid: tuple[int, int, int]) -> Tensor:
    """Inverse of ``patchify``: (B, N, u^3 * C) -> (B, C, gd*u, gh*u, gw*u)."""
    b = p.shape[0]
    gd, gh, gw = grid
    x = p.reshape(b, gd, gh, gw, u, u, u, channels).permute(0, 7, 1, 4, 2, 5, 3, 6)
    return x.reshape(b, channels, gd * u, gh * u, gw * u)


def sincos_position_embedding(grid: tuple[int, int, int], dim: int) -> Tensor:
    """Fixed 3D sin-cos position embedding (MAE's 2D one extended to 3 axes): (gd*gh*gw, dim), row-major order.

    Each axis gets 2 * (dim // 6) channels (half sine, half cosine at geometric frequencies); leftover channels
    are zero.
    """
    per_axis = dim // 6
    if per_axis < 1:
        raise ValueError(f"decoder_dim={dim} is too small for a 3D position embedding: use >= 6")
    omega = 1.0 / 10000 ** (torch.arange(per_axis, dtype=torch.float64) / per_axis)
    coords = torch.meshgrid(*(torch.arange(g, dtype=torch.float64) for g in grid), indexing="ij")
    parts = []
    for axis in range(3):
        angle = coords[axis].reshape(-1, 1) * omega[None]
        parts += [angle.sin(), angle.cos()]
    emb = torch.cat(parts, dim=1)
    return torch.nn.functional.pad(emb, (0, dim - emb.shape[1])).float()


class MAEDecoder(nn.Module):
    """Encoder stages -> voxel predictions per unit.

    features: the encoder's five outputs; uses output ``stage`` (B, C_s, D/u, H/u, W/u) and, if u < 32, the last
    output (B, 16F, D/32, ...) pixel-shuffled to D/u. -> tokens (B, N, dim) + position embedding -> ``depth``
    pre-norm transformer blocks -> LayerNorm -> Linear -> (B, N, u^3 * out_channels).
    """

    def __init__(self, stage_channels: list[int], out_channels: int, unit: int, dim: int, depth: int,
                 heads: int) -> None:
        super().__init__()
        if unit not in _STAGE_OF_UNIT:
            raise ValueError(f"mask_patch={unit}: choose one of {sorted(_STAGE_OF_UNIT)} (an encoder stride)")
        if dim % heads != 0:
            raise ValueError(f"decoder_dim={dim} must be divisible by decoder_heads={heads}")
        self.unit, self.dim = unit, dim
        self.stage = _STAGE_OF_UNIT[unit]
        self.shuffle = 32 // unit
        self.proj_stage = nn.Conv3d(stage_channels[self.stage], dim, kernel_size=1)
        self.proj_last = (nn.Conv3d(stage_channels[4], dim * self.shuffle**3, kernel_size=1)
                          if self.shuffle > 1 else None)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, dim_feedforward=4 * dim, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.pred = nn.Linear(dim, unit**3 * out_channels)

    def _pixel_shuffle(self, x: Tensor) -> Tensor:
        r = self.shuffle
        b, _, d, h, w = x.shape
        x = x.reshape(b, self.dim, r, r, r, d, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
        return x.reshape(b, self.dim, d * r, h * r, w * r)

    def forward(self, features: list[Tensor]) -> Tensor:
        """The encoder's five outputs -> predictions (B, N, u^3 * out_channels), units in row-major order."""
        x = self.proj_stage(features[self.stage])
        if self.proj_last is not None:
            x = x + self._pixel_shuffle(self.proj_last(features[4]))
        grid = tuple(x.shape[2:])
        tokens = x.flatten(2).transpose(1, 2)
        tokens = tokens + sincos_position_embedding(grid, self.dim).to(tokens)  # type: ignore[arg-type]
        for block in self.blocks:
            tokens = block(tokens)
        return self.pred(self.norm(tokens))


def mae_views(crops: Tensor, generator: torch.Generator, *, cfg: MAEConfig) -> dict[str, Tensor]:
    """Crops (B, C, D, H, W) -> {"image": random resized crop (+ flip), "mask": (B, D/2, H/2, W/2) bool, cubes of
    mask_patch voxels aligned with the reconstruction units}."""
    u = cfg.mask_patch
    if any(s % u for s in crops.shape[2:]):
        raise ValueError(f"crop {tuple(crops.shape[2:])} is not divisible by mask_patch={u}")
    image = random_subcrop(crops, tuple(crops.shape[2:]), cfg.crop_scale, generator)
    image = random_flip(image, generator) if cfg.flip else image
    grid = tuple(s // 2 for s in crops.shape[2:])  # encoder patch grid (patch size 2)
    mask = random_cube_mask(crops.shape[0], grid, u // 2, cfg.mask_ratio, generator)  # type: ignore[arg-type]
    return {"image": image, "mask": mask}


class MAE(PretextTask):
    """MAE-style reconstruction: mask token on 75 % of the 16^3 units, normalised-voxel MSE on masked units."""

    name: ClassVar[str] = "mae"
    family: ClassVar[str] = "MIM"
    paper: ClassVar[str] = "He et al., Masked Autoencoders Are Scalable Vision Learners, CVPR 2022"
    Config: ClassVar[type] = MAEConfig
    uses_mask_token: ClassVar[bool] = True
    #: PRETRAIN.md: AdamW betas (0.9, 0.95), blr 1.5e-4 per 256, 40 warm-up epochs of 800, cosine to 0, weight decay
    #: 0.05, no clipping.
    recipe: ClassVar[OptimRecipe] = OptimRecipe(
        base_lr=1.5e-4, reference_batch=256, warmup_fraction=40 / 800, weight_decay=0.05, betas=(0.9, 0.95),
        source="facebookresearch/mae PRETRAIN.md command (800 epochs)")

    def __init__(self, encoder: SwinEncoder, cfg: MAEConfig | None = None) -> None:
        super().__init__(encoder, cfg)
        c = self.cfg
        self.decoder = MAEDecoder(encoder.out_channels, encoder.cfg.in_channels, c.mask_patch, c.decoder_dim,
                                  c.decoder_depth, c.decoder_heads)

    def view_fn(self) -> ViewFn:
        """``mae_views`` bound to the config: a random resized sub-volume (flipped) and its unit-aligned cube mask."""
        return partial(mae_views, cfg=self.cfg)

    def targets(self, image: Tensor) -> Tensor:
        """(B, C, D, H, W) -> (B, N, u^3 C) voxels per unit, normalised per unit when norm_pix_loss."""
        t = patchify(image, self.cfg.mask_patch)
        if self.cfg.norm_pix_loss:
            mean = t.mean(dim=-1, keepdim=True)
            var = t.var(dim=-1, keepdim=True)
            t = (t - mean) / (var + 1.0e-6).sqrt()
        return t

    def unit_mask(self, mask: Tensor) -> Tensor:
        """Patch mask (B, D/2, H/2, W/2) -> (B, N) float, 1 on hidden units (cubes are aligned with the units)."""
        step = self.cfg.mask_patch // 2
        return mask[:, ::step, ::step, ::step].flatten(1).float()

    def forward(self, views: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        """Masked image (B, C, D, H, W) -> encoder -> decoder (B, N, u^3 C); returns {"loss": mean over hidden units
        of the per-unit MSE against ``targets``, "loss/recon": same}. ValueError when no unit is hidden."""
        image, mask = views["image"], views["mask"].bool()
        pred = self.decoder(self.student(image, mask))
        target = self.targets(image)
        per_unit = (pred - target).square().mean(dim=-1)  # (B, N)
        m = self.unit_mask(mask)
        if m.device.type != "meta" and not bool(m.any()):  # no value check on the meta device (FLOP counting)
            raise ValueError("the mask hides no unit: use mask_ratio > 0 and a crop with at least 2 units")
        loss = (per_unit * m).sum() / m.sum()
        return {"loss": loss, "loss/recon": loss.detach()}
