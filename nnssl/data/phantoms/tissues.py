"""Tissue appearance table: CT attenuation (HU) with contrast enhancement, and T1-/T2-like MRI signal.

CT values follow typical clinical numbers (unenhanced liver 50-60 HU, lung about -850, fat -100, cortical bone
700-1200); enhancement is `hu + arterial * art_gain + venous * ven_gain`, so the same subject can be rendered in
native, arterial, portal-venous or delayed phase. MRI values are relative signal in [0, 1] with the orderings of
spin-echo T1 (fat and marrow bright, fluid dark, liver brighter than spleen) and T2 (fluid and bile brightest, spleen
brighter than liver, flowing blood dark), so CT -> MRI is a real change of tissue ordering, not a rescaling.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class Tissue:
    """CT attenuation with contrast gains, texture, and relative T1/T2 signal of one tissue."""

    hu: float  # unenhanced attenuation
    art: float  # HU added at full arterial enhancement
    ven: float  # HU added at full portal-venous enhancement
    hu_tex: float  # std of the texture in HU
    t1: float  # relative T1-weighted signal
    t2: float  # relative T2-weighted signal
    mr_tex: float = 0.04  # relative std of MRI texture

    def ct(self, arterial: float, venous: float) -> float:
        """HU at the given arterial and venous enhancement levels (1 = full): ``hu + arterial*art + venous*ven``."""
        return self.hu + arterial * self.art + venous * self.ven


TISSUES: dict[str, Tissue] = {
    "air": Tissue(-1000, 0, 0, 0, 0.0, 0.0, 0.0),
    "gas": Tissue(-990, 0, 0, 4, 0.0, 0.0, 0.0),
    "lung": Tissue(-860, 0, 0, 25, 0.03, 0.04, 0.2),
    "fat": Tissue(-100, 0, 0, 8, 0.92, 0.78, 0.03),
    "muscle": Tissue(50, 10, 20, 7, 0.30, 0.20),
    "liver": Tissue(55, 20, 55, 5, 0.60, 0.22),
    "spleen": Tissue(47, 70, 75, 5, 0.42, 0.55),
    "kidney_cortex": Tissue(35, 160, 130, 5, 0.50, 0.55),
    "kidney_medulla": Tissue(32, 40, 115, 5, 0.36, 0.72),
    "pancreas": Tissue(42, 80, 55, 10, 0.68, 0.35, 0.08),
    "adrenal": Tissue(30, 40, 45, 5, 0.45, 0.40),
    "stomach_wall": Tissue(40, 50, 60, 6, 0.40, 0.35),
    "fluid": Tissue(12, 0, 0, 4, 0.12, 0.85),
    "bile": Tissue(8, 0, 0, 3, 0.16, 0.95),
    "bowel": Tissue(30, 30, 45, 15, 0.35, 0.48, 0.1),
    "blood_arterial": Tissue(42, 280, 130, 4, 0.15, 0.06),
    "blood_venous": Tissue(42, 40, 150, 4, 0.15, 0.08),
    "myocardium": Tissue(45, 60, 70, 5, 0.33, 0.25),
    "cortical_bone": Tissue(850, 0, 0, 80, 0.03, 0.03, 0.2),
    "cancellous_bone": Tissue(230, 0, 10, 45, 0.65, 0.45, 0.08),
    "disc": Tissue(85, 0, 5, 8, 0.30, 0.70),
    "csf": Tissue(8, 0, 0, 3, 0.10, 1.00),
    "table": Tissue(80, 0, 0, 10, 0.0, 0.0, 0.0),
}

# Contrast phases: (probability, arterial range, venous range)
PHASES: dict[str, tuple[float, tuple[float, float], tuple[float, float]]] = {
    "native": (0.2, (0.0, 0.0), (0.0, 0.0)),
    "arterial": (0.25, (0.7, 1.1), (0.1, 0.35)),
    "portal_venous": (0.45, (0.15, 0.35), (0.75, 1.1)),
    "delayed": (0.1, (0.0, 0.1), (0.4, 0.6)),
}


def jitter_tissues(rng: np.random.Generator) -> dict[str, Tissue]:
    """Per-subject tissue table: unenhanced HU +-4, enhancement +-15 %, MRI signal +-10 % (between-subject
    variation of physiology and scanner)."""
    out = {}
    for name, t in TISSUES.items():
        if name in ("air", "gas"):
            out[name] = t
            continue
        g = rng.uniform(0.85, 1.15)
        out[name] = replace(t, hu=t.hu + rng.uniform(-4, 4), art=t.art * g, ven=t.ven * g,
                            t1=t.t1 * rng.uniform(0.9, 1.1), t2=t.t2 * rng.uniform(0.9, 1.1))
    return out


def sample_phase(rng: np.random.Generator) -> tuple[str, float, float]:
    """(phase name, arterial level, venous level) with a random contrast dose."""
    names = list(PHASES)
    probs = np.array([PHASES[n][0] for n in names])
    name = names[int(rng.choice(len(names), p=probs / probs.sum()))]
    _, (a0, a1), (v0, v1) = PHASES[name]
    dose = rng.uniform(0.8, 1.2)
    return name, float(rng.uniform(a0, a1) * dose), float(rng.uniform(v0, v1) * dose)
