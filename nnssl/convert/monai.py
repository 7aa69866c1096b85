"""MONAI SwinUNETR state dicts (``swinViT.*`` encoder + CNN decoder) -> the encoder tensors."""
from __future__ import annotations

from torch import Tensor

from nnssl.convert.reading import SWIN_TOP_LEVEL, strip_prefixes, take_tensor
from nnssl.convert.report import ConversionReport
from nnssl.encoders.swin import ENCODER_PREFIX
from nnssl.errors import ConversionError


def from_monai_swinunetr(state: dict[str, Tensor], report: ConversionReport) -> dict[str, Tensor]:
    """MONAI SwinUNETR (or SwinEncoder) state dict -> encoder tensors; the decoder and mask token are dropped."""
    state = strip_prefixes(state)
    if not any(k.startswith(ENCODER_PREFIX) for k in state):
        hint = ""
        if any(SWIN_TOP_LEVEL.match(k) or k.startswith("swin_vit.") for k in state):
            hint = (" The keys look like a bare Swin encoder (the layout of the SwinUNETR self-supervised release): "
                    "use --from swinunetr-ssl.")
        elif any(k.startswith(("layers.0.", "transformer.", "backbone.")) for k in state):
            hint = " The keys look like SMIT's Swin: use --from smit."
        raise ConversionError(f"no 'swinViT.*' tensors: not a MONAI SwinUNETR state dict.{hint}", report)
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith(ENCODER_PREFIX):
            take_tensor(report, out, key, key, value)
        elif key == "mask_token":
            report.dropped.append((key, "nnssl mask token (pretraining only, not part of SwinUNETR)"))
        else:
            report.dropped.append((key, "SwinUNETR decoder / not part of the Swin encoder"))
    return out


__all__ = ["from_monai_swinunetr"]
