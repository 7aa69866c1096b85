"""Turn a benchmark spec into jobs (shell commands with a 'done' marker each) and run them.

Every job is an ordinary nnssl / nnU-Net command, so what the runner does is exactly what a person (or a cluster
array job) would type. A job whose marker exists is skipped; a fine-tuning or pretraining job that left a
``checkpoint_latest.pth`` is resumed (``--c`` / ``--resume``), so an interrupted grid continues where it stopped.
Each job names the jobs it needs (``Job.after``); nnssl.benchmark.slurm exports the grid as SLURM jobs from them.
Pretraining, attaching, fine-tuning and CKA jobs also record the settings they succeeded with
(nnssl.benchmark.stamps): outputs of other settings are never reused in silence.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from nnssl.benchmark import stamps
from nnssl.benchmark.budget import budget_warnings
from nnssl.benchmark.spec import OPTIM_SETTINGS, BenchmarkSpec, phantom_arguments
from nnssl.io import file_sha256
from nnssl.nnunet.splits import SPLITS_FILE
from nnssl.nnunet.naming import (CONFIGURATION, SCRATCH, SWIN_PLANS, encoder_tag, is_scratch, model_folder_name,
                                 plans_name, scratch_method, trainer_name)
from nnssl.nnunet.naming import CNN_BASELINES, FULL, parse_protocol

STAGES = ("phantoms", "preprocess", "pretrain", "attach", "probe", "splits", "finetune", "cka", "attention", "report")


@dataclass
class Paths:
    """Where a grid reads and writes: nnU-Net's three folders plus nnssl's pretraining results."""

    raw: Path
    preprocessed: Path
    results: Path
    nnssl_results: Path

    @classmethod
    def from_environment(cls) -> "Paths":
        """The folders of nnU-Net's environment variables (nnUNet_raw, nnUNet_preprocessed, nnUNet_results;
        nnssl_results defaults to $nnUNet_results/nnssl_pretrain); ValueError naming the unset ones."""
        missing = [v for v in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results") if not os.environ.get(v)]
        if missing:
            raise ValueError(f"set {', '.join(missing)} (nnU-Net's folders) before running a benchmark, or use --workdir")
        results = Path(os.environ["nnUNet_results"])
        return cls(Path(os.environ["nnUNet_raw"]), Path(os.environ["nnUNet_preprocessed"]), results,
                   Path(os.environ.get("nnssl_results") or results / "nnssl_pretrain"))

    @classmethod
    def under(cls, workdir: Path) -> "Paths":
        """The four folders under one work directory (``--workdir``): nnUNet_raw, nnUNet_preprocessed, nnUNet_results
        and nnssl_results."""
        workdir = workdir.resolve()
        return cls(workdir / "nnUNet_raw", workdir / "nnUNet_preprocessed", workdir / "nnUNet_results",
                   workdir / "nnssl_results")

    def environment(self) -> dict[str, str]:
        """The environment variables the grid's commands run with: the four folders and nnUNet_extTrainer (where nnU-Net
        finds the Swin trainers)."""
        from nnssl.nnunet.environment import trainers_path

        return {"nnUNet_raw": str(self.raw), "nnUNet_preprocessed": str(self.preprocessed),
                "nnUNet_results": str(self.results), "nnssl_results": str(self.nnssl_results),
                "nnUNet_extTrainer": trainers_path()}


@dataclass
class Job:
    """One command of the grid: ``key`` names it uniquely, ``stage`` groups it (pretrain, attach, finetune, ...). It
    counts as done when every ``done_marker`` exists (and ``stamp`` where set); when ``resume_marker`` exists it reruns
    with ``resume_args`` appended, so an interrupted grid continues where it stopped."""

    key: str
    stage: str
    command: list[str]
    done_marker: Path | list[Path] | None = None  # None: always run (e.g. the report); a list: all must exist
    resume_marker: Path | None = None
    resume_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    #: written by the runner after the command succeeded, for commands whose own outputs appear before they finish
    stamp: Path | None = None
    #: keys of the jobs that must succeed first (direct prerequisites; theirs are implied). The runner's order already
    #: respects them; the cluster export turns them into per-job dependencies.
    after: list[str] = field(default_factory=list)
    #: start once the prerequisites have ended, whatever their outcome (the report, which lists what failed)
    after_any: bool = False
    #: the method a pretrain/attach/finetune/cka job belongs to (the export groups a method's jobs)
    method: str | None = None
    #: the resume flags are safe on a fresh start too (nnU-Net's --c trains from scratch when there is no
    #: checkpoint), so a job that may be re-queued can always pass them
    always_resume: bool = False
    #: the settings record written on success (nnssl.benchmark.stamps), the jobs whose outputs this one reads (their
    #: identities are part of its own), its identity (filled by build_jobs) and what --rerun-changed moves aside
    settings_file: Path | None = None
    keyed_on: list[str] = field(default_factory=list)
    identity: dict | None = None
    outputs: Path | None = None

    def state(self) -> str:
        """"todo", "done", "changed" (the outputs were made with other settings) or "unrecorded" (outputs without a
        settings record, from an older nnssl: counted as done)."""
        if not self.is_done():
            return "todo"
        if self.settings_file is None:
            return "done"
        return {"match": "done", "changed": "changed", "missing": "unrecorded"}[stamps.record_state(self)]

    def changes(self) -> list[str]:
        """What differs from the recorded settings (for a "changed" job)."""
        record = stamps.read_record(self)
        return stamps.describe_changes(record, self.identity or {}) if record is not None else []

    def is_done(self) -> bool:
        """Whether the job's outputs are complete: its stamp (where it has one) and every done marker exist; a job
        without done markers (the report) is never done."""
        if self.stamp is not None and not self.stamp.exists():
            return False
        if self.done_marker is None:
            return False
        markers = self.done_marker if isinstance(self.done_marker, list) else [self.done_marker]
        return all(_exists(m) for m in markers)

    def effective_command(self) -> list[str]:
        """The command the runner executes now: ``command`` plus ``resume_args`` when the resume marker exists (a
        partial run to continue), else ``command``."""
        if self.resume_marker is not None and _exists(self.resume_marker):
            return self.command + self.resume_args
        return self.command

    def shell(self) -> str:
        """``command`` as one shell line with the job's environment variables in front, each part quoted."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return (env + " " if env else "") + " ".join(shlex.quote(c) for c in self.command)


