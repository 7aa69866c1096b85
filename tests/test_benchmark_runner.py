"""The grid runner: job list, skipping finished jobs, resuming interrupted ones, dry run and SLURM export."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from nnssl.benchmark import runner
from nnssl.benchmark.runner import Job, Paths, build_jobs, run_jobs, threads_per_job, trainer_name
from nnssl.benchmark.spec import SpecError, demo_spec, load_spec, spec_from_dict

SPEC = {
    "name": "study",
    "device": "cpu",
    "pretraining": {"datasets": [900], "encoder": "tiny", "crop": 64, "steps": 5, "options": {"smit": {"view_size": 32}}},
    "methods": ["scratch", "smit"],
    "downstream": {"datasets": [901], "shots": ["5", "all"], "folds": [0, 1], "epochs": 2},
}


def test_jobs_cover_the_grid_in_dependency_order(tmp_path):
    jobs = build_jobs(spec_from_dict(SPEC), Paths.under(tmp_path), tmp_path / "report")
    stages = [j.stage for j in jobs if j.stage not in ("cka", "attention")]
    assert stages == sorted(stages, key=runner.STAGES.index)
    keys = [j.key for j in jobs]
    for i, key in enumerate(keys):  # each CKA and attention job runs after the fine-tuning it measures
        for stage in ("cka/", "attention/"):
            if key.startswith(stage):
                assert keys.index(key.replace(stage, "finetune/", 1)) < i
    finetunes = [j for j in jobs if j.stage == "finetune"]
    assert len(finetunes) == 2 * 2 * 2  # methods x shots x folds
    trainers = {j.command[j.command.index("-tr") + 1] for j in finetunes}
    assert trainers == {"SwinScratchTrainer_5shot_2epochs", "SwinScratchTrainer_2epochs",
                        "SwinSSLTrainer_5shot_2epochs", "SwinSSLTrainer_2epochs"}
    plans = {j.command[j.command.index("-p") + 1] for j in finetunes}
    assert plans == {"nnUNetSwinPlans", "nnUNetSwinPlans_smit"}
    assert [j.key for j in jobs if j.stage == "pretrain"] == ["pretrain/smit"]
    assert len([j for j in jobs if j.stage == "cka"]) == 4  # pretrained method only
    attention = {j.key: j for j in jobs if j.stage == "attention"}
    assert sorted(attention) == sorted(k.replace("cka/", "attention/", 1) for k in keys if k.startswith("cka/"))
    job = attention["attention/901/smit/5/1"]
    assert job.after == ["finetune/901/smit/5/1"] and job.command[0] == "nnssl_attention"
    assert job.command[job.command.index("-tr") + 1] == "SwinSSLTrainer_5shot_2epochs"
    assert job.command[job.command.index("--images") + 1] == "8"
    assert jobs[-1].command[jobs[-1].command.index("--attention") + 1] == str(tmp_path / "report" / "attention")
    off = build_jobs(spec_from_dict({**SPEC, "downstream": {**SPEC["downstream"], "attention": False}}),
                     Paths.under(tmp_path), tmp_path / "report")
    assert not [j for j in off if j.stage == "attention"] and "--attention" not in off[-1].command
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


def test_jobs_name_their_prerequisites(tmp_path):
    spec = spec_from_dict({**SPEC, "phantoms": {"datasets": [900, 901]}, "methods": ["scratch", "smit", "public"],
                           "checkpoints": {"public": str(tmp_path / "public.pth")}})
    jobs = build_jobs(spec, Paths.under(tmp_path), tmp_path / "report")
    after = {j.key: j.after for j in jobs}
    assert after["phantoms/900"] == [] and after["preprocess"] == ["phantoms/900", "phantoms/901"]
    assert after["pretrain/smit"] == ["preprocess"] and "pretrain/public" not in after
    assert after["attach/smit/901"] == ["pretrain/smit"] and after["attach/public/901"] == ["preprocess"]
    assert after["finetune/901/scratch/5/0"] == ["preprocess"]
    assert after["finetune/901/smit/all/1"] == ["attach/smit/901"]
    assert after["cka/901/smit/all/1"] == ["finetune/901/smit/all/1"]
    report = jobs[-1]
    assert report.after_any and set(report.after) == set(after) - {"report"}
    keys = [j.key for j in jobs]
    assert all(keys.index(k) < keys.index(j.key) for j in jobs for k in j.after)  # the runner's order holds
    finetunes = [j for j in jobs if j.stage == "finetune"]
    assert all(j.always_resume and j.resume_args == ["--c"] for j in finetunes)
    assert {j.method for j in finetunes} == {"scratch", "smit", "public"}


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


def test_cli_runs_the_demo_two_jobs_at_once_and_a_spec_one(tmp_path, monkeypatch):
    """The demo's default -j is the cores, at most 2 (results.md, section 2); a spec's is 1; -j overrides both."""
    import nnssl.benchmark.runner as runner
    from nnssl.cli import benchmark as cli

    seen = []
    monkeypatch.setattr(runner, "run_jobs", lambda jobs, paths, logs, **kw: seen.append(kw["parallel"]) or [])
    monkeypatch.setattr(cli.os, "cpu_count", lambda: 16)
    spec = tmp_path / "s.json"
    spec.write_text(json.dumps(SPEC))
    for argv in (["--demo"], [str(spec)], ["--demo", "-j", "3"], [str(spec), "-j", "4"]):
        assert cli.main([*argv, "--workdir", str(tmp_path / "w"), "--no-progress"]) == 0
    assert seen == [2, 1, 3, 4]
    monkeypatch.setattr(cli.os, "cpu_count", lambda: 1)
    assert cli.default_jobs(demo=True) == 1 and cli.default_jobs(demo=False) == 1


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
        assert not hasattr(cfg, "out_dim") or cfg.out_dim == 4096


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


def test_runner_passes_only_the_optimisation_settings_the_spec_sets():
    """Unset settings leave each method its reference recipe; per_method values apply to their method only."""
    spec = spec_from_dict({**SPEC, "methods": ["scratch", "smit", "dino"],
                           "pretraining": {**SPEC["pretraining"], "weight_decay": 0.02,
                                           "per_method": {"dino": {"lr": 2e-4, "crop": 96, "steps": 7}}}})
    cmds = {j.key: j.command for j in build_jobs(spec, Paths.under(Path("/tmp/x")), Path("/tmp/x/r"))
            if j.stage == "pretrain"}
    smit, dino = cmds["pretrain/smit"], cmds["pretrain/dino"]
    assert "--lr" not in smit and smit[smit.index("--weight-decay") + 1] == "0.02"
    assert dino[dino.index("--lr") + 1] == "0.0002" and dino[dino.index("--crop") + 1:dino.index("--crop") + 4] == \
        ["96", "96", "96"] and dino[dino.index("--steps") + 1] == "7"
    assert smit[smit.index("--steps") + 1] == "5"
    assert not any(flag in smit for flag in ("--min-lr", "--warmup-steps", "--clip-grad", "--weight-decay-end"))


@pytest.mark.parametrize("change, message", [
    ({"pretraining": {"datasets": [900], "crop": 48}}, "divisible by 32"),
    ({"pretraining": {"datasets": [900], "steps": -5}}, "steps must be a positive integer"),
    ({"pretraining": {"datasets": [900], "lr": 0}}, "lr=0 is not valid"),
    ({"pretraining": {"datasets": [900], "options": {"smit": {"mask_ratoi": 0.5}}}}, "did you mean 'mask_ratio'"),
    ({"pretraining": {"datasets": [900], "per_method": {"smit": {"crop": 64}}}}, "SMIT cuts two 96"),
    ({"pretraining": {"datasets": [900], "per_method": {"smit": {"lr_": 1}}}}, "unknown setting"),
    ({"pretraining": {"datasets": [900], "options": {"smitt": {}}}}, "did you mean 'smit'"),
    ({"pretraining": {"datasets": [900], "encoder": "huge"}}, "unknown preset"),
])
def test_spec_validates_pretraining_up_front(change, message):
    with pytest.raises(SpecError, match=message):
        spec_from_dict({**SPEC, **change})


def test_a_checkpoint_of_another_encoder_gets_a_scratch_baseline_of_that_encoder(tmp_path):
    """Fairness: the scratch runs compared with an imported encoder have its architecture (same plans otherwise)."""
    from nnssl.checkpoint import save_checkpoint
    from nnssl.encoders.swin import EncoderConfig, SwinEncoder

    big = EncoderConfig.preset("small")
    ckpt = save_checkpoint(tmp_path / "public.pth", {"method": "imported", "encoder_config": big.to_dict(),
                                                      "encoder": SwinEncoder(big).swin_state_dict()})
    same = save_checkpoint(tmp_path / "same.pth", {"method": "imported", "encoder_config":
                                                   EncoderConfig.preset("tiny").to_dict(),
                                                   "encoder": SwinEncoder(EncoderConfig.preset("tiny")).swin_state_dict()})
    spec = spec_from_dict({**SPEC, "methods": ["scratch", "smit", "public", "same"],
                           "checkpoints": {"public": str(ckpt), "same": str(same)}})
    jobs = build_jobs(spec, Paths.under(tmp_path / "w"), tmp_path / "r")
    tag = "f24-d2222-h3_6_12_24-w7"
    attach = {j.key: j.command for j in jobs if j.stage == "attach"}
    cmd = attach[f"attach/scratch-{tag}/901"]
    assert cmd[cmd.index("--checkpoint") + 1] == str(ckpt) and "--architecture-only" in cmd
    finetune = {j.key: j.command for j in jobs if j.stage == "finetune"}
    cmd = finetune[f"finetune/901/scratch-{tag}/5/0"]
    assert cmd[cmd.index("-tr") + 1] == "SwinScratchTrainer_5shot_2epochs"
    assert cmd[cmd.index("-p") + 1] == f"nnUNetSwinPlans_scratch-{tag}"
    assert not [k for k in finetune if "scratch-f12" in k]  # the tiny encoder's baseline is the base plans' scratch
    assert not [j for j in jobs if j.stage == "cka" and "scratch" in j.key]
    warnings: list[str] = []
    missing = spec_from_dict({**SPEC, "methods": ["scratch", "public"], "checkpoints": {"public": "/nope.pth"}})
    build_jobs(missing, Paths.under(tmp_path / "w"), tmp_path / "r", warnings)
    assert warnings and "does not exist yet" in warnings[0]


def _finetune_trainers(jobs: list[Job]) -> list[str]:
    """The sorted trainer classes (``-tr``) of the grid's fine-tuning jobs."""
    return sorted({j.command[j.command.index("-tr") + 1] for j in jobs if j.stage == "finetune"})


