"""End to end through nnU-Net v2 on a tiny generated dataset (CPU): plan + preprocess, train one short epoch,
validation summary, --c resume, predict, trainer lookup, SSL checkpoint loading and fine-tuning, few-shot subsets.

nnU-Net's commands run as subprocesses with their environment set per test (as a user runs them); the documented
test knobs of the Swin trainers keep epochs to 2 iterations and switch mirroring off.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from datasets import make_dataset, nnunet_env

DATASET = "Dataset521_Spheres"
SHAPE = (30, 32, 30)         # -> patch 32x64x32 (median rounded up to 32; bottleneck > 1 voxel)
TINY_ENCODER_SIZE = 12


def _run(args: list[str], env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc


def _nnunet(cmd: str, *args: str, env: dict) -> subprocess.CompletedProcess:
    # the console scripts live next to the interpreter of this venv
    exe = str(Path(sys.executable).with_name(cmd))
    return _run([exe, *args], env)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Planned + preprocessed labeled (521) and images-only (522) datasets; env for nnU-Net commands."""
    root = tmp_path_factory.mktemp("nnunet")
    env = nnunet_env(root)
    make_dataset(env["nnUNet_raw"], 521, name="Spheres", num_cases=8, shape=SHAPE, seed=1)
    make_dataset(env["nnUNet_raw"], 522, name="Unlabeled", num_cases=3, images_only=True,
                 shapes=[SHAPE, (28, 33, 31), (31, 30, 29)], seed=2)
    with pytest.MonkeyPatch.context() as mp:
        for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer", "nnssl_results"):
            mp.setenv(k, env[k])
        from nnssl.cli.plan_and_preprocess import main

        assert main(["-d", "521", "522", "-np", "1", "-npfp", "1", "--encoder", "tiny", "--no_pbar"]) == 0
    # test speed only: one patch per step (the planner's minimum is nnU-Net's 2)
    plans_file = Path(env["nnUNet_preprocessed"]) / DATASET / "nnUNetSwinPlans.json"
    plans = json.loads(plans_file.read_text())
    assert plans["configurations"]["3d_fullres"]["batch_size"] == 2
    plans["configurations"]["3d_fullres"]["batch_size"] = 1
    plans_file.write_text(json.dumps(plans))
    return {"root": root, "env": env, "pre": Path(env["nnUNet_preprocessed"]),
            "res": Path(env["nnUNet_results"]), "raw": Path(env["nnUNet_raw"])}


@pytest.fixture()
def nn_env(world, monkeypatch):
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer", "nnssl_results"):
        monkeypatch.setenv(k, world["env"][k])
    return world


def test_plan_and_preprocess(world):
    plans = json.loads((world["pre"] / DATASET / "nnUNetSwinPlans.json").read_text())
    conf = plans["configurations"]["3d_fullres"]
    assert plans["nnssl_plans"] is True
    assert conf["patch_size"] == [32, 64, 32]
    assert conf["nnssl_encoder"]["feature_size"] == TINY_ENCODER_SIZE
    data = world["pre"] / DATASET / conf["data_identifier"]
    cases = sorted(p.name[:-5] for p in data.glob("*.b2nd") if not p.name.endswith("_seg.b2nd"))
    assert cases == [f"case_{i:03d}" for i in range(8)]
    assert len(list((world["pre"] / DATASET / "gt_segmentations").glob("*.nii.gz"))) == 8


def test_images_only_dataset_preprocessed_like_any_other(world):
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    name = "Dataset522_Unlabeled"
    raw = world["raw"] / name
    assert not (raw / "labelsTr").exists()          # nothing written into the user's raw folder
    plans = json.loads((world["pre"] / name / "nnUNetSwinPlans.json").read_text())
    folder = world["pre"] / name / plans["configurations"]["3d_fullres"]["data_identifier"]
    fingerprint = json.loads((world["pre"] / name / "dataset_fingerprint.json").read_text())
    # body voxels (> -500 HU) give the intensity statistics: tissue at 40 HU dominates, air is excluded
    assert fingerprint["foreground_intensity_properties_per_channel"]["0"]["percentile_00_5"] > -500
    ds_cls = infer_dataset_class(str(folder))
    ds = ds_cls(str(folder))
    assert sorted(ds.identifiers) == ["case_000", "case_001", "case_002"]
    data, seg, _, props = ds.load_case("case_001")
    assert data.shape[1:] == seg.shape[1:] and data.shape[0] == 1
    assert set(np.unique(seg[:])) <= {0, -1}       # all-zero label (-1 outside the nonzero region)
    assert props["class_locations"] == {}


