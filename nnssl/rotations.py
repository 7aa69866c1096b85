"""Right-angle 3D rotations of volumes and their class labels (rotation-prediction pretext tasks).

Volumes are (..., D, H, W): the last three dimensions are spatial (axis 0 = D, 1 = H, 2 = W). A rotation about
spatial axis a turns the plane of the two other axes with ``torch.rot90`` (from the lower to the higher axis of
that plane), so every transform is an exact permutation of voxels, with an exact inverse.

* ``ROTATIONS_10``: Taleb et al., "3D self-supervised methods for medical imaging", NeurIPS 2020
  (https://arxiv.org/abs/2006.03829): identity plus 90, 180, 270 degrees about each of the three axes (10 classes).
  Label 0 = identity; labels 1 + 3a + (k - 1) = k quarter turns about axis a.
* ``ROTATIONS_4``: Tang et al., "Self-supervised pre-training of Swin transformers for 3D medical image analysis",
  CVPR 2022 (https://arxiv.org/abs/2111.14791): 0, 90, 180, 270 degrees in the sagittal plane, about the left-right
  axis. The authors rotate each sample (C, X, Y, Z) with ``x.rot90(k, (2, 3))`` (research-contributions
  SwinUNETR/Pretrain utils/ops.py:57-61) after ``Orientationd(axcodes="RAS")`` (utils/data_utils.py:76): dims (2, 3)
  are Y (posterior -> anterior) and Z (inferior -> superior). nnU-Net's array (C, Z, Y, X) of an image whose direction
  is the identity in ITK's LPS frame has D = Z (inferior -> superior), H = Y reversed (anterior -> posterior) and W = X
  reversed; conjugating Tang's turn by that reversal of Y gives ``rot90(k, (D, H))``: k quarter turns about W, the
  plane (D, H), the same rotation of the anatomy for every k (tests/test_rotations.py checks it against Tang's call
  on the RAS array).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Rotation:
    """``k`` quarter turns about spatial ``axis`` (None: identity), with its class ``label``."""

    label: int
    axis: int | None
    k: int

    @property
    def plane(self) -> tuple[int, int] | None:
        """The two spatial axes that turn (counted from the first of the last three dimensions)."""
        if self.axis is None:
            return None
        return tuple(a for a in range(3) if a != self.axis)  # type: ignore[return-value]

    def _dims(self, x: Tensor) -> tuple[int, int]:
        if x.ndim < 3:
            raise ValueError(f"a rotation needs a volume with 3 spatial dims (..., D, H, W), got {tuple(x.shape)}")
        p = self.plane
        assert p is not None
        dims = (x.ndim - 3 + p[0], x.ndim - 3 + p[1])
        if x.shape[dims[0]] != x.shape[dims[1]] and self.k % 2 == 1:
            raise ValueError(
                f"a 90/270-degree rotation about axis {self.axis} swaps two axes of sizes {x.shape[dims[0]]} and "
                f"{x.shape[dims[1]]}: rotation tasks need crops of equal size along the rotated axes (cubic crops)"
            )
        return dims

    def apply(self, x: Tensor) -> Tensor:
        """Rotate a volume (..., D, H, W)."""
        if self.axis is None or self.k % 4 == 0:
            return x
        return torch.rot90(x, self.k, self._dims(x))

    def invert(self, x: Tensor) -> Tensor:
        """Undo ``apply`` on a volume (..., D, H, W): rotate by the opposite angle."""
        if self.axis is None or self.k % 4 == 0:
            return x
        return torch.rot90(x, -self.k, self._dims(x))

    def __str__(self) -> str:
        return "identity" if self.axis is None else f"{90 * self.k} deg about axis {self.axis}"


def _table_10() -> tuple[Rotation, ...]:
    rots = [Rotation(0, None, 0)]
    for axis in range(3):
        for k in (1, 2, 3):
            rots.append(Rotation(1 + 3 * axis + (k - 1), axis, k))
    return tuple(rots)


ROTATIONS_10: tuple[Rotation, ...] = _table_10()
ROTATIONS_4: tuple[Rotation, ...] = (Rotation(0, None, 0),) + tuple(Rotation(k, 2, k) for k in (1, 2, 3))


def label_of(table: tuple[Rotation, ...], axis: int | None, k: int) -> int:
    """The label of ``k`` quarter turns about ``axis`` in ``table`` (ValueError if the table lacks it)."""
    k = k % 4
    for r in table:
        if (r.axis is None and (axis is None or k == 0)) or (r.axis == axis and r.k == k):
            return r.label
    raise ValueError(f"{90 * k} degrees about axis {axis} is not one of the table's {len(table)} rotations")


def rotate_batch(x: Tensor, labels: Tensor, table: tuple[Rotation, ...]) -> Tensor:
    """Rotate each sample of x (B, C, D, H, W) by the transform of its label (B,) in ``table``. Same shape out."""
    if x.ndim != 5:
        raise ValueError(f"expected (B, C, D, H, W), got {tuple(x.shape)}")
    if labels.shape != (x.shape[0],):
        raise ValueError(f"need one label per sample: labels {tuple(labels.shape)} for batch {x.shape[0]}")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(table)):
        raise ValueError(f"labels must lie in [0, {len(table)}), got {labels.tolist()}")
    return torch.stack([table[int(lab)].apply(x[i]) for i, lab in enumerate(labels)])


def balanced_labels(batch: int, n_classes: int, generator: torch.Generator | None = None) -> Tensor:
    """(batch,) long labels whose class counts differ by at most one, in random order.

    Every class appears floor(batch / n_classes) times and a random subset of classes once more, so a batch
    never over-represents a class (lower-variance gradients than i.i.d. labels, same expected loss).
    """
    if batch < 1 or n_classes < 1:
        raise ValueError(f"batch ({batch}) and n_classes ({n_classes}) must be >= 1")
    full, rest = divmod(batch, n_classes)
    extra = torch.randperm(n_classes, generator=generator)[:rest]
    labels = torch.cat([torch.arange(n_classes).repeat(full), extra])
    return labels[torch.randperm(batch, generator=generator)]
