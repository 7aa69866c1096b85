"""nnssl_splits: install a fixed cross-validation split (nnU-Net's splits_final.json) for a preprocessed dataset."""
from __future__ import annotations

import argparse
import sys

from nnssl.cli.common import fail
from nnssl.nnunet.naming import SWIN_PLANS


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of nnssl_splits (its ``--help``)."""
    p = argparse.ArgumentParser(
        prog="nnssl_splits",
        description="Check a split file (nnU-Net's splits_final.json layout: a list of {\"train\": [...], \"val\": "
                    "[...]} folds) against the preprocessed dataset's cases and install it as the dataset's "
                    "splits_final.json, so that every method trains and validates on exactly these cases. A split "
                    "naming cases the dataset lacks is refused with their names.")
    p.add_argument("-d", required=True, help="dataset id or name, preprocessed with nnssl_plan_and_preprocess")
    p.add_argument("--file", required=True, help="the split file to install")
    p.add_argument("-p", default=SWIN_PLANS, help="plans whose preprocessed cases are checked (default: %(default)s)")
    p.add_argument("--sha256", metavar="HEX",
                   help="refuse unless the split file has this content hash (the benchmark grid passes the hash of "
                        "the file it read, so that an edit between reading the spec and training is caught)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a different existing splits_final.json (folds trained on it must be retrained)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Install the split; exit 2 with one error: line on bad input."""
    args = build_parser().parse_args(argv)
    try:
        from nnssl.data.preprocessed import find_source
        from nnssl.nnunet.splits import install_splits

        if args.sha256 is not None:
            from nnssl.io import file_sha256

            actual = file_sha256(args.file)
            if actual != args.sha256.lower():
                raise ValueError(f"{args.file} changed since the grid read it (sha256 {actual[:12]}..., expected "
                                 f"{args.sha256[:12]}...): run the grid again so that it reads the new split")
        source = find_source(args.d, args.p)
        path = install_splits(source.folder.parent, args.file, source.identifiers, args.overwrite)
    except (ValueError, OSError) as e:
        return fail(str(e))
    print(f"split installed: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
