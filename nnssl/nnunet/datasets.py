"""Finding nnU-Net dataset folders (``DatasetXXX_Name``) from an id or a name, in one of nnU-Net's three roots.

One lookup for every command: the planner resolves raw datasets, pretraining and ``nnssl_attach`` preprocessed ones,
the report result folders. Errors name the folder searched and the command that creates what is missing.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

DATASET_RE = re.compile(r"^Dataset(\d{3})_(.+)$")

#: root variable -> the command that fills it (used in "not found" messages)
_CREATED_BY = {
    "nnUNet_raw": "create the dataset (e.g. `nnssl_phantoms -d {d}`) or fix -d",
    "nnUNet_preprocessed": "it is not preprocessed yet: run `nnssl_plan_and_preprocess -d {d}` first (or check "
                           "nnUNet_preprocessed)",
    "nnUNet_results": "train it first (nnUNetv2_train {d} ...) or check nnUNet_results",
}


class DatasetNotFoundError(ValueError):
    """No (or more than one) dataset folder matches an id; the message names the fix."""


def env_root(variable: str) -> Path:
    """The folder an nnU-Net root variable names; a clear error when it is unset."""
    value = os.environ.get(variable)
    if not value:
        raise DatasetNotFoundError(f"{variable} is not set: export {variable}=/path/to/{variable} (see nnU-Net's "
                                   "documentation/setting_up_paths.md)")
    return Path(value)


def dataset_id(name: str) -> int:
    """``Dataset901_CTOrgans`` -> 901 (ValueError for other names)."""
    m = DATASET_RE.match(name)
    if m is None:
        raise ValueError(f"{name!r} is not a DatasetXXX_Name folder name")
    return int(m.group(1))


def dataset_folder(dataset: int | str, variable: str = "nnUNet_preprocessed", root: Path | None = None) -> Path:
    """The folder of ``dataset`` (an id such as 901 or "901", or a name such as "Dataset901_CTOrgans") under ``root``
    (default: the folder the nnU-Net variable ``variable`` names). Raises DatasetNotFoundError naming what exists and
    how to create the dataset when there is no single match.
    """
    root = Path(root) if root is not None else env_root(variable)
    fix = _CREATED_BY.get(variable, "check the dataset id").format(d=dataset)
    text = str(dataset)
    if text.startswith("Dataset"):
        folder = root / text
        if folder.is_dir():
            return folder
        raise DatasetNotFoundError(f"dataset {text} does not exist in {variable}={root}: {fix}")
    try:
        did = int(text)
    except ValueError:
        raise DatasetNotFoundError(f"{dataset!r} is neither a dataset id (e.g. 501) nor a name (Dataset501_X)") \
            from None
    prefix = f"Dataset{did:03d}_"
    matches = sorted(p for p in root.glob(prefix + "*") if p.is_dir()) if root.is_dir() else []
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise DatasetNotFoundError(f"dataset id {did} is ambiguous in {variable}={root}: "
                                   f"{', '.join(m.name for m in matches)}. Rename or remove one.")
    available = sorted(p.name for p in root.iterdir() if p.is_dir() and DATASET_RE.match(p.name)) \
        if root.is_dir() else []
    raise DatasetNotFoundError(f"unknown dataset id {did}: no folder {prefix}* in {variable}={root} (available: "
                               f"{', '.join(available) or 'none'}); {fix}")


__all__ = ["DATASET_RE", "DatasetNotFoundError", "dataset_folder", "dataset_id", "env_root"]
