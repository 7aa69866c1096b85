"""Subject anatomy: `make_subject` draws a torso and describes it as painted layers (see `subject.py`).

Between-subject variation comes from habitus (body size, fat), diaphragm height, organ size/position/orientation
jitter, per-organ smooth random surface perturbations, spine curvature, and one smooth random displacement field
applied to all coordinates. Everything is drawn from one `numpy.random.SeedSequence([seed, dataset, case])`, so a
subject is a pure function of (seed, dataset, case) and has the same anatomy on any grid. Coordinates: mm, (z, y, x),
z superior, y posterior, x to the patient's left; organ positions are set relative to the body cavity (half-width
W, anterior wall y_front) and the spine (y_vb), so they follow the habitus.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from nnssl.data.phantoms.fields import SmoothField
from nnssl.data.phantoms.shapes import (box_of, box_of_points, capsule_chain, ellipsoid, periodic_band, rotation,
                                        tubes, wrap)
from nnssl.data.phantoms.subject import BODY_STRUCTS, Ctx, Layer, S, SdFn, Subject, Tumour  # noqa: F401 (re-exported)
from nnssl.data.phantoms.tissues import jitter_tissues, sample_phase
from nnssl.data.phantoms.tumours import TUMOUR_HOSTS, add_tumours

REGIONS = ("abdomen", "thorax", "mixed")


def make_subject(seed: int, case: int, *, dataset: int = 0, region: str = "abdomen",
                 tumour_hosts: tuple[str, ...] = ()) -> Subject:
    """Draw one subject. Deterministic in (seed, dataset, case).

    region: which part the field of view is centred on ("abdomen", "thorax", or "mixed" = random);
    tumour_hosts: organs ("liver", "kidney", "lung") that must contain at least one tumour; other tumours appear
    at random with low probability.
    """
    if region not in REGIONS:
        raise ValueError(f"region must be one of {REGIONS}, got {region!r}")
    bad = [h for h in tumour_hosts if h not in TUMOUR_HOSTS]
    if bad:
        raise ValueError(f"tumour hosts must be among {TUMOUR_HOSTS}, got {bad}")
    if int(seed) < 0 or int(case) < 0 or int(dataset) < 0:
        raise ValueError(f"seed, dataset and case must be non-negative integers, got {seed}, {dataset}, {case}")
    key = (int(seed), int(dataset), int(case))
    rng = np.random.default_rng(np.random.SeedSequence(list(key)))
    U = rng.uniform

    # habitus: h scales body size and fat; slim subjects have little fat, large ones a belly
    h = float(np.clip(rng.normal(1.0, 0.09), 0.82, 1.2))
    fat = float(np.clip(22.0 * (h - 0.72) / 0.28 * U(0.7, 1.3), 4.0, 55.0))
    body = dict(
        a=np.float32(128.0 * h + 0.5 * fat), b_ant=np.float32(95.0 * h + 0.6 * fat),
        b_post=np.float32(84.0 * h + 0.3 * fat), p=U(2.1, 2.6),
        belly=float(np.clip((h - 0.9) * 1.2, 0.0, 0.3)) * U(0.5, 1.2), belly_z=U(-140, -60),
        a_field=SmoothField.random(rng, 5.0, (250, 600), n=4),
        noise=SmoothField.random(rng, 3.5, (70, 250), n=10),
        fat=fat, fat_ant=U(0.15, 0.45), fat_field=SmoothField.random(rng, 0.12 * fat + 1.0, (60, 200), n=8),
        muscle=U(9.0, 14.0), z_dome=U(-10, 10), dome_r=U(6, 20),
        spine_amp=U(2, 8), spine_phase=U(0, 2 * math.pi),
    )
    t_fat_post = fat * (1 - body["fat_ant"])
    body["y_vb"] = float(body["b_post"] - t_fat_post - body["muscle"] - U(52, 60))
    zd0 = body["z_dome"]

    phase, art, ven = sample_phase(rng)
    tissues = jitter_tissues(rng)
    warp = tuple(SmoothField.random(rng, U(3.0, 7.0), (120, 400), n=6) for _ in range(3))

    if region == "abdomen":
        cz = zd0 - 75 + U(-15, 15)
    elif region == "thorax":
        cz = zd0 + 80 + U(-15, 15)
    else:
        cz = zd0 + U(-130, 90)
    fov_center = (float(cz), float(10.0 + U(-10, 10)), float(U(-12, 12)))

    subj = Subject(seed=key, region=region, fov_center=fov_center, tissues=tissues, phase=phase,
                   arterial=art, venous=ven, warp=warp, habitus=h, body=body,  # type: ignore[arg-type]
                   ct_noise_hu=float(U(6, 16) * h ** 2), ct_noise_blur=U(0.5, 1.0),
                   mri_scale=float(math.exp(U(math.log(150), math.log(4000)))), mri_noise=U(0.015, 0.04),
                   bias=SmoothField.random(rng, U(0.12, 0.3), (250, 600), n=6))
    _build_layers(subj, rng)
    add_tumours(subj, rng, tumour_hosts)
    return subj


def _organ_noise(rng: np.random.Generator, size: float, rel: float = 0.07) -> SmoothField:
    return SmoothField.random(rng, rel * size, (0.8 * size, 2.5 * size), n=8)


def _build_layers(s: Subject, rng: np.random.Generator) -> None:
    U = rng.uniform
    b = s.body
    L = s.layers
    zd0, y_vb = b["z_dome"], b["y_vb"]
    W = float(b["a"] - b["fat"] * 1.2 - b["muscle"])  # half-width of the body cavity
    y_front = float(-(b["b_ant"] - b["fat"] * (1 + b["fat_ant"]) - b["muscle"]))
    BIG = 1e4

    def clip_abd(fn: SdFn, margin: float = 1.0) -> SdFn:
        """Organ below the diaphragm and inside the body cavity."""
        return lambda c: np.maximum(np.maximum(fn(c), c.cavity), c.z - s.diaphragm(c.y, c.x) + margin)

    def perturbed(fn: Callable, noise: SmoothField) -> SdFn:
        """Shape (z, y, x) -> distance, with a smooth random surface perturbation."""
        return lambda c: fn(c.z, c.y, c.x) - noise(*c.u)

    # --- table, body wall -----------------------------------------------------------------------------
    ytab = float(b["b_post"]) + U(3, 12)
    L.append(Layer("table", S.TABLE, "table",
                   lambda c: np.maximum(np.abs(c.y - np.float32(ytab + 8)) - 7, np.abs(c.x) - 230).astype(np.float32),
                   box=((-BIG, BIG), (ytab, ytab + 16), (-230, 230))))
    L.append(Layer("subcutaneous fat", S.SUBCUT_FAT, "fat", lambda c: c.body))
    L.append(Layer("muscle wall", S.MUSCLE, "muscle",
                   lambda c: c.fat))
    L.append(Layer("visceral fat", S.VISCERAL_FAT, "fat", lambda c: c.cavity))

    # --- bowel loops (unlabelled), lower abdomen -------------------------------------------------------
    g1, g2, g3 = (SmoothField.random(rng, 1.0, (45, 110), n=10) for _ in range(3))
    bowel_frac = U(0.7, 1.0) * (1.25 - 0.5 * (s.habitus - 0.8))
    z_bowel = zd0 - U(60, 80)
    bowel_tubes = tubes(g1, g2, bowel_frac, 11.0)
    L.append(Layer("bowel", S.BOWEL, "bowel",
                   lambda c: np.maximum(np.maximum(bowel_tubes(c), c.cavity + 3),
                                        c.z - np.float32(z_bowel) + 0.3 * c.y),
                   box=((-BIG, z_bowel + 60), (-BIG, BIG), (-BIG, BIG))))
    L.append(Layer("bowel gas", None, "gas", lambda c: (np.float32(1.1) - g3(*c.u)) * 12,
                   box=((-BIG, z_bowel + 60), (-BIG, BIG), (-BIG, BIG)), inside=(S.BOWEL,)))

    # --- thorax: lungs, vessels, mediastinum, heart -------------------------------------------------------
    x_med = U(0, 12)
    z_apex = zd0 + 240
    lung_box = ((zd0 - 80, z_apex), (-BIG, BIG), (-BIG, BIG))

    def lung_sd(c: Ctx) -> np.ndarray:
        return np.maximum(np.maximum(c.cavity, s.diaphragm(c.y, c.x) + 2 - c.z), c.z - np.float32(z_apex))

    L.append(Layer("right lung", S.LUNG_R, "lung", lambda c: np.maximum(lung_sd(c), c.x - np.float32(x_med)),
                   box=lung_box))
    L.append(Layer("left lung", S.LUNG_L, "lung", lambda c: np.maximum(lung_sd(c), np.float32(x_med) - c.x),
                   box=lung_box))
    v1, v2 = (SmoothField.random(rng, 1.0, (25, 70), n=10) for _ in range(2))
    hilum = np.array([zd0 + 70, y_vb - 25, 0.0], np.float32)

    def lung_vessels(c: Ctx) -> np.ndarray:
        dist = np.sqrt((c.z - hilum[0]) ** 2 + (c.y - hilum[1]) ** 2 + (c.x - hilum[2]) ** 2)
        rad = 0.08 + 0.35 * np.exp(-dist / 70.0)
        return (np.sqrt(v1(*c.u) ** 2 + v2(*c.u) ** 2) - rad) * 8.0

    L.append(Layer("lung vessels", None, "blood_venous", lung_vessels, box=lung_box, inside=(S.LUNG_R, S.LUNG_L)))
    y_med = 0.5 * (y_front + y_vb)
    med_hw, med_hh = U(28, 38), 0.5 * (y_vb - y_front) + 12
    L.append(Layer("mediastinum", S.MEDIASTINUM, "fat",
                   lambda c: np.maximum(np.maximum(
                       (np.sqrt(((c.x - x_med) / med_hw) ** 2 + ((c.y - y_med) / med_hh) ** 2) - 1) * med_hw,
                       s.diaphragm(c.y, c.x) - 3 - c.z), np.maximum(c.cavity, c.z - np.float32(z_apex))),
                   box=((zd0 - 40, z_apex), (-BIG, BIG), (-BIG, BIG))))
    hc = np.array([zd0 + U(40, 55), y_front * U(0.4, 0.6), U(15, 30)])
    hax = np.array([52, 46, 62]) * U(0.85, 1.15)
    hrot = rotation(rng, (35, 0, 15), 10)
    heart = ellipsoid(hc, hax, hrot)
    heart_in = ellipsoid(hc, hax * 0.72, hrot)
    heart_clip = lambda c, fn: np.maximum(np.maximum(fn(c.z, c.y, c.x), s.diaphragm(c.y, c.x) - c.z), c.cavity)
    L.append(Layer("heart", S.HEART, "myocardium", lambda c: heart_clip(c, heart), box=box_of(hc, hax.max())))
    L.append(Layer("heart blood", S.HEART, "blood_arterial", lambda c: heart_clip(c, heart_in),
                   box=box_of(hc, hax.max()), inside=(S.HEART,)))

    # --- ribs and sternum ---------------------------------------------------------------------------------
    rib_phase, rib_pitch, rib_w = U(0, 34), U(30, 36), U(9, 12)
    z_rib_low = zd0 - U(95, 120)

    def ribs(c: Ctx) -> np.ndarray:
        shell = np.abs(c.cavity + 7) - 4.5
        band = periodic_band(c.z - 0.35 * c.y, rib_phase, rib_pitch, rib_w)
        ang = np.abs(np.arctan2(c.x, -c.y))  # 0 = anterior midline
        rho = np.sqrt(c.x * c.x + c.y * c.y)
        front = (0.5 - ang) * rho  # costal cartilage gap at the anterior midline
        return np.maximum(np.maximum(shell, band), np.maximum(front, np.float32(z_rib_low) - c.z))

    L.append(Layer("ribs", S.RIB, "cortical_bone", ribs, box=((z_rib_low - 60, BIG), (-BIG, BIG), (-BIG, BIG))))
    y_st = y_front + 4

    def sternum(c: Ctx) -> np.ndarray:
        return np.maximum(np.maximum(np.abs(c.x) - 14, np.abs(c.y - np.float32(y_st)) - 6),
                          np.float32(zd0 + 5) - c.z)

    L.append(Layer("sternum", S.RIB, "cortical_bone", sternum, box=((zd0 + 5, BIG), (y_st - 6, y_st + 6), (-14, 14))))

    # --- back muscles ----------------------------------------------------------------------------------
    y_canal_off = U(25, 29)
    for side in (-1, 1):
        cx = side * U(32, 40)
        ph, pw = U(24, 30), U(27, 34)

        def paraspinal(c: Ctx, cx=cx, ph=ph, pw=pw) -> np.ndarray:
            yc = s.spine_y(c.z) + np.float32(y_canal_off + 16)
            e = (np.sqrt(((c.x - np.float32(cx)) / pw) ** 2 + ((c.y - yc) / ph) ** 2) - 1) * pw
            return np.maximum(e, c.fat)

        L.append(Layer("paraspinal muscle", S.MUSCLE, "muscle", paraspinal,
                       box=((-BIG, BIG), (y_vb, BIG), (cx - pw - 10, cx + pw + 10))))
        z_ps = zd0 - U(95, 115)

        def psoas(c: Ctx, side=side, z_ps=z_ps) -> np.ndarray:
            r = np.clip(6 + 0.13 * (np.float32(z_ps) - c.z), 4, 26)
            cxx = side * (20 + r)
            yc = s.spine_y(c.z) + 4
            return np.maximum(np.sqrt((c.x - cxx) ** 2 + 1.3 * (c.y - yc) ** 2) - r, c.z - np.float32(z_ps))

        L.append(Layer("psoas", S.MUSCLE, "muscle", psoas, box=((-BIG, z_ps), (y_vb - 40, y_vb + 40),
                                                                  (side * 48 - 40, side * 48 + 40))))

    # --- IVC (before the liver so the liver wraps it) -------------------------------------------------------
    r_ivc = U(9, 13)
    x_ivc = -U(20, 28)

    def ivc(c: Ctx) -> np.ndarray:
        yc = s.spine_y(c.z) - np.float32(20)
        return np.maximum(np.sqrt((c.x - np.float32(x_ivc)) ** 2 + ((c.y - yc) * 1.15) ** 2) - r_ivc,
                          c.z - np.float32(zd0 + 25))

    # --- liver -----------------------------------------------------------------------------------------
    ls = U(0.9, 1.15)
    lc = np.array([zd0 - U(50, 65), 0.5 * (y_front + y_vb) + U(-5, 10), -0.4 * W + U(-8, 8)])
    lax = np.array([98, 94, 115]) * ls * np.array([U(0.9, 1.1), U(0.9, 1.1), U(0.9, 1.1)])
    liver_e = ellipsoid(lc, lax, rotation(rng, (0, 0, 0), 8))
    liver_noise = _organ_noise(rng, 80.0, 0.06)
    n1 = np.array([0.0, 0.35, 0.94]) + rng.normal(0, 0.05, 3)
    n1 /= np.linalg.norm(n1)
    p1 = np.array([0.0, U(-25, -5), U(5, 20)])
    n2 = np.array([-0.5, 0.0, 0.87]) + rng.normal(0, 0.05, 3)
    n2 /= np.linalg.norm(n2)
    p2 = np.array([zd0 - U(55, 75), 0.0, 0.0])

    def liver(z, y, x):
        c1 = (z - p1[0]) * n1[0] + (y - p1[1]) * n1[1] + (x - p1[2]) * n1[2]
        c2 = (z - p2[0]) * n2[0] + (y - p2[1]) * n2[1] + (x - p2[2]) * n2[2]
        return np.maximum(liver_e(z, y, x), np.maximum(c1, c2).astype(np.float32))

    liver_sd = clip_abd(perturbed(liver, liver_noise))
    L.append(Layer("liver", S.LIVER, "liver", liver_sd, box=box_of(lc, lax.max() * 1.15)))
    lv1, lv2 = (SmoothField.random(rng, 1.0, (35, 90), n=10) for _ in range(2))
    L.append(Layer("liver vessels", None, "blood_venous", tubes(lv1, lv2, 0.22, 9.0),
                   box=box_of(lc, lax.max() * 1.15), inside=(S.LIVER,)))
    L.append(Layer("inferior vena cava", S.IVC, "blood_venous", ivc,
                   box=((-BIG, zd0 + 25), (y_vb - 60, y_vb + 10), (x_ivc - 20, x_ivc + 20))))

    # --- gallbladder -------------------------------------------------------------------------------------
    gs = U(0.8, 1.4)
    gc = np.array([lc[0] - U(40, 60), y_front + U(18, 30), -0.3 * W + U(-10, 10)])
    gax = np.array([32, 15, 14]) * gs
    gb = perturbed(ellipsoid(gc, gax, rotation(rng, (0, 0, 35), 12)), _organ_noise(rng, 20.0, 0.05))
    L.append(Layer("gallbladder", S.GALLBLADDER, "bile", clip_abd(gb), box=box_of(gc, gax.max() * 1.2)))

    # --- spleen ----------------------------------------------------------------------------------------
    ss = U(0.8, 1.25)
    sc = np.array([zd0 - U(40, 55), y_vb + U(12, 25), 0.72 * W + U(-5, 5)])
    sax = np.array([55, 55, 26]) * ss
    spleen = perturbed(ellipsoid(sc, sax, rotation(rng, (-40, 0, 0), 10)), _organ_noise(rng, 40.0))
    L.append(Layer("spleen", S.SPLEEN, "spleen", clip_abd(spleen), box=box_of(sc, sax.max() * 1.2)))

    # --- kidneys (cortex, medulla, sinus fat, pelvis) and adrenals ------------------------------------------
    for side, struct, adr in ((-1, S.KIDNEY_R, S.ADRENAL_R), (1, S.KIDNEY_L, S.ADRENAL_L)):
        ks = U(0.85, 1.15)
        kz = zd0 - (U(105, 125) if side < 0 else U(95, 115))
        kc = np.array([kz, y_vb + U(18, 30), side * (0.56 * W + U(-5, 5))])
        kax = np.array([52, 26, 24]) * ks
        krot = rotation(rng, (side * 30, side * 15, 0), 8)  # hilum faces antero-medially; upper pole medial
        outer = perturbed(ellipsoid(kc, kax, krot), _organ_noise(rng, 25.0, 0.05))
        # hilum notch on the medial side
        medial = krot @ np.array([0.0, 0.0, -side * 1.0])
        hc_ = kc + medial * kax[2] * 1.05
        notch = ellipsoid(hc_, np.array([18, 11, 11]) * ks)
        kbox = box_of(kc, kax.max() * 1.15)
        kid = lambda c, o=outer, n=notch: np.maximum(o(c), -n(c.z, c.y, c.x))
        L.append(Layer("kidney", struct, "kidney_cortex", clip_abd(kid), box=kbox))
        L.append(Layer("renal medulla", struct, "kidney_medulla", wrap(ellipsoid(kc, kax * [0.8, 0.68, 0.66], krot)),
                     box=kbox, inside=(struct,)))
        sin_c = kc + medial * kax[2] * 0.45
        L.append(Layer("renal sinus", struct, "fat", wrap(ellipsoid(sin_c, kax * [0.55, 0.38, 0.4], krot)),
                     box=kbox, inside=(struct,)))
        L.append(Layer("renal pelvis", struct, "fluid", wrap(ellipsoid(sin_c, kax * [0.25, 0.2, 0.22], krot)),
                     box=kbox, inside=(struct,)))
        ac = np.array([kz + kax[0] * 0.8 + U(5, 12), y_vb + U(8, 16), side * (0.33 * W + U(-4, 4))])
        aax = np.array([17, 14, 5.5]) * U(0.85, 1.2)
        ad = ellipsoid(ac, aax, rotation(rng, (side * 50, 0, 0), 12))
        L.append(Layer("adrenal", adr, "adrenal", clip_abd(wrap(ad), margin=-100), box=box_of(ac, aax.max() + 2)))

    # --- stomach (wall, fluid, gas cap) ----------------------------------------------------------------------
    st = U(0.75, 1.2)
    pts = np.array([
        [zd0 - U(18, 30), y_vb - U(5, 15), 0.5 * W + U(-6, 6)],
        [zd0 - U(60, 75), y_front + U(30, 40), 0.5 * W + U(-6, 6)],
        [zd0 - U(75, 90), y_front + U(20, 30), U(-8, 8)],
        [zd0 - U(85, 100), y_front + U(25, 35), -U(20, 30)],
    ])
    rads = np.array([34, 28, 16, 10]) * st
    stomach = perturbed(capsule_chain(pts, rads), _organ_noise(rng, 30.0, 0.05))
    st_box = box_of_points(pts, rads.max() + 10)
    y_gas = float(max((pts[:, 1] - rads).min(), y_front) + U(10, 30))  # supine: gas rises anteriorly (small y), fluid level below
    st_sd = clip_abd(stomach)
    L.append(Layer("stomach", S.STOMACH, "stomach_wall", st_sd, box=st_box))
    L.append(Layer("stomach content", S.STOMACH, "fluid", lambda c: st_sd(c) + 4, box=st_box, inside=(S.STOMACH,)))
    L.append(Layer("stomach gas", S.STOMACH, "gas", lambda c: np.maximum(st_sd(c) + 4, c.y - np.float32(y_gas)),
                   box=st_box, inside=(S.STOMACH,)))

    # --- pancreas ------------------------------------------------------------------------------------------
    r_ao = U(9, 13)
    y_ao = lambda z: s.spine_y(z) - np.float32(16 + 2 + r_ao)
    y_a0 = y_vb - 18 - r_ao
    pz = zd0 - U(85, 100)
    ppts = np.array([
        [pz - U(15, 25), y_vb - 20 - r_ivc - U(18, 24), x_ivc - U(5, 12)],  # head, anterior to the IVC
        [pz - U(5, 12), y_a0 - r_ao - U(14, 20), U(-8, 4)],  # neck, anterior to the aorta / SMA
        [pz + U(0, 8), y_a0 - U(5, 15), 0.32 * W + U(-5, 5)],
        [pz + U(10, 22), y_vb - U(0, 10), 0.62 * W + U(-5, 5)],  # tail towards the splenic hilum
    ])
    prad = np.array([17, 12, 12, 10]) * U(0.85, 1.2)
    panc = perturbed(capsule_chain(ppts, prad), _organ_noise(rng, 12.0, 0.1))
    L.append(Layer("pancreas", S.PANCREAS, "pancreas", clip_abd(panc), box=box_of_points(ppts, prad.max() + 6)))

    # --- vertebral column ------------------------------------------------------------------------------------
    vs = U(0.9, 1.1)
    vbx, vby = 21 * vs, 16 * vs
    d_phase, d_pitch, d_h = U(0, 36), U(33, 38), U(7, 9)

    def vb(c: Ctx) -> np.ndarray:
        yc = s.spine_y(c.z)
        return (np.sqrt((c.x / np.float32(vbx)) ** 2 + ((c.y - yc) / np.float32(vby)) ** 2) - 1) * np.float32(vby)

    def arch(c: Ctx) -> np.ndarray:
        yc = s.spine_y(c.z) + np.float32(y_canal_off)
        ring = np.sqrt((c.x / 17.0) ** 2 + ((c.y - yc) / 14.0) ** 2) * 14.0 - 14.0
        spinous = np.maximum(np.abs(c.x) - 5, np.abs(c.y - yc - 25) - 22)
        transverse = np.maximum(np.abs(c.x) - 32, np.abs(c.y - yc + 3) - 4)
        band = periodic_band(c.z, d_phase + d_h + 5, d_pitch, d_pitch - d_h - 14)
        return np.maximum(np.minimum(np.minimum(ring, spinous), transverse), band)

    spine_box = ((-BIG, BIG), (y_vb - vby - 12, y_vb + y_canal_off + 60), (-50, 50))
    L.append(Layer("vertebral body", S.VERTEBRA, "cortical_bone", vb, box=spine_box))
    L.append(Layer("vertebral marrow", S.VERTEBRA, "cancellous_bone", lambda c: vb(c) + 2.5, box=spine_box,
                   inside=(S.VERTEBRA,)))
    L.append(Layer("vertebral arch", S.VERTEBRA, "cortical_bone", arch, box=spine_box))
    L.append(Layer("disc", S.DISC, "disc", lambda c: np.maximum(vb(c) + 1, periodic_band(c.z, d_phase, d_pitch, d_h)),
                   box=spine_box))
    L.append(Layer("spinal canal", S.CANAL, "csf",
                   lambda c: np.sqrt((c.x / 10.0) ** 2 + ((c.y - s.spine_y(c.z) - np.float32(y_canal_off)) / 8.0) ** 2)
                   * 8.0 - 8.0, box=spine_box))

    # --- aorta (last: always an intact tube) -------------------------------------------------------------------
    x_ao = U(10, 20)
    L.append(Layer("aorta", S.AORTA, "blood_arterial",
                   lambda c: np.sqrt((c.x - np.float32(x_ao)) ** 2 + (c.y - y_ao(c.z)) ** 2) - np.float32(r_ao),
                   box=((-BIG, BIG), (y_a0 - r_ao - 20, y_a0 + r_ao + 20), (x_ao - r_ao - 5, x_ao + r_ao + 5))))
    s.body["organs"] = dict(liver=(lc, lax, liver_sd), W=W, y_front=y_front)
