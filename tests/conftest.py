"""Test-suite settings: the `slow` marker and a single CPU thread per test process on the 2-core machines."""
import os

import torch


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long end-to-end runs, excluded from the default run (use -m slow)")
    torch.set_num_threads(int(os.environ.get("NNSSL_TEST_THREADS", "2")))
