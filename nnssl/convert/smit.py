"""SMIT's Swin (Jiang et al., MICCAI 2022; The-Veeraraghavan-Lab/SMIT models/Trans.py) -> MONAI's layout.

Three differences are mapped exactly: stage ``layers.{i}`` -> ``layers{i+1}.0``; ``qkv_bias=False`` -> a zero qkv
bias; the patch-merging concatenation order (SMIT puts offset (0,1,1) fifth and (1,0,1) sixth, MONAI the reverse),
undone by permuting the merging LayerNorm and reduction weights. The patch-embedding LayerNorm (``patch_norm=True``)
and an absolute position embedding have no MONAI counterpart: they are unmappable (the conversion refuses them
unless ``--drop-unmappable``).
"""
from __future__ import annotations

import re

import torch
from torch import Tensor

from nnssl.convert.reading import RUNTIME_PREFIXES, strip_prefixes, take_tensor, unrecognised
from nnssl.convert.report import ConversionReport
from nnssl.encoders.merging import MONAI_MERGE_ORDER, chunk_permutation, permute_merging_chunks
from nnssl.encoders.swin import ENCODER_PREFIX
from nnssl.errors import ConversionError

#: SMIT's ``PatchMerging`` (models/Trans.py) concatenation order as (d, h, w) offsets of the eight sub-grids; MONAI's
#: (>= 1.5) is ``nnssl.encoders.merging.MONAI_MERGE_ORDER``.
SMIT_MERGE_ORDER = ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (0, 1, 1), (1, 0, 1), (1, 1, 1))

_SMIT_LAYER = re.compile(r"^layers\.(\d+)\.(blocks\.\d+\..+|downsample\..+)$")
_SMIT_UNMAPPABLE = {
    "patch_embed.norm.": "SMIT's LayerNorm after the patch embedding (config patch_norm=True): MONAI's SwinUNETR "
                         "encoder has no patch-embedding norm, and a LayerNorm cannot be folded into the convolution",
    "absolute_pos_embed": "SMIT's absolute position embedding (config ape=True): MONAI's Swin has none",
}


def _smit_swin_keys(state: dict[str, Tensor], report: ConversionReport) -> dict[str, Tensor]:
    """Peel SMIT's wrappers down to its Swin's own keys (``patch_embed.*``, ``layers.*``, ``norm{i}``, ...)."""
    state = strip_prefixes(state, RUNTIME_PREFIXES + ("backbone.",))
    if any(k.startswith("transformer.") for k in state):
        inner = {}
        for key, value in state.items():
            if key.startswith("transformer."):
                inner[key[len("transformer."):]] = value
            else:
                report.dropped.append((key, "SMIT decoder / distillation head (not part of the Swin encoder)"))
        state = inner
    return state


def from_smit(state: dict[str, Tensor], report: ConversionReport) -> dict[str, Tensor]:
    """SMIT Swin (models/Trans.py ``SwinTransformer_Unetr_*``) -> MONAI SwinUNETR encoder tensors (MONAI >= 1.5
    merge order); the patch-embedding norm and absolute position embedding go to ``report.unmappable``."""
    state = _smit_swin_keys(state, report)
    if not any(_SMIT_LAYER.match(k) for k in state):
        raise ConversionError("no SMIT stage tensors 'layers.{i}.blocks.*' (after removing module./backbone./"
                              "transformer. prefixes): not a SMIT checkpoint", report)
    perm = chunk_permutation(SMIT_MERGE_ORDER, MONAI_MERGE_ORDER)
    assert perm is not None  # both orders hold the eight distinct sub-grids
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        m = _SMIT_LAYER.match(key)
        if key.startswith("patch_embed.proj."):
            take_tensor(report, out, key, ENCODER_PREFIX + key, value)
        elif m:
            dst = f"{ENCODER_PREFIX}layers{int(m.group(1)) + 1}.0.{m.group(2)}"
            rest = m.group(2)
            if rest in ("downsample.reduction.weight", "downsample.norm.weight", "downsample.norm.bias"):
                out[dst] = permute_merging_chunks(value, perm)
                report.converted.append((key, dst, "patch-merging chunks reordered from SMIT's concatenation "
                                                   "(x5=(0,1,1), x6=(1,0,1)) to MONAI's (x5=(1,0,1), x6=(0,1,1))"))
            elif rest.startswith("downsample.reduction.bias"):
                report.unmappable.append((key, "SMIT patch-merging reduction with a bias: MONAI's has none"))
            else:
                take_tensor(report, out, key, dst, value)
        elif re.fullmatch(r"norm\d+\.(weight|bias)", key):
            report.dropped.append((key, "SMIT's per-stage output LayerNorm (its decoder's input; SwinUNETR normalises "
                                        "encoder outputs without weights)"))
        elif key == "mask_token":
            report.dropped.append((key, "SMIT mask token (pretraining only)"))
        elif any(key.startswith(p) for p in _SMIT_UNMAPPABLE):
            report.unmappable.append((key, next(v for p, v in _SMIT_UNMAPPABLE.items() if key.startswith(p))))
        else:
            unrecognised(report, key, "SMIT's Swin encoder")
    # SMIT's MICCAI 2022 config has qkv_bias=False: a zero bias is the exact equivalent in MONAI's qkv Linear.
    for key in [k for k in out if k.endswith(".attn.qkv.weight")]:
        bias_key = key[: -len("weight")] + "bias"
        if bias_key not in out:
            out[bias_key] = torch.zeros(out[key].shape[0], dtype=out[key].dtype)
            report.converted.append(("(absent)", bias_key, "SMIT qkv_bias=False: zero qkv bias (exact)"))
    # A reduction whose output is not 2x its input channels means another pat_merg_rf than SMIT's 4 (MONAI: 2C).
    for key in [k for k in out if k.endswith("downsample.reduction.weight")]:
        o, i = out[key].shape
        if o * 4 != i:
            raise ConversionError(
                f"{key} maps {i} -> {o} channels: SMIT's pat_merg_rf must be 4 (8C -> 2C, as MONAI's patch merging); "
                f"this checkpoint used pat_merg_rf={i / o:g}, which nnssl's encoder cannot build", report)
    return out


__all__ = ["SMIT_MERGE_ORDER", "from_smit"]
