"""Export a grid as SLURM jobs: one job per pretraining method, arrays for the rest, dependencies per job.

The submissions follow the jobs' own prerequisites (``Job.after``), so a failure blocks only what needs its result:

    phantoms (array) -> preprocess -> pretrain-<m> -> attach-<m> (array) -> finetune-<m> (array) -> cka-<m> (array)
                                                  -> probe-<m> (array)
                                                                                             -> attention-<m> (array)
                                   -> finetune-scratch (array)
    report: after all of them, whatever their outcome (``afterany``); it first lists the jobs that did not finish

Jobs of one stage and method that need the same submissions form one array (a SLURM dependency belongs to a whole
submission); a pretraining job is a submission of its own (it may span nodes). An array whose task i needs exactly
task i of an equally long array (CKA of fold i after fine-tuning fold i) waits per task (``aftercorr``), otherwise a
submission waits for all of its prerequisites (``afterok``). Every dependent submission carries
``--kill-on-invalid-dep=yes``: when a prerequisite fails, SLURM cancels the dependents instead of leaving them pending.

Every job can run again: a finished job (its done marker exists and its settings record, nnssl.benchmark.stamps, holds
the exported settings, or it has no record) exits at once, one whose outputs were made with other settings stops
with an error (the runner's rule: ``nnssl_benchmark --rerun-changed`` redoes them); pretraining passes ``--resume`` when a
``checkpoint_latest.pth`` exists (the test is in the job script: the export is written before anything has run);
nnU-Net fine-tuning always passes ``--c``, which starts a new training when there is no checkpoint
(nnunetv2 2.8, nnunetv2/run/run_training.py, maybe_load_checkpoint: "Cannot continue training because there seems
to be no checkpoint available to continue from. Starting a new training..."). So the jobs are submitted with
``--requeue``, and resubmitting the whole grid after a failure re-runs only what is missing.

Pretraining on GPUs runs under torchrun: ``torchrun --nproc-per-node=<gpus_per_job> --standalone`` on one node, and
on several nodes one torchrun per node through ``srun --ntasks-per-node=1`` with a c10d rendezvous on the job's
first node.
"""
from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from nnssl.benchmark.runner import Job, Paths
from nnssl.benchmark.spec import BenchmarkSpec, SlurmSpec

#: Stages whose commands use the GPU when the spec's device is cuda (one GPU each, pretraining gpus_per_job).
GPU_STAGES = ("pretrain", "probe", "finetune", "cka", "attention")

LIB = """\
# Shell helpers of the exported grid; sourced by every job after env.sh.

# nnssl_done MARKER...: all markers exist. A marker may hold a glob (Dataset901_*), as the runner's do.
nnssl_done() {
  local marker
  for marker in "$@"; do
    compgen -G "$marker" > /dev/null || return 1
  done
}

# nnssl_job_state RECORD IDENTITY MARKER...: prints todo, done, unrecorded (outputs without a settings record, from an
# older nnssl: counted as done) or changed (outputs made with other settings), as nnssl.benchmark.stamps decides.
nnssl_job_state() {
  local record=$1 identity=$2 found
  shift 2
  if ! nnssl_done "$@"; then echo todo; return; fi
  found=$(compgen -G "$record" | sed -n 1p || true)
  if [ -z "$found" ]; then echo unrecorded
  elif grep -qF '"identity": "'"$identity"'"' "$found"; then echo done
  else echo changed; fi
}

# nnssl_job_done KEY RECORD IDENTITY MARKER...: the job is finished (status 0) or still to run (1); outputs made with
# other settings stop the job script with an error.
nnssl_job_done() {
  local key=$1 state
  shift
  state=$(nnssl_job_state "$@")
  case $state in
    done) return 0 ;;
    unrecorded) echo "note: $key finished without a settings record (an older nnssl): counted as done"; return 0 ;;
    changed) echo "error: the outputs of $key were made with other settings (record: $1). Redo them with" \
               "nnssl_benchmark SPEC --rerun-changed, or move them aside and resubmit" >&2; exit 3 ;;
  esac
  return 1
}

# nnssl_record RECORD TEXT: write a job's settings record (RECORD's folder may hold a glob) after it succeeded.
nnssl_record() {
  local dir
  dir=$(compgen -G "$(dirname "$1")" | sed -n 1p || true)
  if [ -n "$dir" ]; then printf '%s\n' "$2" > "$dir/$(basename "$1")"; fi
}

# nnssl_check KEY LOG MARKER...: count a job as finished, or print it as not finished with its log.
# nnssl_check_job KEY LOG RECORD IDENTITY MARKER...: the same for a job with a settings record.
nnssl_finished=0
nnssl_missing=0
nnssl_check() {
  local key=$1 log=$2
  shift 2
  if nnssl_done "$@"; then
    nnssl_finished=$((nnssl_finished + 1))
  else
    nnssl_missing=$((nnssl_missing + 1))
    echo "not finished: $key (log: $log)"
  fi
}
nnssl_check_job() {
  local key=$1 log=$2 state
  shift 2
  state=$(nnssl_job_state "$@")
  case $state in
    done|unrecorded) nnssl_finished=$((nnssl_finished + 1)) ;;
    changed) nnssl_missing=$((nnssl_missing + 1)); echo "made with other settings: $key (record: $1)" ;;
    *) nnssl_missing=$((nnssl_missing + 1)); echo "not finished: $key (log: $log)" ;;
  esac
}
"""


