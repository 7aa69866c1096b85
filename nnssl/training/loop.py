"""The one pretraining loop shared by every pretext task.

It owns the mechanics the tasks do not: data, optimiser and schedules (precomputed per global step), AMP on CUDA,
gradient clipping, a NaN/Inf guard, DDP through torchrun, progress bar, JSON-lines log and loss plot, atomic
checkpoints and exact resume (model, teacher, optimiser, scaler, loss state, step, RNG; the data stream and the views
are pure functions of the step, so a resumed run sees the same crops and views as an uninterrupted one). The views
are built in the DataLoader workers (nnssl.training.batches); the main process copies them to the device and steps,
and every step is timed in parts for the log (nnssl.training.anatomy).

Nothing silently wrong: a step whose loss or gradients are not finite is skipped on the device
(nnssl.training.finite) and the run stops at the next host read (every ``log_every`` steps and before every
checkpoint) naming the steps and their cases; a state with a NaN or Inf tensor is never saved. Rank 0 holds the run
folder locked (nnssl.training.runlock); two checkpoint generations are kept (``checkpoint_latest.pth`` and
``checkpoint_previous.pth``), and resume falls back to the older one when the latest does not load.
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

from nnssl.checkpoint import (CheckpointError, all_finite, describe_nonfinite, load_checkpoint, nonfinite_names,
                              save_checkpoint)
from nnssl.cpu_memory import keep_freed_memory
from nnssl.data.preprocessed import (PreprocessedSource, RandomCropDataset, check_crop_fits, check_not_constant,
                                     find_sources)
from nnssl.data.subsets import apply_fraction, check_fraction
from nnssl.encoders.attention import parse_attention, resolve_attention, set_attention
from nnssl.encoders.swin import EncoderConfig, SwinEncoder, check_swin_input_size
from nnssl.nnunet.environment import nnssl_results_root
from nnssl.io import atomic_write, describe_removed, remove_stale_temp_files
from nnssl.ledger import RunLedger
from nnssl.nnunet.naming import CONFIGURATION, SWIN_PLANS
from nnssl.recipes import OptimRecipe, ResolvedOptim
from nnssl.tasks import PretextTask, config_from_overrides, get_task_class
from nnssl.training.anatomy import RunAnatomy, StepClock, peak_memory_mib, window_data_share
from nnssl.training.batches import make_step_loader
from nnssl.training.distributed import DistInfo, cleanup_distributed, init_distributed
from nnssl.training.finite import PendingSteps, StepRecord, step_flag, step_if_finite
from nnssl.training.log import TrainingLog
from nnssl.training.optim import clip_gradients, load_optimizer_state, make_optimizer, make_schedules
from nnssl.training.runlock import RunLock
from nnssl.training.wandb_log import WandbRun, check_wandb

#: Settings that may differ between a run and its resumption (they do not change the optimisation).
RESUME_MUTABLE = {"device", "num_workers", "checkpoint_every", "log_every", "progress", "amp", "attention", "compile"}
#: Optimisation settings a resumption may change when asked explicitly (``--resume --allow-changed lr,clip_grad``);
#: the change is printed and recorded in config.json ("resume_changes") and log.jsonl (an "event" record).
RESUME_CHANGEABLE = ("lr", "min_lr", "warmup_steps", "weight_decay", "weight_decay_end", "clip_grad", "betas")
#: The command-line flag of each PretrainConfig field a message may name.
FLAGS = {"lr": "--lr", "min_lr": "--min-lr", "warmup_steps": "--warmup-steps", "weight_decay": "--weight-decay",
         "weight_decay_end": "--weight-decay-end", "clip_grad": "--clip-grad", "betas": "--betas", "steps": "--steps",
         "batch_size": "--batch-size", "checkpoint_every": "--checkpoint-every", "log_every": "--log-every",
         "num_workers": "--num-workers"}


class TrainingDiverged(RuntimeError):
    """The loss or the gradients became NaN or infinite, or the weights did; the message names the steps, their
    cases, the intact checkpoint and how to continue."""


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
    log_every: int = 10  # steps between host reads of the loss values and the finite flags (and log.jsonl writes)
    #: Window attention per Swin stage (nnssl.encoders.attention): "eager" (MONAI's), "sdpa", "auto" (the stages the
    #: attention benchmark measured faster with SDPA on this device type) or four comma-separated kinds. A runtime
    #: setting: equal results within fp32 rounding, same checkpoints, changeable on resume.
    attention: str = "eager"
    #: torch.compile the task's forward (the loss and its backward graph); a runtime setting like ``attention``.
    compile: bool = False
    #: share of the pretraining cases used (nested seeded subsets, nnssl.data.subsets; 1.0: every case)
    data_fraction: float = 1.0

    def __post_init__(self) -> None:
        self.crop = tuple(int(c) for c in self.crop)  # type: ignore[assignment]
        self.datasets = [str(d) for d in self.datasets]
        for name, low in (("steps", 1), ("batch_size", 1), ("checkpoint_every", 1), ("log_every", 1),
                          ("num_workers", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} ({FLAGS[name]}) must be an integer >= {low}, got {value!r}")
        if self.betas is not None:
            self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
            if len(self.betas) != 2 or not all(math.isfinite(b) and 0 <= b < 1 for b in self.betas):
                raise ValueError(f"betas (--betas) must be two numbers in [0, 1), got {self.betas}")
        for name, positive in (("lr", True), ("min_lr", False), ("weight_decay", False), ("weight_decay_end", False),
                               ("clip_grad", False)):
            value = getattr(self, name)
            if value is not None and (not math.isfinite(value) or value < 0 or (positive and value == 0)):
                raise ValueError(f"{name} ({FLAGS[name]}) must be a finite number {'> 0' if positive else '>= 0'}, "
                                 f"got {value}")
        if self.warmup_steps is not None and not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"warmup_steps (--warmup-steps) = {self.warmup_steps} must lie in [0, steps={self.steps})")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but no CUDA device is visible: use --device cpu")
        check_swin_input_size(self.crop)
        parse_attention(self.attention)  # ValueError naming --attention
        self.data_fraction = check_fraction(self.data_fraction, "data_fraction (--data-fraction)")

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict (``crop`` and ``betas`` as lists): what config.json and the checkpoints
        store and a resume compares."""
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



