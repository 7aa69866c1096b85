"""The 10 (Taleb et al.) and 4 (Tang et al.) right-angle 3D rotations: true rotations, labels, balance."""
from __future__ import annotations

from collections import Counter

import pytest
import torch

from nnssl.rotations import ROTATIONS_4, ROTATIONS_10, balanced_labels, label_of, rotate_batch


def _volume(n: int = 5, seed: int = 0) -> torch.Tensor:
    """A (1, n, n, n) volume with distinct values, so no non-trivial rotation leaves it unchanged."""
    return torch.randperm(n**3, generator=torch.Generator().manual_seed(seed)).float().view(1, n, n, n)


def _linear_map(rotation) -> torch.Tensor:
    """The 3x3 matrix A with source = A @ destination (centred voxel coordinates), read off a coordinate volume."""
    n = 5
    c = (torch.arange(n, dtype=torch.float64) - (n - 1) / 2)
    coords = torch.stack(torch.meshgrid(c, c, c, indexing="ij"))  # (3, n, n, n): channel a = coordinate a
    out = rotation.apply(coords)  # voxel p of out holds the coordinates of the voxel it came from
    dst = coords.reshape(3, -1).t()
    src = out.reshape(3, -1).t()
    a = torch.linalg.lstsq(dst, src).solution.t()
    torch.testing.assert_close(dst @ a.t(), src)  # exactly linear: a rigid map of the grid
    return a


def test_table_has_ten_distinct_labelled_transforms():
    assert [r.label for r in ROTATIONS_10] == list(range(10))
    x = _volume()
    outs = [r.apply(x) for r in ROTATIONS_10]
    for i in range(10):
        for j in range(i + 1, 10):
            assert not torch.equal(outs[i], outs[j]), f"{ROTATIONS_10[i]} and {ROTATIONS_10[j]} coincide"


@pytest.mark.parametrize("rotation", ROTATIONS_10, ids=str)
def test_each_transform_is_a_proper_rotation_about_its_axis(rotation):
    a = _linear_map(rotation)
    eye = torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(a @ a.t(), eye)  # orthogonal
    assert torch.linalg.det(a).item() == pytest.approx(1.0)  # a rotation, not a reflection
    torch.testing.assert_close(a, a.round())  # right angles only
    if rotation.axis is None:
        torch.testing.assert_close(a, eye)
    else:
        e = eye[rotation.axis]
        torch.testing.assert_close(a @ e, e)  # the axis is fixed
        # trace = 1 + 2 cos(theta): -1 for 180 degrees, 1 for 90 and 270
        assert torch.trace(a).item() == pytest.approx(1.0 + 2.0 * [1, 0, -1, 0][rotation.k])


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_quarter_turn_group_relations(axis):
    x = _volume(seed=axis)
    r90, r180, r270 = (ROTATIONS_10[label_of(ROTATIONS_10, axis, k)] for k in (1, 2, 3))
    y = x
    for _ in range(4):
        y = r90.apply(y)
    assert torch.equal(y, x)  # 90 four times = identity
    assert torch.equal(r180.apply(r180.apply(x)), x)  # 180 twice = identity
    assert torch.equal(r270.apply(r90.apply(x)), x)  # 270 = inverse of 90
    assert torch.equal(r270.apply(x), r90.invert(x))
    assert torch.equal(r90.apply(r90.apply(x)), r180.apply(x))
    assert not torch.equal(r90.apply(x), x)


def test_values_are_permuted_not_interpolated():
    x = _volume()
    for r in ROTATIONS_10:
        assert torch.equal(r.apply(x).flatten().sort().values, x.flatten().sort().values)


def test_labels_match_the_applied_transform():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 1, 4, 4, 4, generator=g)
    labels = balanced_labels(12, 10, g)
    rotated = rotate_batch(x, labels, ROTATIONS_10)
    for i, lab in enumerate(labels.tolist()):
        assert torch.equal(rotated[i], ROTATIONS_10[lab].apply(x[i]))
        assert torch.equal(ROTATIONS_10[lab].invert(rotated[i]), x[i])
    for r in ROTATIONS_10:
        assert label_of(ROTATIONS_10, r.axis, r.k) == r.label


def _lps_to_ras(a: torch.Tensor) -> torch.Tensor:
    """nnU-Net's array (Z, Y, X) of an image with identity direction in ITK's LPS frame -> MONAI's RAS array (X, Y, Z):
    X and Y reversed (L -> R, P -> A), Z kept (S)."""
    return a.permute(2, 1, 0).flip(0, 1)


def _ras_to_lps(r: torch.Tensor) -> torch.Tensor:
    return r.flip(0, 1).permute(2, 1, 0)


def test_swinunetr_rotations_turn_the_anatomy_as_tangs_code():
    """Tang et al. rotate each RAS sample (C, X, Y, Z) with x.rot90(k, (2, 3)) (SwinUNETR/Pretrain utils/ops.py:57-61):
    the same anatomy, read from nnU-Net's (C, Z, Y, X) LPS array, must turn identically for every k."""
    g = torch.Generator().manual_seed(0)
    volume = torch.randn(6, 6, 6, generator=g)  # nnU-Net layout (Z, Y, X), distinct values: any mix-up shows
    assert [r.label for r in ROTATIONS_4] == [0, 1, 2, 3]
    for r in ROTATIONS_4:
        tang = torch.rot90(_lps_to_ras(volume)[None], r.k, (2, 3))[0]  # Tang's call on (C, X, Y, Z)
        ours = r.apply(volume[None])[0]
        assert torch.equal(ours, _ras_to_lps(tang)), f"k={r.k}"
        assert torch.equal(ours, torch.rot90(volume, r.k, (0, 1)))  # about W, in the (D, H) plane
    assert all(r.axis in (None, 2) for r in ROTATIONS_4)
    # the axial turn (about D) the recipe used to apply differs
    assert not torch.equal(torch.rot90(volume, 1, (1, 2)), ROTATIONS_4[1].apply(volume[None])[0])


@pytest.mark.parametrize("batch, classes", [(2, 10), (10, 10), (20, 10), (23, 10), (7, 4)])
def test_balanced_labels(batch, classes):
    labels = balanced_labels(batch, classes, torch.Generator().manual_seed(batch))
    assert labels.shape == (batch,) and labels.dtype == torch.long
    assert 0 <= labels.min() and labels.max() < classes
    counts = Counter(labels.tolist())
    full = [counts.get(c, 0) for c in range(classes)]
    assert max(full) - min(full) <= 1
    assert sum(full) == batch


def test_balanced_labels_vary_with_the_generator():
    draws = {tuple(balanced_labels(10, 10, torch.Generator().manual_seed(s)).tolist()) for s in range(5)}
    assert len(draws) > 1


def test_bad_inputs():
    with pytest.raises(ValueError, match="cubic"):
        ROTATIONS_10[1].apply(torch.zeros(1, 4, 4, 6))
    with pytest.raises(ValueError, match="one label per sample"):
        rotate_batch(torch.zeros(2, 1, 4, 4, 4), torch.zeros(3, dtype=torch.long), ROTATIONS_10)
    with pytest.raises(ValueError, match="labels must lie"):
        rotate_batch(torch.zeros(1, 1, 4, 4, 4), torch.tensor([4]), ROTATIONS_4)
    with pytest.raises(ValueError, match="not one of"):
        label_of(ROTATIONS_4, 1, 1)
