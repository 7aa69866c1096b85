"""The one pretraining loop shared by every pretext task.

It owns the mechanics the tasks do not: data, optimiser and schedules (precomputed per global step), AMP on CUDA,
gradient clipping, a NaN/Inf guard, DDP through torchrun, progress bar, JSON-lines log and loss plot, atomic
checkpoints and exact resume (model, teacher, optimiser, scaler, loss state, step, RNG; the data stream and the views
are pure functions of the step, so a resumed run sees the same crops and views as an uninterrupted one).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from nnssl.checkpoint import load_checkpoint, save_checkpoint
from nnssl.data.preprocessed import PreprocessedSource, RandomCropDataset, StepSampler, find_sources
from nnssl.encoders.swin import EncoderConfig, SwinEncoder, check_swin_input_size
from nnssl.nnunet.environment import nnssl_results_root
from nnssl.nnunet.naming import CONFIGURATION, SWIN_PLANS
from nnssl.recipes import OptimRecipe, ResolvedOptim
from nnssl.tasks import PretextTask, config_from_overrides, get_task_class
from nnssl.training.distributed import DistInfo, cleanup_distributed, init_distributed
from nnssl.training.log import TrainingLog
from nnssl.training.optim import clip_gradients, make_optimizer, make_schedules

#: Settings that may differ between a run and its resumption (they do not change the optimisation).
RESUME_MUTABLE = {"device", "num_workers", "checkpoint_every", "progress", "amp"}


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class PretrainConfig:
    """Everything that defines a pretraining run (saved as config.json beside the checkpoints)."""

    method: str
    datasets: list[str]
    plans: str = SWIN_PLANS
    configuration: str = CONFIGURATION
    encoder: str = "base"
    crop: tuple[int, int, int] = (96, 96, 96)
    batch_size: int = 2
    steps: int = 1000
    # Optimisation: None = the method's reference recipe (nnssl.recipes; `nnssl_pretrain --show-config`).
    lr: float | None = None
    min_lr: float | None = None
    warmup_steps: int | None = None
    weight_decay: float | None = None
    weight_decay_end: float | None = None
    clip_grad: float | None = None
    betas: tuple[float, float] | None = None
    grad_checkpointing: bool = False
    amp: bool = True
    device: str = "cuda"
    num_workers: int = 2
    seed: int = 0
    checkpoint_every: int = 500
    task_options: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.crop = tuple(int(c) for c in self.crop)  # type: ignore[assignment]
        self.datasets = [str(d) for d in self.datasets]
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch size must be >= 1")
        if self.betas is not None:
            self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        for name, positive in (("lr", True), ("min_lr", False), ("weight_decay", False), ("weight_decay_end", False),
                               ("clip_grad", False)):
            value = getattr(self, name)
            if value is not None and (not math.isfinite(value) or value < 0 or (positive and value == 0)):
                raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value}")
        if self.warmup_steps is not None and not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"warmup_steps={self.warmup_steps} must lie in [0, steps={self.steps})")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but no CUDA device is visible: use --device cpu")
        check_swin_input_size(self.crop)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["crop"] = list(self.crop)
        if self.betas is not None:
            d["betas"] = list(self.betas)
        return d

    def resolve_optim(self, recipe: OptimRecipe, world_size: int = 1) -> ResolvedOptim:
        """The method's recipe at this run's global batch, with the settings given explicitly applied."""
        return recipe.resolve(self.batch_size * world_size, self.steps, lr=self.lr, min_lr=self.min_lr,
                              warmup_steps=self.warmup_steps, weight_decay=self.weight_decay,
                              weight_decay_end=self.weight_decay_end, clip_grad=self.clip_grad, betas=self.betas)


def default_output_dir(cfg: PretrainConfig) -> Path:
    """$nnssl_results/<method>__<encoder>__D<ids>, or beside nnU-Net's results when nnssl_results is unset."""
    root = nnssl_results_root()
    if root is None:
        raise ValueError("set nnssl_results (or nnUNet_results) or pass --output: nowhere to write the run")
    datasets = "-".join(str(d) for d in cfg.datasets)
    return Path(root) / f"{cfg.method}__{cfg.encoder}__D{datasets}"


def build_task(cfg: PretrainConfig, in_channels: int) -> PretextTask:
    """The task with its encoder; identical weights on every rank (seeded)."""
    task_cls = get_task_class(cfg.method)
    task_cfg = config_from_overrides(task_cls.Config, cfg.task_options)
    enc_cfg = EncoderConfig.preset(cfg.encoder, in_channels=in_channels, use_checkpoint=cfg.grad_checkpointing)
    torch.manual_seed(cfg.seed)
    task = task_cls(SwinEncoder(enc_cfg), task_cfg)
    if not task_cls.uses_mask_token:
        task.student.mask_token.requires_grad_(False)  # unused: keep it out of the optimiser and of DDP
    return task


