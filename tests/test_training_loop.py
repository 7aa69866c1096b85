"""The shared pretraining loop: checkpoints, exact resume, NaN guard, DDP, and the nnssl_pretrain command."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import nnssl.tasks
from nnssl.checkpoint import load_checkpoint
from nnssl.training.loop import PretrainConfig, TrainingDiverged, run_pretraining
from toy_task import toy_config as _cfg

TESTS = Path(__file__).parent


def test_checkpoint_contents_and_monai_load(toy_env):
    final = run_pretraining(_cfg(steps=2), toy_env / "run", progress=False)
    ckpt = load_checkpoint(final)
    assert ckpt["step"] == 2 and ckpt["method"] == "toy"
    assert ckpt["provenance"]["datasets"][0]["dataset_id"] == 990
    assert ckpt["provenance"]["normalization"]["schemes"] == ["CTNormalization"]
    assert all(k.startswith("swinViT.") for k in ckpt["encoder"])
    from monai.networks.nets import SwinUNETR

    net = SwinUNETR(in_channels=1, out_channels=2, feature_size=12, window_size=4)
    result = net.load_state_dict(ckpt["encoder"], strict=False)
    assert not [k for k in result.missing_keys if k.startswith("swinViT.")]
    assert not result.unexpected_keys
    records = [json.loads(l) for l in (toy_env / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1] and all("loss/recon" in r for r in records)
    assert (toy_env / "run" / "loss.png").stat().st_size > 0
    assert json.loads((toy_env / "run" / "config.json").read_text())["task_config"]["mask_ratio"] == 0.5


@pytest.mark.parametrize("workers, resume_workers", [(0, 0), (2, 2), (2, 0)])
def test_resume_equivalence(toy_env, monkeypatch, workers, resume_workers):
    """4 steps = 2 steps + resume 2, bitwise, with the views built in loader workers or in the main process (and
    when the resumption changes where: the views are built on one thread everywhere)."""
    straight = load_checkpoint(run_pretraining(_cfg(steps=4, num_workers=workers), toy_env / "a", progress=False))

    # Interrupt a 4-step run after its step-2 checkpoint by failing at step 2.
    from nnssl.training import loop

    original = loop.TrainingLog.append

    def interrupt(self, record):
        original(self, record)
        if record["step"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop.TrainingLog, "append", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_pretraining(_cfg(steps=4, num_workers=workers), toy_env / "b", progress=False)
    monkeypatch.setattr(loop.TrainingLog, "append", original)
    assert load_checkpoint(toy_env / "b" / "checkpoint_latest.pth")["step"] == 2
    resumed = load_checkpoint(run_pretraining(_cfg(steps=4, num_workers=resume_workers), toy_env / "b", resume=True,
                                              progress=False))

    for key in ("encoder", "task_state"):
        for name, value in straight[key].items():
            assert torch.equal(resumed[key][name], value), f"{key}.{name} differs"
    steps = [json.loads(l)["step"] for l in (toy_env / "b" / "log.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3]
    # the compute ledger adds the resumed session to the interrupted one
    first, ledger = load_checkpoint(toy_env / "b" / "checkpoint_previous.pth")["compute"], resumed["compute"]
    assert (ledger["sessions"], ledger["steps"], ledger["samples_seen"]) == (2, 4, 8)
    assert len(ledger["session_wall_seconds"]) == 2 and ledger["session_wall_seconds"][0] == first["wall_seconds"]
    assert ledger["wall_seconds"] == pytest.approx(sum(ledger["session_wall_seconds"]))
    assert ledger["cpu_core_hours"] > first["cpu_core_hours"] > 0


def test_the_compute_ledger_is_in_the_checkpoint_and_config_json(toy_env):
    final = run_pretraining(_cfg(steps=2), toy_env / "run", progress=False)
    ckpt = load_checkpoint(final)
    ledger = ckpt["compute"]
    assert json.loads((toy_env / "run" / "config.json").read_text())["compute"] == ledger
    assert (ledger["steps"], ledger["samples_seen"], ledger["sessions"]) == (2, 4, 1)
    assert ledger["wall_seconds"] > 0 and ledger["mean_step_seconds"] == pytest.approx(ledger["wall_seconds"] / 2)
    model_bytes = sum(v.numel() * v.element_size() for v in ckpt["task_state"].values())
    assert ledger["peak_memory_bytes"] > model_bytes  # peak RSS on CPU holds at least the model
    assert ledger["device"]["type"] == "cpu" and ledger["device"]["count"] == torch.get_num_threads()
    assert ledger["gpu_hours"] == 0.0
    assert ledger["cpu_core_hours"] == pytest.approx(ledger["wall_seconds"] / 3600 * torch.get_num_threads())


def test_existing_run_needs_resume_and_same_settings(toy_env):
    run_pretraining(_cfg(steps=2), toy_env / "run", progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        run_pretraining(_cfg(steps=2), toy_env / "run", progress=False)
    with pytest.raises(ValueError, match="lr"):
        run_pretraining(_cfg(steps=2, lr=5e-4), toy_env / "run", resume=True, progress=False)


def test_nan_guard_stops_keeps_the_last_checkpoint_and_its_advice_works(toy_env, monkeypatch):
    """The stop names the step; its advice (resume with a lower lr) is accepted only as an explicit, logged change."""
    from toy_task import ToyTask

    original = ToyTask.forward

    def forward(self, views, step):
        out = original(self, views, step)
        if step == 3:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(ToyTask, "forward", forward)
    with pytest.raises(TrainingDiverged, match="at step 3 .*--resume --allow-changed lr,clip_grad --lr"):
        run_pretraining(_cfg(steps=4, checkpoint_every=2), toy_env / "run", progress=False)
    assert load_checkpoint(toy_env / "run" / "checkpoint_latest.pth")["step"] == 2
    assert not (toy_env / "run" / "checkpoint_final.pth").exists()
    monkeypatch.setattr(ToyTask, "forward", original)

    with pytest.raises(ValueError, match="add --allow-changed lr"):
        run_pretraining(_cfg(steps=4, lr=5e-4), toy_env / "run", resume=True, progress=False)
    final = run_pretraining(_cfg(steps=4, lr=5e-4), toy_env / "run", resume=True, progress=False,
                            allow_changed=["lr", "clip_grad"])
    assert load_checkpoint(final)["config"]["lr"] == 5e-4
    config = json.loads((toy_env / "run" / "config.json").read_text())
    assert config["resume_changes"] == [{"step": 2, "changed": {"lr": [1e-3, 5e-4]}}]
    records = [json.loads(l) for l in (toy_env / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2, 2, 3] and records[2]["event"] == "resume"


def test_swin_incompatible_crop_is_refused():
    with pytest.raises(ValueError, match="divisible by 32"):
        PretrainConfig(method="toy", datasets=["1"], crop=(48, 64, 64), device="cpu")


DDP_DRIVER = """
import sys, torch
import nnssl.tasks
nnssl.tasks._REGISTRY["toy"] = "toy_task:ToyTask"
from nnssl.training import loop
cfg = loop.PretrainConfig(method="toy", datasets=["990"], encoder="tiny", crop=(32, 32, 32), batch_size=1, steps=3,
                          lr=1e-3, warmup_steps=1, device="cpu", num_workers=0, checkpoint_every=10)
