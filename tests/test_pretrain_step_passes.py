"""benchmarks/pretrain_step.py counts each method's step in bare encoder passes (meta device, no time): a trained
pass on the whole crops counts 1, a forward-only pass (momentum encoder, teacher) its FLOP share of a bare forward +
backward, heads and losses the remaining FLOPs."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "pretrain_step.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("pretrain_step_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_passes_of_one_trained_pass_two_views_and_a_momentum_encoder(bench):
    rotation = bench.count_passes_meta("rotation", "tiny", 64, 2, {})
    assert rotation["calls"] == 1 and rotation["encoder"] == pytest.approx(1.0)
    simclr = bench.count_passes_meta("simclr", "tiny", 64, 2, {})
    assert simclr["encoder"] == pytest.approx(2.0)  # two views in one call on the doubled batch, both trained
    mocov3 = bench.count_passes_meta("mocov3", "tiny", 64, 2, {})
    forward_only = (mocov3["encoder"] - 2.0) / 2.0  # two trained passes and two momentum-encoder passes
    assert mocov3["calls"] == 4 and 0.25 < forward_only < 0.5
    for p in (rotation, simclr, mocov3):
        assert p["heads"] >= 0 and p["passes"] == pytest.approx(p["encoder"] + p["heads"])
