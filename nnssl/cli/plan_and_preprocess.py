"""nnssl_plan_and_preprocess: nnU-Net fingerprinting, Swin planning (nnUNetSwinPlans) and preprocessing.

Same options as nnUNetv2_plan_and_preprocess where they apply. Images-only datasets (dataset.json
"images_only": true) are fingerprinted and preprocessed without labels.
"""
from __future__ import annotations

import argparse
import sys

from nnssl.cli.common import fail
from nnssl.data.preprocessing import CONFIGURATION, plan_and_preprocess


def build_parser() -> argparse.ArgumentParser:
    """The options of nnssl_plan_and_preprocess (nnUNetv2_plan_and_preprocess's names where they apply)."""
    p = argparse.ArgumentParser(
        prog="nnssl_plan_and_preprocess",
        description="Fingerprint, plan with the Swin planner (plans nnUNetSwinPlans, 3d_fullres only, patch axes "
                    "divisible by 32) and preprocess nnU-Net raw datasets, labeled or images-only.")
    p.add_argument("-d", nargs="+", type=int, required=True, metavar="ID",
                   help="dataset id(s) under $nnUNet_raw, e.g. 901 902")
    p.add_argument("-c", nargs="+", default=[CONFIGURATION],
                   help="configurations to preprocess; Swin plans only have 3d_fullres (default)")
    p.add_argument("-np", type=int, default=4, help="processes for preprocessing (default 4, as nnU-Net's 3d_fullres)")
    p.add_argument("-npfp", type=int, default=8, help="processes for fingerprint extraction (default 8, as nnU-Net)")
    p.add_argument("--verify_dataset_integrity", action="store_true",
                   help="check the raw dataset first (nnU-Net's check; for images-only datasets: channels, NaNs)")
    p.add_argument("--clean", action="store_true",
                   help="recompute an existing dataset fingerprint (as nnU-Net's --clean); without it an existing "
                        "fingerprint is reused")
    p.add_argument("--encoder", default="base",
                   help="encoder preset written into the plans as nnssl_encoder: tiny, small, base (paper, default), "
                        "smit")
    p.add_argument("-gpu_memory_target", type=float, default=None,
                   help="GPU memory target in GB used for patch and batch size (default: nnU-Net's 8)")
    p.add_argument("--no_pp", action="store_true", help="only fingerprint and plan, do not preprocess")
    p.add_argument("--no_pbar", action="store_true", help="hide progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    """Plan and preprocess each dataset of ``-d`` in turn; 0 on success, 2 after one ``error:`` line."""
    args = build_parser().parse_args(argv)
    bad = [c for c in args.c if c != CONFIGURATION]
    if bad:
        return fail(f"configuration(s) {', '.join(bad)} do not exist in Swin plans: only {CONFIGURATION} is planned "
                    f"(Swin needs 3D patches). Use -c {CONFIGURATION}.")
    try:
        for d in args.d:
            path = plan_and_preprocess(d, args.encoder, args.np, args.npfp, args.verify_dataset_integrity,
                                       args.clean, args.gpu_memory_target, not args.no_pp, not args.no_pbar)
            print(f"Swin plans: {path}")
    except (ValueError, OSError, AssertionError) as e:
        return fail(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
