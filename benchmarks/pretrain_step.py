#!/usr/bin/env python
"""Per-method pretraining step cost: time, peak memory, ratio to the bare encoder, FLOPs and (GPU) MFU.

For every method of the registry whose module imports (others are listed as skipped), every encoder preset and
crop size asked for, it times the training step the loop runs (forward + backward + AdamW step + on_step_end, with
the views already built; view building is timed separately) and compares it with a bare encoder forward + backward
+ AdamW step on the same input (loss = sum of the means of the five encoder outputs).

CPU malloc: ``--malloc keep`` (the default) runs with glibc's malloc keeping freed memory, as nnssl_pretrain and
the fine-tuning trainers do on the CPU (nnssl.cpu_memory); ``--malloc system`` measures the baseline of glibc's own
settings, which map and zero the large tensors again every step.

Memory: on CUDA torch.cuda.max_memory_allocated over the timed steps (reset per configuration). On CPU each
configuration runs in a forked child process and the peak is the growth of resource.getrusage().ru_maxrss (peak
resident set size) from the child's start to the end of its steps; it includes the model, optimiser state and the
allocator's slack, so read it as an upper bound.

Network passes: ``count_passes_meta`` counts, on the meta device, the bare encoder passes a step needs: each Swin
encoder call its voxel share of the crops, weighted 1 when trained and by a bare forward's FLOP share (about 1/3)
when forward-only (teachers, momentum encoders), plus the heads', decoders' and losses' FLOPs in bare-pass units.
``passes`` is their sum and ``x passes`` the step time over ``passes`` bare steps: the overhead beyond the method's
own network work (1.0 = none), next to ``x bare enc``, the step time over one bare step.

FLOPs: torch.utils.flop_counter over one step (matmul/conv FLOPs of forward + backward; attention softmax and
elementwise ops are not counted). MFU = FLOPs per step / step time / peak FLOP/s of the device (GPU only; pass
--peak-tflops for devices not in the built-in table).

Example:
    python benchmarks/pretrain_step.py --encoder tiny,small --crop 32,64 --batch 2
    python benchmarks/pretrain_step.py --device cuda --encoder base --crop 96 --batch 2 --amp bf16
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from nnssl.cpu_memory import ENV, keep_freed_memory  # noqa: E402
from nnssl.encoders.swin import PRESETS, EncoderConfig, SwinEncoder  # noqa: E402
# method_names(): the registry's full list, so that methods whose module does not import are reported, not hidden
from nnssl.tasks import config_from_overrides, get_task_class, method_names  # noqa: E402

#: Dense peak TFLOP/s (bf16 / tf32-or-fp32) by device-name fragment, for the MFU column.
PEAK_TFLOPS = {"H200": (989.0, 494.0), "H100": (989.0, 494.0), "A100": (312.0, 156.0), "L40S": (362.0, 183.0),
               "A10": (125.0, 62.5), "V100": (125.0, 15.7)}


@dataclass
class Row:
    method: str
    encoder: str
    crop: int
    batch: int
    step_ms: float | None = None
    views_ms: float | None = None
    bare_ms: float | None = None
    peak_mib: float | None = None
    bare_peak_mib: float | None = None
    gflop: float | None = None
    mfu: float | None = None
    passes: float | None = None  # bare encoder passes the step needs (count_passes_meta)
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _parse_list(text: str, cast: Callable[[str], Any]) -> list[Any]:
    return [cast(t.strip()) for t in text.split(",") if t.strip()]


def _method_overrides(cls: type, overrides: dict[str, str]) -> Any:
    """Apply the -o options a method's Config knows; the others are for other methods."""
    fields = set(cls.Config.__dataclass_fields__)
    return config_from_overrides(cls.Config, {k: v for k, v in overrides.items() if k in fields})


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _to(views: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in views.items()}


def _count_flops(fn: Callable[[], None]) -> float | None:
    try:
        from torch.utils.flop_counter import FlopCounterMode
    except ImportError:  # pragma: no cover
        return None
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())


