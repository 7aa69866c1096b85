"""3D contrastive predictive coding (Taleb et al., "3D self-supervised methods for medical imaging", NeurIPS 2020,
https://arxiv.org/abs/2006.03829; reference code HealthML/self-supervised-3d-tasks, cited in
documentation/methods/cpc.md with file and line; CPC: van den Oord et al. 2018, https://arxiv.org/abs/1807.03748).

The crop is jittered as a whole (a random ``volume_crop_fraction`` of each axis, padded back) and cut into a grid of
sub-volumes (default 32^3 with stride 32: a 128^3 crop gives Taleb's 4 x 4 x 4 grid). Each sub-volume is flipped
along the prediction axis (D, the grid's rows; Taleb flips array axis 0, his row axis) with probability
``patch_flip_prob`` and jittered: a random ``patch_crop_fraction`` of it (7/8) is kept and padded back to its size, so
that neighbouring sub-volumes share no predictable border (Taleb's preprocess_cpc.py). Each sub-volume is encoded on
its own; its last-stage tokens are pooled and projected to a latent z (code_size). For every column (h, w) of the grid
the context is Taleb's "pyramid": for each row j above the anchor row r = gD // 2 - 1 the (2 (r - j) + 1)^2
neighbourhood of (h, w) (3 x 3 on the row just above, widening by one sub-volume per row further up; mirrored at the
border), then the sub-volume at (r, h, w) itself, aggregated by a GRU (256 units, its last hidden state). From the context a linear map W_k predicts
the latent k rows below (k = k_min .. k_min + prediction_steps - 1; k_min = ceil(patch / stride) is the first row whose
sub-volume shares no voxel with the context). InfoNCE scores each prediction against every latent of the batch: the
positive is the true latent, the negatives are the latents of all other positions and volumes (CPC's loss; the
reference code trains a binary classifier with one negative, a documented deviation).

Shapes (g = grid size per axis, n = gD * gH * gW, p = patch size, T = 1 + sum_j (2 (r - j) + 1)^2 context terms,
10 for Taleb's 4-row grid):
    make_views: crops (B, C, D, H, W) -> {"patches": (B, gD, gH, gW, C, p, p, p)}
    encode: -> z (B, code, gD, gH, gW); context: (B * gH * gW, T, code) -> c (B * gH * gW, units)
    predictions: {k: (B * gH * gW, code)} of z[:, :, r + k]
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import torch
from torch import Tensor, nn

from nnssl.encoders.swin import SWIN_DIVISOR, SwinEncoder, check_swin_input_size
from nnssl.heads import global_token
from nnssl.losses.infonce import info_nce
from nnssl.recipes import OptimRecipe
from nnssl.tasks.base import PretextTask, ViewFn
from nnssl.views import random_flip


@dataclass
class CPCConfig:
    """3D CPC settings (Taleb et al., NeurIPS 2020): grid, latent, GRU context and jitter of Taleb's code, InfoNCE
    scores as in CPC (see the field comments)."""

    #: Edge of the cubic sub-volumes in voxels (a multiple of 32 for Swin) and the grid stride (Taleb: 32, no
    #: overlap; 32 / 16 = half overlap as image CPC, 3-5x the encoder cost).
    patch_size: int = 32
    stride: int = 32
    #: Latent size: Taleb et al. project the encoder output with Dense(code_size=1024).
    code_size: int = 1024
    #: The context network: a GRU with 256 units, its last hidden state (Taleb et al.).
    context_units: int = 256
    #: Rows predicted below the anchor row (Taleb: 2, rows 2 and 3 of a 4-row grid).
    prediction_steps: int = 2
    #: Jitter: the kept fraction of each axis of the whole crop (Taleb: 0.95) and of each sub-volume (7/8), and the
    #: probability of flipping a sub-volume along the prediction axis D (0.5).
    volume_crop_fraction: float = 0.95
    patch_crop_fraction: float = 7 / 8
    patch_flip_prob: float = 0.5
    #: InfoNCE scores: raw dot products z . W_k c as in CPC (normalize=False, temperature 1).
    temperature: float = 1.0
    normalize: bool = False

    def __post_init__(self) -> None:
        if self.patch_size < SWIN_DIVISOR or self.patch_size % SWIN_DIVISOR:
            raise ValueError(f"patch_size={self.patch_size}: sub-volumes go through Swin, use a multiple of 32")
        if not 0 < self.stride <= self.patch_size:
            raise ValueError(f"stride={self.stride} must lie in (0, patch_size={self.patch_size}] (gaps lose voxels)")
        if min(self.code_size, self.context_units, self.prediction_steps) < 1:
            raise ValueError("code_size, context_units and prediction_steps must be >= 1")
        for name in ("volume_crop_fraction", "patch_crop_fraction"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must lie in (0, 1]")
        if not 0.0 <= self.patch_flip_prob <= 1.0:
            raise ValueError(f"patch_flip_prob={self.patch_flip_prob} must lie in [0, 1]")
        if not self.temperature > 0:
            raise ValueError(f"temperature={self.temperature} must be > 0")


def _mirror(index: Tensor, size: int) -> Tensor:
    """Reflect grid indices at the border (-1 -> 1, size -> size - 2), as Taleb's context pyramid."""
    index = index.abs()
    index = torch.where(index >= size, 2 * (size - 1) - index, index)
    return index.clamp(0, size - 1)


