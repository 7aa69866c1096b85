"""DINO-style freezing of the head's last layer during the first steps (the loop's before_optimizer_step hook)."""
from __future__ import annotations

import pytest
import torch

from nnssl.encoders.swin import EncoderConfig, SwinEncoder
from nnssl.heads import DINOHead
from nnssl.tasks import get_task_class


@pytest.mark.parametrize("name", ["dino", "ibot", "smit"])
def test_last_layer_frozen_only_during_the_first_steps(name):
    cls = get_task_class(name)
    defaults = cls.Config()
    extra = {k: v for k, v in (("patch_out_dim", 64), ("local_crops_number", 2), ("view_size", 32),
                                ("pred_start_fraction", 0.0)) if hasattr(defaults, k)}
    cfg = cls.Config(out_dim=64, head_hidden_dim=32, freeze_last_layer_fraction=0.5, **extra)
    torch.manual_seed(0)
    task = cls(SwinEncoder(EncoderConfig.preset("tiny")), cfg)
    task.setup(total_steps=4)  # steps 0 and 1 frozen
    crops = torch.randn(2, 1, 64, 64, 64) if name == "ibot" else torch.randn(2, 1, 32, 32, 32)
    last = [p for m in task.heads.modules() if isinstance(m, DINOHead) for p in m.last_layer.parameters()
            if p.requires_grad]
    assert last
    for step, frozen in ((0, True), (1, True), (2, False)):
        task.zero_grad()
        task(task.make_views(crops, torch.Generator().manual_seed(step)), step)["loss"].backward()
        task.before_optimizer_step(step)
        assert all((p.grad is None) == frozen for p in last), f"step {step}"
