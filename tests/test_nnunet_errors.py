"""Bad input around the nnU-Net integration: each error names the problem and the fix; nothing half-written."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from datasets import make_dataset
from nnssl.cli.attach import main as attach_main
from nnssl.cli.info import main as info_main
from nnssl.cli.plan_and_preprocess import main as plan_main
from nnssl.data.preprocessing import plan_and_preprocess
from nnssl.nnunet.environment import trainers_path


@pytest.fixture()
def env(tmp_path, monkeypatch):
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (tmp_path / name).mkdir()
        monkeypatch.setenv(name, str(tmp_path / name))
    monkeypatch.setenv("nnUNet_extTrainer", trainers_path())
    monkeypatch.delenv("nnssl_results", raising=False)   # the nnssl results folder: $nnUNet_results/nnssl_pretrain
    return {k: tmp_path / k for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}


def _plan_error(capsys, *argv: str) -> str:
    assert plan_main(["-np", "1", "-npfp", "1", *argv]) == 2
    return capsys.readouterr().err


def test_unknown_dataset_id(env, capsys):
    make_dataset(env["nnUNet_raw"], 531, num_cases=1, shape=(8, 8, 8))
    err = _plan_error(capsys, "-d", "999")
    assert "unknown dataset id 999" in err and "Dataset531_Spheres" in err


def test_missing_env_var(env, capsys, monkeypatch):
    monkeypatch.delenv("nnUNet_raw")
    err = _plan_error(capsys, "-d", "531")
    assert "nnUNet_raw is not set" in err and "export nnUNet_raw=" in err


@pytest.mark.parametrize("edit,message", [
    (lambda f: (f / "dataset.json").write_text("{not json"), "not valid JSON"),
    (lambda f: _edit_json(f, lambda d: d.pop("file_ending")), "lacks file_ending"),
    (lambda f: _edit_json(f, lambda d: d.update(numTraining=7)), "numTraining=7"),
    (lambda f: _edit_json(f, lambda d: d.update(labels={"tumour": 1})), "background"),
    (lambda f: [p.unlink() for p in (f / "labelsTr").iterdir()] and (f / "labelsTr").rmdir(), "images_only"),
    (lambda f: (f / "dataset.json").unlink(), "dataset.json is missing"),
])
def test_dataset_json_and_layout_errors(env, capsys, edit, message):
    folder = make_dataset(env["nnUNet_raw"], 532, num_cases=2, shape=(8, 8, 8))
    edit(folder)
    err = _plan_error(capsys, "-d", "532")
    assert message in err
    # nothing written for the dataset
    assert not (env["nnUNet_preprocessed"] / folder.name).exists()


def _edit_json(folder: Path, fn) -> None:
    d = json.loads((folder / "dataset.json").read_text())
    fn(d)
    (folder / "dataset.json").write_text(json.dumps(d))


def test_integrity_check_names_bad_label_file(env, capsys):
    import numpy as np
    import SimpleITK as sitk

    folder = make_dataset(env["nnUNet_raw"], 535, num_cases=2, shape=(8, 8, 8))
    bad = folder / "labelsTr" / "case_001.nii.gz"
    img = sitk.GetImageFromArray(np.full((8, 8, 8), 7, dtype=np.uint8))   # label 7 is not in dataset.json
    sitk.WriteImage(img, str(bad))
    err = _plan_error(capsys, "-d", "535", "--verify_dataset_integrity")
    assert "failed nnU-Net's dataset integrity check" in err
    assert not (env["nnUNet_preprocessed"] / folder.name / "nnUNetSwinPlans.json").exists()


def test_other_configuration_and_encoder_refused(env, capsys):
    make_dataset(env["nnUNet_raw"], 533, num_cases=1, shape=(8, 8, 8))
    assert "only 3d_fullres" in _plan_error(capsys, "-d", "533", "-c", "2d")
    assert "unknown encoder preset 'huge'" in _plan_error(capsys, "-d", "533", "--encoder", "huge")


def test_failed_preprocessing_leaves_nothing_half_written(env, monkeypatch):
    folder = make_dataset(env["nnUNet_raw"], 534, num_cases=2, shape=(20, 20, 20))
    pre = env["nnUNet_preprocessed"] / folder.name
    pre.mkdir()
    # an existing fingerprint is reused (nnU-Net's semantics without --clean): no fingerprinting here
    (pre / "dataset_fingerprint.json").write_text(json.dumps({
        "spacings": [[1.0, 1.0, 1.0]] * 2, "shapes_after_crop": [[20, 20, 20]] * 2,
        "foreground_intensity_properties_per_channel": {"0": {
            "mean": 0.0, "median": 0.0, "std": 100.0, "min": -200.0, "max": 200.0, "percentile_99_5": 150.0,
            "percentile_00_5": -150.0}},
        "median_relative_size_after_cropping": 1.0}))

    import nnunetv2.experiment_planning.plan_and_preprocess_api as api

    def crash(dataset_id, plans_identifier, configurations, num_processes, **kw):
        data = pre / f"{plans_identifier}_3d_fullres"
        data.mkdir()
        (data / "case_000.b2nd").write_bytes(b"partial")
        raise RuntimeError("simulated crash during preprocessing")

    monkeypatch.setattr(api, "preprocess_dataset", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        plan_and_preprocess(534, encoder="tiny", num_processes=1, num_processes_fingerprint=1, progress=False)
    assert not (pre / "nnUNetSwinPlans.json").exists()
    assert not (pre / "nnUNetSwinPlans_3d_fullres").exists()
    # a previous plans file is restored, not lost
    (pre / "nnUNetSwinPlans.json").write_text('{"previous": true}')
    with pytest.raises(RuntimeError):
        plan_and_preprocess(534, encoder="tiny", num_processes=1, num_processes_fingerprint=1, progress=False)
    assert json.loads((pre / "nnUNetSwinPlans.json").read_text()) == {"previous": True}


def _swin_plans(dataset: str = "Dataset540_X", patch=(64, 64, 64), **conf_extra) -> dict:
    conf = {"data_identifier": "nnUNetSwinPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 2, "patch_size": list(patch), "median_image_size_in_voxels": [64, 64, 64],
            "spacing": [1.0, 1.0, 1.0], "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
            "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": {}, "resampling_fn_seg_kwargs": {},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape", "resampling_fn_probabilities_kwargs": {},
            "architecture": {"network_class_name": "monai.networks.nets.SwinUNETR", "arch_kwargs": {},
                             "_kw_requires_import": []},
            "batch_dice": False,
            "nnssl_encoder": {"feature_size": 12, "depths": [2, 2, 2, 2], "num_heads": [3, 6, 12, 24],
                              "window_size": 4, "patch_size": 2, "drop_path_rate": 0.0, "use_v2": False,
                              "use_checkpoint": False}, **conf_extra}
    return {"dataset_name": dataset, "plans_name": "nnUNetSwinPlans", "original_median_spacing_after_transp": [1, 1, 1],
            "original_median_shape_after_transp": [64, 64, 64], "image_reader_writer": "SimpleITKIO",
            "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2], "configurations": {"3d_fullres": conf},
            "experiment_planner_used": "SwinExperimentPlanner", "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel": {"0": {}}, "nnssl_plans": True}


DATASET_JSON = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1}, "numTraining": 2,
                "file_ending": ".nii.gz"}


def test_trainer_refuses_non_swin_plans(env):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnssl.nnunet.plans import NotSwinPlansError
    from nnssl.finetune.trainers import SwinScratchTrainer

    plans = _swin_plans()
    del plans["nnssl_plans"]
    plans["plans_name"] = "nnUNetPlans"
    with pytest.raises(NotSwinPlansError, match="not a Swin plans file.*nnssl_plan_and_preprocess"):
        SwinScratchTrainer({**plans, "continue_training": False}, "3d_fullres", 0, DATASET_JSON,
                           torch.device("cpu"))
    pm = PlansManager(plans)
    with pytest.raises(NotSwinPlansError):
        SwinScratchTrainer.build_network_architecture(pm, pm.get_configuration("3d_fullres"), 1, 2, False)
    assert not any(env["nnUNet_results"].iterdir())          # no output folder left behind


def _plans_with(configuration: str, conf: dict, marker: bool = True) -> dict:
    plans = _swin_plans()
    plans["configurations"][configuration] = conf
    if not marker:
        del plans["nnssl_plans"]
    return {**plans, "continue_training": False}


@pytest.mark.parametrize("configuration,edit,match", [
    # 2D is refused whatever the plans (nnU-Net's own plans hold a 2d configuration)
    ("2d", lambda p: p, r"is 2D, and the Swin trainers train 3D networks only: SwinUNETR's encoder is 3D"),
    ("2d", lambda p: {k: v for k, v in p.items() if k != "nnssl_plans"}, "encoder is 3D"),
    ("3d_lowres", None, r"no configuration '3d_lowres'.*plans one stage at full resolution.*train 3d_fullres"),
    ("3d_cascade_fullres", None, r"do not train nnU-Net's cascade.*extra input channels.*nnUNetv2_ensemble"),
])
def test_configurations_the_swin_trainers_refuse(env, configuration, edit, match):
    from nnssl.finetune.trainers import SwinScratchTrainer, SwinSSLTrainer
    from nnssl.nnunet.plans import UnsupportedConfigurationError

    plans = {**_swin_plans(), "continue_training": False}
    if edit is not None:
        plans = edit(_plans_with(configuration, {"inherits_from": "3d_fullres", "patch_size": [64, 64]}))
    for cls in (SwinScratchTrainer, SwinSSLTrainer):
        with pytest.raises(UnsupportedConfigurationError, match=match):
            cls(dict(plans), configuration, 0, DATASET_JSON, torch.device("cpu"))
    assert not any(env["nnUNet_results"].iterdir())


def test_hand_added_cascade_stage_refused(env):
    from nnssl.finetune.trainers import SwinScratchTrainer
    from nnssl.nnunet.plans import UnsupportedConfigurationError

    plans = _plans_with("3d_cascade_fullres", {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"})
    with pytest.raises(UnsupportedConfigurationError, match="is a cascade stage .*previous_stage '3d_lowres'"):
        SwinScratchTrainer(plans, "3d_cascade_fullres", 0, DATASET_JSON, torch.device("cpu"))


@pytest.mark.parametrize("patch,match", [((40, 64, 64), r"axis 0 has size 40 \(use 32 or 64\)"),
                                         ((32, 32, 32), "bottleneck")])
def test_patch_size_swin_cannot_take(env, patch, match):
    from nnssl.finetune.network import build_network_from_configuration
    from nnssl.finetune.trainers import SwinScratchTrainer

    plans = _swin_plans(patch=patch)
    with pytest.raises(ValueError, match=match):
        build_network_from_configuration(plans["configurations"]["3d_fullres"], 1, 2)
    # the trainer refuses it before nnU-Net creates a folder (e.g. plans moved from another dataset, then edited)
    with pytest.raises(ValueError, match=f"plans 'nnUNetSwinPlans', configuration '3d_fullres': .*{match}"):
        SwinScratchTrainer({**plans, "continue_training": False}, "3d_fullres", 0, DATASET_JSON, torch.device("cpu"))
    assert not any(env["nnUNet_results"].iterdir())


def test_ssl_trainer_without_checkpoint_says_how_to_attach(env, tmp_path):
    from nnssl.finetune.pretrained import NoCheckpointAttachedError, PretrainedCheckpointNotFoundError
    from nnssl.finetune.trainers import SwinSSLTrainer

    with pytest.raises(NoCheckpointAttachedError, match="nnssl_attach -d Dataset540_X --checkpoint"):
        SwinSSLTrainer({**_swin_plans(), "continue_training": False}, "3d_fullres", 0, DATASET_JSON,
                       torch.device("cpu"))
    gone = _swin_plans(nnssl_pretrained={"name": "smit", "method": "smit", "sha256": "ab" * 32,
                                         "file": "smit__base__D500/checkpoint_final.pth"})
    with pytest.raises(PretrainedCheckpointNotFoundError,
                       match=f"sha256 {'ab' * 32}\\) was not found. Searched: smit__base__D500/checkpoint_final.pth, "
                             f".*nnssl_pretrain/smit__base__D500/checkpoint_final.pth"):
        SwinSSLTrainer({**gone, "continue_training": False}, "3d_fullres", 0, DATASET_JSON, torch.device("cpu"))
    # plans of earlier nnssl versions named the checkpoint by absolute path: re-attach
    legacy = _swin_plans(nnssl_pretrained={"checkpoint": str(tmp_path / "gone.pt"), "method": "smit", "name": "smit"})
    with pytest.raises(ValueError, match="by absolute path .*gone.pt.*re-attach it with nnssl_attach"):
        SwinSSLTrainer({**legacy, "continue_training": False}, "3d_fullres", 0, DATASET_JSON, torch.device("cpu"))
    assert not any(env["nnUNet_results"].iterdir())


def test_info_reports_missing_and_wrong_ext_trainer(env, capsys, monkeypatch, tmp_path):
    assert info_main([]) == 0
    out = capsys.readouterr().out
    assert f"export nnUNet_extTrainer={trainers_path()}" in out and "All set" in out
    monkeypatch.delenv("nnUNet_extTrainer")
    assert info_main([]) == 1
    err = capsys.readouterr().err
    assert "nnUNet_extTrainer is not set" in err and f"export nnUNet_extTrainer={trainers_path()}" in err
    monkeypatch.setenv("nnUNet_extTrainer", str(tmp_path))
    assert info_main([]) == 1
    assert "does not include nnssl's trainers folder" in capsys.readouterr().err
    monkeypatch.delenv("nnUNet_results")
    assert info_main([]) == 1
    assert "nnUNet_results is not set" in capsys.readouterr().err
    assert info_main(["--export"]) == 0
    assert capsys.readouterr().out.strip() == f"export nnUNet_extTrainer={trainers_path()}"


def test_nnunet_lookup_fails_without_env_var(monkeypatch):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    monkeypatch.delenv("nnUNet_extTrainer", raising=False)
    with pytest.raises(RuntimeError, match="nnUNet_extTrainer"):
        recursive_find_trainer_class_by_name("SwinScratchTrainer")


@pytest.fixture()
def planned(env):
    """A Swin plans file for Dataset540_X and a valid tiny checkpoint."""
    from nnssl.checkpoint import save_checkpoint
    from nnssl.encoders.swin import EncoderConfig, SwinEncoder

    pre = env["nnUNet_preprocessed"] / "Dataset540_X"
    pre.mkdir()
    (pre / "nnUNetSwinPlans.json").write_text(json.dumps(_swin_plans()))
    cfg = EncoderConfig.preset("tiny")
    ckpt = env["nnUNet_results"].parent / "dino.pt"
    save_checkpoint(ckpt, {"method": "dino", "encoder_config": cfg.to_dict(),
                           "encoder": SwinEncoder(cfg).swin_state_dict()})
    return pre, ckpt


def _attach_error(capsys, *argv) -> str:
    assert attach_main(list(argv)) == 2
    return capsys.readouterr().err


def test_attach_errors(planned, capsys, tmp_path):
    pre, ckpt = planned
    assert attach_main(["-d", "540", "--checkpoint", str(ckpt)]) == 0          # name defaults to the method
    assert json.loads((pre / "nnUNetSwinPlans_dino.json").read_text())["plans_name"] == "nnUNetSwinPlans_dino"
    assert "exists; pass --overwrite" in _attach_error(capsys, "-d", "540", "--checkpoint", str(ckpt))
    assert "--name 'a__b'" in _attach_error(capsys, "-d", "540", "--checkpoint", str(ckpt), "--name", "a__b")
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    assert "not an nnssl checkpoint" in _attach_error(capsys, "-d", "540", "--checkpoint", str(foreign))
    assert "does not exist" in _attach_error(capsys, "-d", "540", "--checkpoint", str(tmp_path / "none.pt"))
    assert "nnssl_plan_and_preprocess -d 541" in _attach_error(capsys, "-d", "541", "--checkpoint", str(ckpt))
    # plans whose patch size Swin cannot take
    plans = json.loads((pre / "nnUNetSwinPlans.json").read_text())
    plans["configurations"]["3d_fullres"]["patch_size"] = [48, 64, 64]
    (pre / "nnUNetSwinPlans.json").write_text(json.dumps(plans))
    assert "axis 0 has size 48" in _attach_error(capsys, "-d", "540", "--checkpoint", str(ckpt), "--name", "x")
    # not a Swin plans file
    del plans["nnssl_plans"]
    (pre / "nnUNetSwinPlans.json").write_text(json.dumps(plans))
    assert "not a Swin plans file" in _attach_error(capsys, "-d", "540", "--checkpoint", str(ckpt), "--name", "y")
    assert not (pre / "nnUNetSwinPlans_x.json").exists() and not (pre / "nnUNetSwinPlans_y.json").exists()


def test_test_knobs_validated(monkeypatch):
    from nnssl.finetune.trainers import ENV_ITERS, _positive_int_env

    monkeypatch.setenv(ENV_ITERS, "abc")
    with pytest.raises(ValueError, match="NNSSL_ITERATIONS_PER_EPOCH='abc' must be a positive integer"):
        _positive_int_env(ENV_ITERS)
    monkeypatch.setenv(ENV_ITERS, "7")
    assert _positive_int_env(ENV_ITERS) == 7


@pytest.mark.parametrize("value", ["0", "-1e-3", "nan", "inf", "fast"])
def test_learning_rate_knob_refuses_what_is_not_a_positive_number(env, monkeypatch, value):
    from nnssl.finetune.trainers import ENV_LR, SwinScratchTrainer

    monkeypatch.setenv(ENV_LR, value)
    with pytest.raises(ValueError, match=f"NNSSL_LEARNING_RATE='{value}' must be a finite number > 0"):
        SwinScratchTrainer({**_swin_plans(), "continue_training": False}, "3d_fullres", 0, DATASET_JSON,
                           torch.device("cpu"))


def test_learning_rate_knob_sets_the_optimiser_and_is_recorded(env, monkeypatch):
    from nnssl.finetune.trainers import ENV_LR, SwinScratchTrainer

    monkeypatch.setenv(ENV_LR, "3e-4")
    trainer = SwinScratchTrainer({**_swin_plans(), "continue_training": False}, "3d_fullres", 0, DATASET_JSON,
                                 torch.device("cpu"))
    assert trainer.initial_lr == 3e-4 and trainer.nnssl_knobs[ENV_LR] == 3e-4
    trainer.network = torch.nn.Linear(2, 2)
    optimizer, scheduler = trainer.configure_optimizers()
    assert scheduler.base_lr == 3e-4 and optimizer.defaults["lr"] == 3e-4


def test_attach_architecture_only_writes_scratch_plans_of_the_checkpoints_encoder(planned, capsys):
    pre, ckpt = planned
    assert attach_main(["-d", "540", "--checkpoint", str(ckpt), "--architecture-only"]) == 0
    out = capsys.readouterr().out
    written = [p for p in pre.glob("nnUNetSwinPlans_scratch-*.json")]
    assert len(written) == 1 and "-tr SwinScratchTrainer" in out
    conf = json.loads(written[0].read_text())["configurations"]["3d_fullres"]
    assert "nnssl_pretrained" not in conf and conf["nnssl_encoder"]["feature_size"] == 12
    assert "scratch-<encoder>" in _attach_error(capsys, "-d", "540", "--checkpoint", str(ckpt), "--architecture-only",
                                                "--name", "dino")


def _tiny_checkpoint(path: Path, seed: int) -> Path:
    from nnssl.checkpoint import save_checkpoint
    from nnssl.encoders.swin import EncoderConfig, SwinEncoder

    torch.manual_seed(seed)
    cfg = EncoderConfig.preset("tiny")
    save_checkpoint(path, {"method": "dino", "encoder_config": cfg.to_dict(),
                           "encoder": SwinEncoder(cfg).swin_state_dict()})
    return path


def test_checkpoint_found_by_hash_where_the_search_looks(env, tmp_path, monkeypatch):
    """Plans name the checkpoint by sha256 and a relative path; training looks at the path as given, then in the nnssl
    results folder, then for the file name anywhere under it, and uses only a file with the right hash."""
    from nnssl.finetune.pretrained import (PretrainedCheckpointNotFoundError, describe_checkpoint,
                                           resolve_pretrained_checkpoint)

    results = tmp_path / "nnssl_results"
    monkeypatch.setenv("nnssl_results", str(results))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    ckpt = _tiny_checkpoint(results / "dino__tiny__D500" / "checkpoint_final.pth", seed=1)
    entry, note = describe_checkpoint(ckpt, "dino", "dino")
    assert entry["file"] == "dino__tiny__D500/checkpoint_final.pth" and note is None
    conf = {"nnssl_pretrained": entry}
    assert resolve_pretrained_checkpoint(conf, "D", "p") == results / entry["file"]
    # the run folder moved: found by name under the results folder; a different checkpoint left at the old place
    # (a repeated pretraining run) is never used
    moved = results / "archive" / "dino_run" / "checkpoint_final.pth"
    moved.parent.mkdir(parents=True)
    ckpt.rename(moved)
    _tiny_checkpoint(ckpt, seed=2)
    assert resolve_pretrained_checkpoint(conf, "D", "p") == moved
    moved.unlink()
    with pytest.raises(PretrainedCheckpointNotFoundError) as e:
        resolve_pretrained_checkpoint(conf, "D", "p")
    message = str(e.value)
    assert f"sha256 {entry['sha256']}" in message and f"{ckpt} (sha256 " in message
    assert "Copy that checkpoint into the nnssl results folder" in message
    # a relative path as given is resolved from the current directory
    _tiny_checkpoint(elsewhere / "ckpts" / "a.pt", seed=3)
    entry, note = describe_checkpoint("ckpts/a.pt", "a", "dino")
    assert entry["file"] == "ckpts/a.pt" and note is None
    assert resolve_pretrained_checkpoint({"nnssl_pretrained": entry}, "D", "p") == Path("ckpts/a.pt")
    # an absolute path outside the results folder: only the name is stored, and the note says so
    outside = _tiny_checkpoint(tmp_path / "downloads" / "b.pt", seed=4)
    entry, note = describe_checkpoint(outside, "b", "dino")
    assert entry["file"] == "b.pt" and "lies outside the nnssl results folder" in note


def test_attached_plans_hold_no_absolute_path(planned, capsys):
    pre, ckpt = planned
    # nnssl_results is unset: the nnssl results folder is $nnUNet_results/nnssl_pretrain, where nnssl_pretrain writes
    inside = pre.parent.parent / "nnUNet_results" / "nnssl_pretrain" / "dino__tiny__D500" / "checkpoint_final.pth"
    inside.parent.mkdir(parents=True)
    inside.write_bytes(ckpt.read_bytes())
    assert attach_main(["-d", "540", "--checkpoint", str(inside), "--name", "inside"]) == 0
    assert attach_main(["-d", "540", "--checkpoint", str(ckpt), "--name", "outside"]) == 0
    assert "lies outside the nnssl results folder" in capsys.readouterr().out
    for name, file in (("inside", "dino__tiny__D500/checkpoint_final.pth"), ("outside", "dino.pt")):
        text = (pre / f"nnUNetSwinPlans_{name}.json").read_text()
        assert str(pre.parent.parent) not in text, name
        assert json.loads(text)["configurations"]["3d_fullres"]["nnssl_pretrained"]["file"] == file


def test_find_best_configuration_names_what_is_missing(planned, capsys):
    from nnssl.cli.find_best_configuration import main as find_best_main

    pre, _ = planned
    results = pre.parent.parent / "nnUNet_results" / "Dataset540_X"
    assert find_best_main(["540", "-m", "SwinSSLTrainer__nnUNetSwinPlans__x__3d_fullres"]) == 2
    assert "exactly two '__'" in capsys.readouterr().err
    model = "SwinScratchTrainer__nnUNetSwinPlans__3d_fullres"
    assert find_best_main(["540", "-m", model]) == 2
    assert "unknown dataset id 540: no folder Dataset540_* in nnUNet_results" in capsys.readouterr().err
    results.mkdir(parents=True)
    assert find_best_main(["540", "-m", model]) == 2
    assert "does not exist: train every fold first (nnUNetv2_train Dataset540_X 3d_fullres FOLD -tr " \
           "SwinScratchTrainer -p nnUNetSwinPlans --npz)" in capsys.readouterr().err
    for fold in range(5):
        (results / model / f"fold_{fold}" / "validation").mkdir(parents=True)
        (results / model / f"fold_{fold}" / "validation" / "summary.json").write_text("{}")
    (results / model / "fold_1" / "validation" / "summary.json").unlink()
    assert find_best_main(["540", "-m", model, "--disable_ensembling"]) == 2
    assert "fold 1 of " + model + " has no validation/summary.json" in capsys.readouterr().err
    assert find_best_main(["540", "-m", model, "-f", "0"]) == 2
    assert "fold 0 of " + model + " saved no probabilities" in capsys.readouterr().err
    assert find_best_main(["540", "-m", "nnUNetTrainer__nnUNetPlans__3d_fullres"]) == 2
    assert "plans nnUNetPlans of nnUNetTrainer__nnUNetPlans__3d_fullres do not exist" in capsys.readouterr().err


FINGERPRINT = {"spacings": [[1.0, 1.0, 1.0]] * 3, "shapes_after_crop": [[20, 20, 20]] * 3,
               "foreground_intensity_properties_per_channel": {"0": {
                   "mean": 0.0, "median": 0.0, "std": 100.0, "min": -200.0, "max": 200.0, "percentile_99_5": 150.0,
                   "percentile_00_5": -150.0}},
               "median_relative_size_after_cropping": 1.0}


def test_preprocessing_is_recorded_complete_last_and_flags_constant_images(env, monkeypatch, capsys):
    """The completion record comes after the last case and names the constant images; a data folder that falls
    short of dataset.json (an interrupted run) is refused by pretraining with the command that completes it."""
    import numpy as np
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    import nnunetv2.experiment_planning.plan_and_preprocess_api as api

    from nnssl.data.preprocessed import DataError, complete_marker_path, find_source, read_complete_marker

    folder = make_dataset(env["nnUNet_raw"], 536, num_cases=3, shape=(20, 20, 20))
    pre = env["nnUNet_preprocessed"] / folder.name
    pre.mkdir()
    (pre / "dataset_fingerprint.json").write_text(json.dumps(FINGERPRINT))

    def preprocess(dataset_id, plans_identifier, configurations, num_processes, **kw):
        data = pre / f"{plans_identifier}_3d_fullres"
        data.mkdir()
        for i in range(3):
            image = np.zeros((1, 20, 20, 20), np.float32) if i == 1 else np.random.rand(1, 20, 20, 20).astype(np.float32)
            nnUNetDatasetBlosc2.save_case(image, np.zeros((1, 20, 20, 20), np.int8), {"spacing": [1.0] * 3},
                                          str(data / f"case_{i:03d}"))

    monkeypatch.setattr(api, "preprocess_dataset", preprocess)
    plan_and_preprocess(536, encoder="tiny", num_processes=1, num_processes_fingerprint=1, progress=False)
    data = pre / "nnUNetSwinPlans_3d_fullres"
    assert read_complete_marker(data)["constant_cases"] == ["case_001"]
    assert "1 of 3 cases of Dataset536_Spheres have a constant image (e.g. all zero): case_001" in capsys.readouterr().err
    assert len(find_source(536).identifiers) == 3

    # as a SIGKILL mid-way leaves it: no record, a case missing, one without its properties file
    assert not [p for p in data.iterdir() if p.suffix not in ('.b2nd', '.pkl')]  # nnU-Net infers the format
    complete_marker_path(data).unlink()
    for suffix in (".b2nd", "_seg.b2nd", ".pkl"):
        (data / f"case_002{suffix}").unlink()
    (data / "case_001.pkl").unlink()
    with pytest.raises(DataError, match=r"is incomplete \(1 of 3 cases, 1 half-written \(case_001\)\).*"
                                        r"`nnssl_plan_and_preprocess -d 536`"):
        find_source(536)


def test_a_failed_first_planning_leaves_no_dataset_folder(env, monkeypatch):
    import nnunetv2.experiment_planning.plan_and_preprocess_api as api

    folder = make_dataset(env["nnUNet_raw"], 537, num_cases=2, shape=(8, 8, 8))

    def crash(dataset_id, **kw):
        (env["nnUNet_preprocessed"] / folder.name).mkdir()
        raise RuntimeError("simulated crash during fingerprinting")

    monkeypatch.setattr(api, "extract_fingerprint_dataset", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        plan_and_preprocess(537, encoder="tiny", num_processes=1, num_processes_fingerprint=1, progress=False)
    assert not (env["nnUNet_preprocessed"] / folder.name).exists()


def test_trainers_refuse_an_images_only_dataset(env):
    from nnssl.finetune.trainers import SwinScratchTrainer
    from nnssl.nnunet.raw_dataset import ImagesOnlyDatasetError

    images_only = {**DATASET_JSON, "labels": {"background": 0}, "images_only": True}
    with pytest.raises(ImagesOnlyDatasetError, match="Dataset540_X is images-only .*no labels to fine-tune on"):
        SwinScratchTrainer({**_swin_plans(), "continue_training": False}, "3d_fullres", 0, images_only,
                           torch.device("cpu"))
    assert not any(env["nnUNet_results"].iterdir())
