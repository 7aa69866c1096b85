"""Tumours: lesions of varied size, shape and contrast placed inside liver, kidneys and lungs.

A candidate position is accepted only when the host's distance there is below -0.6 r and 15 probe points of the
lesion lie in visible host tissue after painting every layer, so tumours are not hidden under vessels, bone or the
heart. Tumour layers are painted only over host voxels (`Layer.inside`), so a tumour label never leaves its host.
"""
from __future__ import annotations

import math

import numpy as np

from nnssl.data.phantoms.fields import SmoothField
from nnssl.data.phantoms.shapes import box_of, wrap
from nnssl.data.phantoms.subject import Ctx, Layer, S, Subject, Tumour
from nnssl.data.phantoms.tissues import Tissue

TUMOUR_HOSTS = ("liver", "kidney", "lung")


def _point_ctx(s: Subject, pts: np.ndarray) -> Ctx:
    """Ctx on points (n, 3) given in warped coordinates; the unwarped points (where the smooth perturbations are
    evaluated) are found by a few fixed-point steps of p = q + u(q)."""
    pw = [np.ascontiguousarray(pts[:, i], dtype=np.float32).reshape(-1, 1, 1) for i in range(3)]
    q = [a.copy() for a in pw]
    for _ in range(3):
        u = [f(*q) for f in s.warp]
        q = [a - ui for a, ui in zip(pw, u)]
    return Ctx(s, *pw, axes=tuple(q))


def _sd_at(s: Subject, layer: Layer, p: np.ndarray) -> float:
    """A layer's distance at one point (warped coordinates)."""
    return float(layer.sd(_point_ctx(s, np.asarray(p, np.float64).reshape(1, 3))).ravel()[0])


def _structures_at(s: Subject, pts: np.ndarray) -> np.ndarray:
    """Structure id at each point (n, 3) after painting all current layers (the rasteriser's rule, without partial
    volume): used to check that a tumour lies in visible host tissue, not under a later-painted structure."""
    ctx = _point_ctx(s, pts)
    out = np.zeros(len(pts), np.uint8)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    for layer in s.layers:
        if layer.struct is None:
            continue
        if layer.box is not None and any(h < b0 or l > b1 for l, h, (b0, b1) in zip(lo, hi, layer.box)):
            continue
        inside = layer.sd(ctx).reshape(-1) < 0
        if layer.inside is not None:
            inside &= np.isin(out, layer.inside)
        out[inside] = layer.struct
    return out


# probe directions: centre, 6 axis and 8 diagonal directions
_PROBES = np.concatenate([np.zeros((1, 3)), np.eye(3), -np.eye(3),
                          np.array([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)]) / np.sqrt(3)])


