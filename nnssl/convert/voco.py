"""VoCo (Wu et al., CVPR 2024; TPAMI: Luffy03/Large-Scale-Medical) SwinUNETR-v2 checkpoints <-> the encoder tensors.

Layouts read from the authors' code (citations in documentation/checkpoints.md):

- Large-Scale-Medical ``Self-supervised/models/voco_head.py``: ``VoCoHead`` = ``backbone`` (a ``Swin`` module:
  ``swinViT`` = MONAI SwinTransformer with ``use_v2=True``, window 7, depths 2-2-2-2, heads 3-6-12-24, feature size
  48/96/192 for B/L/H, plus SwinUNETR's ``encoder1-4``/``encoder10`` blocks) and the projection heads ``student`` /
  ``teacher`` (``layer1..3``); ``Omni-supervised`` adds the decoder ``decoder1-5`` / ``out``. Saved by
  ``voco_train.py`` as ``{"state_dict": model.state_dict(), ...}`` (``module.`` under DistributedDataParallel);
- the released ``VoCo_{B,L,H}_SSL_head.pt`` / ``VoComni_{B,L,H}.pt``: whatever the authors' loader accepts
  (Downstream/monai/BTCV/models/models.py ``load``): a ``state_dict`` / ``network_weights`` / ``net`` / ``student``
  wrapper, ``module.`` and ``backbone.`` prefixes, ``swin_vit`` for ``swinViT``;
- VoCo CVPR 2024 (Luffy03/VoCo ``models/voco_head.py``): two full ``Swin`` branches ``student.*`` and ``teacher.*``
  (the teacher an EMA of the student) and ``proj_head``; one of them must be chosen (``--prefix``).

The authors pin MONAI 1.3.0 (requirements.txt), whose SwinUNETR patch merging is the pre-1.5 ("monai-legacy") order.
"""
from __future__ import annotations

from torch import Tensor

from nnssl.convert.monai import swinunetr_tensors
from nnssl.convert.reading import RUNTIME_PREFIXES, strip_prefixes
from nnssl.convert.report import ConversionReport
from nnssl.encoders.swin import ENCODER_PREFIX
from nnssl.errors import ConversionError

_HEADS = {
    "student": "VoCo projection head (student; Large-Scale-Medical VoCoHead.student)",
    "teacher": "VoCo projection head (EMA teacher; Large-Scale-Medical VoCoHead.teacher)",
    "proj_head": "VoCo projection head (CVPR 2024 Swin.proj_head)",
}


def from_voco(state: dict[str, Tensor], report: ConversionReport) -> dict[str, Tensor]:
    """Any VoCo layout above -> encoder tensors; decoders and projection heads dropped."""
    state = strip_prefixes(state)
    branches = sorted({k.split(".", 1)[0] for k in state if k.startswith(("student.swinViT.", "teacher.swinViT."))})
    if len(branches) == 2:
        raise ConversionError(
            "the file holds two Swin encoders, 'student.swinViT.*' and 'teacher.swinViT.*' (a VoCo CVPR 2024 training "
            "checkpoint, Luffy03/VoCo models/voco_head.py VoCoHead): choose one with --prefix teacher. (the EMA "
            "copy) or --prefix student.", report)
    state = strip_prefixes(state, RUNTIME_PREFIXES + ("backbone.",) + tuple(f"{b}." for b in branches))
    out = swinunetr_tensors(state, report, "VoCo's Swin / VoCoHead", extra_dropped=_HEADS)
    if not out:
        raise ConversionError("no 'swinViT.*' / 'backbone.swinViT.*' tensors: not a VoCo checkpoint", report)
    return out


def to_voco(encoder: dict[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """``{"state_dict": {"swinViT.*": ...}}``: loaded by the authors' ``load`` in Downstream/monai (models.py) and in
    their nnU-Net trainer (nnUNetTrainer_swin.py), which take ``state_dict`` and match ``swinViT.*`` by name."""
    return {"state_dict": {k: v for k, v in encoder.items() if k.startswith(ENCODER_PREFIX)}}


__all__ = ["from_voco", "to_voco"]
