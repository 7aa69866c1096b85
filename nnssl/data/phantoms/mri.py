"""MRI rendering of the same anatomy: T1-like or T2-like tissue signal (a different tissue ordering than CT),
thick slices (each slice averages sub-slices: through-plane partial volume), a smooth multiplicative bias field
(coil sensitivity), Rician noise (magnitude of complex Gaussian noise) and an arbitrary per-subject intensity scale.
"""
from __future__ import annotations

import numpy as np

from nnssl.data.phantoms.anatomy import Subject
from nnssl.data.phantoms.fields import Grid
from nnssl.data.phantoms.render import rasterize, texture_field

SEQUENCES = ("T1", "T2")


def mri_values(subject: Subject, sequence: str) -> dict[str, tuple[float, float]]:
    """Tissue -> (relative signal, texture std) for a T1-like or T2-like sequence."""
    if sequence not in SEQUENCES:
        raise ValueError(f"sequence must be one of {SEQUENCES}, got {sequence!r}")
    key = "t1" if sequence == "T1" else "t2"
    return {name: (getattr(t, key), getattr(t, key) * t.mr_tex) for name, t in subject.tissues.items()}


def render_mri(subject: Subject, grid: Grid | None = None, sequence: str = "T1", *, slice_supersample: int = 1,
               noise: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Render an MR volume. Returns (signal int16 >= 0 (D, H, W), structure map uint8 (D, H, W)).

    Each output slice is the mean of `slice_supersample` thin sub-slices spanning the slice thickness (= the z
    spacing); the structure map is taken at the slice centre. grid defaults to 48x64x64 at (6, 5, 5) mm.
    """
    grid = grid or Grid((48, 64, 64), (6.0, 5.0, 5.0), subject.fov_center)
    k = int(slice_supersample)
    if k < 1 or k % 2 == 0:
        raise ValueError(f"slice_supersample must be an odd integer >= 1, got {slice_supersample}")
    values = mri_values(subject, sequence)
    d, h, w = grid.shape
    sz, sy, sx = grid.spacing
    fine = Grid((d * k, h, w), (sz / k, sy, sx), grid.center) if k > 1 else grid
    img, smap = rasterize(subject, fine, values, background=0.0, texture=texture_field(subject, fine, salt=1))
    if k > 1:
        img = img.reshape(d, k, h, w).mean(axis=1)
        smap = np.ascontiguousarray(smap[k // 2::k])
    z, y, x = grid.axes()
    bias = np.exp(subject.bias(z[:, None, None], y[None, :, None], x[None, None, :])).astype(np.float32)
    img = np.maximum(img, 0) * bias * np.float32(subject.mri_scale)
    if noise:
        rng = np.random.default_rng(np.random.SeedSequence([*subject.seed, 15485863, k]))
        sigma = np.float32(subject.mri_noise * subject.mri_scale)
        re = img + sigma * rng.standard_normal(img.shape, dtype=np.float32)
        im = sigma * rng.standard_normal(img.shape, dtype=np.float32)
        img = np.sqrt(re * re + im * im)
    return np.clip(np.rint(img), 0, 32767).astype(np.int16), smap
