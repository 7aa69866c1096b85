"""A clinical team's nnU-Net workflow with the Swin trainers, on one tiny world (CPU): continue a killed job, model
selection over five folds alone and with nnU-Net's CNN, ensembling, post-processing, export to a zip and install on
"another machine", plans moved from a pretraining dataset, region-based and ignore labels, and the loading logic of
nnU-Net's multi-GPU (DDP) path.

The world: a 5-case, two-sequence MRI dataset (two input channels) with an ignore label (unannotated slices, as in
sparse annotation), planned by nnU-Net (the CNN's plans and data) and by nnssl (Swin plans reusing that data), a
one-channel pretraining checkpoint in the nnssl results folder, attached as ``nnUNetSwinPlans_simmim``; five folds of
``SwinSSLTrainer_2epochs`` (fold 0 killed after its first epoch and continued with ``--c``) and of nnU-Net's CNN.

Test-only shortcuts: the CNN runs as a subclass of ``nnUNetTrainer`` with one epoch of one iteration
(``CNN_TRAINER_SOURCE``, written to a temporary folder appended to ``nnUNet_extTrainer``); the Swin trainers run with
the documented test knobs (1 iteration, 1 validation iteration, no mirroring); set-up commands and the five folds of
each model run in one interpreter each (tests/nnunet_runner.py: planning through the console entry points, training
through the function nnUNetv2_train calls, nnU-Net's worker pools started by fork), the CNN's in the background while
the Swin model trains. The commands under test (``--c``, model selection, prediction, ensembling, post-processing,
export, install, moving plans, preprocessing with moved plans) run as subprocesses, as a user runs them.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from datasets import make_dataset, nnunet_env

DATASET = "Dataset561_Workflow"
SOURCE = "Dataset560_Pretraining"       # images-only: the pretraining data whose plans are moved to the target
SHAPE = (30, 32, 30)
SWIN, SWIN_PLANS = "SwinSSLTrainer_2epochs", "nnUNetSwinPlans_simmim"
CNN, CNN_PLANS = "nnUNetTrainer_1epoch_1iteration", "nnUNetPlans"
SWIN_MODEL = f"{SWIN}__{SWIN_PLANS}__3d_fullres"
CNN_MODEL = f"{CNN}__{CNN_PLANS}__3d_fullres"
FOLDS = ("0", "1", "2", "3", "4")
RUNNER = Path(__file__).with_name("nnunet_runner.py")
#: tensors the killed run's checkpoint is marked in: one of the pretrained encoder, one of the decoder
MARKED = ("swinViT.patch_embed.proj.bias", "out.conv.conv.bias")
MARK = 0.5

CNN_TRAINER_SOURCE = '''"""Test only: nnU-Net's CNN trainer with one epoch of one training and one validation step."""
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_1epoch_1iteration(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 1
        self.num_iterations_per_epoch = 1
        self.num_val_iterations_per_epoch = 1
'''


def _run(args: list, env: dict, timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc


def _nnunet(cmd: str, *args, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    return _run([Path(sys.executable).with_name(cmd), *args], env, check=check)


def _leave_slices_unannotated(dataset: Path, slices: int = 4) -> None:
    """Label the first ``slices`` axial slices of every case "ignore" (3): nnU-Net's sparse-annotation convention."""
    for f in (dataset / "labelsTr").glob("*.nii.gz"):
        img = sitk.ReadImage(str(f))
        seg = sitk.GetArrayFromImage(img)
        assert not seg[:slices].any()            # the structures lie further in
        seg[:slices] = 3
        out = sitk.GetImageFromArray(seg)
        out.CopyInformation(img)
        sitk.WriteImage(out, str(f))
    meta = json.loads((dataset / "dataset.json").read_text())
    meta["labels"]["ignore"] = 3
    (dataset / "dataset.json").write_text(json.dumps(meta, indent=2))


def _checkpoint(path: Path) -> dict:
    """A one-channel tiny-encoder pretraining checkpoint, as nnssl_pretrain writes (MRI: z-score normalisation)."""
    from nnssl.checkpoint import save_checkpoint
    from nnssl.encoders.swin import EncoderConfig, SwinEncoder

    torch.manual_seed(0)
    cfg = EncoderConfig.preset("tiny", in_channels=1)
    payload = {"method": "simmim", "encoder_config": cfg.to_dict(), "encoder": SwinEncoder(cfg).swin_state_dict(),
               "provenance": {"normalization": {"schemes": ["ZScoreNormalization"]}}}
    save_checkpoint(path, payload)
    return payload


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("workflow")
    env = nnunet_env(root)
    cnn_folder = root / "cnn_trainer"
    cnn_folder.mkdir()
    (cnn_folder / "cnn_test_trainer.py").write_text(CNN_TRAINER_SOURCE)
    env["nnUNet_extTrainer"] += os.pathsep + str(cnn_folder)      # nnU-Net searches each folder of the list
    _leave_slices_unannotated(make_dataset(env["nnUNet_raw"], 561, name="Workflow", num_cases=5, shape=SHAPE,
                                           modality="MRI", n_channels=2, seed=5))
    make_dataset(env["nnUNet_raw"], 560, name="Pretraining", num_cases=2, shape=(24, 24, 24), spacing=(1.5,) * 3,
                 modality="MRI", n_channels=2, images_only=True, seed=6)
    # 1. plan: nnU-Net's CNN plans and data (its planner needs data-augmentation processes), then nnssl's Swin plans,
    #    which reuse that data (of 560 the tests need only the plans)
    _run([sys.executable, RUNNER, "commands", json.dumps([
        ["nnUNetv2_plan_and_preprocess", "-d", "561", "-c", "3d_fullres", "-np", "1", "-npfp", "1"],
        ["nnssl_plan_and_preprocess", "-d", "560", "561", "-np", "1", "-npfp", "1", "--encoder", "tiny", "--no_pbar",
         "--no_pp"]])], {**env, "nnUNet_n_proc_DA": "1"})
    with pytest.MonkeyPatch.context() as mp:
        for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer", "nnssl_results"):
            mp.setenv(k, env[k])
        from nnssl.cli.attach import main as attach_main

        pre = Path(env["nnUNet_preprocessed"])
        for dataset in (DATASET, SOURCE):       # test speed only: one patch per step (the planner's minimum is 2)
            plans_file = pre / dataset / "nnUNetSwinPlans.json"
            plans = json.loads(plans_file.read_text())
            plans["configurations"]["3d_fullres"]["batch_size"] = 1
            plans_file.write_text(json.dumps(plans, indent=4))
        # 2. pretrain (stand-in): a one-channel checkpoint where nnssl_pretrain writes; 3. attach it to the target
        ckpt = Path(env["nnssl_results"]) / "simmim__tiny__D560" / "checkpoint_final.pth"
        payload = _checkpoint(ckpt)
        assert attach_main(["-d", "561", "--checkpoint", str(ckpt), "--name", "simmim"]) == 0
    swin_conf = json.loads((pre / DATASET / "nnUNetSwinPlans.json").read_text())["configurations"]["3d_fullres"]
    assert swin_conf["data_identifier"] == "nnUNetPlans_3d_fullres"       # one copy of the preprocessed data
    patients = root / "new_patients"         # "new" images to predict: a training case renamed
    patients.mkdir()
    for f in (Path(env["nnUNet_raw"]) / DATASET / "imagesTr").glob("case_001_*.nii.gz"):
        shutil.copy(f, patients / f.name.replace("case_001", "patient_a"))
    return {"patients": patients, "root": root, "env": env, "pre": pre, "res": Path(env["nnUNet_results"]),
            "raw": Path(env["nnUNet_raw"]), "ckpt": ckpt, "payload": payload}


@pytest.fixture(scope="module")
def trained(world):
    """Five folds of the Swin model (fold 0 killed after its first epoch and continued with --c, the pretraining
    checkpoint moved away) and, in the background meanwhile, five folds of the CNN and its prediction of the new
    patient (for the ensemble)."""
    env, res, root = world["env"], world["res"], world["root"]
    cnn_log = open(root / "cnn.log", "w")
    predict = [Path(sys.executable).with_name("nnUNetv2_predict"), "-i", world["patients"], "-o", root / "pred_cnn",
               "-d", "561", "-c", "3d_fullres", "-tr", CNN, "-p", CNN_PLANS, "-f", "0", "-device", "cpu", "-npp", "1",
               "-nps", "1", "--disable_tta", "--save_probabilities"]
    cnn = subprocess.Popen(["bash", "-c", f"{sys.executable} {RUNNER} train {DATASET} {CNN} {CNN_PLANS} "
                            f"{' '.join(FOLDS)} && {' '.join(map(str, predict))}"], env=env, stdout=cnn_log,
                           stderr=subprocess.STDOUT)
    try:
        killed = _run([sys.executable, RUNNER, "train", DATASET, SWIN, SWIN_PLANS, *FOLDS[1:], "0", "--kill", "0:0"],
                      env, check=False)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
        fold0 = res / DATASET / SWIN_MODEL / "fold_0"
        assert (fold0 / "checkpoint_latest.pth").is_file() and not (fold0 / "checkpoint_final.pth").exists()
        first_logs = {p.name for p in fold0.glob("training_log_*.txt")}
        # mark the killed run's weights far beyond what one more training step can move them, so that the final
        # weights show where the continued run started from
        latest = torch.load(fold0 / "checkpoint_latest.pth", map_location="cpu", weights_only=False)
        marked = {k: latest["network_weights"][k] + MARK for k in MARKED}
        latest["network_weights"].update({k: v.clone() for k, v in marked.items()})
        torch.save(latest, fold0 / "checkpoint_latest.pth")
        hidden = world["ckpt"].with_name("moved_to_another_machine")
        world["ckpt"].rename(hidden)
        try:
            _nnunet("nnUNetv2_train", "561", "3d_fullres", "0", "-tr", SWIN, "-p", SWIN_PLANS, "-device", "cpu",
                    "--npz", "--c", env=env)
        finally:
            hidden.rename(world["ckpt"])
        assert cnn.wait(timeout=600) == 0, (root / "cnn.log").read_text()[-3000:]
    finally:
        if cnn.poll() is None:
            cnn.kill()
        cnn_log.close()
    return {"fold0": fold0, "latest": latest, "marked": marked, "first_logs": first_logs}


def _log_text(fold: Path, names) -> str:
    return "".join((fold / n).read_text() for n in sorted(names))


def test_continue_after_kill_resumes_without_the_pretraining_checkpoint(trained, world):
    fold0 = trained["fold0"]
    final = torch.load(fold0 / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    pretrained_bias = world["payload"]["encoder"]["swinViT.patch_embed.proj.bias"]
    for key, marked in trained["marked"].items():
        # one more AdamW step (lr <= 1e-4) from the marked weights, nowhere near a fresh start
        assert torch.allclose(final["network_weights"][key], marked, atol=1e-2), key
    assert (final["network_weights"]["swinViT.patch_embed.proj.bias"] - pretrained_bias).abs().min() > MARK - 0.1
    log = final["logging"]
    first = trained["latest"]["logging"]
    assert len(log["train_losses"]) == 2 and log["train_losses"][0] == first["train_losses"][0]
    assert log["epoch_start_timestamps"][0] == first["epoch_start_timestamps"][0]
    # the first run loaded the pretrained encoder (two-channel MRI from a one-channel checkpoint: adapted patch
    # embedding); the continued one restored nnU-Net's checkpoint and never looked for the pretraining file
    first_log = _log_text(fold0, trained["first_logs"])
    assert re.search(r"loaded (\d+)/\1 encoder tensors \(1 adapted to the input channels: "
                     r"swinViT\.patch_embed\.proj\.weight\)", first_log)
    continued = _log_text(fold0, {p.name for p in fold0.glob("training_log_*.txt")} - trained["first_logs"])
    assert "restoring nnU-Net's checkpoint" in continued and "checkpoint_latest.pth" in continued
    assert "pretrained encoder from" not in continued
    assert (fold0 / "validation" / "summary.json").is_file() and list((fold0 / "validation").glob("*.npz"))


@pytest.fixture(scope="module")
def selected_alone(trained, world):
    _nnunet("nnUNetv2_find_best_configuration", "561", "-c", "3d_fullres", "-tr", SWIN, "-p", SWIN_PLANS, "-np", "1",
            env=world["env"])
    return json.loads((world["res"] / DATASET / "inference_information.json").read_text())


def test_model_selection_over_the_swin_folds(selected_alone, world):
    best = selected_alone["best_model_or_ensemble"]
    assert best["selected_model_or_models"] == [{"configuration": "3d_fullres", "trainer": SWIN,
                                                 "plans_identifier": SWIN_PLANS}]
    crossval = world["res"] / DATASET / SWIN_MODEL / "crossval_results_folds_0_1_2_3_4"
    assert len(list(crossval.glob("case_*.nii.gz"))) == 5          # every case validated once over the five folds
    assert Path(best["postprocessing_file"]) == crossval / "postprocessing.pkl"
    assert Path(best["postprocessing_file"]).is_file()
    instructions = (world["res"] / DATASET / "inference_instructions.txt").read_text()
    assert f"-tr {SWIN} -c 3d_fullres -p {SWIN_PLANS}" in instructions


@pytest.fixture(scope="module")
def selected_with_cnn(selected_alone, world):
    _run([sys.executable, "-m", "nnssl.cli.find_best_configuration", "561", "-m", SWIN_MODEL, CNN_MODEL, "-np", "1"],
         world["env"])
    return json.loads((world["res"] / DATASET / "inference_information.json").read_text())


def test_model_selection_with_nnunets_cnn_and_their_ensemble(selected_with_cnn, world, monkeypatch):
    from nnunetv2.evaluation.find_best_configuration import (dumb_trainer_config_plans_to_trained_models_dict,
                                                             find_best_configuration)

    info = selected_with_cnn
    # what nnUNetv2_find_best_configuration -tr SWIN CNN -p SWIN_PLANS CNN_PLANS does (find_best_configuration.py
    # :293-298): every combination of trainer and plans, and a Swin trainer with the CNN's plans was never trained
    _in_process_env(world, monkeypatch)
    with pytest.raises(RuntimeError, match="does not have an output folder"):
        find_best_configuration(DATASET, dumb_trainer_config_plans_to_trained_models_dict(
            [SWIN, CNN], ["3d_fullres"], [SWIN_PLANS, CNN_PLANS]), num_processes=1)
    ensemble = f"ensemble___{SWIN_MODEL}___{CNN_MODEL}___0_1_2_3_4"
    assert set(info["all_results"]) == {SWIN_MODEL, CNN_MODEL, ensemble}
    assert all(np.isfinite(v) for v in info["all_results"].values())
    assert (world["res"] / DATASET / "ensembles" / ensemble / "summary.json").is_file()
    best = info["best_model_or_ensemble"]
    assert Path(best["postprocessing_file"]).is_file() and len(best["selected_model_or_models"]) in (1, 2)


def test_model_selection_refuses_folds_without_probabilities(selected_with_cnn, world, monkeypatch):
    from nnssl.nnunet.model_selection import check_models, split_model_folder_name

    monkeypatch.setenv("nnUNet_results", world["env"]["nnUNet_results"])
    monkeypatch.setenv("nnUNet_preprocessed", world["env"]["nnUNet_preprocessed"])
    npz = next((world["res"] / DATASET / SWIN_MODEL / "fold_3" / "validation").glob("*.npz"))
    npz.rename(npz.with_suffix(".away"))
    try:
        with pytest.raises(ValueError, match=rf"fold 3 of {SWIN_MODEL} saved no probabilities.*--val --npz"):
            check_models("561", [split_model_folder_name(SWIN_MODEL)], [int(f) for f in FOLDS], ensembling=True)
        assert check_models("561", [split_model_folder_name(SWIN_MODEL)], [0, 1, 2, 3, 4], ensembling=False) == DATASET
    finally:
        npz.with_suffix(".away").rename(npz)
    with pytest.raises(ValueError, match="exactly two '__'"):
        split_model_folder_name("SwinSSLTrainer__nnUNetSwinPlans__simmim__3d_fullres")


@pytest.fixture(scope="module")
def installed_elsewhere(selected_with_cnn, world):
    """Export the Swin model, install it into empty nnU-Net folders (another machine: no pretraining checkpoint, no
    preprocessed data) and predict there with probabilities."""
    env = world["env"]
    zip_file = world["root"] / "swin_model.zip"
    _nnunet("nnUNetv2_export_model_to_zip", "-d", "561", "-o", zip_file, "-c", "3d_fullres", "-tr", SWIN, "-p",
            SWIN_PLANS, env=env)
    other = world["root"] / "other_machine"
    other_env = {**env}
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnssl_results"):
        (other / name).mkdir(parents=True)
        other_env[name] = str(other / name)
    _nnunet("nnUNetv2_install_pretrained_model_from_zip", zip_file, env=other_env)
    hidden = world["ckpt"].with_name("not_on_the_other_machine")
    world["ckpt"].rename(hidden)          # the only pretraining checkpoint on this machine is out of reach too
    try:
        _nnunet("nnUNetv2_predict", "-i", world["patients"], "-o", world["root"] / "pred_swin", "-d", "561", "-c",
                "3d_fullres", "-tr", SWIN, "-p", SWIN_PLANS, "-device", "cpu", "-npp", "1", "-nps", "1",
                "--save_probabilities", env=other_env)
    finally:
        hidden.rename(world["ckpt"])
    return zip_file, other


def test_export_install_and_predict_elsewhere(installed_elsewhere, world):
    zip_file, other = installed_elsewhere
    with zipfile.ZipFile(zip_file) as z:
        names = z.namelist()
        plans = z.read(f"{DATASET}/{SWIN_MODEL}/plans.json").decode()
    assert {f"{DATASET}/{SWIN_MODEL}/fold_{f}/checkpoint_final.pth" for f in FOLDS} <= set(names)
    assert not any(world["ckpt"].parent.name in n for n in names)     # the pretraining checkpoint stays home
    assert str(world["root"]) not in plans                              # no path of this machine travels along
    assert json.loads(plans)["configurations"]["3d_fullres"]["nnssl_pretrained"]["file"] == \
        "simmim__tiny__D560/checkpoint_final.pth"
    assert (other / "nnUNet_results" / DATASET / SWIN_MODEL / "fold_4" / "checkpoint_final.pth").is_file()
    pred = sitk.ReadImage(str(world["root"] / "pred_swin" / "patient_a.nii.gz"))
    image = sitk.ReadImage(str(world["patients"] / "patient_a_0000.nii.gz"))
    assert pred.GetSize() == image.GetSize()
    assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 1, 2}


def test_ensemble_with_the_cnn_and_postprocess(installed_elsewhere, selected_with_cnn, world):
    env, root = world["env"], world["root"]           # pred_cnn: the CNN's prediction, made in `trained`
    _nnunet("nnUNetv2_ensemble", "-i", root / "pred_swin", root / "pred_cnn", "-o", root / "ensemble", "-np", "1",
            env=env)
    # the ensemble is the label of the mean of both models' probabilities
    mean = sum(np.load(root / f / "patient_a.npz")["probabilities"].astype(np.float32)
               for f in ("pred_swin", "pred_cnn")) / 2
    ensembled = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "ensemble" / "patient_a.nii.gz")))
    assert np.array_equal(ensembled, mean.argmax(0))
    best = selected_with_cnn["best_model_or_ensemble"]
    _nnunet("nnUNetv2_apply_postprocessing", "-i", root / "ensemble", "-o", root / "ensemble_pp", "-pp_pkl_file",
            best["postprocessing_file"], "-plans_json", best["some_plans_file"], "-np", "1", env=env)
    post = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "ensemble_pp" / "patient_a.nii.gz")))
    assert post.shape == ensembled.shape and set(np.unique(post)) <= set(np.unique(ensembled))


def _in_process_env(world, monkeypatch, results: Path | None = None) -> None:
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer", "nnssl_results",
              "nnUNet_n_proc_DA", "NNSSL_ITERATIONS_PER_EPOCH", "NNSSL_VAL_ITERATIONS_PER_EPOCH",
              "NNSSL_DISABLE_MIRRORING"):
        monkeypatch.setenv(k, world["env"][k])
    if results is not None:
        results.mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv("nnUNet_results", str(results))


@pytest.fixture(scope="module")
def moved_plans(world):
    """The pretraining dataset's Swin plans moved to the target (nnU-Net's command), the target preprocessed with them
    (nnU-Net's command) and the checkpoint attached to the moved plans."""
    env, pre = world["env"], world["pre"]
    _nnunet("nnUNetv2_move_plans_between_datasets", "-s", "560", "-t", "561", "-sp", "nnUNetSwinPlans", "-tp",
            "nnUNetSwinPlansFrom560", env=env)
    _nnunet("nnUNetv2_preprocess", "-d", "561", "-plans_name", "nnUNetSwinPlansFrom560", "-c", "3d_fullres", "-np", "1",
            env={**env, "nnUNet_n_proc_DA": "1"})
    with pytest.MonkeyPatch.context() as mp:
        for k in ("nnUNet_preprocessed", "nnssl_results"):
            mp.setenv(k, env[k])
        from nnssl.cli.attach import main as attach_main

        assert attach_main(["-d", "561", "-p", "nnUNetSwinPlansFrom560", "--checkpoint", str(world["ckpt"]),
                            "--name", "simmim"]) == 0
    return json.loads((pre / DATASET / "nnUNetSwinPlansFrom560.json").read_text())


def test_plans_moved_from_the_pretraining_dataset(moved_plans, world, monkeypatch):
    """Fine-tune with the pretraining dataset's spacing and normalisation: the moved Swin plans keep nnssl's marker and
    encoder, and the Swin trainer fine-tunes the pretrained encoder on the target preprocessed with them."""
    pre = world["pre"]
    source = json.loads((pre / SOURCE / "nnUNetSwinPlans.json").read_text())
    conf, src_conf = moved_plans["configurations"]["3d_fullres"], source["configurations"]["3d_fullres"]
    assert moved_plans["nnssl_plans"] is True and conf["nnssl_encoder"] == src_conf["nnssl_encoder"]
    assert conf["spacing"] == src_conf["spacing"] == [1.5, 1.5, 1.5] and conf["patch_size"] == src_conf["patch_size"]
    assert conf["normalization_schemes"] == src_conf["normalization_schemes"]
    assert moved_plans["foreground_intensity_properties_per_channel"] == \
        source["foreground_intensity_properties_per_channel"]
    assert moved_plans["dataset_name"] == DATASET and conf["data_identifier"] == "nnUNetSwinPlansFrom560_3d_fullres"
    _in_process_env(world, monkeypatch, world["root"] / "results_moved")
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape
    from nnunetv2.run.run_training import get_trainer_from_args

    trainer = get_trainer_from_args("561", "3d_fullres", 0, "SwinSSLTrainer_1epochs", "nnUNetSwinPlansFrom560_simmim",
                                    device=torch.device("cpu"))
    trainer.run_training()
    assert trainer.pretrained_report is not None and not trainer.pretrained_report.missing
    assert Path(trainer.output_folder, "checkpoint_final.pth").is_file()
    at_1mm = trainer.dataset_class(str(pre / DATASET / "nnUNetPlans_3d_fullres")).load_case("case_000")[0].shape
    at_source = trainer.dataset_class(trainer.preprocessed_dataset_folder).load_case("case_000")[0].shape
    # the target resampled to the pretraining data's 1.5 mm
    assert list(at_source[1:]) == list(compute_new_shape(at_1mm[1:], [1.0] * 3, [1.5] * 3))


def _label_kind_trainer(world, monkeypatch, dataset_json: dict, results: str):
    """SwinScratchTrainer_1epochs on the world's preprocessed data, with another label definition."""
    _in_process_env(world, monkeypatch, world["root"] / results)
    from nnssl.finetune.trainers import trainer_class

    plans = json.loads((world["pre"] / DATASET / "nnUNetSwinPlans.json").read_text())
    return trainer_class("SwinScratchTrainer_1epochs")({**plans, "continue_training": False}, "3d_fullres", 0,
                                                       dataset_json, torch.device("cpu"))


def test_region_based_labels_train(world, monkeypatch):
    from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss

    dataset_json = json.loads((world["pre"] / DATASET / "dataset.json").read_text())
    dataset_json["labels"] = {"background": 0, "sphere_or_box": [1, 2], "box": 2, "ignore": 3}
    dataset_json["regions_class_order"] = [1, 2]
    trainer = _label_kind_trainer(world, monkeypatch, dataset_json, "results_regions")
    trainer.run_training()
    assert trainer.label_manager.has_regions and isinstance(trainer.loss, DC_and_BCE_loss)
    assert trainer.network.out.conv.conv.out_channels == 2              # one sigmoid output per region
    assert np.isfinite(trainer.logger.get_value("train_losses", step=-1))
    assert Path(trainer.output_folder, "checkpoint_final.pth").is_file()


def test_ignore_label_trains_and_ignored_voxels_do_not_count(trained, world, monkeypatch):
    # every run of the world trained and was evaluated with the ignore label
    for model in (SWIN_MODEL, CNN_MODEL):
        assert json.loads((world["res"] / DATASET / model / "dataset.json").read_text())["labels"]["ignore"] == 3
    summary = json.loads((trained["fold0"] / "validation" / "summary.json").read_text())
    assert set(summary["mean"]) == {"1", "2"}                          # "ignore" is not a class to predict
    trainer = _label_kind_trainer(world, monkeypatch, json.loads((world["pre"] / DATASET / "dataset.json").read_text()),
                                  "results_ignore")
    trainer.initialize()
    assert trainer.label_manager.ignore_label == 3 and trainer.network.out.conv.conv.out_channels == 3
    # the Swin trainer's loss (no deep-supervision wrapper) gives the same value whatever the network predicts in
    # voxels labelled "ignore"
    torch.manual_seed(0)
    target = torch.randint(0, 3, (1, 1, 64, 32, 32))
    target[:, :, :32] = 3
    logits = torch.randn(1, 3, 64, 32, 32)
    changed = logits.clone()
    changed[:, :, :32] = torch.randn(1, 3, 32, 32, 32) * 10
    assert torch.allclose(trainer.loss(logits, target), trainer.loss(changed, target))
    assert not torch.allclose(trainer.loss(logits, target), trainer.loss(changed, torch.zeros_like(target)))


def test_ddp_ranks_load_the_same_pretrained_encoder_and_report_once(world):
    out = world["root"] / "ddp_load.json"
    _run([sys.executable, RUNNER, "ddp-load", DATASET, "SwinSSLTrainer_1epochs", SWIN_PLANS, "0", out], world["env"])
    result = json.loads(out.read_text())
    ranks = result["ranks"]
    n = len(world["payload"]["encoder"])
    assert len(ranks) == 2 and ranks[0]["digest"] == ranks[1]["digest"]
    assert all(r["loaded"] + r["adapted"] == r["expected"] == n for r in ranks)
    fold = Path(result["log_file"]).parent
    log = "".join(p.read_text() for p in fold.glob("training_log_*.txt"))   # rank 1 writes no log
    assert len(re.findall(rf"loaded {n}/{n} encoder tensors", log)) == 1


def test_no_plans_file_holds_an_absolute_path(world, trained, installed_elsewhere, moved_plans):
    """Plans written by nnssl, their copies in model folders and the moved and attached plans name nothing of this
    machine's file system."""
    files = list(world["pre"].glob("Dataset*/nnUNetSwinPlans*.json")) + \
        list(world["res"].glob(f"{DATASET}/Swin*/plans.json")) + \
        list(world["root"].glob(f"results_*/{DATASET}/Swin*/plans.json"))
    assert any(f.name == "nnUNetSwinPlansFrom560_simmim.json" for f in files)
    assert any(f.parent.name == SWIN_MODEL for f in files)

    def strings(x):
        if isinstance(x, dict):
            for v in x.values():
                yield from strings(v)
        elif isinstance(x, list):
            for v in x:
                yield from strings(v)
        elif isinstance(x, str):
            yield x

    for f in files:
        text = f.read_text()
        assert str(world["root"]) not in text, f
        assert not [s for s in strings(json.loads(text)) if os.path.isabs(s)], f
