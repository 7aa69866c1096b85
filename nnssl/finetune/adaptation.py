"""The adaptation ladder: how much of a pretrained Swin encoder fine-tuning may change, and at which learning rate.

One :class:`nnssl.nnunet.naming.Protocol` per rung (the trainer class name carries its token):

* ``frozen``: the encoder (``swinViT.*``) in eval mode, without gradients and outside the optimiser;
* ``probe<s>``: the frozen encoder and a linear 1x1x1 convolution on stage ``s`` (:class:`StageProbe`);
* ``decfirst<P>``: two parameter groups; the encoder's is held at lr 0 without gradients for the first P% of the
  iterations, then warmed up linearly over the schedule's warm-up length (:func:`encoder_lr_factor`);
* ``llrd<NN>``: one group per depth from the top, lr scaled by ``(NN/100) ** depth`` (:func:`encoder_depth`).

Everything here is a pure function of a network and a protocol, so tests check it without nnU-Net; the trainers
(``nnssl.finetune.trainers``) call it from ``configure_optimizers`` and ``train_step``.
"""
from __future__ import annotations

import re
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from nnssl.encoders.swin import EncoderConfig, build_swinunetr
from nnssl.nnunet.naming import Protocol

ENCODER_PREFIX = "swinViT."
#: Swin stages of the encoder (MONAI's layers1..layers4, each with its patch merging; layers<i>c in SwinUNETR-v2).
NUM_STAGES = 4
_STAGE_RE = re.compile(r"^swinViT\.layers(\d)c?\.")


def encoder_depth(name: str) -> int:
    """Depth from the top of a parameter of a SwinUNETR-style network, as layer-wise lr decay counts it.

    0 outside the encoder (decoder, skip blocks, output or probe), 1 for ``swinViT.layers4`` (the bottleneck stage),
    ..., 4 for ``swinViT.layers1``, 5 (= NUM_STAGES + 1) for the patch embedding and any other encoder parameter.
    """
    if not name.startswith(ENCODER_PREFIX):
        return 0
    m = _STAGE_RE.match(name)
    if m is not None:
        return NUM_STAGES + 1 - int(m.group(1))
    return NUM_STAGES + 1


def depth_group_name(depth: int) -> str:
    """``0`` -> "decoder", ``1`` -> "encoder.stage4", ..., ``5`` -> "encoder.patch_embed"."""
    if depth == 0:
        return "decoder"
    if depth == NUM_STAGES + 1:
        return "encoder.patch_embed"
    return f"encoder.stage{NUM_STAGES + 1 - depth}"