def test_draws_repeat_the_k_shot_runs_only(tmp_path):
    spec = spec_from_dict({**SPEC, "downstream": {"datasets": [901], "shots": ["5", "all"], "folds": [0],
                                                  "epochs": 2, "draws": 3}})
    jobs = build_jobs(spec, Paths.under(tmp_path), tmp_path / "r")
    assert _finetune_trainers(jobs) == ["SwinSSLTrainer_2epochs", "SwinSSLTrainer_5shot_2epochs",
                                        "SwinSSLTrainer_5shot_draw1_2epochs", "SwinSSLTrainer_5shot_draw2_2epochs",
                                        "SwinScratchTrainer_2epochs", "SwinScratchTrainer_5shot_2epochs",
                                        "SwinScratchTrainer_5shot_draw1_2epochs",
                                        "SwinScratchTrainer_5shot_draw2_2epochs"]
    assert {j.key for j in jobs if j.stage == "cka" and "draw" in j.key} == {"cka/901/smit/5/0/draw1",
                                                                             "cka/901/smit/5/0/draw2"}
    with pytest.raises(SpecError, match="no k-shot regime"):
        spec_from_dict({**SPEC, "downstream": {"datasets": [901], "shots": ["all"], "draws": 2}})


def test_repeats_repeat_the_all_cases_runs_only(tmp_path):
    """``repeats: 2`` adds the ``_draw1`` run of every all-cases arm (same cases, a new training run), leaves the
    k-shot regimes at their ``draws``, and names CKA jobs by the draw as for k-shot draws."""
    spec = spec_from_dict({**SPEC, "downstream": {"datasets": [901], "shots": ["5", "all"], "folds": [0],
                                                  "epochs": 2, "repeats": 2}})
    jobs = build_jobs(spec, Paths.under(tmp_path), tmp_path / "r")
    assert _finetune_trainers(jobs) == ["SwinSSLTrainer_2epochs", "SwinSSLTrainer_5shot_2epochs",
                                        "SwinSSLTrainer_draw1_2epochs", "SwinScratchTrainer_2epochs",
                                        "SwinScratchTrainer_5shot_2epochs", "SwinScratchTrainer_draw1_2epochs"]
    assert {j.key for j in jobs if j.stage == "cka" and "draw" in j.key} == {"cka/901/smit/all/0/draw1"}
    with pytest.raises(SpecError, match="no 'all' regime"):
        spec_from_dict({**SPEC, "downstream": {"datasets": [901], "shots": ["5"], "repeats": 2}})
    with pytest.raises(SpecError, match="repeats must be an integer"):
        spec_from_dict({**SPEC, "downstream": {"datasets": [901], "shots": ["all"], "repeats": 0}})
    with pytest.raises(SpecError, match="repeats must be an integer"):
        spec_from_dict({**SPEC, "downstream": {"datasets": [901], "shots": ["all"], "repeats": True}})