def _exists(marker: Path) -> bool:
    """Markers may hold one glob ('Dataset901_*') because dataset names are known only after generation."""
    text = str(marker)
    if "*" in text:
        return any(Path("/").glob(text.lstrip("/")))
    return marker.exists()


def checkpoint_path(spec: BenchmarkSpec, paths: Paths, method: str) -> Path:
    """Where the grid's pretrained checkpoint of ``method`` lives: the spec's ``checkpoints`` entry for a given
    checkpoint, else ``<nnssl_results>/<spec name>/<method>/checkpoint_final.pth``."""
    if method in spec.checkpoints:
        return Path(spec.checkpoints[method]).resolve()
    return paths.nnssl_results / spec.name / method / "checkpoint_final.pth"


def scratch_encoders(spec: BenchmarkSpec, paths: Paths, warnings: list[str] | None = None) -> dict[str, Path]:
    """Encoder tag -> a checkpoint with that architecture, for every encoder of the spec's pretrained methods that
    differs from the base plans' (the spec's pretraining preset): each needs a from-scratch run of its own. The
    presets of ``pretraining.encoders`` are known before their runs exist (their first run's checkpoint gives the
    architecture); a given checkpoint that does not exist yet cannot be inspected: a warning says its baseline is
    missing from the grid."""
    from nnssl.checkpoint import load_checkpoint
    from nnssl.encoders.swin import EncoderConfig

    def tag_of(cfg: EncoderConfig) -> str:
        return encoder_tag({k: v for k, v in cfg.to_dict().items() if k != "in_channels"})

    base = tag_of(EncoderConfig.preset(spec.pretraining.encoder))
    out: dict[str, Path] = {}
    for run in sorted(spec.pretraining_runs, key=lambda r: -r.fraction):  # architecture: from the run on most cases
        tag = tag_of(EncoderConfig.preset(run.encoder))
        if tag != base:
            out.setdefault(tag, checkpoint_path(spec, paths, run.name))
    for m in spec.pretrained_methods:
        if m not in spec.checkpoints:
            continue  # pretrained here with the base preset
        path = checkpoint_path(spec, paths, m)
        if not path.is_file():
            if warnings is not None:
                warnings.append(f"checkpoints.{m}: {path} does not exist yet, so the grid cannot tell whether its "
                                "encoder needs a from-scratch baseline of its own; run the command again once the "
                                "file exists (convert public weights with nnssl_convert first)")
            continue
        tag = tag_of(EncoderConfig.from_dict(load_checkpoint(path)["encoder_config"]))
        if tag != base:
            out.setdefault(tag, path)
    return out


