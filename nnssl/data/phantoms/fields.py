"""Smooth random fields and the voxel grid on which phantoms are rendered.

All anatomy is defined in a subject coordinate frame in millimetres, ordered (z, y, x) like the numpy arrays:
z points superior, y posterior, x to the patient's left (LPS, the frame SimpleITK writes with an identity
direction). A field or shape is a function of these coordinates, so the same subject can be rendered on any grid
(demo 64^3 at 4-5 mm or clinical 512x512x100 at 0.7 mm) and looks the same.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MIN_FOV_MM = 100.0  # smaller fields of view cannot hold a single abdominal organ with context
MAX_FOV_MM = 2000.0
MAX_SPACING_MM = 20.0
MAX_VOXELS = 512 * 512 * 1024


@dataclass(frozen=True)
class SmoothField:
    """A smooth random scalar field: a sum of K random plane waves (random Fourier features).

    f(p) = sum_k a_k cos(2 pi <w_k, p> + phi_k), p = (z, y, x) in mm. Evaluating a closed form instead of
    upsampling a noise grid makes the field resolution- and grid-independent, and lets shapes be evaluated
    only inside their bounding boxes.
    """

    freqs: np.ndarray  # (K, 3) cycles per mm, (z, y, x)
    phases: np.ndarray  # (K,)
    amps: np.ndarray  # (K,)

    @classmethod
    def random(cls, rng: np.random.Generator, std: float, wavelength: tuple[float, float], n: int = 8,
               anisotropy: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> "SmoothField":
        """A field with standard deviation `std` and wavelengths log-uniform in `wavelength` (mm)."""
        dirs = rng.normal(size=(n, 3)) * np.asarray(anisotropy)
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True) + 1e-12
        lam = np.exp(rng.uniform(math.log(wavelength[0]), math.log(wavelength[1]), size=n))
        amps = rng.normal(size=n)
        # std of sum a_k cos(...) with random phases is sqrt(sum a_k^2 / 2)
        amps *= std / max(math.sqrt(float(np.sum(amps ** 2)) / 2.0), 1e-12)
        return cls(freqs=(dirs / lam[:, None]).astype(np.float64), phases=rng.uniform(0, 2 * math.pi, size=n),
                   amps=amps)

    @property
    def bound(self) -> float:
        """Upper bound of |f| anywhere."""
        return float(np.sum(np.abs(self.amps)))

    def __call__(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Evaluate at coordinates (mm) that broadcast together; returns float32."""
        if z.ndim == 3 and z.shape[1:] == (1, 1) and y.shape[::2] == (1, 1) and x.shape[:2] == (1, 1):
            return self._separable(z.ravel(), y.ravel(), x.ravel())
        out = None
        for (fz, fy, fx), ph, a in zip(self.freqs * (2 * math.pi), self.phases, self.amps):
            arg = np.float32(fz) * z + np.float32(fy) * y + np.float32(fx) * x + np.float32(ph)
            term = np.cos(arg, out=arg) if arg.dtype == np.float32 else np.cos(arg).astype(np.float32)
            term *= np.float32(a)
            out = term if out is None else np.add(out, term, out=out)
        return out

    def _separable(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Fast path on a rectilinear grid: cos(a+b+c+phi) = Re(e^{i phi} e^{ia} e^{ib} e^{ic}), so the field is a
        rank-K tensor product evaluated with one complex matrix product."""
        w = self.freqs * (2 * math.pi)
        ez = np.exp(1j * np.outer(w[:, 0], z)) * (self.amps * np.exp(1j * self.phases))[:, None]  # (K, D)
        ey = np.exp(1j * np.outer(w[:, 1], y))  # (K, H)
        ex = np.exp(1j * np.outer(w[:, 2], x))  # (K, W)
        zy = (ez[:, :, None] * ey[:, None, :]).reshape(len(w), -1).T  # (D*H, K)
        # Re(zy @ ex) as one real matrix product (much faster than a complex one). float64: BLAS sums in an order
        # that depends on its thread count; in double precision that never changes the float32 result, so the
        # output bytes do not depend on the machine's thread settings.
        a = np.concatenate([zy.real, -zy.imag], axis=1)
        b = np.concatenate([ex.real, ex.imag], axis=0)
        return (a @ b).astype(np.float32).reshape(len(z), len(y), len(x))


def validate_size(size: tuple[int, int, int] | int) -> tuple[int, int, int]:
    """(D, H, W) voxels; an int means a cube. Raises ValueError naming the problem."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = (int(size),) * 3
    try:
        dims = tuple(size)
    except TypeError:
        raise ValueError(f"size must be an int or three ints (D, H, W), got {size!r}") from None
    if len(dims) != 3:
        raise ValueError(f"size must have three entries (D, H, W), got {len(dims)}: {size!r}")
    out = []
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or float(d) != int(d):
            raise ValueError(f"size entries must be integers, got {d!r} in {size!r}")
        if int(d) < 8:
            raise ValueError(f"size {tuple(dims)} is impossible: every axis needs at least 8 voxels")
        out.append(int(d))
    if math.prod(out) > MAX_VOXELS:
        raise ValueError(f"size {tuple(out)} has {math.prod(out):,} voxels, more than the supported "
                         f"{MAX_VOXELS:,} (512x512x1024); use fewer slices or coarser spacing")
    return tuple(out)  # type: ignore[return-value]


def validate_spacing(spacing: tuple[float, float, float]) -> tuple[float, float, float]:
    """(z, y, x) spacing in mm, each in (0, 20]."""
    try:
        vals = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise ValueError(f"spacing must be three numbers (z, y, x) in mm, got {spacing!r}") from None
    if len(vals) != 3:
        raise ValueError(f"spacing must have three entries (z, y, x) in mm, got {spacing!r}")
    for s in vals:
        if not math.isfinite(s) or s <= 0 or s > MAX_SPACING_MM:
            raise ValueError(f"spacing {vals} is impossible: every entry must be in (0, {MAX_SPACING_MM:g}] mm")
    return vals  # type: ignore[return-value]


@dataclass(frozen=True)
class Grid:
    """Voxel grid: shape (D, H, W), spacing (z, y, x) mm, and the subject-frame position of the volume centre."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    center: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        shape, spacing = validate_size(self.shape), validate_spacing(self.spacing)
        fov = [n * s for n, s in zip(shape, spacing)]
        for name, f in zip("zyx", fov):
            if f < MIN_FOV_MM or f > MAX_FOV_MM:
                raise ValueError(
                    f"field of view {f:.0f} mm along {name} (size x spacing = {tuple(shape)} x {tuple(spacing)}) "
                    f"is impossible for a torso phantom: it must be within [{MIN_FOV_MM:g}, {MAX_FOV_MM:g}] mm; "
                    f"change the size or the spacing")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "spacing", spacing)

    @property
    def origin(self) -> tuple[float, float, float]:
        """Subject-frame (z, y, x) position of voxel (0, 0, 0)'s centre."""
        return tuple(c - (n - 1) / 2 * s for c, n, s in zip(self.center, self.shape, self.spacing))  # type: ignore

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """1D float32 coordinates of voxel centres along z, y, x (mm)."""
        return tuple((o + np.arange(n) * s).astype(np.float32)  # type: ignore[return-value]
                     for o, n, s in zip(self.origin, self.shape, self.spacing))

    def index_slice(self, axis: int, lo: float, hi: float) -> slice:
        """Voxel index range whose centres lie in [lo, hi] mm along `axis` (may be empty)."""
        o, s, n = self.origin[axis], self.spacing[axis], self.shape[axis]
        a = max(0, int(math.floor((lo - o) / s)))
        b = min(n, int(math.ceil((hi - o) / s)) + 1)
        return slice(a, max(a, b))
