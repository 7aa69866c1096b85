"""3D rotation prediction (Taleb et al., "3D self-supervised methods for medical imaging", NeurIPS 2020,
https://arxiv.org/abs/2006.03829; the 2D task is Gidaris et al., ICLR 2018).

Each crop is rotated by one of 10 right-angle rotations (identity; 90, 180, 270 degrees about each of the three
axes, ``nnssl.rotations.ROTATIONS_10``), labels balanced over the batch. Encoder -> global token of the last stage
(B, 16F) -> MLP head -> logits (B, 10); cross-entropy against the label.

Shapes (cubic crops, side S divisible by 32, F = encoder feature size):
    make_views: crops (B, C, S, S, S) -> {"image": (B, C, S, S, S) rotated, "label": (B,) long in [0, 10)}
    forward: encoder(image)[-1] (B, 16F, S/32, S/32, S/32) -> (B, 16F) -> (B, 10) -> {"loss": CE, "loss/ce": same}
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor
import torch.nn.functional as F

from nnssl.encoders.swin import SwinEncoder
from nnssl.heads import MLP, global_token
from nnssl.rotations import ROTATIONS_10, balanced_labels, rotate_batch
from nnssl.tasks.base import PretextTask
from nnssl.views import intensity_jitter


@dataclass
class RotationConfig:
    #: Classification head: Taleb et al.'s fully connected top (two hidden layers of 1024, ReLU in their Keras code;
    #: GELU here, from nnssl.heads.MLP) then the 10-way output layer.
    head_hidden_dim: int = 1024
    head_layers: int = 3
    #: Std of the Gaussian noise of the intensity jitter. No flips: a flip composed with a rotation can equal
    #: another flip, which would make labels ambiguous.
    noise_std: float = 0.05


class RotationPrediction(PretextTask):
    """Rotation prediction: views {"image": (B, C, D, H, W) rotated, "label": (B,) long in [0, 10)} -> CE."""

    name: ClassVar[str] = "rotation"
    family: ClassVar[str] = "rotation prediction"
    paper: ClassVar[str] = "Taleb et al., 3D Self-Supervised Methods for Medical Imaging, NeurIPS 2020"
    Config: ClassVar[type] = RotationConfig
    table = ROTATIONS_10

    def __init__(self, encoder: SwinEncoder, cfg: RotationConfig | None = None) -> None:
        super().__init__(encoder, cfg)
        self.head = MLP(encoder.out_channels[-1], self.cfg.head_hidden_dim, len(self.table),
                        layers=self.cfg.head_layers, norm=None)

    def make_views(self, crops: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        if len(set(crops.shape[2:])) != 1:
            raise ValueError(f"3D rotation prediction turns every axis into every other: it needs cubic crops, got "
                             f"{tuple(crops.shape[2:])} (set a cubic crop size for pretraining)")
        labels = balanced_labels(crops.shape[0], len(self.table), generator)
        image = rotate_batch(intensity_jitter(crops, generator, noise_std=self.cfg.noise_std), labels, self.table)
        return {"image": image.contiguous(), "label": labels}

    def logits(self, x: Tensor) -> Tensor:
        """(B, C, D, H, W) -> (B, 10)."""
        return self.head(global_token(self.student(x)[-1]))

    def forward(self, views: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        logits = self.logits(views["image"])
        labels = views["label"].long()
        loss = F.cross_entropy(logits, labels)
        return {"loss": loss, "loss/ce": loss.detach()}