def _to_device(views: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in views.items()}


def _check_resumable(saved: dict[str, Any], cfg: PretrainConfig,
                     allow_changed: tuple[str, ...] | list[str] = ()) -> dict[str, list[Any]]:
    """The settings that differ from the checkpoint's and may (``allow_changed``): {name: [saved, now]}.

    ValueError for any other difference, saying how to resume (``--allow-changed`` for optimisation settings).
    """
    unknown = sorted(set(allow_changed) - set(RESUME_CHANGEABLE))
    if unknown:
        raise ValueError(f"--allow-changed {','.join(unknown)}: only the optimisation settings may change on resume "
                         f"({', '.join(RESUME_CHANGEABLE)}); start a new run in another --output for other changes")
    current = cfg.to_dict()
    saved = {"data_fraction": 1.0, **saved}  # runs from before the data-fraction setting used every case
    differing = sorted(k for k in current if k not in RESUME_MUTABLE and saved.get(k) != current[k])
    refused = [k for k in differing if k not in allow_changed]
    if refused:
        detail = "; ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {current[k]!r}" for k in refused)
        if all(k in RESUME_CHANGEABLE for k in refused):
            fix = (f"To continue with the new optimisation settings, add --allow-changed {','.join(refused)} (the "
                   "change is logged); or resume with the settings in the run's config.json")
        else:
            fix = ("Resume with the same settings (see the run's config.json), or start a new run in another --output "
                   "folder (only the optimisation settings can change on resume, with --allow-changed)")
        raise ValueError(f"cannot resume: the run was started with other settings ({detail}). {fix}")
    return {k: [saved.get(k), current[k]] for k in differing}


def _load_for_resume(out_dir: Path, device: torch.device) -> tuple[dict[str, Any], str | None]:
    """The newest checkpoint generation that loads and holds finite tensors, and a note when it is the older one."""
    latest, previous = out_dir / "checkpoint_latest.pth", out_dir / "checkpoint_previous.pth"
    problems: list[str] = []
    for path in (latest, previous):
        if not path.is_file():
            problems.append(f"{path.name} does not exist")
            continue
        try:
            ckpt = load_checkpoint(path, map_location=device)
            missing = [k for k in ("task_state", "optimizer", "step", "rng", "config") if k not in ckpt]
            if missing:
                raise CheckpointError(f"{path} lacks {missing}: it holds no training state to resume from")
            bad = nonfinite_names(ckpt["task_state"])
            if bad:
                raise CheckpointError(f"{path}: {describe_nonfinite(bad, len(ckpt['task_state']), 'task tensors')}")
        except CheckpointError as e:
            problems.append(str(e))
            continue
        note = None if path == latest else (f"{problems[0]}; resuming from {previous.name} (step {ckpt['step']}), the "
                                            "generation before it")
        return ckpt, note
    if not latest.exists() and not previous.exists():
        raise FileNotFoundError(f"--resume: no checkpoint_latest.pth in {out_dir}; start without --resume")
    raise CheckpointError(f"--resume: no checkpoint of {out_dir} can be used ({'; '.join(problems)}); start a new run "
                          "in another --output")


