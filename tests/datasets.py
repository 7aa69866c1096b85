"""Tiny generated nnU-Net raw datasets for tests: spheres and boxes in noise.

Not the phantom generator (nnssl/data/phantoms.py): just enough structure for a network to learn in a few steps and
for nnU-Net's planning/preprocessing to run. Labels: 1 = sphere, 2 = box. CT-like intensities in HU (air -1000 outside
a body ellipsoid, tissue ~40 HU, sphere ~120 HU, box ~-120 HU), or MRI-like arbitrary units.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk


def _case_arrays(rng: np.random.Generator, shape: Sequence[int], modality: str, n_channels: int
                 ) -> tuple[list[np.ndarray], np.ndarray]:
    zz, yy, xx = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    centre = np.array(shape, dtype=np.float32) / 2
    # body: an ellipsoid filling most of the volume, so cropping to nonzero does little
    body = (((zz - centre[0]) / (0.48 * shape[0])) ** 2 + ((yy - centre[1]) / (0.45 * shape[1])) ** 2
            + ((xx - centre[2]) / (0.45 * shape[2])) ** 2) <= 1
    seg = np.zeros(shape, dtype=np.uint8)
    # sphere (label 1) in one half, box (label 2) in the other, random size and position
    r = rng.uniform(0.12, 0.18) * min(shape)
    c1 = centre + rng.uniform(-0.1, 0.1, 3) * np.array(shape) - np.array([0, 0, 0.2 * shape[2]])
    sphere = ((zz - c1[0]) ** 2 + (yy - c1[1]) ** 2 + (xx - c1[2]) ** 2) <= r ** 2
    seg[sphere & body] = 1
    half = (rng.uniform(0.1, 0.15, 3) * np.array(shape)).astype(int) + 2
    c2 = (centre + rng.uniform(-0.1, 0.1, 3) * np.array(shape) + np.array([0, 0, 0.2 * shape[2]])).astype(int)
    sl = tuple(slice(max(0, c - h), c + h) for c, h in zip(c2, half))
    box = np.zeros(shape, dtype=bool)
    box[sl] = True
    seg[box & body & (seg == 0)] = 2

    images = []
    for ch in range(n_channels):
        if modality == "CT":
            img = np.full(shape, -1000.0, dtype=np.float32)
            img[body] = 40.0
            img[seg == 1] = 120.0 + 10 * ch
            img[seg == 2] = -120.0 - 10 * ch
            img += rng.normal(0, 15, shape).astype(np.float32)
        else:
            img = np.zeros(shape, dtype=np.float32)
            img[body] = 300.0
            img[seg == 1] = 600.0 if ch % 2 == 0 else 150.0
            img[seg == 2] = 100.0 if ch % 2 == 0 else 700.0
            img += np.abs(rng.normal(0, 20, shape)).astype(np.float32) * body
        images.append(img)
    return images, seg


def _write(arr: np.ndarray, path: Path, spacing_zyx: Sequence[float]) -> None:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing([float(s) for s in reversed(spacing_zyx)])  # SimpleITK spacing is (x, y, z)
    sitk.WriteImage(img, str(path))


def make_dataset(raw_root: str | Path, dataset_id: int, name: str = "Spheres", num_cases: int = 6,
                 shape: Sequence[int] = (40, 48, 44), spacing: Sequence[float] = (1.0, 1.0, 1.0),
                 modality: str = "CT", n_channels: int = 1, images_only: bool = False, seed: int = 0,
                 shapes: Sequence[Sequence[int]] | None = None) -> Path:
    """Write Dataset{id:03d}_{name} under raw_root in nnU-Net v2 raw layout; returns the dataset folder.

    shape/spacing are (z, y, x) as numpy arrays; `shapes` gives one shape per case (odd/varied shapes).
    images_only=True writes the images-only layout: imagesTr/ only and dataset.json "images_only": true.
    """
    if modality not in ("CT", "MRI"):
        raise ValueError(f"modality must be 'CT' or 'MRI', got {modality!r}")
    folder = Path(raw_root) / f"Dataset{dataset_id:03d}_{name}"
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    if not images_only:
        (folder / "labelsTr").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(num_cases):
        case_shape = tuple(shapes[i % len(shapes)]) if shapes is not None else tuple(shape)
        images, seg = _case_arrays(rng, case_shape, modality, n_channels)
        for ch, img in enumerate(images):
            _write(img, folder / "imagesTr" / f"case_{i:03d}_{ch:04d}.nii.gz", spacing)
        if not images_only:
            _write(seg, folder / "labelsTr" / f"case_{i:03d}.nii.gz", spacing)
    channel_name = "CT" if modality == "CT" else "MRI"
    dataset_json = {
        "channel_names": {str(c): (channel_name if c == 0 else f"{channel_name}{c}") for c in range(n_channels)},
        "labels": {"background": 0} if images_only else {"background": 0, "sphere": 1, "box": 2},
        "numTraining": num_cases,
        "file_ending": ".nii.gz",
    }
    if modality == "CT":
        # every CT channel must be normalised as CT (nnU-Net maps the channel name "CT" to CTNormalization)
        dataset_json["channel_names"] = {str(c): "CT" for c in range(n_channels)}
    if images_only:
        dataset_json["images_only"] = True
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    return folder


def nnunet_env(root: str | Path, fast: bool = True) -> dict[str, str]:
    """Environment for running nnU-Net on CPU in tests: temp nnUNet_* and nnssl_results folders under root (created),
    one process, nnssl's trainers on nnUNet_extTrainer, and (fast=True) the documented test knobs of the Swin
    trainers."""
    import os

    from nnssl.nnunet.environment import trainers_path

    root = Path(root)
    env = {}
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnssl_results"):
        (root / name).mkdir(parents=True, exist_ok=True)
        env[name] = str(root / name)
    env.update({"nnUNet_extTrainer": trainers_path(), "nnUNet_def_n_proc": "1", "nnUNet_n_proc_DA": "0",
                "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "nnUNet_compile": "false"})
    if fast:
        env.update({"NNSSL_ITERATIONS_PER_EPOCH": "1", "NNSSL_VAL_ITERATIONS_PER_EPOCH": "1",
                    "NNSSL_DISABLE_MIRRORING": "1"})
    return {**os.environ, **env}
