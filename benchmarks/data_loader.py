"""Does the pretraining data loader keep the device busy? Crops/s of the crop loader against each method's step.

    python benchmarks/data_loader.py -d 900 --crop 96 --batch 2 --workers 0,1,2,4 --method smit,dino,mae \
        --encoder base --device cuda

For each worker count it times ``--batches`` batches of ``nnssl.data.preprocessed.RandomCropDataset`` (reading
nnU-Net's blosc2 cases, cropping, re-drawing crops of background) through a DataLoader, and prints crops/s next to
the crops/s one training step of each ``--method`` consumes (measured on ``--device`` with the same crop and batch:
forward, backward and an AdamW step, the views built beforehand as the loader's workers build them). It then times
the loop's own loader (``nnssl.training.batches.make_step_loader``), whose workers also build each method's views,
and prints its crops/s over that method's step: what nnssl_pretrain's workers actually supply. A loader slower than
a step leaves the device waiting: raise ``--num-workers`` of nnssl_pretrain.

The rates are measured with the loader alone on the machine; during training the workers share the CPU with the
step, which the step anatomy of a real run shows (``benchmarks/step_anatomy.py``).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from torch.utils.data import DataLoader

from nnssl.nnunet.naming import SWIN_PLANS


def loader_rate(dataset, batch: int, workers: int, batches: int) -> float:
    """Samples per second over ``batches`` batches after one warm-up batch (worker start-up excluded)."""
    from nnssl.data.preprocessed import StepSampler

    loader = DataLoader(dataset, batch_size=batch, sampler=StepSampler(0, batches + 1, batch),
                        num_workers=workers, prefetch_factor=4 if workers else None)
    it = iter(loader)
    next(it)
    start = time.perf_counter()
    n = sum(b.shape[0] for b in it)
    return n / (time.perf_counter() - start)


def view_loader_rate(dataset, method: str, encoder: str, batch: int, workers: int, batches: int) -> float:
    """Crops per second of the loop's loader with ``method``'s views built in its ``workers`` (in this process with
    0 workers), over ``batches`` steps after one warm-up step."""
    from nnssl.encoders.swin import EncoderConfig, SwinEncoder
    from nnssl.tasks import get_task_class
    from nnssl.training.batches import make_step_loader

    cls = get_task_class(method)
    task = cls(SwinEncoder(EncoderConfig.preset(encoder)), cls.Config())
    steps = make_step_loader(dataset, task.view_fn(), task.make_views, seed=0, start_step=0, total_steps=batches + 1,
                             batch_size=batch, num_workers=workers, prefetch_factor=4)
    it = iter(steps.loader)
    steps.views(next(it), 0)
    start = time.perf_counter()
    for step, item in enumerate(it, start=1):
        steps.views(item, step)
    return batch * batches / (time.perf_counter() - start)


def step_rate(method: str, encoder: str, crop: int, batch: int, device: str, steps: int) -> float:
    """Crops per second one training step of the method consumes (median step time)."""
    from nnssl.encoders.swin import EncoderConfig, SwinEncoder
    from nnssl.tasks import get_task_class

    cls = get_task_class(method)
    task = cls(SwinEncoder(EncoderConfig.preset(encoder)), cls.Config()).to(device)
    task.setup(steps + 2)
    task.train()
    opt = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=1e-4)
    crops = torch.randn(batch, 1, crop, crop, crop)
    times = []
    for step in range(steps + 1):
        views = {k: v.to(device) for k, v in task.make_views(crops, torch.Generator().manual_seed(step)).items()}
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        opt.zero_grad()
        task(views, step)["loss"].backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times[1:])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--datasets", nargs="+", required=True, help="preprocessed dataset ids")
    p.add_argument("-p", "--plans", default=SWIN_PLANS, help="plans identifier (default: %(default)s)")
    p.add_argument("--crop", type=int, default=96, help="cubic crop size (default: %(default)s)")
    p.add_argument("--batch", type=int, default=2, help="batch size (default: %(default)s)")
    p.add_argument("--workers", default="0,1,2", help="comma-separated worker counts (default: %(default)s)")
    p.add_argument("--batches", type=int, default=20, help="batches timed per worker count (default: %(default)s)")
    p.add_argument("--method", default="smit",
                   help="comma-separated methods whose step consumption is compared (default: %(default)s)")
    p.add_argument("--encoder", default="base", help="encoder preset for the step (default: %(default)s)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=3, help="timed training steps (default: %(default)s)")
    p.add_argument("--no-step", action="store_true", help="only time the loader")
    args = p.parse_args(argv)

    from nnssl.cpu_memory import keep_freed_memory
    from nnssl.data.preprocessed import RandomCropDataset, find_sources

    if args.device == "cpu":
        keep_freed_memory()  # as the training loop runs on the CPU (nnssl.cpu_memory)

    try:
        dataset = RandomCropDataset(find_sources(args.datasets, args.plans), (args.crop,) * 3)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    methods = [] if args.no_step else [m.strip() for m in args.method.split(",") if m.strip()]
    consumption = {m: step_rate(m, args.encoder, args.crop, args.batch, args.device, args.steps) for m in methods}
    print(f"# crop {args.crop}^3, batch {args.batch}, {len(dataset.cases)} cases; steps of {args.encoder} on "
          f"{args.device}: " + (", ".join(f"{m} consumes {c:.2f} crops/s" for m, c in consumption.items())
                                or "not measured"))
    print("| workers | loader crops/s | " + " | ".join(f"loader / {m} step" for m in methods) + " |")
    print("|---|---|" + "---|" * len(methods))
    worker_counts = [int(w) for w in args.workers.split(",")]
    for workers in worker_counts:
        rate = loader_rate(dataset, args.batch, workers, args.batches)
        print(f"| {workers} | {rate:.1f} | " + " | ".join(f"{rate / c:.1f}x" for c in consumption.values()) + " |",
              flush=True)
    if methods:
        print()
        print("| workers | " + " | ".join(f"{m}: crops/s with views, / its step" for m in methods) + " |")
        print("|---|" + "---|" * len(methods))
        for workers in worker_counts:
            cells = []
            for m in methods:
                rate = view_loader_rate(dataset, m, args.encoder, args.batch, workers, args.batches)
                cells.append(f"{rate:.1f} ({rate / consumption[m]:.1f}x)")
            print(f"| {workers} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
