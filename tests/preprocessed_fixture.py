"""A tiny nnU-Net preprocessed dataset written directly with nnU-Net's blosc2 dataset class (no planning run).

Pretraining tests use it to exercise the reader, the loop and the CLI in seconds; the full
plan-and-preprocess path is covered by the nnU-Net integration tests.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def write_preprocessed_dataset(root: Path, dataset_id: int = 990, name: str = "ToyCT", cases: int = 3,
                               shape: tuple[int, int, int] = (48, 48, 48), plans: str = "nnUNetSwinPlans",
                               channels: int = 1, seed: int = 0, organ_contrast: float = 1.0,
                               noise: float = 0.1, constant: bool = False) -> Path:
    """Write Dataset<id>_<name> under ``root`` (nnUNet_preprocessed) with plans and blosc2 cases; returns the folder.

    Each case is a body (0.5; -2 outside) holding an organ (label 1) ``organ_contrast`` brighter, plus Gaussian noise
    of SD ``noise``: a low contrast under strong noise makes the organ hard to see for a random encoder.
    ``constant``: every image all zero (a broken dataset).
    """
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

    folder = Path(root) / f"Dataset{dataset_id:03d}_{name}"
    data_dir = folder / f"{plans}_3d_fullres"
    data_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    for i in range(cases):
        c = rng.uniform(-0.3, 0.3, 3)
        body = ((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) < 0.5
        organ = ((zz - c[0]) ** 2 + (yy - c[1] - 0.2) ** 2 + (xx - c[2]) ** 2) < 0.08
        img = np.where(body, 0.5, -2.0) + np.where(organ, organ_contrast, 0.0) + noise * rng.standard_normal(shape)
        if constant:
            img = np.zeros(shape)
        data = np.repeat(img[None].astype(np.float32), channels, axis=0)
        seg = organ[None].astype(np.int8)
        nnUNetDatasetBlosc2.save_case(data, seg, {"spacing": [2.0, 2.0, 2.0]}, str(data_dir / f"case_{i:03d}"),
                                      chunks=(1, *shape), blocks=(1, 16, 16, 16))
    plans_json = {
        "dataset_name": folder.name,
        "plans_name": plans,
        "nnssl_plans": True,
        "configurations": {"3d_fullres": {
            "data_identifier": f"{plans}_3d_fullres",
            "spacing": [2.0, 2.0, 2.0],
            "patch_size": [32, 32, 32],
            "normalization_schemes": ["CTNormalization"] * channels,
        }},
        "foreground_intensity_properties_per_channel": {str(c): {"mean": 40.0, "std": 50.0} for c in range(channels)},
    }
    (folder / f"{plans}.json").write_text(json.dumps(plans_json))
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {str(c): "CT" for c in range(channels)}, "labels": {"background": 0, "organ": 1},
        "numTraining": cases, "file_ending": ".nii.gz"}))
    return folder
