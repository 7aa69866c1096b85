"""Preview figure: mid slices of one subject as CT and as T1-/T2-like MRI, with organ label overlays."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from nnssl.data.phantoms.anatomy import S, make_subject  # noqa: E402
from nnssl.io import atomic_write  # noqa: E402
from nnssl.data.phantoms.ct import render_ct  # noqa: E402
from nnssl.data.phantoms.fields import Grid, validate_size, validate_spacing  # noqa: E402
from nnssl.data.phantoms.mri import render_mri  # noqa: E402

# structures drawn in the overlay (colour per structure)
OVERLAY = {
    S.LIVER: "#d95f02", S.SPLEEN: "#7570b3", S.KIDNEY_R: "#e7298a", S.KIDNEY_L: "#e7298a",
    S.STOMACH: "#66a61e", S.PANCREAS: "#e6ab02", S.GALLBLADDER: "#1b9e77", S.AORTA: "#e41a1c",
    S.VERTEBRA: "#a6761d", S.ADRENAL_R: "#00ffff", S.ADRENAL_L: "#00ffff", S.LUNG_R: "#377eb8",
    S.LUNG_L: "#377eb8", S.LIVER_TUMOUR: "#ffff33", S.KIDNEY_R_TUMOUR: "#ffff33", S.KIDNEY_L_TUMOUR: "#ffff33",
    S.LUNG_TUMOUR: "#ffff33",
}


def _overlay_rgba(smap: np.ndarray) -> np.ndarray:
    rgba = np.zeros(smap.shape + (4,), np.float32)
    for struct, colour in OVERLAY.items():
        m = smap == struct
        rgba[m, :3] = matplotlib.colors.to_rgb(colour)
        rgba[m, 3] = 0.4
    return rgba


def write_preview(png_path: str | Path, seed: int = 0, size: tuple[int, int, int] | int = (96, 128, 128),
                  spacing: tuple[float, float, float] = (2.5, 2.5, 2.5), case: int = 0) -> Path:
    """Write a PNG: rows axial (kidney level), axial (liver dome level), coronal; columns CT (abdomen window),
    T1-like MRI, T2-like MRI, each image without and with label overlay. Returns the path."""
    png_path = Path(png_path)
    if png_path.suffix.lower() != ".png":
        raise ValueError(f"preview file must end in .png, got {png_path}")
    if not png_path.parent.exists():
        raise FileNotFoundError(f"folder {png_path.parent} for the preview does not exist; create it first")
    size, spacing = validate_size(size), validate_spacing(spacing)
    subj = make_subject(seed, case, dataset=0, region="abdomen", tumour_hosts=("liver", "kidney"))
    grid = Grid(size, spacing, (subj.fov_center[0] + 20, *subj.fov_center[1:]))
    ct, smap = render_ct(subj, grid)
    t1, _ = render_mri(subj, grid, "T1")
    t2, _ = render_mri(subj, grid, "T2")

    def pick_axial(struct_list):
        counts = np.isin(smap, struct_list).sum(axis=(1, 2))
        return int(np.argmax(counts)) if counts.max() > 0 else smap.shape[0] // 2

    z_kid = pick_axial([S.KIDNEY_R, S.KIDNEY_L, S.PANCREAS])
    z_liv = pick_axial([S.LIVER, S.SPLEEN, S.STOMACH])
    y_cor = int(np.argmax(np.isin(smap, [S.KIDNEY_R, S.KIDNEY_L, S.LIVER]).sum(axis=(0, 2))))
    views = [("axial (kidneys)", lambda a: a[z_kid], spacing[1] / spacing[2]),
             ("axial (liver)", lambda a: a[z_liv], spacing[1] / spacing[2]),
             ("coronal", lambda a: a[::-1, y_cor], spacing[0] / spacing[2])]
    mods = [("CT (W400 L40)", ct, (-160, 240)), ("MRI T1-like", t1, None), ("MRI T2-like", t2, None)]
    fig, axes = plt.subplots(len(views), 2 * len(mods), figsize=(4 * len(mods) * 1.3, 3.2 * len(views)))
    for r, (vname, take, aspect) in enumerate(views):
        lab = take(smap)
        for c, (mname, vol, win) in enumerate(mods):
            sl = take(vol).astype(np.float32)
            if win is None:
                win = (0.0, float(np.percentile(vol, 99.5)))
            for k in range(2):
                ax = axes[r, 2 * c + k]
                ax.imshow(sl, cmap="gray", vmin=win[0], vmax=win[1], aspect=aspect, interpolation="nearest")
                if k == 1:
                    ax.imshow(_overlay_rgba(lab), aspect=aspect, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(mname + (" + labels" if k else ""), fontsize=9)
            if c == 0:
                axes[r, 0].set_ylabel(vname, fontsize=9)
    fig.suptitle(f"nnssl phantom seed={seed} case={case}: {subj.phase} phase, habitus {subj.habitus:.2f}; "
                 f"{size} voxels at {spacing} mm", fontsize=10)
    from matplotlib.patches import Patch

    names = {}
    for struct, colour in OVERLAY.items():
        key = struct.name.lower().replace("_r", "").replace("_l", "").replace("_tumour", " tumour")
        key = "tumour" if "tumour" in key else key
        names.setdefault(key, colour)
    fig.legend(handles=[Patch(color=c, alpha=0.6, label=n.replace("_", " ")) for n, c in names.items()],
               loc="lower center", ncol=len(names), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    try:
        atomic_write(png_path, lambda f: fig.savefig(f, format="png", dpi=90))
    finally:
        plt.close(fig)
    return png_path
