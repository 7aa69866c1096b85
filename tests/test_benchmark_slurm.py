"""The SLURM export: submissions and dependencies per job, resources, torchrun launch lines, resuming job scripts.

The generated scripts run here with stub ``sbatch`` / ``srun`` / ``scontrol`` / ``torchrun`` / nnU-Net commands on
PATH that record how they were called; nothing is trained.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from nnssl.benchmark import runner
from nnssl.benchmark.runner import Job, Paths, build_jobs
from nnssl.benchmark.slurm import export_jobs, plan_submissions
from nnssl.benchmark.spec import SLURM_STAGES, SpecError, spec_from_dict

GRID = {
    "name": "study",
    "device": "cuda",
    "phantoms": {"datasets": [900, 901, 902]},
    "pretraining": {"datasets": [900], "encoder": "tiny", "crop": 64, "steps": 5, "options": {"smit": {"view_size": 32}}},
    "methods": ["scratch", "smit", "dino", "public"],
    "checkpoints": {"public": "/ckpt/public.pth"},
    "downstream": {"datasets": [901, 902], "shots": ["5", "all"], "folds": [0, 1], "epochs": 2},
    "slurm": {"partition": "gpu", "gpus_per_job": 4, "cpus_per_gpu": 8, "nodes": 2, "mem": "64G",
              "time": {"default": "04:00:00", "pretrain": "2-00:00:00"}, "extra": ["--account=proj"]},
}

# Each stub appends its arguments (tab-separated) to $STUB_LOG/<name>.log.
RECORD = 'mkdir -p "$STUB_LOG"; (IFS=$\'\\t\'; echo "$*") >> "$STUB_LOG/$(basename "$0").log"\n'
STUBS = {
    # --parsable prints "<id>;<cluster>" on a federation: the submit script must keep the id only
    "sbatch": RECORD + 'n=$(wc -l < "$STUB_LOG/sbatch.log"); echo "$((1000 + n));cluster0"\n',
    "scontrol": RECORD + '[ "$1 $2" = "show hostnames" ] && printf "gpu07\\ngpu08\\n"\n',
    # srun: record, record the CPUs its tasks would get, then run the task command (after srun's own options)
    "srun": RECORD + 'echo "${SRUN_CPUS_PER_TASK:-unset}" > "$STUB_LOG/srun.cpus"\n'
                     'while [ "${1#-}" != "$1" ]; do shift; done\nexec "$@"\n',
    "torchrun": RECORD,
    "nnUNetv2_train": RECORD + 'echo "${nnUNet_n_proc_DA:-unset}" > "$STUB_LOG/nnUNetv2_train.env"\n',
    "nnssl_pretrain": RECORD,
    "nnssl_report": RECORD,
    "nnssl_plan_and_preprocess": RECORD + 'exit "${STUB_FAIL:-0}"\n',
}


@pytest.fixture
def stubs(tmp_path):
    bin_dir = tmp_path / "stub_bin"
    bin_dir.mkdir()
    for name, body in STUBS.items():
        (bin_dir / name).write_text("#!/usr/bin/env bash\n" + body)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "stub_log"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "STUB_LOG": str(log)}
    return env, log


def calls(log: Path, name: str) -> list[list[str]]:
    file = log / f"{name}.log"
    return [line.split("\t") for line in file.read_text().splitlines()] if file.exists() else []


def export(tmp_path: Path, grid: dict) -> tuple[Path, Paths, list[Job]]:
    spec = spec_from_dict(grid)
    paths = Paths.under(tmp_path / "work")
    jobs = build_jobs(spec, paths, tmp_path / "report")
    out = tmp_path / "jobs"
    export_jobs(jobs, paths, out, spec)
    return out, paths, jobs


def run_script(out: Path, script: str, env: dict, **slurm_env: str) -> subprocess.CompletedProcess:
    env = {**env, "SLURM_SUBMIT_DIR": str(out), **slurm_env}
    return subprocess.run(["bash", script], cwd=out, env=env, capture_output=True, text=True)


def sbatch_options(out: Path, script: str) -> list[str]:
    return re.findall(r"^#SBATCH (\S+)", (out / script).read_text(), flags=re.M)


def test_submit_script_builds_per_job_dependencies(tmp_path, stubs):
    env, log = stubs
    out, _, jobs = export(tmp_path, GRID)
    proc = subprocess.run(["bash", str(out / "submit.sh")], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr

    submitted: dict[str, dict] = {}  # script stem -> id, dependency kinds -> ids, options
    for n, argv in enumerate(calls(log, "sbatch"), start=1):
        script = argv[-1]
        assert argv[0] == "--parsable" and script.endswith(".sbatch")
        deps: dict[str, set[str]] = {}
        for option in argv:
            if option.startswith("--dependency="):
                for entry in option.split("=", 1)[1].split(","):
                    kind, *ids = entry.split(":")
                    deps[kind] = set(ids)
        submitted[script[:-len(".sbatch")]] = {"id": str(1000 + n), "deps": deps,
                                                "options": argv[:-1] + sbatch_options(out, script)}
    ids = {name: s["id"] for name, s in submitted.items()}
    assert set(submitted) == {"phantoms", "preprocess", "pretrain-smit", "pretrain-dino", "attach-smit",
                              "attach-dino", "attach-public", "finetune-scratch", "finetune-smit", "finetune-dino",
                              "finetune-public", "cka-smit", "cka-dino", "cka-public", "attention-smit",
                              "attention-dino", "attention-public", "probe-smit", "probe-dino", "probe-public",
                              "report"}

    assert submitted["phantoms"]["deps"] == {}
    assert submitted["preprocess"]["deps"] == {"afterok": {ids["phantoms"]}}
    for m in ("smit", "dino"):  # pretraining waits for the preprocessed data only
        assert submitted[f"pretrain-{m}"]["deps"] == {"afterok": {ids["preprocess"]}}
        assert submitted[f"attach-{m}"]["deps"] == {"afterok": {ids[f"pretrain-{m}"]}}
    assert submitted["attach-public"]["deps"] == {"afterok": {ids["preprocess"]}}  # an existing checkpoint
    for m in ("smit", "dino"):  # a probe needs its checkpoint only, not the fine-tuning
        assert submitted[f"probe-{m}"]["deps"] == {"afterok": {ids[f"pretrain-{m}"]}}
    assert submitted["probe-public"]["deps"] == {"afterok": {ids["preprocess"]}}
    assert "--gres=gpu:1" in submitted["probe-smit"]["options"]  # one GPU per probe on a cuda grid
    for m in ("smit", "dino", "public"):
        assert submitted[f"finetune-{m}"]["deps"] == {"afterok": {ids[f"attach-{m}"]}}
        # CKA of fold i waits for fine-tuning fold i only: a failed fold blocks its own CKA, not the others
        assert submitted[f"cka-{m}"]["deps"] == {"aftercorr": {ids[f"finetune-{m}"]}}
        fine = [l.split("finished: ")[1].split("'")[0] for l in (out / f"finetune-{m}.commands").read_text().splitlines()]
        cka = [l.split("finished: ")[1].split("'")[0] for l in (out / f"cka-{m}.commands").read_text().splitlines()]
        assert [k.replace("finetune/", "cka/") for k in fine] == cka and len(cka) == 2 * 2 * 2
        # attention of fold i likewise waits for fine-tuning fold i only
        assert submitted[f"attention-{m}"]["deps"] == {"aftercorr": {ids[f"finetune-{m}"]}}
    assert submitted["finetune-scratch"]["deps"] == {"afterok": {ids["preprocess"]}}  # no pretraining to wait for
    assert submitted["report"]["deps"] == {"afterany": {i for name, i in ids.items() if name != "report"}}

    for name, s in submitted.items():
        assert "--requeue" in s["options"], name
        assert ("--kill-on-invalid-dep=yes" in s["options"]) == bool(s["deps"]), name
    assert (out / "submitted.txt").read_text().split() == [x for name, i in ids.items() for x in (name, i)]

    # every job of the grid is one task of exactly one submission
    keys = []
    for name in submitted:
        commands = out / f"{name}.commands"
        lines = commands.read_text().splitlines() if commands.exists() else [None]
        options = submitted[name]["options"]
        if commands.exists():
            assert f"--array=0-{len(lines) - 1}" in options
        keys += [name] * len(lines)
    assert len(keys) == len(jobs)


def test_resources_follow_the_spec(tmp_path):
    out, _, _ = export(tmp_path, GRID)
    pretrain = sbatch_options(out, "pretrain-smit.sbatch")
    for option in ("--partition=gpu", "--gres=gpu:4", "--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=32",
                   "--time=2-00:00:00", "--mem=64G", "--account=proj", "--requeue", "--open-mode=append"):
        assert option in pretrain
    finetune = sbatch_options(out, "finetune-smit.sbatch")
    assert {"--gres=gpu:1", "--cpus-per-task=8", "--time=04:00:00", "--array=0-7"} <= set(finetune)
    assert not any(o.startswith("--nodes") for o in finetune)
    for script in ("preprocess.sbatch", "attach-smit.sbatch", "report.sbatch", "phantoms.sbatch"):
        options = sbatch_options(out, script)
        assert not any(o.startswith("--gres") for o in options) and "--cpus-per-task=8" in options, script
    for script in out.glob("*.sbatch"):
        assert "source env.sh" in script.read_text()


def test_multi_node_pretraining_runs_one_torchrun_per_node_and_resumes(tmp_path, stubs):
    env, log = stubs
    out, paths, _ = export(tmp_path, GRID)
    script = (out / "pretrain-smit.sbatch").read_text()
    assert 'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)' in script
    assert ("srun --ntasks-per-node=1 torchrun --nnodes=$SLURM_NNODES --nproc-per-node=4 --rdzv-backend=c10d "
            "--rdzv-id=$SLURM_JOB_ID --rdzv-endpoint=$head_node:29500 --no-python nnssl_pretrain -m smit") in script
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "gpu[07-08]",
             "SLURM_CPUS_PER_TASK": "32"}

    proc = run_script(out, "pretrain-smit.sbatch", env, **slurm)
    assert proc.returncode == 0, proc.stderr
    assert calls(log, "srun")[0][:2] == ["--ntasks-per-node=1", "torchrun"]
    assert (log / "srun.cpus").read_text().strip() == "32"  # the tasks get the job's CPUs
    torchrun = calls(log, "torchrun")[0]
    assert torchrun[:8] == ["--nnodes=2", "--nproc-per-node=4", "--rdzv-backend=c10d", "--rdzv-id=4242",
                            "--rdzv-endpoint=gpu07:29500", "--no-python", "nnssl_pretrain", "-m"]
    assert "--resume" not in torchrun  # fresh: nnssl_pretrain refuses --resume without a checkpoint

    run_dir = paths.nnssl_results / "study" / "smit"
    run_dir.mkdir(parents=True)
    (run_dir / "checkpoint_latest.pth").write_text("")  # a re-queued attempt finds the last checkpoint
    assert run_script(out, "pretrain-smit.sbatch", env, **slurm).returncode == 0
    assert calls(log, "torchrun")[1][-1] == "--resume"

    (run_dir / "checkpoint_final.pth").write_text("")  # finished: a resubmitted grid skips it
    proc = run_script(out, "pretrain-smit.sbatch", env, **slurm)
    assert proc.returncode == 0 and "finished: pretrain/smit" in proc.stdout
    assert len(calls(log, "torchrun")) == 2


def test_single_node_pretraining_uses_torchrun_standalone(tmp_path, stubs):
    env, log = stubs
    out, _, _ = export(tmp_path, {**GRID, "slurm": {"gpus_per_job": 2}})
    assert "torchrun --nproc-per-node=2 --standalone --no-python nnssl_pretrain -m dino" in \
        (out / "pretrain-dino.sbatch").read_text()
    assert "--nodes=1" in sbatch_options(out, "pretrain-dino.sbatch")
    assert run_script(out, "pretrain-dino.sbatch", env, SLURM_JOB_ID="7").returncode == 0
    assert calls(log, "torchrun")[0][:4] == ["--nproc-per-node=2", "--standalone", "--no-python", "nnssl_pretrain"]
    assert not calls(log, "srun") and not calls(log, "scontrol")


def test_cpu_grid_exports_plain_commands_without_gpus(tmp_path, stubs):
    env, log = stubs
    grid = {**GRID, "device": "cpu", "slurm": None}
    out, _, _ = export(tmp_path, grid)
    assert not any(o.startswith("--gres") for f in out.glob("*.sbatch") for o in sbatch_options(out, f.name))
    assert run_script(out, "pretrain-smit.sbatch", env).returncode == 0
    assert calls(log, "nnssl_pretrain")[0][:2] == ["-m", "smit"] and not calls(log, "torchrun")


def test_finetune_tasks_always_continue_and_skip_finished_folds(tmp_path, stubs):
    env, log = stubs
    out, paths, jobs = export(tmp_path, {**GRID, "device": "cpu", "slurm": None})
    lines = (out / "finetune-smit.commands").read_text().splitlines()
    assert len(lines) == 8 and all(l.split("; nnssl_record")[0].endswith("--c") for l in lines)

    proc = run_script(out, "finetune-smit.sbatch", env, SLURM_ARRAY_TASK_ID="1")
    assert proc.returncode == 0, proc.stderr
    argv = calls(log, "nnUNetv2_train")[0]
    assert argv[:3] == ["901", "3d_fullres", "1"] and argv[-1] == "--c"  # --c on a fresh fold starts training
    assert (log / "nnUNetv2_train.env").read_text().strip() == "0"  # the job's environment (CPU grid)

    job = next(j for j in jobs if j.key == "finetune/901/smit/5/1")
    summary = Path(str(job.done_marker).replace("Dataset901_*", "Dataset901_Organs"))
    summary.parent.mkdir(parents=True)
    summary.write_text("{}")
    proc = run_script(out, "finetune-smit.sbatch", env, SLURM_ARRAY_TASK_ID="1")
    assert proc.returncode == 0 and "finished: finetune/901/smit/5/1" in proc.stdout
    assert len(calls(log, "nnUNetv2_train")) == 1


def test_preprocessing_stamps_success_like_the_runner(tmp_path, stubs):
    env, log = stubs
    out, paths, jobs = export(tmp_path, GRID)
    job = next(j for j in jobs if j.stage == "preprocess")
    assert run_script(out, "preprocess.sbatch", {**env, "STUB_FAIL": "3"}).returncode == 3
    assert not job.stamp.exists()  # a failed preprocessing is not marked done
    assert run_script(out, "preprocess.sbatch", env).returncode == 0
    assert job.stamp.exists() and calls(log, "nnssl_plan_and_preprocess")[-1][:2] == ["-d", "900"]


def test_report_lists_what_did_not_finish(tmp_path, stubs):
    env, log = stubs
    out, _, jobs = export(tmp_path, GRID)
    status = subprocess.run(["bash", "status.sh"], cwd=out, env=env, capture_output=True, text=True)
    assert status.returncode == 1
    assert "not finished: finetune/901/smit/5/0 (log: logs/nnssl-finetune-smit-*_0.out)" in status.stdout
    assert f"0 jobs finished, {len(jobs) - 1} not finished" in status.stdout  # all but the report have markers
    proc = run_script(out, "report.sbatch", env)
    assert proc.returncode == 0 and "not finished: pretrain/smit" in proc.stdout and calls(log, "nnssl_report")


def test_submissions_need_jobs_in_dependency_order():
    a, b = Job("a", "attach", ["true"], after=["b"]), Job("b", "pretrain", ["true"])
    with pytest.raises(ValueError, match="job a needs b, but it comes later"):
        plan_submissions([a, b])
    with pytest.raises(ValueError, match="not a job of this grid"):
        plan_submissions([Job("c", "report", ["true"], after=["x"])])


def test_slurm_spec_errors_name_the_field():
    def slurm(**section):
        return spec_from_dict({**GRID, "slurm": section})

    with pytest.raises(SpecError, match="gpu_per_job \\(did you mean gpus_per_job\\?\\)"):
        slurm(gpu_per_job=4)
    with pytest.raises(SpecError, match="slurm.time: '2 days' is not a SLURM time"):
        slurm(time="2 days")
    with pytest.raises(SpecError, match="slurm.time.pretrain: got the number 43200; write the time as a quoted"):
        slurm(time={"pretrain": 43200})  # YAML's reading of an unquoted 12:00:00
    with pytest.raises(SpecError, match="unknown stage 'pretraining' \\(did you mean 'pretrain'\\?\\)"):
        slurm(time={"pretraining": "1:00:00"})
    with pytest.raises(SpecError, match="slurm.mem: '64 GB' is not a SLURM memory size"):
        slurm(mem="64 GB")
    with pytest.raises(SpecError, match="slurm.nodes must be a positive integer"):
        slurm(nodes=0)
    with pytest.raises(SpecError, match="slurm.nodes: 2 nodes need device: cuda"):
        spec_from_dict({**GRID, "device": "cpu", "slurm": {"nodes": 2}})
    with pytest.raises(SpecError, match="slurm.extra"):
        slurm(extra=["account=proj"])
    spec = slurm(mem=16000, time="90")
    assert spec.slurm.limit("mem", "finetune") == "16000" and spec.slurm.limit("time", "report") == "90"
    assert spec_from_dict({**GRID, "slurm": None}).slurm is None
    assert SLURM_STAGES == runner.STAGES


def test_yaml_slurm_section(tmp_path):
    from nnssl.benchmark.spec import load_spec

    path = tmp_path / "s.yaml"
    path.write_text("name: y\ndevice: cuda\npretraining: {datasets: [900]}\nmethods: [scratch, smit]\n"
                    "downstream: {datasets: [901]}\n"
                    "slurm: {partition: gpu, gpus_per_job: 8, nodes: 2, time: {default: 04:00:00, pretrain: 2-00:00:00}}\n")
    spec = load_spec(path)  # YAML keeps these two as strings
    assert spec.slurm.limit("time", "pretrain") == "2-00:00:00" and spec.slurm.limit("time", "cka") == "04:00:00"
    path.write_text(path.read_text().replace("04:00:00", "12:00:00"))  # unquoted, YAML reads 43200 seconds
    with pytest.raises(SpecError, match="quoted string"):
        load_spec(path)


def test_cli_export_and_dry_run(tmp_path, capsys):
    from nnssl.cli.benchmark import main

    spec = tmp_path / "s.json"
    spec.write_text(json.dumps(GRID))
    work = ["--workdir", str(tmp_path / "w")]
    assert main([str(spec), *work, "--export-jobs", str(tmp_path / "jobs")]) == 0
    assert "submit with: bash" in capsys.readouterr().out
    assert subprocess.run(["bash", "-n", str(tmp_path / "jobs" / "submit.sh")]).returncode == 0
    assert main([str(spec), *work, "--dry-run"]) == 0  # the dry run still lists every job, plain, in order
    lines = capsys.readouterr().out.splitlines()
    jobs = build_jobs(spec_from_dict(GRID), Paths.under(tmp_path / "w"), tmp_path / "w")
    assert [re.match(r"todo  \[(\w+)\]", l).group(1) for l in lines] == [j.stage for j in jobs]
    assert "nnssl_pretrain -m smit" in lines[[j.key for j in jobs].index("pretrain/smit")]
    assert not any("torchrun" in l for l in lines)


def test_job_scripts_key_done_on_the_settings_like_the_runner(tmp_path, stubs):
    """A job script records the settings it succeeded with; re-exported after an edit, it refuses the old outputs
    (exit 3, naming the fix) instead of counting them as done, and status.sh lists them."""
    from nnssl.benchmark import stamps

    env, log = stubs
    grid = {**GRID, "device": "cpu", "slurm": None}
    out, paths, jobs = export(tmp_path, grid)
    job = next(j for j in jobs if j.key == "pretrain/smit")
    job.done_marker.parent.mkdir(parents=True)  # the folder nnssl_pretrain makes (the stub trains nothing)
    assert run_script(out, "pretrain-smit.sbatch", env).returncode == 0
    job.done_marker.write_text("")
    assert stamps.record_state(job) == "match"  # the runner reads the script's record as its own
    proc = run_script(out, "pretrain-smit.sbatch", env)
    assert proc.returncode == 0 and "finished: pretrain/smit" in proc.stdout

    edited = {**grid, "pretraining": {**grid["pretraining"], "steps": 9}}
    out, _, _ = export(tmp_path, edited)
    proc = run_script(out, "pretrain-smit.sbatch", env)
    assert proc.returncode == 3 and "outputs of pretrain/smit were made with other settings" in proc.stderr
    assert "--rerun-changed" in proc.stderr and len(calls(log, "nnssl_pretrain")) == 1
    status = subprocess.run(["bash", "status.sh"], cwd=out, env=env, capture_output=True, text=True)
    assert "made with other settings: pretrain/smit" in status.stdout