def _logging(ckpt_path: Path) -> dict:
    return torch.load(ckpt_path, map_location="cpu", weights_only=False)["logging"]


@pytest.fixture(scope="module")
def scratch_run(world):
    _nnunet("nnUNetv2_train", "521", "3d_fullres", "0", "-tr", "SwinScratchTrainer_1epochs", "-p", "nnUNetSwinPlans",
            "-device", "cpu", "--npz", env=world["env"])
    return world["res"] / DATASET / "SwinScratchTrainer_1epochs__nnUNetSwinPlans__3d_fullres"


def test_train_one_epoch_writes_validation_summary(scratch_run):
    fold = scratch_run / "fold_0"
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert set(summary["mean"]) == {"1", "2"}      # Dice for every foreground label
    assert all(np.isfinite(summary["mean"][k]["Dice"]) for k in ("1", "2"))
    assert len(list((fold / "validation").glob("*.npz"))) == len(summary["metric_per_case"])  # --npz
    log = _logging(fold / "checkpoint_final.pth")
    for key in ("mean_fg_dice", "ema_fg_dice", "train_losses", "val_losses", "dice_per_class_or_region",
                "epoch_start_timestamps", "epoch_end_timestamps", "lrs"):
        assert len(log[key]) == 1, key
    # warmup (1% of all iterations, at least 1) ends at the base lr 1e-4: the first epoch starts there
    assert log["lrs"][0] == pytest.approx(1e-4)
    debug = json.loads((fold / "debug.json").read_text())
    assert debug["enable_deep_supervision"] == "False" and debug["num_epochs"] == "1"


@pytest.mark.slow
def test_continue_training_resumes(scratch_run, world):
    # a 2-epoch run interrupted after its first epoch: the 1-epoch run's checkpoint in the 2-epoch run's folder
    target = world["res"] / DATASET / "SwinScratchTrainer_2epochs__nnUNetSwinPlans__3d_fullres"
    shutil.copytree(scratch_run, target)
    shutil.rmtree(target / "fold_0" / "validation")
    first = _logging(target / "fold_0" / "checkpoint_final.pth")
    _nnunet("nnUNetv2_train", "521", "3d_fullres", "0", "-tr", "SwinScratchTrainer_2epochs", "-p",
            "nnUNetSwinPlans", "-device", "cpu", "--c", env=world["env"])
    log = _logging(target / "fold_0" / "checkpoint_final.pth")
    assert len(log["train_losses"]) == 2                           # trained exactly the missing epoch
    assert log["train_losses"][0] == first["train_losses"][0]      # epoch 0 is the resumed one
    assert log["epoch_start_timestamps"][0] == first["epoch_start_timestamps"][0]
    assert (target / "fold_0" / "validation" / "summary.json").is_file()


@pytest.mark.slow
def test_validation_only_rerun(scratch_run, world):
    summary = scratch_run / "fold_0" / "validation" / "summary.json"
    before = json.loads(summary.read_text())
    summary.unlink()
    _nnunet("nnUNetv2_train", "521", "3d_fullres", "0", "-tr", "SwinScratchTrainer_1epochs", "-p", "nnUNetSwinPlans",
            "-device", "cpu", "--val", env=world["env"])
    after = json.loads(summary.read_text())
    assert after["foreground_mean"]["Dice"] == pytest.approx(before["foreground_mean"]["Dice"])


