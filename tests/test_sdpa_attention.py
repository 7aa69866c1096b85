"""SDPA window attention (nnssl.encoders.attention): equal to MONAI's eager path in forward and backward (fp32, 1e-5),
switched per stage, the same state dict, and the eager path back wherever attention maps are read."""
from __future__ import annotations

import copy

import pytest
import torch
from monai.networks.nets.swin_unetr import WindowAttention

from nnssl.encoders.attention import (
    SDPAWindowAttention,
    attention_kinds,
    eager_attention,
    parse_attention,
    resolve_attention,
    set_attention,
)
from nnssl.encoders.swin import EncoderConfig, SwinEncoder

TOL = 1e-5


def _close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    err = (a - b).abs().max().item()
    scale = max(b.abs().max().item(), 1.0)
    assert err <= TOL * scale, f"{what}: max difference {err:.3g} (scale {scale:.3g})"


def _grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.grad.clone() for k, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("shifted", [False, True])
@pytest.mark.parametrize("batched_mask", [False, True], ids=["broadcast-mask", "4d-mask"])
def test_window_attention_module_equals_eager_forward_and_backward(shifted, batched_mask, monkeypatch):
    """Both mask layouts (the 4-D one is CUDA's, for the fused kernels) on CPU tensors."""
    from nnssl.encoders import attention

    monkeypatch.setattr(attention, "BATCHED_MASK_DEVICES", {"cpu"} if batched_mask else set())
    torch.manual_seed(0)
    eager = WindowAttention(dim=24, num_heads=3, window_size=(3, 3, 3), qkv_bias=True)
    with torch.no_grad():  # a bias table far from MONAI's near-zero init, so that its gradient matters
        eager.relative_position_bias_table.normal_(std=1.0)
    sdpa = copy.deepcopy(eager)
    sdpa.__class__ = SDPAWindowAttention
    n, nw, images = 27, 4, 2
    x = torch.randn(images * nw, n, 24)
    mask = None
    if shifted:  # MONAI's shift mask: 0 within a region, -100 across regions
        region = torch.randint(0, 3, (nw, n))
        mask = torch.where(region[:, :, None] == region[:, None, :], 0.0, -100.0)
    xe, xs = x.clone().requires_grad_(), x.clone().requires_grad_()
    ye, ys = eager(xe, mask), sdpa(xs, mask)
    _close(ys, ye, "output")
    w = torch.randn_like(ye)
    (ye * w).sum().backward()
    (ys * w).sum().backward()
    _close(xs.grad, xe.grad, "input gradient")
    ge, gs = _grads(eager), _grads(sdpa)
    assert set(gs) == set(ge) and "relative_position_bias_table" in gs
    for k in ge:
        _close(gs[k], ge[k], f"gradient of {k}")


@pytest.mark.parametrize("cfg, size", [
    (EncoderConfig.preset("tiny"), (64, 64, 64)),  # window 4: shifted blocks at stages 1-3, one window at stage 4
    (EncoderConfig(feature_size=12, window_size=7), (64, 32, 64)),  # window 7: padded grids, smaller last windows
])
def test_encoder_with_sdpa_equals_eager_forward_and_backward(cfg, size):
    torch.manual_seed(1)
    eager = SwinEncoder(cfg)
    with torch.no_grad():
        for name, p in eager.named_parameters():
            if name.endswith("relative_position_bias_table"):
                p.normal_(std=1.0)
    sdpa = copy.deepcopy(eager)
    assert set_attention(sdpa, ["sdpa"] * 4) == sum(cfg.depths)
    x = torch.randn(2, 1, *size)
    out_e, out_s = eager(x), sdpa(x)
    for i, (a, b) in enumerate(zip(out_s, out_e)):
        _close(a, b, f"feature map {i}")
    weights = [torch.randn_like(o) for o in out_e]
    sum((o * w).sum() for o, w in zip(out_e, weights)).backward()
    sum((o * w).sum() for o, w in zip(out_s, weights)).backward()
    ge, gs = _grads(eager), _grads(sdpa)
    assert set(gs) == set(ge)
    for k in ge:
        _close(gs[k], ge[k], f"gradient of {k}")
    assert sdpa.state_dict().keys() == eager.state_dict().keys()  # checkpoints do not change


