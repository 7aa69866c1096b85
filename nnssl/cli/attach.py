"""nnssl_attach: attach a pretraining checkpoint to a target dataset's Swin plans (writes nnUNetSwinPlans_<name>)."""
from __future__ import annotations

import argparse
import sys

from nnssl.cli.common import fail
from nnssl.nnunet.naming import SWIN_PLANS


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of nnssl_attach (its ``--help``)."""
    p = argparse.ArgumentParser(
        prog="nnssl_attach",
        description="Write plans nnUNetSwinPlans_<name> for a target dataset: a copy of its Swin plans whose encoder is "
                    "the checkpoint's and which name the checkpoint, so that nnUNetv2_train ... -tr SwinSSLTrainer "
                    "-p nnUNetSwinPlans_<name> fine-tunes from it (results in their own folder per name).")
    p.add_argument("-d", required=True, help="target dataset id or name (already planned with "
                                             "nnssl_plan_and_preprocess)")
    p.add_argument("--checkpoint", required=True, help="nnssl pretraining checkpoint (from nnssl_pretrain or "
                                                       "nnssl_convert)")
    p.add_argument("--name", default=None, help="suffix of the plans identifier (default: the checkpoint's method, "
                                                "e.g. smit -> nnUNetSwinPlans_smit)")
    p.add_argument("-p", default=SWIN_PLANS, help="Swin plans to copy (default: %(default)s)")
    p.add_argument("-c", default="3d_fullres", help="configuration (default 3d_fullres)")
    p.add_argument("--overwrite", action="store_true", help="replace existing plans of the same name")
    p.add_argument("--architecture-only", action="store_true",
                   help="copy the checkpoint's encoder architecture without its weights: the from-scratch baseline of "
                        "that encoder (default name scratch-<encoder>; train it with -tr SwinScratchTrainer)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run nnssl_attach on ``argv`` (default ``sys.argv[1:]``): write the dataset's nnUNetSwinPlans_<name> for the
    checkpoint; 0 on success, 2 after one ``error:`` line."""
    args = build_parser().parse_args(argv)
    try:
        from nnssl.finetune.attach import attach_checkpoint

        path = attach_checkpoint(args.d, args.checkpoint, args.name, args.p, args.c, args.overwrite,
                                 args.architecture_only)
    except (ValueError, OSError) as e:
        return fail(str(e))
    import json

    plans = json.load(open(path))
    ident = plans["plans_name"]
    print(f"wrote {path}")
    trainer = "SwinScratchTrainer" if args.architecture_only else "SwinSSLTrainer"
    print(f"fine-tune with: nnUNetv2_train {plans['dataset_name']} {args.c} FOLD -tr {trainer} -p {ident}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
