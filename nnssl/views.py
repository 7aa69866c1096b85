"""Building blocks for the views a task makes from a batch of crops (B, C, D, H, W).

All randomness comes from the ``torch.Generator`` the loop hands to ``make_views``, so views are reproducible and
a resumed run continues the same random stream.
"""
from __future__ import annotations

import torch
from torch import Tensor
import torch.nn.functional as F

from nnssl.encoders.swin import SWIN_DIVISOR


def _uniform(generator: torch.Generator | None, n: int, low: float, high: float) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def random_subcrop(x: Tensor, out_size: tuple[int, int, int], scale: tuple[float, float],
                   generator: torch.Generator | None = None) -> Tensor:
    """Crop a random sub-volume holding a ``scale`` fraction of the voxels, resized to ``out_size``.

    (B, C, D, H, W) -> (B, C, *out_size). The crop keeps the input's aspect ratio; each sample gets its own crop
    (the multi-crop of DINO, the two sub-volumes of SwinUNETR's contrastive task).
    """
    if not 0.0 < scale[0] <= scale[1] <= 1.0:
        raise ValueError(f"scale range must satisfy 0 < low <= high <= 1, got {scale}")
    b = x.shape[0]
    spatial = torch.tensor(x.shape[2:], dtype=torch.float64)
    fractions = _uniform(generator, b, *scale).double() ** (1.0 / 3.0)
    out = []
    for i in range(b):
        size = torch.clamp((spatial * fractions[i]).round().long(), min=1)
        start = [int(torch.randint(0, int(s - c) + 1, (1,), generator=generator)) for s, c in zip(spatial.long(), size)]
        crop = x[i: i + 1, :, start[0]: start[0] + size[0], start[1]: start[1] + size[1], start[2]: start[2] + size[2]]
        if tuple(crop.shape[2:]) != tuple(out_size):
            crop = F.interpolate(crop, size=out_size, mode="trilinear", align_corners=False)
        out.append(crop)
    return torch.cat(out)


def random_flip(x: Tensor, generator: torch.Generator | None = None, p: float = 0.5) -> Tensor:
    """Flip each sample independently along each spatial axis with probability ``p``."""
    out = x.clone()
    flips = torch.rand(x.shape[0], 3, generator=generator) < p
    for i in range(x.shape[0]):
        dims = [2 + a for a in range(3) if flips[i, a]]
        if dims:
            out[i: i + 1] = torch.flip(x[i: i + 1], dims)
    return out


def intensity_jitter(x: Tensor, generator: torch.Generator | None = None, scale: tuple[float, float] = (0.9, 1.1),
                     shift: tuple[float, float] = (-0.1, 0.1), noise_std: float = 0.0) -> Tensor:
    """Per-sample contrast scale and brightness shift (in units of the normalised intensity), plus optional noise."""
    b = x.shape[0]
    s = _uniform(generator, b, *scale).view(b, 1, 1, 1, 1).to(x)
    t = _uniform(generator, b, *shift).view(b, 1, 1, 1, 1).to(x)
    out = x * s + t
    if noise_std > 0:
        out = out + noise_std * torch.randn(x.shape, generator=generator).to(x)
    return out


def augment(x: Tensor, generator: torch.Generator | None = None, noise_std: float = 0.05) -> Tensor:
    """The default photometric + flip augmentation of the two-view methods (SimCLR, MoCo v3, DINO, SMIT)."""
    return intensity_jitter(random_flip(x, generator), generator, noise_std=noise_std)


def local_crop_size(crop: tuple[int, ...], fraction: float) -> tuple[int, ...]:
    """Per axis: fraction * size rounded down to a multiple of 32, at least 32 (Swin's input divisor)."""
    return tuple(max(SWIN_DIVISOR, int(s * fraction) // SWIN_DIVISOR * SWIN_DIVISOR) for s in crop)