def _recorded_job(tmp_path: Path, key: str, command: list[str], **kw) -> Job:
    out = tmp_path / key
    job = Job(key, "pretrain", command, done_marker=out / "done", settings_file=out / ".nnssl_job.json", outputs=out,
              **kw)
    return job


def test_done_is_keyed_on_the_settings_a_job_succeeded_with(tmp_path, capsys):
    """A job's outputs count as done only with its own settings; after an edit the grid names what changed and
    refuses, or reruns the job with --rerun-changed after moving its outputs aside."""
    from nnssl.benchmark import stamps
    from nnssl.benchmark.runner import ChangedSettingsError

    paths = Paths.under(tmp_path)
    make = ["bash", "-c", 'mkdir -p "$1" && echo "$2" >> "$1/done"', "job"]
    job = _recorded_job(tmp_path, "a", [*make, str(tmp_path / "a"), "--steps", "5"])
    stamps.assign_identities([job])
    assert job.state() == "todo"
    assert run_jobs([job], paths, tmp_path / "logs", progress=False) == 0
    assert job.state() == "done" and json.loads(job.settings_file.read_text())["identity"] == job.identity["identity"]

    edited = _recorded_job(tmp_path, "a", [*make, str(tmp_path / "a"), "--steps", "7"])
    stamps.assign_identities([edited])
    assert edited.state() == "changed" and edited.changes() == ["--steps 5 -> 7"]
    with pytest.raises(ChangedSettingsError, match=r"1 job\(s\) have outputs made with other settings: a "
                                                   r"\(--steps 5 -> 7\)\. Pass --rerun-changed"):
        run_jobs([edited], paths, tmp_path / "logs", progress=False)
    assert (tmp_path / "a" / "done").read_text() == "--steps\n"  # untouched
    assert run_jobs([edited], paths, tmp_path / "logs", progress=False, rerun_changed=True) == 0
    assert edited.state() == "done"
    stale = list(tmp_path.glob("a.stale-*"))
    assert len(stale) == 1 and (stale[0] / "done").is_file()  # the old outputs, moved aside, not deleted

    # outputs from before records existed count as done, with a note
    old = _recorded_job(tmp_path, "b", ["false"])
    stamps.assign_identities([old])
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "done").write_text("")
    capsys.readouterr()
    assert old.state() == "unrecorded" and run_jobs([old], paths, tmp_path / "logs", progress=False) == 0
    assert "1 finished job(s) have no settings record" in capsys.readouterr().err


