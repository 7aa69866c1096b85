"""MONAI SwinUNETR state dicts (``swinViT.*`` encoder + CNN decoder) <-> the encoder tensors."""
from __future__ import annotations

from torch import Tensor

from nnssl.convert.reading import (SWIN_TOP_LEVEL, SWINUNETR_DECODER, rename_swin_vit, strip_prefixes, take_tensor,
                                   top_module, unrecognised)
from nnssl.convert.report import ConversionReport
from nnssl.encoders.swin import ENCODER_PREFIX
from nnssl.errors import ConversionError


def swinunetr_tensors(state: dict[str, Tensor], report: ConversionReport, what: str,
                      extra_dropped: dict[str, str] | None = None) -> dict[str, Tensor]:
    """The ``swinViT.*`` tensors of a SwinUNETR-like state dict; SwinUNETR's CNN decoder and the top-level modules
    named in ``extra_dropped`` (module -> why) are dropped, anything else is unrecognised (``what`` names the layout).
    """
    extra_dropped = extra_dropped or {}
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        key_in = key
        key = rename_swin_vit(key)
        top = top_module(key)
        if key.startswith(ENCODER_PREFIX):
            take_tensor(report, out, key_in, key, value)
        elif top in SWINUNETR_DECODER:
            report.dropped.append((key_in, "SwinUNETR CNN decoder (encoder1-4/10, decoder1-5, out): not the Swin "
                                           "encoder"))
        elif key == "mask_token":
            report.dropped.append((key_in, "nnssl mask token (pretraining only, not part of SwinUNETR)"))
        elif top in extra_dropped:
            report.dropped.append((key_in, extra_dropped[top]))
        else:
            unrecognised(report, key_in, what)
    return out


def from_monai_swinunetr(state: dict[str, Tensor], report: ConversionReport) -> dict[str, Tensor]:
    """MONAI SwinUNETR (or SwinEncoder) state dict -> encoder tensors; the decoder and mask token are dropped."""
    state = strip_prefixes(state)
    if not any(k.startswith((ENCODER_PREFIX, "swin_vit.")) for k in state):
        hint = ""
        if any(SWIN_TOP_LEVEL.match(k) for k in state):
            hint = (" The keys look like a bare Swin encoder (the layout of the SwinUNETR self-supervised release): "
                    "use --from swinunetr-ssl.")
        elif any(k.startswith(("layers.0.", "transformer.")) for k in state):
            hint = " The keys look like SMIT's Swin: use --from smit."
        elif any(k.startswith("backbone.") for k in state):
            hint = " The keys carry a 'backbone.' prefix (VoCo, SuPreM): use --from voco, --from suprem or --from auto."
        raise ConversionError(f"no 'swinViT.*' tensors: not a MONAI SwinUNETR state dict.{hint}", report)
    return swinunetr_tensors(state, report, "a MONAI SwinUNETR")


def to_monai_swinunetr(encoder: dict[str, Tensor]) -> dict[str, Tensor]:
    """``{"swinViT.*": tensor}``: ``SwinUNETR.load_state_dict(..., strict=False)`` loads it with no missing encoder
    key (only the CNN decoder stays new)."""
    return dict(encoder)


__all__ = ["from_monai_swinunetr", "swinunetr_tensors", "to_monai_swinunetr"]