def _ids(values: Iterable[str]) -> list[str]:
    return [str(v) for v in values]


def _dataset_glob(root: Path, dataset: str) -> str:
    return f"Dataset{int(dataset):03d}_*" if dataset.isdigit() else dataset


def probe_jobs(spec: BenchmarkSpec, paths: Paths, report_dir: Path, pretrained_by: dict[str, str]) -> list[Job]:
    """One frozen-feature probe (nnssl_probe) per pretrained method and downstream dataset (labelled: the grid
    fine-tunes on them), as soon as the method's checkpoint exists; results under ``<report>/probe/``."""
    jobs = []
    for m in spec.finetuned_pretrained:
        for d in _ids(spec.downstream.datasets):
            out = report_dir / "probe" / f"{d}__{m}.json"
            jobs.append(Job(
                f"probe/{m}/{d}", "probe",
                ["nnssl_probe", "--pretrained", str(checkpoint_path(spec, paths, m)), "-d", d, "--method", m,
                 "--device", spec.device, "--out", str(out)]
                + (["--stage", str(spec.downstream.probe_stage)] if spec.downstream.probe_stage != 2 else []),
                done_marker=out, after=[pretrained_by.get(m, "preprocess")], method=m,
                settings_file=stamps.record_beside(out), outputs=out,
                keyed_on=[pretrained_by[m]] if m in pretrained_by else []))
    return jobs