def test_a_pretraining_edit_makes_its_attach_finetune_and_cka_jobs_changed(tmp_path):
    spec = {**SPEC, "methods": ["scratch", "simmim"], "pretraining": {**SPEC["pretraining"], "options": {}}}
    jobs = {j.key: j for j in build_jobs(spec_from_dict(spec), Paths.under(tmp_path), tmp_path / "r")}
    edited = {j.key: j for j in build_jobs(spec_from_dict({**spec, "pretraining": {**spec["pretraining"], "steps": 7}}),
                                           Paths.under(tmp_path), tmp_path / "r")}
    differs = {k for k in jobs if jobs[k].identity and jobs[k].identity["identity"] != edited[k].identity["identity"]}
    assert differs == {k for k in jobs if "simmim" in k}  # scratch fine-tuning does not read the checkpoint
    from nnssl.benchmark.stamps import describe_changes

    assert describe_changes(jobs["finetune/901/simmim/5/0"].identity, edited["finetune/901/simmim/5/0"].identity) == \
        ["its input attach/simmim/901 changed"]


def _split_file(path: Path, train: list[str], val: list[str]) -> Path:
    path.write_text(json.dumps([{"train": train, "val": val}]))
    return path


def test_a_fixed_split_is_installed_before_any_fold_trains_and_keys_its_runs(tmp_path):
    """downstream.splits: relative to the spec file; one nnssl_splits job per dataset after preprocessing, naming the
    file's hash; every fine-tuning run of the dataset waits for it and is keyed on it."""
    (tmp_path / "splits").mkdir()
    _split_file(tmp_path / "splits" / "901.json", ["a", "b"], ["c"])
    spec_path = tmp_path / "study.json"
    down = {**SPEC["downstream"], "folds": [0], "splits": {"901": "splits/901.json"}, "learning_rate": 1e-3}
    spec_path.write_text(json.dumps({**SPEC, "downstream": down}))
    spec = load_spec(spec_path)
    assert spec.downstream.splits == {"901": str(tmp_path / "splits" / "901.json")}
    jobs = {j.key: j for j in build_jobs(spec, Paths.under(tmp_path / "w"), tmp_path / "r")}
    split = jobs["splits/901"]
    from nnssl.io import file_sha256

    assert split.command == ["nnssl_splits", "-d", "901", "--file", str(tmp_path / "splits" / "901.json"),
                             "--sha256", file_sha256(tmp_path / "splits" / "901.json")]
    assert split.after == ["preprocess"]
    finetunes = [j for j in jobs.values() if j.stage == "finetune"]
    assert finetunes and all("splits/901" in j.after and "splits/901" in j.keyed_on for j in finetunes)
    assert all(j.env["NNSSL_LEARNING_RATE"] == "0.001" for j in finetunes)
    # editing the split changes the identity of every fold trained on it
    before = {j.key: j.identity["identity"] for j in finetunes}
    _split_file(tmp_path / "splits" / "901.json", ["a", "c"], ["b"])
    again = [j for j in build_jobs(load_spec(spec_path), Paths.under(tmp_path / "w"), tmp_path / "r")
             if j.stage == "finetune"]
    assert all(j.identity["identity"] != before[j.key] for j in again)


