"""Fine-tuning runs sharing a machine (nnssl.finetune.concurrency): the thread cap nnU-Net's CPU default needs, and
the lock around nnU-Net's split-file creation."""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from nnssl.finetune.concurrency import ENV_THREADS, LOCK_NAME, apply_thread_limit, split_lock, thread_limit


def test_thread_limit_reads_a_positive_count_and_names_the_fix(monkeypatch):
    monkeypatch.delenv(ENV_THREADS, raising=False)
    assert thread_limit() is None
    monkeypatch.setenv(ENV_THREADS, "3")
    assert thread_limit() == 3
    for bad in ("0", "-1", "two"):
        monkeypatch.setenv(ENV_THREADS, bad)
        with pytest.raises(ValueError, match="NNSSL_NUM_THREADS=.*positive integer.*unset"):
            thread_limit()


def test_the_cap_replaces_nnunets_every_core_on_the_cpu_only(monkeypatch):
    before = torch.get_num_threads()
    logged: list[str] = []
    trainer = SimpleNamespace(device=torch.device("cpu"), print_to_log_file=logged.append)
    try:
        torch.set_num_threads(2)  # what nnU-Net sets on a 2-core machine
        monkeypatch.setenv(ENV_THREADS, "1")
        assert apply_thread_limit(trainer) == 1 and torch.get_num_threads() == 1
        assert logged and "torch uses 1 thread" in logged[0]
        torch.set_num_threads(2)
        gpu = SimpleNamespace(device=torch.device("cuda"), print_to_log_file=logged.append)
        assert apply_thread_limit(gpu) is None and torch.get_num_threads() == 2
        monkeypatch.delenv(ENV_THREADS)
        assert apply_thread_limit(trainer) is None and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_the_split_lock_excludes_a_second_process(tmp_path):
    probe = ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR)\n"
             "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); print('free')\n"
             "except BlockingIOError:\n    print('held')\n")
    lock = tmp_path / LOCK_NAME

    def other_process_sees() -> str:
        return subprocess.run([sys.executable, "-c", probe, str(lock)], capture_output=True, text=True,
                              check=True).stdout.strip()

    with split_lock(tmp_path):
        assert lock.exists() and other_process_sees() == "held"
    assert other_process_sees() == "free"
    fd = os.open(lock, os.O_RDWR)  # and this process can take it again
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.close(fd)
