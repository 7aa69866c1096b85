"""SwinExperimentPlanner: Swin-compatible patch sizes (divisible by 32) on odd shapes and anisotropic spacings, small
images, batch sizes, plans markers, and reuse of nnU-Net's default preprocessed data."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from datasets import make_dataset
from nnssl.encoders.swin import PRESETS
from nnssl_planners.swin_planner import (SwinExperimentPlanner, default_encoder_dict, encoder_cost,
                                         swin_patch_and_batch_size)

BASE = default_encoder_dict("base")
TINY = default_encoder_dict("tiny")


def test_encoder_cost_known_values():
    assert encoder_cost(BASE) == pytest.approx(1.0)                       # (48/48) * (8+4)/12
    assert encoder_cost(TINY) == pytest.approx(0.25)                      # (12/48) * 12/12
    assert encoder_cost({"feature_size": 48, "depths": [2, 2, 8, 2]}) == pytest.approx(1.5)  # (14+4)/12
    assert encoder_cost({"feature_size": 24, "depths": [2, 2, 2, 2]}) == pytest.approx(0.5)


@pytest.mark.parametrize("spacing,median,expected", [
    ((1.0, 1.0, 1.0), (300, 300, 300), [96, 96, 96]),          # the paper's crop at nnU-Net's 8 GB target
    ((1.0, 1.0, 1.0), (97, 130, 250), [96, 96, 96]),           # odd shapes, all axes large enough
    ((3.0, 0.8, 0.8), (100, 400, 400), [64, 128, 128]),        # anisotropic: thick axis at the 64 floor
    ((1.0, 1.0, 1.0), (20, 40, 50), [32, 64, 64]),             # small image: median rounded up to 32
    ((1.0, 1.0, 1.0), (30, 31, 17), [32, 64, 32]),             # tiny image: bottleneck needs > 1 voxel
])
def test_patch_size_known_values(spacing, median, expected):
    patch, batch = swin_patch_and_batch_size(spacing, median, BASE)
    assert patch == expected
    assert batch >= 2


def test_larger_memory_target_gives_larger_patch():
    # budget 96^3 * 24/8 = 2.65M voxels: 128^3 (2.10M) fits, 160^3 (4.10M) does not
    patch, batch = swin_patch_and_batch_size((1, 1, 1), (400, 400, 400), BASE, gpu_memory_target_in_gb=24)
    assert patch == [128, 128, 128]
    assert batch == 2  # floor(2 * 2654208 / 2097152)


def test_smaller_encoder_gets_bigger_patch_or_batch():
    p_base, b_base = swin_patch_and_batch_size((1, 1, 1), (400, 400, 400), BASE)
    p_tiny, b_tiny = swin_patch_and_batch_size((1, 1, 1), (400, 400, 400), TINY)
    assert np.prod(p_tiny) > np.prod(p_base)
    # an image smaller than the patch budget: the patch is capped, the batch grows instead
    p, b = swin_patch_and_batch_size((1, 1, 1), (60, 60, 60), TINY)
    assert p == [64, 64, 64] and b == int(2 * 96 ** 3 / 0.25 // 64 ** 3)


def test_dataset_cap_limits_batch_size():
    # 5% of a 10-case dataset of 64^3 voxels is half a patch: batch falls back to the minimum 2
    p, b = swin_patch_and_batch_size((1, 1, 1), (60, 60, 60), TINY, approximate_n_voxels_dataset=10 * 64 ** 3)
    assert b == 2


@pytest.mark.parametrize("seed", range(40))
def test_random_shapes_and_spacings_are_divisible(seed):
    rng = np.random.default_rng(seed)
    spacing = rng.uniform(0.5, 5.0, 3)
    median = rng.integers(17, 600, 3)
    gb = float(rng.choice([4, 8, 16, 40]))
    enc = default_encoder_dict(str(rng.choice(list(PRESETS))))
    patch, batch = swin_patch_and_batch_size(spacing, median, enc, gb)
    cap = [max(32, int(np.ceil(m / 32) * 32)) for m in median]
    if all(c == 32 for c in cap):
        cap[int(np.argmax(median))] = 64   # SwinUNETR's bottleneck needs more than one voxel
    assert np.prod(patch) > 32 ** 3
    for p, c in zip(patch, cap):
        assert p % 32 == 0
        assert p <= c                      # never larger than needed to cover the median image
        assert p >= min(64, c)             # at least 64 when the image allows
    assert batch >= 2


def test_bad_arguments():
    with pytest.raises(ValueError, match="positive"):
        swin_patch_and_batch_size((1, 0, 1), (64, 64, 64), BASE)
    with pytest.raises(ValueError, match="gpu_memory_target"):
        swin_patch_and_batch_size((1, 1, 1), (64, 64, 64), BASE, gpu_memory_target_in_gb=0)


def _fabricate(tmp_path: Path, monkeypatch, spacings, shapes) -> str:
    """Raw dataset (a tiny image for the reader) + a hand-written fingerprint with the given spacings/shapes."""
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (tmp_path / name).mkdir(exist_ok=True)
        monkeypatch.setenv(name, str(tmp_path / name))
    folder = make_dataset(tmp_path / "nnUNet_raw", 611, name="Odd", num_cases=1, shape=(8, 8, 8))
    dj = json.loads((folder / "dataset.json").read_text())
    dj["numTraining"] = len(shapes)
    (folder / "dataset.json").write_text(json.dumps(dj))
    pre = tmp_path / "nnUNet_preprocessed" / folder.name
    pre.mkdir()
    fp = {"spacings": spacings, "shapes_after_crop": shapes,
          "foreground_intensity_properties_per_channel": {"0": {
              "mean": 50.0, "median": 45.0, "std": 60.0, "min": -200.0, "max": 300.0,
              "percentile_99_5": 250.0, "percentile_00_5": -150.0}},
          "median_relative_size_after_cropping": 1.0}
    (pre / "dataset_fingerprint.json").write_text(json.dumps(fp))
    return folder.name


def test_planner_writes_swin_plans_for_odd_anisotropic_dataset(tmp_path, monkeypatch):
    # z spacing 3-3.5 mm, in-plane ~0.8 mm, odd shapes (z, y, x) as SimpleITK reads them into numpy
    name = _fabricate(tmp_path, monkeypatch,
                      spacings=[[3.0, 0.78, 0.78], [3.5, 0.81, 0.81], [3.0, 0.8, 0.8]],
                      shapes=[[61, 317, 333], [47, 291, 301], [55, 305, 299]])
    planner = SwinExperimentPlanner(name, encoder="base")
    plans = planner.plan_experiment()
    saved = json.loads((tmp_path / "nnUNet_preprocessed" / name / "nnUNetSwinPlans.json").read_text())
    assert saved["nnssl_plans"] is True and saved["plans_name"] == "nnUNetSwinPlans"
    assert list(saved["configurations"]) == ["3d_fullres"]
    conf = saved["configurations"]["3d_fullres"]
    assert all(p % 32 == 0 for p in conf["patch_size"])
    # the thick axis comes first after nnU-Net's transpose and is the shortest patch axis
    assert saved["transpose_forward"][0] == 0
    assert conf["patch_size"][0] == 64 and conf["patch_size"][1] >= 96 and conf["patch_size"][2] >= 96
    expected = {k: v for k, v in PRESETS["base"].to_dict().items() if k != "in_channels"}
    assert conf["nnssl_encoder"] == json.loads(json.dumps(expected))
    assert conf["data_identifier"] == "nnUNetSwinPlans_3d_fullres"
    assert plans["configurations"]["3d_fullres"]["batch_size"] >= 2


def test_planner_encoder_option(tmp_path, monkeypatch):
    name = _fabricate(tmp_path, monkeypatch, spacings=[[1.0, 1.0, 1.0]] * 2, shapes=[[150, 150, 150]] * 2)
    SwinExperimentPlanner(name, encoder="tiny").plan_experiment()
    conf = json.loads((tmp_path / "nnUNet_preprocessed" / name / "nnUNetSwinPlans.json").read_text()
                      )["configurations"]["3d_fullres"]
    assert conf["nnssl_encoder"]["feature_size"] == 12
    assert "in_channels" not in conf["nnssl_encoder"]
    # tiny encoder: budget 4 * 96^3 = 152^3 -> capped by the median 150 rounded up to 160
    assert conf["patch_size"] == [160, 160, 160]


def test_reuses_default_preprocessed_data_when_identical(tmp_path, monkeypatch):
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

    name = _fabricate(tmp_path, monkeypatch, spacings=[[1.0, 1.0, 1.0]] * 3, shapes=[[70, 80, 90]] * 3)
    ExperimentPlanner(name).plan_experiment()
    conf = SwinExperimentPlanner(name).plan_experiment()["configurations"]["3d_fullres"]
    assert conf["data_identifier"] == "nnUNetPlans_3d_fullres"

    # a different target spacing in the default plans: no reuse
    default_file = tmp_path / "nnUNet_preprocessed" / name / "nnUNetPlans.json"
    default = json.loads(default_file.read_text())
    default["configurations"]["3d_fullres"]["spacing"] = [2.0, 2.0, 2.0]
    default_file.write_text(json.dumps(default))
    conf = SwinExperimentPlanner(name).plan_experiment()["configurations"]["3d_fullres"]
    assert conf["data_identifier"] == "nnUNetSwinPlans_3d_fullres"