@pytest.mark.parametrize("change, message", [
    ({"splits": {"902": "x.json"}}, "dataset '902' is not one of downstream.datasets"),
    ({"splits": {"901": "missing.json"}}, "split file .*missing.json does not exist"),
    ({"splits": {"901": "one_fold.json"}, "folds": [0, 1]}, r"has 1 fold\(s\) .* asks for \[1\]"),
    ({"learning_rate": 0}, "learning_rate must be a finite number > 0"),
    ({"learning_rate": float("inf")}, "learning_rate must be a finite number > 0"),
])
def test_split_and_learning_rate_errors_name_the_problem(tmp_path, monkeypatch, change, message):
    monkeypatch.chdir(tmp_path)
    _split_file(tmp_path / "one_fold.json", ["a"], ["b"])
    with pytest.raises(SpecError, match=message):
        spec_from_dict({**SPEC, "downstream": {**SPEC["downstream"], **change}})


def test_phantoms_take_per_dataset_cases_size_and_spacing(tmp_path):
    spec = spec_from_dict({**SPEC, "phantoms": {"datasets": [900, 901], "seed": 3, "cases": {"900": 200, "901": 40},
                                                "size": 32, "spacing": {"901": [10, 10, 10]}}})
    cmds = {j.key: j.command for j in build_jobs(spec, Paths.under(tmp_path), tmp_path / "r") if j.stage == "phantoms"}
    assert cmds["phantoms/900"][5:] == ["--seed", "3", "--cases", "200", "--size", "32", "--no-progress"]
    assert cmds["phantoms/901"][5:] == ["--seed", "3", "--cases", "40", "--size", "32", "--spacing", "10", "10", "10",
                                        "--no-progress"]
    for bad, message in (({"cases": {"905": 3}}, "dataset\\(s\\) 905 are not in phantoms.datasets"),
                         ({"cases": 0}, "phantoms.cases must be a positive integer"),
                         ({"size": [32, 32]}, r"phantoms.size must be a positive integer or \[D, H, W\]"),
                         ({"sizes": 32}, "unknown key\\(s\\) sizes")):
        with pytest.raises(SpecError, match=message):
            spec_from_dict({**SPEC, "phantoms": {"datasets": [900, 901], **bad}})


