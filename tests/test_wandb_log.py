"""W&B logging of nnssl_pretrain under nnU-Net's variables (nnssl.training.wandb_log), with a stand-in ``wandb``
module that records what a run sends: the log.jsonl records at their steps, the settings, offline mode, one run
continued on resume without sending a step twice, and one error line when the package is missing."""
from __future__ import annotations

import json
import sys
import types

import pytest

from nnssl.training.wandb_log import check_wandb, wandb_enabled


class FakeRun:
    def __init__(self, store: dict, kwargs: dict) -> None:
        self.store, self.kwargs = store, kwargs
        self.logged = store.setdefault(kwargs["id"], [])
        self.finished = None

    @property
    def step(self) -> int:  # as W&B: the step after the last one it holds
        return max((s for s, _ in self.logged), default=-1) + 1

    def log(self, values: dict, step: int) -> None:
        assert step >= self.step, f"step {step} sent after {self.step - 1}"  # W&B drops non-monotonic steps
        self.logged.append((step, values))

    def finish(self, exit_code: int = 0) -> None:
        self.finished = exit_code


def fake_wandb() -> types.ModuleType:
    module = types.ModuleType("wandb")
    module.store, module.runs = {}, []

    def init(**kwargs):
        if kwargs["resume"] == "never":
            assert kwargs["id"] not in module.store, "a new run reused an id"
        run = FakeRun(module.store, kwargs)
        module.runs.append(run)
        return run

    module.init = init
    return module


@pytest.fixture
def toy_env(toy_env, monkeypatch):
    """The shared toy environment (tests/conftest.py) without any of nnU-Net's W&B variables."""
    for name in ("nnUNet_wandb_enabled", "nnUNet_wandb_project", "nnUNet_wandb_mode"):
        monkeypatch.delenv(name, raising=False)
    return toy_env


def test_variables_read_as_nnunet_reads_them(monkeypatch):
    assert not wandb_enabled({}) and not wandb_enabled({"nnUNet_wandb_enabled": "false"})
    assert wandb_enabled({"nnUNet_wandb_enabled": "1"}) and wandb_enabled({"nnUNet_wandb_enabled": "True"})
    with pytest.raises(ValueError, match="nnUNet_wandb_enabled='yes': set it to 1"):
        wandb_enabled({"nnUNet_wandb_enabled": "yes"})
    assert check_wandb({}) is None  # off: wandb is not even imported
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb())
    with pytest.raises(ValueError, match="nnUNet_wandb_mode='ofline': choose one of online, offline"):
        check_wandb({"nnUNet_wandb_enabled": "1", "nnUNet_wandb_mode": "ofline"})


def test_missing_package_is_one_error_line_before_any_data(toy_env, monkeypatch, capsys):
    from nnssl.cli.pretrain import main

    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    monkeypatch.setenv("nnUNet_wandb_enabled", "1")
    rc = main(["-m", "toy", "-d", "990", "--device", "cpu", "--encoder", "tiny", "--crop", "32", "--steps", "2",
               "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0] == ("error: nnUNet_wandb_enabled=1 but the wandb package is not installed: pip install wandb (or "
                      "unset nnUNet_wandb_enabled)")
    assert not (toy_env / "results").exists()


def test_run_logs_its_records_offline_and_resumes_the_same_run(toy_env, monkeypatch):
    from nnssl.training import loop
    from nnssl.training.loop import PretrainConfig, run_pretraining

    wandb = fake_wandb()
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    monkeypatch.setenv("nnUNet_wandb_enabled", "1")
    monkeypatch.setenv("nnUNet_wandb_mode", "offline")
    monkeypatch.setenv("nnUNet_wandb_project", "ssl-study")
    cfg = PretrainConfig(method="toy", datasets=["990"], encoder="tiny", crop=(32, 32, 32), batch_size=2, steps=4,
                         lr=1e-3, warmup_steps=1, device="cpu", num_workers=0, checkpoint_every=2, log_every=1)
    out = toy_env / "run"

    # interrupted while writing step 3: W&B already holds steps 0-2, the checkpoint is at step 2
    original = loop.TrainingLog.append

    def interrupt(self, record):
        original(self, record)
        if record["step"] == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop.TrainingLog, "append", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_pretraining(cfg, out, progress=False)
    monkeypatch.setattr(loop.TrainingLog, "append", original)
    first = wandb.runs[0]
    assert first.kwargs["mode"] == "offline" and first.kwargs["project"] == "ssl-study"
    assert first.kwargs["dir"] == str(out) and first.kwargs["resume"] == "never"
    assert first.kwargs["config"]["method"] == "toy" and first.kwargs["config"]["optimisation"]
    assert first.finished == 1  # the failure is reported to W&B
    assert [s for s, _ in first.logged] == [0, 1, 2]

    run_pretraining(cfg, out, resume=True, progress=False)
    second = wandb.runs[1]
    assert second.kwargs["id"] == first.kwargs["id"] and second.kwargs["resume"] == "allow"
    assert second.finished == 0
    logged = wandb.store[first.kwargs["id"]]
    assert [s for s, _ in logged] == [0, 1, 2, 3]  # step 2, logged again to log.jsonl, is not sent twice

    records = {r["step"]: r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "event" not in r}
    for step, values in logged:  # the same records as log.jsonl: losses, lr, grad norm, step anatomy, memory
        expected = {k: v for k, v in records[step].items() if k != "step" and isinstance(v, (int, float))}
        assert {"loss", "lr", "weight_decay", "grad_norm", "ms/step", "ms/forward", "peak_mib"} <= set(values)
        if step == 2:  # W&B keeps the interrupted attempt's step 2 (log.jsonl the resumed one's): same values, other
            # timings (the resumption is exact)
            assert values.keys() == expected.keys()
            assert {k: values[k] for k in ("loss", "lr", "grad_norm")} == {k: expected[k] for k in ("loss", "lr",
                                                                                                  "grad_norm")}
        else:
            assert values == expected
