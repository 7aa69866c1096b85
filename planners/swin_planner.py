"""SwinExperimentPlanner: nnU-Net's planning with a patch size and batch size a SwinUNETR can take.

Rules (documented in documentation/nnunet_integration.md):

* Spacing, transpose, normalisation and resampling are nnU-Net's defaults (inherited unchanged), so the
  preprocessed data of nnU-Net's default ``nnUNetPlans`` can be reused (see ``_maybe_reuse_default_data``).
* Patch size: every axis a multiple of 32 (Swin: stride-2 patch embedding + four stride-2 patch mergings).
  Aim: a patch of ``96^3`` voxels (the SwinUNETR paper's crop, Hatamizadeh et al. 2022) for the base encoder at
  nnU-Net's default 8 GB memory target; the voxel budget scales with the memory target and inversely with the
  encoder's cost (so a tiny encoder or a larger target gets a larger patch). The shape follows nnU-Net's aspect rule
  (proportional to 1/spacing, i.e. roughly isotropic in mm), each axis at least 64 and at most the median image
  shape rounded up to 32 ("never larger than needed to cover the median image"); exception: when every axis would
  be 32, the longest becomes 64, because SwinUNETR's bottleneck (patch/32) needs more than one voxel.
* Batch size: as many patches as the budget allows, at least 2 (nnU-Net's minimum) and at most what covers 5% of the
  dataset's voxels per step (nnU-Net's overfitting cap).
"""
from __future__ import annotations

import itertools
import math
from copy import deepcopy
from typing import Any, Sequence

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import isdir, isfile, join, load_json, subfiles

from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape

from nnssl.nnunet.naming import DEFAULT_PLANS, SWIN_PLANS
from nnssl.nnunet.plans import ENCODER_KEY, PLANS_MARKER

#: Swin needs every patch axis divisible by this.
SWIN_DIVISOR = 32
#: The paper's crop edge (SwinUNETR, Hatamizadeh et al. 2022; SMIT, Jiang et al. 2022).
REFERENCE_EDGE = 96
#: nnU-Net's reference memory target (GB) for which the reference patch and batch size 2 are assumed to fit.
REFERENCE_GB = 8.0
#: Smallest patch edge wanted "when the image allows".
MIN_EDGE = 64
#: The 32-voxel grid moves an axis in steps of up to 50%; candidates up to this factor above the voxel budget are
#: accepted so that symmetric shapes are not broken for a few percent (the memory model is coarse anyway).
ROUNDING_TOLERANCE = 1.2
#: Upper bound of the patch volume (nnU-Net's own initial patch volume).
MAX_PATCH_VOXELS = 256 ** 3

SWIN_PLANS_IDENTIFIER = SWIN_PLANS
DEFAULT_PLANS_IDENTIFIER = DEFAULT_PLANS


def encoder_cost(encoder: dict[str, Any]) -> float:
    """Memory cost of an encoder relative to the paper's base encoder (feature 48, depths 2,2,2,2) = 1.

    Activation memory grows linearly with the feature size and roughly with the number of Swin blocks plus the
    decoder's fixed share (counted as 4 blocks): cost = (F / 48) * (sum(depths) + 4) / 12.
    """
    return (float(encoder["feature_size"]) / 48.0) * (sum(encoder["depths"]) + 4) / 12.0


