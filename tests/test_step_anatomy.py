"""Step anatomy: each logged step holds its parts (data wait, main-process views, H2D, forward, backward, optimiser)
and the peak memory; the run ends with one line of steps/s, data-wait share and peak memory; the progress bar
shows the data-wait share. The CUDA path (events read at the host read) runs here with a stand-in event class."""
from __future__ import annotations

import json
import time

import pytest
import torch

from nnssl.training.anatomy import PARTS, RunAnatomy, StepClock, window_data_share
from nnssl.training.loop import PretrainConfig, run_pretraining


class FakeEvent:
    """torch.cuda.Event's interface on the host clock."""

    recorded = 0

    def __init__(self, enable_timing: bool = False) -> None:
        assert enable_timing
        self.t = None

    def record(self) -> None:
        FakeEvent.recorded += 1
        self.t = time.perf_counter()

    def elapsed_time(self, end: "FakeEvent") -> float:
        return 1e3 * (end.t - self.t)


def _step(clock: StepClock, sleeps: dict[str, float]) -> dict[str, float]:
    clock.start()
    for part in ("data", "views", "h2d", "forward", "backward", "optimizer"):
        time.sleep(sleeps.get(part, 0.0))
        clock.mark(part)
    return clock.stop().to_ms()


def test_wall_clock_parts_on_the_cpu():
    ms = _step(StepClock(torch.device("cpu")), {"data": 0.03, "forward": 0.02})
    assert list(ms) == [f"ms/{p}" for p in PARTS] + ["ms/step"]
    assert ms["ms/data"] >= 29 and ms["ms/forward"] >= 19 and ms["ms/backward"] < 15
    assert ms["ms/step"] >= ms["ms/data"] + ms["ms/forward"]
    with pytest.raises(ValueError, match="unknown step part"):
        StepClock(torch.device("cpu")).mark("loader")


def test_device_parts_are_timed_by_events_between_the_parts():
    FakeEvent.recorded = 0
    ms = _step(StepClock(torch.device("cpu"), event=FakeEvent), {"data": 0.02, "backward": 0.03})
    # one event after each host part (the device parts' start), one after each device part
    assert FakeEvent.recorded == 2 + 4
    assert ms["ms/data"] >= 19 and ms["ms/backward"] >= 29 and ms["ms/h2d"] < 15


def test_run_totals_and_closing_line():
    totals = RunAnatomy()
    records = [{"step": 0, "ms/data": 10.0, "ms/forward": 30.0, "ms/step": 100.0},
               {"step": 1, "ms/data": 30.0, "ms/forward": 30.0, "ms/step": 100.0}]
    totals.add(records, 512.0, "peak RSS")
    assert window_data_share(records) == pytest.approx(0.2)
    line = totals.summary_line("smit")
    assert "10.00 steps/s" in line and "data wait 20%" in line and "peak memory 512 MiB (peak RSS)" in line
    assert "data 20, forward 30" in line
    assert "no step" in RunAnatomy().summary_line("smit")


@pytest.mark.parametrize("workers", [0, 1])
def test_every_logged_step_has_its_anatomy(toy_env, capsys, workers):
    cfg = PretrainConfig(method="toy", datasets=["990"], encoder="tiny", crop=(32, 32, 32), batch_size=2, steps=3,
                         lr=1e-3, warmup_steps=0, device="cpu", num_workers=workers, checkpoint_every=10, log_every=2)
    run_pretraining(cfg, toy_env / "run", progress=True)
    records = [json.loads(l) for l in (toy_env / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2]
    for r in records:
        parts = {k for k in r if k.startswith("ms/")}
        expected = {f"ms/{p}" for p in PARTS if p != "views" or workers == 0} | {"ms/step"}
        assert parts == expected, r
        assert r["ms/forward"] > 0 and r["ms/backward"] > 0 and r["peak_mib"] > 0
        assert sum(r[k] for k in parts - {"ms/step"}) <= r["ms/step"] * 1.001
    out = capsys.readouterr()
    closing = [l for l in out.out.splitlines() if l.startswith("pretrain toy:")]
    assert len(closing) == 1 and "3 steps" in closing[0] and "steps/s" in closing[0] and "data wait" in closing[0]
    assert "data_wait=" in out.err  # the progress bar's postfix


def test_a_cpu_run_keeps_freed_memory_for_the_next_step(toy_env, monkeypatch):
    """The loop switches malloc to keeping freed memory (nnssl.cpu_memory) before its loader forks on the CPU."""
    import nnssl.training.loop as loop

    calls = []
    monkeypatch.setattr(loop, "keep_freed_memory", lambda: calls.append("keep") or True)
    cfg = PretrainConfig(method="toy", datasets=["990"], encoder="tiny", crop=(32, 32, 32), batch_size=2, steps=1,
                         lr=1e-3, warmup_steps=0, device="cpu", num_workers=0, checkpoint_every=10, log_every=1)
    run_pretraining(cfg, toy_env / "run", progress=False)
    assert calls == ["keep"]