info = loop.init_distributed("cpu")
final, task = loop._run(cfg, __import__("pathlib").Path(sys.argv[1]), False, False, info)
torch.save(task.encoder().swin_state_dict(), f"{sys.argv[1]}/rank{info.rank}.pt")
loop.cleanup_distributed()
"""


def test_torchrun_two_cpu_ranks_end_with_identical_weights(toy_env):
    driver = toy_env / "driver.py"
    driver.write_text(DDP_DRIVER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    out = toy_env / "ddp"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29517", str(driver), str(out)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    initial = load_checkpoint(out / "checkpoint_final.pth")["encoder"]
    for name in r0:
        torch.testing.assert_close(r0[name], r1[name], msg=name)
    torch.testing.assert_close(initial["swinViT.patch_embed.proj.weight"], r0["swinViT.patch_embed.proj.weight"])


def test_cli_list_and_bad_input(toy_env, capsys):
    from nnssl.cli.pretrain import main

    assert main(["--list"]) == 0
    assert "smit" in capsys.readouterr().out
    assert main(["-m", "nosuch", "-d", "990", "--device", "cpu"]) == 2
    assert "unknown method" in capsys.readouterr().err
    assert main(["-m", "toy", "-d", "990", "--device", "cpu", "-o", "mask_ratoi=0.3"]) == 2
    assert "did you mean 'mask_ratio'" in capsys.readouterr().err
    assert main(["-m", "toy", "-d", "12345", "--device", "cpu", "--encoder", "tiny", "--crop", "32"]) == 2
    assert "not preprocessed" in capsys.readouterr().err


def test_cli_end_to_end(toy_env, capsys):
    from nnssl.cli.pretrain import main

    rc = main(["-m", "toy", "-d", "990", "--device", "cpu", "--encoder", "tiny", "--crop", "32", "--epochs", "2",
               "--batch-size", "2", "--num-workers", "1", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    run = toy_env / "results" / "toy__tiny__D990"
    assert load_checkpoint(run / "checkpoint_final.pth")["step"] == 3  # ceil(2 epochs * 3 cases / batch 2)


def test_data_fractions_are_nested_seeded_subsets_identical_across_methods_and_recorded(toy_env, monkeypatch):
    from nnssl.data.subsets import select_cases

    cases = [(d, f"case_{i:03d}") for d in ("Dataset990_A", "Dataset991_B") for i in range(20)]
    quarter, half = select_cases(cases, 0.25, seed=0), select_cases(cases, 0.5, seed=0)
    assert len(quarter) == 10 and len(half) == 20 and set(quarter) < set(half)
    assert select_cases(list(reversed(cases)), 0.25, seed=0) == quarter  # the order cases are listed in is irrelevant
    assert select_cases(cases, 0.25, seed=1) != quarter and select_cases(cases, 1.0, seed=3) == sorted(cases)
    with pytest.raises(ValueError, match=r"must be a number in \(0, 1\]"):
        select_cases(cases, 0.0, seed=0)
    # two methods at the same fraction pretrain on the same recorded cases
    monkeypatch.setitem(nnssl.tasks._REGISTRY, "toy2", "toy_task:ToyTask")
    records = {}
    for method in ("toy", "toy2"):
        final = run_pretraining(_cfg(method=method, steps=2, data_fraction=0.5), toy_env / method, progress=False)
        config = json.loads((toy_env / method / "config.json").read_text())
        assert config["data_fraction"] == 0.5
        assert load_checkpoint(final)["provenance"]["data_subset"] == config["data_subset"]
        records[method] = config["data_subset"]
    assert records["toy"] == records["toy2"]
    # what a fine-tuning record keeps of such a checkpoint (nnssl.finetune.pretrained), and its mismatches
    from nnssl.finetune.pretrained import pretraining_data, pretraining_mismatches

    ckpt = load_checkpoint(final)
    facts = pretraining_data(ckpt)
    assert (facts["pretraining_cases"], facts["data_fraction"], facts["encoder_preset"]) == (2, 0.5, "tiny")
    assert facts["encoder_parameters"] > 0 and ckpt["compute"]["steps"] == 2
    target = {"spacing": [2.0, 2.0, 2.0], "patch_size": [32, 32, 32], "normalization_schemes": ["CTNormalization"]}
    assert pretraining_mismatches(ckpt, target) == ([], [])
    assert [m["what"] for m in pretraining_mismatches(ckpt, {**target, "patch_size": [64, 64, 64]})[0]] == \
        ["patch size"]
    assert (records["toy"]["num_cases"], records["toy"]["of_cases"]) == (2, 3)  # ceil(0.5 * 3) of the toy's 3 cases
    assert records["toy"]["cases"] == {"Dataset990_ToyCT": [c for _, c in select_cases(
        [("Dataset990_ToyCT", c) for c in ("case_000", "case_001", "case_002")], 0.5, seed=0)]}
    with pytest.raises(ValueError, match="data_fraction"):
        _cfg(data_fraction=1.5)
