"""Painter's-algorithm rasterisation of a subject's layers onto a grid, with partial-volume edges.

Each layer's signed distance d (mm) becomes a tissue fraction alpha = clip(0.5 - d / w, 0, 1), w = the mean voxel
size: a voxel straddling a boundary gets the mixture of both tissues, which is what a CT or MR voxel measures
(partial-volume effect). The structure map takes the layer's id where alpha > 0.5. Layers are evaluated only
inside their bounding boxes, so small organs cost little even on clinical-size grids.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from nnssl.data.phantoms.anatomy import Ctx, Subject
from nnssl.data.phantoms.fields import Grid, SmoothField


def warped_coordinates(subject: Subject, grid: Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full (D, H, W) float32 subject coordinates after the subject's smooth random displacement."""
    z, y, x = grid.axes()
    zb, yb, xb = z[:, None, None], y[None, :, None], x[None, None, :]
    shape = grid.shape
    out = []
    for base, f in zip((zb, yb, xb), subject.warp):
        arr = f(zb, yb, xb)
        arr = np.broadcast_to(arr, shape).astype(np.float32, copy=True) if arr.shape != shape else arr
        arr += base
        out.append(arr)
    return tuple(out)  # type: ignore[return-value]


def texture_field(subject: Subject, grid: Grid, salt: int = 0) -> np.ndarray:
    """Zero-mean, unit-std tissue texture (D, H, W): white noise smoothed at ~2.5 mm (physical units, so the grain
    does not depend on the spacing) plus a smooth ~15-40 mm component (lobular inhomogeneity)."""
    rng = np.random.default_rng(np.random.SeedSequence([*subject.seed, 7919, salt]))
    white = rng.standard_normal(grid.shape, dtype=np.float32)
    fine = ndimage.gaussian_filter(white, [2.5 / s for s in grid.spacing], mode="reflect", truncate=3.0)
    fine /= fine.std() + 1e-8
    coarse = SmoothField.random(rng, 0.7, (15.0, 40.0), n=12)
    z, y, x = grid.axes()
    fine += coarse(z[:, None, None], y[None, :, None], x[None, None, :])
    fine /= fine.std() + 1e-8
    return fine


def rasterize(subject: Subject, grid: Grid, values: dict[str, tuple[float, float]], background: float,
              texture: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Paint the layers: values[tissue] = (mean, texture std). Returns (image float32 (D,H,W), structures uint8)."""
    coords = warped_coordinates(subject, grid)
    img = np.full(grid.shape, background, np.float32)
    smap = np.zeros(grid.shape, np.uint8)
    z, y, x = grid.axes()
    ctx = Ctx(subject, *coords, axes=(z[:, None, None], y[None, :, None], x[None, None, :]))
    w = float(np.mean(grid.spacing))
    margin = subject.warp_bound() + w
    for layer in subject.layers:
        if layer.box is None:
            sl = (slice(None),) * 3
        else:
            sl = tuple(grid.index_slice(ax, lo - margin, hi + margin) for ax, (lo, hi) in enumerate(layer.box))
            if any(s.stop <= s.start for s in sl):
                continue
        ctx.sl = sl
        sd = layer.sd(ctx)
        alpha = np.clip(np.float32(0.5) - sd / np.float32(w), 0, 1)
        if layer.inside is not None:
            alpha *= np.isin(smap[sl], layer.inside)
        if not alpha.any():
            continue
        mean, tex_std = values[layer.tissue]
        value = np.float32(mean) if texture is None or tex_std == 0 else mean + np.float32(tex_std) * texture[sl]
        sub = img[sl]
        sub += alpha * (value - sub)
        if layer.struct is not None:
            smap[sl][alpha > 0.5] = layer.struct
    return img, smap
