"""Pieces of SwinUNETR's masked-volume inpainting (Tang et al., CVPR 2022, https://arxiv.org/abs/2111.14791).

* ``cutout``: random boxes of a volume replaced by noise, then boxes copied from another sample of the batch, as in
  the authors' pretraining code (``patch_rand_drop`` / ``aug_rand``): a random fraction in [0, max_drop) of the
  voxels is covered by boxes of 5% to 25% of each axis.
* ``InpaintingDecoder``: the authors' default ("vae") upsampling decoder from the last Swin stage back to voxels.
The L1 over the cut-out voxels is ``nnssl.losses.reconstruction.masked_l1``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in [low, high) (high > low)."""
    return int(torch.randint(low, high, (1,), generator=generator))


def _boxes(shape: tuple[int, int, int], max_drop: float, max_block: float, min_block: float,
           generator: torch.Generator | None) -> list[tuple[slice, slice, slice]]:
    """Random boxes (at least one) whose summed volume first reaches a random fraction in [0, max_drop) of the
    volume (overlaps counted twice, as in the authors' code)."""
    volume = shape[0] * shape[1] * shape[2]
    budget = float(torch.rand(1, generator=generator)) * max_drop * volume
    lo = [max(int(min_block * s), 1) for s in shape]
    hi = [max(int(max_block * s), l + 1) for s, l in zip(shape, lo)]
    boxes, covered = [], 0
    while covered < budget or not boxes:
        box = []
        for s, l, h in zip(shape, lo, hi):
            start = _randint(0, max(s - l, 1), generator)
            stop = min(start + _randint(l, h, generator), s)
            box.append(slice(start, stop))
        boxes.append(tuple(box))
        covered += (box[0].stop - box[0].start) * (box[1].stop - box[1].start) * (box[2].stop - box[2].start)
    return boxes


def cutout(x: Tensor, generator: torch.Generator | None = None, max_drop: float = 0.3, max_block: float = 0.25,
           min_block: float = 0.05) -> tuple[Tensor, Tensor]:
    """Cut random boxes out of each sample of x (B, C, D, H, W).

    Returns (x_cut (B, C, D, H, W), mask (B, 1, D, H, W) bool, True on replaced voxels). First pass: boxes filled
    with Gaussian noise min-max rescaled to the sample's intensity range (the authors rescale to [0, 1], their data
    range; nnU-Net-normalised data has its own range). Second pass (when another sample is drawn): boxes copied from
    that other sample, so the network cannot spot cut-outs by their noise statistics alone.
    """
    if x.ndim != 5:
        raise ValueError(f"cutout expects (B, C, D, H, W), got {tuple(x.shape)}")
    if not 0.0 < max_drop < 1.0 or not 0.0 < min_block <= max_block <= 1.0:
        raise ValueError(f"need 0 < max_drop < 1 and 0 < min_block <= max_block <= 1, got "
                         f"max_drop={max_drop}, min_block={min_block}, max_block={max_block}")
    b = x.shape[0]
    spatial = tuple(int(s) for s in x.shape[2:])
    out = x.clone()
    mask = torch.zeros((b, 1, *spatial), dtype=torch.bool)
    for i in range(b):
        lo, hi = float(x[i].min()), float(x[i].max())
        for box in _boxes(spatial, max_drop, max_block, min_block, generator):
            noise = torch.randn((x.shape[1], *(s.stop - s.start for s in box)), generator=generator)
            noise = (noise - noise.min()) / (noise.max() - noise.min()).clamp_min(1e-12)
            out[(i, slice(None), *box)] = (lo + (hi - lo) * noise).to(out.dtype)
            mask[(i, slice(None), *box)] = True
        other = _randint(0, b, generator)
        if other != i:
            for box in _boxes(spatial, max_drop, max_block, min_block, generator):
                out[(i, slice(None), *box)] = x[(other, slice(None), *box)]
                mask[(i, slice(None), *box)] = True
    return out, mask


class InpaintingDecoder(nn.Module):
    """Tang et al.'s default ("vae") reconstruction decoder: 5 x [conv3 -> InstanceNorm -> LeakyReLU -> 2x upsample]
    with channels dim/2, dim/4, dim/8, dim/16, dim/16, then a 1x1 conv to the image channels.

    (B, dim, D/32, H/32, W/32) -> (B, out_channels, D, H, W).
    """

    def __init__(self, dim: int, out_channels: int) -> None:
        super().__init__()
        if dim % 16 != 0:
            raise ValueError(f"decoder input channels {dim} must be divisible by 16 (the last Swin stage is 16F)")
        widths = [dim, dim // 2, dim // 4, dim // 8, dim // 16, dim // 16]
        blocks: list[nn.Module] = []
        for cin, cout in zip(widths[:-1], widths[1:]):
            blocks += [nn.Conv3d(cin, cout, kernel_size=3, padding=1), nn.InstanceNorm3d(cout), nn.LeakyReLU(),
                       nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False)]
        blocks.append(nn.Conv3d(widths[-1], out_channels, kernel_size=1))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

