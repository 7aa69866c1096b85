"""nnssl.cpu_memory: on the CPU, glibc's malloc keeps the memory a step frees, so a repeated step stops faulting in
fresh pages; ``NNSSL_CPU_MALLOC=system`` opts out. Each case runs in its own interpreter (malloc's settings are
per process and cannot be undone)."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from nnssl.cpu_memory import ENV, keep_freed_memory

# A step stand-in: a 64 MiB temporary and an 8 MiB softmax, allocated and freed eight times; prints the minor page
# faults of each repetition.
STEP = """
import json, resource, torch
from nnssl.cpu_memory import keep_freed_memory
applied = keep_freed_memory()
x = torch.ones(8, 64, 64, 64)
faults = []
for _ in range(8):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = (x[:, :, :, :, None] * torch.ones(8)).sum(-1)
    b = torch.softmax(x.view(8, -1), dim=1)
    del a, b
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(json.dumps({"applied": applied, "faults": faults}))
"""


def _run(env_value: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if env_value is not None:
        env[ENV] = env_value
    env["OMP_NUM_THREADS"] = "1"
    out = subprocess.run([sys.executable, "-c", STEP], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_a_repeated_step_reuses_freed_pages_unless_opted_out():
    kept, system = _run(None), _run("system")
    assert kept["applied"] is True and system["applied"] is False
    # by default glibc maps and unmaps the 64 MiB every repetition (16384 faults of 4 KiB pages, fewer with
    # transparent huge pages); kept, the pages are reused once the heap has settled
    assert min(system["faults"][-3:]) > 10 * max(kept["faults"][-2:]), (system["faults"], kept["faults"])


def test_a_bad_setting_names_the_choices(monkeypatch):
    monkeypatch.setenv(ENV, "fast")
    with pytest.raises(ValueError, match="'keep'.*'system'"):
        keep_freed_memory()
    monkeypatch.setenv(ENV, "system")
    assert keep_freed_memory() is False