def test_only_rules_thin_the_grid(tmp_path):
    """downstream.only: MRI and the 5-shot regime for scratch and smit only; every other method on CT, all cases."""
    down = {"datasets": [901, 902], "shots": ["5", "all"], "folds": [0], "epochs": 2,
            "only": [{"datasets": [902], "methods": ["scratch", "smit"]}, {"shots": [5], "methods": ["scratch", "smit"]}]}
    spec = spec_from_dict({**SPEC, "methods": ["scratch", "smit", "dino"], "downstream": down})
    runs = {j.key for j in build_jobs(spec, Paths.under(tmp_path), tmp_path / "r") if j.stage == "finetune"}
    assert runs == {"finetune/901/scratch/all/0", "finetune/901/smit/all/0", "finetune/901/dino/all/0",
                    "finetune/901/scratch/5/0", "finetune/901/smit/5/0",
                    "finetune/902/scratch/all/0", "finetune/902/smit/all/0",
                    "finetune/902/scratch/5/0", "finetune/902/smit/5/0"}
    down["only"] = down["only"] + [{"datasets": [902], "shots": [5], "methods": []}]  # no MRI 5-shot at all
    spec = spec_from_dict({**SPEC, "methods": ["scratch", "smit", "dino"], "downstream": down})
    thinner = {j.key for j in build_jobs(spec, Paths.under(tmp_path), tmp_path / "r") if j.stage == "finetune"}
    assert thinner == runs - {"finetune/902/scratch/5/0", "finetune/902/smit/5/0"}
    for bad, message in (([{"datasets": [903], "methods": ["smit"]}], r"only\[0\].datasets: 903 not in"),
                         ([{"methods": ["mae"]}], r"only\[0\].methods: mae not in"),
                         ([{"datasets": [902]}], r"only\[0\] must be a mapping with methods"),
                         ([{"shots": [], "methods": ["smit"]}], r"only\[0\].shots must be a non-empty list")):
        with pytest.raises(SpecError, match=message):
            spec_from_dict({**SPEC, "downstream": {**SPEC["downstream"], "only": bad}})


