#!/usr/bin/env python
"""Where a real pretraining step's time goes: the step anatomy of short ``nnssl_pretrain`` runs, one per method.

For every method asked for, it runs ``nnssl_pretrain`` on the given preprocessed datasets (views built in the
DataLoader workers, as in every run with ``--num-workers`` > 0), reads the run's ``log.jsonl`` (``ms/data``,
``ms/views``, ``ms/h2d``, ``ms/forward``, ``ms/backward``, ``ms/optimizer`` and ``ms/step`` per step;
nnssl.training.anatomy) and prints, per method, the mean milliseconds of each part over the steps after the first
``--skip`` (worker start-up and allocator warm-up), and the main-process overhead: the share of the step that is not
forward, backward or optimiser (data wait, views built in the main process, host-to-device copies and the loop's own
bookkeeping). The scaling issue's target is an overhead of at most 5% for every method on the CPU (tiny encoder,
64^3, 2 workers).

Example (phantoms written and preprocessed first, see documentation/pretraining.md):
    python benchmarks/step_anatomy.py -d 900 --encoder tiny --crop 64 --num-workers 2 --steps 30 --skip 10 \
        -o smit:view_size=32 -o cpc:stride=16
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from nnssl.training.anatomy import PARTS, PREFIX  # noqa: E402

MODEL_PARTS = ("forward", "backward", "optimizer")


def run_method(method: str, args: argparse.Namespace, out: Path) -> list[dict]:
    """Run ``nnssl_pretrain`` for ``method`` into ``out`` and return its log.jsonl step records (empty on failure,
    with the command's last lines printed)."""
    cmd = [sys.executable, "-m", "nnssl.cli.pretrain", "-m", method, "-d", *args.datasets, "--encoder", args.encoder,
           "--crop", str(args.crop), "--batch-size", str(args.batch_size), "--steps", str(args.steps),
           "--num-workers", str(args.num_workers), "--log-every", str(args.log_every), "--device", "cpu",
           "--checkpoint-every", str(args.steps), "--output", str(out), "--no-progress"]
    for item in args.option:
        name, _, setting = item.partition(":")
        if name == method:
            cmd += ["-o", setting]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
        print(f"# {method}: nnssl_pretrain exited with {proc.returncode}:\n{tail}", file=sys.stderr)
        return []
    records = []
    for line in (out / "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if PREFIX + "step" in record:
            records.append(record)
    return records


def summarise(records: list[dict], skip: int) -> dict[str, float] | None:
    """Mean ms per part over the records after the first ``skip`` steps, and the overhead share (None when none)."""
    kept = [r for r in records if int(r.get("step", 0)) >= skip]
    if not kept:
        return None
    mean = {p: sum(float(r.get(PREFIX + p, 0.0)) for r in kept) / len(kept) for p in (*PARTS, "step")}
    model = sum(mean[p] for p in MODEL_PARTS)
    mean["overhead"] = (mean["step"] - model) / mean["step"] if mean["step"] > 0 else float("nan")
    mean["steps"] = float(len(kept))
    return mean


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's options (its ``--help``)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--datasets", nargs="+", required=True, help="preprocessed dataset ids (nnUNet_preprocessed)")
    p.add_argument("--methods", default="all", help="comma-separated methods, or 'all' (the registry)")
    p.add_argument("--encoder", default="tiny", help="encoder preset (default: %(default)s)")
    p.add_argument("--crop", type=int, default=64, help="cubic crop edge (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=2, help="crops per step (default: %(default)s)")
    p.add_argument("--steps", type=int, default=40, help="steps per run (default: %(default)s)")
    p.add_argument("--skip", type=int, default=10, help="first steps left out of the means (default: %(default)s)")
    p.add_argument("--num-workers", type=int, default=2, help="DataLoader workers (default: %(default)s)")
    p.add_argument("--log-every", type=int, default=10, help="nnssl_pretrain --log-every (default: %(default)s)")
    p.add_argument("-o", "--option", action="append", default=[], metavar="METHOD:KEY=VALUE",
                   help="a method option for one method's run (repeatable), e.g. smit:view_size=32 for SMIT at 64^3")
    p.add_argument("--workdir", default=None, help="where the runs go (default: a temporary folder, removed)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the methods one after another and print the table; 2 after one ``error:`` line on bad options."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from nnssl.tasks import method_names

    methods = method_names() if args.methods == "all" else [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(method_names()))
    if unknown:
        parser.exit(2, f"error: unknown method(s) {', '.join(unknown)}; known: {', '.join(method_names())}\n")
    bad = [o for o in args.option if ":" not in o or "=" not in o.partition(":")[2]]
    if bad:
        parser.exit(2, f"error: -o {bad[0]!r} is not METHOD:KEY=VALUE (e.g. smit:view_size=32)\n")
    if not 0 <= args.skip < args.steps:
        parser.exit(2, f"error: --skip {args.skip} must lie in [0, --steps) = [0, {args.steps})\n")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.workdir or tmp)
        print(f"# step anatomy on CPU: {args.encoder} {args.crop}^3, batch {args.batch_size}, {args.num_workers} "
              f"workers, mean over steps {args.skip}..{args.steps - 1}; ms per step")
        print("| method | ms/step | data | views | h2d | forward | backward | optimizer | not fwd/bwd/opt |")
        print("|---|---|---|---|---|---|---|---|---|")
        for method in methods:
            s = summarise(run_method(method, args, root / method), args.skip)
            if s is None:
                print(f"| {method} | failed | | | | | | | |")
                continue
            print(f"| {method} | {s['step']:.0f} | " + " | ".join(f"{s[p]:.1f}" for p in PARTS)
                  + f" | {100 * s['overhead']:.1f}% |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
