"""nnssl_phantoms: write the procedural CT/MRI phantom datasets as nnU-Net v2 raw datasets (and a preview PNG)."""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from nnssl.cli.common import fail
from nnssl.data.phantoms.datasets import DATASETS, write_datasets


def _dataset_table() -> str:
    rows = []
    for s in DATASETS.values():
        kind = "images-only" if s.images_only else ", ".join(f"{lab.id}={lab.name}" for lab in s.labels)
        seq = f" {s.sequence}" if s.sequence else ""
        rows.append(f"  {s.id} {s.folder_name():32s} {s.modality}{seq:3s} {s.cases:3d} cases "
                    f"{'x'.join(map(str, s.size))} @ {'x'.join(f'{v:g}' for v in s.spacing)} mm  [{kind}]")
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of nnssl_phantoms (its ``--help``, with the table of phantom datasets)."""
    p = argparse.ArgumentParser(
        prog="nnssl_phantoms",
        description="Write procedural CT and MRI torso phantoms as nnU-Net v2 raw datasets under $nnUNet_raw "
                    "(deterministic per --seed). Without -d all datasets are written; with only --preview, only the "
                    "preview image is drawn.",
        epilog="datasets (id, folder, modality, default cases, size DxHxW @ spacing ZxYxX):\n" + _dataset_table()
               + "\n\nexamples:\n  nnssl_phantoms                      # all six datasets with their defaults\n"
                 "  nnssl_phantoms -d 901 903 --cases 8 --size 96 --spacing 3 3 3\n"
                 "  nnssl_phantoms -d 901:511             # dataset 901 written as Dataset511_PhantomCTOrgans\n"
                 "  nnssl_phantoms --preview phantoms.png",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--datasets", nargs="+", metavar="ID",
                   help="datasets to write: ids (900-905), names (PhantomCTOrgans) or SRC:DST to write dataset SRC "
                        "under id DST (default: all)")
    p.add_argument("--cases", type=int, metavar="N", help="cases per dataset (default: each dataset's own, see below)")
    p.add_argument("--size", type=int, nargs="+", metavar="N",
                   help="volume size in voxels: D H W, or one number for a cube (default: per dataset, see below)")
    p.add_argument("--spacing", type=float, nargs=3, metavar=("Z", "Y", "X"),
                   help="voxel spacing in mm, z y x (default: per dataset, see below)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default: 0)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing datasets with the same id (default: refuse and name the folder)")
    p.add_argument("--preview", metavar="FILE.png",
                   help="also draw mid slices of one phantom as CT and T1/T2 MRI with label overlays into FILE.png")
    p.add_argument("--raw", metavar="DIR", help="nnU-Net raw folder to write into (default: $nnUNet_raw)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run nnssl_phantoms on ``argv`` (default ``sys.argv[1:]``): write the chosen phantom datasets under $nnUNet_raw; 0
    on success, 2 after one ``error:`` line."""
    args = build_parser().parse_args(argv)
    try:
        size = None
        if args.size is not None:
            if len(args.size) not in (1, 3):
                raise ValueError(f"--size takes one number (a cube) or three (D H W), got {len(args.size)}")
            size = args.size[0] if len(args.size) == 1 else tuple(args.size)
        write_data = args.datasets is not None or args.preview is None
        if write_data:
            raw = args.raw or os.environ.get("nnUNet_raw")
            if not raw:
                raise ValueError("no target folder: set the environment variable nnUNet_raw or pass --raw DIR")
            t0 = time.time()
            folders = write_datasets(Path(raw), args.datasets, cases=args.cases, size=size, spacing=args.spacing,
                                     seed=args.seed, overwrite=args.overwrite, progress=not args.no_progress)
            print(f"wrote {len(folders)} dataset(s) in {time.time() - t0:.1f} s:")
            for f in folders:
                print(f"  {f}")
        if args.preview:
            from nnssl.data.phantoms.preview import write_preview

            path = write_preview(Path(args.preview), seed=args.seed)
            print(f"wrote preview {path}")
    except (ValueError, OSError) as e:
        return fail(str(e))
    except KeyboardInterrupt:
        return fail("interrupted; the dataset being written was removed, finished ones are complete", code=130)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
