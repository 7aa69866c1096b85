"""Mask generators: SimMIM/SMIT cube masks and iBOT block masks (fraction, shape, contiguity)."""
from __future__ import annotations

import math

import pytest
import torch
from scipy import ndimage

from nnssl.masking import block_mask, expand_mask, random_cube_mask


@pytest.mark.parametrize("grid,cube,ratio", [((16, 16, 16), 8, 0.7), ((48, 48, 48), 8, 0.7), ((16, 16, 16), 4, 0.6)])
def test_cube_mask_shape_fraction_and_cubes(grid, cube, ratio):
    g = torch.Generator().manual_seed(0)
    mask = random_cube_mask(3, grid, cube, ratio, g)
    assert mask.shape == (3, *grid) and mask.dtype == torch.bool
    n_cells = (grid[0] // cube) ** 3
    expected = math.ceil(ratio * n_cells) / n_cells  # SimMIM's and SMIT's MaskGenerator round up
    for sample in mask:
        assert sample.float().mean().item() == pytest.approx(expected)
        # every cube cell is entirely hidden or entirely visible
        cells = sample.view(grid[0] // cube, cube, grid[1] // cube, cube, grid[2] // cube, cube).float()
        per_cell = cells.mean(dim=(1, 3, 5))
        assert torch.all((per_cell == 0) | (per_cell == 1))


def test_cube_mask_rejects_single_cube():
    with pytest.raises(ValueError, match="single"):
        random_cube_mask(1, (8, 8, 8), 8, 0.5)


@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.5])
def test_block_mask_fraction_within_tolerance(ratio):
    g = torch.Generator().manual_seed(1)
    grid = (8, 8, 8)
    mask = block_mask(6, grid, ratio, generator=g)
    assert mask.shape == (6, *grid) and mask.dtype == torch.bool
    target = round(ratio * 512)
    for sample in mask:
        count = int(sample.sum())
        assert count <= target  # a box never overshoots the budget
        assert abs(count / 512 - ratio) <= 0.05


def test_block_mask_is_made_of_contiguous_blocks():
    g = torch.Generator().manual_seed(2)
    grid = (8, 8, 8)
    blocks = block_mask(6, grid, 0.3, generator=g)
    # random token masking with the same ratio, for contrast: the statistic below separates the two
    scattered = torch.rand(6, *grid, generator=g) < 0.3
    for b, s in zip(blocks, scattered):
        _, n_block_parts = ndimage.label(b.numpy())
        _, n_scattered_parts = ndimage.label(s.numpy())
        assert n_block_parts <= 6  # a few boxes, not scattered tokens
        assert n_scattered_parts > 3 * n_block_parts


def test_block_mask_single_box_is_a_cube():
    # budget = one 2x2x2 box, aspect fixed to 1 and min block 8: the mask must be exactly one cube
    g = torch.Generator().manual_seed(3)
    mask = block_mask(4, (6, 6, 6), 8 / 216, min_aspect=1.0, max_aspect=1.0, min_block=8, generator=g)
    for sample in mask:
        idx = sample.nonzero()
        assert idx.shape[0] == 8
        assert torch.all(idx.max(0).values - idx.min(0).values == 1)


def test_block_mask_per_sample_ratios_and_zero():
    mask = block_mask(2, (6, 6, 6), torch.tensor([0.0, 0.4]), generator=torch.Generator().manual_seed(4))
    assert int(mask[0].sum()) == 0
    assert abs(mask[1].float().mean().item() - 0.4) <= 0.05


@pytest.mark.parametrize("kwargs", [dict(ratio=1.0), dict(ratio=-0.1), dict(ratio=0.3, min_aspect=0.0),
                                    dict(ratio=torch.tensor([0.1, 0.2, 0.3]))])
def test_block_mask_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        block_mask(2, (4, 4, 4), **kwargs)


def test_expand_mask():
    m = torch.tensor([[[[True, False], [False, True]], [[False, False], [True, False]]]])
    e = expand_mask(m, 4)
    assert e.shape == (1, 8, 8, 8) and e.dtype == torch.bool
    assert torch.equal(e[:, ::4, ::4, ::4], m)
    assert e.float().mean().item() == pytest.approx(m.float().mean().item())
