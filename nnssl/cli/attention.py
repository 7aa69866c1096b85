"""nnssl_attention: where the pretrained and the fine-tuned encoder attend (mean attention distance per stage, block
and head; attention mass inside the query's organ), on held-out target images."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nnssl.cli.common import fail

EPILOG = """example:
  nnssl_attention --pretrained $nnssl_results/smit__base__D900/checkpoint_final.pth -d 901 \\
      -tr SwinSSLTrainer_5shot -p nnUNetSwinPlans_smit -f 0 --out $nnUNet_results/attention/901__smit__5__fold0.json
The JSON (schema in documentation/report.md) is picked up by nnssl_report from <results>/attention/ or --attention.
Attention weights are read from MONAI's eager attention path (the fused SDPA path is switched off while recording).
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of nnssl_attention (its ``--help``)."""
    p = argparse.ArgumentParser(prog="nnssl_attention", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrained", required=True, help="the nnssl pretraining checkpoint the fine-tuning started from")
    p.add_argument("-d", "--dataset", required=True,
                   help="target dataset id or name (its preprocessed images and _seg labels are used)")
    p.add_argument("-tr", "--trainer", required=True, help="trainer of the fine-tuning run, e.g. SwinSSLTrainer_5shot")
    p.add_argument("-p", "--plans", required=True, help="plans of the fine-tuning run, e.g. nnUNetSwinPlans_smit")
    p.add_argument("-c", "--configuration", default="3d_fullres", help="(default: %(default)s)")
    p.add_argument("-f", "--fold", default="0", help="fold of the fine-tuning run (default: %(default)s)")
    p.add_argument("--images", type=int, default=8,
                   help="crops (fine-tuning patch size) of the fold's validation cases (default: %(default)s)")
    p.add_argument("--batch", type=int, default=2, help="crops per forward pass (default: %(default)s)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the crops (default: %(default)s; nnssl_cka's crops "
                                                       "for the same seed)")
    p.add_argument("--method", help="method name in the report (default: from the plans name)")
    p.add_argument("--out", required=True, help="output JSON file")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run nnssl_attention on ``argv`` (default ``sys.argv[1:]``): measure the encoders' attention and write the JSON
    result; 0 on success, 2 after one ``error:`` line."""
    args = build_parser().parse_args(argv)
    from nnssl.nnunet.naming import method_of_plans, parse_trainer_name

    try:
        trainer = parse_trainer_name(args.trainer)
        method = args.method or method_of_plans(args.plans)
    except ValueError as e:
        return fail(f"{e}: give the trainer and plans of an nnssl fine-tuning run (-tr SwinSSLTrainer..., "
                    "-p nnUNetSwinPlans_<method>)")
    if args.images < 1 or args.batch < 1:
        return fail(f"--images {args.images} and --batch {args.batch} must both be >= 1")
    try:
        from nnssl.analysis.attention import write_attention_json
        from nnssl.finetune.attention import attention_for_fold

        result, meta = attention_for_fold(args.pretrained, args.dataset, args.trainer, args.plans, args.fold,
                                          args.configuration, args.images, args.batch, args.device, args.seed)
    except (ValueError, FileNotFoundError, KeyError) as e:
        return fail(str(e))
    path = write_attention_json(Path(args.out), dataset=meta["dataset_name"], method=method,
                                shots=trainer.shots_label, fold=args.fold, draw=trainer.draw, encoders=result,
                                n_images=args.images, image_size=meta["patch_size"], spacing_mm=meta["spacing_mm"],
                                organs=meta["organs"], extra=meta)
    for enc, stages in result.items():
        line = ", ".join(f"{s['name']}={sum(s['distance_mm']) / len(s['distance_mm']):.1f}" for s in stages)
        print(f"{enc}: mean attention distance (mm) per stage: {line}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