def test_stages_switch_independently_and_eager_attention_restores():
    enc = SwinEncoder(EncoderConfig.preset("tiny"))
    assert attention_kinds(enc) == {s: {"eager"} for s in range(1, 5)}
    set_attention(enc, ["sdpa", "sdpa", "eager", "eager"])
    assert attention_kinds(enc) == {1: {"sdpa"}, 2: {"sdpa"}, 3: {"eager"}, 4: {"eager"}}
    with eager_attention(enc):
        assert attention_kinds(enc) == {s: {"eager"} for s in range(1, 5)}
    assert attention_kinds(enc) == {1: {"sdpa"}, 2: {"sdpa"}, 3: {"eager"}, 4: {"eager"}}
    set_attention(enc, ["eager"] * 4)
    assert not any(isinstance(m, SDPAWindowAttention) for m in enc.modules())


def test_attention_recorder_reads_maps_from_sdpa_blocks():
    """The attention analyses hook MONAI's softmax; an SDPA block computes none, so the recorder runs it eagerly."""
    from nnssl.finetune.attention import AttentionRecorder

    enc = SwinEncoder(EncoderConfig.preset("tiny"))
    set_attention(enc, ["sdpa"] * 4)
    seen = []
    with torch.no_grad(), AttentionRecorder(enc, seen.append):
        enc(torch.randn(1, 1, 64, 64, 64))
    assert len(seen) == sum(enc.cfg.depths)
    assert attention_kinds(enc) == {s: {"sdpa"} for s in range(1, 5)}  # restored after recording


def test_attention_choice_parsing():
    assert parse_attention("sdpa") == ("sdpa",) * 4
    assert parse_attention("SDPA, sdpa, eager, eager") == ("sdpa", "sdpa", "eager", "eager")
    assert resolve_attention("eager", "cuda") == ("eager",) * 4
    assert len(resolve_attention("auto", "cpu")) == 4
    for bad in ("flash", "sdpa,eager", "sdpa,sdpa,sdpa,sdpa,sdpa"):
        with pytest.raises(ValueError, match="--attention"):
            parse_attention(bad)
    with pytest.raises(ValueError, match="need 4 kinds"):
        set_attention(SwinEncoder(EncoderConfig.preset("tiny")), ["sdpa"])


# ----------------------------------------------------------------------------------------------------------------------
# nnssl_pretrain --attention
# ----------------------------------------------------------------------------------------------------------------------


def test_pretraining_with_sdpa_trains_like_eager_and_may_switch_on_resume(toy_env, monkeypatch):
    import json

    import torch.nn.functional as F

    from nnssl.checkpoint import load_checkpoint
    from nnssl.training import loop
    from nnssl.training.loop import PretrainConfig, run_pretraining

    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))

    def cfg(attention: str) -> PretrainConfig:
        return PretrainConfig(method="toy", datasets=["990"], encoder="tiny", crop=(32, 32, 32), batch_size=2,
                              steps=4, lr=1e-3, warmup_steps=1, device="cpu", num_workers=0, checkpoint_every=2,
                              attention=attention)

    def losses(run) -> list[float]:
        return [json.loads(l)["loss"] for l in (run / "log.jsonl").read_text().splitlines()]

    fast = load_checkpoint(run_pretraining(cfg("sdpa"), toy_env / "sdpa", progress=False))
    assert len(calls) >= 4 * 8  # 4 steps x the tiny encoder's 8 blocks
    assert json.loads((toy_env / "sdpa" / "config.json").read_text())["attention"] == "sdpa"

    # MONAI's eager path for the first two steps (interrupted after the step-2 checkpoint), then resumed with SDPA at
    # stage 1: the attention is a runtime setting, not part of the run
    calls.clear()
    original = loop.TrainingLog.append

    def interrupt(self, record):
        original(self, record)
        if record["step"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop.TrainingLog, "append", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_pretraining(cfg("eager"), toy_env / "mixed", progress=False)
    monkeypatch.setattr(loop.TrainingLog, "append", original)
    assert not calls  # MONAI's own SDPA branch runs only without gradients and is off by default
    mixed = load_checkpoint(run_pretraining(cfg("sdpa,eager,eager,eager"), toy_env / "mixed", resume=True,
                                            progress=False))
    assert mixed["step"] == 4 and calls

    # same start, same crops: the two paths train alike up to fp32 rounding
    a, b = losses(toy_env / "sdpa"), losses(toy_env / "mixed")
    assert len(a) == len(b) == 4
    assert a[0] == pytest.approx(b[0], rel=1e-5) and a == pytest.approx(b, rel=1e-3)
    assert fast["encoder"].keys() == mixed["encoder"].keys()  # the same checkpoint layout


def test_cli_refuses_an_unknown_attention_kind(toy_env, capsys):
    from nnssl.cli.pretrain import main

    assert main(["-m", "toy", "-d", "990", "--device", "cpu", "--encoder", "tiny", "--crop", "32",
                 "--attention", "flash"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "--attention 'flash'" in err[0]