@dataclass
class Dependency:
    """One entry of a submission's ``--dependency``: ``kind`` is afterok, aftercorr or afterany."""

    kind: str
    on: "Submission"


@dataclass
class Submission:
    """One ``sbatch`` call: a single job or an array of jobs of one stage (and method) that need the same jobs."""

    name: str
    stage: str
    jobs: list[Job]
    after_any: bool = False
    deps: list[Dependency] = field(default_factory=list)

    @property
    def is_array(self) -> bool:
        """Whether the submission holds several jobs and is submitted as one SLURM array (index = job)."""
        return len(self.jobs) > 1

    @property
    def variable(self) -> str:
        """The shell variable of submit.sh that holds this submission's job id."""
        return "id_" + re.sub(r"\W", "_", self.name)

    def log(self, index: int) -> str:
        """Where SLURM writes the output of a job of this submission (the job id is known only once submitted)."""
        return f"logs/nnssl-{self.name}-*_{index}.out" if self.is_array else f"logs/nnssl-{self.name}-*.out"

    def dependency(self) -> str | None:
        """The ``--dependency`` value: entries of one kind share an ``afterok:<id>:<id>``; all must hold."""
        by_kind: dict[str, list[str]] = {}
        for dep in self.deps:
            by_kind.setdefault(dep.kind, []).append(f"${{{dep.on.variable}}}")
        return ",".join(kind + ":" + ":".join(ids) for kind, ids in by_kind.items()) or None


def plan_submissions(jobs: list[Job]) -> list[Submission]:
    """Group the jobs into submissions and derive each one's dependencies from ``Job.after``.

    The jobs come in an order that respects their prerequisites (build_jobs' order), so every prerequisite is
    already placed when a job is grouped; a job is grouped with earlier jobs of its stage and method that need
    exactly the same submissions, which keeps the dependency of an array the union its tasks need and no more.
    """
    placed: dict[str, tuple[Submission, int]] = {}
    groups: dict[tuple, Submission] = {}
    submissions: list[Submission] = []
    names: set[str] = set()
    for job in jobs:
        needs: list[Submission] = []
        for key in job.after:
            if key not in placed:
                known = "it is not a job of this grid" if all(j.key != key for j in jobs) else "it comes later"
                raise ValueError(f"job {job.key} needs {key}, but {known}: list the jobs in dependency order")
            if placed[key][0] not in needs:
                needs.append(placed[key][0])
        group_key: tuple = (job.stage, job.method, job.after_any, tuple(s.name for s in needs))
        if job.stage == "pretrain":  # a job of its own: one method's run, possibly on several nodes
            group_key += (job.key,)
        sub = groups.get(group_key)
        if sub is None:
            sub = Submission(_unique_name(job, names), job.stage, [], after_any=job.after_any)
            sub.deps = [Dependency("afterany" if job.after_any else "afterok", s) for s in needs]
            groups[group_key] = sub
            submissions.append(sub)
        placed[job.key] = (sub, len(sub.jobs))
        sub.jobs.append(job)
    for sub in submissions:
        for dep in sub.deps:
            if dep.kind == "afterok" and _corresponds(sub, dep.on, placed):
                dep.kind = "aftercorr"
    return submissions


