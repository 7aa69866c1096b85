"""nnssl: version, the nnUNet_extTrainer export line, and a check of nnU-Net's environment variables."""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of nnssl (its ``--help``)."""
    p = argparse.ArgumentParser(
        prog="nnssl",
        description="Show nnssl's version, the line that lets nnU-Net find the Swin trainers, and check nnU-Net's "
                    "environment variables (nnUNet_raw, nnUNet_preprocessed, nnUNet_results, nnUNet_extTrainer).")
    p.add_argument("--export", action="store_true",
                   help="print only the export line (use: eval \"$(nnssl --export)\")")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``nnssl`` on ``argv`` (default ``sys.argv[1:]``): print the version and check nnU-Net's environment
    variables, or with ``--export`` print the nnUNet_extTrainer line; 1 when a variable needs fixing, else 0."""
    args = build_parser().parse_args(argv)
    import nnssl
    from nnssl.nnunet.environment import NNUNET_ENV_VARS, env_problems, export_line

    if args.export:
        print(export_line())
        return 0
    version = getattr(nnssl, "__version__", None)
    if version is None:
        try:
            from importlib.metadata import version as _v

            version = _v("nnssl")
        except Exception:  # not installed as a distribution
            version = "unknown"
    print(f"nnssl {version}")
    print("Let nnU-Net find the Swin trainers (add to your shell profile):")
    print(f"  {export_line()}")
    problems = env_problems()
    print("nnU-Net environment:")
    import os

    for name in NNUNET_ENV_VARS:
        print(f"  {name}={os.environ.get(name, '<unset>')}")
    if problems:
        print("Problems:", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    print("All set.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
