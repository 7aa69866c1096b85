"""SuPreM's supervised SwinUNETR (Li et al., ICLR 2024; MrGiovanni/SuPreM, AbdomenAtlas) <-> the encoder tensors.

Layout read from the authors' code (citations in documentation/checkpoints.md): ``supervised_pretraining/train.py``
saves ``{"net": model.state_dict(), "optimizer", "scheduler", "epoch"}`` of a DistributedDataParallel
``Universal_model`` whose ``backbone`` is the repository's own SwinUNETR copy (backbone/swinunetr.py: MONAI 0.9's
SwinUNETR, feature size 48, window 7, depths 2-2-2-2, heads 3-6-12-24, no v2 blocks), next to the CLIP-driven heads
``precls_conv``, ``GAP``, ``controller`` and ``organ_embedding`` / ``text_to_vision``: keys
``module.backbone.swinViT.*``. The same script also writes ``<backbone>_backbone.pth`` with
``{"net": model.module.backbone.state_dict()}`` (keys ``swinViT.*``). The fine-tuning scripts load the first
(target_applications/totalsegmentator/train.py: drop the first key component, keep keys whose next one is
``backbone``). Its patch merging concatenates the sub-grids in MONAI's pre-1.5 order ("monai-legacy").
"""
from __future__ import annotations

from torch import Tensor

from nnssl.convert.monai import swinunetr_tensors
from nnssl.convert.reading import RUNTIME_PREFIXES, strip_prefixes
from nnssl.convert.report import ConversionReport
from nnssl.encoders.swin import ENCODER_PREFIX
from nnssl.errors import ConversionError

_UNIVERSAL_HEADS = {
    name: f"SuPreM Universal Model head ({name}: CLIP-driven organ queries, not the Swin encoder)"
    for name in ("precls_conv", "GAP", "controller", "organ_embedding", "text_to_vision")
}


def from_suprem(state: dict[str, Tensor], report: ConversionReport) -> dict[str, Tensor]:
    """SuPreM ``supervised_suprem_swinunetr_*.pth`` / ``*_backbone.pth`` -> encoder tensors; the SwinUNETR decoder and
    the Universal Model heads are dropped."""
    state = strip_prefixes(state, RUNTIME_PREFIXES + ("backbone.",))
    out = swinunetr_tensors(state, report, "SuPreM's Universal_model / SwinUNETR", extra_dropped=_UNIVERSAL_HEADS)
    if not out:
        raise ConversionError("no 'module.backbone.swinViT.*' or 'swinViT.*' tensors: not a SuPreM SwinUNETR "
                              "checkpoint", report)
    return out


def to_suprem(encoder: dict[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """``{"net": {"module.backbone.swinViT.*": ...}}``, the layout of supervised_suprem_swinunetr_2100.pth that
    SuPreM's fine-tuning scripts read (they keep the keys whose second component is ``backbone``)."""
    return {"net": {f"module.backbone.{k}": v for k, v in encoder.items() if k.startswith(ENCODER_PREFIX)}}


__all__ = ["from_suprem", "to_suprem"]