def startup_warnings(cfg: PretrainConfig, task: PretextTask, world_size: int = 1) -> list[str]:
    """What the run should know before it starts: crop sizes below the method's recommendation (sizes it cannot run
    on raise ValueError) and too few contrastive negatives at this global batch."""
    warnings = list(type(task).check_crop(tuple(cfg.crop), task.cfg))
    cls = type(task)
    recommended = cls.recommended_batch
    batch = cfg.batch_size * world_size if cls.gathers_negatives else cfg.batch_size
    if recommended and batch < recommended:
        negatives = task.negatives_per_anchor(cfg.batch_size, world_size)
        where = (f"a global batch of {batch} (--batch-size {cfg.batch_size} x {world_size} process(es))"
                 if cls.gathers_negatives else f"--batch-size {cfg.batch_size} (its loss uses each process's own "
                                                "batch: more GPUs add no negatives)")
        fix = "Raise --batch-size or train on more GPUs (torchrun), which gathers negatives across ranks" \
            if cls.gathers_negatives else "Raise --batch-size"
        warnings.append(
            f"{cfg.method} scores each anchor against {negatives} negative(s) at {where}; its page recommends at "
            f"least {recommended} crops, below which intensity statistics alone can pick the positive. {fix}")
    return warnings


def describe_run(cfg: PretrainConfig, world_size: int = 1) -> str:
    """The method's settings for ``--show-config``: its reference recipe resolved at this batch, and its options."""
    task_cls = get_task_class(cfg.method)
    task_cfg = config_from_overrides(task_cls.Config, cfg.task_options)
    optim = cfg.resolve_optim(task_cls.recipe, world_size)
    lines = [f"{cfg.method}: {task_cls.paper}",
             f"optimisation at a global batch of {cfg.batch_size * world_size} over {cfg.steps} steps "
             f"(recipe: {task_cls.recipe.source}; base lr {task_cls.recipe.base_lr:g}"
             + (f" per {task_cls.recipe.reference_batch} crops)" if task_cls.recipe.reference_batch else ", absolute)"),
             optim.describe(), "method options (-o KEY=VALUE):"]
    lines += [f"  {k:<28} {v!r}" for k, v in dataclasses.asdict(task_cfg).items()]
    return "\n".join(lines)


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _views_generator(seed: int, step: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 1_009 + rank) % (2**63 - 1))


def _to_device(views: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in views.items()}


def _check_resumable(saved: dict[str, Any], cfg: PretrainConfig) -> None:
    current = cfg.to_dict()
    differing = sorted(k for k in current if k not in RESUME_MUTABLE and saved.get(k) != current[k])
    if differing:
        detail = "; ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {current[k]!r}" for k in differing)
        raise ValueError(f"cannot resume: the run was started with other settings ({detail}). Resume with the same "
                         "settings, or start a new run in another --output folder")


def _provenance(sources: list[PreprocessedSource]) -> dict[str, Any]:
    return {
        "datasets": [s.provenance() for s in sources],
        "normalization": {
            "schemes": sorted({scheme for s in sources for scheme in s.normalization_schemes}),
            "intensity_properties": {s.dataset_name: s.intensity_properties for s in sources},
        },
    }


def run_pretraining(cfg: PretrainConfig, out_dir: str | os.PathLike | None = None, resume: bool = False,
                    progress: bool = True) -> Path:
    """Pretrain ``cfg.method``; returns the final checkpoint's path. Launch under torchrun for DDP."""
    info = init_distributed(cfg.device)
    try:
        final, _task = _run(cfg, Path(out_dir) if out_dir else default_output_dir(cfg), resume, progress, info)
        return final
    finally:
        cleanup_distributed()


