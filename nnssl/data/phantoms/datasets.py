"""The six default phantom datasets and writing them as nnU-Net v2 raw datasets.

Layout written (nnU-Net v2 raw):
    $nnUNet_raw/DatasetXXX_Name/imagesTr/<case>_0000.nii.gz
                               /labelsTr/<case>.nii.gz          (labelled datasets only)
                               /dataset.json                    (channel_names, labels, numTraining, file_ending,
                                                                 nnssl_structure_groups; images-only: images_only)
Each dataset is written into a hidden temporary folder next to its destination and renamed into place when
complete, so a crash or Ctrl-C never leaves a half-written dataset.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from nnssl.data.phantoms.anatomy import S, Subject, make_subject
from nnssl.data.phantoms.ct import render_ct
from nnssl.data.phantoms.fields import Grid, validate_size, validate_spacing
from nnssl.data.phantoms.mri import render_mri
from nnssl.io import pid_alive

GROUPS = ("small", "large", "gastrointestinal", "tumour")
FILE_ENDING = ".nii.gz"


@dataclass(frozen=True)
class LabelDef:
    """One label of a phantom dataset: name and id in dataset.json, the structures it covers, its structure group."""

    name: str
    id: int
    structs: tuple[int, ...]  # internal structure ids (anatomy.S) mapped to this label
    group: str  # small | large | gastrointestinal | tumour


@dataclass(frozen=True)
class DatasetSpec:
    """One default phantom dataset: id, name, modality, labels (none: images-only), case count and grid."""

    id: int
    name: str
    modality: str  # "CT" or "MRI" (the nnU-Net channel name: CT -> CT normalisation, MRI -> z-score)
    labels: tuple[LabelDef, ...]  # empty: images-only dataset
    cases: int
    size: tuple[int, int, int]  # (D, H, W) voxels
    spacing: tuple[float, float, float]  # (z, y, x) mm
    region: str  # abdomen | thorax | mixed
    sequence: str | None = None  # MRI: "T1" or "T2"
    tumour_hosts: tuple[str, ...] = ()
    description: str = ""

    @property
    def images_only(self) -> bool:
        """True when the dataset has no labels (written without labelsTr, for pretraining)."""
        return not self.labels

    def folder_name(self, dataset_id: int | None = None) -> str:
        """``DatasetXXX_Name`` under ``dataset_id`` (default: the spec's own id)."""
        return f"Dataset{(self.id if dataset_id is None else dataset_id):03d}_{self.name}"

    def label_lut(self) -> np.ndarray:
        """(256,) uint8 lookup from structure id to label id."""
        lut = np.zeros(256, np.uint8)
        for lab in self.labels:
            lut[list(lab.structs)] = lab.id
        return lut

    def labels_json(self) -> dict[str, int]:
        """dataset.json ``labels``: background 0, then label name -> id."""
        return {"background": 0, **{lab.name: lab.id for lab in self.labels}}

    def structure_groups(self) -> dict[str, list[str]]:
        """dataset.json ``nnssl_structure_groups``: group (small, large, ...) -> label names."""
        return {g: [lab.name for lab in self.labels if lab.group == g] for g in GROUPS}


ORGAN_LABELS = (
    LabelDef("liver", 1, (S.LIVER, S.LIVER_TUMOUR), "large"),
    LabelDef("spleen", 2, (S.SPLEEN,), "large"),
    LabelDef("kidney_right", 3, (S.KIDNEY_R, S.KIDNEY_R_TUMOUR), "large"),
    LabelDef("kidney_left", 4, (S.KIDNEY_L, S.KIDNEY_L_TUMOUR), "large"),
    LabelDef("stomach", 5, (S.STOMACH,), "gastrointestinal"),
    LabelDef("pancreas", 6, (S.PANCREAS,), "gastrointestinal"),
    LabelDef("gallbladder", 7, (S.GALLBLADDER,), "small"),
    LabelDef("adrenal_glands", 8, (S.ADRENAL_R, S.ADRENAL_L), "small"),
    LabelDef("aorta", 9, (S.AORTA,), "large"),
    LabelDef("vertebrae", 10, (S.VERTEBRA,), "large"),
)
CT_SIZE, CT_SPACING = (64, 64, 64), (5.0, 5.0, 5.0)
MRI_SIZE, MRI_SPACING = (48, 64, 64), (6.0, 5.0, 5.0)

DATASETS: dict[int, DatasetSpec] = {s.id: s for s in (
    DatasetSpec(900, "PhantomCTPretrain", "CT", (), 40, CT_SIZE, CT_SPACING, "mixed",
                description="Images-only CT phantoms (thorax to abdomen, all contrast phases) for pretraining."),
    DatasetSpec(901, "PhantomCTOrgans", "CT", ORGAN_LABELS, 20, CT_SIZE, CT_SPACING, "abdomen",
                description="CT abdominal multi-organ segmentation phantoms."),
    DatasetSpec(902, "PhantomMRIOrgans", "MRI", ORGAN_LABELS, 20, MRI_SIZE, MRI_SPACING, "abdomen", "T1",
                description="T1-like MRI abdominal multi-organ segmentation phantoms (same label set as 901)."),
    DatasetSpec(903, "PhantomCTLiverTumour", "CT", (
        LabelDef("liver", 1, (S.LIVER,), "large"), LabelDef("liver_tumour", 2, (S.LIVER_TUMOUR,), "tumour")),
        20, CT_SIZE, CT_SPACING, "abdomen", tumour_hosts=("liver",),
        description="CT liver and liver-tumour segmentation phantoms."),
    DatasetSpec(904, "PhantomCTLungTumour", "CT", (
        LabelDef("lung", 1, (S.LUNG_R, S.LUNG_L), "large"), LabelDef("lung_tumour", 2, (S.LUNG_TUMOUR,), "tumour")),
        20, CT_SIZE, CT_SPACING, "thorax", tumour_hosts=("lung",),
        description="CT lung and lung-nodule/tumour segmentation phantoms (field of view on the lower thorax)."),
    DatasetSpec(905, "PhantomMRITumour", "MRI", (
        LabelDef("liver", 1, (S.LIVER,), "large"), LabelDef("liver_tumour", 2, (S.LIVER_TUMOUR,), "tumour"),
        LabelDef("kidney", 3, (S.KIDNEY_R, S.KIDNEY_L), "large"),
        LabelDef("kidney_tumour", 4, (S.KIDNEY_R_TUMOUR, S.KIDNEY_L_TUMOUR), "tumour")),
        20, MRI_SIZE, MRI_SPACING, "abdomen", "T2", tumour_hosts=("liver", "kidney"),
        description="T2-like MRI liver and kidney tumour segmentation phantoms."),
)}


def resolve_dataset(key: str | int) -> tuple[DatasetSpec, int]:
    """'901', 901, 'Dataset901_PhantomCTOrgans', 'PhantomCTOrgans' -> (spec, 901); 'SRC:DST' (e.g. '901:511')
    writes spec SRC under dataset id DST."""
    text = str(key).strip()
    dest: int | None = None
    if ":" in text:
        text, _, d = text.partition(":")
        if not d.strip().isdigit() or not 1 <= int(d) <= 999:
            raise ValueError(f"destination dataset id in {key!r} must be an integer 1-999")
        dest = int(d)
    spec = None
    if text.isdigit():
        spec = DATASETS.get(int(text))
    else:
        m = re.fullmatch(r"Dataset(\d{3})_(\w+)", text)
        for s in DATASETS.values():
            if text == s.name or (m and int(m.group(1)) == s.id and m.group(2) == s.name):
                spec = s
    if spec is None:
        known = ", ".join(f"{s.id} ({s.name})" for s in DATASETS.values())
        raise ValueError(f"unknown phantom dataset {key!r}; choose from {known}")
    return spec, (spec.id if dest is None else dest)


def case_grid(spec: DatasetSpec, subject: Subject, size=None, spacing=None) -> Grid:
    """The voxel grid of one case, centred on the subject's field of view (``size``/``spacing`` override the spec's)."""
    size = spec.size if size is None else validate_size(size)
    spacing = spec.spacing if spacing is None else validate_spacing(spacing)
    return Grid(size, spacing, subject.fov_center)


def render_case(dataset: DatasetSpec | int | str, case: int, seed: int = 0, size=None, spacing=None
                ) -> tuple[np.ndarray, np.ndarray | None, Grid]:
    """One case of a phantom dataset, deterministic in (seed, dataset, case).

    Returns (image int16 (D, H, W): HU for CT, arbitrary-scale signal for MRI; label map uint8 (D, H, W) or None
    for images-only datasets; the grid (spacing, origin))."""
    spec = dataset if isinstance(dataset, DatasetSpec) else resolve_dataset(dataset)[0]
    subj = make_subject(seed, case, dataset=spec.id, region=spec.region, tumour_hosts=spec.tumour_hosts)
    grid = case_grid(spec, subj, size, spacing)
    if spec.modality == "CT":
        img, smap = render_ct(subj, grid)
    else:
        img, smap = render_mri(subj, grid, spec.sequence or "T1")
    return img, (None if spec.images_only else spec.label_lut()[smap]), grid


def _write_nifti(arr: np.ndarray, grid: Grid, path: Path) -> None:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(tuple(float(s) for s in grid.spacing[::-1]))  # SimpleITK order is (x, y, z)
    img.SetOrigin(tuple(float(o) for o in grid.origin[::-1]))
    sitk.WriteImage(img, str(path), useCompression=True)


def dataset_json(spec: DatasetSpec, dataset_id: int, n: int, seed: int, size, spacing) -> dict:
    """The dataset.json of ``spec`` written as ``dataset_id`` with ``n`` cases, recording how they were generated."""
    d = {
        "channel_names": {"0": spec.modality},
        "labels": spec.labels_json(),
        "numTraining": n,
        "file_ending": FILE_ENDING,
        "name": spec.folder_name(dataset_id),
        "description": spec.description,
        "reference": "nnssl procedural phantom (nnssl_phantoms); synthetic, no patient data",
        "licence": "CC0",
    }
    if spec.images_only:
        d["images_only"] = True
    else:
        d["nnssl_structure_groups"] = spec.structure_groups()
    d["nnssl_phantom"] = {"source_dataset": spec.id, "seed": seed, "size": list(size), "spacing": list(spacing),
                          "modality": spec.modality, "sequence": spec.sequence, "region": spec.region,
                          "tumour_hosts": list(spec.tumour_hosts)}
    return d


def _check_target(raw_dir: Path) -> None:
    if raw_dir.exists() and not raw_dir.is_dir():
        raise NotADirectoryError(f"nnUNet_raw target {raw_dir} exists but is not a folder")
    try:
        raw_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PermissionError(f"cannot create the raw-data folder {raw_dir}: {e.strerror}; choose a writable --raw "
                              f"folder or fix its permissions") from None
    if not os.access(raw_dir, os.W_OK | os.X_OK):
        raise PermissionError(f"raw-data folder {raw_dir} is not writable; choose another --raw folder or fix its "
                              f"permissions")


def write_datasets(raw_dir: Path | str, datasets: list[str | int] | None = None, cases: int | None = None,
                   size: tuple[int, int, int] | int | None = None, spacing: tuple[float, float, float] | None = None,
                   seed: int = 0, overwrite: bool = False, progress: bool = True) -> list[Path]:
    """Write phantom datasets as nnU-Net v2 raw datasets under `raw_dir`; returns the dataset folders.

    datasets: ids/names (default: all of DATASETS); 'SRC:DST' writes dataset SRC under id DST.
    cases, size (D, H, W) or int, spacing (z, y, x) mm: override every chosen dataset's defaults.
    An existing dataset with the same id (any name) is an error unless overwrite=True. Everything is validated
    before anything is written."""
    if isinstance(datasets, (str, int)):
        datasets = [datasets]
    plan = [resolve_dataset(k) for k in (list(DATASETS) if datasets is None else datasets)]
    if not plan:
        raise ValueError("no datasets chosen")
    dest_ids = [d for _, d in plan]
    dup = sorted({d for d in dest_ids if dest_ids.count(d) > 1})
    if dup:
        raise ValueError(f"dataset id(s) {dup} requested more than once; give each dataset its own id (SRC:DST)")
    if cases is not None and (isinstance(cases, bool) or not isinstance(cases, (int, np.integer)) or cases < 1):
        raise ValueError(f"cases must be a positive integer, got {cases!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    size = None if size is None else validate_size(size)
    spacing = None if spacing is None else validate_spacing(spacing)
    for spec, _ in plan:  # validates the field of view of every dataset before writing anything
        Grid(spec.size if size is None else size, spec.spacing if spacing is None else spacing)

    raw_dir = Path(raw_dir).expanduser()
    _check_target(raw_dir)
    removed = remove_stale_temp_folders(raw_dir)
    if removed:
        print(f"note: removed {len(removed)} partial dataset folder(s) of interrupted runs: "
              f"{', '.join(p.name for p in removed)}")
    existing = {}
    for _, d in plan:
        found = sorted(p for p in raw_dir.glob(f"Dataset{d:03d}_*") if p.is_dir())
        if found and not overwrite:
            raise FileExistsError(f"dataset id {d} already exists: {found[0]}; pass --overwrite (overwrite=True) to "
                                  f"replace it, or write under another id with -d SRC:NEWID")
        existing[d] = found

    total = sum(cases or spec.cases for spec, _ in plan)
    out: list[Path] = []
    bar = tqdm(total=total, disable=not progress, unit="case", desc="phantoms")
    try:
        for spec, d in plan:
            n = cases or spec.cases
            out.append(_write_one(raw_dir, spec, d, n, seed, size, spacing, existing[d], bar))
    finally:
        bar.close()
    return out


#: ``.<DatasetXXX_Name>.tmp-<pid>-<hex>``: the hidden folder a dataset is written into before it is renamed into place.
_TEMP_FOLDER = re.compile(r"^\.Dataset\d{3}_.+\.tmp-(?P<pid>\d+)-[0-9a-f]+$")


def remove_stale_temp_folders(raw_dir: Path) -> list[Path]:
    """Delete the hidden temporary dataset folders of writers that were killed (their pid is gone on this host)."""
    removed = []
    for entry in raw_dir.iterdir() if raw_dir.is_dir() else []:
        m = _TEMP_FOLDER.match(entry.name)
        if m and entry.is_dir() and int(m.group("pid")) != os.getpid() and not pid_alive(int(m.group("pid"))):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def _write_one(raw_dir: Path, spec: DatasetSpec, dataset_id: int, n: int, seed: int, size, spacing,
               existing: list[Path], bar: tqdm) -> Path:
    final = raw_dir / spec.folder_name(dataset_id)
    tmp = raw_dir / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    bar.set_description(final.name)
    eff_size = spec.size if size is None else size
    eff_spacing = spec.spacing if spacing is None else spacing
    try:
        (tmp / "imagesTr").mkdir(parents=True)
        if not spec.images_only:
            (tmp / "labelsTr").mkdir()
        seen = np.zeros(256, bool)
        for i in range(n):
            case_id = f"{spec.name}_{i:04d}"
            img, lab, grid = render_case(spec, i, seed, eff_size, eff_spacing)
            _write_nifti(img, grid, tmp / "imagesTr" / f"{case_id}_0000{FILE_ENDING}")
            if lab is not None:
                _write_nifti(lab, grid, tmp / "labelsTr" / f"{case_id}{FILE_ENDING}")
                seen[np.unique(lab)] = True
            bar.update(1)
        missing = [lab.name for lab in spec.labels if not seen[lab.id]]
        if missing:
            warnings.warn(f"{final.name}: label(s) {missing} appear in no case at size {eff_size} and spacing "
                          f"{eff_spacing} mm; the field of view or resolution is too small for them", stacklevel=3)
        js = dataset_json(spec, dataset_id, n, seed, eff_size, eff_spacing)
        (tmp / "dataset.json").write_text(json.dumps(js, indent=2) + "\n", encoding="utf-8")
        # swap in: move old datasets with this id aside, rename the new one into place, then delete the old ones
        trash = []
        for old in existing:
            t = raw_dir / f".{old.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(old, t)
            trash.append(t)
        os.rename(tmp, final)
        for t in trash:
            shutil.rmtree(t, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
