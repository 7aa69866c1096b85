"""Shared helpers of the task tests: CPU-sized options per method, crops each method can take, one optimiser step.

The options only shrink widths and counts (projection sizes, heads, local crops, views) so that a step runs in a
second on the CPU; every method keeps its defining behaviour.
"""
from __future__ import annotations

import torch

from nnssl.encoders.swin import EncoderConfig, SwinEncoder
from nnssl.tasks import config_from_overrides, get_task_class

#: Crop (D, H, W) per method for tests: the smallest each method runs on without degenerating.
CROPS: dict[str, tuple[int, int, int]] = {
    "smit": (64, 64, 64), "simmim": (64, 64, 64), "dino": (64, 64, 64), "ibot": (64, 64, 64),
    "simclr": (64, 64, 64), "mocov3": (64, 64, 64), "cpc": (64, 64, 64), "rotation": (64, 64, 64),
    "swinunetr": (64, 64, 64), "mae": (64, 64, 64),
}

#: Per-method test options beyond the width shrinking of ``small_options``.
EXTRA: dict[str, dict[str, str]] = {
    "smit": {"view_size": "32"},
    "cpc": {"prediction_steps": "1"},
    "rotation": {"head_hidden_dims": "64,32"},
    "ibot": {"pred_start_fraction": "0"},
}


def small_options(name: str) -> dict[str, str]:
    """The reference defaults with widths shrunk so a CPU step stays fast (as ``nnssl_pretrain -o`` would)."""
    cfg = get_task_class(name).Config()
    small = {k: 256 for k in ("out_dim", "proj_dim", "patch_out_dim", "code_size") if hasattr(cfg, k)}
    small.update({k: 64 for k in ("hidden_dim", "head_hidden_dim", "proj_hidden_dim", "decoder_dim",
                                  "context_units", "contrastive_dim") if hasattr(cfg, k)})
    small.update({k: 2 for k in ("local_crops_number", "decoder_depth") if hasattr(cfg, k)})
    if hasattr(cfg, "decoder_heads"):
        small["decoder_heads"] = 4
    options = {k: str(v) for k, v in small.items()}
    options.update(EXTRA.get(name, {}))
    return options


def build_task(name: str, total_steps: int = 10, seed: int = 0, **overrides: str):
    """A task with the tiny encoder and CPU-sized options, set up for ``total_steps``."""
    cls = get_task_class(name)
    torch.manual_seed(seed)
    cfg = config_from_overrides(cls.Config, {**small_options(name), **overrides})
    task = cls(SwinEncoder(EncoderConfig.preset("tiny")), cfg)
    if not cls.uses_mask_token:
        task.student.mask_token.requires_grad_(False)
    task.setup(total_steps)
    return task


def crops_for(name: str, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """Random crops (batch, 1, *CROPS[name]) with some structure (a bright sphere per crop)."""
    g = torch.Generator().manual_seed(seed)
    size = CROPS[name]
    zz, yy, xx = torch.meshgrid(*[torch.linspace(-1, 1, s) for s in size], indexing="ij")
    out = []
    for _ in range(batch):
        c = 0.4 * (torch.rand(3, generator=g) - 0.5)
        sphere = ((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 < 0.3).float()
        out.append(sphere + 0.3 * torch.randn(size, generator=g))
    return torch.stack(out)[:, None]
