"""The adaptation ladder: frozen encoder, per-stage linear probe, decoder-first warm-up and layer-wise lr decay.

Pure parts (parameter groups, depths, the lr formula) on a tiny SwinUNETR; the trainers on a planned and preprocessed
tiny dataset, stepped with fixed batches (what must and must not change after optimiser steps); and stock
``nnUNetv2_train`` / ``nnUNetv2_predict`` running a probe variant end to end.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from datasets import make_dataset, nnunet_env

from nnssl.encoders.swin import EncoderConfig, build_swinunetr
from nnssl.finetune import adaptation
from nnssl.finetune.schedule import warmup_cosine_lr
from nnssl.nnunet.naming import Protocol, parse_protocol, parse_run_name, parse_trainer_name, trainer_name

DATASET = "Dataset531_Ladder"
SHAPE = (30, 32, 30)  # -> patch 32x64x32 with the tiny encoder


# ---------------------------------------------------------------------------------------------------------------------
# names
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, protocol, shots, draw, epochs", [
    ("SwinSSLTrainer_frozen", "frozen", None, 0, None),
    ("SwinScratchTrainer_probe4_5shot_draw2_2epochs", "probe4", 5, 2, 2),
    ("SwinSSLTrainer_decfirst10_10shot", "decfirst10", 10, 0, None),
    ("SwinSSLTrainer_llrd75_1epochs", "llrd75", None, 0, 1),
])
def test_protocol_names_round_trip_with_every_regime(name, protocol, shots, draw, epochs):
    t = parse_trainer_name(name)
    assert (t.protocol, t.shots, t.draw, t.epochs) == (protocol, shots, draw, epochs)
    assert t.name == name
    method = "scratch" if t.kind == "Scratch" else "smit"
    assert trainer_name(method, shots, epochs, draw, protocol) == name
    plans = "nnUNetSwinPlans" if method == "scratch" else "nnUNetSwinPlans_smit"
    run = parse_run_name(f"{name}__{plans}__3d_fullres")
    assert run.protocol == protocol and run.method == method  # the protocol is part of the regime, not the method


@pytest.mark.parametrize("bad, why", [("llrd0", "1..99"), ("llrd100", "1..99"), ("probe5", "stage must be one of"),
                                      ("decfirst", "1..99"), ("thaw", "is not one of"), ("frozen2", "takes no")])
def test_bad_protocols_say_why(bad, why):
    with pytest.raises(ValueError, match=why):
        parse_protocol(bad)


def test_protocol_in_a_bad_trainer_name_is_named():
    with pytest.raises(ValueError, match="SwinSSLTrainer_probe9.*stage"):
        parse_trainer_name("SwinSSLTrainer_probe9")


# ---------------------------------------------------------------------------------------------------------------------
# parameter groups and the lr formula
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_net():
    return build_swinunetr(EncoderConfig.preset("tiny"), 3)


def test_every_encoder_parameter_has_its_stage_depth(tiny_net):
    depths = {n: adaptation.encoder_depth(n) for n, _ in tiny_net.named_parameters()}
    assert {depths[n] for n in depths if n.startswith("swinViT.layers4")} == {1}
    assert {depths[n] for n in depths if n.startswith("swinViT.layers1")} == {4}
    assert {depths[n] for n in depths if n.startswith("swinViT.patch_embed")} == {5}
    assert {d for n, d in depths.items() if not n.startswith("swinViT.")} == {0}
    assert adaptation.encoder_depth("swinViT.layers2c.0.conv.weight") == 3  # SwinUNETR-v2's conv blocks


def test_llrd_groups_scale_each_stage_by_decay_to_its_depth(tiny_net):
    groups = adaptation.parameter_groups(tiny_net, Protocol("llrd", 75))
    assert [g["name"] for g in groups] == ["decoder", "encoder.stage4", "encoder.stage3", "encoder.stage2",
                                           "encoder.stage1", "encoder.patch_embed"]
    assert [g["lr_scale"] for g in groups] == pytest.approx([0.75 ** d for d in range(6)])
    assert sum(len(g["params"]) for g in groups) == len(list(tiny_net.parameters()))  # each parameter in one group


def test_full_fine_tuning_keeps_one_group(tiny_net):
    groups = adaptation.parameter_groups(tiny_net, None)
    assert len(groups) == 1 and groups[0]["lr_scale"] == 1.0


@pytest.mark.parametrize("it, expected", [(0, 0.0), (9, 0.0), (10, 0.25), (12, 0.75), (13, 1.0), (500, 1.0)])
def test_decoder_first_encoder_factor(it, expected):
    assert adaptation.encoder_lr_factor(it, start=10, warmup=4) == pytest.approx(expected)


def test_decoder_only_phase_leaves_both_phases():
    assert adaptation.decoder_only_iterations(Protocol("decfirst", 10), 1000) == 100
    assert adaptation.decoder_only_iterations(Protocol("decfirst", 99), 2) == 1
    assert adaptation.decoder_only_iterations(Protocol("llrd", 50), 1000) == 0


def test_probe_network_shape_and_keys():
    cfg = EncoderConfig.preset("tiny")
    probe = adaptation.StageProbe(cfg, 3, stage=3)
    out = probe(torch.randn(1, 1, 32, 64, 32))
    assert out.shape == (1, 3, 32, 64, 32)
    keys = {k for k in probe.state_dict() if not k.startswith("probe.")}
    assert keys == {k for k in build_swinunetr(cfg, 3).state_dict() if k.startswith("swinViT.")}
    assert probe.probe.in_channels == cfg.stage_channels()[3]


# ---------------------------------------------------------------------------------------------------------------------
# the trainers, stepped on fixed batches
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("ladder")
    env = nnunet_env(root)
    make_dataset(env["nnUNet_raw"], 531, name="Ladder", num_cases=8, shape=SHAPE, seed=4)
    with pytest.MonkeyPatch.context() as mp:
        for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer", "nnssl_results"):
            mp.setenv(k, env[k])
        from nnssl.cli.plan_and_preprocess import main

        assert main(["-d", "531", "-np", "1", "-npfp", "1", "--encoder", "tiny", "--no_pbar"]) == 0
        plans_file = Path(env["nnUNet_preprocessed"]) / DATASET / "nnUNetSwinPlans.json"
        plans = json.loads(plans_file.read_text())
        plans["configurations"]["3d_fullres"]["batch_size"] = 1  # test speed: one patch per step
        plans_file.write_text(json.dumps(plans))
        # a pretrained encoder attached as nnUNetSwinPlans_pre
        from nnssl.checkpoint import save_checkpoint
        from nnssl.cli.attach import main as attach
        from nnssl.encoders.swin import SwinEncoder

        torch.manual_seed(7)
        cfg = EncoderConfig.preset("tiny")
        ckpt = Path(env["nnssl_results"]) / "pre" / "checkpoint_final.pth"
        encoder = SwinEncoder(cfg).swin_state_dict()
        save_checkpoint(ckpt, {"method": "simmim", "encoder_config": cfg.to_dict(), "encoder": encoder,
                               "provenance": {"normalization": {"schemes": ["CTNormalization"]}}})
        assert attach(["-d", "531", "--checkpoint", str(ckpt), "--name", "pre"]) == 0
    return {"env": env, "pre": Path(env["nnUNet_preprocessed"]), "res": Path(env["nnUNet_results"]),
            "raw": Path(env["nnUNet_raw"]), "encoder": encoder}


@pytest.fixture()
def nn_env(world, monkeypatch):
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer", "nnssl_results",
              "NNSSL_ITERATIONS_PER_EPOCH", "NNSSL_VAL_ITERATIONS_PER_EPOCH", "NNSSL_DISABLE_MIRRORING"):
        monkeypatch.setenv(k, world["env"][k])
    monkeypatch.setenv("NNSSL_ITERATIONS_PER_EPOCH", "4")
    return world


def _trainer(name: str, plans_name: str, world):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    cls = recursive_find_trainer_class_by_name(name)
    plans = json.loads((world["pre"] / DATASET / f"{plans_name}.json").read_text())
    plans["continue_training"] = False
    dataset_json = json.loads((world["pre"] / DATASET / "dataset.json").read_text())
    trainer = cls(plans=plans, configuration="3d_fullres", fold=0, dataset_json=dataset_json,
                  device=torch.device("cpu"))
    trainer.initialize()
    return trainer


def _batch(trainer, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    patch = trainer.configuration_manager.patch_size
    data = torch.randn(1, 1, *patch, generator=g)
    target = (data > 0.5).float() + (data < -0.8).float() * 2  # labels 0, 1, 2
    return {"data": data, "target": target}


def _steps(trainer, n: int, start: int = 0) -> None:
    trainer.on_train_epoch_start()
    for i in range(n):
        trainer.train_step(_batch(trainer, start + i))


def _snapshot(net) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _split(before: dict, after: dict) -> tuple[list[str], list[str]]:
    """(encoder keys that changed, other keys that changed)."""
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    return [k for k in changed if k.startswith("swinViT.")], [k for k in changed if not k.startswith("swinViT.")]


def test_frozen_pretrained_encoder_is_bit_identical_after_steps_and_the_decoder_trains(nn_env):
    trainer = _trainer("SwinSSLTrainer_frozen_5shot", "nnUNetSwinPlans_pre", nn_env)
    net = trainer.network
    before = _snapshot(net)
    for k, v in nn_env["encoder"].items():
        assert torch.equal(before[k], v), k  # the checkpoint's encoder was loaded
    in_optimiser = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in in_optimiser for n, p in net.named_parameters() if n.startswith("swinViT."))
    _steps(trainer, 3)
    assert not net.swinViT.training and net.decoder1.training  # encoder in eval mode, decoder in train mode
    enc_changed, dec_changed = _split(before, _snapshot(net))
    assert enc_changed == [] and dec_changed
    assert all(not p.requires_grad for n, p in net.named_parameters() if n.startswith("swinViT."))
    log = Path(trainer.log_file).read_text()
    assert re.search(r"frozen: encoder swinViT \(\d+ tensors, \d+ parameters\) in eval mode", log)
    assert "lr per parameter group: decoder" in log
    record = json.loads((Path(trainer.output_folder) / "nnssl_finetune.json").read_text())
    n_encoder = sum(1 for n, _ in net.named_parameters() if n.startswith("swinViT."))
    assert record["protocol"] == "frozen" and record["frozen_encoder"]["tensors"] == n_encoder
    assert record["pretrained_encoder"].startswith("loaded")
    # what the ledger keeps of the pretraining run: this checkpoint has neither a ledger, nor spacing nor a crop
    pre = record["pretraining"]
    assert (pre["method"], pre["compute"], pre["mismatches"]) == ("simmim", None, [])
    assert pre["unrecorded"] == ["spacing", "patch size"]
    n_params = sum(p.numel() for n, p in net.named_parameters() if n.startswith("swinViT."))
    assert record["encoder_parameters"] == pre["encoder_parameters"] == n_params  # the design experiments' x axis
    assert (pre["pretraining_cases"], pre["data_fraction"]) == (None, None)  # not recorded by this checkpoint


def test_probe_trains_only_the_probe(nn_env):
    trainer = _trainer("SwinScratchTrainer_probe3", "nnUNetSwinPlans", nn_env)
    net = trainer.network
    assert isinstance(net, adaptation.StageProbe) and net.stage == 3
    assert [g["name"] for g in trainer.optimizer.param_groups] == ["probe"]
    assert {id(p) for p in trainer.optimizer.param_groups[0]["params"]} == {id(p) for p in net.probe.parameters()}
    before = _snapshot(net)
    _steps(trainer, 2)
    changed = [k for k in before if not torch.equal(before[k], net.state_dict()[k])]
    assert changed and all(k.startswith("probe.") for k in changed)


def test_llrd_group_lrs_equal_the_formula_at_every_step(nn_env):
    trainer = _trainer("SwinSSLTrainer_llrd50_2epochs", "nnUNetSwinPlans_pre", nn_env)
    sched = trainer.lr_scheduler
    total, warmup = 2 * 4, max(1, round(0.01 * 8))
    assert (sched.total, sched.warmup) == (total, warmup)
    depth_of = {"decoder": 0, "encoder.stage4": 1, "encoder.stage3": 2, "encoder.stage2": 3, "encoder.stage1": 4,
                "encoder.patch_embed": 5}
    trainer.on_train_epoch_start()
    for it in range(4):
        trainer.train_step(_batch(trainer, it))  # sets the lr of iteration `it`, then steps
        for g in trainer.optimizer.param_groups:
            assert g["lr"] == pytest.approx(warmup_cosine_lr(it, total, warmup, trainer.initial_lr)
                                            * 0.5 ** depth_of[g["name"]]), (it, g["name"])
    record = json.loads((Path(trainer.output_folder) / "nnssl_finetune.json").read_text())
    assert [g["lr_scale"] for g in record["parameter_groups"]] == pytest.approx([0.5 ** d for d in range(6)])


def test_decoder_first_freezes_the_encoder_then_trains_it_with_its_own_warm_up(nn_env):
    trainer = _trainer("SwinSSLTrainer_decfirst50_1epochs", "nnUNetSwinPlans_pre", nn_env)
    net, sched = trainer.network, trainer.lr_scheduler
    assert sched.delayed_start == 2  # half of the 4 iterations
    before = _snapshot(net)
    trainer.on_train_epoch_start()
    for it in range(2):
        trainer.train_step(_batch(trainer, it))
        enc = next(g for g in trainer.optimizer.param_groups if g["name"] == "encoder")
        assert enc["lr"] == 0.0
    assert not net.swinViT.training
    mid = _snapshot(net)
    enc_changed, dec_changed = _split(before, mid)
    assert enc_changed == [] and dec_changed
    trainer.train_step(_batch(trainer, 2))
    enc = next(g for g in trainer.optimizer.param_groups if g["name"] == "encoder")
    assert enc["lr"] == pytest.approx(sched.lr_at(2) * 1.0)  # warm-up of 1 iteration: full lr at once
    assert net.swinViT.training
    enc_changed, _ = _split(mid, _snapshot(net))
    assert enc_changed
    assert "decoder-only phase over" in Path(trainer.log_file).read_text()


# ---------------------------------------------------------------------------------------------------------------------
# stock nnUNetv2_train and nnUNetv2_predict
# ---------------------------------------------------------------------------------------------------------------------
def _nnunet(cmd: str, *args: str, env: dict) -> subprocess.CompletedProcess:
    exe = str(Path(sys.executable).with_name(cmd))
    proc = subprocess.run([exe, *args], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{cmd} {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_probe_variant_runs_in_nnunetv2_train_and_predict(world, tmp_path):
    import numpy as np
    import SimpleITK as sitk

    trainer = "SwinSSLTrainer_probe4_5shot_1epochs"
    _nnunet("nnUNetv2_train", "531", "3d_fullres", "0", "-tr", trainer, "-p", "nnUNetSwinPlans_pre", "-device", "cpu",
            env=world["env"])
    fold = world["res"] / DATASET / f"{trainer}__nnUNetSwinPlans_pre__3d_fullres" / "fold_0"
    assert (fold / "validation" / "summary.json").is_file()
    record = json.loads((fold / "nnssl_finetune.json").read_text())
    assert record["protocol"] == "probe4" and [g["name"] for g in record["parameter_groups"]] == ["probe"]
    compute = record["compute"]
    assert compute["steps"] == 1 and compute["wall_seconds"] > 0 and compute["peak_memory_bytes"] > 0
    weights = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)["network_weights"]
    for k, v in world["encoder"].items():
        assert torch.equal(weights[k], v), k  # the frozen pretrained encoder is the checkpoint's
    assert set(k for k in weights if not k.startswith("swinViT.")) == {"probe.weight", "probe.bias"}
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    case = "case_001_0000.nii.gz"
    (inp / case).write_bytes((world["raw"] / DATASET / "imagesTr" / case).read_bytes())
    _nnunet("nnUNetv2_predict", "-i", str(inp), "-o", str(out), "-d", "531", "-c", "3d_fullres", "-f", "0",
            "-tr", trainer, "-p", "nnUNetSwinPlans_pre", "-device", "cpu", "-chk", "checkpoint_final.pth",
            "-npp", "1", "-nps", "1", "--disable_tta", env=world["env"])
    pred = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "case_001.nii.gz")))
    assert pred.shape == SHAPE and set(np.unique(pred)) <= {0, 1, 2}
