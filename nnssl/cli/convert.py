"""nnssl_convert: import public Swin checkpoints as nnssl checkpoints, or export an nnssl encoder to MONAI."""
from __future__ import annotations

import argparse
import sys

from nnssl.cli.common import fail

DESCRIPTION = """\
Convert Swin encoder weights between formats. Imports (to an nnssl checkpoint that nnssl_attach and SwinSSLTrainer
accept): a MONAI SwinUNETR state dict (monai-swinunetr), the SwinUNETR self-supervised release of Tang et al. 2022
(swinunetr-ssl, e.g. model_swinvit.pt), SMIT's released encoder (smit). Export: --from nnssl --to monai writes a
state dict with swinViT.* keys that monai.networks.nets.SwinUNETR loads with load_state_dict(..., strict=False).
The encoder architecture is read from the tensors and printed; a load report (matched / converted / dropped /
missing) is always printed, and any missing encoder tensor fails the conversion. See documentation/checkpoints.md."""

EPILOG = """\
examples:
  nnssl_convert model_swinvit.pt swinunetr_ssl.pt --from swinunetr-ssl --expect-preset base
  nnssl_convert swin_unetr_btcv.pt btcv.pt --from monai-swinunetr
  nnssl_convert pre_train_model.pt smit.pt --from smit --drop-unmappable   # SMIT's configs use patch_norm=True
  nnssl_convert pretrained.pt encoder_monai.pt --from nnssl --to monai"""


def build_parser() -> argparse.ArgumentParser:
    from nnssl.convert import SOURCES, TARGETS
    from nnssl.encoders.swin import PRESETS

    p = argparse.ArgumentParser(prog="nnssl_convert", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", metavar="IN", help="the checkpoint file to read")
    p.add_argument("output", metavar="OUT", help="the file to write (atomically; an existing file is replaced)")
    p.add_argument("--from", dest="source", required=True, choices=SOURCES,
                   help="format of IN: monai-swinunetr (SwinUNETR state dict, any wrapper/module. prefix), "
                        "swinunetr-ssl (Tang et al. 2022 release / research-contributions SwinUNETR/Pretrain), "
                        "smit (SMIT's Swin, The-Veeraraghavan-Lab/SMIT), nnssl (an nnssl checkpoint)")
    p.add_argument("--to", dest="target", default="nnssl", choices=TARGETS,
                   help="format of OUT: nnssl (checkpoint for nnssl_attach; default) or monai (swinViT.* state dict "
                        "for monai.networks.nets.SwinUNETR)")
    p.add_argument("--method", default=None,
                   help="method name stored in the nnssl checkpoint (default: imported-<format>, e.g. "
                        "imported-swinunetr-ssl); nnssl_attach uses it as the default --name when it consists of "
                        "letters, digits, '-' and '_'")
    p.add_argument("--expect-preset", default=None, choices=list(PRESETS),
                   help="fail unless the tensors describe this encoder preset (in_channels excepted); the error names "
                        "every differing setting (window_size, depths, num_heads, feature_size, ...)")
    p.add_argument("--drop-unmappable", action="store_true",
                   help="smit only: drop tensors that have no exact MONAI counterpart (the patch-embedding LayerNorm "
                        "of patch_norm=True, an absolute position embedding) instead of refusing; the encoder then "
                        "computes a different function than SMIT's, and the checkpoint's provenance records it")
    p.add_argument("-v", "--verbose", action="store_true", help="list every tensor in the load report")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from nnssl.convert import ConversionError, convert_file, preset_config

    if args.drop_unmappable and args.source != "smit":
        return fail("--drop-unmappable only applies to --from smit")
    if args.target == "monai" and args.method:
        return fail("--method names an nnssl checkpoint's method; it has no effect with --to monai")
    try:
        expected = preset_config(args.expect_preset) if args.expect_preset else None
        report = convert_file(args.input, args.output, args.source, to=args.target, method=args.method,
                              expected=expected, allow_inexact=args.drop_unmappable)
    except ConversionError as e:
        if e.report is not None:
            print(e.report.summary(verbose=args.verbose))
        return fail(str(e))
    except (ValueError, FileNotFoundError, OSError) as e:
        return fail(str(e))
    print(report.summary(verbose=args.verbose))
    what = "MONAI SwinUNETR state dict (swinViT.* keys)" if args.target == "monai" else "nnssl checkpoint"
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