def test_budgets_below_the_floors_warn_before_the_grid_starts(tmp_path):
    """Too few fine-tuning iterations, pretraining steps or a vanishing scaled lr each give one warning naming the
    setting; a spec above every floor gets none."""
    from nnssl.benchmark.budget import MIN_FINETUNE_ITERATIONS, MIN_PRETRAIN_STEPS, budget_warnings

    big = {**SPEC, "methods": ["scratch", "simmim"],
           "pretraining": {**SPEC.get("pretraining", {}), "datasets": [900], "steps": MIN_PRETRAIN_STEPS, "lr": 1e-4},
           "downstream": {**SPEC["downstream"], "epochs": 1, "iterations_per_epoch": MIN_FINETUNE_ITERATIONS}}
    assert budget_warnings(spec_from_dict(big)) == []
    small = {**big, "pretraining": {**big["pretraining"], "steps": MIN_PRETRAIN_STEPS - 1, "lr": 1e-7},
             "downstream": {**big["downstream"], "iterations_per_epoch": MIN_FINETUNE_ITERATIONS - 1}}
    warnings: list[str] = []
    build_jobs(spec_from_dict(small), Paths.under(tmp_path), tmp_path / "r", warnings)
    assert any(w.startswith("downstream:") and "raise epochs or iterations_per_epoch" in w for w in warnings)
    assert any("pretraining of simmim" in w and "raise pretraining.steps" in w for w in warnings)
    assert any("pretraining of simmim" in w and "set pretraining.lr" in w for w in warnings)


def test_headline_family_and_validation_cases_follow_the_spec(tmp_path):
    """The power of a design: Holm's family is every pretrained method x dataset x regime that has a scratch run
    (only rules applied); validation cases come from the fixed split, else from nnU-Net's 5-fold split of the phantoms."""
    from nnssl.benchmark.budget import headline_comparisons, validation_cases

    split = tmp_path / "split.json"
    split.write_text(json.dumps([{"train": ["a", "b"], "val": ["c", "d", "e"]}]))
    spec = spec_from_dict({**SPEC, "methods": ["scratch", "smit", "dino"],
                           "phantoms": {"datasets": [900, 901, 902], "cases": {902: 24}},
                           "downstream": {"datasets": [901, 902], "shots": ["5", "all"], "folds": [0],
                                          "splits": {901: str(split)},
                                          "only": [{"datasets": [902], "shots": [5], "methods": ["scratch", "smit"]}]}})
    assert sorted(headline_comparisons(spec)) == sorted([
        ("901", "5", "smit"), ("901", "5", "dino"), ("901", "all", "smit"), ("901", "all", "dino"),
        ("902", "5", "smit"), ("902", "all", "smit"), ("902", "all", "dino")])
    assert validation_cases(spec, "901") == 3
    assert validation_cases(spec, "902") == 5  # 24 cases: folds of 5, 5, 5, 5, 4
    no_scratch = spec_from_dict({**SPEC, "downstream": {**SPEC["downstream"], "only": [{"methods": ["smit"]}]}})
    assert headline_comparisons(no_scratch) == []


def test_shipped_studies_are_complete_designs_above_every_floor():
    """benchmarks/study_*.yaml: scratch, smit, simmim, a self-distillation and a contrastive method, >= 3 draws at
    5-shot plus all cases, fixed splits, and no budget warning."""
    from nnssl.benchmark.budget import budget_warnings
    from nnssl.tasks import get_task_class

    for path in sorted((Path(__file__).parents[1] / "benchmarks").glob("study_*.yaml")):
        spec = load_spec(path)
        families = {get_task_class(m).family for m in spec.pretrained_methods}
        assert {"scratch", "smit", "simmim"} <= set(spec.methods) and len(families) >= 3, path
        assert spec.downstream.draws >= 3 and {"5", "all"} <= set(spec.downstream.shots), path
        assert set(spec.downstream.splits) == set(spec.downstream.datasets), path
        assert budget_warnings(spec) == [], (path, budget_warnings(spec))


