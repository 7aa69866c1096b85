"""Data model of a phantom subject: structure ids, painted layers, the evaluation context, and the subject record.

A subject is a list of painted layers (later layers cover earlier ones, like a painter's algorithm). Each layer has
a structure id (what the label maps are built from), a tissue (what CT/MRI rendering looks up) and a function that
returns an approximate signed distance in mm (negative inside) from (z, y, x) coordinates in the subject frame (see
`fields.py`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Callable

import numpy as np

from nnssl.data.phantoms.fields import SmoothField
from nnssl.data.phantoms.tissues import Tissue


class S(IntEnum):
    """Structure ids of the internal structure map (uint8). Task label maps are lookups of these."""

    BACKGROUND = 0
    TABLE = 1
    SUBCUT_FAT = 2
    MUSCLE = 3
    VISCERAL_FAT = 4
    BOWEL = 5
    LUNG_R = 6
    LUNG_L = 7
    MEDIASTINUM = 8
    HEART = 9
    RIB = 10
    VERTEBRA = 11
    DISC = 12
    CANAL = 13
    IVC = 14
    AORTA = 15
    LIVER = 16
    GALLBLADDER = 17
    SPLEEN = 18
    KIDNEY_R = 19
    KIDNEY_L = 20
    ADRENAL_R = 21
    ADRENAL_L = 22
    STOMACH = 23
    PANCREAS = 24
    LIVER_TUMOUR = 25
    KIDNEY_R_TUMOUR = 26
    KIDNEY_L_TUMOUR = 27
    LUNG_TUMOUR = 28


BODY_STRUCTS = tuple(s for s in S if s not in (S.BACKGROUND, S.TABLE))

Box = tuple[tuple[float, float], tuple[float, float], tuple[float, float]]


class Ctx:
    """Coordinates of the voxels a layer is evaluated on, plus cached full-grid body distances.

    `z, y, x` are the warped subject coordinates (mm) restricted to the current slice; `body` and `cavity` give
    the body-outline and body-cavity distances there, computed once per rendering on the full grid."""

    def __init__(self, subject: "Subject", zw: np.ndarray, yw: np.ndarray, xw: np.ndarray,
                 axes: tuple[np.ndarray, np.ndarray, np.ndarray]):
        self.subject, self._full = subject, (zw, yw, xw)
        self._axes = axes  # unwarped voxel coordinates, shapes (D,1,1), (1,H,1), (1,1,W)
        self._body: np.ndarray | None = None
        self._fat: np.ndarray | None = None
        self._cavity: np.ndarray | None = None
        self.sl: tuple[slice, slice, slice] = (slice(None),) * 3

    # Unwarped (scanner-frame) coordinates of the slice: smooth random perturbations are evaluated on these,
    # which keeps them separable and cheap (see SmoothField._separable); the shapes use the warped ones.
    @property
    def uz(self) -> np.ndarray:
        """Unwarped z (mm) of the slice, shape (d, 1, 1)."""
        return self._axes[0][self.sl[0]]

    @property
    def uy(self) -> np.ndarray:
        """Unwarped y (mm) of the slice, shape (1, h, 1)."""
        return self._axes[1][:, self.sl[1]]

    @property
    def ux(self) -> np.ndarray:
        """Unwarped x (mm) of the slice, shape (1, 1, w)."""
        return self._axes[2][:, :, self.sl[2]]

    @property
    def u(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(uz, uy, ux), the broadcastable unwarped coordinates, for ``SmoothField(*c.u)``."""
        return self.uz, self.uy, self.ux

    @property
    def z(self) -> np.ndarray:
        """Warped subject z (mm) of the slice's voxels."""
        return self._full[0][self.sl]

    @property
    def y(self) -> np.ndarray:
        """Warped subject y (mm) of the slice's voxels."""
        return self._full[1][self.sl]

    @property
    def x(self) -> np.ndarray:
        """Warped subject x (mm) of the slice's voxels."""
        return self._full[2][self.sl]

    @property
    def body(self) -> np.ndarray:
        """Distance to the skin."""
        if self._body is None:
            self._body = self.subject.body_sd(*self._full, self._axes)
        return self._body[self.sl]

    @property
    def fat(self) -> np.ndarray:
        """Distance to the inner surface of the subcutaneous fat (outer surface of the muscle wall)."""
        if self._fat is None:
            self.body  # noqa: B018 (fills the cache)
            self._fat = self._body + self.subject.fat_thickness(*self._full, self._axes)
        return self._fat[self.sl]

    @property
    def cavity(self) -> np.ndarray:
        """Distance to the body cavity (inner surface of the muscle wall)."""
        if self._cavity is None:
            self.fat  # noqa: B018
            self._cavity = self._fat + np.float32(self.subject.body["muscle"])
        return self._cavity[self.sl]


