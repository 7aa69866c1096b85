"""Building blocks for the views a task makes from a batch of crops (B, C, D, H, W), written once.

All randomness comes from the ``torch.Generator`` the loop hands to ``make_views``, so views are reproducible and a
resumed run continues the same random stream. Spatial axes are nnU-Net's (D, H, W) = (z, y, x) of the preprocessed
array; for images whose direction is the identity in ITK's LPS convention (axial CT as commonly stored, the phantoms)
W runs right-to-left, H anterior-to-posterior and D inferior-to-superior.

* geometry: ``random_subcrop`` (a random sub-volume resized to a size: DINO/SimCLR/MoCo's RandomResizedCrop, with
  the 2D area fractions read as volume fractions), ``native_subcrop`` (a sub-volume at native resolution: SMIT's
  views), ``random_flip``;
* photometry: ``Photometric`` (the 3D analogue of the colour distortions of SimCLR / BYOL / MoCo v3 / DINO: contrast,
  brightness and gamma jitter, Gaussian blur, solarisation, noise);
* compositions: ``two_views`` (SimCLR, MoCo v3), ``multi_crop`` (DINO, iBOT);
* ``cutout``: SwinUNETR's masked-volume inpainting input (Tang et al. 2022).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
import torch.nn.functional as F

from nnssl.encoders.swin import SWIN_DIVISOR


def _uniform(generator: torch.Generator | None, n: int, low: float, high: float) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in [low, high) (high > low)."""
    return int(torch.randint(low, high, (1,), generator=generator))


# ----------------------------------------------------------------------------------------------------------------
# geometry
# ----------------------------------------------------------------------------------------------------------------

def random_subcrop(x: Tensor, out_size: tuple[int, ...], scale: tuple[float, float],
                   generator: torch.Generator | None = None) -> Tensor:
    """Crop a random sub-volume holding a ``scale`` fraction of the voxels, resized to ``out_size``.

    (B, C, D, H, W) -> (B, C, *out_size). The crop keeps the input's aspect ratio; each sample gets its own crop
    (the multi-crop of DINO, the two views of SimCLR and MoCo v3).
    """
    if not 0.0 < scale[0] <= scale[1] <= 1.0:
        raise ValueError(f"scale range must satisfy 0 < low <= high <= 1, got {scale}")
    b = x.shape[0]
    spatial = torch.tensor(x.shape[2:], dtype=torch.float64)
    fractions = _uniform(generator, b, *scale) ** (1.0 / 3.0)
    out = []
    for i in range(b):
        size = torch.clamp((spatial * fractions[i]).round().long(), min=1)
        start = [_randint(0, int(s - c) + 1, generator) for s, c in zip(spatial.long(), size)]
        crop = x[i: i + 1, :, start[0]: start[0] + size[0], start[1]: start[1] + size[1], start[2]: start[2] + size[2]]
        if tuple(crop.shape[2:]) != tuple(out_size):
            crop = F.interpolate(crop, size=tuple(out_size), mode="trilinear", align_corners=False)
        out.append(crop)
    return torch.cat(out)


