"""nnssl_cka: feature reuse of a fine-tuned encoder, as CKA per stage against its pretrained start."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nnssl.cli.common import fail

EPILOG = """example:
  nnssl_cka --pretrained $nnssl_results/smit__base__D900/checkpoint_final.pth -d 901 \\
      -tr SwinSSLTrainer_5shot -p nnUNetSwinPlans_smit -f 0 --out $nnUNet_results/cka/901__smit__5__fold0.json
The JSON (schema in documentation/report.md) is picked up by nnssl_report from <results>/cka/ or --cka.
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of nnssl_cka (its ``--help``)."""
    p = argparse.ArgumentParser(prog="nnssl_cka", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrained", required=True, help="the nnssl pretraining checkpoint the fine-tuning started from")
    p.add_argument("-d", "--dataset", required=True, help="target dataset id or name (its preprocessed images are used)")
    p.add_argument("-tr", "--trainer", required=True, help="trainer of the fine-tuning run, e.g. SwinSSLTrainer_5shot")
    p.add_argument("-p", "--plans", required=True, help="plans of the fine-tuning run, e.g. nnUNetSwinPlans_smit")
    p.add_argument("-c", "--configuration", default="3d_fullres", help="(default: %(default)s)")
    p.add_argument("-f", "--fold", default="0", help="fold of the fine-tuning run (default: %(default)s)")
    p.add_argument("--images", type=int, default=16, help="number of crops of the fold's validation cases (default: %(default)s)")
    p.add_argument("--batch", type=int, default=4, help="crops per minibatch, >= 4 (default: %(default)s)")
    p.add_argument("--pooling", choices=["flatten", "grid", "mean"], default="flatten",
                   help="how a stage's feature map becomes one example per image (default: %(default)s; see documentation/report.md)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the crops (default: %(default)s)")
    p.add_argument("--method", help="method name in the report (default: from the plans name)")
    p.add_argument("--out", required=True, help="output JSON file")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run nnssl_cka on ``argv`` (default ``sys.argv[1:]``): CKA per stage between a fine-tuned encoder and its
    pretrained start, written as JSON; 0 on success, 2 after one ``error:`` line."""
    args = build_parser().parse_args(argv)
    try:
        from nnssl.analysis.cka import write_cka_json
        from nnssl.finetune.feature_reuse import STAGES, feature_reuse_for_fold
        from nnssl.nnunet.naming import method_of_plans, parse_trainer_name

        trainer = parse_trainer_name(args.trainer)
        method = args.method or method_of_plans(args.plans)

        result, meta = feature_reuse_for_fold(args.pretrained, args.dataset, args.trainer, args.plans, args.fold,
                                              args.configuration, args.images, args.batch, args.device, args.seed,
                                              args.pooling)
    except (ValueError, FileNotFoundError, KeyError) as e:
        return fail(str(e))
    path = write_cka_json(Path(args.out), dataset=meta["dataset_name"], method=method, shots=trainer.shots_label,
                          fold=args.fold, matrices={"linear": result.linear, "unbiased": result.unbiased},
                          stages_a=STAGES, stages_b=STAGES, n_examples=result.n_images, pooling=args.pooling,
                          extra={**meta, "draw": trainer.draw, "protocol": trainer.protocol})
    diag = ", ".join(f"{s}={v:.2f}" for s, v in zip(STAGES, result.linear.diagonal()))
    print(f"linear CKA pretrained vs fine-tuned per stage: {diag}")
    print(f"wrote {path}")
    return 0


def _method_of(plans: str) -> str:
    """The method an nnssl plans identifier names (the identifier itself for other plans)."""
    from nnssl.nnunet.naming import method_of_plans

    try:
        return method_of_plans(plans)
    except ValueError:
        return plans


if __name__ == "__main__":
    sys.exit(main())
