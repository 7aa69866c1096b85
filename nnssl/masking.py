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
    ceil(ratio * n_cubes) cubes are hidden per sample, as SimMIM's and SMIT's MaskGenerator (at least one, and at
    least one kept visible).
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
    n_masked = min(max(math.ceil(ratio * n_cells - 1e-9), 1), n_cells - 1)
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


def expand_mask(mask: Tensor, factor: int) -> Tensor:
    """(B, d, h, w) bool -> (B, d*f, h*f, w*f) bool: a coarse token mask on a finer grid (token -> patch grid)."""
    if factor < 1:
        raise ValueError(f"expansion factor must be >= 1, got {factor}")
    return mask.repeat_interleave(factor, 1).repeat_interleave(factor, 2).repeat_interleave(factor, 3)


def _block_mask_one(grid: tuple[int, int, int], n_target: int, min_aspect: float, max_aspect: float,
                    min_block: int, generator: torch.Generator | None) -> Tensor:
    """One BEiT-style 3D block mask with up to ``n_target`` hidden tokens (see ``block_mask``)."""
    mask = torch.zeros(grid, dtype=torch.bool)
    log_lo, log_hi = math.log(min_aspect), math.log(max_aspect)
    count = 0

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=generator))

    while count < n_target:
        remaining = n_target - count
        added = 0
        for _attempt in range(10):
            volume = uniform(min(min_block, remaining), remaining)
            # Aspect ratios of the box: log-uniform per axis, normalised so that the box keeps its volume.
            logs = [uniform(log_lo, log_hi) for _ in range(3)]
            mean_log = sum(logs) / 3.0
            sides = [max(1, round(volume ** (1.0 / 3.0) * math.exp(lg - mean_log))) for lg in logs]
            if any(s > g for s, g in zip(sides, grid)):
                continue
            start = [int(torch.randint(0, g - s + 1, (1,), generator=generator)) for s, g in zip(sides, grid)]
            box = (slice(start[0], start[0] + sides[0]), slice(start[1], start[1] + sides[1]),
                   slice(start[2], start[2] + sides[2]))
            new = int((~mask[box]).sum())
            if 0 < new <= remaining:
                mask[box] = True
                added = new
                break
        if added == 0:
            break  # no box fits the remaining budget (BEiT stops here too)
        count += added
    return mask


def block_mask(batch: int, grid: tuple[int, int, int], ratio: float | Tensor, min_aspect: float = 0.3,
               max_aspect: float | None = None, min_block: int | None = None,
               generator: torch.Generator | None = None) -> Tensor:
    """3D block-wise masking of BEiT / iBOT (Bao et al. 2022; Zhou et al. 2022) on a token grid.

    Boxes with a random volume in [min_block, remaining budget] and log-uniform aspect ratios in
    [min_aspect, max_aspect] (default 1/min_aspect) are placed at random until round(ratio * N) tokens are hidden
    (boxes may overlap earlier ones; a box that would exceed the budget is redrawn, up to 10 times, after which the
    sample stops slightly below the target as in BEiT). ``min_block`` defaults to (min(grid) // 3)^3 as iBOT's
    (min(H, W) // 3)^2, at least 1. ``ratio`` is one float or a (B,) tensor of per-sample ratios.
    Returns (B, *grid) bool, True = hidden.
    """
    if min_aspect <= 0:
        raise ValueError(f"min_aspect must be > 0, got {min_aspect}")
    if max_aspect is None:
        max_aspect = 1.0 / min_aspect
    if not 0.0 < min_aspect <= max_aspect:
        raise ValueError(f"need 0 < min_aspect <= max_aspect, got {min_aspect}, {max_aspect}")
    if len(grid) != 3 or min(grid) < 1:
        raise ValueError(f"grid must be three positive sizes, got {grid}")
    n_tokens = math.prod(grid)
    ratios = torch.as_tensor(ratio, dtype=torch.float64).flatten()
    if ratios.numel() == 1:
        ratios = ratios.expand(batch)
    if ratios.numel() != batch:
        raise ValueError(f"got {ratios.numel()} mask ratios for a batch of {batch}")
    if bool(((ratios < 0) | (ratios >= 1)).any()):
        raise ValueError(f"mask ratios must lie in [0, 1), got {ratios.tolist()}")
    if min_block is None:
        min_block = max(1, (min(grid) // 3) ** 3)
    masks = [_block_mask_one(tuple(grid), int(round(float(r) * n_tokens)), min_aspect, max_aspect, min_block,
                             generator) for r in ratios]
    return torch.stack(masks) if masks else torch.zeros(0, *grid, dtype=torch.bool)