def test_trainers_found_through_nnunet_lookup(nn_env):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from nnssl.finetune.trainers import TRAINER_CLASSES

    pattern = re.compile(r"^Swin(Scratch|SSL)Trainer(_(\d+)shot)?(_(\d+)epochs)?$")
    assert all(pattern.match(n) for n in TRAINER_CLASSES)
    for name in ("SwinScratchTrainer", "SwinSSLTrainer", "SwinSSLTrainer_5shot", "SwinScratchTrainer_10shot",
                 "SwinSSLTrainer_5shot_2epochs", "SwinScratchTrainer_50epochs"):
        cls = recursive_find_trainer_class_by_name(name)
        assert cls.__name__ == name
        assert cls.__module__ == "nnssl.finetune.trainers"   # picklable and unique: one definition per name
    cls = recursive_find_trainer_class_by_name("SwinSSLTrainer_5shot_2epochs")
    assert cls.num_shots == 5 and cls.fixed_num_epochs == 2


def _checkpoint(path: Path, seed: int = 0, in_channels: int = 1) -> dict:
    from nnssl.checkpoint import save_checkpoint
    from nnssl.encoders.swin import EncoderConfig, SwinEncoder

    torch.manual_seed(seed)
    cfg = EncoderConfig.preset("tiny", in_channels=in_channels)
    enc = SwinEncoder(cfg)
    payload = {"method": "simmim", "encoder_config": cfg.to_dict(), "encoder": enc.swin_state_dict(),
               "provenance": {"normalization": {"schemes": ["CTNormalization"]}}}
    save_checkpoint(path, payload)
    return payload


def _trainer(cls_name: str, plans_name: str, world, fold: int = 0):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    cls = recursive_find_trainer_class_by_name(cls_name)
    plans = json.loads((world["pre"] / DATASET / f"{plans_name}.json").read_text())
    plans["continue_training"] = False
    dataset_json = json.loads((world["pre"] / DATASET / "dataset.json").read_text())
    return cls(plans=plans, configuration="3d_fullres", fold=fold, dataset_json=dataset_json,
               device=torch.device("cpu"))


@pytest.fixture(scope="module")
def attached(world):
    # where nnssl_pretrain would have written it: the plans then name it relative to the nnssl results folder
    ckpt_path = Path(world["env"]["nnssl_results"]) / "simmim__tiny__D0" / "checkpoint_final.pth"
    payload = _checkpoint(ckpt_path)
    from nnssl.cli.attach import main

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("nnUNet_preprocessed", world["env"]["nnUNet_preprocessed"])
        mp.setenv("nnssl_results", world["env"]["nnssl_results"])
        assert main(["-d", "521", "--checkpoint", str(ckpt_path), "--name", "test"]) == 0
    return ckpt_path, payload


def test_attach_writes_plans(attached, world):
    ckpt_path, payload = attached
    plans = json.loads((world["pre"] / DATASET / "nnUNetSwinPlans_test.json").read_text())
    base = json.loads((world["pre"] / DATASET / "nnUNetSwinPlans.json").read_text())
    conf = plans["configurations"]["3d_fullres"]
    assert plans["plans_name"] == "nnUNetSwinPlans_test" and plans["nnssl_plans"] is True
    from nnssl.io import file_sha256

    assert conf["nnssl_pretrained"] == {"name": "test", "method": "simmim", "sha256": file_sha256(ckpt_path),
                                        "file": "simmim__tiny__D0/checkpoint_final.pth"}
    assert conf["nnssl_encoder"] == {k: v for k, v in payload["encoder_config"].items() if k != "in_channels"}
    assert conf["data_identifier"] == base["configurations"]["3d_fullres"]["data_identifier"]  # no re-preprocessing


def test_ssl_trainer_loads_checkpoint_weights(attached, nn_env, monkeypatch):
    import nnssl.finetune.trainers as trainers

    _, payload = attached
    calls = []  # on the CPU the trainer keeps freed memory for the next iteration (nnssl.cpu_memory)
    monkeypatch.setattr(trainers, "keep_freed_memory", lambda: calls.append("keep") or True)
    trainer = _trainer("SwinSSLTrainer", "nnUNetSwinPlans_test", nn_env)
    trainer.initialize()
    assert calls == ["keep"]
    state = trainer.network.state_dict()
    for key, value in payload["encoder"].items():
        assert torch.equal(state[key], value), key
    assert len(trainer.pretrained_report.loaded) == len(payload["encoder"])
    log = Path(trainer.log_file).read_text()
    n = len(payload["encoder"])
    assert f"loaded {n}/{n} encoder tensors" in log
    # the scratch trainer's encoder is random, not the checkpoint's
    scratch = _trainer("SwinScratchTrainer", "nnUNetSwinPlans", nn_env)
    scratch.initialize()
    key = "swinViT.layers1.0.blocks.0.attn.qkv.weight"
    assert not torch.equal(scratch.network.state_dict()[key], payload["encoder"][key])