def _waits_for(mine: Path, other: Path, tries: int = 200) -> list[str]:
    """A job that marks its start and succeeds only once the other job has started too (polling ``tries`` times,
    0.1 s apart): both succeed only when they run at the same time."""
    loop = f"for i in $(seq {tries}); do [ -e {other} ] && exit 0; sleep 0.1; done"
    return ["bash", "-c", f"touch {mine}; {loop}; exit 1"]


def test_parallel_jobs_run_at_the_same_time_with_the_cores_shared(tmp_path):
    a, b = tmp_path / "a.started", tmp_path / "b.started"
    threads = tmp_path / "threads.txt"
    jobs = [Job("a", "finetune", _waits_for(a, b)), Job("b", "finetune", _waits_for(b, a)),
            Job("t", "report", ["bash", "-c", f'echo "$OMP_NUM_THREADS $NNSSL_NUM_THREADS" > {threads}'],
                after=["a", "b"])]
    assert run_jobs(jobs, Paths.under(tmp_path), tmp_path / "logs", progress=False, parallel=2) == 0
    expected = str(threads_per_job(2))
    assert threads.read_text().split() == [expected, expected]


def test_one_job_at_a_time_runs_them_in_order(tmp_path):
    a, b = tmp_path / "a.started", tmp_path / "b.started"
    jobs = [Job("a", "finetune", _waits_for(a, b, tries=5)), Job("b", "finetune", ["touch", str(b)])]
    assert run_jobs(jobs, Paths.under(tmp_path), tmp_path / "logs", progress=False, parallel=1) == 1
    assert a.exists() and not b.exists()  # the failure stopped the grid before b


def test_parallel_jobs_wait_for_what_they_need_and_skip_what_cannot_run(tmp_path, capsys):
    calls = tmp_path / "calls.txt"

    def note(name: str, delay: float = 0.0) -> list[str]:
        return ["bash", "-c", f"sleep {delay}; echo {name} >> {calls}"]

    jobs = [Job("slow", "pretrain", note("slow", 0.5)),
            Job("bad", "pretrain", ["bash", "-c", "exit 4"]),
            Job("needs-slow", "finetune", note("needs-slow"), after=["slow"]),
            Job("needs-bad", "finetune", note("needs-bad"), after=["bad"]),
            Job("report", "report", note("report"), after=["slow", "bad", "needs-slow", "needs-bad"], after_any=True)]
    failures = run_jobs(jobs, Paths.under(tmp_path), tmp_path / "logs", progress=False, parallel=3, keep_going=True)
    assert failures == 2  # bad, and needs-bad (never started)
    assert calls.read_text().split() == ["slow", "needs-slow", "report"]
    out = capsys.readouterr()
    assert "job needs-bad not started: it needs bad, which failed" in out.out + out.err


def test_parallel_jobs_stop_starting_after_a_failure_without_keep_going(tmp_path):
    ran = tmp_path / "ran"
    jobs = [Job("bad", "pretrain", ["bash", "-c", "exit 1"]),
            Job("later", "finetune", ["touch", str(ran)], after=["bad"]),
            Job("other", "finetune", ["bash", "-c", f"sleep 0.3; touch {ran}.other"], after=["bad"])]
    assert run_jobs(jobs, Paths.under(tmp_path), tmp_path / "logs", progress=False, parallel=2) == 1
    assert not ran.exists() and not Path(f"{ran}.other").exists()


def test_parallel_jobs_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="at least 1"):
        run_jobs([], Paths.under(tmp_path), tmp_path / "logs", progress=False, parallel=0)
    assert threads_per_job(2, cores=2) == 1 and threads_per_job(4, cores=16) == 4 and threads_per_job(8, cores=2) == 1


def test_jobs_that_can_never_start_are_counted_not_skipped_in_silence(tmp_path, capsys):
    jobs = [Job("a", "finetune", ["true"], after=["b"]), Job("b", "finetune", ["true"], after=["a"])]
    assert run_jobs(jobs, Paths.under(tmp_path), tmp_path / "logs", progress=False, parallel=2) == 2
    out = capsys.readouterr()
    assert "jobs not started (their prerequisites never ran): a, b" in out.out + out.err
