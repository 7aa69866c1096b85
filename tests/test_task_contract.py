"""Contract tests run for every method in the registry (a new method is covered by adding its registry line).

Each method builds with the tiny encoder, makes its views, takes one AdamW step on CPU with a finite loss that
changes the encoder, survives a checkpoint round trip (same loss afterwards), and its encoder loads into the
fine-tuning network with every encoder tensor.
"""
from __future__ import annotations

import io

import pytest
import torch

from nnssl.checkpoint import load_encoder_into
from nnssl.encoders.swin import EncoderConfig, SwinEncoder, build_swinunetr
from nnssl.tasks import _REGISTRY, get_task_class

METHODS = sorted(_REGISTRY)
CROP = 64


def _small_config(task_cls):
    """The paper defaults, with projection outputs shrunk so a CPU test stays fast."""
    cfg = task_cls.Config()
    small = {k: 256 for k in ("out_dim", "proj_dim", "head_out_dim", "patch_out_dim", "code_size") if hasattr(cfg, k)}
    small.update({k: 64 for k in ("hidden_dim", "head_hidden_dim", "proj_hidden_dim", "pred_hidden_dim",
                                  "decoder_dim", "context_channels", "contrastive_dim") if hasattr(cfg, k)})
    small.update({k: 2 for k in ("local_crops_number", "decoder_depth") if hasattr(cfg, k)})
    if hasattr(cfg, "decoder_heads"):
        small["decoder_heads"] = 4
    return type(cfg)(**{**cfg.__dict__, **small})


def _build(name):
    torch.manual_seed(0)
    cls = get_task_class(name)
    task = cls(SwinEncoder(EncoderConfig.preset("tiny")), _small_config(cls))
    task.setup(total_steps=10)
    return task


def _views(task, seed=0):
    crops = torch.randn(2, 1, CROP, CROP, CROP, generator=torch.Generator().manual_seed(123))
    return task.make_views(crops, torch.Generator().manual_seed(seed))


def _params(task):
    return [p for p in task.parameters() if p.requires_grad]


@pytest.mark.parametrize("name", METHODS)
def test_method_contract(name):
    cls = get_task_class(name)
    assert cls.name == name and cls.family and cls.paper
    task = _build(name)
    task.train()
    views = _views(task)
    out = task(views, 0)
    assert torch.isfinite(out["loss"]) and out["loss"].ndim == 0
    assert all(k == "loss" or k.startswith("loss/") for k in out)

    before = {k: v.clone() for k, v in task.encoder().swin_state_dict().items()}
    opt = torch.optim.AdamW(_params(task), lr=1e-3)
    opt.zero_grad()
    out["loss"].backward()
    opt.step()
    task.on_step_end(0)
    after = task.encoder().swin_state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed, f"{name}: one step changed no encoder weight"

    # Checkpoint round trip: a fresh task loaded from the state dict computes the same loss on the same views.
    buffer = io.BytesIO()
    torch.save(task.state_dict(), buffer)
    buffer.seek(0)
    clone = _build(name)
    clone.load_state_dict(torch.load(buffer))
    task.eval(), clone.eval()
    views = _views(task, seed=1)
    with torch.no_grad():
        torch.manual_seed(5)
        a = task(views, 1)["loss"]
        torch.manual_seed(5)
        b = clone(views, 1)["loss"]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)

    # The pretrained encoder loads into the fine-tuning network, every encoder tensor.
    ckpt = {"encoder_config": task.encoder().cfg.to_dict(), "encoder": task.encoder().swin_state_dict()}
    net = build_swinunetr(task.encoder().cfg, out_channels=3)
    report = load_encoder_into(net, ckpt)
    assert not report.missing and len(report.loaded) == len(ckpt["encoder"])
    torch.testing.assert_close(net.swinViT.patch_embed.proj.weight, after["swinViT.patch_embed.proj.weight"])