SdFn = Callable[[Ctx], np.ndarray]


@dataclass
class Layer:
    """One painted layer: a signed distance (mm, negative inside) on the context, its tissue and structure id.

    Layers are painted in order, later ones over earlier ones (``render.rasterize``)."""

    name: str
    struct: int | None  # None: changes intensity only (vessels inside an organ keep the organ's label)
    tissue: str
    sd: SdFn
    box: Box | None = None  # subject-frame bounding box (mm) of the inside; None = whole grid
    inside: tuple[int, ...] | None = None  # paint only over voxels already labelled with one of these


@dataclass
class Tumour:
    """A placed tumour (painted by its own lobulated-sphere layer): host, structure id, centre, radius mm, tissue."""

    host: str  # liver | kidney | lung
    struct: int
    center: tuple[float, float, float]  # (z, y, x) mm, subject frame
    radius: float
    tissue: str


@dataclass
class Subject:
    """Parameters of one phantom subject; render with `ct.render_ct` or `mri.render_mri`."""

    seed: tuple[int, ...]
    region: str
    fov_center: tuple[float, float, float]
    tissues: dict[str, Tissue]
    phase: str
    arterial: float
    venous: float
    warp: tuple[SmoothField, SmoothField, SmoothField]
    layers: list[Layer] = field(default_factory=list)
    tumours: list[Tumour] = field(default_factory=list)
    habitus: float = 1.0
    ct_noise_hu: float = 12.0
    ct_noise_blur: float = 0.7
    mri_scale: float = 1000.0
    mri_noise: float = 0.03
    bias: SmoothField | None = None
    # body-outline parameters (used by body_sd / wall_thickness)
    body: dict = field(default_factory=dict)

    # --- body outline -------------------------------------------------------------------------------------
    def body_sd(self, z: np.ndarray, y: np.ndarray, x: np.ndarray, axes: tuple) -> np.ndarray:
        """Distance (mm, negative inside) to a super-elliptic body outline with a belly and a flat back."""
        b = self.body
        zero = np.zeros((1, 1, 1), np.float32)
        a = b["a"] + b["a_field"](axes[0], zero, zero)
        belly = 1.0 + b["belly"] / (1.0 + np.exp((z - b["belly_z"]) / 40.0))
        ba = (b["b_ant"] * belly).astype(np.float32)
        half_b = np.where(y < 0, ba, np.float32(b["b_post"]))
        p = np.float32(b["p"])
        rn = (np.abs(x / a) ** p + np.abs(y / half_b) ** p) ** (1 / p)
        rho = np.sqrt(x * x + y * y)
        sd = (rn - 1) * rho / np.maximum(rn, 1e-3)
        sd -= b["noise"](*axes)
        return sd.astype(np.float32, copy=False)

    def fat_thickness(self, z: np.ndarray, y: np.ndarray, x: np.ndarray, axes: tuple) -> np.ndarray:
        """Subcutaneous fat thickness (mm): thicker anteriorly and at the flanks, smoothly varying."""
        b = self.body
        rho = np.sqrt(x * x + y * y) + 1e-3
        t = b["fat"] * (1.0 + b["fat_ant"] * (-y / rho) + 0.2 * np.abs(x) / rho) + b["fat_field"](*axes)
        return np.maximum(t, 2.0).astype(np.float32)

    def diaphragm(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Height z (mm) of the diaphragm: two domes (right higher), lower laterally and posteriorly."""
        b = self.body
        zd = (b["z_dome"] + b["dome_r"] * 0.5 * (1 - np.tanh(x / 30.0)) - 0.004 * (np.abs(x) - 55.0) ** 2
              - 0.35 * np.maximum(y + 10.0, 0.0))
        return zd.astype(np.float32)

    def spine_y(self, z: np.ndarray) -> np.ndarray:
        """y (mm) of the vertebral bodies' centre at height ``z``: a gentle sinusoidal curvature."""
        b = self.body
        return (b["y_vb"] + b["spine_amp"] * np.sin(2 * math.pi * z / 500.0 + b["spine_phase"])).astype(np.float32)

    def warp_bound(self) -> float:
        """Upper bound (mm) of the warp's displacement, the margin by which layer boxes are widened."""
        return max(f.bound for f in self.warp)
