"""One dataset through nnU-Net's fingerprinting, the Swin planner (nnUNetSwinPlans) and preprocessing.

Labeled datasets go through nnU-Net's own fingerprint extractor and preprocessor; images-only datasets (dataset.json
``"images_only": true``, the pretraining corpora) through ``nnssl_planners.images_only``. Complete or absent: a
failed first run leaves no dataset folder, a failed rerun restores the previous plans and drops the partly written
data folder, and a data folder counts as complete only once its completion record (``nnssl.data.preprocessed``) is
written last. ``nnssl_plan_and_preprocess`` is the command line over :func:`plan_and_preprocess`.
"""
from __future__ import annotations

import os
import shutil
import sys
from functools import partial
from pathlib import Path

#: the only configuration Swin plans hold (Swin needs 3D patches)
CONFIGURATION = "3d_fullres"


def plan_and_preprocess(dataset_id: int, encoder: str = "base", num_processes: int = 4,
                        num_processes_fingerprint: int = 8, verify: bool = False, clean: bool = False,
                        gpu_memory_target: float | None = None, preprocess: bool = True,
                        progress: bool = True) -> str:
    """Run the three steps for one dataset; returns the path of the written plans file."""
    from batchgenerators.utilities.file_and_folder_operations import join

    from nnssl.encoders.swin import PRESETS
    from nnssl.nnunet.environment import require_env
    from nnssl.nnunet.raw_dataset import load_dataset_json, resolve_dataset_name

    require_env(["nnUNet_raw", "nnUNet_preprocessed"])
    if encoder not in PRESETS:
        raise ValueError(f"unknown encoder preset {encoder!r}; choose one of {', '.join(PRESETS)}")
    if gpu_memory_target is not None and gpu_memory_target <= 0:
        raise ValueError(f"-gpu_memory_target must be > 0 GB, got {gpu_memory_target}")
    name = resolve_dataset_name(dataset_id)
    raw_folder = join(os.environ["nnUNet_raw"], name)
    dataset_json = load_dataset_json(raw_folder)

    # nnU-Net imports read nnUNet_def_n_proc etc. at import time: import after the checks
    from nnssl_planners.images_only import is_images_only

    images_only = is_images_only(dataset_json)
    print(f"{name}: {'images-only' if images_only else 'labeled'} dataset")
    pre_folder = join(os.environ["nnUNet_preprocessed"], name)
    created = not os.path.isdir(pre_folder)
    try:
        plans_file = _plan_and_preprocess(dataset_id, name, raw_folder, dataset_json, images_only, encoder,
                                          num_processes, num_processes_fingerprint, verify, clean, gpu_memory_target,
                                          preprocess, progress)
    except BaseException:
        if created and os.path.isdir(pre_folder):  # complete-or-absent: no dataset folder from a failed first run
            shutil.rmtree(pre_folder, ignore_errors=True)
        raise
    return plans_file


def _plan_and_preprocess(dataset_id: int, name: str, raw_folder: str, dataset_json: dict, images_only: bool,
                         encoder: str, num_processes: int, num_processes_fingerprint: int, verify: bool, clean: bool,
                         gpu_memory_target: float | None, preprocess: bool, progress: bool) -> str:
    from batchgenerators.utilities.file_and_folder_operations import join
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprint_dataset,
                                                                      plan_experiment_dataset, preprocess_dataset)
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    from nnssl_planners.images_only import (ImagesOnlyFingerprintExtractor, preprocess_images_only,
                                            verify_images_only_dataset)
    from nnssl_planners.swin_planner import SWIN_PLANS_IDENTIFIER, SwinExperimentPlanner, preprocessed_data_complete

    if images_only:
        if verify:
            verify_images_only_dataset(name)
        ImagesOnlyFingerprintExtractor(name, num_processes_fingerprint).run(overwrite_existing=clean)
    else:
        if verify:
            from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

            try:
                verify_dataset_integrity(raw_folder, num_processes_fingerprint)
            except (RuntimeError, AssertionError, FileNotFoundError) as e:
                raise ValueError(f"{name} failed nnU-Net's dataset integrity check: {e}. Fix the files named above "
                                 f"(labels, shapes, spacings, channels).") from None
        extract_fingerprint_dataset(dataset_id, num_processes=num_processes_fingerprint,
                                    check_dataset_integrity=False, clean=clean, verbose=False,
                                    show_progress_bar=progress)

    pre_folder = join(os.environ["nnUNet_preprocessed"], name)
    plans_file = join(pre_folder, SWIN_PLANS_IDENTIFIER + ".json")
    previous_plans = open(plans_file).read() if os.path.isfile(plans_file) else None
    data_folder = None
    try:
        plans, identifier = plan_experiment_dataset(
            dataset_id, partial(SwinExperimentPlanner, encoder=encoder), gpu_memory_target_in_gb=gpu_memory_target)
        data_identifier = plans["configurations"][CONFIGURATION]["data_identifier"]
        if preprocess:
            cases = sorted(get_filenames_of_train_images_and_targets(raw_folder, dataset_json))
            if not data_identifier.startswith(identifier + "_") and \
                    preprocessed_data_complete(name, data_identifier, cases):
                print(f"{data_identifier} is complete: nothing to preprocess.")
            else:
                data_folder = join(pre_folder, data_identifier)
                from nnssl.data.preprocessed import complete_marker_path

                complete_marker_path(Path(data_folder)).unlink(missing_ok=True)  # absent until complete again
                if images_only:
                    preprocess_images_only(name, identifier, CONFIGURATION, num_processes)
                else:
                    preprocess_dataset(dataset_id, identifier, [CONFIGURATION], [num_processes],
                                       show_progress_bar=progress)
            _finish_data_folder(name, Path(pre_folder) / data_identifier, cases)
            data_folder = None
    except BaseException:
        # leave nothing half-written: restore the previous plans, drop a partly written data folder
        if previous_plans is None:
            if os.path.isfile(plans_file):
                os.remove(plans_file)
        else:
            with open(plans_file, "w") as f:
                f.write(previous_plans)
        if data_folder is not None and os.path.isdir(data_folder):
            shutil.rmtree(data_folder)
        raise
    return plans_file


def _finish_data_folder(name: str, data_folder: Path, cases: list[str]) -> None:
    """Flag constant images (with their case names) and write the completion record last: pretraining refuses a
    data folder without it whose cases fall short of dataset.json (an interrupted preprocessing)."""
    from nnssl.data.preprocessed import constant_cases, read_complete_marker, write_complete_marker

    marker = read_complete_marker(data_folder)
    if marker is not None and sorted(marker["cases"]) == sorted(cases):
        constant = list(marker.get("constant_cases", []))
    else:
        constant = constant_cases(data_folder, cases)
        write_complete_marker(data_folder, cases, constant)
    if constant:
        names = ", ".join(constant[:10]) + (" ..." if len(constant) > 10 else "")
        if len(constant) == len(cases):
            what = f"every case of {name} has a constant image (e.g. all zero): pretraining will refuse it"
        else:
            what = f"{len(constant)} of {len(cases)} cases of {name} have a constant image (e.g. all zero)"
        print(f"warning: {what}: {names}. Such images carry no signal: check those files in nnUNet_raw",
              file=sys.stderr)
