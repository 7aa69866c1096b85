"""nnssl_report: turn an nnU-Net results folder into the benchmark report (Markdown + self-contained HTML + figures)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from nnssl.cli.common import fail

DESCRIPTION = """\
Build the benchmark report from nnU-Net's own outputs: per-case Dice from each fold's validation/summary.json and the
per-epoch training log in checkpoint_final.pth. Writes report.md, report.html (figures embedded), figures/*.png and
dice_per_case.csv. Runs must follow the naming Swin(Scratch|SSL)Trainer[_<protocol>][_<k>shot][_draw<r>][_<E>epochs]
__nnUNetSwinPlans[_<method>]__<configuration> (CNN baselines: CNNTrainer[...]__nnUNetPlans__<configuration>); other
folders are listed as ignored. CKA results (nnssl_cka) are read from RESULTS/cka/*.json,
attention results (nnssl_attention) from RESULTS/attention/*.json, probe results (nnssl_probe) from RESULTS/probe/*.json;
--pretraining adds each pretraining run's loss curve and verdict.
See documentation/report.md for how to read it."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of nnssl_report (its ``--help``)."""
    p = argparse.ArgumentParser(prog="nnssl_report", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="?", default=os.environ.get("nnUNet_results"),
                   help="nnU-Net results folder (or one DatasetXXX_Name folder inside it); default: $nnUNet_results")
    p.add_argument("--out", default=None, help="output folder for the report (default: RESULTS/nnssl_report)")
    p.add_argument("--baseline", default="scratch",
                   help="method every other method is tested against (default: scratch, the from-scratch Swin runs)")
    p.add_argument("--cnn-reference", default="nnunet", metavar="BASELINE",
                   help="the CNN baseline every Swin run is tested against in the report's CNN family (nnunet, "
                        "resenc_m, resenc_l, resenc_xl; default: nnunet); fix it before looking at the results")
    p.add_argument("--bootstrap", type=int, default=10000,
                   help="bootstrap resamples for the confidence intervals over cases (default: 10000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling (default: 0)")
    p.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals (default: 0.95)")
    p.add_argument("--raw", default=None,
                   help="nnU-Net raw folder to read dataset.json (labels, modality, groups) from; default: $nnUNet_raw")
    p.add_argument("--preprocessed", default=None,
                   help="nnU-Net preprocessed folder, second place to look for dataset.json; "
                        "default: $nnUNet_preprocessed")
    p.add_argument("--groups", default=None,
                   help="JSON file overriding the structure groups: {\"Dataset901_Name\" (or \"901\"): "
                        "{\"small\": [label names], \"large\": [...], ...}}; default: dataset.json's "
                        "nnssl_structure_groups")
    p.add_argument("--cka", default=None,
                   help="extra folder with nnssl_cka result files (*.json), read in addition to RESULTS/cka")
    p.add_argument("--attention", default=None,
                   help="extra folder with nnssl_attention result files (*.json), read in addition to RESULTS/attention")
    p.add_argument("--pretraining", action="append", default=[], metavar="DIR",
                   help="a folder of nnssl_pretrain run folders (e.g. $nnssl_results/<spec name>) or one run folder: "
                        "the Pretraining section shows their loss curves (repeatable)")
    p.add_argument("--probe", default=None, metavar="DIR",
                   help="extra folder with nnssl_probe result files (*.json), read in addition to RESULTS/probe")
    p.add_argument("--no-logs", action="store_true",
                   help="do not load checkpoints (faster, no torch needed): the convergence section stays empty")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run nnssl_report on ``argv`` (default ``sys.argv[1:]``): read the results tree and write report.md, report.html
    and the figures; 0 on success, 2 after one ``error:`` line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if not args.results:
            raise ValueError("no RESULTS folder given and $nnUNet_results is not set")
        from nnssl.nnunet.naming import CNN_BASELINES

        if args.cnn_reference not in CNN_BASELINES:
            raise ValueError(f"--cnn-reference {args.cnn_reference!r} is not a CNN baseline; choose one of "
                             f"{', '.join(CNN_BASELINES)}")
        if args.bootstrap < 1:
            raise ValueError(f"--bootstrap must be >= 1, got {args.bootstrap}")
        if not 0.0 < args.level < 1.0:
            raise ValueError(f"--level must be in (0, 1), got {args.level}")
        results = Path(args.results)
        if not results.is_dir():
            raise FileNotFoundError(f"results folder {results} does not exist")
        groups = None
        if args.groups:
            gp = Path(args.groups)
            if not gp.is_file():
                raise FileNotFoundError(f"--groups file {gp} does not exist")
            try:
                groups = json.loads(gp.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise ValueError(f"--groups file {gp} is not valid JSON: {e}") from e
            if not isinstance(groups, dict) or not all(isinstance(v, dict) for v in groups.values()):
                raise ValueError("--groups must map a dataset name or id to {group: [label names]}")
        if args.cka and not Path(args.cka).is_dir():
            raise FileNotFoundError(f"--cka folder {args.cka} does not exist")
        if args.attention and not Path(args.attention).is_dir():
            raise FileNotFoundError(f"--attention folder {args.attention} does not exist: run nnssl_attention first "
                                    "or leave the option out")
        for folder in args.pretraining:
            # a missing folder is shown as a note (the grid's report runs whatever finished); a file is a mistake
            if Path(folder).exists() and not Path(folder).is_dir():
                raise ValueError(f"--pretraining {folder} is a file: pass the run folder (holding config.json and "
                                 "log.jsonl) or the folder of run folders")
        if args.probe and Path(args.probe).exists() and not Path(args.probe).is_dir():
            raise ValueError(f"--probe {args.probe} is a file: pass the folder holding the nnssl_probe *.json files")
        out = Path(args.out) if args.out else results / "nnssl_report"

        # imported here so that --help stays fast
        from nnssl.analysis.report import ReportOptions, build_report, find_cka_files, find_probe_files
        from nnssl.analysis.results import load_results

        tree = load_results(results, raw=args.raw, preprocessed=args.preprocessed, groups_override=groups,
                            read_logs=not args.no_logs, skip=[out], progress=True)
        probe_files = find_probe_files(results / "probe", Path(args.probe) if args.probe else None)
        pretraining = [Path(p) for p in args.pretraining if Path(p).is_dir()]
        if not tree.folds and not probe_files and not pretraining:
            # a report of pretraining runs or probes alone is useful before any fine-tuning; of nothing, it is not
            for rel, why in tree.ignored:
                print(f"  ignored {rel}: {why}")
            ignored = f" ({len(tree.ignored)} folder(s) ignored, listed above)" if tree.ignored else ""
            raise ValueError(
                f"no finished fine-tuning runs in {results}{ignored}: "
                "the report needs DatasetXXX_Name/<Trainer>__<Plans>__3d_fullres/fold_N/validation/summary.json. "
                "Fine-tune first (nnUNetv2_train ... -tr SwinSSLTrainer), point at nnU-Net's results folder, or pass "
                "--pretraining for a report of pretraining runs alone")
        cka_files = find_cka_files(results / "cka", Path(args.cka) if args.cka else None)
        opts = ReportOptions(baseline=args.baseline, n_boot=args.bootstrap, seed=args.seed, level=args.level,
                             cnn_reference=args.cnn_reference)
        attention_files = find_cka_files(results / "attention", Path(args.attention) if args.attention else None)
        report, paths = build_report(tree, out, opts, cka_files, attention_files, [Path(p) for p in args.pretraining],
                                     probe_files)
    except (ValueError, FileNotFoundError) as e:
        return fail(str(e))
    print(f"{len(tree.folds)} fold(s) in {len(tree.dataset_names())} dataset(s); {len(tree.ignored)} folder(s) ignored")
    for rel, why in tree.ignored:
        print(f"  ignored {rel}: {why}")
    if args.probe and not Path(args.probe).is_dir():
        print(f"warning: --probe folder {args.probe} does not exist (no probe finished, or a wrong path)", file=sys.stderr)
    for w in report.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"report: {paths['html']}")
    print(f"        {paths['markdown']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
