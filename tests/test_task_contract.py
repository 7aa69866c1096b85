"""Contract tests run for every method in the registry (a new method is covered by adding its registry line).

Each method pretrains for one step through the real loop on a tiny preprocessed dataset (tiny encoder, 64^3 crops,
CPU): the loss is finite, the encoder changes, the checkpoint restores a task that computes the same loss, and the
encoder loads into the fine-tuning network with every encoder tensor.
"""
from __future__ import annotations

import pytest
import torch

from nnssl.checkpoint import load_checkpoint, load_encoder_into
from nnssl.encoders.swin import build_swinunetr
from nnssl.tasks import get_task_class, method_names
from nnssl.training import loop
from preprocessed_fixture import write_preprocessed_dataset

METHODS = sorted(method_names())
CROP = 64


def _small_options(task_cls) -> dict[str, str]:
    """The paper defaults, with projection sizes shrunk so a CPU test stays fast (as nnssl_pretrain -o would)."""
    cfg = task_cls.Config()
    small = {k: 256 for k in ("out_dim", "proj_dim", "head_out_dim", "patch_out_dim", "code_size") if hasattr(cfg, k)}
    small.update({k: 64 for k in ("hidden_dim", "head_hidden_dim", "proj_hidden_dim", "pred_hidden_dim",
                                  "decoder_dim", "context_channels", "contrastive_dim") if hasattr(cfg, k)})
    small.update({k: 2 for k in ("local_crops_number", "decoder_depth") if hasattr(cfg, k)})
    if hasattr(cfg, "decoder_heads"):
        small["decoder_heads"] = 4
    return {k: str(v) for k, v in small.items()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("pre")
    write_preprocessed_dataset(root, 990, cases=2, shape=(CROP, CROP, CROP))
    return root


@pytest.mark.parametrize("name", METHODS)
def test_method_contract(name, dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_preprocessed", str(dataset))
    cls = get_task_class(name)
    assert cls.name == name and cls.family and cls.paper
    cfg = loop.PretrainConfig(method=name, datasets=["990"], encoder="tiny", crop=(CROP,) * 3, batch_size=2, steps=1,
                              lr=1e-3, warmup_steps=0, device="cpu", num_workers=0, task_options=_small_options(cls))
    initial = loop.build_task(cfg, in_channels=1).encoder().swin_state_dict()
    final, task = loop._run(cfg, tmp_path / "run", False, False, loop.DistInfo())
    ckpt = load_checkpoint(final)
    record = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert len(record) == 1 and '"loss": NaN' not in record[0]

    changed = [k for k in initial if not torch.equal(initial[k], ckpt["encoder"][k])]
    assert changed, f"{name}: one step changed no encoder weight"

    # The checkpoint restores a task that computes the same loss on the same views.
    clone = loop.build_task(cfg, in_channels=1)
    clone.setup(cfg.steps)
    clone.load_state_dict(ckpt["task_state"])
    task.eval(), clone.eval()
    crops = torch.randn(2, 1, CROP, CROP, CROP, generator=torch.Generator().manual_seed(123))
    views = task.make_views(crops, torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.manual_seed(5)
        a = task(views, 0)["loss"]
        torch.manual_seed(5)
        b = clone(views, 0)["loss"]
    assert torch.isfinite(a)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)

    # The pretrained encoder loads into the fine-tuning network, every encoder tensor.
    net = build_swinunetr(task.encoder().cfg, out_channels=3)
    report = load_encoder_into(net, ckpt)
    assert not report.missing and len(report.loaded) == len(ckpt["encoder"])
    torch.testing.assert_close(net.swinViT.patch_embed.proj.weight, ckpt["encoder"]["swinViT.patch_embed.proj.weight"])
