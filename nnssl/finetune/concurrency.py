"""Fine-tuning runs that share a machine: a thread cap, and one split file for every fold.

* :func:`apply_thread_limit`: nnU-Net's ``nnUNetv2_train -device cpu`` sets torch to every core
  (``torch.set_num_threads(multiprocessing.cpu_count())`` in ``nnunetv2/run/run_training.py``,
  ``run_training_entry``), which oversubscribes the cores when several runs share them. ``NNSSL_NUM_THREADS`` (set by
  ``nnssl_benchmark --jobs N``) caps the trainer's torch threads again; unset, nnU-Net's choice stands.
* :func:`split_lock`: nnU-Net's ``do_split`` writes ``splits_final.json`` when the preprocessed folder has none, with a
  plain (non-atomic) JSON write; two folds that start together could read each other's half-written file. The
  trainers take an exclusive ``flock`` on ``<preprocessed dataset>/.nnssl_splits.lock`` around it.
"""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from nnssl.finetune.regimes import positive_int_env

#: the environment variable that caps a trainer's torch threads on the CPU
ENV_THREADS = "NNSSL_NUM_THREADS"
LOCK_NAME = ".nnssl_splits.lock"


def thread_limit() -> Optional[int]:
    """``NNSSL_NUM_THREADS`` as a positive int, None when unset; anything else is a ValueError naming the fix."""
    return positive_int_env(ENV_THREADS)


def apply_thread_limit(trainer: Any) -> Optional[int]:
    """On the CPU, cap torch's threads at ``NNSSL_NUM_THREADS`` and log it; returns the cap applied (None: none)."""
    limit = thread_limit()
    if limit is None or trainer.device.type != "cpu":
        return None
    torch.set_num_threads(limit)
    trainer.print_to_log_file(f"nnssl: {ENV_THREADS}={limit}: torch uses {limit} thread(s)")
    return limit


@contextmanager
def split_lock(preprocessed_folder: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on the dataset's split file while it is created or read (released on exit, and by the
    kernel if the process dies)."""
    path = Path(preprocessed_folder) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
