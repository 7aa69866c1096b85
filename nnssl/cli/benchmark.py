"""nnssl_benchmark: run the grid of methods x downstream tasks x shot regimes x folds, then write the report."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from nnssl.cli.common import fail

EPILOG = """examples:
  nnssl_benchmark --demo                         the demo on generated phantoms (2 CPU cores, about 20 minutes)
  nnssl_benchmark --demo --methods all           the demo with all ten methods
  nnssl_benchmark study.yaml --dry-run           print every command of the grid
  nnssl_benchmark study.yaml                     run it here (finished jobs are skipped, interrupted ones resumed)
  nnssl_benchmark study.yaml -j 4                the same, four jobs at a time (each with a quarter of the cores)
  nnssl_benchmark study.yaml --rerun-changed     after editing settings: redo the jobs made with the old ones
  nnssl_benchmark study.yaml --export-jobs jobs/ write SLURM jobs (per-method pretrain -> attach -> fine-tune) + submit.sh
The spec format is described in documentation/benchmark.md. Without --workdir the grid uses nnU-Net's folders from
nnUNet_raw, nnUNet_preprocessed and nnUNet_results (and nnssl_results for pretraining runs).
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of nnssl_benchmark (its ``--help``)."""
    p = argparse.ArgumentParser(prog="nnssl_benchmark", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", nargs="?", help="grid spec (.json, .yaml or .yml)")
    p.add_argument("--demo", action="store_true", help="run the built-in demo grid on phantoms (no spec needed)")
    p.add_argument("--methods", nargs="+", help="restrict the methods of the spec ('all' = every method + scratch)")
    p.add_argument("--workdir", help="put nnU-Net's raw/preprocessed/results folders here instead of the env vars "
                                     "(the demo defaults to ./nnssl_demo)")
    p.add_argument("--report", help="report folder (default: <results>/nnssl_report/<spec name>)")
    p.add_argument("--dry-run", action="store_true", help="print the commands (marking finished ones) and exit")
    p.add_argument("--export-jobs", metavar="DIR", help="write the grid as SLURM job scripts with per-job dependencies "
                                                         "(resources: the spec's slurm section) and exit")
    p.add_argument("-j", "--jobs", type=int, default=None, metavar="N",
                   help="run up to N independent jobs at once, the cores shared evenly between them (each gets "
                        "cores // N threads; a job starts when the jobs it needs have succeeded). On a CPU two "
                        "one-thread jobs outrun one two-thread job (documentation/benchmark.md). Default: 1; with --demo the "
                        "machine's cores, at most 2")
    p.add_argument("--keep-going", action="store_true",
                   help="continue with the other jobs after a failure (the jobs that need the failed one are skipped)")
    p.add_argument("--rerun-changed", action="store_true",
                   help="run again the jobs whose outputs were made with other settings (after a spec edit), moving "
                        "their outputs aside to <name>.stale-<time>; without it such a grid is refused")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def default_jobs(demo: bool) -> int:
    """Jobs at once when ``-j`` is not given: 1 for a spec (the user sizes a grid to the machine), and for the demo
    the machine's cores, at most 2 -- two one-thread jobs brought the demo from 29 to 20 minutes on 2 cores
    (documentation/results.md, section 2), and more would share the phantoms' small grid too thinly."""
    return min(2, os.cpu_count() or 1) if demo else 1


def main(argv: list[str] | None = None) -> int:
    """Run nnssl_benchmark on ``argv`` (default ``sys.argv[1:]``): run (or resume, or export for SLURM) the grid of a
    spec and write its report; 0 when every job succeeded, 1 when some failed (rerun to resume), 2 after one ``error:``
    line on bad input."""
    args = build_parser().parse_args(argv)
    from nnssl.benchmark.runner import ChangedSettingsError, Paths, build_jobs, run_jobs
    from nnssl.benchmark.slurm import export_jobs
    from nnssl.benchmark.spec import demo_spec, load_spec
    from nnssl.nnunet.naming import SCRATCH
    from nnssl.tasks import method_names

    try:
        if args.demo == bool(args.spec):
            return fail("give either a SPEC file or --demo")
        methods = None
        if args.methods:
            methods = [SCRATCH, *method_names()] if args.methods == ["all"] else args.methods
        spec = demo_spec(methods) if args.demo else load_spec(args.spec)
        if methods and not args.demo:
            spec.methods = methods
            spec.validate()
        if args.jobs is not None and args.jobs < 1:
            return fail(f"--jobs must be at least 1, got {args.jobs}")
        workdir = args.workdir or ("nnssl_demo" if args.demo else None)
        paths = Paths.under(Path(workdir)) if workdir else Paths.from_environment()
        report_dir = Path(args.report) if args.report else paths.results / "nnssl_report" / spec.name
        notes: list[str] = []
        jobs = build_jobs(spec, paths, report_dir, notes)
    except (ValueError, FileNotFoundError) as e:
        return fail(str(e))
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)

    if args.dry_run:
        for job in jobs:
            state = job.state()
            mark = {"todo": "todo ", "done": "done ", "unrecorded": "done*", "changed": "CHANGED"}[state]
            detail = f"   # made with other settings: {', '.join(job.changes())}" if state == "changed" else ""
            print(f"{mark} [{job.stage}] {job.shell()}{detail}")
        if any(j.state() == "unrecorded" for j in jobs):
            print("(done*: finished without a settings record, by an older nnssl: counted as done)")
        return 0
    if args.export_jobs:
        try:
            written = export_jobs(jobs, paths, Path(args.export_jobs), spec)
        except OSError as e:
            return fail(f"cannot write the jobs to {args.export_jobs}: {e}")
        print(f"wrote {len(written)} files to {args.export_jobs}; submit with: bash {Path(args.export_jobs) / 'submit.sh'}")
        return 0
    start = time.perf_counter()
    try:
        failures = run_jobs(jobs, paths, report_dir / "logs", progress=not args.no_progress,
                            keep_going=args.keep_going, rerun_changed=args.rerun_changed,
                            parallel=args.jobs or default_jobs(args.demo))
    except ChangedSettingsError as e:
        return fail(str(e))
    minutes = (time.perf_counter() - start) / 60
    if failures:
        print(f"{failures} job(s) failed after {minutes:.1f} min; fix the cause and rerun the same command to resume",
              file=sys.stderr)
        return 1
    print(f"benchmark {spec.name} finished in {minutes:.1f} min")
    print(f"report: {report_dir / 'report.html'} (Markdown: {report_dir / 'report.md'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
