"""3D contrastive predictive coding (Taleb et al., "3D self-supervised methods for medical imaging", NeurIPS 2020,
https://arxiv.org/abs/2006.03829; CPC: van den Oord et al. 2018, https://arxiv.org/abs/1807.03748; image CPC with
overlapping patches and a masked-convolution context network: Henaff et al., ICML 2020).

The crop is cut into a grid of sub-volumes (default 32^3, the smallest the Swin encoder takes, with stride 32, i.e.
no overlap, as in Taleb et al.'s 3D code: a 96^3 crop gives a 3 x 3 x 3 grid; ``stride=16`` gives half-overlapping
sub-volumes as in image CPC, 5 x 5 x 5 for 96^3, at 4.6x the voxels). Each sub-volume is encoded on its own; its
last-stage tokens are pooled and projected to a latent z (code_size). A context network of causal ("masked") 3D
convolutions runs over the latent grid: its output c at row r (grid axis 0 = D) sees only rows <= r. From c at row
r a linear map W_k predicts the latent k rows below, for k = k_min .. k_min + prediction_steps - 1, where
k_min = ceil(patch / stride) is the first row whose sub-volume shares no voxel with rows <= r (so the prediction
cannot copy the target's own voxels). InfoNCE scores each prediction against every latent of the batch: the positive
is the true latent, the negatives are the latents of all other positions and volumes.

Shapes (g = grid size per axis, n = gD * gH * gW, p = patch size):
    make_views: crops (B, C, D, H, W) -> {"patches": (B, gD, gH, gW, C, p, p, p)}
    encode: -> z (B, code, gD, gH, gW); context: -> c (B, context_channels, gD, gH, gW)
    predict: c -> {k: (B, code, gD - k, gH, gW)} predicting z[:, :, k:]
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn
import torch.nn.functional as F

from nnssl.encoders.swin import SWIN_DIVISOR, SwinEncoder
from nnssl.heads import global_token
from nnssl.losses.infonce import info_nce
from nnssl.tasks.base import PretextTask


@dataclass
class CPCConfig:
    #: Edge of the cubic sub-volumes in voxels (a multiple of 32 for Swin) and the grid stride. 32 / 32 = no overlap,
    #: as Taleb et al.'s 3D code; 32 / 16 = half overlap as image CPC (van den Oord; Henaff), 3-5x the encoder cost.
    patch_size: int = 32
    stride: int = 32
    #: Latent size: Taleb et al. project the pooled encoder output with Dense(code_size=1024).
    code_size: int = 1024
    #: Context network width and depth (Taleb et al.'s GRU has 256 units; we use causal 3D convolutions).
    context_channels: int = 256
    context_layers: int = 3
    #: Number of rows predicted below each context row, starting at the first non-overlapping one (Taleb et al.
    #: predict all following rows: 2 for the 3 rows of a 96^3 crop). Predictors for offsets the crop's grid is too
    #: small for stay unused (they get zero gradient).
    prediction_steps: int = 2
    #: InfoNCE scores: raw dot products z . W_k c as in CPC (normalize=False, temperature 1).
    temperature: float = 1.0
    normalize: bool = False


class _CausalConv3d(nn.Module):
    """3D convolution whose output at grid row r sees input rows r - kernel + 1 .. r only (axis 0 = D).

    (B, C, gD, gH, gW) -> (B, C_out, gD, gH, gW): padding kernel - 1 rows on top and none below along D, the usual
    symmetric padding along H and W.
    """

    def __init__(self, cin: int, cout: int, kernel: int = 3) -> None:
        super().__init__()
        self.kernel = kernel
        self.conv = nn.Conv3d(cin, cout, kernel_size=kernel)

    def forward(self, x: Tensor) -> Tensor:
        k = self.kernel
        return self.conv(F.pad(x, (k // 2, k // 2, k // 2, k // 2, k - 1, 0)))


class _ChannelNorm(nn.Module):
    """LayerNorm over channels at each grid position: unlike BatchNorm/GroupNorm it mixes no positions, so it
    cannot leak information from the rows being predicted into the context."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


class CausalContextNetwork(nn.Module):
    """Residual stack of causal 3D convolutions over the latent grid (PixelCNN-style, as in Henaff et al.).

    (B, code, gD, gH, gW) -> (B, channels, gD, gH, gW); output row r depends on input rows <= r only.
    """

    def __init__(self, in_channels: int, channels: int, layers: int) -> None:
        super().__init__()
        self.inp = nn.Conv3d(in_channels, channels, kernel_size=1)
        self.norms = nn.ModuleList(_ChannelNorm(channels) for _ in range(layers))
        self.convs = nn.ModuleList(_CausalConv3d(channels, channels) for _ in range(layers))

    def forward(self, z: Tensor) -> Tensor:
        h = self.inp(z)
        for norm, conv in zip(self.norms, self.convs):
            h = h + conv(F.gelu(norm(h)))
        return h


