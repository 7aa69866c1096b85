"""SMIT's Swin (Jiang et al., MICCAI 2022; The-Veeraraghavan-Lab/SMIT models/Trans.py) -> MONAI's layout.

Three differences are mapped exactly: stage ``layers.{i}`` -> ``layers{i+1}.0``; ``qkv_bias=False`` -> a zero qkv
bias; the patch-merging concatenation order (SMIT puts offset (0,1,1) fifth and (1,0,1) sixth, MONAI the reverse),
undone by permuting the merging LayerNorm and reduction weights. The patch-embedding LayerNorm (``patch_norm=True``)
and an absolute position embedding have no MONAI counterpart: refused unless ``allow_inexact`` drops them.
"""
from __future__ import annotations

import re

import torch
from torch import Tensor

from nnssl.convert.reading import RUNTIME_PREFIXES, strip_prefixes, take_tensor
from nnssl.convert.report import ConversionReport
from nnssl.encoders.layout import infer_encoder_config
from nnssl.encoders.swin import ENCODER_PREFIX
from nnssl.errors import ConversionError

#: Patch-merging concatenation orders as (d, h, w) offsets of the eight sub-grids.
#: MONAI ``PatchMerging`` ("merging", the SwinUNETR default) and SMIT's ``PatchMerging`` (models/Trans.py).
MONAI_MERGE_ORDER = ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1), (1, 1, 1))
SMIT_MERGE_ORDER = ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (0, 1, 1), (1, 0, 1), (1, 1, 1))

_SMIT_LAYER = re.compile(r"^layers\.(\d+)\.(blocks\.\d+\..+|downsample\..+)$")
_SMIT_UNMAPPABLE = {
    "patch_embed.norm.": "SMIT's LayerNorm after the patch embedding (config patch_norm=True): MONAI's SwinUNETR "
                         "encoder has no patch-embedding norm, and a LayerNorm cannot be folded into the convolution",
    "absolute_pos_embed": "SMIT's absolute position embedding (config ape=True): MONAI's Swin has none",
}


def _merge_permutation(src_order: tuple, dst_order: tuple) -> list[int]:
    """perm[j] = index of dst_order[j] in src_order: the source chunk that lands in target chunk j."""
    return [src_order.index(o) for o in dst_order]


def permute_merging_chunks(t: Tensor, perm: list[int]) -> Tensor:
    """Reorder the 8 channel chunks of a patch-merging tensor along its last axis (LayerNorm (8C,) or Linear (O, 8C)).

    LayerNorm statistics over all 8C channels do not depend on the order, so permuting its weights together with the
    reduction's input columns reproduces the source's output exactly.
    """
    c8 = t.shape[-1]
    if c8 % 8:
        raise ConversionError(f"patch-merging tensor of shape {tuple(t.shape)}: last axis not divisible by 8")
    chunks = t.reshape(*t.shape[:-1], 8, c8 // 8)
    return chunks[..., perm, :].reshape(t.shape).contiguous()


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


def from_smit(state: dict[str, Tensor], report: ConversionReport, allow_inexact: bool = False) -> dict[str, Tensor]:
    """SMIT Swin (models/Trans.py ``SwinTransformer_Unetr_*``) -> MONAI SwinUNETR encoder tensors."""
    state = _smit_swin_keys(state, report)
    if not any(_SMIT_LAYER.match(k) for k in state):
        raise ConversionError("no SMIT stage tensors 'layers.{i}.blocks.*' (after removing module./backbone./"
                              "transformer. prefixes): not a SMIT checkpoint", report)
    perm = _merge_permutation(SMIT_MERGE_ORDER, MONAI_MERGE_ORDER)
    out: dict[str, Tensor] = {}
    unmappable: list[tuple[str, str]] = []
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
                unmappable.append((key, "SMIT patch-merging reduction with a bias: MONAI's has none"))
            else:
                take_tensor(report, out, key, dst, value)
        elif re.fullmatch(r"norm\d+\.(weight|bias)", key):
            report.dropped.append((key, "SMIT's per-stage output LayerNorm (its decoder's input; SwinUNETR normalises "
                                        "encoder outputs without weights)"))
        elif key == "mask_token":
            report.dropped.append((key, "SMIT mask token (pretraining only)"))
        elif any(key.startswith(p) for p in _SMIT_UNMAPPABLE):
            unmappable.append((key, next(v for p, v in _SMIT_UNMAPPABLE.items() if key.startswith(p))))
        else:
            report.dropped.append((key, "not part of SMIT's Swin encoder (unrecognised)"))
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
    if unmappable:
        if not allow_inexact:
            by_reason: dict[str, list[str]] = {}
            for key, why in unmappable:
                by_reason.setdefault(why, []).append(key)
            listing = "; ".join(f"{', '.join(keys)}: {why}" for why, keys in by_reason.items())
            try:  # the architecture still goes into the printed report
                report.config = infer_encoder_config(out)
            except ConversionError:
                pass
            raise ConversionError(
                f"{len(unmappable)} SMIT tensor(s) cannot be mapped exactly onto MONAI's Swin: {listing}. Importing "
                "without them changes what the encoder computes; pass --drop-unmappable (allow_inexact=True) to do so "
                "anyway (recorded in the checkpoint's provenance)", report)
        for key, why in unmappable:
            report.dropped.append((key, "INEXACT: " + why))
            report.inexact.append(key)
    return out


__all__ = ["MONAI_MERGE_ORDER", "SMIT_MERGE_ORDER", "from_smit", "permute_merging_chunks"]
