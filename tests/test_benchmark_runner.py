"""The grid runner: job list, skipping finished jobs, resuming interrupted ones, dry run and SLURM export."""
from __future__ import annotations

import json
import subprocess

import pytest

from nnssl.benchmark import runner
from nnssl.benchmark.runner import Job, Paths, build_jobs, export_jobs, run_jobs, trainer_name
from nnssl.benchmark.spec import SpecError, demo_spec, load_spec, spec_from_dict

SPEC = {
    "name": "study",
    "device": "cpu",
    "pretraining": {"datasets": [900], "encoder": "tiny", "crop": 64, "steps": 5},
    "methods": ["scratch", "smit"],
    "downstream": {"datasets": [901], "shots": ["5", "all"], "folds": [0, 1], "epochs": 2},
}


def test_jobs_cover_the_grid_in_dependency_order(tmp_path):
    jobs = build_jobs(spec_from_dict(SPEC), Paths.under(tmp_path), tmp_path / "report")
    stages = [j.stage for j in jobs if j.stage != "cka"]
    assert stages == sorted(stages, key=runner.STAGES.index)
    keys = [j.key for j in jobs]
    for i, key in enumerate(keys):  # each CKA job runs after the fine-tuning it measures
        if key.startswith("cka/"):
            assert keys.index(key.replace("cka/", "finetune/", 1)) < i
    finetunes = [j for j in jobs if j.stage == "finetune"]
    assert len(finetunes) == 2 * 2 * 2  # methods x shots x folds
    trainers = {j.command[j.command.index("-tr") + 1] for j in finetunes}
    assert trainers == {"SwinScratchTrainer_5shot_2epochs", "SwinScratchTrainer_2epochs",
                        "SwinSSLTrainer_5shot_2epochs", "SwinSSLTrainer_2epochs"}
    plans = {j.command[j.command.index("-p") + 1] for j in finetunes}
    assert plans == {"nnUNetSwinPlans", "nnUNetSwinPlans_smit"}
    assert [j.key for j in jobs if j.stage == "pretrain"] == ["pretrain/smit"]
    assert len([j for j in jobs if j.stage == "cka"]) == 4  # pretrained method only
    assert jobs[-1].stage == "report"


def test_trainer_names_follow_the_convention():
    assert trainer_name("scratch", "all", None) == "SwinScratchTrainer"
    assert trainer_name("dino", "10", 5) == "SwinSSLTrainer_10shot_5epochs"


def test_spec_errors_name_the_problem(tmp_path):
    with pytest.raises(SpecError, match="did you mean 'simclr'"):
        spec_from_dict({**SPEC, "methods": ["simclrr"]})
    with pytest.raises(SpecError, match="did you mean folds"):
        spec_from_dict({**SPEC, "downstream": {"datasets": [1], "fold": [0]}})
    with pytest.raises(SpecError, match="shots"):
        spec_from_dict({**SPEC, "downstream": {"datasets": [1], "shots": ["few"]}})
    bad = tmp_path / "bad.json"
    bad.write_text("{name: x")
    with pytest.raises(SpecError, match="not valid JSON"):
        load_spec(bad)
    y = tmp_path / "ok.yaml"
    y.write_text("name: y\npretraining: {datasets: [900]}\ndownstream: {datasets: [901]}\n")
    assert load_spec(y).methods == ["scratch"]


def test_runner_skips_finished_jobs_and_resumes_interrupted_ones(tmp_path):
    paths = Paths.under(tmp_path)
    calls = tmp_path / "calls.txt"
    done = tmp_path / "done"
    partial = tmp_path / "partial"
    partial.write_text("")
    done.write_text("")
    record = ["bash", "-c", f'echo "$*" >> {calls}', "job"]
    jobs = [
        Job("a", "pretrain", record + ["a"], done_marker=done),                          # finished: skipped
        Job("b", "finetune", record + ["b"], done_marker=tmp_path / "nope",
            resume_marker=partial, resume_args=["--c"]),                                 # interrupted: resumed
        Job("c", "finetune", record + ["c"], done_marker=tmp_path / "nope2"),             # fresh
    ]
    assert run_jobs(jobs, paths, tmp_path / "logs", progress=False) == 0
    assert calls.read_text().splitlines() == ["b --c", "c"]


