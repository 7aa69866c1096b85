"""Contract tests run for every method in the registry (a new method is covered by adding its registry line).

Each method pretrains for one step through the real loop on a tiny preprocessed dataset (tiny encoder, 64^3 crops,
CPU): the loss is finite, the encoder changes, the checkpoint restores a task that computes the same loss, and the
encoder loads into the fine-tuning network with every encoder tensor. One training step gives a non-zero gradient to
every encoder parameter (the mask token excepted for methods that do not mask), and every method's reference recipe
is the one its documentation page lists.
"""
from __future__ import annotations

import pytest
import torch

from nnssl.checkpoint import load_checkpoint, load_encoder_into
from nnssl.encoders.swin import build_swinunetr
from nnssl.tasks import get_task_class, method_names
from nnssl.training import loop
from preprocessed_fixture import write_preprocessed_dataset
from task_helpers import CROPS, build_task, crops_for, small_options

METHODS = sorted(method_names())
CROP = 64


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
                              lr=1e-3, warmup_steps=0, device="cpu", num_workers=0, task_options=small_options(name))
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


@pytest.mark.parametrize("name", METHODS)
def test_one_step_trains_every_encoder_parameter(name):
    """No stage or block of the encoder is left untrained: every parameter gets a non-zero gradient in one step."""
    task = build_task(name)
    task.train()
    views = task.make_views(crops_for(name), torch.Generator().manual_seed(0))
    task(views, step=5)["loss"].backward()
    encoder = task.encoder()
    params = {n: p for n, p in encoder.named_parameters() if n != "mask_token" or type(task).uses_mask_token}
    without = [n for n, p in params.items() if p.grad is None or not torch.any(p.grad != 0)]
    assert not without, f"{name}: {len(without)}/{len(params)} encoder parameters get no gradient, e.g. {without[:5]}"
    if type(task).uses_mask_token:
        assert "mask_token" in params


@pytest.mark.parametrize("name", METHODS)
def test_crop_check_accepts_the_test_crop_and_refuses_a_non_swin_size(name):
    task = build_task(name)
    assert isinstance(type(task).check_crop(CROPS[name], task.cfg), list)
    with pytest.raises(ValueError):
        type(task).check_crop((48, 64, 64), task.cfg)


DDP_DRIVER = """
import json, sys, torch
from pathlib import Path
from nnssl.training import loop
from task_helpers import CROPS, small_options
info = loop.init_distributed("cpu")
for name in sys.argv[2].split(","):
    cfg = loop.PretrainConfig(method=name, datasets=["990"], encoder="tiny", crop=CROPS[name], batch_size=2, steps=2,
                              lr=1e-3, warmup_steps=0, device="cpu", num_workers=0, checkpoint_every=10,
                              task_options=small_options(name))
    out = Path(sys.argv[1]) / name
    final, task = loop._run(cfg, out, False, False, info)
    torch.save(task.encoder().swin_state_dict(), out / f"rank{info.rank}.pt")
loop.cleanup_distributed()
"""


def test_every_method_runs_under_ddp_without_unused_parameter_search(dataset, tmp_path):
    """Two gloo ranks, two steps, DistributedDataParallel with find_unused_parameters=False and no static graph: DDP
    fails at the second forward if any trainable parameter got no gradient in the first."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    tests = Path(__file__).parent
    driver = tmp_path / "driver.py"
    driver.write_text(DDP_DRIVER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "nnUNet_preprocessed": str(dataset)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29523", str(driver), str(tmp_path / "runs"), ",".join(METHODS)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for name in METHODS:
        r0 = torch.load(tmp_path / "runs" / name / "rank0.pt")
        r1 = torch.load(tmp_path / "runs" / name / "rank1.pt")
        for key in r0:
            torch.testing.assert_close(r0[key], r1[key], msg=f"{name}: {key}")
    from nnssl.training import loop

    assert "find_unused_parameters=False" in Path(loop.__file__).read_text()


def test_contrastive_batch_warnings_count_the_negatives_each_loss_sees():
    """SimCLR and MoCo v3 gather negatives across ranks (global batch); Tang's loss does not (per-rank batch)."""
    def warnings(name, batch, world):
        cfg = loop.PretrainConfig(method=name, datasets=["1"], encoder="tiny", crop=CROPS[name], batch_size=batch,
                                  device="cpu", task_options=small_options(name))
        return [w for w in loop.startup_warnings(cfg, build_task(name), world) if "negative" in w]

    assert warnings("simclr", 2, 1) and "more GPUs" in warnings("simclr", 2, 1)[0]
    assert not warnings("simclr", 2, 8)  # 16 crops over 8 ranks: 30 negatives
    assert "more GPUs add no negatives" in warnings("swinunetr", 2, 8)[0]
    assert not warnings("swinunetr", 16, 1)
    assert not warnings("simmim", 2, 1)  # no negatives, no warning
