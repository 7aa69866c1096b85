"""nnssl_pretrain: pretrain the Swin encoder with a pretext task on nnU-Net-preprocessed data."""
from __future__ import annotations

import argparse
import math
import os
import sys

from nnssl.cli.common import fail
from nnssl.nnunet.naming import SWIN_PLANS

EPILOG = """examples:
  nnssl_pretrain -m smit -d 900 --device cuda
  nnssl_pretrain -m simmim -d 900 --encoder tiny --crop 64 --steps 20 --device cpu
  torchrun --nproc_per_node 4 $(which nnssl_pretrain) -m dino -d 900 901 --batch-size 4
  nnssl_pretrain -m smit -d 900 -o mask_ratio=0.6 -o ema_momentum=0.99   (method options: see --list)
  nnssl_pretrain -m smit -d 900 --resume --allow-changed lr,clip_grad --lr 1e-4 --clip-grad 1.0   (after a NaN stop)
output: $nnssl_results/<method>__<encoder>__D<ids>/ (or $nnUNet_results/nnssl_pretrain/... when nnssl_results is
unset): checkpoint_latest.pth (+ checkpoint_previous.pth, the generation before), checkpoint_final.pth, config.json,
log.jsonl, loss.png; .nnssl.lock while a run uses the folder.
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of nnssl_pretrain (its ``--help``)."""
    p = argparse.ArgumentParser(prog="nnssl_pretrain", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--method", help="pretext task, e.g. smit, simmim, dino (see --list)")
    p.add_argument("-d", "--datasets", nargs="+", help="preprocessed dataset ids or names (labels are ignored)")
    p.add_argument("-c", "--configuration", default="3d_fullres", help="nnU-Net configuration to read (default: %(default)s)")
    p.add_argument("-p", "--plans", default=SWIN_PLANS, help="plans identifier of the preprocessed data (default: %(default)s)")
    p.add_argument("--encoder", default="base", help="encoder preset: tiny (tests), small, base (paper, feature 48), smit (default: %(default)s)")
    p.add_argument("--crop", type=int, nargs="+", default=[96], help="crop size: one value (cube) or three; each divisible by 32 (default: 96)")
    p.add_argument("--batch-size", type=int, default=2, help="crops per step and device (default: %(default)s)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, help="optimiser steps (default: 1000)")
    budget.add_argument("--epochs", type=float, help="passes over the cases; converted to steps with the global batch")
    opt = p.add_argument_group("optimisation (default: the method's reference recipe at this batch; see --show-config)")
    opt.add_argument("--lr", type=float, help="peak AdamW learning rate after warm-up (default: the reference's base lr "
                                              "scaled linearly to the global batch)")
    opt.add_argument("--min-lr", type=float, help="final learning rate of the cosine schedule")
    opt.add_argument("--warmup-steps", type=int, help="linear warm-up steps (default: the reference's warm-up share)")
    opt.add_argument("--weight-decay", type=float, help="AdamW weight decay at the start")
    opt.add_argument("--weight-decay-end", type=float, help="weight decay at the end of the cosine schedule")
    opt.add_argument("--clip-grad", type=float, help="gradient-norm clip (global or per parameter, as the method's "
                                                     "reference); 0 disables")
    opt.add_argument("--betas", type=float, nargs=2, metavar=("B1", "B2"), help="AdamW betas")
    p.add_argument("--data-fraction", type=float, default=1.0, metavar="F",
                   help="pretrain on this share of the cases, a nested seeded subset identical for every method "
                        "(0.25 is inside 0.5; recorded in config.json and the checkpoint; default: 1.0, every case)")
    p.add_argument("--grad-checkpointing", action="store_true", help="trade compute for memory in the Swin blocks")
    p.add_argument("--attention", default="eager", metavar="KIND",
                   help="window attention: eager (MONAI's), sdpa (scaled_dot_product_attention, equal within fp32 "
                        "rounding), auto (per stage, where benchmarks/attention.py measured SDPA faster on this device "
                        "type) or four comma-separated kinds for the stages 1-4 (default: %(default)s)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the task's forward and backward (the first steps compile; a runtime setting)")
    p.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA (bf16 where supported, else fp16)")
    p.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                   help="method option overriding its paper default (repeatable); unknown keys are refused")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda", help="where to train (default: %(default)s)")
    p.add_argument("--num-workers", type=int, default=2, help="data-loader worker processes per device (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, crops and views (default: %(default)s)")
    p.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoint_latest.pth writes (default: %(default)s)")
    p.add_argument("--log-every", type=int, default=10,
                   help="steps between reads of the loss values and of the NaN/Inf check on the host, and log.jsonl "
                        "writes; a non-finite step is skipped on the device at once (default: %(default)s)")
    p.add_argument("--output", help="run folder (default: see below)")
    p.add_argument("--resume", action="store_true", help="continue the run in the output folder from checkpoint_latest.pth "
                                                         "(or checkpoint_previous.pth when the latest does not load)")
    p.add_argument("--allow-changed", metavar="NAMES", default="",
                   help="with --resume: optimisation settings that may differ from the run's, comma-separated (lr, "
                        "min_lr, warmup_steps, weight_decay, weight_decay_end, clip_grad, betas); the change is logged")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (e.g. in batch jobs)")
    p.add_argument("--list", action="store_true", help="list the methods with family, paper and reference lr, then exit")
    p.add_argument("--show-config", action="store_true",
                   help="print the settings this command would train with (the method's reference recipe resolved at "
                        "this batch, explicit values applied, every method option), then exit")
    return p


def list_methods() -> str:
    """The ``--list`` table: one line per registered method with its family, reference learning rate and paper (a method
    whose module does not import is listed as unavailable with the reason)."""
    from nnssl.tasks import get_task_class, method_names

    lines = [f"{'method':<10} {'family':<24} {'reference lr':<22} paper"]
    for name in method_names():
        try:
            cls = get_task_class(name)
        except ImportError as e:
            lines.append(f"{name:<10} {'(unavailable)':<24} {'':<22} {e}")
            continue
        r = cls.recipe
        lr = f"{r.base_lr:g}" + (f" per {r.reference_batch}" if r.reference_batch else " (absolute)")
        lines.append(f"{name:<10} {cls.family:<24} {lr:<22} {cls.paper}")
    lines.append("details: nnssl_pretrain -m METHOD --show-config [--batch-size N --steps N ...]")
    return "\n".join(lines)


def parse_options(pairs: list[str]) -> dict[str, str]:
    """``-o KEY=VALUE`` pairs as a dict of strings (the task's Config converts and validates them); ValueError for a
    pair without ``=``."""
    options = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"-o {pair!r}: expected KEY=VALUE")
        key, value = pair.split("=", 1)
        options[key.strip()] = value.strip()
    return options


