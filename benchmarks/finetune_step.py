"""Time one fine-tuning step of the SwinUNETR the Swin trainers build, in nnU-Net's default memory layout and in
channels-last (the layout the trainers use on CPU), and check that both compute the same.

    python benchmarks/finetune_step.py --encoder tiny --patch 64 64 64 --batch 2 --classes 11 --repeats 3

Prints one row per layout: median step time (forward + backward + AdamW) and the largest difference of the first
forward pass to the default layout.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch

from nnssl.cpu_memory import ENV, keep_freed_memory
from nnssl.encoders.swin import EncoderConfig, build_swinunetr


def step_time(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int) -> tuple[float, torch.Tensor]:
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    times, out = [], None
    for i in range(repeats + 1):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        pred = net(x)
        torch.nn.functional.cross_entropy(pred, y).backward()
        opt.step()
        if i:  # the first step warms up oneDNN's kernels
            times.append(time.perf_counter() - start)
        else:
            out = pred.detach()  # before any update: both layouts start from the same weights
    return statistics.median(times), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", default="tiny")
    p.add_argument("--patch", type=int, nargs=3, default=[64, 64, 64])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--classes", type=int, default=11)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--malloc", choices=("keep", "system"), default="keep",
                   help="CPU: 'keep' freed memory in the process as training does (nnssl.cpu_memory) or leave "
                        "glibc's 'system' malloc settings, the baseline (default: keep)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ[ENV] = args.malloc
    malloc = "keep" if keep_freed_memory() else "system"
    torch.manual_seed(0)
    net = build_swinunetr(EncoderConfig.preset(args.encoder), args.classes)
    x = torch.randn(args.batch, 1, *args.patch)
    y = torch.randint(0, args.classes, (args.batch, *args.patch))
    rows = []
    reference = copy.deepcopy(net)
    t_ref, out_ref = step_time(reference, x, y, args.repeats)
    rows.append(("default (NCDHW)", t_ref, 0.0))
    cl = copy.deepcopy(net).to(memory_format=torch.channels_last_3d)
    t_cl, out_cl = step_time(cl, x, y, args.repeats)
    rows.append(("channels_last_3d", t_cl, float((out_cl - out_ref).abs().max())))
    print(f"SwinUNETR {args.encoder}, patch {args.patch}, batch {args.batch}, {torch.get_num_threads()} thread(s), "
          f"malloc {malloc}")
    print(f"| layout | step s (median of {args.repeats}) | x default | max output difference |")
    print("|---|---|---|---|")
    for name, t, diff in rows:
        print(f"| {name} | {t:.2f} | {t / t_ref:.2f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
