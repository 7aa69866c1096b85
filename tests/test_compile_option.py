"""nnssl_pretrain --compile: the task's forward runs through torch.compile (here TorchDynamo's capture with the
eager backend: the real tracing of the task, without the minutes a C++ compile takes on a CPU) and trains as
without it; a runtime setting, changeable on resume."""
from __future__ import annotations

import json

import pytest
import torch



def test_compiled_run_traces_the_task_and_trains_as_the_plain_one(toy_env, monkeypatch):
    from nnssl.training.loop import PretrainConfig, run_pretraining

    compiled = []
    real = torch.compile

    def compile_eagerly(model, **kwargs):
        compiled.append(model)
        return real(model, backend="eager", **kwargs)

    monkeypatch.setattr(torch, "compile", compile_eagerly)

    def cfg(**kw) -> PretrainConfig:
        return PretrainConfig(method="toy", datasets=["990"], encoder="tiny", crop=(32, 32, 32), batch_size=2,
                              steps=2, lr=1e-3, warmup_steps=1, device="cpu", num_workers=0, checkpoint_every=2, **kw)

    def losses(run) -> list[float]:
        return [json.loads(l)["loss"] for l in (run / "log.jsonl").read_text().splitlines()]

    run_pretraining(cfg(), toy_env / "plain", progress=False)
    assert not compiled
    torch._dynamo.reset()
    run_pretraining(cfg(compile=True), toy_env / "compiled", progress=False)
    assert len(compiled) == 1 and type(compiled[0]).__name__ == "ToyTask"
    assert json.loads((toy_env / "compiled" / "config.json").read_text())["compile"] is True
    assert losses(toy_env / "compiled") == pytest.approx(losses(toy_env / "plain"), rel=1e-5)
    torch._dynamo.reset()
