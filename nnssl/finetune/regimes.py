"""What every nnssl fine-tuning trainer shares, Swin or CNN: the test/demo budget knobs, the k-shot split and the
fine-tuning record (protocol, parameter groups, compute ledger) written into the fold folder.

The k-shot subset is ``nnssl.finetune.fewshot.select_fewshot`` of nnU-Net's own fold split, seeded by (dataset,
fold, draw) only, so the Swin runs and the CNN baselines of one fold and draw train on the same cases.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Callable, Collection, Optional

from nnssl.finetune.fewshot import SUBSET_FILE, select_fewshot, subset_seed, write_subset_record
from nnssl.io import atomic_write
from nnssl.ledger import FINETUNE_RECORD, compute_record
from nnssl.nnunet.naming import TrainerName, parse_trainer_name

ENV_ITERS = "NNSSL_ITERATIONS_PER_EPOCH"
ENV_VAL_ITERS = "NNSSL_VAL_ITERATIONS_PER_EPOCH"
ENV_NO_MIRROR = "NNSSL_DISABLE_MIRRORING"
ENV_LR = "NNSSL_LEARNING_RATE"
#: The fine-tuning record of a fold: trainer, protocol, parameter groups, what is frozen, compute ledger.
RECORD_FILE = FINETUNE_RECORD


def positive_int_env(name: str) -> Optional[int]:
    """Environment variable ``name`` as a positive int; None when unset or empty, ValueError for anything else."""
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer (or unset for nnU-Net's default)")
    return n


def positive_float_env(name: str) -> Optional[float]:
    """Environment variable ``name`` as a finite float > 0; None when unset or empty, ValueError otherwise."""
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        x = float(value)
    except ValueError:
        x = float("nan")
    if not (math.isfinite(x) and x > 0):
        raise ValueError(f"{name}={value!r} must be a finite number > 0 (or unset for the recipe's value)")
    return x


def apply_budget_knobs(trainer: Any, learning_rate: bool = True) -> dict[str, Any]:
    """Apply the NNSSL_* knobs to a freshly constructed nnU-Net trainer (iterations per epoch, validation iterations,
    mirroring; the learning rate when ``learning_rate``); returns the knobs that were set."""
    knobs: dict[str, Any] = {}
    iters, val_iters = positive_int_env(ENV_ITERS), positive_int_env(ENV_VAL_ITERS)
    if iters is not None:
        trainer.num_iterations_per_epoch = iters
        knobs[ENV_ITERS] = iters
    if val_iters is not None:
        trainer.num_val_iterations_per_epoch = val_iters
        knobs[ENV_VAL_ITERS] = val_iters
    trainer.disable_mirroring = os.environ.get(ENV_NO_MIRROR, "").lower() in ("1", "true", "yes")
    if trainer.disable_mirroring:
        knobs[ENV_NO_MIRROR] = True
    if learning_rate:
        lr = positive_float_env(ENV_LR)
        if lr is not None:
            trainer.initial_lr = lr
            knobs[ENV_LR] = lr
    return knobs


def fewshot_split(trainer: Any, tr_keys: list, val_keys: list) -> tuple[list, list]:
    """nnU-Net's fold split reduced to the trainer's k-shot subset (``num_shots``, ``shot_draw``), recorded in the
    fold folder; validation keeps the fold's full validation set."""
    if trainer.num_shots is None:
        if trainer.shot_draw:  # a repeated run: same cases, a new sample of nnU-Net's unseeded training
            trainer.print_to_log_file(f"nnssl: draw {trainer.shot_draw} of all {len(tr_keys)} training cases (a "
                                      "repeated run on the same cases)")
        return tr_keys, val_keys
    dataset = trainer.plans_manager.dataset_name
    subset = select_fewshot(tr_keys, trainer.num_shots, dataset, trainer.fold, trainer.shot_draw)
    if trainer.local_rank == 0:
        write_subset_record(trainer.output_folder, {
            "dataset": dataset, "fold": trainer.fold, "shots": trainer.num_shots, "draw": trainer.shot_draw,
            "seed": subset_seed(dataset, trainer.fold, trainer.shot_draw),
            "rule": "sorted fold training cases, permuted with seed(dataset, fold, draw); first k (nested, "
                    "method-independent)",
            "train_subset": subset, "fold_train_cases": sorted(map(str, tr_keys)),
            "num_validation_cases": len(val_keys)})  # no trainer or method: identical for every method's run
    draw = f" (draw {trainer.shot_draw})" if trainer.shot_draw else ""
    trainer.print_to_log_file(f"nnssl: {trainer.num_shots}-shot subset{draw} of {len(tr_keys)} training cases: "
                              f"{subset} (recorded in {SUBSET_FILE}); validating on all {len(val_keys)} validation "
                              "cases")
    return subset, val_keys