def check_arguments(args: argparse.Namespace) -> None:
    """ValueError naming the flag for counts and sizes no run can take (before any data are read)."""
    for flag, value, low in (("--steps", args.steps, 1), ("--batch-size", args.batch_size, 1),
                             ("--checkpoint-every", args.checkpoint_every, 1), ("--log-every", args.log_every, 1),
                             ("--num-workers", args.num_workers, 0)):
        if value is not None and value < low:
            raise ValueError(f"{flag} must be >= {low}, got {value}")
    if args.epochs is not None and not (math.isfinite(args.epochs) and args.epochs > 0):
        raise ValueError(f"--epochs must be a number > 0, got {args.epochs:g}")
    if any(c < 1 for c in args.crop):
        raise ValueError(f"--crop sizes must be positive multiples of 32, got {args.crop}")
    if args.allow_changed and not args.resume:
        raise ValueError("--allow-changed only applies with --resume (a new run takes any settings)")


def main(argv: list[str] | None = None) -> int:
    """Run nnssl_pretrain on ``argv`` (default ``sys.argv[1:]``): pretrain (or resume) the encoder with a pretext task;
    0 on success, 2 after one ``error:`` line on bad input or a stopped run, 130 when interrupted (the last checkpoint
    intact)."""
    args = build_parser().parse_args(argv)
    if args.list:
        print(list_methods())
        return 0
    if not args.method or not (args.datasets or args.show_config):
        return fail("pass a method (-m) and the datasets (-d); `nnssl_pretrain --list` shows the methods")
    if args.show_config:
        import torch

        args.datasets = args.datasets or ["DATASET"]
        if args.device == "cuda" and not torch.cuda.is_available():
            args.device = "cpu"  # the settings do not depend on the device
    from nnssl.training.loop import TrainingDiverged

    try:
        from nnssl.data.preprocessed import find_sources
        from nnssl.tasks import config_from_overrides, get_task_class
        from nnssl.training.loop import PretrainConfig, run_pretraining

        check_arguments(args)
        options = parse_options(args.option)
        config_from_overrides(get_task_class(args.method).Config, options)  # fail fast on unknown keys
        crop = args.crop * 3 if len(args.crop) == 1 else args.crop
        if len(crop) != 3:
            raise ValueError(f"--crop takes one or three sizes, got {args.crop}")
        steps = args.steps
        if args.epochs is not None:
            from nnssl.data.subsets import apply_fraction, check_fraction

            sources, _ = apply_fraction(find_sources(args.datasets, args.plans, args.configuration),
                                        check_fraction(args.data_fraction, "--data-fraction"), args.seed)
            cases = sum(len(s.identifiers) for s in sources)  # passes over the cases this run pretrains on
            world = int(os.environ.get("WORLD_SIZE", "1"))
            steps = max(1, math.ceil(args.epochs * cases / (args.batch_size * world)))
        cfg = PretrainConfig(
            method=args.method, datasets=args.datasets, plans=args.plans, configuration=args.configuration,
            encoder=args.encoder, crop=tuple(crop), batch_size=args.batch_size, steps=steps or 1000, lr=args.lr,
            min_lr=args.min_lr, warmup_steps=args.warmup_steps, weight_decay=args.weight_decay,
            weight_decay_end=args.weight_decay_end, clip_grad=args.clip_grad,
            betas=tuple(args.betas) if args.betas else None, grad_checkpointing=args.grad_checkpointing,
            amp=not args.no_amp, device=args.device, num_workers=args.num_workers, seed=args.seed,
            checkpoint_every=args.checkpoint_every, task_options=options, log_every=args.log_every,
            attention=args.attention, compile=args.compile, data_fraction=args.data_fraction,
        )
        if args.show_config:
            from nnssl.training.loop import describe_run

            try:
                print(describe_run(cfg, int(os.environ.get("WORLD_SIZE", "1"))), flush=True)
            except BrokenPipeError:  # the reader stopped early (`| head`): not an error of the settings
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        allow = [a.strip() for a in args.allow_changed.split(",") if a.strip()]
        final = run_pretraining(cfg, args.output, resume=args.resume, progress=not args.no_progress,
                                allow_changed=allow)
    except (ValueError, TrainingDiverged, OSError) as e:  # OSError: full device, read-only folder, missing files
        return fail(str(e))
    except KeyboardInterrupt:
        return fail("interrupted: the last checkpoint is intact; continue with the same command and --resume", 130)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"checkpoint: {final}")
        print(f"fine-tune it: nnssl_attach -d TARGET_ID --checkpoint {final} --name {args.method}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
