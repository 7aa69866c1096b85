"""The compute ledger: what a run cost, in the same fields for pretraining and fine-tuning runs.

A record (``compute_record``) holds wall time, optimiser steps, samples seen, mean step time, peak memory (CUDA's
maximum allocated bytes, or the process's peak resident set size on CPU), the device's name and count, and the
device-hours the run held: GPU-hours on CUDA (wall hours x GPUs), CPU core-hours on CPU (wall hours x the intra-op
threads torch used). Pretraining writes it into ``config.json`` and the checkpoint (``"compute"``); the fine-tuning
trainers into ``nnssl_finetune.json`` in their fold folder. The report's cost table reads both.
"""
from __future__ import annotations

import os
import platform
import resource
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where a device is asked about: the report reads records without it
    import torch

#: Version of the record's layout.
LEDGER_VERSION = 1
#: The fine-tuning record a trainer writes into its fold folder (its ledger under "compute", what it read of the
#: pretraining run under "pretraining"); the report reads it.
FINETUNE_RECORD = "nnssl_finetune.json"


def device_description(device: torch.device | str, world_size: int = 1) -> dict[str, Any]:
    """{"type", "name", "count"}: the GPU model and the number of GPUs (ranks), or the CPU model and the threads."""
    import torch

    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        index = device.index if device.index is not None else torch.cuda.current_device()
        return {"type": "cuda", "name": torch.cuda.get_device_name(index), "count": int(world_size)}
    return {"type": device.type, "name": _cpu_name(), "count": int(torch.get_num_threads()) * int(world_size)}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def reset_peak_memory(device: torch.device | str) -> None:
    """Reset CUDA's peak-memory counter of ``device`` (nothing on the CPU, where the peak is the process's maximum
    resident set)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device | str) -> dict[str, Any]:
    """{"bytes", "what"}: CUDA's max allocated bytes on a GPU, else the process's peak resident set size."""
    import torch

    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return {"bytes": int(torch.cuda.max_memory_allocated(device)), "what": "cuda max_memory_allocated"}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is in bytes on macOS, kilobytes on Linux
    return {"bytes": int(rss) * scale, "what": "peak RSS of the process (ru_maxrss)"}


def compute_record(wall_seconds: float, steps: int, samples: int, step_seconds: float | None,
                   device: torch.device | str, world_size: int = 1, **extra: Any) -> dict[str, Any]:
    """The ledger's fields for a run (or one session of it); ``extra`` adds fields (e.g. sessions, epochs)."""
    desc = device_description(device, world_size)
    memory = peak_memory(device)
    hours = float(wall_seconds) / 3600.0
    record = {
        "version": LEDGER_VERSION,
        "wall_seconds": float(wall_seconds),
        "steps": int(steps),
        "samples_seen": int(samples),
        "mean_step_seconds": None if step_seconds is None else float(step_seconds),
        "peak_memory_bytes": memory["bytes"],
        "peak_memory_what": memory["what"],
        "device": desc,
        "gpu_hours": hours * desc["count"] if desc["type"] == "cuda" else 0.0,
        "cpu_core_hours": hours * desc["count"] if desc["type"] != "cuda" else 0.0,
        "host": platform.node() or os.uname().nodename,
    }
    record.update(extra)
    return record


def device_hours(record: dict[str, Any]) -> tuple[float, str]:
    """(hours, unit) of a record: GPU-hours when it ran on GPUs, else CPU core-hours."""
    if record.get("device", {}).get("type") == "cuda":
        return float(record.get("gpu_hours") or 0.0), "GPU-h"
    return float(record.get("cpu_core_hours") or 0.0), "core-h"


class RunLedger:
    """The ledger of a run over its sessions (a resumed run adds this session to what its checkpoint recorded).

    Created when the session starts training (it resets CUDA's peak-memory counter); :meth:`record` gives the run's
    record at a step: wall time and device-hours summed over sessions, steps and samples of the whole run, mean step
    time = wall time / steps (data loading and checkpoint writes included), the peak memory of any session."""

    def __init__(self, device: torch.device | str, world_size: int = 1, start_step: int = 0,
                 prior: dict[str, Any] | None = None) -> None:
        import time

        self.device, self.world_size, self.start_step = device, int(world_size), int(start_step)
        self.prior = prior if isinstance(prior, dict) else {}
        self._clock = time.perf_counter
        reset_peak_memory(device)
        self._start = self._clock()

    def record(self, step: int, global_batch: int) -> dict[str, Any]:
        """The run's compute record at ``step`` with ``global_batch`` samples per step (all ranks): wall time,
        device-hours and samples summed over sessions, mean step time, peak memory."""
        p = self.prior
        session_wall = self._clock() - self._start
        session = compute_record(session_wall, step - self.start_step, (step - self.start_step) * global_batch, None,
                                 self.device, self.world_size)
        wall = float(p.get("wall_seconds", 0.0)) + session_wall
        record = compute_record(wall, step, step * global_batch, wall / step if step else None, self.device,
                                self.world_size, sessions=int(p.get("sessions", 0)) + 1,
                                session_wall_seconds=[*p.get("session_wall_seconds", []), session_wall],
                                wall_what="sum over the run's sessions of the training loop's wall time (data "
                                          "loading and checkpoint writes included)")
        record["gpu_hours"] = float(p.get("gpu_hours", 0.0)) + session["gpu_hours"]
        record["cpu_core_hours"] = float(p.get("cpu_core_hours", 0.0)) + session["cpu_core_hours"]
        record["peak_memory_bytes"] = max(int(record["peak_memory_bytes"]), int(p.get("peak_memory_bytes", 0)))
        return record
