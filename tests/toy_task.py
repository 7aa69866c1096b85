"""A minimal pretext task used to test the training loop independently of the real methods.

It reconstructs hidden cubes of the crop from the encoder's first stage plus a per-crop offset read from the last
stage (a tiny SimMIM whose gradient reaches every encoder parameter, as DDP without unused-parameter search
requires), and keeps an EMA copy of its head plus a running buffer so that resume tests cover teacher and loss
state.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn
import torch.nn.functional as F

from nnssl.ema import ema_update, make_teacher
from nnssl.masking import random_cube_mask, upsample_mask
from nnssl.recipes import OptimRecipe
from nnssl.tasks.base import PretextTask


@dataclass
class ToyConfig:
    mask_ratio: float = 0.5
    momentum: float = 0.9


def toy_views(crops: Tensor, generator: torch.Generator, *, cfg: ToyConfig) -> dict[str, Tensor]:
    grid = tuple(s // 2 for s in crops.shape[2:])
    return {"image": crops, "mask": random_cube_mask(crops.shape[0], grid, 4, cfg.mask_ratio, generator)}


class ToyTask(PretextTask):
    name = "toy"
    family = "test"
    paper = "none (loop test)"
    Config = ToyConfig
    uses_mask_token = True
    recipe = OptimRecipe(base_lr=1e-3, reference_batch=None, warmup_fraction=0.05, weight_decay=0.05, clip_grad=3.0,
                         source="loop tests")

    def __init__(self, encoder, cfg=None):
        super().__init__(encoder, cfg)
        self.head = nn.Conv3d(encoder.cfg.feature_size, 8 * encoder.cfg.in_channels, 1)
        self.offset = nn.Linear(encoder.out_channels[-1], encoder.cfg.in_channels)
        self.teacher_head = make_teacher(self.head)
        self.register_buffer("running", torch.zeros(1))

    def view_fn(self):
        return partial(toy_views, cfg=self.cfg)

    def forward(self, views: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        all_feats = self.student(views["image"], views["mask"])
        feats = all_feats[0]
        pred = F.pixel_shuffle_3d(self.head(feats)) if hasattr(F, "pixel_shuffle_3d") else self._shuffle(self.head(feats))
        pred = pred + self.offset(all_feats[-1].flatten(2).mean(2))[:, :, None, None, None]
        m = upsample_mask(views["mask"], 2)
        loss = ((pred - views["image"]).abs() * m).sum() / m.sum().clamp(min=1)
        self.running.mul_(0.5).add_(loss.detach())
        return {"loss": loss, "loss/recon": loss.detach()}

    @staticmethod
    def _shuffle(x: Tensor) -> Tensor:
        b, c, d, h, w = x.shape
        x = x.view(b, c // 8, 2, 2, 2, d, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
        return x.reshape(b, c // 8, d * 2, h * 2, w * 2)

    def on_step_end(self, step: int) -> None:
        ema_update(self.teacher_head, self.head, self.cfg.momentum)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher_head.eval()
        return self


def toy_config(**overrides):
    """A PretrainConfig of the toy task on dataset 990 (tiny encoder, 32^3 crops, 4 CPU steps); keywords replace
    fields."""
    from nnssl.training.loop import PretrainConfig

    base = dict(method="toy", datasets=["990"], encoder="tiny", crop=(32, 32, 32), batch_size=2, steps=4, lr=1e-3,
                warmup_steps=1, device="cpu", num_workers=0, checkpoint_every=2)
    base.update(overrides)
    return PretrainConfig(**base)
