"""Masked voxel reconstruction losses (SimMIM, Xie et al. CVPR 2022; SMIT, Jiang et al. MICCAI 2022).

Only hidden voxels count: the loss is the mean absolute (L1) or squared (L2) error over the voxels under the mask,
averaged over channels, exactly as SimMIM's ``(loss * mask).sum() / mask.sum() / in_chans``.
"""
from __future__ import annotations

from typing import Literal

from torch import Tensor


def _check(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
    if pred.ndim != 5:
        raise ValueError(f"expected (B, C, D, H, W) volumes, got shape {tuple(pred.shape)}")
    if mask.ndim == 4:
        mask = mask[:, None]
    expected = (pred.shape[0], 1, *pred.shape[2:])
    if tuple(mask.shape) != expected and tuple(mask.shape) != tuple(pred.shape):
        raise ValueError(
            f"voxel mask of shape {tuple(mask.shape)} does not fit the prediction {tuple(pred.shape)}: give it as "
            f"(B, D, H, W) or (B, 1, D, H, W) at voxel resolution (nnssl.masking.upsample_mask turns a patch mask "
            f"into one)"
        )
    mask = mask.to(pred.dtype)
    # (On the meta device, used to count FLOPs, values are unknown and cannot be checked.)
    if not mask.is_meta and not bool((mask > 0).any()):
        raise ValueError(
            "the reconstruction mask hides no voxel, so a masked loss is undefined: use a mask ratio > 0 and a crop "
            "holding at least two mask cubes"
        )
    return mask


def masked_reconstruction_loss(pred: Tensor, target: Tensor, mask: Tensor,
                               kind: Literal["l1", "l2"] = "l1") -> Tensor:
    """Mean L1 or L2 error over masked voxels.

    pred, target: (B, C, D, H, W); mask: (B, D, H, W) or (B, 1, D, H, W), bool or {0, 1} float (True = hidden).
    Returns a scalar: sum_{b,c,v} m_{b,v} * err_{b,c,v} / (C * sum_{b,v} m_{b,v}). Unmasked voxels do not
    influence the value or the gradient.
    """
    if kind not in ("l1", "l2"):
        raise ValueError(f"reconstruction loss must be 'l1' or 'l2', got {kind!r}")
    mask = _check(pred, target, mask)
    diff = pred - target
    err = diff.abs() if kind == "l1" else diff.square()
    weighted = err * mask  # broadcast the one-channel mask over the image channels
    denom = mask.expand_as(err).sum()
    return weighted.sum() / denom


def masked_l1(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean absolute error over masked voxels (SimMIM, SMIT). Shapes as in ``masked_reconstruction_loss``."""
    return masked_reconstruction_loss(pred, target, mask, "l1")


def masked_l2(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error over masked voxels. Shapes as in ``masked_reconstruction_loss``."""
    return masked_reconstruction_loss(pred, target, mask, "l2")


__all__ = ["masked_l1", "masked_l2", "masked_reconstruction_loss"]