def _provenance(sources: list[PreprocessedSource], subset: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "datasets": [s.provenance() for s in sources],
        "data_subset": subset,
        "normalization": {
            "schemes": sorted({scheme for s in sources for scheme in s.normalization_schemes}),
            "intensity_properties": {s.dataset_name: s.intensity_properties for s in sources},
        },
    }


def run_pretraining(cfg: PretrainConfig, out_dir: str | os.PathLike | None = None, resume: bool = False,
                    progress: bool = True, allow_changed: tuple[str, ...] | list[str] = ()) -> Path:
    """Pretrain ``cfg.method``; returns the final checkpoint's path. Launch under torchrun for DDP.

    ``allow_changed``: with ``resume``, the optimisation settings (RESUME_CHANGEABLE) that may differ from the run's.
    """
    info = init_distributed(cfg.device)
    try:
        final, _task = _run(cfg, Path(out_dir) if out_dir else default_output_dir(cfg), resume, progress, info,
                            allow_changed)
        return final
    finally:
        cleanup_distributed()


def _note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr, flush=True)


def _on_every_rank(fn: Any, info: DistInfo, device: torch.device) -> Any:
    """Run ``fn`` (on rank 0 only, e.g. taking the lock) so that all ranks fail together when it fails."""
    result, error = None, None
    try:
        result = fn()
    except Exception as e:  # re-raised below, on every rank
        error = e
    if info.enabled:
        ok = torch.tensor([0.0 if error is not None else 1.0], device=device)
        torch.distributed.all_reduce(ok, op=torch.distributed.ReduceOp.MIN)
        if ok.item() < 1 and error is None:
            raise ValueError("rank 0 could not start the run (its error says why)")
    if error is not None:
        raise error
    return result


def _run(cfg: PretrainConfig, out_dir: Path, resume: bool, progress: bool, info: DistInfo,
         allow_changed: tuple[str, ...] | list[str] = ()) -> tuple[Path, PretextTask]:
    if allow_changed and not resume:
        raise ValueError("--allow-changed only applies with --resume (a new run takes any settings)")
    wandb = check_wandb()  # before any data is read: a missing package or a bad variable is one error line
    device = torch.device("cuda", info.local_rank) if cfg.device == "cuda" else torch.device("cpu")
    if device.type == "cpu":
        keep_freed_memory()  # before the loader forks its workers: each step reuses the pages the last one freed
    sources, subset = apply_fraction(find_sources(cfg.datasets, cfg.plans, cfg.configuration), cfg.data_fraction,
                                     cfg.seed)
    data_warnings = check_crop_fits(sources, cfg.crop) + check_not_constant(sources)
    task = build_task(cfg, sources[0].num_channels)
    warnings = data_warnings + startup_warnings(cfg, task, info.world_size)
    lock = RunLock(out_dir) if info.is_main else None
    _on_every_rank(lambda: lock.acquire() if lock is not None else None, info, device)
    wb = WandbRun(wandb) if wandb is not None and info.is_main else None
    failed = True
    try:
        result = _train(cfg, out_dir, resume, progress, info, allow_changed, device, sources, task, warnings, lock,
                        wb, subset)
        failed = False
        return result
    finally:
        if wb is not None:
            wb.finish(exit_code=1 if failed else 0)
        if lock is not None:
            lock.release(remove_empty_folder=True)