def first_offset(cfg: CPCConfig) -> int:
    """k_min = ceil(patch / stride): the first row whose sub-volume shares no voxel with the context rows."""
    return math.ceil(cfg.patch_size / cfg.stride)


def anchor_row(rows: int) -> int:
    """Taleb's last context row of a grid with ``rows`` rows: ``rows / 2 - 1`` (preprocess_cpc.py:266-267)."""
    return max(rows // 2 - 1, 0)


def grid_shape(cfg: CPCConfig, spatial: tuple[int, ...]) -> tuple[int, int, int]:
    """Sub-volumes per axis for a crop of ``spatial`` voxels; ValueError if the grid does not tile it or has too few
    rows for the predictions (the anchor row r = rows // 2 - 1 needs r + k_min + prediction_steps - 1 < rows)."""
    p, s = cfg.patch_size, cfg.stride
    grid = []
    for axis, size in enumerate(spatial):
        if size < p or (size - p) % s != 0:
            ok = [p + s * i for i in range(1, 6)]
            raise ValueError(f"crop axis {axis} has {size} voxels: a grid of {p}^3 sub-volumes with stride {s} "
                             f"needs {p} + {s} * n voxels, e.g. {ok}")
        grid.append((size - p) // s + 1)
    last = first_offset(cfg) + cfg.prediction_steps - 1
    needed = 1
    while anchor_row(needed) + last >= needed:
        needed += 1
    if grid[0] < needed:
        raise ValueError(f"crop axis 0 gives {grid[0]} rows of sub-volumes; CPC predicts {cfg.prediction_steps} "
                         f"row(s) from {first_offset(cfg)} below the anchor row: use at least {p + s * (needed - 1)} "
                         "voxels along axis 0 (128: Taleb's 4 x 4 x 4 grid)")
    return grid[0], grid[1], grid[2]


def _jitter(x: Tensor, fraction: float, generator: torch.Generator, fill: Tensor) -> Tensor:
    """Keep a random ``int(fraction * size)`` of each spatial axis of x (N, C, a, b, c) (Taleb's crop sizes: 121 of
    128, 28 of 32) and pad it back to its size, the kept block centred; ``fill`` (N,) is each sample's padding."""
    if fraction >= 1.0:
        return x
    spatial = x.shape[2:]
    keep = [max(1, int(s * fraction + 1e-9)) for s in spatial]
    out = fill.view(-1, *([1] * (x.ndim - 1))).expand_as(x).clone()
    for i in range(x.shape[0]):
        starts = [int(torch.randint(0, s - k + 1, (1,), generator=generator)) for s, k in zip(spatial, keep)]
        block = x[i, :, starts[0]: starts[0] + keep[0], starts[1]: starts[1] + keep[1], starts[2]: starts[2] + keep[2]]
        o = [(s - k) // 2 for s, k in zip(spatial, keep)]
        out[i, :, o[0]: o[0] + keep[0], o[1]: o[1] + keep[1], o[2]: o[2] + keep[2]] = block
    return out


def cpc_views(crops: Tensor, generator: torch.Generator, *, cfg: CPCConfig) -> dict[str, Tensor]:
    """Crops (B, C, D, H, W) -> {"patches": (B, gD, gH, gW, C, p, p, p)}: the jittered crop cut into a grid of
    overlapping sub-volumes, each flipped and jittered on its own."""
    if crops.ndim != 5:
        raise ValueError(f"expected crops (B, C, D, H, W), got {tuple(crops.shape)}")
    grid_shape(cfg, tuple(crops.shape[2:]))
    c = cfg
    background = crops.flatten(1).amin(dim=1)
    crops = _jitter(crops, c.volume_crop_fraction, generator, background)
    p, s = c.patch_size, c.stride
    # unfold -> (B, C, gD, gH, gW, p, p, p) -> (B, gD, gH, gW, C, p, p, p)
    patches = crops.unfold(2, p, s).unfold(3, p, s).unfold(4, p, s).permute(0, 2, 3, 4, 1, 5, 6, 7)
    grid = patches.shape[:4]
    flat = patches.reshape(-1, *patches.shape[4:])
    flat = random_flip(flat, generator, p=c.patch_flip_prob, axes=(0,))
    fill = background.repeat_interleave(grid[1] * grid[2] * grid[3])
    flat = _jitter(flat, c.patch_crop_fraction, generator, fill)
    return {"patches": flat.reshape(*grid, *flat.shape[1:]).contiguous()}


class CPC(PretextTask):
    """3D CPC: views {"patches": (B, gD, gH, gW, C, p, p, p)} -> InfoNCE of predicted vs true latents."""

    name: ClassVar[str] = "cpc"
    family: ClassVar[str] = "contrastive"
    paper: ClassVar[str] = "Taleb et al., 3D Self-Supervised Methods for Medical Imaging, NeurIPS 2020"
    Config: ClassVar[type] = CPCConfig
    #: configs/train/cpc_3d.json: Adam, lr 1e-4, no schedule, no weight decay, no clipping.
    recipe: ClassVar[OptimRecipe] = OptimRecipe(
        base_lr=1e-4, reference_batch=None, schedule="constant",
        source="HealthML/self-supervised-3d-tasks configs/train/cpc_3d.json (Adam, constant lr)")

    def __init__(self, encoder: SwinEncoder, cfg: CPCConfig | None = None) -> None:
        super().__init__(encoder, cfg)
        c = self.cfg
        self.min_offset = first_offset(c)
        self.offsets = list(range(self.min_offset, self.min_offset + c.prediction_steps))
        self.latent = nn.Linear(encoder.out_channels[-1], c.code_size)
        self.context = nn.GRU(c.code_size, c.context_units, batch_first=True)
        self.predictors = nn.ModuleList(nn.Linear(c.context_units, c.code_size) for _ in self.offsets)

    def grid_shape(self, spatial: tuple[int, ...]) -> tuple[int, int, int]:
        """Sub-volumes per axis for a crop of ``spatial`` voxels; ValueError if the grid does not tile it or has too
        few rows for the predictions."""
        return grid_shape(self.cfg, spatial)

    def anchor_row(self, rows: int) -> int:
        """Taleb's last context row: ``rows / 2 - 1`` (preprocess_cpc.py:266-267)."""
        return anchor_row(rows)

    @classmethod
    def check_crop(cls, crop: tuple[int, ...], cfg: CPCConfig) -> list[str]:
        """Swin's rule and ``grid_shape``'s checks (the grid tiles the crop and leaves rows to predict); warns below
        4 rows of sub-volumes (Taleb's 128^3 crop, a 4 x 4 x 4 grid)."""
        check_swin_input_size(crop)
        grid = grid_shape(cfg, tuple(crop))
        return [] if grid[0] >= 4 else [f"CPC at {tuple(crop)}: {grid[0]} rows of sub-volumes; its page recommends "
                                        "Taleb's 128^3 crop (a 4 x 4 x 4 grid)"]

    def view_fn(self) -> ViewFn:
        """``cpc_views`` bound to the config: the jittered crop cut into a grid of flipped, jittered sub-volumes."""
        return partial(cpc_views, cfg=self.cfg)

    def encode(self, patches: Tensor) -> Tensor:
        """(B, gD, gH, gW, C, p, p, p) -> latents z (B, code, gD, gH, gW); each sub-volume encoded on its own."""
        b, gd, gh, gw = patches.shape[:4]
        pooled = global_token(self.student(patches.flatten(0, 3))[-1])
        z = self.latent(pooled).view(b, gd, gh, gw, -1)
        return z.permute(0, 4, 1, 2, 3)

    def context_sequences(self, z: Tensor) -> Tensor:
        """Latents (B, code, gD, gH, gW) -> per column the context terms (B * gH * gW, T, code): for rows
        j = 0 .. r - 1 the mirrored (2 (r - j) + 1)^2 neighbourhood (Taleb's pyramid, preprocess_cpc.py:236-251), then
        the column's own latent of row r."""
        b, code, gd, gh, gw = z.shape
        r = self.anchor_row(gd)
        zr = z.permute(0, 2, 3, 4, 1)  # (B, gD, gH, gW, code)
        hs, ws = torch.arange(gh, device=z.device), torch.arange(gw, device=z.device)
        terms = []
        for row in range(r):
            reach = r - row
            for dh in range(-reach, reach + 1):
                for dw in range(-reach, reach + 1):
                    terms.append(zr[:, row][:, _mirror(hs + dh, gh)][:, :, _mirror(ws + dw, gw)])
        terms.append(zr[:, r])
        return torch.stack(terms, dim=3).reshape(b * gh * gw, len(terms), code)

    def forward(self, views: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        """Patches (B, gD, gH, gW, C, p, p, p) -> latents z -> per column a GRU over the context pyramid -> W_k
        predictions of the latents k rows below the anchor row; returns {"loss": InfoNCE against every latent of the
        batch, "loss/infonce": same}."""
        z = self.encode(views["patches"])
        b, code, gd, gh, gw = z.shape
        r = self.anchor_row(gd)
        _, hidden = self.context(self.context_sequences(z))
        context = hidden[-1]  # (B * gH * gW, units)
        keys = z.permute(0, 2, 3, 4, 1).reshape(-1, code)  # (B * n, code), row-major (b, d, h, w)
        index = torch.arange(keys.shape[0], device=z.device).view(b, gd, gh, gw)
        queries = torch.cat([head(context) for head in self.predictors])
        positives = torch.cat([index[:, r + k].reshape(-1) for k in self.offsets])
        loss = info_nce(queries, keys, positives, temperature=self.cfg.temperature, normalize=self.cfg.normalize)
        return {"loss": loss, "loss/infonce": loss.detach()}