def encoder_parameters(network: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """The (name, parameter) pairs of ``network``'s encoder (names starting with ``swinViT.``)."""
    return ((n, p) for n, p in network.named_parameters() if n.startswith(ENCODER_PREFIX))


def encoder_module(network: nn.Module) -> nn.Module:
    """``network.swinViT``, the encoder the protocols act on; ValueError when the network has none."""
    swin = getattr(network, "swinViT", None)
    if not isinstance(swin, nn.Module):
        raise ValueError("the network has no 'swinViT' encoder: the adaptation protocols need a SwinUNETR-style network")
    return swin


def set_encoder_trainable(network: nn.Module, trainable: bool, toggle_grad: bool = True) -> None:
    """Encoder in train mode with gradients (trainable) or in eval mode without them; ``toggle_grad`` False keeps
    ``requires_grad`` as it is (under DDP, whose reducer is fixed when the network is wrapped)."""
    encoder_module(network).train(trainable)
    if toggle_grad:
        for _, p in encoder_parameters(network):
            p.requires_grad_(trainable)


def parameter_groups(network: nn.Module, protocol: Protocol | None) -> list[dict[str, Any]]:
    """The optimiser's parameter groups for a protocol; each group has ``name`` and ``lr_scale`` (the factor on the
    schedule's lr), and ``delayed`` True for decfirst's encoder group. The first group is always the decoder's (or
    the whole network's), so nnU-Net's log of ``param_groups[0]['lr']`` stays the schedule's lr.

    frozen / probe: the encoder's parameters get ``requires_grad=False`` here (before DDP wraps the network) and are
    in no group.
    """
    named = list(network.named_parameters())
    if protocol is None:
        return [{"params": [p for _, p in named], "name": "all", "lr_scale": 1.0}]
    encoder = [p for n, p in named if n.startswith(ENCODER_PREFIX)]
    rest = [p for n, p in named if not n.startswith(ENCODER_PREFIX)]
    if not encoder:
        encoder_module(network)  # raises with the reason
    if protocol.kind in ("frozen", "probe"):
        for p in encoder:
            p.requires_grad_(False)
        return [{"params": rest, "name": "probe" if protocol.kind == "probe" else "decoder", "lr_scale": 1.0}]
    if protocol.kind == "decfirst":
        return [{"params": rest, "name": "decoder", "lr_scale": 1.0},
                {"params": encoder, "name": "encoder", "lr_scale": 1.0, "delayed": True}]
    if protocol.kind == "llrd":
        by_depth: dict[int, list[nn.Parameter]] = {}
        for n, p in named:
            by_depth.setdefault(encoder_depth(n), []).append(p)
        return [{"params": by_depth[d], "name": depth_group_name(d), "lr_scale": protocol.decay ** d}
                for d in sorted(by_depth)]
    raise ValueError(f"no parameter groups for protocol {protocol.token!r}")


def encoder_lr_factor(iteration: int, start: int, warmup: int) -> float:
    """decfirst's factor on the encoder group's lr: 0 before ``start``, then a linear ramp reaching 1 after
    ``warmup`` iterations (1/warmup at ``start``), then 1."""
    if iteration < start:
        return 0.0
    return min(1.0, (iteration - start + 1) / max(1, warmup))


def decoder_only_iterations(protocol: Protocol | None, total: int) -> int:
    """Iterations of decfirst's decoder-only phase (0 for the other protocols); at least 1 and at most total - 1
    when the run has two iterations or more, so that both phases happen."""
    if protocol is None or protocol.kind != "decfirst":
        return 0
    return min(max(1, round(protocol.fraction * total)), max(1, total - 1))


def describe_groups(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The groups as plain data (names, tensor and parameter counts, lr scales) for logs and records."""
    return [{"name": g["name"], "tensors": len(g["params"]), "parameters": int(sum(p.numel() for p in g["params"])),
             "lr_scale": g["lr_scale"], **({"delayed": True} if g.get("delayed") else {})} for g in groups]


def frozen_summary(network: nn.Module) -> dict[str, int]:
    """Tensors and parameters of the encoder that are outside the optimiser (requires_grad False)."""
    frozen = [p for _, p in encoder_parameters(network) if not p.requires_grad]
    return {"tensors": len(frozen), "parameters": int(sum(p.numel() for p in frozen))}


class StageProbe(nn.Module):
    """A linear probe of one encoder stage: the encoder of a SwinUNETR (``swinViT``, the same keys, so checkpoints
    load into it as into SwinUNETR) and a 1x1x1 convolution on stage ``stage``'s output, upsampled trilinearly to
    the input size.

    (B, C_in, D, H, W) -> (B, C_out, D, H, W). Stage 0 is the patch embedding (F channels at 1/2 resolution), stage
    ``s`` the output of Swin stage ``s`` (``F * 2**s`` channels at ``1/2**(s+1)``). The convolution commutes with the
    interpolation, so upsampling its logits equals classifying upsampled features.
    """

    def __init__(self, cfg: EncoderConfig, out_channels: int, stage: int) -> None:
        super().__init__()
        net = build_swinunetr(cfg, out_channels)
        self.swinViT = net.swinViT
        self.normalize = getattr(net, "normalize", True)
        self.nnssl_encoder_config = cfg
        self.stage = int(stage)
        if not 0 <= self.stage < len(cfg.stage_channels()):
            raise ValueError(f"probe stage {stage} does not exist: the encoder has stages 0..{len(cfg.stage_channels()) - 1}")
        self.probe = nn.Conv3d(cfg.stage_channels()[self.stage], out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, D, H, W) -> (B, C_out, D, H, W): the 1x1x1 convolution on stage ``stage``'s features,
        its logits upsampled trilinearly to the input size."""
        features = self.swinViT(x, self.normalize)[self.stage]
        return F.interpolate(self.probe(features), size=x.shape[2:], mode="trilinear", align_corners=False)
