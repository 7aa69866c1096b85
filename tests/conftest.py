"""Test-suite settings: the `slow` marker, a single CPU thread per test process on the 2-core machines, and the toy
pretraining environment the loop tests share."""
import os

import pytest
import torch


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long end-to-end runs, excluded from the default run (use -m slow)")
    torch.set_num_threads(int(os.environ.get("NNSSL_TEST_THREADS", "2")))


@pytest.fixture
def toy_env(tmp_path, monkeypatch):
    """A preprocessed toy dataset (990) under nnUNet_preprocessed, nnssl_results in tmp_path/results, and the toy
    task (tests/toy_task.py) registered as -m toy; returns tmp_path."""
    import nnssl.tasks
    from preprocessed_fixture import write_preprocessed_dataset

    pre = tmp_path / "preprocessed"
    write_preprocessed_dataset(pre, 990)
    monkeypatch.setenv("nnUNet_preprocessed", str(pre))
    monkeypatch.setenv("nnssl_results", str(tmp_path / "results"))
    monkeypatch.setitem(nnssl.tasks._REGISTRY, "toy", "toy_task:ToyTask")
    return tmp_path
