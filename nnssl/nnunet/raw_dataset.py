"""Checks of nnU-Net raw datasets before planning: dataset id, dataset.json, files. Errors name problem and fix."""
from __future__ import annotations

import json
import re
from pathlib import Path

from nnssl.nnunet.datasets import dataset_folder

REQUIRED_KEYS = ("channel_names", "labels", "numTraining", "file_ending")


def resolve_dataset_name(dataset_id: int) -> str:
    """DatasetXXX_Name under $nnUNet_raw for an integer id; ValueError listing what exists when it is unknown."""
    return dataset_folder(dataset_id, "nnUNet_raw").name


def load_dataset_json(folder: str | Path) -> dict:
    """Read and validate folder/dataset.json (labeled or images-only layout)."""
    folder = Path(folder)
    path = folder / "dataset.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: every nnU-Net raw dataset needs a dataset.json with "
                                f"{', '.join(REQUIRED_KEYS)}.")
    try:
        dj = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); fix the syntax.") from None
    if not isinstance(dj, dict):
        raise ValueError(f"{path} must hold a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in dj]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}; add them (see nnU-Net's dataset_format.md).")
    if not isinstance(dj["channel_names"], dict) or not dj["channel_names"]:
        raise ValueError(f"{path}: channel_names must map channel indices to names, e.g. {{\"0\": \"CT\"}}")
    if sorted(dj["channel_names"], key=str) != sorted(str(i) for i in range(len(dj["channel_names"]))):
        raise ValueError(f"{path}: channel_names keys must be \"0\"..\"{len(dj['channel_names']) - 1}\"")
    labels = dj["labels"]
    if not isinstance(labels, dict) or labels.get("background") != 0:
        raise ValueError(f"{path}: labels must be a dict with \"background\": 0 (got {labels!r})")
    if not isinstance(dj["numTraining"], int) or dj["numTraining"] < 1:
        raise ValueError(f"{path}: numTraining must be a positive integer (got {dj['numTraining']!r})")
    images_only = dj.get("images_only", False)
    if not isinstance(images_only, bool):
        raise ValueError(f"{path}: images_only must be true or false (got {images_only!r})")
    if images_only and len(labels) != 1:
        raise ValueError(f"{path}: an images-only dataset has no labels; set \"labels\": {{\"background\": 0}}")
    if not images_only and len(labels) < 2:
        raise ValueError(f"{path}: only a background label. For an unlabeled dataset set \"images_only\": true "
                         f"(and drop labelsTr); otherwise list the foreground labels.")
    if "dataset" not in dj:
        _check_files(folder, dj, images_only)
    return dj


def _check_files(folder: Path, dj: dict, images_only: bool) -> None:
    ending = dj["file_ending"]
    images = folder / "imagesTr"
    if not images.is_dir():
        raise FileNotFoundError(f"{images} is missing: put the training images there as CASE_XXXX{ending}")
    n_ch = len(dj["channel_names"])
    pattern = re.compile(r"(.+)_(\d{4})" + re.escape(ending) + "$")
    cases: dict[str, set[int]] = {}
    for f in images.iterdir():
        m = pattern.match(f.name)
        if m:
            cases.setdefault(m.group(1), set()).add(int(m.group(2)))
    if not cases:
        raise ValueError(f"{images} holds no files named CASE_XXXX{ending} (file_ending in dataset.json is {ending!r})")
    incomplete = [c for c, ch in cases.items() if ch != set(range(n_ch))]
    if incomplete:
        raise ValueError(f"{images}: case(s) {', '.join(sorted(incomplete)[:5])} lack some of the {n_ch} channel "
                         f"file(s) _0000.._{n_ch - 1:04d}{ending}")
    if len(cases) != dj["numTraining"]:
        raise ValueError(f"{folder / 'dataset.json'}: numTraining={dj['numTraining']} but imagesTr holds "
                         f"{len(cases)} cases; fix numTraining.")
    labels = folder / "labelsTr"
    if images_only:
        return
    if not labels.is_dir():
        raise FileNotFoundError(f"{labels} is missing. For an unlabeled dataset set \"images_only\": true in "
                                f"dataset.json; otherwise add the label files CASE{ending}.")
    missing = [c for c in cases if not (labels / f"{c}{ending}").is_file()]
    if missing:
        raise FileNotFoundError(f"{labels}: no label for case(s) {', '.join(sorted(missing)[:5])}")


class ImagesOnlyDatasetError(ValueError):
    """A fine-tuning trainer was given a dataset without labels."""


def require_labels(dataset_json: dict, dataset: str = "the dataset") -> None:
    """Raise ImagesOnlyDatasetError for an images-only dataset (``"images_only": true`` or only a background label):
    fine-tuning on it would train on empty targets at a NaN loss and crash at validation."""
    labels = dataset_json.get("labels") or {}
    if dataset_json.get("images_only") is True or len(labels) < 2:
        why = '"images_only": true' if dataset_json.get("images_only") is True else "no foreground label"
        raise ImagesOnlyDatasetError(
            f"{dataset} is images-only (dataset.json: {why}): it has no labels to fine-tune on. Pretrain on it "
            "(nnssl_pretrain -d ...) and fine-tune on a labeled dataset")
