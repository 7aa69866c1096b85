"""Fingerprinting and preprocessing of images-only (unlabeled) nnU-Net raw datasets.

Layout (see documentation/nnunet_integration.md): ``imagesTr/`` only (no ``labelsTr``), and a dataset.json with
``channel_names``, ``file_ending``, ``numTraining``, ``"labels": {"background": 0}`` and ``"images_only": true``.

nnU-Net's fingerprint extractor and preprocessor read a label file per case. Here no label file is read or written:
each case gets an all-zero label *in memory*, so a preprocessed images-only case looks exactly like a labeled one
(``case.b2nd``, ``case_seg.b2nd`` = 0 inside the image's nonzero region and -1 outside, ``case.pkl`` with an empty
``class_locations``). Nothing is written into the user's raw folder.

Intensity statistics ("foreground" in nnU-Net's sense) cannot come from labels. We use the body instead:
for CT channels the voxels above ``CT_BODY_THRESHOLD_HU`` (-500 HU, i.e. not air), for other channels the nonzero
voxels. CT normalisation then clips to the 0.5/99.5 percentiles of body tissue and z-scores with its mean/std.
"""
from __future__ import annotations

import json
import multiprocessing
from typing import Sequence, Type

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import isdir, isfile, join, load_json, maybe_mkdir_p
from tqdm import tqdm

from nnssl.io import atomic_write
from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
from nnunetv2.imageio.base_reader_writer import BaseReaderWriter
from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

#: CT voxels above this value count as body tissue for the intensity statistics of images-only CT datasets.
CT_BODY_THRESHOLD_HU = -500.0


def is_images_only(dataset_json: dict) -> bool:
    """True when dataset.json declares an images-only dataset ("images_only": true)."""
    return bool(dataset_json.get("images_only", False))


def _body_mask(image: np.ndarray, is_ct: bool) -> np.ndarray:
    return image > CT_BODY_THRESHOLD_HU if is_ct else image != 0


def analyze_images_only_case(image_files: Sequence[str], reader_writer_class: Type[BaseReaderWriter],
                             ct_channels: Sequence[bool], num_samples: int, seed: int = 1234) -> tuple:
    """Fingerprint of one unlabeled case: (shape after crop, spacing, sampled body intensities per channel,
    relative size after cropping). Mirrors what nnU-Net's extractor records for labeled cases."""
    images, props = reader_writer_class().read_images(list(image_files))
    if np.any(np.isnan(images)):
        raise ValueError(f"NaN voxels in {list(image_files)}: replace them before planning.")
    cropped, _, _ = crop_to_nonzero(images, None)
    rs = np.random.RandomState(seed)
    samples = []
    for c in range(len(cropped)):
        body = cropped[c][_body_mask(cropped[c], ct_channels[c])]
        samples.append(rs.choice(body, num_samples, replace=True) if body.size else np.zeros(0, np.float32))
    rel = float(np.prod(cropped.shape[1:]) / np.prod(images.shape[1:]))
    return cropped.shape[1:], props["spacing"], samples, rel


