"""MONAI model-zoo bundle ``swin_unetr_btcv_segmentation`` (Project-MONAI/model-zoo) <-> the encoder tensors.

Layout read from the bundle (citations in documentation/checkpoints.md): ``configs/train.json`` builds
``SwinUNETR(img_size=96, in_channels=1, out_channels=14, feature_size=48, use_checkpoint=true)`` and saves it with
MONAI's ``CheckpointSaver(save_dict={"model": network})``; a single-object save_dict is written as the bare state
dict, and ``CheckpointLoader`` accepts both that and ``{"model": ...}``. ``models/model.pt`` is the file
``large_files.yml`` downloads. The bundle's ``configs/metadata.json`` names the MONAI it runs with ("monai_version");
the weights (model_swin_unetr_btcv_segmentation_v1.pt, added in 2022) were trained with the pre-1.5 patch merging.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from torch import Tensor

from nnssl.convert.monai import swinunetr_tensors
from nnssl.convert.reading import strip_prefixes
from nnssl.convert.report import ConversionReport
from nnssl.encoders.swin import ENCODER_PREFIX
from nnssl.errors import ConversionError

BUNDLE_NAME = "Swin UNETR BTCV segmentation"


def bundle_metadata(path: str | os.PathLike) -> dict | None:
    """``configs/metadata.json`` of the bundle holding ``path`` (a bundle's ``models/model.pt``), or None."""
    meta = Path(path).resolve().parent.parent / "configs" / "metadata.json"
    if not meta.is_file():
        return None
    try:
        return json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def from_monai_bundle(state: dict[str, Tensor], report: ConversionReport) -> dict[str, Tensor]:
    """The bundle's model.pt (bare SwinUNETR state dict or ``{"model": ...}``) -> encoder tensors."""
    out = swinunetr_tensors(strip_prefixes(state), report, "the swin_unetr_btcv_segmentation bundle's SwinUNETR")
    if not out:
        raise ConversionError("no 'swinViT.*' tensors: not the swin_unetr_btcv_segmentation bundle's model.pt", report)
    return out


def to_monai_bundle(encoder: dict[str, Tensor]) -> dict[str, Tensor]:
    """The bare ``swinViT.*`` state dict, which the bundle's ``CheckpointLoader`` treats as the network's state dict
    (load it with ``"strict": false``: the CNN decoder is not in the file)."""
    return {k: v for k, v in encoder.items() if k.startswith(ENCODER_PREFIX)}


__all__ = ["BUNDLE_NAME", "bundle_metadata", "from_monai_bundle", "to_monai_bundle"]