def _time_steps(step: Callable[[], None], device: torch.device, warmup: int, steps: int) -> list[float]:
    for _ in range(warmup):
        step()
    _sync(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def _measure(method: str | None, encoder_name: str, crop: int, batch: int, args: argparse.Namespace,
             overrides: dict[str, str]) -> dict[str, Any]:
    """One configuration: returns step/view times (s), peak memory (bytes), FLOPs. ``method=None``: bare encoder."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    encoder = SwinEncoder(EncoderConfig.preset(encoder_name, use_checkpoint=args.grad_checkpointing))
    crops = torch.randn(batch, 1, crop, crop, crop)
    gen = torch.Generator().manual_seed(0)
    amp = args.amp == "bf16" and device.type == "cuda"
    total = args.warmup + args.steps + 1
    out: dict[str, Any] = {}

    if method is None:
        model = encoder.to(device)
        x = crops.to(device)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4)

        def step() -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                feats = model(x)
                loss = sum(f.float().mean() for f in feats)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    else:
        cls = get_task_class(method)
        task = cls(encoder, _method_overrides(cls, overrides)).to(device)
        task.setup(total)
        task.train()
        t0 = time.perf_counter()
        views = task.make_views(crops, gen)
        out["views_s"] = time.perf_counter() - t0
        views = _to(views, device)
        params = [p for p in task.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4)
        counter = {"step": 0}

        def step() -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = task(views, counter["step"])["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            task.on_step_end(counter["step"])
            counter["step"] += 1

    times = _time_steps(step, device, args.warmup, args.steps)
    out["step_s"] = statistics.median(times)
    if device.type == "cuda":
        out["peak_bytes"] = torch.cuda.max_memory_allocated(device)
    else:
        out["peak_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_start
    if not args.no_flops:
        out["flops"] = _count_flops(step)
    return out


def count_flops_meta(method: str | None, encoder_name: str, crop: int, batch: int,
                     overrides: dict[str, str]) -> tuple[float, float, float]:
    """FLOPs of one forward + backward on the meta device (no memory, no time), trainable parameters, and an
    estimate of the training memory in bytes.

    The model is built on the CPU, moved to the meta device, and the views (built on the CPU) follow it; the
    optimiser step is not counted. The memory estimate (fp32, no AMP) adds the bytes of every tensor autograd saves
    for backward during the forward (an upper bound: tensors saved by several operations count each time) to
    16 bytes per trainable parameter (weight, gradient, two AdamW moments) and 4 bytes per frozen one (teachers).
    Returns (FLOPs, trainable parameters, estimated bytes).
    """
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    encoder = SwinEncoder(EncoderConfig.preset(encoder_name))
    crops = torch.randn(batch, 1, crop, crop, crop)
    if method is None:
        model: torch.nn.Module = encoder.to("meta")

        def run() -> None:
            sum(f.mean() for f in model(crops.to("meta"))).backward()
    else:
        cls = get_task_class(method)
        model = cls(encoder, _method_overrides(cls, overrides))
        model.setup(2)
        model.train()
        views = model.make_views(crops, torch.Generator().manual_seed(0))
        model = model.to("meta")
        meta_views = {k: v.to("meta") for k, v in views.items()}

        def run() -> None:
            model(meta_views, 0)["loss"].backward()
    saved = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[0] += t.numel() * t.element_size()
        return t

    counter = FlopCounterMode(display=False)
    with counter, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    memory = saved[0] + 16 * params + 4 * frozen
    return float(counter.get_total_flops()), float(params), float(memory)


def _meta_task(method: str, encoder_name: str, crop: int, batch: int, overrides: dict[str, str]) -> tuple[Any, Any]:
    """The task on the meta device and its views of one step (built on the CPU, moved along)."""
    torch.manual_seed(0)
    cls = get_task_class(method)
    model = cls(SwinEncoder(EncoderConfig.preset(encoder_name)), _method_overrides(cls, overrides))
    model.setup(2)
    model.train()
    views = model.make_views(torch.randn(batch, 1, crop, crop, crop), torch.Generator().manual_seed(0))
    return model.to("meta"), {k: v.to("meta") for k, v in views.items()}


def count_passes_meta(method: str, encoder_name: str, crop: int, batch: int,
                      overrides: dict[str, str]) -> dict[str, float]:
    """How many bare encoder passes (forward + backward on the step's crops) one step of ``method`` costs.

    Every call of a Swin encoder (MONAI ``SwinTransformer``) inside the task during one forward + backward on the meta
    device counts its input's voxel share of the crops (a local crop of a third of the edge: 1/27), weighted 1 when it
    is trained (gradients enabled and its parameters trainable) and, when it is forward-only (a teacher, a momentum
    encoder), by the FLOP ratio of a bare forward to a bare forward + backward (about 1/3). Heads, decoders, predictors
    and losses count as the step's FLOPs outside those encoder passes (encoder FLOPs taken as proportional to the
    voxels), in bare-pass units. Returns ``passes`` (encoder + heads), ``encoder`` and ``heads``, and ``calls``.
    """
    from monai.networks.nets.swin_unetr import SwinTransformer
    from torch.utils.flop_counter import FlopCounterMode

    bare = count_flops_meta(None, encoder_name, crop, batch, overrides)[0]
    enc = SwinEncoder(EncoderConfig.preset(encoder_name)).to("meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        enc(torch.randn(batch, 1, crop, crop, crop, device="meta"))
    forward_only = float(counter.get_total_flops()) / bare

    model, views = _meta_task(method, encoder_name, crop, batch, overrides)
    calls: list[tuple[float, bool]] = []

    def record(module: torch.nn.Module, args: tuple) -> None:
        x = args[0]
        share = x.shape[0] * float(torch.tensor(x.shape[2:]).prod()) / (batch * crop**3)
        trained = torch.is_grad_enabled() and any(p.requires_grad for p in module.parameters())
        calls.append((share, trained))

    handles = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, SwinTransformer)]
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            model(views, 0)["loss"].backward()
    finally:
        for h in handles:
            h.remove()
    encoder = sum(share * (1.0 if trained else forward_only) for share, trained in calls)
    heads = max(float(counter.get_total_flops()) / bare - encoder, 0.0)
    return {"passes": encoder + heads, "encoder": encoder, "heads": heads, "calls": float(len(calls))}


def flops_only(methods: list[str], encoders: list[str], crops: list[int], args: argparse.Namespace,
               overrides: dict[str, str]) -> None:
    """Print FLOPs per step and their ratio to the bare encoder for every configuration (meta device)."""
    header = ["method", "encoder", "crop", "batch", "GFLOP/step (fwd+bwd)", "x bare enc", "passes (enc + heads)",
              "trainable M params", "est. GiB (fp32)", "note"]
    table = []
    gib = 2.0**30
    for enc in encoders:
        for crop in crops:
            bare, bare_params, bare_mem = count_flops_meta(None, enc, crop, args.batch, overrides)
            table.append(["(bare encoder)", enc, str(crop), str(args.batch), f"{bare / 1e9:.1f}", "1.00", "1.00",
                          f"{bare_params / 1e6:.1f}", f"{bare_mem / gib:.1f}", ""])
            for method in methods:
                try:
                    flops, params, mem = count_flops_meta(method, enc, crop, args.batch, overrides)
                    p = count_passes_meta(method, enc, crop, args.batch, overrides)
                    table.append([method, enc, str(crop), str(args.batch), f"{flops / 1e9:.1f}",
                                  f"{flops / bare:.2f}", f"{p['passes']:.2f} ({p['encoder']:.2f} + {p['heads']:.2f})",
                                  f"{params / 1e6:.1f}", f"{mem / gib:.1f}", ""])
                except Exception as exc:  # e.g. a crop too small for the method
                    table.append([method, enc, str(crop), str(args.batch), "-", "-", "-", "-", "-",
                                  f"{type(exc).__name__}: {exc}".splitlines()[0][:160]])
                print(f"# counted {method} {enc} {crop}^3", file=sys.stderr, flush=True)
    widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(header)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in table:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")


def _child(queue: Any, fn: Callable[..., Any], *payload: Any) -> None:
    try:
        queue.put(("ok", fn(*payload)))
    except Exception as exc:  # reported as a row note, the benchmark goes on
        queue.put(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"))


def in_child(fn: Callable[..., Any], args: argparse.Namespace, *payload: Any) -> Any:
    """``fn(*payload)`` in a forked child on CPU, in process on CUDA or with ``--in-process``.

    On the CPU the parent runs no torch kernel at all: a parent whose OpenMP thread pool has started hands a broken
    pool to every later fork (the child then waits forever in libgomp's barrier), so the pass counts run in children
    too."""
    if args.device == "cuda" or args.in_process:
        return fn(*payload)
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, fn, *payload))
    proc.start()
    status, value = queue.get()
    proc.join()
    if status == "error":
        raise RuntimeError(value)
    return value


def measure(method: str | None, encoder_name: str, crop: int, batch: int, args: argparse.Namespace,
            overrides: dict[str, str]) -> dict[str, Any]:
    """Run ``_measure`` in a forked child on CPU (fresh peak-RSS counter), in process on CUDA."""
    return in_child(_measure, args, method, encoder_name, crop, batch, args, overrides)


def _apply_malloc(args: argparse.Namespace) -> str:
    """Apply ``--malloc`` on the CPU (nnssl.cpu_memory, as the training loop does); returns what is in effect."""
    if args.device != "cpu":
        return "n/a (CUDA)"
    os.environ[ENV] = args.malloc
    return "keep" if keep_freed_memory() else "system"


def _peak_tflops(args: argparse.Namespace) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    if args.device != "cuda":
        return None
    name = torch.cuda.get_device_name(0)
    for key, (bf16, fp32) in PEAK_TFLOPS.items():
        if key in name:
            return bf16 if args.amp == "bf16" else fp32
    return None


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: list[Row], args: argparse.Namespace) -> None:
    mem_label = "peak MiB (cuda alloc)" if args.device == "cuda" else "peak MiB (maxRSS delta)"
    header = ["method", "encoder", "crop", "batch", "step ms", "views ms", "x bare enc", "passes", "x passes",
              mem_label, "x bare mem", "GFLOP/step", "MFU %", "note"]
    table = []
    for r in rows:
        ratio = r.step_ms / r.bare_ms if r.step_ms and r.bare_ms else None
        per_pass = r.step_ms / (r.passes * r.bare_ms) if r.step_ms and r.bare_ms and r.passes else None
        mem_ratio = r.peak_mib / r.bare_peak_mib if r.peak_mib and r.bare_peak_mib else None
        table.append([r.method, r.encoder, str(r.crop), str(r.batch), _fmt(r.step_ms, ".1f"), _fmt(r.views_ms, ".1f"),
                      _fmt(ratio, ".2f"), _fmt(r.passes, ".2f"), _fmt(per_pass, ".2f"), _fmt(r.peak_mib, ".0f"), _fmt(mem_ratio, ".2f"), _fmt(r.gflop, ".1f"),
                      _fmt(r.mfu, ".1f"), r.note])
    widths = [max(len(h), *(len(row[i]) for row in table)) if table else len(h) for i, h in enumerate(header)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in table:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="all",
                   help="comma-separated method names, or 'all' (every registered method whose module imports)")
    p.add_argument("--encoder", default="tiny",
                   help=f"comma-separated encoder presets ({', '.join(PRESETS)}); default tiny")
    p.add_argument("--crop", default="32", help="comma-separated cubic crop edges, multiples of 32 (e.g. 32,64,96)")
    p.add_argument("--batch", type=int, default=2, help="crops per step (default 2)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per configuration; the median is reported")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before timing (allocator, cudnn autotune)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default cpu)")
    p.add_argument("--amp", choices=("none", "bf16"), default="none",
                   help="bf16 autocast on CUDA as the training loop uses it (ignored on CPU)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave torch's default)")
    p.add_argument("--grad-checkpointing", action="store_true", help="encoder with gradient checkpointing")
    p.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                   help="task option applied to every method whose Config has KEY (e.g. -o out_dim=4096 to shrink "
                        "DINO/iBOT/SMIT heads); repeatable")
    p.add_argument("--peak-tflops", type=float, default=0.0,
                   help="peak TFLOP/s of the device for MFU (default: built-in table for H100/H200/A100/...)")
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP count (one extra step per configuration)")
    p.add_argument("--flops-only", action="store_true",
                   help="only count FLOPs per step on the meta device (no time, no memory): large encoders and crops "
                        "on any machine")
    p.add_argument("--malloc", choices=("keep", "system"), default="keep",
                   help="CPU: 'keep' freed memory in the process as training does (nnssl.cpu_memory) or leave "
                        "glibc's 'system' malloc settings, the baseline (default: keep)")
    p.add_argument("--in-process", action="store_true",
                   help="CPU: measure in this process instead of a forked child (memory column then unreliable)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        encoders = _parse_list(args.encoder, str)
        crops = _parse_list(args.crop, int)
        for e in encoders:
            if e not in PRESETS:
                raise ValueError(f"unknown encoder preset {e!r}; choose from {', '.join(PRESETS)}")
        for c in crops:
            if c < 32 or c % 32:
                raise ValueError(f"crop {c} is not a positive multiple of 32 (Swin needs that): use 32, 64, 96, ...")
        if args.batch < 1 or args.steps < 1 or args.warmup < 0:
            raise ValueError("--batch and --steps must be >= 1 and --warmup >= 0")
        if args.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda but no CUDA device is visible: use --device cpu")
        overrides = {}
        for item in args.option:
            if "=" not in item:
                raise ValueError(f"option {item!r} is not KEY=VALUE")
            k, v = item.split("=", 1)
            overrides[k.strip()] = v.strip()
    except ValueError as exc:
        parser.exit(2, f"error: {exc}\n")
    if args.threads:
        torch.set_num_threads(args.threads)
    malloc = _apply_malloc(args)  # before the children fork: they inherit it
    # Import MONAI before forking the measuring children: its import memory must not count as a step's memory.
    import monai.networks.nets.swin_unetr  # noqa: F401

    names = method_names() if args.methods == "all" else _parse_list(args.methods, str)
    methods, skipped = [], []
    for name in names:
        try:
            get_task_class(name)
            methods.append(name)
        except ImportError as exc:
            skipped.append(f"{name} (module does not import: {exc})")
        except ValueError as exc:
            parser.exit(2, f"error: {exc}\n")

    if skipped:
        print("# skipped: " + "; ".join(skipped))
    if args.flops_only:
        print(f"# FLOPs of one forward + backward (torch.utils.flop_counter: matmuls and convolutions), meta device; "
              f"batch {args.batch}")
        flops_only(methods, encoders, crops, args, overrides)
        return 0
    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else f"CPU, {torch.get_num_threads()} thread(s)"
    print(f"# pretrain step benchmark on {device_name}; torch {torch.__version__}; batch {args.batch}; "
          f"median of {args.steps} steps after {args.warmup} warm-up; "
          f"amp {args.amp if args.device == 'cuda' else 'none'}; malloc {malloc}")
    if skipped:
        print("# skipped: " + "; ".join(skipped))
    peak = _peak_tflops(args)
    rows: list[Row] = []
    for enc in encoders:
        for crop in crops:
            bare = measure(None, enc, crop, args.batch, args, overrides)
            bare_ms, bare_mib = bare["step_s"] * 1e3, bare["peak_bytes"] / 2**20
            rows.append(Row("(bare encoder)", enc, crop, args.batch, step_ms=bare_ms, bare_ms=bare_ms, passes=1.0,
                            peak_mib=bare_mib, bare_peak_mib=bare_mib,
                            gflop=bare.get("flops", 0) / 1e9 if bare.get("flops") else None,
                            mfu=100 * bare["flops"] / bare["step_s"] / (peak * 1e12) if peak and bare.get("flops")
                            else None))
            for method in methods:
                row = Row(method, enc, crop, args.batch, bare_ms=bare_ms, bare_peak_mib=bare_mib)
                try:
                    r = measure(method, enc, crop, args.batch, args, overrides)
                    row.passes = in_child(count_passes_meta, args, method, enc, crop, args.batch,
                                          overrides)["passes"]
                    row.step_ms, row.views_ms = r["step_s"] * 1e3, r["views_s"] * 1e3
                    row.peak_mib = r["peak_bytes"] / 2**20
                    if r.get("flops"):
                        row.gflop = r["flops"] / 1e9
                        if peak:
                            row.mfu = 100 * r["flops"] / r["step_s"] / (peak * 1e12)
                except Exception as exc:  # e.g. a crop too small for the method's mask cubes
                    row.note = str(exc).splitlines()[0][:160]
                rows.append(row)
                print(f"# done {method} {enc} {crop}^3", file=sys.stderr, flush=True)
    print_table(rows, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