def add_tumours(s: Subject, rng: np.random.Generator, required: tuple[str, ...]) -> None:
    """Lesions of varied size and contrast inside liver, kidneys and lungs; `required` hosts get at least one."""
    U = rng.uniform
    T = s.tissues
    counts = {
        "liver": (1 + min(rng.poisson(0.8), 3)) if "liver" in required else int(U() < 0.15),
        "kidney": (1 + int(U() < 0.3)) if "kidney" in required else int(U() < 0.1),
        "lung": (1 + min(rng.poisson(0.7), 2)) if "lung" in required else int(U() < 0.1),
    }
    rmin = {"liver": 7.0, "kidney": 8.0, "lung": 5.0}
    rmax = {"liver": 30.0, "kidney": 24.0, "lung": 22.0}
    b = s.body
    kid_layers = [lay for lay in s.layers if lay.name == "kidney"]
    for host, n in counts.items():
        for i in range(n):
            lo = 10.0 if (i == 0 and host in required) else rmin[host]
            r = float(math.exp(U(math.log(lo), math.log(rmax[host]))))
            for _ in range(200):
                if host == "liver":
                    lc, lax, _ = b["organs"]["liver"]
                    cand = lc + rng.normal(0, 0.35, 3) * lax
                    lname, struct, hosts = "liver", S.LIVER_TUMOUR, (S.LIVER,)
                elif host == "kidney":
                    lay = kid_layers[int(U() < 0.5)]
                    right = lay.struct == S.KIDNEY_R
                    centre = np.array([(lo_ + hi_) / 2 for lo_, hi_ in lay.box])  # the kidney's centre
                    cand = centre + rng.normal(0, 1, 3) * np.array([18.0, 9.0, 9.0])
                    lname = lay.name
                    struct = S.KIDNEY_R_TUMOUR if right else S.KIDNEY_L_TUMOUR
                    hosts = (lay.struct,)
                else:
                    W = b["organs"]["W"]
                    side = 1 if U() < 0.5 else -1
                    cand = np.array([b["z_dome"] + U(10, 150), U(-70, 60), side * U(0.2, 0.85) * W])
                    lname = "right lung" if side < 0 else "left lung"
                    struct, hosts = S.LUNG_TUMOUR, (S.LUNG_R, S.LUNG_L)
                sd = _sd_at(s, next(x for x in s.layers if x.name == lname and x.struct in hosts), cand)
                if host == "lung":  # keep clear of the mediastinum and heart painted over the lungs
                    for other in ("mediastinum", "heart"):
                        sd = max(sd, -_sd_at(s, next(x for x in s.layers if x.name == other), cand) + 0.5 * r)
                if sd < -0.6 * r and np.isin(_structures_at(s, cand + 0.7 * r * _PROBES), hosts).all():
                    break
                r = max(lo, r * 0.97)
            else:
                continue  # no room found (cannot happen for normal habitus); skip rather than misplace
            name = f"tumour_{len(s.tumours)}"
            host_t = T["liver"] if host == "liver" else T["kidney_cortex"] if host == "kidney" else T["muscle"]
            if host == "liver":
                hyper = U() < 0.3
                T[name] = Tissue(hu=host_t.hu + U(-25, -5), art=U(90, 160) if hyper else U(0, 20),
                                 ven=U(30, 60) if hyper else U(0, 25), hu_tex=U(6, 14),
                                 t1=host_t.t1 * U(0.45, 0.8), t2=host_t.t2 * U(1.6, 3.2), mr_tex=0.08)
            elif host == "kidney":
                T[name] = Tissue(hu=U(28, 42), art=U(60, 200), ven=U(40, 90), hu_tex=U(10, 18),
                                 t1=host_t.t1 * U(0.6, 0.95), t2=host_t.t2 * U(0.8, 1.5), mr_tex=0.1)
            else:
                T[name] = Tissue(hu=U(10, 45), art=U(0, 30), ven=U(10, 40), hu_tex=U(8, 15),
                                 t1=0.33 * U(0.8, 1.2), t2=0.45 * U(0.8, 1.3), mr_tex=0.08)
            c = cand.astype(np.float32)
            lob = SmoothField.random(rng, U(0.05, 0.18 if host == "lung" else 0.12) * r, (0.6 * r, 2.0 * r), n=8)
            sph = lambda k, c=c, r=r, lob=lob: (np.sqrt((k.z - c[0]) ** 2 + (k.y - c[1]) ** 2 + (k.x - c[2]) ** 2)
                                                - np.float32(r) - lob(*k.u))
            box = box_of(c, r * 1.4 + 2)
            s.layers.append(Layer(name, struct, name, sph, box=box, inside=hosts))
            if r > 14 and U() < 0.4:  # necrotic core
                nec = f"necrosis_{len(s.tumours)}"
                T[nec] = Tissue(hu=U(10, 25), art=0, ven=U(0, 8), hu_tex=5, t1=0.14, t2=0.85)
                rn = r * U(0.3, 0.55)
                core = lambda z, y, x, c=c, rn=rn: np.sqrt((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) - rn
                s.layers.append(Layer(nec, struct, nec, wrap(core), box=box, inside=(struct,)))
            s.tumours.append(Tumour(host=host, struct=int(struct), center=tuple(map(float, c)), radius=r, tissue=name))