def test_ssl_trainer_adapts_input_channels(nn_env, tmp_path, monkeypatch):
    from nnssl.finetune.pretrained import describe_checkpoint, load_pretrained_encoder
    from nnssl.finetune.network import build_network_from_configuration

    monkeypatch.setenv("nnssl_results", str(tmp_path))
    payload = _checkpoint(tmp_path / "one_channel.pt", seed=3)
    conf = json.loads((nn_env["pre"] / DATASET / "nnUNetSwinPlans.json").read_text())["configurations"]["3d_fullres"]
    conf = {**conf, "nnssl_pretrained": describe_checkpoint(tmp_path / "one_channel.pt", "x", "simmim")[0]}
    net = build_network_from_configuration(conf, 3, 3)
    messages = []
    load_pretrained_encoder(net, conf, DATASET, "p", 3, log=messages.append)
    w_src = payload["encoder"]["swinViT.patch_embed.proj.weight"]          # (12, 1, 2, 2, 2)
    w = net.state_dict()["swinViT.patch_embed.proj.weight"]                 # (12, 3, 2, 2, 2)
    for c in range(3):
        assert torch.allclose(w[:, c], w_src[:, 0] / 3)
    assert any("scaled by 1/3" in m for m in messages)


@pytest.mark.parametrize("change,match", [
    ({"depths": [2, 2, 2, 1]}, "does not have"),          # smaller encoder: checkpoint tensors left over
    ({"feature_size": 24}, "encoder does not fit"),         # other width: shapes differ, named
])
def test_ssl_trainer_refuses_mismatched_encoder(attached, nn_env, change, match):
    # plans whose encoder differs from the attached checkpoint's (e.g. edited by hand)
    plans = json.loads((nn_env["pre"] / DATASET / "nnUNetSwinPlans_test.json").read_text())
    plans["configurations"]["3d_fullres"]["nnssl_encoder"].update(change)
    plans["plans_name"] = "nnUNetSwinPlans_mismatch"
    (nn_env["pre"] / DATASET / "nnUNetSwinPlans_mismatch.json").write_text(json.dumps(plans))
    trainer = _trainer("SwinSSLTrainer", "nnUNetSwinPlans_mismatch", nn_env)
    with pytest.raises(ValueError, match=match) as e:
        trainer.initialize()
    assert "swinViT." in str(e.value)


@pytest.fixture(scope="module")
def ssl_run(attached, world):
    _nnunet("nnUNetv2_train", "521", "3d_fullres", "0", "-tr", "SwinSSLTrainer_1epochs", "-p",
            "nnUNetSwinPlans_test", "-device", "cpu", env=world["env"])
    return world["res"] / DATASET / "SwinSSLTrainer_1epochs__nnUNetSwinPlans_test__3d_fullres"


def test_ssl_finetune_one_epoch(ssl_run):
    fold = ssl_run / "fold_0"
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert set(summary["mean"]) == {"1", "2"}
    log = "".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    assert re.search(r"loaded (\d+)/\1 encoder tensors", log)


def test_predict_writes_segmentations(ssl_run, attached, world, tmp_path):
    # inference builds the network from the plans only: it must work without the pretraining checkpoint
    ckpt_path, _ = attached
    hidden = ckpt_path.with_suffix(".moved")
    ckpt_path.rename(hidden)
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    for case in ("case_000", "case_005"):
        shutil.copy(world["raw"] / DATASET / "imagesTr" / f"{case}_0000.nii.gz", inp)
    try:
        _nnunet("nnUNetv2_predict", "-i", str(inp), "-o", str(out), "-d", "521", "-c", "3d_fullres", "-f", "0",
                "-tr", "SwinSSLTrainer_1epochs", "-p", "nnUNetSwinPlans_test", "-device", "cpu",
                "-chk", "checkpoint_final.pth", "-npp", "1", "-nps", "1", "--disable_tta", env=world["env"])
    finally:
        hidden.rename(ckpt_path)
    for case in ("case_000", "case_005"):
        pred = sitk.ReadImage(str(out / f"{case}.nii.gz"))
        img = sitk.ReadImage(str(inp / f"{case}_0000.nii.gz"))
        assert pred.GetSize() == img.GetSize() and pred.GetSpacing() == pytest.approx(img.GetSpacing())
        assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 1, 2}


