"""The fine-tuning network: MONAI SwinUNETR (Swin encoder ``swinViT`` + CNN decoder with skips).

Built from the plans alone (nnU-Net also calls this at inference), never from a pretraining checkpoint.
"""
from __future__ import annotations

from torch import nn

from nnssl.encoders.swin import build_swinunetr
from nnssl.nnunet.plans import encoder_config


def build_network_from_configuration(configuration: dict, num_input_channels: int,
                                     num_output_channels: int) -> nn.Module:
    """SwinUNETR for the plans configuration dict: input (B, C_in, *patch) -> logits (B, C_out, *patch).

    One full-resolution output: SwinUNETR has no deep supervision heads (Hatamizadeh et al. 2022).
    """
    cfg = encoder_config(configuration, num_input_channels)
    return build_swinunetr(cfg, num_output_channels)


def build_probe_from_configuration(configuration: dict, num_input_channels: int, num_output_channels: int,
                                   stage: int) -> nn.Module:
    """The linear probe of one encoder stage for the plans configuration dict (``adaptation.StageProbe``), built from
    the plans alone like the SwinUNETR (nnUNetv2_predict builds it through the probe trainer's
    build_network_architecture)."""
    from nnssl.finetune.adaptation import StageProbe

    return StageProbe(encoder_config(configuration, num_input_channels), num_output_channels, stage)
