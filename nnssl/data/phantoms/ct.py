"""CT rendering in Hounsfield units: per-tissue attenuation with contrast phase, texture, partial volume, and
spatially correlated quantum noise (white noise smoothed in-plane, like a reconstruction kernel's noise power
spectrum, with a larger level for larger patients)."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from nnssl.data.phantoms.anatomy import Subject
from nnssl.data.phantoms.fields import Grid
from nnssl.data.phantoms.render import rasterize, texture_field

HU_MIN, HU_MAX = -1024, 3071


def ct_values(subject: Subject, arterial: float | None = None, venous: float | None = None
              ) -> dict[str, tuple[float, float]]:
    """Tissue -> (HU, texture std HU) for the subject's contrast phase (or the given enhancement levels)."""
    a = subject.arterial if arterial is None else arterial
    v = subject.venous if venous is None else venous
    return {name: (t.ct(a, v), t.hu_tex) for name, t in subject.tissues.items()}


def render_ct(subject: Subject, grid: Grid | None = None, *, enhanced: bool = True, noise: bool = True
              ) -> tuple[np.ndarray, np.ndarray]:
    """Render a CT volume. Returns (HU int16 (D, H, W), structure map uint8 (D, H, W)).

    grid: defaults to 64^3 at 5 mm centred on the subject's field of view; enhanced=False renders the
    native (unenhanced) phase; noise=False leaves out quantum noise (useful for measuring tissue values).
    """
    grid = grid or Grid((64, 64, 64), (5.0, 5.0, 5.0), subject.fov_center)
    values = ct_values(subject, *(() if enhanced else (0.0, 0.0)))
    img, smap = rasterize(subject, grid, values, background=-1000.0, texture=texture_field(subject, grid))
    if noise:
        rng = np.random.default_rng(np.random.SeedSequence([*subject.seed, 104729]))
        n = rng.standard_normal(grid.shape, dtype=np.float32)
        sig = subject.ct_noise_blur
        n = ndimage.gaussian_filter(n, (0, sig, sig))
        n *= np.float32(subject.ct_noise_hu / (n.std() + 1e-8))
        img += n
    return np.clip(np.rint(img), HU_MIN, HU_MAX).astype(np.int16), smap
