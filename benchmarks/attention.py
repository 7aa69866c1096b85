#!/usr/bin/env python
"""Window attention per Swin stage: MONAI's eager path against nnssl's SDPA path (nnssl.encoders.attention).

For every encoder preset and crop asked for it builds, per stage, one window-attention module with that stage's
channels and heads, feeds it the windows the stage's shifted block attends over (batch x windows of the padded token
grid, MONAI's clipped window size, the shift mask where the grid is larger than the window) and times forward +
backward of both paths on the same input and weights. It also reports the largest difference of outputs and input
gradients between the two paths (fp32 on CPU). The ``--attention auto`` table of nnssl.encoders.attention comes from
this benchmark.

Example:
    python benchmarks/attention.py --encoder tiny --crop 64 --batch 2
    python benchmarks/attention.py --device cuda --encoder base --crop 96 --batch 2
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from monai.networks.nets.swin_unetr import WindowAttention  # noqa: E402

from nnssl.cpu_memory import ENV, keep_freed_memory  # noqa: E402
from nnssl.encoders.attention import STAGES, SDPAWindowAttention  # noqa: E402
from nnssl.encoders.swin import PRESETS  # noqa: E402


def stage_windows(crop: int, window: int, stage: int) -> tuple[int, int, bool]:
    """(windows per image, tokens per window, shifted) of stage ``stage`` (1-4) at a cubic ``crop``."""
    grid = crop // 2**stage
    w = min(window, grid)  # MONAI's get_window_size: a grid not larger than the window is one window, no shift
    per_axis = math.ceil(grid / w)
    return per_axis**3, w**3, grid > window


def time_ms(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(1e3 * (time.perf_counter() - t))
    return statistics.median(times)


def bench(preset: str, crop: int, batch: int, repeats: int, device: torch.device) -> list[dict]:
    cfg = PRESETS[preset]
    rows = []
    for stage in range(1, STAGES + 1):
        nw, n, shifted = stage_windows(crop, cfg.window_size, stage)
        dim, heads = cfg.feature_size * 2 ** (stage - 1), cfg.num_heads[stage - 1]
        w = min(cfg.window_size, crop // 2**stage)
        torch.manual_seed(stage)
        eager = WindowAttention(dim, heads, (w,) * 3, qkv_bias=True).to(device)
        with torch.no_grad():
            eager.relative_position_bias_table.normal_()
        sdpa = copy.deepcopy(eager)
        sdpa.__class__ = SDPAWindowAttention
        x = torch.randn(batch * nw, n, dim, device=device)
        mask = None
        if shifted:
            region = torch.randint(0, 8, (nw, n), device=device)
            mask = torch.where(region[:, :, None] == region[:, None, :], 0.0, -100.0)

        def step(module):
            xi = x.clone().requires_grad_()
            module(xi, mask).sum().backward()
            return xi

        row = {"encoder": preset, "crop": crop, "stage": stage, "windows": batch * nw, "tokens": n,
               "eager_ms": time_ms(lambda: step(eager), repeats, device),
               "sdpa_ms": time_ms(lambda: step(sdpa), repeats, device)}
        xe, xs = x.clone().requires_grad_(), x.clone().requires_grad_()
        ye, ys = eager(xe, mask), sdpa(xs, mask)
        ye.sum().backward()
        ys.sum().backward()
        row["max_diff"] = max((ye - ys).abs().max().item(), (xe.grad - xs.grad).abs().max().item())
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--encoder", default="tiny", help="comma-separated presets (%s)" % ", ".join(PRESETS))
    p.add_argument("--crop", default="64", help="comma-separated cubic crop sizes")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--malloc", choices=("keep", "system"), default="keep",
                   help="CPU: 'keep' freed memory in the process as training does (nnssl.cpu_memory) or leave glibc's "
                        "'system' malloc settings, the baseline (default: keep)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    malloc = "n/a"
    if device.type == "cpu":
        os.environ[ENV] = args.malloc
        malloc = "keep" if keep_freed_memory() else "system"
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} thread(s), batch {args.batch}, "
          f"median of {args.repeats}, forward + backward, malloc {malloc}")
    print("| encoder | crop | stage | windows x tokens | eager ms | SDPA ms | SDPA / eager | max diff |")
    print("|---|---|---|---|---|---|---|---|")
    for preset in args.encoder.split(","):
        for crop in (int(c) for c in args.crop.split(",")):
            for r in bench(preset, crop, args.batch, args.repeats, device):
                print(f"| {r['encoder']} | {r['crop']} | {r['stage']} | {r['windows']} x {r['tokens']} | "
                      f"{r['eager_ms']:.1f} | {r['sdpa_ms']:.1f} | {r['sdpa_ms'] / r['eager_ms']:.2f} | "
                      f"{r['max_diff']:.1e} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
