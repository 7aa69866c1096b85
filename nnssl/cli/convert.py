"""nnssl_convert: import public Swin checkpoints as nnssl checkpoints, or export an nnssl encoder to MONAI or to a
source's own layout."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nnssl.cli.common import fail

DESCRIPTION = """\
Convert Swin encoder weights between formats. Imports (to an nnssl checkpoint that nnssl_attach and SwinSSLTrainer
accept): a MONAI SwinUNETR state dict (monai-swinunetr), the model-zoo bundle swin_unetr_btcv_segmentation
(monai-bundle), the SwinUNETR self-supervised release of Tang et al. 2022 (swinunetr-ssl, e.g. model_swinvit.pt),
SMIT (smit), VoCo (voco), SuPreM (suprem), BrainSegFounder (brainsegfounder), or --from auto to recognise the file.
Exports: --to monai writes swinViT.* keys that monai.networks.nets.SwinUNETR loads with load_state_dict(...,
strict=False); --to <source> writes that source's own layout. The architecture is read from the tensors, the
patch-merging order from the source's code; a load report (coverage, matched / converted / dropped / missing /
unexpected / shape conflicts / unmappable) is always printed, and anything short of full coverage fails unless
--drop-unmappable names what is dropped. --orient-to / --orient-like re-express the encoder exactly for arrays in
another orientation (nnU-Net's). See documentation/checkpoints.md."""

EPILOG = """\
examples:
  nnssl_convert model_swinvit.pt swinunetr_ssl.pt --from swinunetr-ssl --expect-preset base
  nnssl_convert VoCo_B_SSL_head.pt voco_b.pt --from auto --expect-preset voco-b
  nnssl_convert swin_unetr_btcv.pt btcv.pt --from monai-swinunetr --merging monai-legacy
  nnssl_convert supervised_suprem_swinunetr_2100.pth suprem.pt --from suprem --orient-like imagesTr --plans plans.json
  nnssl_convert pre_train_model.pt smit.pt --from smit --drop-unmappable   # SMIT's configs use patch_norm=True
  nnssl_convert pretrained.pt encoder_monai.pt --from nnssl --to monai"""

#: File names --orient-like reads in a folder (the image formats nnU-Net's SimpleITK reader takes).
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of nnssl_convert (its ``--help``)."""
    from nnssl.convert import SOURCE_CHOICES, TARGETS
    from nnssl.encoders.merging import MERGE_ORDERS
    from nnssl.encoders.swin import PRESETS

    p = argparse.ArgumentParser(prog="nnssl_convert", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", metavar="IN", help="the checkpoint file to read")
    p.add_argument("output", metavar="OUT", help="the file to write (atomically; an existing file is replaced)")
    p.add_argument("--from", dest="source", required=True, choices=SOURCE_CHOICES,
                   help="format of IN (auto: recognise it; it refuses layouts that several sources share)")
    p.add_argument("--to", dest="target", default="nnssl", choices=TARGETS,
                   help="format of OUT: nnssl (checkpoint for nnssl_attach; default), monai (swinViT.* state dict "
                        "for monai.networks.nets.SwinUNETR) or a source's own layout")
    p.add_argument("--method", default=None,
                   help="method name stored in the nnssl checkpoint (default: imported-<format>, e.g. "
                        "imported-swinunetr-ssl); nnssl_attach uses it as the default --name when it consists of "
                        "letters, digits, '-' and '_'")
    p.add_argument("--expect-preset", default=None, choices=list(PRESETS),
                   help="fail unless the tensors describe this encoder preset (in_channels excepted); the error names "
                        "every differing setting (window_size, depths, num_heads, feature_size, ...)")
    p.add_argument("--merging", default=None, choices=list(MERGE_ORDERS),
                   help="the patch-merging order IN was trained with: monai (MONAI >= 1.5) or monai-legacy (MONAI "
                        "0.9-1.4). Required for monai-swinunetr; the other sources know theirs")
    p.add_argument("--target-merging", default=None, choices=list(MERGE_ORDERS),
                   help="--to monai / monai-bundle: the order of the MONAI that will load OUT (default: the encoder's)")
    p.add_argument("--drop-unmappable", action="store_true",
                   help="drop source tensors that have no exact place in nnssl's encoder (SMIT's patch-embedding "
                        "LayerNorm, unrecognised tensors, encoder tensors nnssl does not build) instead of refusing; "
                        "the report and the checkpoint's provenance list them")
    p.add_argument("--prefix", default=None,
                   help="import only the tensors whose keys start with this prefix (after module./_orig_mod.), e.g. "
                        "teacher. for a file with two encoders")
    o = p.add_argument_group("orientation (documentation/checkpoints.md, 'Orientation')")
    o.add_argument("--orient-to", default=None, metavar="CODES",
                   help="re-express the encoder for arrays whose axes increase toward CODES (3 letters of R/L, A/P, "
                        "S/I, e.g. SPL), exactly")
    o.add_argument("--orient-like", default=None, metavar="PATH",
                   help="re-express the encoder for nnU-Net's arrays of these images (an image file or a folder such "
                        "as imagesTr; all must share one orientation)")
    o.add_argument("--plans", default=None, metavar="PLANS_JSON",
                   help="nnU-Net plans whose transpose_forward --orient-like applies (default: none)")
    o.add_argument("--orient-from", default=None, metavar="CODES",
                   help="the axes IN was trained on, if its source does not document them (e.g. RAS, or voxel for "
                        "a pipeline without reorientation)")
    p.add_argument("-v", "--verbose", action="store_true", help="list every tensor in the load report")
    return p


def _orientation(args: argparse.Namespace):
    """The Orientation request from the arguments, or None; ValueError on a bad combination."""
    from nnssl.convert import Orientation

    if not (args.orient_to or args.orient_like):
        if args.plans or args.orient_from:
            raise ValueError("--plans and --orient-from only apply with --orient-to or --orient-like")
        return None
    if args.orient_to and args.orient_like:
        raise ValueError("give the target orientation once: --orient-to CODES or --orient-like PATH")
    if args.plans and not args.orient_like:
        raise ValueError("--plans gives transpose_forward to --orient-like; with --orient-to write the final codes")
    like: tuple[str, ...] = ()
    if args.orient_like:
        path = Path(args.orient_like)
        if path.is_dir():
            like = tuple(str(f) for f in sorted(path.iterdir()) if f.name.endswith(IMAGE_SUFFIXES))
            if not like:
                raise ValueError(f"--orient-like {path}: no image files ({', '.join(IMAGE_SUFFIXES)}) in the folder")
        elif path.is_file():
            like = (str(path),)
        else:
            raise ValueError(f"--orient-like {path} does not exist")
    tf = (0, 1, 2)
    if args.plans:
        try:
            tf = tuple(json.loads(Path(args.plans).read_text(encoding="utf-8"))["transpose_forward"])
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"--plans {args.plans}: cannot read its transpose_forward ({e})") from None
    return Orientation(to=args.orient_to, like=like, transpose_forward=tf, source_axes=args.orient_from)


def main(argv: list[str] | None = None) -> int:
    """Run nnssl_convert on ``argv`` (default ``sys.argv[1:]``): import a public checkpoint or export an nnssl encoder;
    0 on success, 2 after one ``error:`` line."""
    args = build_parser().parse_args(argv)
    from nnssl.convert import ConversionError, convert_file, preset_config

    if args.target != "nnssl" and args.method:
        return fail("--method names an nnssl checkpoint's method; it has no effect with --to " + args.target)
    try:
        orientation = _orientation(args)
        expected = preset_config(args.expect_preset) if args.expect_preset else None
        report = convert_file(args.input, args.output, args.source, to=args.target, method=args.method,
                              expected=expected, allow_inexact=args.drop_unmappable, merging=args.merging,
                              target_merging=args.target_merging, orientation=orientation, prefix=args.prefix)
    except ConversionError as e:
        if e.report is not None:
            print(e.report.summary(verbose=args.verbose))
        return fail(str(e))
    except (ValueError, FileNotFoundError, OSError) as e:
        return fail(str(e))
    print(report.summary(verbose=args.verbose))
    what = {"nnssl": "nnssl checkpoint", "monai": "MONAI SwinUNETR state dict (swinViT.* keys)"}.get(
        args.target, f"{args.target} layout")
    print(f"wrote {what}: {args.output}")
    if args.target == "nnssl":
        import re

        from nnssl.checkpoint import load_checkpoint

        # nnssl_attach names plans after --name (letters, digits, '-', '_'): suggest one derived from the method.
        name = re.sub(r"[^A-Za-z0-9]+", "-", str(load_checkpoint(args.output)["method"])).strip("-")
        print(f"next: nnssl_attach -d DATASET --checkpoint {args.output} --name {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