def _run(cfg: PretrainConfig, out_dir: Path, resume: bool, progress: bool,
         info: DistInfo) -> tuple[Path, PretextTask]:
    device = torch.device("cuda", info.local_rank) if cfg.device == "cuda" else torch.device("cpu")
    sources = find_sources(cfg.datasets, cfg.plans, cfg.configuration)
    task = build_task(cfg, sources[0].num_channels)
    warnings = startup_warnings(cfg, task, info.world_size)
    if info.is_main:
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr, flush=True)
    task.setup(cfg.steps)
    task.to(device)

    optim = cfg.resolve_optim(type(task).recipe, info.world_size)
    optimizer = make_optimizer(task, optim)
    schedules = make_schedules(cfg.steps, optim)
    use_amp = cfg.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    latest, final = out_dir / "checkpoint_latest.pth", out_dir / "checkpoint_final.pth"
    start_step = 0
    if resume:
        if not latest.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint_latest.pth in {out_dir}; start without --resume")
        ckpt = load_checkpoint(latest, map_location=device)
        _check_resumable(ckpt.get("config", {}), cfg)
        task.load_state_dict(ckpt["task_state"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_step = int(ckpt["step"])
        _set_rng_state(ckpt["rng"])
    elif latest.is_file() or final.is_file():
        raise FileExistsError(f"{out_dir} already holds a run: pass --resume to continue it, or choose another --output")

    log = TrainingLog(out_dir, enabled=info.is_main, start_step=start_step)
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(
            {**cfg.to_dict(), "encoder_config": task.encoder().cfg.to_dict(),
             "task_config": dataclasses.asdict(task.cfg), "optimisation": optim.to_dict(), "warnings": warnings},
            indent=2, default=str))

    model: torch.nn.Module = task
    if info.enabled:
        if device.type == "cuda":
            # Batch statistics over all ranks, as MoCo v3 and SimCLR (their BatchNorm heads); gloo/CPU has no SyncBN.
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(task)
        # Every trainable parameter must get a gradient each step: DDP then fails loudly on an untrained part
        # instead of searching the graph for unused parameters (which once hid an untrained Swin stage).
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=False)

    dataset = RandomCropDataset(sources, cfg.crop, seed=cfg.seed)
    loader = DataLoader(dataset, batch_size=cfg.batch_size,
                        sampler=StepSampler(start_step, cfg.steps, cfg.batch_size, info.rank, info.world_size),
                        num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
                        prefetch_factor=4 if cfg.num_workers > 0 else None, drop_last=False)

    def payload(step: int) -> dict[str, Any]:
        return {
            "method": cfg.method,
            "encoder_config": task.encoder().cfg.to_dict(),
            "encoder": task.encoder().swin_state_dict(),
            "mask_token": task.encoder().mask_token.detach().cpu(),
            "task_state": task.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "step": step,
            "config": cfg.to_dict(),
            "task_config": dataclasses.asdict(task.cfg),
            "optimisation": optim.to_dict(),
            "provenance": _provenance(sources),
            "rng": _rng_state(),
        }

    bar = None
    if progress and info.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=start_step, desc=f"pretrain {cfg.method}", unit="step", dynamic_ncols=True)
    task.train()
    step = start_step
    t_last = time.perf_counter()
    for step, crops in zip(range(start_step, cfg.steps), loader):
        lr, wd = schedules.apply(optimizer, step)
        views = _to_device(task.make_views(crops, _views_generator(cfg.seed, step, info.rank)), device)
        with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=use_amp):
            out = model(views, step)
        loss = out["loss"]
        finite = torch.isfinite(loss.detach()).float()
        if info.enabled:
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        if finite.item() < 1:
            raise TrainingDiverged(
                f"the {cfg.method} loss became {loss.item()} at step {step} (lr {lr:.3g}). Nothing was saved from this "
                "step: the last checkpoint is intact. Try a lower --lr, a longer warm-up (--warmup-steps), "
                "--clip-grad 1.0, or --no-amp; check that the data were normalised by nnU-Net's preprocessing."
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        grad_norm = float(clip_gradients([p for g in optimizer.param_groups for p in g["params"]], optim.clip_grad,
                                         optim.clip_mode))
        task.before_optimizer_step(step)
        scaler.step(optimizer)
        scaler.update()
        task.on_step_end(step)

        now = time.perf_counter()
        samples_per_s = cfg.batch_size * info.world_size / max(now - t_last, 1e-9)
        t_last = now
        record = {"step": step, "lr": lr, "weight_decay": wd, "samples_per_s": samples_per_s,
                  **{k: float(v.detach()) for k, v in out.items() if k.startswith("loss")}}
        if grad_norm is not None:
            record["grad_norm"] = grad_norm
        log.append(record)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.4f}", samples_s=f"{samples_per_s:.2f}")
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps and info.is_main:
            save_checkpoint(latest, payload(step + 1))
            log.plot()
    if bar is not None:
        bar.close()
    if info.is_main:
        final_payload = payload(cfg.steps)
        save_checkpoint(latest, final_payload)
        save_checkpoint(final, final_payload)
        log.plot()
    if info.enabled:
        torch.distributed.barrier()
    return final, task