def build_jobs(spec: BenchmarkSpec, paths: Paths, report_dir: Path, warnings: list[str] | None = None) -> list[Job]:
    """All jobs of the grid in an order that respects their dependencies; what the grid cannot decide yet is
    appended to ``warnings``."""
    jobs: list[Job] = []
    if warnings is not None:
        warnings.extend(budget_warnings(spec))
    pretrained_by: dict[str, str] = {}  # method -> key of its pretraining job
    cpu = spec.device == "cpu"
    nproc = ["-np", "1", "-npfp", "1"] if cpu else []
    pre, down = spec.pretraining, spec.downstream
    if spec.phantoms is not None:
        ph = spec.phantoms
        for d in _ids(ph.get("datasets", [])):  # one job per dataset: a partly generated set resumes cleanly
            cmd = ["nnssl_phantoms", "-d", d, "--raw", str(paths.raw), *phantom_arguments(ph, d), "--no-progress"]
            jobs.append(Job(f"phantoms/{d}", "phantoms", cmd,
                            done_marker=paths.raw / _dataset_glob(paths.raw, d) / "dataset.json"))
    needed = sorted(set(_ids(pre.datasets)) | set(_ids(down.datasets)), key=str) if spec.pretrained_methods \
        else sorted(set(_ids(down.datasets)), key=str)
    # One command for all datasets: nnU-Net's worker start-up is paid once. The plans file appears before the
    # preprocessed data are complete, so the runner's stamp marks success.
    jobs.append(Job(
        "preprocess", "preprocess",
        ["nnssl_plan_and_preprocess", "-d", *needed, "--encoder", pre.encoder, *nproc],
        done_marker=[paths.preprocessed / _dataset_glob(paths.preprocessed, d) / f"{SWIN_PLANS}.json"
                     for d in needed],
        stamp=paths.preprocessed / f".nnssl_preprocessed_{pre.encoder}_{'-'.join(needed)}",
        after=[j.key for j in jobs if j.stage == "phantoms"],
    ))
    for run in spec.pretraining_runs:
        m = run.name  # the method, or a design-experiment variant of it (another preset, a share of the cases)
        out = paths.nnssl_results / spec.name / m
        settings = pre.settings(run.method)
        cmd = ["nnssl_pretrain", "-m", run.method, "-d", *_ids(pre.datasets), "--encoder", run.encoder,
               "--crop", *[str(c) for c in pre.crop_of(run.method)], "--batch-size", str(settings["batch_size"]),
               "--steps", str(settings["steps"]), "--device", spec.device,
               "--num-workers", str(settings["num_workers"]), "--seed", str(pre.seed), "--output", str(out),
               "--no-progress"] + (["--data-fraction", repr(run.fraction)] if run.fraction != 1.0 else [])
        # Only what the spec sets: everything else is the method's reference recipe.
        for key in OPTIM_SETTINGS:
            if settings[key] is not None:
                cmd += ["--" + key.replace("_", "-"), str(settings[key])]
        for key, value in pre.options.get(run.method, {}).items():
            cmd += ["-o", f"{key}={value}"]
        jobs.append(Job(f"pretrain/{m}", "pretrain", cmd, done_marker=out / "checkpoint_final.pth",
                        resume_marker=out / "checkpoint_latest.pth", resume_args=["--resume"],
                        after=["preprocess"], method=m, settings_file=out / stamps.RECORD_NAME, outputs=out))
        pretrained_by[m] = f"pretrain/{m}"
    for m in spec.finetuned_pretrained:
        for d in _ids(down.datasets):
            attached = paths.preprocessed / _dataset_glob(paths.preprocessed, d) / f"{plans_name(m)}.json"
            jobs.append(Job(
                f"attach/{m}/{d}", "attach",
                ["nnssl_attach", "-d", d, "--checkpoint", str(checkpoint_path(spec, paths, m)), "--name", m],
                done_marker=attached,
                after=[pretrained_by.get(m, "preprocess")], method=m,  # an existing checkpoint needs no pretraining
                settings_file=stamps.record_beside(attached), outputs=attached,
                keyed_on=[pretrained_by[m]] if m in pretrained_by else [],
            ))
    # A fair baseline has the compared encoder's architecture: one from-scratch run per distinct encoder of the
    # pretrained methods (on the same plans, hence the same patch and batch size), beside the base plans' scratch.
    scratch_methods = [SCRATCH] if SCRATCH in spec.methods else []
    if scratch_methods:
        made_by = {checkpoint_path(spec, paths, n): key for n, key in pretrained_by.items()}
        for tag, ckpt in scratch_encoders(spec, paths, warnings).items():
            m = scratch_method(tag)
            scratch_methods.append(m)
            for d in _ids(down.datasets):
                attached = paths.preprocessed / _dataset_glob(paths.preprocessed, d) / f"{plans_name(m)}.json"
                jobs.append(Job(
                    f"attach/{m}/{d}", "attach",
                    ["nnssl_attach", "-d", d, "--checkpoint", str(ckpt), "--name", m, "--architecture-only"],
                    done_marker=attached, after=[made_by.get(ckpt, "preprocess")], method=m,  # its architecture
                    settings_file=stamps.record_beside(attached), outputs=attached))
    if down.probe:
        jobs += probe_jobs(spec, paths, report_dir, pretrained_by)
    train_env = {"nnUNet_n_proc_DA": "0", "nnUNet_def_n_proc": "1"} if cpu else {}
    if down.iterations_per_epoch:
        train_env["NNSSL_ITERATIONS_PER_EPOCH"] = str(down.iterations_per_epoch)
    if down.val_iterations_per_epoch:
        train_env["NNSSL_VAL_ITERATIONS_PER_EPOCH"] = str(down.val_iterations_per_epoch)
    if not down.mirroring:
        train_env["NNSSL_DISABLE_MIRRORING"] = "1"
    if down.learning_rate is not None:
        train_env["NNSSL_LEARNING_RATE"] = repr(float(down.learning_rate))
    # A fixed split is installed (and its cases checked) before any fold of the dataset trains.
    # The command names the file's hash, so editing the split marks the folds trained on the old one as changed.
    for d, split_file in down.splits.items():
        installed = paths.preprocessed / _dataset_glob(paths.preprocessed, d) / SPLITS_FILE
        jobs.append(Job(f"splits/{d}", "splits", ["nnssl_splits", "-d", d, "--file", split_file, "--sha256",
                                                  file_sha256(split_file)],
                        after=["preprocess"], settings_file=stamps.record_beside(installed)))
    finetuned = spec.finetuned_pretrained + scratch_methods
    for d in _ids(down.datasets):
        for m in sorted(finetuned, key=lambda m: (not is_scratch(m), m != SCRATCH)):
            for shots, draw, fold, protocol in ((s, r, f, p) for s in down.shots
                                                for r in range(down.draws_of(s))
                                                for f in down.folds for p in down.protocols
                                                if down.includes(d, spec.base_method(m), s)):
                    trainer = trainer_name(m, shots, down.epochs, draw, protocol)
                    fold_dir = (paths.results / _dataset_glob(paths.results, d)
                                / model_folder_name(trainer, plans_name(m)) / f"fold_{fold}")
                    cmd = ["nnUNetv2_train", d, CONFIGURATION, str(fold), "-tr", trainer, "-p", plans_name(m),
                           "-device", spec.device]
                    run = f"{d}/{m}/{shots}/{fold}" + (f"/draw{draw}" if draw else "") + _rung(protocol)
                    jobs.append(Job(f"finetune/{run}", "finetune", cmd,
                                    done_marker=fold_dir / "validation" / "summary.json",
                                    resume_marker=fold_dir / "checkpoint_latest.pth", resume_args=["--c"],
                                    env=train_env, method=m, always_resume=True,
                                    after=["preprocess" if m == SCRATCH else f"attach/{m}/{d}"]
                                    + ([f"splits/{d}"] if d in down.splits else []),
                                    settings_file=fold_dir / stamps.RECORD_NAME, outputs=fold_dir,
                                    keyed_on=([] if m == SCRATCH else [f"attach/{m}/{d}"])
                                    + ([f"splits/{d}"] if d in down.splits else [])))
                    if not is_scratch(m) and _encoder_trains(protocol):
                        out = report_dir / "cka" / (f"{d}__{m}__{shots}__fold{fold}" + (f"__draw{draw}" if draw else "")
                                                    + _rung(protocol, "__") + ".json")
                        jobs.append(Job(
                            f"cka/{run}", "cka",
                            ["nnssl_cka", "--pretrained", str(checkpoint_path(spec, paths, m)), "-d", d,
                             "-tr", trainer, "-p", plans_name(m), "-f", str(fold), "--device", spec.device,
                             "--images", str(down.cka_images), "--out", str(out)],
                            done_marker=out, after=[f"finetune/{run}"], method=m,
                            settings_file=stamps.record_beside(out), outputs=out, keyed_on=[f"finetune/{run}"],
                        ))
                        if down.attention:
                            jobs.append(_attention_job(spec, paths, report_dir, d, m, shots, fold, draw, trainer,
                                                       protocol))
    jobs += baseline_jobs(spec, paths, train_env)
    report_cmd = ["nnssl_report", str(paths.results), "--out", str(report_dir), "--cka", str(report_dir / "cka")]
    if spec.reference is not None:  # the CNN comparison's reference is the spec's, never picked from the results
        report_cmd += ["--cnn-reference", spec.reference]
    if any(j.stage == "attention" for j in jobs):
        report_cmd += ["--attention", str(report_dir / "attention")]
    if pretrained_by:  # the Pretraining section: each run's loss curve and verdict
        report_cmd += ["--pretraining", str(paths.nnssl_results / spec.name)]
    if any(j.stage == "probe" for j in jobs):
        report_cmd += ["--probe", str(report_dir / "probe")]
    jobs.append(Job("report", "report", report_cmd, after=[j.key for j in jobs], after_any=True))
    stamps.assign_identities(jobs)
    return jobs


