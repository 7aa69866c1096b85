"""The SwinUNETR self-supervised release of Tang et al. 2022 and SwinUNETR/Pretrain ``SSLHead`` checkpoints."""
from __future__ import annotations

from torch import Tensor

from nnssl.convert.reading import SWIN_TOP_LEVEL, rename_swin_vit, strip_prefixes, take_tensor, top_module, \
    unrecognised
from nnssl.convert.report import ConversionReport
from nnssl.encoders.swin import ENCODER_PREFIX
from nnssl.errors import ConversionError

#: Modules of research-contributions SwinUNETR/Pretrain models/ssl_head.py (SSLHead) and of the release file.
SSL_HEADS = {
    "rotation_pre": "rotation head (Tang et al. 2022 pretraining)",
    "rotation_head": "rotation head (Tang et al. 2022 pretraining)",
    "contrastive_pre": "contrastive head (Tang et al. 2022 pretraining)",
    "contrastive_head": "contrastive head (Tang et al. 2022 pretraining)",
    "conv": "inpainting decoder (Tang et al. 2022 pretraining)",
    "convTrans3d": "inpainting decoder (Tang et al. 2022 pretraining)",
    "norm": "final LayerNorm of the pretraining heads (SwinUNETR normalises its encoder outputs without weights)",
}


def ssl_head_tensors(state: dict[str, Tensor], report: ConversionReport, heads: dict[str, str],
                     what: str, top_level: bool) -> dict[str, Tensor]:
    """Encoder tensors of an SSLHead-style state dict: ``swinViT.*`` / ``swin_vit.*`` (and, with ``top_level``, the
    release's bare ``patch_embed.*`` / ``layers{s}.*``); the modules in ``heads`` are dropped with their reason."""
    out: dict[str, Tensor] = {}
    for key, value in strip_prefixes(state).items():
        renamed = rename_swin_vit(key)
        if renamed.startswith(ENCODER_PREFIX):
            take_tensor(report, out, key, renamed, value)
        elif top_level and SWIN_TOP_LEVEL.match(key):
            take_tensor(report, out, key, ENCODER_PREFIX + key, value)
        elif top_module(key) in heads:
            report.dropped.append((key, heads[top_module(key)]))
        else:
            unrecognised(report, key, what)
    return out


def from_swinunetr_ssl(state: dict[str, Tensor], report: ConversionReport) -> dict[str, Tensor]:
    """SwinUNETR self-supervised release / SSLHead checkpoint -> encoder tensors; pretraining heads dropped."""
    out = ssl_head_tensors(state, report, SSL_HEADS, "the SwinUNETR self-supervised layout", top_level=True)
    if not out:
        raise ConversionError("no Swin encoder tensors (module.patch_embed.*, module.layers1.*, module.swin_vit.* or "
                              "swinViT.*): not a SwinUNETR self-supervised checkpoint", report)
    return out


def to_swinunetr_ssl(encoder: dict[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """The release layout ``{"state_dict": {"module.patch_embed.proj.weight", ..., "module.layers1.0.blocks.0.mlp.
    fc1.weight", ...}}`` that MONAI's ``SwinUNETR.load_from`` reads (it also reads the relative-position indices)."""
    sd = {}
    for key, value in encoder.items():
        name = key[len(ENCODER_PREFIX):].replace(".mlp.linear1.", ".mlp.fc1.").replace(".mlp.linear2.", ".mlp.fc2.")
        sd["module." + name] = value
    return {"state_dict": sd}


__all__ = ["SSL_HEADS", "from_swinunetr_ssl", "ssl_head_tensors", "to_swinunetr_ssl"]
