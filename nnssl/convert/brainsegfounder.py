"""BrainSegFounder (Cox et al. 2024; lab-smile/BrainSegFounder) SwinUNETR pretraining checkpoints <-> the encoder.

Layout read from the authors' code (citations in documentation/checkpoints.md): ``pretrain/models/ssl_head.py``
``SSLHead`` holds ``swinViT`` (MONAI SwinTransformer at the pinned commit a23c7f54, window 7, feature size 48 by
default, depths ``[2, 2, {2, 6, 18}, 2]``, heads ``[h, 2h, 4h, 8h]`` with h in {3, 4, 6}) and the pretraining heads
``rotation_head``, ``contrastive_head`` (Linear) and ``conv`` (the reconstruction decoder); ``pretrain/main_T1T2.py``
trains it on two channels (T1, T2) and saves ``{"global_step", "epoch", "state_dict": model.state_dict(),
"optimizer"}`` under DistributedDataParallel: keys ``module.swinViT.*``. The BraTS fine-tuning script reads exactly
the keys starting with ``module.swinViT.``. The pinned MONAI's patch merging is the pre-1.5 ("monai-legacy") order.
"""
from __future__ import annotations

from torch import Tensor

from nnssl.convert.report import ConversionReport
from nnssl.convert.swinunetr_ssl import ssl_head_tensors
from nnssl.encoders.swin import ENCODER_PREFIX
from nnssl.errors import ConversionError

_HEADS = {
    "rotation_pre": "rotation head (BrainSegFounder SSLHead pretraining)",
    "rotation_head": "rotation head (BrainSegFounder SSLHead pretraining)",
    "contrastive_pre": "contrastive head (BrainSegFounder SSLHead pretraining)",
    "contrastive_head": "contrastive head (BrainSegFounder SSLHead pretraining)",
    "conv": "reconstruction decoder (BrainSegFounder SSLHead pretraining)",
}


def from_brainsegfounder(state: dict[str, Tensor], report: ConversionReport) -> dict[str, Tensor]:
    """BrainSegFounder SSLHead checkpoint -> encoder tensors; the pretraining heads are dropped."""
    out = ssl_head_tensors(state, report, _HEADS, "BrainSegFounder's SSLHead", top_level=False)
    if not out:
        raise ConversionError("no 'module.swinViT.*' tensors: not a BrainSegFounder SSLHead checkpoint", report)
    return out


def to_brainsegfounder(encoder: dict[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """``{"state_dict": {"module.swinViT.*": ...}}``, what BrainSegFounder's fine-tuning script reads."""
    return {"state_dict": {f"module.{k}": v for k, v in encoder.items() if k.startswith(ENCODER_PREFIX)}}


__all__ = ["from_brainsegfounder", "to_brainsegfounder"]
