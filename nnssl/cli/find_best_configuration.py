"""nnssl_find_best_configuration: nnU-Net's model selection over models named one by one (Swin and CNN together)."""
from __future__ import annotations

import argparse
import sys

from nnssl.cli.common import fail


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of nnssl_find_best_configuration (its ``--help``)."""
    p = argparse.ArgumentParser(
        prog="nnssl_find_best_configuration",
        description="Run nnU-Net's model selection (cross-validation Dice of each model and of every pair's ensemble, "
                    "then the post-processing of the best) over the models named with -m. Unlike "
                    "nnUNetv2_find_best_configuration, which tries every combination of its -tr, -p and -c, this "
                    "takes each model as nnU-Net names its results folder, so a Swin model (Swin trainer, Swin "
                    "plans) and nnU-Net's CNN (nnUNetTrainer, nnUNetPlans) can be compared and ensembled.")
    p.add_argument("dataset", help="dataset id or name")
    p.add_argument("-m", "--models", nargs="+", required=True, metavar="TRAINER__PLANS__CONFIGURATION",
                   help="models as named by their folders in $nnUNet_results/DatasetXXX_Name/, e.g. "
                        "SwinSSLTrainer__nnUNetSwinPlans_smit__3d_fullres nnUNetTrainer__nnUNetPlans__3d_fullres")
    p.add_argument("-f", "--folds", nargs="+", default=["0", "1", "2", "3", "4"], help="folds (default: 0 1 2 3 4)")
    p.add_argument("-np", type=int, default=None, help="processes for ensembling and evaluation (default: nnU-Net's)")
    p.add_argument("--disable_ensembling", action="store_true", help="evaluate the models alone, no ensembles")
    p.add_argument("--no_overwrite", action="store_true", help="reuse merged folds and ensembles already written")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run nnssl_find_best_configuration on ``argv`` (default ``sys.argv[1:]``): nnU-Net's model selection over the
    named models; 0 on success, 2 after one ``error:`` line."""
    args = build_parser().parse_args(argv)
    from nnssl.nnunet.model_selection import find_best_over_models, split_model_folder_name

    try:
        models = [split_model_folder_name(m) for m in args.models]
        folds = [int(f) if f.isdigit() else f for f in args.folds]
        from nnunetv2.configuration import default_num_processes

        find_best_over_models(args.dataset, models, folds, ensembling=not args.disable_ensembling,
                              num_processes=args.np or default_num_processes, overwrite=not args.no_overwrite)
    except ValueError as e:
        return fail(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