def test_fewshot_subset_identical_across_methods_and_recorded(attached, nn_env):
    from nnssl.finetune.fewshot import select_fewshot

    scratch = _trainer("SwinScratchTrainer_5shot", "nnUNetSwinPlans", nn_env)
    ssl = _trainer("SwinSSLTrainer_5shot", "nnUNetSwinPlans_test", nn_env)
    tr_s, val_s = scratch.do_split()
    tr_l, val_l = ssl.do_split()
    assert tr_s == tr_l and len(tr_s) == 5
    full_tr, full_val = _trainer("SwinScratchTrainer", "nnUNetSwinPlans", nn_env).do_split()
    assert val_s == val_l == full_val                 # validation on the fold's full validation set
    assert set(tr_s) <= set(full_tr)
    rec_s = json.loads((Path(scratch.output_folder) / "fewshot_subset.json").read_text())
    rec_l = json.loads((Path(ssl.output_folder) / "fewshot_subset.json").read_text())
    assert rec_s["train_subset"] == rec_l["train_subset"] == tr_s
    assert rec_s["seed"] == rec_l["seed"] and rec_s["shots"] == 5
    # nested regimes and dependence on the fold only
    keys = [f"c{i:02d}" for i in range(30)]
    five, ten = select_fewshot(keys, 5, DATASET, 0), select_fewshot(keys, 10, DATASET, 0)
    assert set(five) <= set(ten)
    assert select_fewshot(keys, 5, DATASET, 1) != five
    # a fold with fewer training cases than shots is refused
    with pytest.raises(ValueError, match="only 6 training case"):
        _trainer("SwinScratchTrainer_10shot", "nnUNetSwinPlans", nn_env).do_split()


def test_normalisation_difference_is_logged(nn_env, tmp_path, monkeypatch):
    from nnssl.checkpoint import save_checkpoint
    from nnssl.finetune.network import build_network_from_configuration
    from nnssl.finetune.pretrained import describe_checkpoint, load_pretrained_encoder

    monkeypatch.setenv("nnssl_results", str(tmp_path))
    payload = _checkpoint(tmp_path / "ct.pt")
    conf = json.loads((nn_env["pre"] / DATASET / "nnUNetSwinPlans.json").read_text())["configurations"]["3d_fullres"]
    messages = []
    for name, schemes in (("ct.pt", ["CTNormalization"]), ("mri.pt", ["ZScoreNormalization"])):
        save_checkpoint(tmp_path / name, {**payload, "provenance": {"normalization": {"schemes": schemes}}})
        c = {**conf, "nnssl_pretrained": describe_checkpoint(tmp_path / name, "x", "simmim")[0]}
        load_pretrained_encoder(build_network_from_configuration(c, 1, 3), c, DATASET, "p", 1, log=messages.append)
    warnings = [m for m in messages if "WARNING intensity normalisation differs" in m]
    assert len(warnings) == 1 and "ZScoreNormalization" in warnings[0] and "CTNormalization" in warnings[0]


@pytest.mark.parametrize("step,expected", [(0, 0.1), (9, 1.0), (10, 1.0), (55, 0.5), (100, 0.0), (250, 0.0)])
def test_warmup_cosine_known_values(step, expected):
    from nnssl.finetune.schedule import warmup_cosine_lr

    # 10 warmup steps to 1.0 (step 0 -> 1/10), then half a cosine over the remaining 90 steps (midpoint 55 -> 0.5)
    assert warmup_cosine_lr(step, 100, 10, 1.0) == pytest.approx(expected)
