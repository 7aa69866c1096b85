"""Procedural CT and MRI torso phantoms written as nnU-Net v2 raw datasets (the project's built-in data).

Public API:
    DATASETS, DatasetSpec, write_datasets(raw_dir, datasets=None, cases=None, size=None, spacing=None, seed=0,
    overwrite=False, progress=True) -> list[Path]
    make_subject(seed, case, dataset=0, region="abdomen", tumour_hosts=()) -> Subject
    render_ct(subject, grid) / render_mri(subject, grid, "T1"|"T2") -> (image int16, structure map uint8)
    render_case(dataset, case, seed=0, size=None, spacing=None) -> (image, labels | None, grid)
    write_preview(png_path, seed=0, size=(96, 128, 128)) -> Path
See documentation/phantoms.md.
"""
from nnssl.data.phantoms.anatomy import S, Subject, make_subject
from nnssl.data.phantoms.ct import render_ct
from nnssl.data.phantoms.datasets import DATASETS, DatasetSpec, LabelDef, render_case, resolve_dataset, write_datasets
from nnssl.data.phantoms.fields import Grid
from nnssl.data.phantoms.mri import render_mri


def write_preview(png_path, seed: int = 0, size=(96, 128, 128), spacing=(2.5, 2.5, 2.5), case: int = 0):
    """See nnssl.data.phantoms.preview.write_preview (imported lazily: matplotlib is only needed for the preview)."""
    from nnssl.data.phantoms.preview import write_preview as _write_preview

    return _write_preview(png_path, seed=seed, size=size, spacing=spacing, case=case)


__all__ = ["DATASETS", "DatasetSpec", "Grid", "LabelDef", "S", "Subject", "make_subject", "render_case",
           "render_ct", "render_mri", "resolve_dataset", "write_datasets", "write_preview"]