def _ideal_shape(aspect: np.ndarray, budget: float, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Continuous shape proportional to `aspect` with volume `budget`, clipped to [lo, hi] per axis; the volume
    freed or taken by clipped axes is redistributed over the free axes."""
    fixed = np.zeros(len(aspect), dtype=bool)
    shape = np.zeros(len(aspect))
    for _ in range(len(aspect) + 1):
        free = ~fixed
        rest = budget / np.prod(shape[fixed]) if fixed.any() else budget
        scale = (rest / np.prod(aspect[free])) ** (1.0 / free.sum())
        shape[free] = aspect[free] * scale
        clip = free & ((shape < lo) | (shape > hi))
        if not clip.any():
            break
        shape[clip] = np.clip(shape[clip], lo[clip], hi[clip])
        fixed |= clip
        if fixed.all():
            break
    return shape


def swin_patch_and_batch_size(spacing: Sequence[float], median_shape: Sequence[float], encoder: dict[str, Any],
                              gpu_memory_target_in_gb: float = REFERENCE_GB,
                              approximate_n_voxels_dataset: float | None = None,
                              max_dataset_covered: float = 0.05, min_batch_size: int = 2) -> tuple[list[int], int]:
    """Patch size (multiples of 32) and batch size for a SwinUNETR; see the module docstring for the rule.

    spacing and median_shape are in nnU-Net's transposed axis order; returns (patch_size, batch_size).
    """
    spacing = np.asarray(spacing, dtype=float)
    median_shape = np.asarray(median_shape, dtype=float)
    if len(spacing) != 3 or len(median_shape) != 3 or np.any(spacing <= 0) or np.any(median_shape <= 0):
        raise ValueError(f"need 3 positive spacings and shape entries, got spacing={spacing}, shape={median_shape}")
    if gpu_memory_target_in_gb <= 0:
        raise ValueError(f"gpu_memory_target_in_gb must be > 0, got {gpu_memory_target_in_gb}")
    cost = encoder_cost(encoder)
    # voxels per sample such that `min_batch_size` samples fit the memory target
    budget = REFERENCE_EDGE ** 3 * (gpu_memory_target_in_gb / REFERENCE_GB) / cost
    budget = min(budget, MAX_PATCH_VOXELS)

    hi = np.maximum(SWIN_DIVISOR, np.ceil(median_shape / SWIN_DIVISOR) * SWIN_DIVISOR)
    if np.all(hi == SWIN_DIVISOR):
        # SwinUNETR's bottleneck (patch / 32) must hold more than one voxel: its instance norm fails on 1x1x1 in
        # training. Tiny images therefore get 64 along their longest axis (nnU-Net pads the rest).
        hi[int(np.argmax(median_shape))] = 2 * SWIN_DIVISOR
    lo = np.minimum(MIN_EDGE, hi)
    ideal = _ideal_shape(1.0 / spacing, budget, lo, hi)

    # enumerate the (few) multiples of 32 per axis and keep the candidate closest to the ideal shape in log space
    options = [range(int(l), int(h) + 1, SWIN_DIVISOR) for l, h in zip(lo, hi)]
    best, best_key = None, None
    for cand in itertools.product(*options):
        vol = float(np.prod(cand))
        over = vol > budget * ROUNDING_TOLERANCE
        err = float(np.sum(np.log(np.asarray(cand) / ideal) ** 2))
        # feasible first, then closest to ideal, then larger volume
        key = (over, vol if over else 0.0, err, -vol)
        if best_key is None or key < best_key:
            best, best_key = cand, key
    patch = [int(i) for i in best]

    batch_size = int(math.floor(min_batch_size * budget / np.prod(patch, dtype=np.float64)))
    if approximate_n_voxels_dataset is not None:
        cap = round(approximate_n_voxels_dataset * max_dataset_covered / np.prod(patch, dtype=np.float64))
        batch_size = min(batch_size, cap)
    return patch, max(batch_size, min_batch_size)


def default_encoder_dict(preset: str = "base") -> dict[str, Any]:
    """The encoder preset as stored in the plans: EncoderConfig.to_dict() without in_channels (contract)."""
    from nnssl.encoders.swin import EncoderConfig

    d = EncoderConfig.preset(preset).to_dict()
    d.pop("in_channels", None)
    return d


class SwinExperimentPlanner(ExperimentPlanner):
    """nnU-Net planner for SwinUNETR: only 3d_fullres, Swin-compatible patch/batch size, nnssl markers.

    Writes plans ``nnUNetSwinPlans`` with top-level ``"nnssl_plans": true`` and
    ``configurations.3d_fullres.nnssl_encoder`` (the encoder architecture the trainers build).
    """

    def __init__(self, dataset_name_or_id: str | int, gpu_memory_target_in_gb: float = REFERENCE_GB,
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: str = SWIN_PLANS_IDENTIFIER,
                 overwrite_target_spacing: Sequence[float] | None = None, suppress_transpose: bool = False,
                 encoder: str | dict[str, Any] = "base") -> None:
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name, plans_name,
                         overwrite_target_spacing, suppress_transpose)
        self.encoder = default_encoder_dict(encoder) if isinstance(encoder, str) else dict(encoder)
        self.encoder.pop("in_channels", None)

    def get_plans_for_configuration(self, spacing, median_shape, data_identifier: str,
                                    approximate_n_voxels_dataset: float, _cache: dict) -> dict:
        """One 3D configuration: patch and batch size from ``swin_patch_and_batch_size``, the encoder under
        ``ENCODER_KEY``, and nnU-Net's own resampling and normalisation choices."""
        if len(spacing) != 3:
            raise ValueError("SwinExperimentPlanner only plans 3D configurations")
        patch_size, batch_size = swin_patch_and_batch_size(
            spacing, median_shape, self.encoder, self.UNet_vram_target_GB, approximate_n_voxels_dataset,
            self.max_dataset_covered, self.UNet_min_batch_size)
        resampling_data, resampling_data_kwargs, resampling_seg, resampling_seg_kwargs = self.determine_resampling()
        resampling_softmax, resampling_softmax_kwargs = self.determine_segmentation_softmax_export_fn()
        normalization_schemes, mask_is_used_for_norm = \
            self.determine_normalization_scheme_and_whether_mask_is_used_for_norm()
        return {
            "data_identifier": data_identifier,
            "preprocessor_name": self.preprocessor_name,
            "batch_size": batch_size,
            "patch_size": patch_size,
            "median_image_size_in_voxels": [float(i) for i in median_shape],
            "spacing": [float(i) for i in spacing],
            "normalization_schemes": normalization_schemes,
            "use_mask_for_norm": mask_is_used_for_norm,
            "resampling_fn_data": resampling_data.__name__,
            "resampling_fn_seg": resampling_seg.__name__,
            "resampling_fn_data_kwargs": resampling_data_kwargs,
            "resampling_fn_seg_kwargs": resampling_seg_kwargs,
            "resampling_fn_probabilities": resampling_softmax.__name__,
            "resampling_fn_probabilities_kwargs": resampling_softmax_kwargs,
            # Informational for nnU-Net's tools: the trainers build the network from "nnssl_encoder", and the
            # strides say what SwinUNETR does (patch embedding + 4 mergings, each stride 2).
            "architecture": {
                "network_class_name": "monai.networks.nets.SwinUNETR",
                "arch_kwargs": {"strides": [[1, 1, 1]] + [[2, 2, 2]] * 5},
                "_kw_requires_import": [],
            },
            "batch_dice": False,
            ENCODER_KEY: deepcopy(self.encoder),
        }

    def plan_experiment(self) -> dict:
        """Plan 3d_fullres only, mark the plans as Swin plans, reuse nnU-Net's preprocessed data when identical, save
        and return the plans."""
        transpose_forward, transpose_backward = self.determine_transpose()
        fullres_spacing = self.determine_fullres_target_spacing()
        spacing_t = fullres_spacing[transpose_forward]
        new_shapes = [compute_new_shape(j, i, fullres_spacing) for i, j in
                      zip(self.dataset_fingerprint["spacings"], self.dataset_fingerprint["shapes_after_crop"])]
        median_shape_t = np.median(new_shapes, 0)[transpose_forward]
        if median_shape_t[0] == 1:
            raise ValueError(f"{self.dataset_name} is a 2D dataset; Swin plans need 3D images.")
        n_voxels = float(np.prod(median_shape_t, dtype=np.float64) * self.dataset_json["numTraining"])
        config = self.get_plans_for_configuration(spacing_t, median_shape_t,
                                                  self.generate_data_identifier("3d_fullres"), n_voxels, {})
        median_spacing = np.median(self.dataset_fingerprint["spacings"], 0)[transpose_forward]
        median_shape = np.median(self.dataset_fingerprint["shapes_after_crop"], 0)[transpose_forward]

        import shutil
        shutil.copy(join(self.raw_dataset_folder, "dataset.json"),
                    join(nnUNet_preprocessed, self.dataset_name, "dataset.json"))
        plans = {
            "dataset_name": self.dataset_name,
            "plans_name": self.plans_identifier,
            "original_median_spacing_after_transp": [float(i) for i in median_spacing],
            "original_median_shape_after_transp": [int(round(i)) for i in median_shape],
            "image_reader_writer": self.determine_reader_writer().__name__,
            "transpose_forward": [int(i) for i in transpose_forward],
            "transpose_backward": [int(i) for i in transpose_backward],
            "configurations": {"3d_fullres": config},
            "experiment_planner_used": self.__class__.__name__,
            "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel":
                self.dataset_fingerprint["foreground_intensity_properties_per_channel"],
            PLANS_MARKER: True,
        }
        self._maybe_reuse_default_data(plans)
        self.plans = plans
        self.save_plans(plans)
        return plans

    def save_plans(self, plans: dict) -> None:
        """Write ``plans`` as ``<plans_identifier>.json`` in the dataset's preprocessed folder."""
        # nnU-Net's save_plans keeps foreign configurations of an existing file; ours holds 3d_fullres only, so
        # write it fresh (atomically) instead.
        import json
        import os

        from nnssl.io import atomic_write

        from nnunetv2.utilities.json_export import recursive_fix_for_json_export

        recursive_fix_for_json_export(plans)
        folder = join(nnUNet_preprocessed, self.dataset_name)
        os.makedirs(folder, exist_ok=True)
        target = join(folder, self.plans_identifier + ".json")
        atomic_write(target, lambda f: json.dump(plans, f, indent=4), binary=False)
        print(f"Plans were saved to {target}")

    #: configuration keys that decide the content of the preprocessed data
    _PREPROCESSING_KEYS = ("spacing", "normalization_schemes", "use_mask_for_norm", "resampling_fn_data",
                           "resampling_fn_seg", "resampling_fn_data_kwargs", "resampling_fn_seg_kwargs",
                           "preprocessor_name")

    def _maybe_reuse_default_data(self, plans: dict) -> None:
        """Point 3d_fullres at nnU-Net's default preprocessed data when it would be identical.

        If ``nnUNetPlans.json`` exists for this dataset and its 3d_fullres configuration preprocesses exactly as ours
        (same spacing, normalisation, mask use, resampling, transpose and intensity properties), our
        ``data_identifier`` becomes its ``nnUNetPlans_3d_fullres`` so the data is not stored twice. The patch size only
        changes blosc2 chunking, not the data.
        """
        default_file = join(nnUNet_preprocessed, self.dataset_name, DEFAULT_PLANS_IDENTIFIER + ".json")
        if self.plans_identifier == DEFAULT_PLANS_IDENTIFIER or not isfile(default_file):
            return
        default = load_json(default_file)
        dconf = default.get("configurations", {}).get("3d_fullres")
        if dconf is None or "data_identifier" not in dconf:
            return
        ours = plans["configurations"]["3d_fullres"]
        same = all(_equal(dconf.get(k), ours.get(k)) for k in self._PREPROCESSING_KEYS)
        same &= _equal(default.get("transpose_forward"), plans["transpose_forward"])
        same &= _equal(default.get("foreground_intensity_properties_per_channel"),
                       plans["foreground_intensity_properties_per_channel"])
        if same:
            ours["data_identifier"] = dconf["data_identifier"]
            print(f"Reusing nnU-Net's preprocessed data {dconf['data_identifier']} (same spacing, normalisation and "
                  f"resampling as {DEFAULT_PLANS_IDENTIFIER}).")


def _equal(a: Any, b: Any) -> bool:
    """Equality for JSON-like values with float tolerance (plans round-trip through JSON)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return set(map(str, a)) == set(map(str, b)) and all(
            _equal(a[k], b[k] if k in b else b[str(k)]) for k in a)
    if isinstance(a, (list, tuple, np.ndarray)) and isinstance(b, (list, tuple, np.ndarray)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float, np.number)) and isinstance(b, (int, float, np.number)) \
            and not isinstance(a, bool) and not isinstance(b, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)
    return a == b


def preprocessed_data_complete(dataset_name: str, data_identifier: str, case_ids: Sequence[str]) -> bool:
    """True when every case has its preprocessed .b2nd and .pkl in the configuration's data folder."""
    folder = join(nnUNet_preprocessed, dataset_name, data_identifier)
    if not isdir(folder):
        return False
    present = set(subfiles(folder, join=False))
    return all(f"{c}.b2nd" in present and f"{c}.pkl" in present for c in case_ids)