def _rung(protocol: str, separator: str = "/") -> str:
    """The job-key / file-name part of an adaptation protocol ("" for full fine-tuning, whose keys are unchanged)."""
    return "" if protocol == FULL else separator + protocol


def _encoder_trains(protocol: str) -> bool:
    """CKA and attention compare the fine-tuned encoder with the pretrained one: pointless when it stays frozen."""
    p = parse_protocol(protocol)
    return p is None or p.trains_encoder


def baseline_jobs(spec: BenchmarkSpec, paths: Paths, train_env: dict[str, str]) -> list[Job]:
    """The CNN baselines: nnU-Net's own planning and preprocessing (``nnUNetv2_plan_and_preprocess -pl <planner>``,
    reusing the fingerprint the Swin planning extracted), then CNNTrainer folds on the same datasets, regimes, draws
    and folds as the Swin runs (the same splits_final.json and k-shot subsets: nnssl.finetune.baselines)."""
    jobs: list[Job] = []
    down = spec.downstream
    cpu = spec.device == "cpu"
    env = {k: v for k, v in train_env.items() if k != "NNSSL_LEARNING_RATE"}  # the CNN keeps nnU-Net's SGD lr
    datasets = _ids(down.datasets)
    for b in spec.baselines:
        planner, plans, _ = CNN_BASELINES[b]
        markers = [paths.preprocessed / _dataset_glob(paths.preprocessed, d) / f"{plans}.json" for d in datasets]
        jobs.append(Job(
            f"preprocess/{b}", "preprocess",
            ["nnUNetv2_plan_and_preprocess", "-d", *datasets, "-c", CONFIGURATION, "-pl", planner,
             *(["-np", "1", "-npfp", "1"] if cpu else [])],
            done_marker=markers, stamp=paths.preprocessed / f".nnssl_baseline_{b}_{'-'.join(datasets)}",
            after=["preprocess"], method=b))
        for d in datasets:
            for shots, draw, fold in ((s, r, f) for s in down.shots for r in range(down.draws_of(s))
                                      for f in down.folds if down.includes(d, b, s)):
                trainer = trainer_name(b, shots, down.epochs, draw)
                fold_dir = (paths.results / _dataset_glob(paths.results, d) / model_folder_name(trainer, plans)
                            / f"fold_{fold}")
                run = f"{d}/{b}/{shots}/{fold}" + (f"/draw{draw}" if draw else "")
                jobs.append(Job(
                    f"finetune/{run}", "finetune",
                    ["nnUNetv2_train", d, CONFIGURATION, str(fold), "-tr", trainer, "-p", plans, "-device",
                     spec.device],
                    done_marker=fold_dir / "validation" / "summary.json",
                    resume_marker=fold_dir / "checkpoint_latest.pth", resume_args=["--c"], env=env, method=b,
                    always_resume=True, after=[f"preprocess/{b}"] + ([f"splits/{d}"] if d in down.splits else []),
                    settings_file=fold_dir / stamps.RECORD_NAME, outputs=fold_dir,
                    keyed_on=[f"splits/{d}"] if d in down.splits else []))
    return jobs


