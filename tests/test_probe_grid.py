"""The grid's probe jobs and the report job's --pretraining / --probe options."""
from __future__ import annotations

import pytest

from nnssl.benchmark import runner
from nnssl.benchmark.runner import Paths, build_jobs
from nnssl.benchmark.spec import SpecError, spec_from_dict

SPEC = {
    "name": "study",
    "device": "cpu",
    "pretraining": {"datasets": [900], "encoder": "tiny", "crop": 64, "steps": 5},
    "methods": ["scratch", "simmim", "dino", "public"],
    "checkpoints": {"public": "/ckpt/public.pth"},
    "downstream": {"datasets": [901, 902], "shots": ["5", "all"], "folds": [0], "epochs": 2},
}


def test_one_probe_per_pretrained_method_and_dataset_after_its_checkpoint(tmp_path):
    paths = Paths.under(tmp_path)
    jobs = build_jobs(spec_from_dict(SPEC), paths, tmp_path / "report")
    probes = {j.key: j for j in jobs if j.stage == "probe"}
    assert set(probes) == {f"probe/{m}/{d}" for m in ("simmim", "dino", "public") for d in ("901", "902")}
    job = probes["probe/dino/902"]
    cmd = job.command
    assert cmd[0] == "nnssl_probe" and cmd[cmd.index("-d") + 1] == "902" and cmd[cmd.index("--method") + 1] == "dino"
    assert cmd[cmd.index("--pretrained") + 1] == str(paths.nnssl_results / "study" / "dino" / "checkpoint_final.pth")
    assert cmd[cmd.index("--out") + 1] == str(tmp_path / "report" / "probe" / "902__dino.json") == str(job.done_marker)
    assert job.after == ["pretrain/dino"] and job.method == "dino"
    assert probes["probe/public/901"].after == ["preprocess"]  # an existing checkpoint needs no pretraining
    assert probes["probe/public/901"].command[2] == "/ckpt/public.pth"
    keys = [j.key for j in jobs]
    stages = [j.stage for j in jobs if j.stage not in ("cka", "attention")]  # interleaved per run
    assert stages == sorted(stages, key=runner.STAGES.index)
    # before any fine-tuning: the learning signal shows before the grid's long part
    assert max(keys.index(k) for k in probes) < min(i for i, j in enumerate(jobs) if j.stage == "finetune")

    report = jobs[-1].command
    assert report[report.index("--pretraining") + 1] == str(paths.nnssl_results / "study")
    assert report[report.index("--probe") + 1] == str(tmp_path / "report" / "probe")
    assert set(probes) <= set(jobs[-1].after)


def test_probes_can_be_switched_off(tmp_path):
    spec = spec_from_dict({**SPEC, "downstream": {**SPEC["downstream"], "probe": False}})
    jobs = build_jobs(spec, Paths.under(tmp_path), tmp_path / "report")
    assert not [j for j in jobs if j.stage == "probe"]
    assert "--probe" not in jobs[-1].command and "--pretraining" in jobs[-1].command
    only_checkpoints = spec_from_dict({**SPEC, "methods": ["scratch", "public"]})
    report = build_jobs(only_checkpoints, Paths.under(tmp_path), tmp_path / "report")[-1].command
    assert "--pretraining" not in report and "--probe" in report  # nothing pretrained here, but a probe
    with pytest.raises(SpecError, match="downstream.probe must be true or false"):
        spec_from_dict({**SPEC, "downstream": {**SPEC["downstream"], "probe": "yes"}})


def test_probe_stage_reaches_the_probe_jobs(tmp_path):
    """downstream.probe_stage: the default stage 2 adds nothing to the command (settings records stay as they
    were); another stage is passed as --stage; a stage outside 0-4 is refused."""
    def commands(spec):
        return [j.command for j in build_jobs(spec, Paths.under(tmp_path), tmp_path / "report") if j.stage == "probe"]

    assert all("--stage" not in c for c in commands(spec_from_dict(SPEC)))
    early = commands(spec_from_dict({**SPEC, "downstream": {**SPEC["downstream"], "probe_stage": 1}}))
    assert early and all(c[c.index("--stage") + 1] == "1" for c in early)
    for bad in (5, -1, "1", True):
        with pytest.raises(SpecError, match="downstream.probe_stage must be an encoder output 0-4"):
            spec_from_dict({**SPEC, "downstream": {**SPEC["downstream"], "probe_stage": bad}})


def test_dry_run_lists_the_probe_jobs(tmp_path, capsys):
    from nnssl.cli.benchmark import main

    assert main(["--demo", "--workdir", str(tmp_path / "d"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("nnssl_probe --pretrained") == 4 * 2  # 4 pretrained methods x 2 target datasets
    assert "nnssl_report" in out and "--probe" in out and "--pretraining" in out