class StepTimer:
    """Wall time of the optimiser steps of this process (train_step calls), for the ledger's mean step time."""

    def __init__(self) -> None:
        self.seconds, self.steps, self._start = 0.0, 0, None

    def start(self) -> None:
        """Start timing one step."""
        self._start = time.perf_counter()

    def stop(self) -> None:
        """End the step begun by :meth:`start`, adding its wall time and one step (nothing without a start)."""
        if self._start is not None:
            self.seconds += time.perf_counter() - self._start
            self.steps += 1
            self._start = None

    @property
    def mean(self) -> float | None:
        """Mean wall seconds per timed step; None before the first."""
        return self.seconds / self.steps if self.steps else None


def finetune_compute(trainer: Any, timer: StepTimer) -> dict[str, Any]:
    """The ledger of a fine-tuning run from nnU-Net's log (epoch timestamps, over every session of a resumed run)
    and this process's step timer."""
    log = trainer.logger.get_checkpoint() if hasattr(trainer.logger, "get_checkpoint") else {}
    starts, ends = log.get("epoch_start_timestamps") or [], log.get("epoch_end_timestamps") or []
    wall = float(sum(e - s for s, e in zip(starts, ends)))
    epochs = min(len(starts), len(ends))
    world = trainer.world_size if getattr(trainer, "is_ddp", False) else 1
    steps = epochs * trainer.num_iterations_per_epoch
    return compute_record(wall, steps, steps * trainer.batch_size * world, timer.mean, trainer.device, world,
                          epochs=epochs, iterations_per_epoch=trainer.num_iterations_per_epoch,
                          batch_size=trainer.batch_size,
                          wall_what="sum over epochs of nnU-Net's epoch end - start timestamps (training and "
                                    "validation iterations; final validation excluded)",
                          step_timer_steps=timer.steps)


def write_finetune_record(trainer: Any, record: dict[str, Any]) -> str | None:
    """Write (rank 0) or update the fold's fine-tuning record; returns its path."""
    if getattr(trainer, "local_rank", 0) != 0:
        return None
    path = os.path.join(trainer.output_folder, RECORD_FILE)
    existing: dict[str, Any] = {}
    if os.path.isfile(path):
        try:
            with open(path) as f:
                existing = json.load(f)
        except (OSError, json.JSONDecodeError):
            existing = {}
    existing.update(record)
    os.makedirs(trainer.output_folder, exist_ok=True)
    atomic_write(path, lambda f: json.dump(existing, f, indent=2), binary=False)
    return path


def variant_class(name: str, cache: dict[str, type], module: str, kinds: Collection[str],
                  make: Callable[[TrainerName], type], other_kind: Callable[[str, TrainerName], type]) -> type:
    """The trainer class called ``name`` of one family (trainer kinds ``kinds``), made by ``make`` on first use and
    cached in ``cache``; names of another kind go to ``other_kind(name, spec)``. A name that is no trainer raises
    AttributeError, so that ``hasattr(module, name)`` (nnU-Net's trainer lookup) is False for it."""
    if name not in cache:
        try:
            spec = parse_trainer_name(name)
        except ValueError as e:
            raise AttributeError(f"module {module!r} has no trainer {name!r}: {e}") from None
        if spec.kind not in kinds:
            return other_kind(name, spec)
        cache[name] = make(spec)
    return cache[name]