def _attention_job(spec: BenchmarkSpec, paths: Paths, report_dir: Path, d: str, m: str, shots: str, fold: int,
                   draw: int, trainer: str, protocol: str = FULL) -> Job:
    """nnssl_attention on a pretrained method's fine-tuning fold (after it, like its CKA job)."""
    run = f"{d}/{m}/{shots}/{fold}" + (f"/draw{draw}" if draw else "") + _rung(protocol)
    out = report_dir / "attention" / (f"{d}__{m}__{shots}__fold{fold}" + (f"__draw{draw}" if draw else "")
                                      + _rung(protocol, "__") + ".json")
    return Job(f"attention/{run}", "attention",
               ["nnssl_attention", "--pretrained", str(checkpoint_path(spec, paths, m)), "-d", d, "-tr", trainer,
                "-p", plans_name(m), "-f", str(fold), "--device", spec.device,
                "--images", str(spec.downstream.attention_images), "--out", str(out)],
               done_marker=out, after=[f"finetune/{run}"], method=m,
               settings_file=stamps.record_beside(out), outputs=out, keyed_on=[f"finetune/{run}"])

class ChangedSettingsError(ValueError):
    """Jobs whose outputs were made with other settings; the message names them, the changes and the fix."""


def check_changed(jobs: list[Job], rerun_changed: bool = False) -> list[str]:
    """Refuse (ChangedSettingsError) outputs of other settings unless ``rerun_changed``; returns notes (jobs counted
    as done without a settings record, jobs to be rerun)."""
    changed = [j for j in jobs if j.state() == "changed"]
    notes = []
    unrecorded = [j.key for j in jobs if j.state() == "unrecorded"]
    if unrecorded:
        notes.append(f"{len(unrecorded)} finished job(s) have no settings record (made by an older nnssl) and count as "
                     f"done without a check of their settings: {', '.join(unrecorded[:3])}"
                     f"{' ...' if len(unrecorded) > 3 else ''}")
    if not changed:
        return notes
    listed = "; ".join(f"{j.key} ({', '.join(j.changes())})" for j in changed[:4]) + (
        f"; and {len(changed) - 4} more" if len(changed) > 4 else "")
    if not rerun_changed:
        raise ChangedSettingsError(
            f"{len(changed)} job(s) have outputs made with other settings: {listed}. Pass --rerun-changed to run them "
            "again (their outputs are moved aside to <name>.stale-<time>), or restore the settings they were made "
            "with")
    notes.append(f"rerunning {len(changed)} job(s) whose settings changed: {listed}")
    return notes


