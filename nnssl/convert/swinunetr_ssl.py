"""The SwinUNETR self-supervised release of Tang et al. 2022 and SwinUNETR/Pretrain ``SSLHead`` checkpoints."""
from __future__ import annotations

from torch import Tensor

from nnssl.convert.reading import SWIN_TOP_LEVEL, strip_prefixes, take_tensor
from nnssl.convert.report import ConversionReport
from nnssl.encoders.swin import ENCODER_PREFIX
from nnssl.errors import ConversionError

_SSL_HEADS = {
    "rotation_pre": "rotation head (Tang et al. 2022 pretraining)",
    "rotation_head": "rotation head (Tang et al. 2022 pretraining)",
    "contrastive_pre": "contrastive head (Tang et al. 2022 pretraining)",
    "contrastive_head": "contrastive head (Tang et al. 2022 pretraining)",
    "conv": "inpainting decoder (Tang et al. 2022 pretraining)",
    "convTrans3d": "inpainting decoder (Tang et al. 2022 pretraining)",
    "norm": "final LayerNorm of the pretraining heads (SwinUNETR normalises its encoder outputs without weights)",
}


def from_swinunetr_ssl(state: dict[str, Tensor], report: ConversionReport) -> dict[str, Tensor]:
    """SwinUNETR self-supervised release / SSLHead checkpoint -> encoder tensors; pretraining heads dropped."""
    state = strip_prefixes(state)
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        top = key.split(".", 1)[0]
        if key.startswith("swin_vit."):
            take_tensor(report, out, key, ENCODER_PREFIX + key[len("swin_vit."):], value)
        elif key.startswith(ENCODER_PREFIX):
            take_tensor(report, out, key, key, value)
        elif SWIN_TOP_LEVEL.match(key):
            take_tensor(report, out, key, ENCODER_PREFIX + key, value)
        elif top in _SSL_HEADS:
            report.dropped.append((key, _SSL_HEADS[top]))
        else:
            report.dropped.append((key, "not part of the Swin encoder (unrecognised module)"))
    if not out:
        raise ConversionError("no Swin encoder tensors (module.patch_embed.*, module.layers1.*, module.swin_vit.* or "
                              "swinViT.*): not a SwinUNETR self-supervised checkpoint", report)
    return out


__all__ = ["from_swinunetr_ssl"]