class CPC(PretextTask):
    """3D CPC: views {"patches": (B, gD, gH, gW, C, p, p, p)} -> InfoNCE of predicted vs true latents."""

    name: ClassVar[str] = "cpc"
    family: ClassVar[str] = "contrastive"
    paper: ClassVar[str] = "Taleb et al., 3D Self-Supervised Methods for Medical Imaging, NeurIPS 2020"
    Config: ClassVar[type] = CPCConfig

    def __init__(self, encoder: SwinEncoder, cfg: CPCConfig | None = None) -> None:
        super().__init__(encoder, cfg)
        c = self.cfg
        if c.patch_size < SWIN_DIVISOR or c.patch_size % SWIN_DIVISOR != 0:
            raise ValueError(f"patch_size={c.patch_size}: sub-volumes go through Swin, use a multiple of 32")
        if not 0 < c.stride <= c.patch_size:
            raise ValueError(f"stride={c.stride} must lie in (0, patch_size={c.patch_size}] (gaps lose voxels)")
        if c.prediction_steps < 1 or c.context_layers < 1:
            raise ValueError("prediction_steps and context_layers must be >= 1")
        self.min_offset = math.ceil(c.patch_size / c.stride)
        self.offsets = list(range(self.min_offset, self.min_offset + c.prediction_steps))
        self.latent = nn.Linear(encoder.out_channels[-1], c.code_size)
        self.context = CausalContextNetwork(c.code_size, c.context_channels, c.context_layers)
        self.predictors = nn.ModuleList(nn.Conv3d(c.context_channels, c.code_size, 1) for _ in self.offsets)

    def grid_shape(self, spatial: tuple[int, ...]) -> tuple[int, int, int]:
        """Sub-volumes per axis for a crop of ``spatial`` voxels; ValueError if the grid does not tile it."""
        p, s = self.cfg.patch_size, self.cfg.stride
        grid = []
        for axis, size in enumerate(spatial):
            if size < p or (size - p) % s != 0:
                ok = [p + s * i for i in range(1, 6)]
                raise ValueError(f"crop axis {axis} has {size} voxels: a grid of {p}^3 sub-volumes with stride {s} "
                                 f"needs {p} + {s} * n voxels, e.g. {ok}")
            grid.append((size - p) // s + 1)
        if grid[0] <= self.min_offset:
            raise ValueError(
                f"crop axis 0 gives {grid[0]} rows of sub-volumes but predictions start {self.min_offset} rows below "
                f"the context: use at least {p + s * self.min_offset} voxels along axis 0"
            )
        return grid[0], grid[1], grid[2]

    def make_views(self, crops: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        if crops.ndim != 5:
            raise ValueError(f"expected crops (B, C, D, H, W), got {tuple(crops.shape)}")
        self.grid_shape(tuple(crops.shape[2:]))
        p, s = self.cfg.patch_size, self.cfg.stride
        # unfold -> (B, C, gD, gH, gW, p, p, p) -> (B, gD, gH, gW, C, p, p, p)
        patches = crops.unfold(2, p, s).unfold(3, p, s).unfold(4, p, s)
        return {"patches": patches.permute(0, 2, 3, 4, 1, 5, 6, 7).contiguous()}

    def encode(self, patches: Tensor) -> Tensor:
        """(B, gD, gH, gW, C, p, p, p) -> latents z (B, code, gD, gH, gW); each sub-volume encoded on its own."""
        b, gd, gh, gw = patches.shape[:4]
        pooled = global_token(self.student(patches.flatten(0, 3))[-1])
        z = self.latent(pooled).view(b, gd, gh, gw, -1)
        return z.permute(0, 4, 1, 2, 3)

    def predict(self, z: Tensor) -> dict[int, Tensor]:
        """Latents (B, code, gD, gH, gW) -> {k: prediction of z[:, :, k:] from context rows :gD-k}."""
        c = self.context(z)
        gd = z.shape[2]
        return {k: head(c[:, :, : gd - k]) for k, head in zip(self.offsets, self.predictors) if k < gd}

    def forward(self, views: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        z = self.encode(views["patches"])
        preds = self.predict(z)
        if not preds:
            raise ValueError(f"the grid has {z.shape[2]} rows: too few to predict any row {self.min_offset} below")
        b, code, gd, gh, gw = z.shape
        keys = z.permute(0, 2, 3, 4, 1).reshape(-1, code)  # (B * n, code), row-major (b, d, h, w)
        index = torch.arange(keys.shape[0], device=z.device).view(b, gd, gh, gw)
        queries, positives = [], []
        for k, pred in preds.items():
            queries.append(pred.permute(0, 2, 3, 4, 1).reshape(-1, code))
            positives.append(index[:, k:].reshape(-1))
        loss = info_nce(torch.cat(queries), keys, torch.cat(positives), temperature=self.cfg.temperature,
                        normalize=self.cfg.normalize)
        # Predictors for offsets beyond this grid take part with weight 0, so DDP sees every parameter used.
        unused = [h.weight.sum() for k, h in zip(self.offsets, self.predictors) if k not in preds]
        if unused:
            loss = loss + 0.0 * torch.stack(unused).sum()
        return {"loss": loss, "loss/infonce": loss.detach()}