def _move_aside(job: Job) -> str | None:
    """--rerun-changed: move a changed job's outputs (and its record) aside so that it starts afresh."""
    target = stamps.resolve(job.outputs) if job.outputs is not None else None
    if target is None or not target.exists():
        return None
    moved = stamps.stale_name(target)
    target.rename(moved)
    record = stamps.resolve(job.settings_file) if job.settings_file is not None else None
    if record is not None and record.exists() and record.parent != moved:
        record.unlink()
    return f"moved the outputs of {job.key} (other settings) aside to {moved}"


#: the environment variables that cap a job's threads when jobs share the cores: OpenMP and MKL (torch reads them
#: at start-up) and nnssl's trainers' own (nnU-Net sets torch to every core on the CPU; nnssl.finetune.concurrency)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NNSSL_NUM_THREADS")


def threads_per_job(parallel: int, cores: int | None = None) -> int:
    """The threads each of ``parallel`` concurrent jobs gets: the cores shared evenly, at least one."""
    return max(1, (cores or os.cpu_count() or 1) // parallel)


def run_jobs(jobs: list[Job], paths: Paths, log_dir: Path, progress: bool = True, keep_going: bool = False,
             rerun_changed: bool = False, parallel: int = 1) -> int:
    """Run the jobs not yet done, up to ``parallel`` at a time; each job's output goes to log_dir/<key>.log. Returns
    the number of failed jobs (a job whose prerequisite failed counts as failed, and is not started).

    A job starts once every job it names in ``after`` has succeeded (or, for an ``after_any`` job such as the report,
    has ended), earlier jobs of the list first, so ``parallel=1`` runs them in order. Concurrent jobs share the cores
    (``threads_per_job``: two jobs with one thread each beat one job with two on small 3D networks, see
    documentation/benchmark.md). After a failure no new job starts unless ``keep_going``; the running ones finish.
    Jobs whose outputs were made with other settings raise ChangedSettingsError before anything runs, unless
    ``rerun_changed`` (then their outputs are moved aside and they run again)."""
    from tqdm.auto import tqdm

    if parallel < 1:
        raise ValueError(f"parallel must be at least 1, got {parallel}")
    for note in check_changed(jobs, rerun_changed):
        print(f"note: {note}", file=sys.stderr)
    log_dir.mkdir(parents=True, exist_ok=True)
    for folder in (paths.raw, paths.preprocessed, paths.results, paths.nnssl_results):
        folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **paths.environment()}
    bin_dir = Path(sys.executable).parent
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    if parallel > 1:
        env.update({name: str(threads_per_job(parallel)) for name in THREAD_VARIABLES})
    known = {j.key for j in jobs}
    outcome: dict[str, bool] = {}  # key -> succeeded (finished jobs count as succeeded)
    pending: list[Job] = []
    for job in jobs:
        if job.state() in ("done", "unrecorded"):
            outcome[job.key] = True
        else:
            pending.append(job)
    bar = tqdm(total=len(jobs), initial=len(outcome), desc="benchmark", unit="job", disable=not progress,
               dynamic_ncols=True)
    running: dict[str, tuple[Job, list[str], subprocess.Popen, object, float, Path]] = {}  # by job key
    failures, stopping = 0, False

    def ready(job: Job) -> bool | None:
        """True: start it; False: wait; None: a prerequisite failed, it cannot run."""
        needed = [k for k in job.after if k in known]
        if job.after_any:
            return all(k in outcome for k in needed)
        if any(outcome.get(k) is False for k in needed):
            return None
        return all(outcome.get(k) for k in needed)

    def start(job: Job) -> None:
        if job.state() == "changed":
            moved = _move_aside(job)
            if moved:
                bar.write(f"note: {moved}")
        command = job.effective_command()
        log_file = log_dir / (job.key.replace("/", "__") + ".log")
        log = log_file.open("w")
        log.write("$ " + " ".join(shlex.quote(c) for c in command) + "\n")
        log.flush()
        proc = subprocess.Popen(command, env={**env, **job.env}, stdout=log, stderr=subprocess.STDOUT)
        running[job.key] = (job, command, proc, log, time.perf_counter(), log_file)
        bar.set_postfix_str(", ".join(running))

    def finish(job: Job, rc: int) -> None:
        nonlocal failures, stopping
        _, command, proc, log, started, log_file = running.pop(job.key)
        log.close()
        if rc == 0:
            if job.stamp is not None:
                job.stamp.write_text(" ".join(command) + "\n")
            stamps.write_record(job)
        else:
            failures += 1
            tail = log_file.read_text().splitlines()[-15:]
            message = f"job {job.key} failed (exit {rc}) after {time.perf_counter() - started:.0f} s; log: {log_file}\n"
            message += "\n".join("    " + line for line in tail)
            bar.write(message)
            stopping = stopping or not keep_going
        outcome[job.key] = rc == 0
        bar.update(1)
        bar.set_postfix_str(", ".join(running))

    try:
        while pending or running:
            if not stopping:
                for job in list(pending):
                    if len(running) >= parallel:
                        break
                    verdict = ready(job)
                    if verdict is None:  # never started, so never half-written: reported and counted
                        pending.remove(job)
                        failed = [k for k in job.after if outcome.get(k) is False]
                        bar.write(f"job {job.key} not started: it needs {', '.join(failed)}, which failed")
                        failures += 1
                        outcome[job.key] = False
                        bar.update(1)
                    elif verdict:
                        pending.remove(job)
                        start(job)
            if not running:
                if pending and not stopping:  # only a cycle in ``after`` gets here: say so rather than skip in silence
                    bar.write("jobs not started (their prerequisites never ran): " + ", ".join(j.key for j in pending))
                    failures += len(pending)
                break  # stopping after a failure, or nothing left to start
            while True:  # wait for one job to end
                ended = [(job, proc.poll()) for job, _, proc, *_rest in running.values()]
                ended = [(job, rc) for job, rc in ended if rc is not None]
                if ended:
                    for job, rc in ended:
                        finish(job, rc)
                    break
                time.sleep(0.2)
    finally:
        for _, _, proc, log, *_rest in list(running.values()):  # interrupted: the jobs resume on the next run
            proc.terminate()
            proc.wait()
            log.close()
        bar.close()
    return failures
