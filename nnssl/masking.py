"""Mask generators on the encoder's patch grid (one token per 2^3 voxels).

Masks are bool tensors (B, d, h, w) on the patch grid, True where a patch is hidden, as ``SwinEncoder`` takes them.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor
import torch.nn.functional as F


def random_cube_mask(batch: int, grid: tuple[int, int, int], cube: int, ratio: float,
                     generator: torch.Generator | None = None) -> Tensor:
    """Hide a random ``ratio`` of the cubes of ``cube``^3 patches (SimMIM / SMIT masking of 16^3 voxel cubes).

    The grid is tiled by cubes (the last cube along an axis may be cut by the border); exactly
    round(ratio * n_cubes) cubes are hidden per sample (at least one, and at least one kept visible).
    Returns (B, *grid) bool.
    """
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"mask ratio must lie in (0, 1), got {ratio}")
    if cube < 1:
        raise ValueError(f"cube size must be >= 1 patch, got {cube}")
    cells = tuple(math.ceil(g / cube) for g in grid)
    n_cells = math.prod(cells)
    if n_cells < 2:
        raise ValueError(
            f"a patch grid of {grid} holds a single {cube}^3-patch cube: use a larger crop or a smaller mask cube"
        )
    n_masked = min(max(round(ratio * n_cells), 1), n_cells - 1)
    scores = torch.rand(batch, n_cells, generator=generator)
    order = scores.argsort(dim=1)
    cell_mask = torch.zeros(batch, n_cells, dtype=torch.bool)
    cell_mask.scatter_(1, order[:, :n_masked], True)
    cell_mask = cell_mask.view(batch, *cells)
    full = cell_mask.repeat_interleave(cube, 1).repeat_interleave(cube, 2).repeat_interleave(cube, 3)
    return full[:, : grid[0], : grid[1], : grid[2]].contiguous()


def upsample_mask(mask: Tensor, factor: int) -> Tensor:
    """(B, d, h, w) bool -> (B, 1, d*f, h*f, w*f) float: a patch mask at voxel resolution, for voxel losses."""
    return F.interpolate(mask[:, None].float(), scale_factor=factor, mode="nearest")


def downsample_mask(mask: Tensor, factor: int) -> Tensor:
    """(B, d, h, w) bool -> (B, d/f, h/f, w/f) float: fraction of hidden patches under each coarser token."""
    return F.avg_pool3d(mask[:, None].float(), kernel_size=factor)[:, 0]
