"""nnssl_probe: frozen-feature probes (k-NN and linear) of a pretrained encoder against a random one of the same
architecture, on the tokens of a labelled target dataset."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nnssl.cli.common import fail
from nnssl.nnunet.naming import CONFIGURATION, SWIN_PLANS

EPILOG = """example:
  nnssl_probe --pretrained $nnssl_results/study/dino/checkpoint_final.pth -d 901 \\
      --out $nnUNet_results/probe/901__dino.json
Tokens of one encoder stage (default 2, stride 8) are labelled with the majority class of their voxels; the probes
train on the fold's training cases and are scored on the others. The JSON (schema in documentation/report.md) is
picked up by nnssl_report from <results>/probe/ or --probe.
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of nnssl_probe (its ``--help``)."""
    p = argparse.ArgumentParser(prog="nnssl_probe", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrained", required=True, help="nnssl checkpoint (nnssl_pretrain or nnssl_convert)")
    p.add_argument("-d", "--dataset", required=True, help="labelled target dataset id or name (preprocessed)")
    p.add_argument("-p", "--plans", default=SWIN_PLANS, help="plans of the preprocessed data (default: %(default)s)")
    p.add_argument("-c", "--configuration", default=CONFIGURATION, help="(default: %(default)s)")
    p.add_argument("-f", "--fold", default="0",
                   help="fold of splits_final.json whose training cases train the probes (default: %(default)s; "
                        "without the file: the first 80%% of the cases)")
    p.add_argument("--stage", type=int, default=2, help="encoder output 0-4 whose tokens are probed; stride 2^(S+1) "
                                                        "(default: %(default)s, stride 8)")
    p.add_argument("--cases", type=int, default=40, help="at most this many cases, train and test together "
                                                         "(default: %(default)s; 0: all)")
    p.add_argument("--crops-per-case", type=int, default=4, help="(default: %(default)s)")
    p.add_argument("--crop", type=int, nargs="+", default=None,
                   help="crop size, one or three values divisible by 32 (default: the checkpoint's pretraining crop, "
                        "else 96)")
    p.add_argument("--max-tokens", type=int, default=20000,
                   help="tokens per split, class-balanced where possible (default: %(default)s)")
    p.add_argument("--k", type=int, default=10, help="neighbours of the k-NN probe (default: %(default)s)")
    p.add_argument("--ridge", type=float, default=1e-2, help="ridge penalty of the linear probe (default: %(default)s)")
    p.add_argument("--bootstrap", type=int, default=2000, help="resamples of the test cases (default: %(default)s)")
    p.add_argument("--level", type=float, default=0.95, help="confidence level (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of cases, crops, tokens and bootstrap (default: %(default)s)")
    p.add_argument("--random-seed", type=int, default=None,
                   help="seed of the random encoder (default: the checkpoint's pretraining seed, i.e. the "
                        "initialisation pretraining started from)")
    p.add_argument("--batch", type=int, default=4, help="crops per forward pass (default: %(default)s)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="(default: %(default)s)")
    p.add_argument("--method", help="method name in the report (default: the checkpoint's method)")
    p.add_argument("--out", default=None,
                   help="output JSON (default: $nnUNet_results/probe/<dataset>__<method>__stage<S>.json)")
    return p


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def main(argv: list[str] | None = None) -> int:
    """Run nnssl_probe on ``argv`` (default ``sys.argv[1:]``): k-NN and linear probes of a pretrained and a random
    encoder, written as JSON; 0 on success, 2 after one ``error:`` line."""
    args = build_parser().parse_args(argv)
    if args.crop is not None and len(args.crop) not in (1, 3):
        return fail(f"--crop takes one or three sizes, got {len(args.crop)}: e.g. --crop 96 or --crop 96 96 64")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            return fail("--device cuda was asked for but no CUDA device is visible: use --device cpu")
    try:
        from nnssl.analysis.probe import write_probe_json
        from nnssl.finetune.probe import default_output, run_probe

        result = run_probe(args.pretrained, args.dataset, args.plans, args.configuration, args.fold, args.stage,
                           args.cases or None, args.crops_per_case, args.crop, args.max_tokens, args.k, args.ridge,
                           args.bootstrap, args.level, args.seed, args.random_seed, args.batch, args.device,
                           args.method)
        out = Path(args.out) if args.out else default_output(result["dataset"], result["method"], args.stage)
    except (ValueError, FileNotFoundError, KeyError) as e:
        return fail(str(e))
    path = write_probe_json(out, **result)
    t = result["tokens"]
    print(f"{result['dataset']}, {result['method']}, stage {result['stage']} (stride {result['stride']}): "
          f"{t['train']} train / {t['test']} test tokens of {len(result['extra']['train_cases'])} / "
          f"{len(result['extra']['test_cases'])} cases")
    for probe, entry in result["probes"].items():
        parts = []
        for metric in ("balanced_accuracy", "macro_f1"):
            d = entry["difference"][metric]
            ci = "" if d["low"] is None else f" [{d['low']:+.3f}, {d['high']:+.3f}]"
            diff = "n/a" if d["value"] is None else f"{d['value']:+.3f}"
            parts.append(f"{metric} {_num(entry['pretrained'][metric]['value'])} vs random "
                         f"{_num(entry['random'][metric]['value'])} (diff {diff}{ci})")
        print(f"  {probe:6s}: " + "; ".join(parts))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
