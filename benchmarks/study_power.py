"""The power of a study design, from a pilot's spread: what each spec's headline can detect before it is run.

    python benchmarks/study_power.py --pilot nnssl_demo/nnUNet_results benchmarks/study_cpu.yaml benchmarks/study_gpu.yaml

The pilot is any finished grid (the demo is the shipped one): its headline comparisons (every pretrained method
against scratch, per dataset and regime) give the paired per-case Dice differences, pooled into one SD
(``nnssl.analysis.power.pilot_sd``). For each spec the script counts the comparisons its headline will make (Holm's
family: pretrained methods x datasets x regimes, ``downstream.only`` applied) and the validation cases each pairs (its
fixed split, else nnU-Net's 5-fold split of its phantom cases), and prints a Markdown table: the smallest Dice
difference detected with 80% power after the correction, and the validation cases a 0.05 difference would need; for
specs with k-shot draws or all-cases repeats (``downstream.repeats``), what their draws detect with the draws as the
unit at ``--draw-sd`` and the draws 0.05 would need (``nnssl.analysis.power.draw_detectable_difference``).
``--sd`` replaces the pilot by a stated spread. documentation/results.md quotes its output.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

from nnssl.analysis.power import (cases_needed, detectable_difference, draw_detectable_difference, draws_needed,
                                  pilot_sd, wilcoxon_floor_cases)


def pilot_spread(results: Path) -> tuple[float, int, int]:
    """(pooled SD, paired cases, comparisons) of the headline comparisons of a finished grid's results folder."""
    from nnssl.analysis.report.context import ReportContext
    from nnssl.analysis.report.headline import paired_differences
    from nnssl.analysis.results import load_results

    tree = load_results(results, read_logs=False)
    with tempfile.TemporaryDirectory() as tmp:
        differences = paired_differences(ReportContext(tree, Path(tmp)))
    sd, cases = pilot_sd(differences)
    return sd, cases, len(differences)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("specs", nargs="+", help="grid specs (YAML or JSON) to size")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--pilot", type=Path, help="nnUNet_results folder of a finished pilot grid (e.g. the demo's)")
    src.add_argument("--sd", type=float, help="a stated SD of paired per-case Dice differences instead of a pilot")
    p.add_argument("--target", type=float, default=0.05, help="the Dice difference to detect (default: %(default)s)")
    p.add_argument("--power", type=float, default=0.8, help="(default: %(default)s)")
    p.add_argument("--alpha", type=float, default=0.05, help="family-wise level (default: %(default)s)")
    p.add_argument("--draw-sd", type=float, default=0.02,
                   help="SD across k-shot draws of the per-draw mean paired difference, for the rows with draws, "
                        "where the draws are the unit (default: %(default)s; the CPU study's rerun measured 0.071)")
    args = p.parse_args(argv)
    for name in ("sd", "target", "draw_sd"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            print(f"error: --{name.replace('_', '-')} must be a finite number > 0, got {value}", file=sys.stderr)
            return 2
    if not (0 < args.power < 1 and 0 < args.alpha < 1):
        print(f"error: --power ({args.power}) and --alpha ({args.alpha}) must lie strictly between 0 and 1",
              file=sys.stderr)
        return 2
    from nnssl.benchmark.budget import headline_comparisons, validation_cases
    from nnssl.benchmark.spec import SpecError, load_spec

    if args.pilot is not None:
        if not args.pilot.is_dir():
            print(f"error: --pilot {args.pilot} is not a folder; pass a finished grid's nnUNet_results folder",
                  file=sys.stderr)
            return 2
        try:
            sd, cases, n_comp = pilot_spread(args.pilot)
        except ValueError as e:
            print(f"error: no paired per-case differences in {args.pilot} ({e}); run the pilot grid to the end "
                  "(scratch and at least one pretrained method on the same cases)", file=sys.stderr)
            return 2
        print(f"pilot: {args.pilot}: pooled SD {sd:.3f} of the paired differences over {n_comp} comparison(s), "
              f"{cases} paired cases\n")
    else:
        sd = args.sd
        print(f"stated SD of the paired differences: {sd:.3f}\n")
    print("| spec | comparisons | validation cases per dataset | Wilcoxon floor | detectable difference | "
          f"cases for {args.target} | draws (k-shot, repeats): detectable at draw SD {args.draw_sd:g} | "
          f"draws for {args.target} |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for path in args.specs:
        try:
            spec = load_spec(path)
        except (SpecError, OSError) as e:
            print(f"error: {path}: {e}", file=sys.stderr)
            return 2
        comps = headline_comparisons(spec)
        m = max(1, len(comps))
        per = {d: validation_cases(spec, d) for d in spec.downstream.datasets}
        known = [n for n in per.values() if n is not None]
        n = min(known) if known else None
        detect = (detectable_difference(sd, n, m, args.alpha, args.power) if n else float("nan"))
        need = cases_needed(args.target, sd, m, args.alpha, args.power)
        shown = ", ".join(f"{d}: {v if v is not None else '?'}" for d, v in per.items())
        # rows with runs that repeat the validation cases: k-shot draws, and all-cases repeats
        repeated = [spec.downstream.draws_of(s) for s in spec.downstream.shots if spec.downstream.draws_of(s) > 1]
        r = min(repeated, default=1)
        has_draws = any(s != "all" for s in spec.downstream.shots) or bool(repeated)
        draws = (f"{draw_detectable_difference(args.draw_sd, r, m, args.alpha, args.power):.3f} with {r} draws"
                 if repeated else "-")
        more = str(draws_needed(args.target, args.draw_sd, m, args.alpha, args.power)) if has_draws else "-"
        print(f"| {spec.name} | {len(comps)} | {shown} | {wilcoxon_floor_cases(m, args.alpha)} | "
              f"{detect:.3f} | {need} | {draws} | {more} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