def _unique_name(job: Job, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", job.stage + (f"-{job.method}" if job.method else ""))
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    taken.add(name)
    return name


def _corresponds(sub: Submission, on: Submission, placed: dict[str, tuple[Submission, int]]) -> bool:
    """Task i of ``sub`` needs task i of ``on`` and no other task of it (then it need not wait for the others)."""
    if not (sub.is_array and on.is_array and len(sub.jobs) == len(on.jobs)):
        return False
    for i, job in enumerate(sub.jobs):
        tasks = {placed[k][1] for k in job.after if placed[k][0] is on}
        if tasks != {i}:
            return False
    return True


# ----------------------------------------------------------------------------------------------------- job bodies

def _q(value: object) -> str:
    return shlex.quote(str(value))


def _record_args(job: Job) -> list[str] | None:
    """RECORD IDENTITY for the shell helpers of a job with a settings record, else None."""
    if job.settings_file is None or job.identity is None:
        return None
    return [str(job.settings_file), job.identity["identity"]]


def _markers(job: Job) -> list[str]:
    """What must exist for the job to count as finished (as Job.is_done: the runner's stamp, then the markers)."""
    if job.done_marker is None:
        return []
    markers = job.done_marker if isinstance(job.done_marker, list) else [job.done_marker]
    return ([str(job.stamp)] if job.stamp is not None else []) + [str(m) for m in markers]


def _command(job: Job, launcher: list[str], resume: str) -> str:
    """The job's command line: its environment, the launcher (torchrun...), the command and the resume flags."""
    env = [f"{k}={_q(v)}" for k, v in job.env.items()]
    parts = env + launcher + [_q(c) for c in job.command]
    if job.always_resume:
        parts += [_q(a) for a in job.resume_args]
    elif resume:
        parts.append(resume)
    return " ".join(parts)


def _resume_test(job: Job) -> str | None:
    """Shell that sets $RESUME to the resume flags when the job's checkpoint exists (decided when the job runs)."""
    if job.always_resume or job.resume_marker is None or not job.resume_args:
        return None
    flags = " ".join(_q(a) for a in job.resume_args)
    return f"RESUME=; if [ -f {_q(job.resume_marker)} ]; then RESUME={_q(flags)}; fi"


def _body(job: Job, launcher: list[str], setup: list[str]) -> tuple[list[str], str, list[str]]:
    """One job as shell: the statements before its command line, the command line, the statements after it."""
    before = ["bash status.sh || true"] if job.after_any else []  # the report first lists what did not finish
    resume = _resume_test(job)
    if resume:
        before.append(resume)
    before += setup
    # as the runner: a stamp marks success for commands whose own outputs appear before they have finished
    after = [f"echo {_q(job.key)} > {_q(job.stamp)}"] if job.stamp is not None else []
    if _record_args(job):  # and the settings it succeeded with
        after.append(f"nnssl_record {_q(job.settings_file)} {_q(json.dumps(job.identity))}")
    return before, _command(job, launcher, "$RESUME" if resume else ""), after


def _done_test(job: Job) -> str | None:
    markers = _markers(job)
    if not markers:
        return None
    record = _record_args(job)
    if record:
        return f"nnssl_job_done {' '.join(_q(a) for a in [job.key, *record, *markers])}"
    return f"nnssl_done {' '.join(_q(m) for m in markers)}"


def _one_line(job: Job) -> str:
    """The job as one line of a .commands file (an array task evaluates its line)."""
    before, command, after = _body(job, [], [])
    body = "; ".join([*before, command, *after])
    test = _done_test(job)
    return f"if {test}; then echo {_q('finished: ' + job.key)}; else {body}; fi" if test else body


def _pretrain_launch(spec: BenchmarkSpec, slurm: SlurmSpec) -> tuple[list[str], list[str]]:
    """Launcher words and setup lines of a pretraining job: torchrun on GPUs, one torchrun per node on several."""
    if spec.device != "cuda":
        return [], []
    gpus = slurm.gpus_per_job
    if slurm.nodes == 1:
        # --standalone: a free local rendezvous port, so two pretraining jobs on one node do not collide
        return ["torchrun", f"--nproc-per-node={gpus}", "--standalone", "--no-python"], []
    setup = []
    if slurm.cpus_per_gpu:  # srun >= 22.05 does not pass the job's --cpus-per-task on to its tasks by itself
        setup.append('export SRUN_CPUS_PER_TASK="$SLURM_CPUS_PER_TASK"')
    # the first node hosts the rendezvous. sed, not head: head would close the pipe early, and the SIGPIPE that
    # scontrol then gets fails the job under pipefail
    setup.append('head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)')
    return ["srun", "--ntasks-per-node=1", "torchrun", "--nnodes=$SLURM_NNODES", f"--nproc-per-node={gpus}",
            "--rdzv-backend=c10d", "--rdzv-id=$SLURM_JOB_ID", f"--rdzv-endpoint=$head_node:{slurm.port}",
            "--no-python"], setup


# -------------------------------------------------------------------------------------------------------- scripts

def _resources(sub: Submission, spec: BenchmarkSpec, slurm: SlurmSpec) -> list[str]:
    """#SBATCH resource options of a submission (every job of it gets these)."""
    options = []
    if slurm.partition:
        options.append(f"--partition={slurm.partition}")
    gpus = 0
    if spec.device == "cuda" and sub.stage in GPU_STAGES:
        gpus = slurm.gpus_per_job if sub.stage == "pretrain" else 1
        options.append(f"--gres=gpu:{gpus}")
    if sub.stage == "pretrain":
        options += [f"--nodes={slurm.nodes}", "--ntasks-per-node=1"]
    if slurm.cpus_per_gpu:
        options.append(f"--cpus-per-task={slurm.cpus_per_gpu * max(gpus, 1)}")
    for key in ("time", "mem"):
        value = slurm.limit(key, sub.stage)
        if value:
            options.append(f"--{key}={value}")
    return options + list(slurm.extra)


def _script(sub: Submission, spec: BenchmarkSpec, slurm: SlurmSpec, commands: str | None) -> str:
    header = [f"--job-name=nnssl-{sub.name}"]
    if sub.is_array:
        header += [f"--array=0-{len(sub.jobs) - 1}", "--output=logs/%x-%A_%a.out"]
    else:
        header.append("--output=logs/%x-%j.out")
    # a re-queued job appends to its log (the earlier attempt stays readable) and resumes (see the module docstring)
    header += ["--open-mode=append", "--requeue", *_resources(sub, spec, slurm)]
    what = f"{len(sub.jobs)} {sub.stage} jobs" if sub.is_array else sub.jobs[0].key
    how = ("runs once the other jobs have ended, whatever their outcome, and first lists those that did not finish"
           if sub.after_any else "a job that already finished exits at once, an interrupted one resumes")
    lines = ["#!/usr/bin/env bash", *(f"#SBATCH {o}" for o in header), f"# {what}: {how}",
             "set -euo pipefail", 'cd "$SLURM_SUBMIT_DIR"', "source env.sh", "source lib.sh",
             'mkdir -p "$nnUNet_raw" "$nnUNet_preprocessed" "$nnUNet_results" "$nnssl_results"']
    if sub.is_array:
        lines += [f'line=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {commands})', 'echo "+ $line"', 'eval "$line"']
        return "\n".join(lines) + "\n"
    job = sub.jobs[0]
    launcher, setup = _pretrain_launch(spec, slurm) if job.stage == "pretrain" else ([], [])
    test = _done_test(job)
    if test:
        lines.append(f"if {test}; then echo {_q('finished: ' + job.key)}; exit 0; fi")
    before, command, after = _body(job, launcher, setup)
    # trace the command line as run (expanded: nodes, rendezvous endpoint, resume flag) into the job's log
    lines += [*before, "set -x", command, "{ set +x; } 2> /dev/null", *after]
    return "\n".join(lines) + "\n"


def _submit(submissions: list[Submission], total: int) -> str:
    lines = ["#!/usr/bin/env bash",
             f"# Submits the grid ({total} jobs) as {len(submissions)} SLURM submissions; each waits only for the",
             "# jobs it needs, and the report waits for all of them whatever their outcome. Job ids go to submitted.txt.",
             "set -euo pipefail", 'cd "$(dirname "$0")"', "mkdir -p logs", ": > submitted.txt"]
    for sub in submissions:
        args = ["sbatch", "--parsable"]
        dependency = sub.dependency()
        if dependency:
            args += [f'--dependency="{dependency}"', "--kill-on-invalid-dep=yes"]
        lines.append(f"{sub.variable}=$({' '.join(args)} {sub.name}.sbatch)")
        # --parsable prints "<id>" or "<id>;<cluster>"
        lines.append(f'{sub.variable}=${{{sub.variable}%%;*}}; echo "{sub.name} ${sub.variable}" | tee -a submitted.txt')
    return "\n".join(lines) + "\n"


def _status(submissions: list[Submission]) -> str:
    lines = ["#!/usr/bin/env bash", "# Lists the jobs of the grid that have not finished; exits 1 when there are any.",
             "set -uo pipefail", 'cd "$(dirname "$0")"', "source env.sh", "source lib.sh"]
    for sub in submissions:
        for i, job in enumerate(sub.jobs):
            markers = _markers(job)
            record = _record_args(job)
            if markers and record:
                lines.append(f"nnssl_check_job {_q(job.key)} {_q(sub.log(i))} "
                             f"{' '.join(_q(m) for m in [*record, *markers])}")
            elif markers:
                lines.append(f"nnssl_check {_q(job.key)} {_q(sub.log(i))} {' '.join(_q(m) for m in markers)}")
    lines += ['echo "$nnssl_finished jobs finished, $nnssl_missing not finished"', '[ "$nnssl_missing" -eq 0 ]']
    return "\n".join(lines) + "\n"


def export_jobs(jobs: list[Job], paths: Paths, out_dir: Path, spec: BenchmarkSpec) -> list[Path]:
    """Write the grid as SLURM job scripts plus ``submit.sh`` (submits them) and ``status.sh`` (what is missing).

    ``env.sh`` (the grid's folders) and ``lib.sh`` (shell helpers) are sourced by every job; an array's jobs are
    the lines of its ``<name>.commands`` file, each a complete command that skips a finished job and resumes an
    interrupted one. Returns the files written.
    """
    slurm = spec.slurm or SlurmSpec().validate(spec.device)
    submissions = plan_submissions(jobs)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "logs").mkdir(exist_ok=True)
    files: dict[str, str] = {
        "env.sh": "# nnU-Net and nnssl folders of this grid; sourced by every job\n" + "".join(
            f"export {k}={_q(v)}\n" for k, v in paths.environment().items()),
        "lib.sh": LIB,
    }
    for sub in submissions:
        commands = None
        if sub.is_array:
            commands = f"{sub.name}.commands"
            files[commands] = "".join(_one_line(j) + "\n" for j in sub.jobs)
        files[f"{sub.name}.sbatch"] = _script(sub, spec, slurm, commands)
    files["status.sh"] = _status(submissions)
    files["submit.sh"] = _submit(submissions, len(jobs))
    written = []
    for name, text in files.items():
        path = out_dir / name
        path.write_text(text)
        if name.endswith(".sh") and name not in ("env.sh", "lib.sh"):
            path.chmod(0o755)
        written.append(path)
    return written
