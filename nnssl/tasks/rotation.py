"""3D rotation prediction (Taleb et al., "3D self-supervised methods for medical imaging", NeurIPS 2020,
https://arxiv.org/abs/2006.03829; reference code HealthML/self-supervised-3d-tasks, cited in
documentation/methods/rotation.md with file and line; the 2D task is Gidaris et al., ICLR 2018).

Each crop is rotated by one of 10 right-angle rotations (identity; 90, 180, 270 degrees about each of the three
axes, ``nnssl.rotations.ROTATIONS_10``), labels balanced over the batch; no other augmentation, as the reference.
Encoder -> global token of the last stage (B, 16F) -> Taleb's fully connected head (Dense 2048 ReLU, BatchNorm,
Dropout 0.5, Dense 1024 ReLU, BatchNorm, Dropout 0.5) -> logits (B, 10); cross-entropy against the label.

Shapes (cubic crops, side S divisible by 32, F = encoder feature size):
    make_views: crops (B, C, S, S, S) -> {"image": (B, C, S, S, S) rotated, "label": (B,) long in [0, 10)}
    forward: encoder(image)[-1] (B, 16F, S/32, S/32, S/32) -> (B, 16F) -> (B, 10) -> {"loss": CE, "loss/ce": same}
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import torch
from torch import Tensor, nn
import torch.nn.functional as F

from nnssl.encoders.swin import SwinEncoder, check_swin_input_size
from nnssl.heads import global_token
from nnssl.recipes import OptimRecipe
from nnssl.rotations import ROTATIONS_10, balanced_labels, rotate_batch
from nnssl.tasks.base import PretextTask, ViewFn


@dataclass
class RotationConfig:
    """Rotation-prediction head settings: Taleb et al.'s fully connected top (NeurIPS 2020)."""

    #: Taleb et al.'s fully connected top ("big_fully"): hidden widths, dropout after each hidden layer.
    head_hidden_dims: tuple[int, ...] = (2048, 1024)
    head_dropout: float = 0.5

    def __post_init__(self) -> None:
        self.head_hidden_dims = tuple(int(d) for d in self.head_hidden_dims)
        if not self.head_hidden_dims or min(self.head_hidden_dims) < 1:
            raise ValueError(f"head_hidden_dims={self.head_hidden_dims} must be positive widths")
        if not 0.0 <= self.head_dropout < 1.0:
            raise ValueError(f"head_dropout={self.head_dropout} must lie in [0, 1)")


def rotation_head(in_dim: int, hidden: tuple[int, ...], n_classes: int, dropout: float) -> nn.Sequential:
    """Dense -> ReLU -> BatchNorm -> Dropout per hidden width, then the linear classifier (B, in_dim) -> (B, classes);
    the order of Taleb's fully_connected.py."""
    blocks: list[nn.Module] = []
    for width in hidden:
        blocks += [nn.Linear(in_dim, width), nn.ReLU(), nn.BatchNorm1d(width), nn.Dropout(dropout)]
        in_dim = width
    return nn.Sequential(*blocks, nn.Linear(in_dim, n_classes))


def rotation_views(crops: Tensor, generator: torch.Generator, *, table: Tensor) -> dict[str, Tensor]:
    """Crops (B, C, D, H, W) -> {"image": each crop rotated, "label": (B,) its rotation's index in ``table``
    (labels balanced over the batch)}."""
    if len(set(crops.shape[2:])) != 1:
        raise ValueError(f"3D rotation prediction turns every axis into every other: it needs cubic crops, got "
                         f"{tuple(crops.shape[2:])} (set a cubic crop size for pretraining)")
    if crops.shape[0] < 2:
        raise ValueError("rotation prediction needs a batch of at least 2 crops (its head's BatchNorm)")
    labels = balanced_labels(crops.shape[0], len(table), generator)
    return {"image": rotate_batch(crops, labels, table).contiguous(), "label": labels}


class RotationPrediction(PretextTask):
    """Rotation prediction: views {"image": (B, C, D, H, W) rotated, "label": (B,) long in [0, 10)} -> CE."""

    name: ClassVar[str] = "rotation"
    family: ClassVar[str] = "rotation prediction"
    paper: ClassVar[str] = "Taleb et al., 3D Self-Supervised Methods for Medical Imaging, NeurIPS 2020"
    Config: ClassVar[type] = RotationConfig
    #: configs/train/rotation_3d.json: Adam, lr 1e-4, no schedule, no weight decay, no clipping.
    recipe: ClassVar[OptimRecipe] = OptimRecipe(
        base_lr=1e-4, reference_batch=None, schedule="constant",
        source="HealthML/self-supervised-3d-tasks configs/train/rotation_3d.json (Adam, constant lr)")
    table = ROTATIONS_10

    def __init__(self, encoder: SwinEncoder, cfg: RotationConfig | None = None) -> None:
        super().__init__(encoder, cfg)
        self.head = rotation_head(encoder.out_channels[-1], self.cfg.head_hidden_dims, len(self.table),
                                  self.cfg.head_dropout)

    @classmethod
    def check_crop(cls, crop: tuple[int, ...], cfg: RotationConfig) -> list[str]:
        """Swin's rule and a ValueError for a non-cubic crop (the 10 rotations turn every axis into every other)."""
        check_swin_input_size(crop)
        if len(set(crop)) != 1:
            raise ValueError(f"3D rotation prediction turns every axis into every other: it needs a cubic crop, got "
                             f"{tuple(crop)} (e.g. --crop {max(crop)})")
        return []

    def view_fn(self) -> ViewFn:
        """``rotation_views`` bound to the 10-rotation table: each crop rotated, labels balanced over the batch."""
        return partial(rotation_views, table=self.table)

    def logits(self, x: Tensor) -> Tensor:
        """(B, C, D, H, W) -> (B, 10)."""
        return self.head(global_token(self.student(x)[-1]))

    def forward(self, views: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        """Rotated crops (B, C, S, S, S) -> logits (B, 10); returns {"loss": cross-entropy against the rotation
        labels, "loss/ce": same}."""
        loss = F.cross_entropy(self.logits(views["image"]), views["label"].long())
        return {"loss": loss, "loss/ce": loss.detach()}
