"""Geometric primitives as approximate signed-distance functions (mm, negative inside) of (z, y, x) coordinates."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from nnssl.data.phantoms.fields import SmoothField
from nnssl.data.phantoms.subject import Box, Ctx, SdFn


def rotation(rng: np.random.Generator, base: tuple[float, float, float], jitter_deg: float) -> np.ndarray:
    """Rotation matrix (z, y, x frame) from angles about z, y, x axes in degrees plus jitter."""
    az, ay, ax = (math.radians(b + rng.uniform(-jitter_deg, jitter_deg)) for b in base)
    cz, sz_, cy, sy, cx, sx = math.cos(az), math.sin(az), math.cos(ay), math.sin(ay), math.cos(ax), math.sin(ax)
    # rotation about z acts in the (y, x) plane, etc.; coordinates ordered (z, y, x)
    rz = np.array([[1, 0, 0], [0, cz, -sz_], [0, sz_, cz]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[cx, -sx, 0], [sx, cx, 0], [0, 0, 1]])
    return rz @ ry @ rx


def ellipsoid(c: np.ndarray, axes: np.ndarray, rot: np.ndarray | None = None) -> Callable:
    """Approximate signed distance to an ellipsoid: (r - 1) * |d| / r with r the normalised radius."""
    rot = np.eye(3) if rot is None else rot
    c = np.asarray(c, dtype=np.float32)
    axes = np.asarray(axes, dtype=np.float32)

    def f(z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        d = (z - c[0], y - c[1], x - c[2])
        r2 = None
        dist2 = None
        for i in range(3):
            qi = d[0] * np.float32(rot[0, i]) + d[1] * np.float32(rot[1, i]) + d[2] * np.float32(rot[2, i])
            q2 = qi * qi
            dist2 = q2 if dist2 is None else dist2 + q2
            term = q2 / np.float32(axes[i] ** 2)
            r2 = term if r2 is None else r2 + term
        r = np.sqrt(r2)
        return (r - 1) * np.sqrt(dist2) / np.maximum(r, 1e-3)

    return f


def capsule_chain(points: np.ndarray, radii: np.ndarray) -> Callable:
    """Signed distance to a chain of capsules through `points` (N, 3) with radii varying linearly (N,)."""
    pts = np.asarray(points, dtype=np.float32)
    rad = np.asarray(radii, dtype=np.float32)

    def f(z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        best = None
        for i in range(len(pts) - 1):
            a, b = pts[i], pts[i + 1]
            ab = b - a
            L2 = float(ab @ ab)
            t = ((z - a[0]) * ab[0] + (y - a[1]) * ab[1] + (x - a[2]) * ab[2]) / np.float32(L2)
            t = np.clip(t, 0, 1)
            dz, dy, dx = z - (a[0] + t * ab[0]), y - (a[1] + t * ab[1]), x - (a[2] + t * ab[2])
            sd = np.sqrt(dz * dz + dy * dy + dx * dx) - (rad[i] + t * (rad[i + 1] - rad[i]))
            best = sd if best is None else np.minimum(best, sd)
        return best

    return f


def box_of(c, r: float) -> Box:
    """Bounding box (mm) of the ball of radius ``r`` around centre ``c`` (z, y, x)."""
    return tuple((float(ci) - r, float(ci) + r) for ci in c)  # type: ignore[return-value]


def box_of_points(points: np.ndarray, r: float) -> Box:
    """Bounding box (mm) of ``points`` (N, 3) in (z, y, x), widened by ``r`` on every side."""
    lo, hi = points.min(axis=0) - r, points.max(axis=0) + r
    return tuple((float(a), float(b)) for a, b in zip(lo, hi))  # type: ignore[return-value]


def periodic_band(z: np.ndarray, phase: float, pitch: float, width: float) -> np.ndarray:
    """Distance to slabs of thickness `width` repeating every `pitch` mm along the given coordinate."""
    # offset from the nearest slab centre, wrapped to [-pitch/2, pitch/2)
    d = np.mod(z - np.float32(phase + width / 2 - pitch / 2), np.float32(pitch)) - np.float32(pitch / 2)
    return np.abs(d) - np.float32(width / 2)


def tubes(g1: SmoothField, g2: SmoothField, radius_units: float, mm_per_unit: float) -> SdFn:
    """Curvilinear tube network: where two smooth fields are both near zero (intersection of two level sets)."""

    def f(c: Ctx) -> np.ndarray:
        return (np.sqrt(g1(*c.u) ** 2 + g2(*c.u) ** 2) - np.float32(radius_units)) * np.float32(mm_per_unit)

    return f


def wrap(fn: Callable) -> SdFn:
    """A shape of (z, y, x) as a layer distance function of the evaluation context (warped coordinates)."""
    return lambda c: fn(c.z, c.y, c.x)
