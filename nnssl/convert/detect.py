"""``--from auto``: recognise a checkpoint's source from its keys, shapes and (for MONAI bundles) its folder.

Each rule names the evidence it used (printed in the load report). Where several sources share one file layout
(a plain SwinUNETR state dict: any MONAI user, the model-zoo bundle outside its folder, a VoComni file, SuPreM's
``*_backbone.pth``; an SSLHead state dict with one channel: research-contributions Pretrain or BrainSegFounder) the
tensors cannot tell them apart, and the sources differ in what the tensors do not show (merge order, preprocessing):
auto then refuses and lists the candidates instead of guessing.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from nnssl.convert.monai_bundle import BUNDLE_NAME, bundle_metadata
from nnssl.convert.reading import SWIN_TOP_LEVEL, strip_prefixes, unwrap_state_dict
from nnssl.errors import ConversionError

_SMIT_KEY = re.compile(r"^(backbone\.)?(transformer\.)?layers\.\d+\.blocks\.")
_UNIVERSAL_HEADS = ("precls_conv.", "GAP.", "controller.", "organ_embedding", "text_to_vision.")
_SSL_HEADS = ("rotation_head.", "contrastive_head.")


def detect_source(raw: Any, path: str | os.PathLike) -> tuple[str, str]:
    """(source name, evidence in words) for a loaded checkpoint file; ConversionError when not unique."""
    if isinstance(raw, Mapping) and raw.get("format") == "nnssl":
        return "nnssl", "the file's 'format' is 'nnssl'"
    state, wrappers = unwrap_state_dict(raw)
    keys = list(strip_prefixes(state))

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if any(_SMIT_KEY.match(k) for k in keys):
        return "smit", "SMIT stage keys 'layers.{i}.blocks.*'"
    if has("student.swinViT.") and has("teacher.swinViT."):
        return "voco", "two Swin branches 'student.swinViT.*' / 'teacher.swinViT.*' (VoCo CVPR 2024 VoCoHead)"
    if has("backbone.swinViT.") and (has("student.layer") or has("teacher.layer")):
        return "voco", "'backbone.swinViT.*' with the projection heads 'student.layer*' / 'teacher.layer*' (VoCoHead)"
    if has("proj_head.") and (has("swinViT.") or has("backbone.swinViT.")):
        return "voco", "'swinViT.*' with VoCo's 'proj_head.*'"
    if has("backbone.swinViT.") and any(has(p) for p in _UNIVERSAL_HEADS):
        return "suprem", "'backbone.swinViT.*' with the Universal Model heads (precls_conv, GAP, controller, ...)"
    if any(SWIN_TOP_LEVEL.match(k) for k in keys) and not has("swinViT."):
        return "swinunetr-ssl", "bare Swin keys 'patch_embed.*' / 'layers{s}.*' (the model_swinvit.pt release layout)"
    if any(has(p) for p in _SSL_HEADS):
        if has("swin_vit."):
            return "swinunetr-ssl", "'swin_vit.*' with rotation/contrastive heads (research-contributions SSLHead)"
        proj = next((v for k, v in strip_prefixes(state).items() if k.endswith("swinViT.patch_embed.proj.weight")),
                    None)
        if isinstance(proj, Tensor) and proj.ndim == 5 and proj.shape[1] == 2:
            return "brainsegfounder", ("'swinViT.*' with rotation/contrastive heads and a two-channel patch embedding "
                                       "(BrainSegFounder's T1/T2 pretraining)")
        raise ConversionError(
            "the file is an SSLHead checkpoint ('swinViT.*' with rotation/contrastive heads) with "
            f"{proj.shape[1] if isinstance(proj, Tensor) and proj.ndim == 5 else 'unknown'} input channel(s): both "
            "research-contributions SwinUNETR/Pretrain (--from swinunetr-ssl) and BrainSegFounder (--from "
            "brainsegfounder) write this layout. Name the one that trained it with --from")
    if has("swinViT.") or has("swin_vit.") or has("backbone.swinViT."):
        meta = bundle_metadata(path)
        if meta is not None and meta.get("name") == BUNDLE_NAME:
            return "monai-bundle", f"a SwinUNETR state dict inside the '{BUNDLE_NAME}' bundle (configs/metadata.json)"
        v2 = has("swinViT.layers1c.") or has("backbone.swinViT.layers1c.")
        candidates = ["monai-swinunetr (any MONAI SwinUNETR; needs --merging)",
                      "monai-bundle (swin_unetr_btcv_segmentation's model.pt outside its bundle folder)",
                      "voco (VoComni / VoCo SwinUNETR-v2 files)" + (" - the tensors are SwinUNETR-v2" if v2 else ""),
                      "suprem (SuPreM's *_backbone.pth)" + (" - its wrapper 'net' is SuPreM's" if wrappers == ["net"]
                                                            else "")]
        raise ConversionError(
            f"the file is a plain SwinUNETR state dict{' (wrapper ' + '/'.join(wrappers) + ')' if wrappers else ''}, a "
            "layout several sources share; they differ in what the tensors do not show (the patch-merging order "
            "their MONAI used, their preprocessing). Name the source with --from: " + "; ".join(candidates))
    raise ConversionError(f"--from auto does not recognise the file's layout (first keys: {sorted(keys)[:6]}); name "
                          "its format with --from")


__all__ = ["detect_source"]