class ImagesOnlyFingerprintExtractor(DatasetFingerprintExtractor):
    """nnU-Net's dataset fingerprint for a dataset without labels (same JSON keys, body voxels as foreground)."""

    def run(self, overwrite_existing: bool = False) -> dict:
        """dataset_fingerprint.json from body voxels, written atomically (an existing one is read back unless
        ``overwrite_existing``); returns the fingerprint."""
        out_folder = join(nnUNet_preprocessed, self.dataset_name)
        maybe_mkdir_p(out_folder)
        fingerprint_file = join(out_folder, "dataset_fingerprint.json")
        if isfile(fingerprint_file) and not overwrite_existing:
            return load_json(fingerprint_file)
        first = next(iter(self.dataset.values()))["images"][0]
        rw = determine_reader_writer_from_dataset_json(self.dataset_json, first)
        channel_names = self.dataset_json["channel_names"]
        ct = [str(channel_names[k]).lower() == "ct" for k in sorted(channel_names, key=int)]
        per_case = max(1, int(self.num_foreground_voxels_for_intensitystats // len(self.dataset)))
        args = [(v["images"], rw, ct, per_case) for v in self.dataset.values()]
        if self.num_processes > 1:
            with multiprocessing.get_context("spawn").Pool(self.num_processes) as pool:
                results = list(tqdm(pool.starmap(analyze_images_only_case, args), total=len(args),
                                    desc="Extracting dataset fingerprint (images only)",
                                    disable=not self.show_progress_bar))
        else:
            results = [analyze_images_only_case(*a) for a in tqdm(args, desc="Extracting dataset fingerprint "
                                                                           "(images only)",
                                                                  disable=not self.show_progress_bar)]
        stats = {}
        for c in range(len(ct)):
            values = np.concatenate([r[2][c] for r in results])
            if values.size == 0:
                raise ValueError(f"channel {c} of {self.dataset_name} has no body voxels in any case "
                                 f"(all {'<= %g HU' % CT_BODY_THRESHOLD_HU if ct[c] else 'zero'}): check the images.")
            p005, median, p995 = np.percentile(values, (0.5, 50.0, 99.5))
            stats[c] = {"mean": float(values.mean()), "median": float(median), "std": float(values.std()),
                        "min": float(values.min()), "max": float(values.max()),
                        "percentile_99_5": float(p995), "percentile_00_5": float(p005)}
        fingerprint = {
            "spacings": [list(map(float, r[1])) for r in results],
            "shapes_after_crop": [list(map(int, r[0])) for r in results],
            "foreground_intensity_properties_per_channel": stats,
            "median_relative_size_after_cropping": float(np.median([r[3] for r in results])),
            "nnssl_images_only": True,
        }
        atomic_write(fingerprint_file, lambda f: json.dump(fingerprint, f, indent=4, sort_keys=True), binary=False)
        return fingerprint


class ImagesOnlyPreprocessor(DefaultPreprocessor):
    """nnU-Net's DefaultPreprocessor with an in-memory all-zero label per case (no label file is read)."""

    def run_case(self, image_files, seg_file, plans_manager, configuration_manager, dataset_json):
        """nnU-Net's ``run_case`` with an all-zero in-memory label of the image's size: (data, seg, properties)."""
        if isinstance(dataset_json, str):
            dataset_json = load_json(dataset_json)
        data, props = plans_manager.image_reader_writer_class().read_images(image_files)
        seg = np.zeros((1, *data.shape[1:]), dtype=np.int8)
        return self.run_case_npy(data, seg, props, plans_manager, configuration_manager, dataset_json)


def verify_images_only_dataset(dataset_name_or_id: int | str) -> None:
    """Integrity check for images-only datasets (nnU-Net's check needs labels): every case has every channel, the
    channels agree in shape and spacing, and there are no NaNs. Raises ValueError listing the problems."""
    name = maybe_convert_to_dataset_name(dataset_name_or_id)
    folder = join(nnUNet_raw, name)
    dataset_json = load_json(join(folder, "dataset.json"))
    dataset = get_filenames_of_train_images_and_targets(folder, dataset_json)
    n_ch = len(dataset_json["channel_names"])
    problems = []
    if len(dataset) != dataset_json["numTraining"]:
        problems.append(f"dataset.json says numTraining={dataset_json['numTraining']} but imagesTr holds "
                        f"{len(dataset)} cases")
    if not dataset:
        raise ValueError(f"{folder}/imagesTr holds no images ending in {dataset_json['file_ending']}")
    rw = determine_reader_writer_from_dataset_json(dataset_json, next(iter(dataset.values()))["images"][0])
    for case, entry in dataset.items():
        if len(entry["images"]) != n_ch:
            problems.append(f"case {case}: {len(entry['images'])} channel file(s), expected {n_ch} "
                            f"({case}_0000{dataset_json['file_ending']} ...)")
            continue
        images, _ = rw().read_images(entry["images"])
        if np.any(np.isnan(images)):
            problems.append(f"case {case}: NaN voxels")
    if problems:
        raise ValueError(f"images-only dataset {name} failed the integrity check:\n  " + "\n  ".join(problems))


def preprocess_images_only(dataset_name_or_id: int | str, plans_identifier: str, configuration: str,
                           num_processes: int) -> None:
    """nnU-Net's preprocessing of one configuration for an images-only dataset (no gt_segmentations copy)."""
    name = maybe_convert_to_dataset_name(dataset_name_or_id)
    if not isdir(join(nnUNet_raw, name)):
        raise FileNotFoundError(f"{join(nnUNet_raw, name)} does not exist")
    pp = ImagesOnlyPreprocessor(verbose=False)
    pp.run(name, configuration, plans_identifier, num_processes=num_processes)