def native_subcrop(x: Tensor, size: tuple[int, ...], generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """A random ``size`` sub-volume of each sample at native resolution (no interpolation): SMIT's two 96^3 views of a
    128^3 region (The-Veeraraghavan-Lab/SMIT train_self_supervised.py:234-236).

    (B, C, D, H, W) -> (views (B, C, *size), starts (B, 3) long: the corner of each view in the region).
    """
    region = tuple(int(s) for s in x.shape[2:])
    if any(v > r for v, r in zip(size, region)):
        raise ValueError(f"view size {tuple(size)} exceeds the crop {region}: the crop is the region the views are "
                         "cut from, so it must be at least as large")
    starts = torch.tensor([[_randint(0, r - v + 1, generator) for r, v in zip(region, size)]
                           for _ in range(x.shape[0])], dtype=torch.long)
    views = torch.stack([x[i, :, s[0]: s[0] + size[0], s[1]: s[1] + size[1], s[2]: s[2] + size[2]]
                         for i, s in enumerate(starts.tolist())])
    return views, starts


def random_flip(x: Tensor, generator: torch.Generator | None = None, p: float = 0.5,
                axes: tuple[int, ...] = (0, 1, 2)) -> Tensor:
    """Flip each sample independently along each of the spatial ``axes`` (0 = D, 1 = H, 2 = W) with probability p."""
    out = x.clone()
    flips = torch.rand(x.shape[0], len(axes), generator=generator) < p
    for i in range(x.shape[0]):
        dims = [x.ndim - 3 + a for a, f in zip(axes, flips[i]) if f]
        if dims:
            out[i: i + 1] = torch.flip(x[i: i + 1], dims)
    return out


def local_crop_size(crop: tuple[int, ...], fraction: float) -> tuple[int, ...]:
    """Per axis: fraction * size rounded down to a multiple of 32, at least 32 (Swin's input divisor)."""
    return tuple(max(SWIN_DIVISOR, int(s * fraction) // SWIN_DIVISOR * SWIN_DIVISOR) for s in crop)


# ----------------------------------------------------------------------------------------------------------------
# photometry
# ----------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Photometric:
    """Per-sample intensity augmentation of nnU-Net-normalised volumes, the 3D analogue of a colour distortion.

    CT and MRI have one channel, so of torchvision's ColorJitter (brightness, contrast, saturation, hue) brightness and
    contrast carry over; the channel-mixing saturation and hue have no analogue and a gamma jitter stands in for them.
    With probability ``p_jitter``: brightness x + b * std(x), b ~ U(-brightness, brightness); contrast
    mean + c (x - mean), c ~ U(1 - contrast, 1 + contrast); gamma on the sample's min-max range u -> u^g,
    log g ~ U(-log(1 + gamma), log(1 + gamma)). Then with ``p_blur`` a Gaussian blur (sigma ~ U(blur_sigma) voxels,
    as the 2D recipes' sigma in [0.1, 2] px), with ``p_solarize`` the intensities above the middle of the sample's range
    are mirrored (PIL's solarize on the min-max range), and Gaussian noise of std ``noise_std`` is added.
    """

    p_jitter: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    gamma: float = 0.2
    p_blur: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    p_solarize: float = 0.0
    noise_std: float = 0.0

    def __post_init__(self) -> None:
        for name in ("p_jitter", "p_blur", "p_solarize"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must lie in [0, 1]")
        if not 0.0 <= self.contrast < 1.0 or self.brightness < 0 or self.gamma < 0 or self.noise_std < 0:
            raise ValueError("need 0 <= contrast < 1 and brightness, gamma, noise_std >= 0")
        lo, hi = self.blur_sigma
        if not 0.0 < lo <= hi:
            raise ValueError(f"blur_sigma={self.blur_sigma} must satisfy 0 < low <= high")

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(B, C, D, H, W) -> same shape; every draw comes from ``generator`` (the same number of draws whatever the
        probabilities, so a view's randomness does not depend on the recipe's other settings)."""
        b = x.shape[0]
        jitter = torch.rand(b, generator=generator) < self.p_jitter
        bright = _uniform(generator, b, -self.brightness, self.brightness)
        contrast = _uniform(generator, b, 1.0 - self.contrast, 1.0 + self.contrast)
        log_g = math.log1p(self.gamma)
        gamma = torch.exp(_uniform(generator, b, -log_g, log_g))
        blur = torch.rand(b, generator=generator) < self.p_blur
        sigmas = _uniform(generator, b, *self.blur_sigma)
        solar = torch.rand(b, generator=generator) < self.p_solarize
        noise = torch.randn(x.shape, generator=generator).to(x) if self.noise_std > 0 else None
        out = x.float().clone()
        for i in range(b):  # per sample: only the transforms drawn for it are computed
            v = out[i]
            if jitter[i]:
                mean, std = v.mean(), v.std().clamp_min(1e-6)
                v = mean + float(contrast[i]) * (v + float(bright[i]) * std - mean)
                if self.gamma > 0:
                    lo, hi = v.amin(), v.amax()
                    span = (hi - lo).clamp_min(1e-6)
                    v = lo + span * ((v - lo) / span).clamp(0.0, 1.0) ** float(gamma[i])
            if blur[i]:
                v = gaussian_blur(v, float(sigmas[i]))
            if solar[i]:
                lo, hi = v.amin(), v.amax()
                v = torch.where(v > (lo + hi) / 2, lo + hi - v, v)
            out[i] = v
        if noise is not None:
            out = out + self.noise_std * noise
        return out.to(x.dtype)


#: DINO / iBOT (facebookresearch/dino main_dino.py:421-456): BYOL's jitter on every crop, blur p 1.0 on global
#: crop 1, blur p 0.1 + solarisation p 0.2 on global crop 2, blur p 0.5 on the local crops.
DINO_GLOBAL_PHOTOMETRIC = (Photometric(p_blur=1.0), Photometric(p_blur=0.1, p_solarize=0.2))
DINO_LOCAL_PHOTOMETRIC = Photometric(p_blur=0.5)
#: MoCo v3 (facebookresearch/moco-v3 main_moco.py:263-282): BYOL's asymmetric pair, jitter (0.4, 0.4) p 0.8,
#: blur p 1.0 / 0.1, solarisation p 0 / 0.2; plus Gaussian noise (a 3D addition, as for SimCLR below).
MOCO_PHOTOMETRIC = (Photometric(p_blur=1.0, noise_std=0.05), Photometric(p_blur=0.1, p_solarize=0.2, noise_std=0.05))
#: SimCLR (google-research/simclr data_util.py, colour distortion strength 1.0: jitter 0.8 with p 0.8, blur p 0.5) on
#: both views; Gaussian noise is a 3D addition (CT and MRI have no colour to distort).
SIMCLR_PHOTOMETRIC = Photometric(p_jitter=0.8, brightness=0.8, contrast=0.8, gamma=0.8, p_blur=0.5, noise_std=0.05)


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of one volume (C, D, H, W) with ``sigma`` voxels (kernel radius 3 sigma, reflected
    borders)."""
    radius = max(1, int(math.ceil(3.0 * sigma)))
    radius = min(radius, (min(x.shape[1:]) - 1) // 2) or 1
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(x)
    out = x.float().unsqueeze(0)  # (1, C, D, H, W)
    channels = out.shape[1]
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = kernel.numel()
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)], pad[2 * (2 - axis) + 1] = radius, radius
        out = F.conv3d(F.pad(out, pad, mode="replicate"), kernel.view(shape).repeat(channels, 1, 1, 1, 1),
                       groups=channels)
    return out[0].to(x.dtype)


# ----------------------------------------------------------------------------------------------------------------
# compositions
# ----------------------------------------------------------------------------------------------------------------

def two_views(crops: Tensor, generator: torch.Generator, crop_scale: tuple[float, float],
              photometric: tuple[Photometric, Photometric]) -> dict[str, Tensor]:
    """SimCLR / MoCo v3 views: per crop two random resized sub-volumes, flipped, each with its own photometric
    recipe (the same one twice for SimCLR, BYOL's asymmetric pair for MoCo v3).

    crops (B, C, D, H, W) -> {"view1": (B, C, D, H, W), "view2": (B, C, D, H, W)}.
    """
    size = tuple(crops.shape[2:])
    return {f"view{v + 1}": photometric[v](random_flip(random_subcrop(crops, size, crop_scale, generator), generator),
                                           generator)
            for v in range(2)}


def multi_crop(crops: Tensor, generator: torch.Generator, global_scale: tuple[float, float],
               global_photometric: tuple[Photometric, Photometric], n_local: int, local_fraction: float,
               local_scale: tuple[float, float], local_photometric: Photometric) -> dict[str, Tensor]:
    """DINO / iBOT multi-crop: two global crops of the crop size and ``n_local`` local crops of ``local_fraction``
    of its edge (rounded down to a multiple of 32), each flipped and photometrically augmented (DINO's recipe:
    main_dino.py:421-456).

    crops (B, C, D, H, W) -> {"global": (2B, C, D, H, W), "local": (n_local * B, C, d, h, w)} (view-major; "local"
    absent when ``n_local`` is 0).
    """
    size = tuple(crops.shape[2:])
    views = {"global": torch.cat([
        global_photometric[v](random_flip(random_subcrop(crops, size, global_scale, generator), generator), generator)
        for v in range(2)])}
    if n_local:
        small = local_crop_size(size, local_fraction)
        views["local"] = torch.cat([
            local_photometric(random_flip(random_subcrop(crops, small, local_scale, generator), generator), generator)
            for _ in range(n_local)])
    return views


# ----------------------------------------------------------------------------------------------------------------
# SwinUNETR's cut-outs
# ----------------------------------------------------------------------------------------------------------------

def _boxes(shape: tuple[int, int, int], max_drop: float, max_block: float, min_block: float,
           generator: torch.Generator | None) -> list[tuple[slice, slice, slice]]:
    """Random boxes (at least one) whose summed volume first reaches a random fraction in [0, max_drop) of the
    volume (overlaps counted twice, as in the authors' code)."""
    volume = shape[0] * shape[1] * shape[2]
    budget = float(torch.rand(1, generator=generator)) * max_drop * volume
    lo = [max(int(min_block * s), 1) for s in shape]
    hi = [max(int(max_block * s), low + 1) for s, low in zip(shape, lo)]
    boxes, covered = [], 0
    while covered < budget or not boxes:
        box = []
        for s, low, high in zip(shape, lo, hi):
            start = _randint(0, max(s - low, 1), generator)
            stop = min(start + _randint(low, high, generator), s)
            box.append(slice(start, stop))
        boxes.append(tuple(box))
        covered += (box[0].stop - box[0].start) * (box[1].stop - box[1].start) * (box[2].stop - box[2].start)
    return boxes


def cutout(x: Tensor, generator: torch.Generator | None = None, max_drop: float = 0.3, max_block: float = 0.25,
           min_block: float = 0.05, groups: int = 1) -> tuple[Tensor, Tensor]:
    """SwinUNETR's cut-outs (research-contributions SwinUNETR/Pretrain utils/ops.py:17-75): random boxes of each sample
    of x (B, C, D, H, W) replaced by noise, then (when another sample is drawn) further boxes copied from a donor.

    The batch is ``groups`` equal blocks (the two views of the same crops: rows b and B/2 + b); a donor is drawn
    uniformly from the sample's own block, as Tang's ``aug_rand`` runs on each view's batch separately (main.py:44-45),
    so a donor is never the partner view of the same crop; drawing the sample itself skips the second pass
    (ops.py:72-74); donors are read from the batch as it is being cut, as Tang's in-place loop. Noise is min-max rescaled to the sample's intensity range (Tang rescales to [0, 1], his data
    range). Returns (x_cut (B, C, D, H, W), mask (B, 1, D, H, W) bool, True on replaced voxels).
    """
    if x.ndim != 5:
        raise ValueError(f"cutout expects (B, C, D, H, W), got {tuple(x.shape)}")
    if not 0.0 < max_drop < 1.0 or not 0.0 < min_block <= max_block <= 1.0:
        raise ValueError(f"need 0 < max_drop < 1 and 0 < min_block <= max_block <= 1, got "
                         f"max_drop={max_drop}, min_block={min_block}, max_block={max_block}")
    b = x.shape[0]
    if groups < 1 or b % groups:
        raise ValueError(f"a batch of {b} cannot be split into {groups} equal groups of views")
    per_group = b // groups
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
        other = (i // per_group) * per_group + _randint(0, per_group, generator)
        if other != i:
            # from the batch as it is being cut, as Tang's in-place loop (donors before i are already cut)
            for box in _boxes(spatial, max_drop, max_block, min_block, generator):
                out[(i, slice(None), *box)] = out[(other, slice(None), *box)]
                mask[(i, slice(None), *box)] = True
    return out, mask


__all__ = ["DINO_GLOBAL_PHOTOMETRIC", "DINO_LOCAL_PHOTOMETRIC", "MOCO_PHOTOMETRIC", "Photometric", "SIMCLR_PHOTOMETRIC",
           "cutout", "gaussian_blur", "local_crop_size", "multi_crop", "native_subcrop",
           "random_flip", "random_subcrop", "two_views"]