def _train(cfg: PretrainConfig, out_dir: Path, resume: bool, progress: bool, info: DistInfo,
           allow_changed: tuple[str, ...] | list[str], device: torch.device, sources: list[PreprocessedSource],
           task: PretextTask, warnings: list[str], lock: RunLock | None,
           wb: WandbRun | None = None, subset: dict[str, Any] | None = None) -> tuple[Path, PretextTask]:
    if info.is_main:
        assert lock is not None
        for n in lock.notes:
            _note(n)
        removed = remove_stale_temp_files(out_dir, all_writers=True)  # the folder is ours: no writer is at work
        if removed:
            _note(describe_removed(removed))
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr, flush=True)
    task.setup(cfg.steps)
    task.to(device)
    set_attention(task, resolve_attention(cfg.attention, device.type))  # student and teacher copies alike

    optim = cfg.resolve_optim(type(task).recipe, info.world_size)
    optimizer = make_optimizer(task, optim)
    schedules = make_schedules(cfg.steps, optim)
    use_amp = cfg.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    latest, final = out_dir / "checkpoint_latest.pth", out_dir / "checkpoint_final.pth"
    previous = out_dir / "checkpoint_previous.pth"
    start_step, last_saved = 0, None
    changes: dict[str, list[Any]] = {}
    prior_compute = None
    if resume:
        ckpt, fallback = _load_for_resume(out_dir, device)
        if fallback and info.is_main:
            _note(fallback)
        changes = _check_resumable(ckpt.get("config", {}), cfg, allow_changed)
        task.load_state_dict(ckpt["task_state"])
        load_optimizer_state(optimizer, ckpt["optimizer"], optim.betas)
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_step = last_saved = int(ckpt["step"])
        prior_compute = ckpt.get("compute")  # the ledger of the sessions before this one
        _set_rng_state(ckpt["rng"])
        if changes and info.is_main:
            _note(f"resuming at step {start_step} with changed optimisation settings: " + "; ".join(
                f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items()) + f" (now {optim.describe()})")
    elif latest.is_file() or final.is_file() or previous.is_file():
        raise FileExistsError(f"{out_dir} already holds a run: pass --resume to continue it, or choose another --output")

    log = TrainingLog(out_dir, enabled=info.is_main, start_step=start_step)
    run_config: dict[str, Any] = {}

    def write_config(config: dict[str, Any]) -> None:
        atomic_write(out_dir / "config.json", lambda f: json.dump(config, f, indent=2, default=str), binary=False)
    if info.is_main:
        if log.note:
            _note(log.note)
        history = _resume_history(out_dir / "config.json") if resume else []
        if changes:
            history.append({"step": start_step, "changed": changes})
            log.append({"step": start_step, "event": "resume", "changed": changes})
        run_config = {**cfg.to_dict(), "encoder_config": task.encoder().cfg.to_dict(),
                      "task_config": dataclasses.asdict(task.cfg), "optimisation": optim.to_dict(),
                      "warnings": warnings, "resume_changes": history, "data_subset": subset}
        write_config(run_config)
        if wb is not None:  # nnU-Net's nnUNet_wandb_* variables (nnssl.training.wandb_log)
            wb.start(out_dir, resume, json.loads(json.dumps(run_config, default=str)))

    model: torch.nn.Module = task
    if info.enabled:
        if device.type == "cuda":
            # Batch statistics over all ranks, as MoCo v3 and SimCLR (their BatchNorm heads); gloo/CPU has no SyncBN.
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(task)
        # Every trainable parameter must get a gradient each step: DDP then fails loudly on an untrained part
        # instead of searching the graph for unused parameters (which once hid an untrained Swin stage).
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=False)

    if cfg.compile:
        model = torch.compile(model)  # after DDP: its optimiser splits the graph at the gradient buckets
    dataset = RandomCropDataset(sources, cfg.crop, seed=cfg.seed)
    # The views of each step are built in the loader's workers (a pure function of the crops and the step's
    # generator); the main process only copies them to the device and steps.
    steps_in = make_step_loader(dataset, task.view_fn(), task.make_views, cfg.seed, start_step, cfg.steps,
                                cfg.batch_size, info.rank, info.world_size, cfg.num_workers,
                                pin_memory=device.type == "cuda", prefetch_factor=4)

    def payload(step: int, compute: dict[str, Any]) -> dict[str, Any]:
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
            "provenance": _provenance(sources, subset),
            "rng": _rng_state(),
            "compute": compute,
        }

    # Under a GradScaler the scaler skips steps with non-finite gradients itself (and lowers its scale): the flag
    # then checks the loss only.
    check_grads = not scaler.is_enabled()
    global_batch = cfg.batch_size * info.world_size

    def how_to_continue() -> str:
        lower = f"{optim.lr / 10:.2g}"
        if last_saved is None:
            return (f"no checkpoint was written yet. Start again (without --resume) with e.g. --lr {lower}, a longer "
                    "--warmup-steps or --clip-grad 1.0")
        return (f"{latest.name} (step {last_saved}) is intact. Continue from it with other optimisation settings, e.g. "
                f"--resume --allow-changed lr,clip_grad --lr {lower} --clip-grad 1.0 (or warmup_steps with a longer "
                "--warmup-steps)")

    def diverged(bad: list[int], records: list[dict[str, Any]]) -> TrainingDiverged:
        first = next(r for r in records if r["step"] == bad[0])
        cases = sorted({dataset.case_name(i) for s in bad[:3] for i in range(s * global_batch, (s + 1) * global_batch)})
        steps = ("step " if len(bad) == 1 else "steps ") + ", ".join(map(str, bad[:5])) + (
            f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        return TrainingDiverged(
            f"the {cfg.method} loss{' or its gradients' if check_grads else ''} became non-finite at {steps} "
            f"(loss {first['loss']}, lr {first['lr']:.3g}; crops of {', '.join(cases[:6])}"
            f"{' ...' if len(cases) > 6 else ''}). The update(s) were skipped and nothing was saved after them: "
            f"{how_to_continue()}; --no-amp may help on CUDA. Check that the data were normalised by nnU-Net's "
            "preprocessing")

    pending = PendingSteps()
    t_read = time.perf_counter()
    anatomy = RunAnatomy()

    def read() -> None:
        """Move the pending steps' values to the host (one transfer), log them, stop on a non-finite step."""
        nonlocal t_read
        records, bad = pending.read()
        now = time.perf_counter()
        rate = global_batch * len(records) / max(now - t_read, 1e-9)  # mean over the steps since the last read
        t_read = now
        peak, peak_kind = peak_memory_mib(device)
        anatomy.add(records, peak, peak_kind)
        for record in records:
            if bad and record["step"] >= bad[0]:
                break
            record["samples_per_s"] = rate
            record["peak_mib"] = peak
            log.append(record)
            if wb is not None:
                wb.log(record)
        if bad:
            raise diverged(bad, records)
        if bar is not None and records:
            bar.set_postfix(loss=f"{records[-1]['loss']:.4f}", samples_s=f"{rate:.2f}",
                            data_wait=f"{window_data_share(records):.0%}")

    def save(step: int, also_final: bool = False) -> None:
        """Checkpoint ``step`` (every rank checks, rank 0 writes): never a state with a NaN or Inf tensor."""
        nonlocal last_saved
        if not bool(all_finite([*task.parameters(), *task.buffers()])):
            state = task.state_dict()
            bad = nonfinite_names(state)
            raise TrainingDiverged(
                f"refusing to save step {step}: {describe_nonfinite(bad, len(state), 'model tensors')} although the "
                f"last steps' loss and gradients were finite (an update overflowed: the learning rate is too high). "
                f"Nothing was saved: {how_to_continue()}")
        if info.is_main:
            compute = ledger.record(step, global_batch)
            data = payload(step, compute)
            save_checkpoint(latest, data, keep_previous=previous)
            if also_final:
                save_checkpoint(final, data)
            run_config["compute"] = compute  # the compute ledger so far (final: the whole run's)
            write_config(run_config)
            log.plot()
        last_saved = step

    bar = None
    if progress and info.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=start_step, desc=f"pretrain {cfg.method}", unit="step", dynamic_ncols=True)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    ledger = RunLedger(device, info.world_size, start_step, prior_compute)
    task.train()
    clock = StepClock(device)
    batches = iter(steps_in.loader)
    peak_memory_mib(device)  # the first window's peak starts here
    for step in range(start_step, cfg.steps):
        clock.start()
        try:
            batch = next(batches)
        except StopIteration:
            break
        clock.mark("data")
        views = steps_in.views(batch, step)
        if not steps_in.in_workers:
            clock.mark("views")
        lr, wd = schedules.apply(optimizer, step)
        views = _to_device(views, device)
        clock.mark("h2d")
        with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=use_amp):
            out = model(views, step)
        loss = out["loss"]
        clock.mark("forward")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        clock.mark("backward")
        scaler.unscale_(optimizer)
        grad_norm = clip_gradients(params, optim.clip_grad, optim.clip_mode)
        flag = step_flag(loss, grad_norm if check_grads else None, info.enabled)
        task.before_optimizer_step(step)
        if scaler.is_enabled():
            scaler.step(optimizer)
        else:
            step_if_finite(optimizer, flag)
        scaler.update()
        task.on_step_end(step)
        clock.mark("optimizer")
        pending.add(StepRecord(step, lr, wd, {k: v.detach() for k, v in out.items() if k.startswith("loss")},
                               grad_norm, flag, clock.stop()))
        if bar is not None:
            bar.update(1)
        checkpoint = (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps
        if checkpoint or (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            read()
        if checkpoint:
            save(step + 1)
    read()  # nothing pending unless the loader ended early
    if bar is not None:
        bar.close()
    save(cfg.steps, also_final=True)
    if info.is_main:
        print(anatomy.summary_line(cfg.method), flush=True)
    if info.enabled:
        torch.distributed.barrier()
    return final, task


def _resume_history(config_json: Path) -> list[dict[str, Any]]:
    """The optimisation changes earlier resumptions recorded in config.json."""
    try:
        history = json.loads(config_json.read_text()).get("resume_changes", [])
    except (OSError, ValueError, AttributeError):
        return []
    return history if isinstance(history, list) else []
