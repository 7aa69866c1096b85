"""Step anatomy: where each pretraining step's time goes, recorded in every run's log.

Each step is cut into parts, in this order:

* ``data``: the main process waiting for the loader's next batch (crops, and views when the workers build them);
* ``views``: the views built in the main process (only with ``--num-workers 0`` or a task without ``view_fn``);
* ``h2d``: host-to-device copies of the views (pinned, non-blocking on CUDA);
* ``forward``: the task's forward and loss; ``backward``: autograd (with DDP: the gradient all-reduce);
* ``optimizer``: unscale, clipping, the finite flag, the optimiser step and the task's step end (EMA teacher).

``data`` and ``views`` are host work and timed with the wall clock everywhere. On the CPU the device parts are
timed with the wall clock too (CPU kernels run synchronously). On CUDA they are timed with CUDA events recorded on
the current stream between the parts, read when the loop reads the step's values anyway (every ``--log-every``
steps): no synchronisation per step. ``step`` is the step's wall time on the host (its start to the next step's
start, less the reads and checkpoints between them).

Peak memory per read window: on CUDA ``torch.cuda.max_memory_allocated`` (reset after each read); on the CPU the
process's peak resident set size (``resource.getrusage().ru_maxrss``, monotonic over the run).

Log keys: ``ms/<part>`` (milliseconds), ``ms/step`` and ``peak_mib``.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch

PARTS = ("data", "views", "h2d", "forward", "backward", "optimizer")
HOST_PARTS = ("data", "views")
DEVICE_PARTS = ("h2d", "forward", "backward", "optimizer")
PREFIX = "ms/"


def peak_memory_mib(device: torch.device, reset: bool = True) -> tuple[float, str]:
    """(peak MiB, what was measured): CUDA allocator peak since the last reset, else the process's peak RSS."""
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        if reset:
            torch.cuda.reset_peak_memory_stats(device)
        return peak, "CUDA allocated"
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Linux/macOS
        return float("nan"), "unavailable"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**20 if sys.platform == "darwin" else 2**10), "peak RSS"  # bytes on macOS, KiB on Linux


@dataclass
class StepTiming:
    """One step's parts: host seconds, and (CUDA) event pairs to be read after a synchronisation."""

    host: dict[str, float] = field(default_factory=dict)
    events: list[tuple[str, Any, Any]] = field(default_factory=list)
    wall: float = 0.0

    def to_ms(self) -> dict[str, float]:
        """{``ms/<part>``: milliseconds} in PARTS order, and ``ms/step``; CUDA events must be complete."""
        ms = {part: 1e3 * s for part, s in self.host.items()}
        for part, start, end in self.events:
            ms[part] = float(start.elapsed_time(end))
        out = {PREFIX + part: ms[part] for part in PARTS if part in ms}
        out[PREFIX + "step"] = 1e3 * self.wall
        return out


class StepClock:
    """Marks the end of each part of a step (see the module docstring).

    ``start()`` before asking the loader, ``mark(part)`` after each part, ``stop()`` at the step's end. ``event``:
    the CUDA event class (``torch.cuda.Event`` on CUDA; tests pass a stand-in)."""

    def __init__(self, device: torch.device, event: Any = None) -> None:
        self.use_events = device.type == "cuda" or event is not None
        self._event = event if event is not None else (torch.cuda.Event if device.type == "cuda" else None)
        self._timing = StepTiming()
        self._t0 = self._last = 0.0
        self._prev_event: Any = None

    def start(self) -> None:
        """Begin a step: fresh timings and the wall clock started (call before asking the loader for the batch)."""
        self._timing = StepTiming()
        self._t0 = self._last = time.perf_counter()
        self._prev_event = None

    def mark(self, part: str) -> None:
        """End ``part`` (one of PARTS; ValueError otherwise). Host parts, and every part without events, get the wall
        seconds since the previous mark (with events a host part also records the event the device parts start from);
        a device part gets a CUDA event pair from the previous event to a new one."""
        if part not in PARTS:
            raise ValueError(f"unknown step part {part!r}; parts: {', '.join(PARTS)}")
        now = time.perf_counter()
        if part in HOST_PARTS or not self.use_events:
            self._timing.host[part] = now - self._last
            if self.use_events:  # the device parts start where the host parts end
                self._prev_event = self._record()
        else:
            if self._prev_event is None:
                self._prev_event = self._record()
            end = self._record()
            self._timing.events.append((part, self._prev_event, end))
            self._prev_event = end
        self._last = now

    def _record(self) -> Any:
        event = self._event(enable_timing=True)
        event.record()
        return event

    def stop(self) -> StepTiming:
        """End the step: record its wall time since ``start()`` and return its StepTiming (CUDA events unread)."""
        self._timing.wall = time.perf_counter() - self._t0
        return self._timing


@dataclass
class RunAnatomy:
    """Totals over the steps this process ran: steps/s, data-wait share and peak memory for the closing line."""

    steps: int = 0
    totals: dict[str, float] = field(default_factory=dict)  # ms per key, summed
    peak_mib: float = 0.0
    peak_kind: str = ""

    def add(self, records: list[dict[str, Any]], peak_mib: float, peak_kind: str) -> None:
        """Add a read window's records (each with ``ms/step`` counts as one step, its ``ms/`` values summed into the
        totals) and keep the largest peak memory (NaN ignored); ``peak_kind`` says what was measured."""
        for r in records:
            if PREFIX + "step" not in r:
                continue
            self.steps += 1
            for k, v in r.items():
                if k.startswith(PREFIX):
                    self.totals[k] = self.totals.get(k, 0.0) + float(v)
        if peak_mib == peak_mib:  # not NaN
            self.peak_mib = max(self.peak_mib, peak_mib)
        self.peak_kind = peak_kind

    def data_share(self) -> float:
        """Share of the summed step wall time spent waiting for data (NaN before any timed step)."""
        step = self.totals.get(PREFIX + "step", 0.0)
        return self.totals.get(PREFIX + "data", 0.0) / step if step > 0 else float("nan")

    def steps_per_s(self) -> float:
        """Steps per second of summed step wall time (NaN before any timed step)."""
        step = self.totals.get(PREFIX + "step", 0.0)
        return 1e3 * self.steps / step if step > 0 else float("nan")

    def summary_line(self, method: str) -> str:
        """The closing line for ``method``: steps, steps/s, data-wait share, peak memory and the mean milliseconds
        per part (or that no step ran in this process)."""
        if not self.steps:
            return f"pretrain {method}: no step ran in this process"
        mean = {k[len(PREFIX):]: v / self.steps for k, v in self.totals.items()}
        parts = ", ".join(f"{p} {mean[p]:.0f}" for p in PARTS if p in mean)
        return (f"pretrain {method}: {self.steps} steps, {self.steps_per_s():.2f} steps/s, data wait "
                f"{self.data_share():.0%} of the step, peak memory {self.peak_mib:.0f} MiB ({self.peak_kind}); "
                f"mean ms per step: {parts}")


def window_data_share(records: list[dict[str, Any]]) -> float:
    """Data-wait share of the wall time over ``records`` (NaN without timings)."""
    step = sum(float(r.get(PREFIX + "step", 0.0)) for r in records)
    data = sum(float(r.get(PREFIX + "data", 0.0)) for r in records)
    return data / step if step > 0 else float("nan")


__all__ = ["DEVICE_PARTS", "HOST_PARTS", "PARTS", "PREFIX", "RunAnatomy", "StepClock", "StepTiming",
           "peak_memory_mib", "window_data_share"]