def test_runner_stops_at_a_failure_and_points_at_the_log(tmp_path, capsys):
    jobs = [Job("x", "pretrain", ["bash", "-c", "echo boom; exit 3"]), Job("y", "report", ["true"])]
    assert run_jobs(jobs, Paths.under(tmp_path), tmp_path / "logs", progress=False) == 1
    out = capsys.readouterr()
    assert "job x failed (exit 3)" in out.out + out.err and "boom" in (tmp_path / "logs" / "x.log").read_text()


def test_export_writes_slurm_arrays(tmp_path):
    paths = Paths.under(tmp_path)
    jobs = build_jobs(spec_from_dict(SPEC), paths, tmp_path / "report")
    export_jobs(jobs, paths, tmp_path / "jobs")
    finetune = (tmp_path / "jobs" / "finetune.commands").read_text().splitlines()
    assert len(finetune) == 8 and all(l.split()[2] == "nnUNetv2_train" or "nnUNetv2_train" in l for l in finetune)
    sbatch = (tmp_path / "jobs" / "finetune.sbatch").read_text()
    assert "#SBATCH --array=0-7" in sbatch and "source env.sh" in sbatch
    submit = (tmp_path / "jobs" / "submit.sh").read_text()
    assert submit.index("pretrain.sbatch") < submit.index("attach.sbatch") < submit.index("finetune.sbatch")
    assert subprocess.run(["bash", "-n", str(tmp_path / "jobs" / "submit.sh")]).returncode == 0
    assert "nnUNet_results=" in (tmp_path / "jobs" / "env.sh").read_text()


def test_cli_dry_run_and_errors(tmp_path, capsys):
    from nnssl.cli.benchmark import main

    spec = tmp_path / "s.json"
    spec.write_text(json.dumps(SPEC))
    assert main([str(spec), "--workdir", str(tmp_path / "w"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "todo  [pretrain] nnssl_pretrain -m smit" in out and out.count("nnUNetv2_train") == 8
    assert main([]) == 2
    assert main(["--demo", "--methods", "all", "--workdir", str(tmp_path / "d"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    for method in ("smit", "mae", "cpc", "swinunetr"):
        assert f"nnssl_pretrain -m {method}" in out


def test_demo_spec_has_one_method_per_family():
    from nnssl.tasks import get_task_class

    spec = demo_spec()
    families = {get_task_class(m).family for m in spec.pretrained_methods}
    assert len(families) == len(spec.pretrained_methods) >= 4


def test_demo_options_are_valid_method_options():
    from nnssl.tasks import config_from_overrides, get_task_class

    spec = demo_spec(["scratch", "dino", "ibot", "smit"])
    for method, options in spec.pretraining.options.items():
        cfg = config_from_overrides(get_task_class(method).Config, {k: str(v) for k, v in options.items()})
        assert cfg.out_dim == 4096


def test_spec_refuses_budgets_without_a_trainer():
    with pytest.raises(SpecError, match="no trainer variant for 7 epochs"):
        spec_from_dict({**SPEC, "downstream": {"datasets": [1], "epochs": 7}})
    with pytest.raises(SpecError, match="no trainer for 3 cases"):
        spec_from_dict({**SPEC, "downstream": {"datasets": [1], "shots": ["3"]}})


def test_preprocessing_counts_as_done_only_after_it_succeeded(tmp_path):
    paths = Paths.under(tmp_path)
    job = next(j for j in build_jobs(spec_from_dict(SPEC), paths, tmp_path / "r") if j.stage == "preprocess")
    for d in ("Dataset900_A", "Dataset901_B"):
        (paths.preprocessed / d).mkdir(parents=True)
        (paths.preprocessed / d / "nnUNetSwinPlans.json").write_text("{}")
    assert not job.is_done()  # plans exist, but the command never finished
    job.command = ["true"]
    assert run_jobs([job], paths, tmp_path / "logs", progress=False) == 0
    assert job.is_done()
