"""The 3D Swin encoder shared by every pretext task and by fine-tuning.

The encoder is MONAI's ``SwinTransformer`` (the encoder of SwinUNETR, Hatamizadeh et al. 2022,
https://arxiv.org/abs/2201.01266), kept under the attribute ``swinViT`` so that its state-dict keys are exactly
SwinUNETR's ``swinViT.*`` keys: a pretrained encoder loads into ``monai.networks.nets.SwinUNETR`` as it is.

Masked image modelling (SimMIM, SMIT, iBOT, MAE) replaces the embeddings of masked patches by a learned mask token
right after the patch embedding, before any attention, as in SimMIM (Xie et al. 2022).
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any, Sequence

import functools

import torch
from torch import Tensor, nn

from nnssl.encoders.merging import MONAI_MERGE_ORDER, OrderedPatchMerging, merge_order_name, normalize_merge_order

#: Every spatial axis must be divisible by this: the patch embedding (stride 2) and four patch mergings (stride 2).
SWIN_DIVISOR = 32
#: Key prefix of the encoder's tensors, as in MONAI's SwinUNETR (``swinViT.*``).
ENCODER_PREFIX = "swinViT."


@dataclass(frozen=True)
class EncoderConfig:
    """Architecture of the Swin encoder. Defaults are the paper's encoder (SwinUNETR base, feature size 48)."""

    feature_size: int = 48
    depths: tuple[int, ...] = (2, 2, 2, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    patch_size: int = 2
    in_channels: int = 1
    drop_path_rate: float = 0.0
    use_v2: bool = False
    use_checkpoint: bool = False
    #: Sub-grid concatenation order of the patch mergings (nnssl.encoders.merging): a name ("monai", "monai-legacy")
    #: or 8 (d, h, w) offsets. Not visible in the tensors; importers set it from the source's code.
    merge_order: tuple[tuple[int, int, int], ...] = MONAI_MERGE_ORDER
    #: Cyclic shift (d, h, w) of the shifted-window blocks; None = window_size // 2 on every axis (MONAI). An
    #: imported encoder whose input axes were flipped (nnssl.convert.orientation) needs window_size - window_size // 2
    #: on the flipped axes when the window size is odd.
    window_shift: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        # Tuples keep the config hashable and comparable after a JSON round trip (which yields lists).
        object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))
        object.__setattr__(self, "num_heads", tuple(int(h) for h in self.num_heads))
        object.__setattr__(self, "merge_order", normalize_merge_order(self.merge_order))
        if self.window_shift is not None:
            shift = tuple(int(s) for s in self.window_shift)
            if len(shift) != 3 or any(not 0 < s < self.window_size for s in shift):
                raise ValueError(f"window_shift={self.window_shift}: give 3 shifts, each in 1..window_size-1 "
                                 f"({self.window_size - 1}), or None for window_size // 2")
            # The MONAI default spelled out is stored as None, so that equal encoders have equal configs.
            object.__setattr__(self, "window_shift", None if shift == (self.window_size // 2,) * 3 else shift)
        if self.feature_size <= 0 or self.feature_size % 12 != 0:
            raise ValueError(
                f"feature_size={self.feature_size}: SwinUNETR needs a positive multiple of 12 (e.g. 12, 24, 48)."
            )
        if len(self.depths) != 4 or len(self.num_heads) != 4:
            raise ValueError(
                f"depths={self.depths} and num_heads={self.num_heads} must each have 4 entries (one per Swin stage)."
            )
        for stage, heads in enumerate(self.num_heads):
            dim = self.feature_size * 2**stage
            if dim % heads != 0:
                raise ValueError(
                    f"stage {stage} has {dim} channels, not divisible by num_heads[{stage}]={heads}: "
                    "choose heads that divide feature_size * 2**stage."
                )
        if self.patch_size != 2:
            raise ValueError(f"patch_size={self.patch_size}: only 2 is supported (SwinUNETR's decoder assumes it).")
        if self.window_size < 1 or self.in_channels < 1:
            raise ValueError("window_size and in_channels must be >= 1.")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate={self.drop_path_rate} must lie in [0, 1).")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (lists for tuples, a known merge order by name); inverse of ``from_dict``."""
        d = dataclasses.asdict(self)
        d["depths"], d["num_heads"] = list(self.depths), list(self.num_heads)
        # A known order is stored by name (readable plans); another one as its 8 offsets.
        d["merge_order"] = merge_order_name(self.merge_order) or [list(o) for o in self.merge_order]
        d["window_shift"] = None if self.window_shift is None else list(self.window_shift)
        return d

    def shifts(self) -> tuple[int, int, int]:
        """The cyclic shift (d, h, w) of the shifted-window blocks."""
        return self.window_shift or (self.window_size // 2,) * 3

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EncoderConfig":
        """Config from ``to_dict`` output; unknown keys raise ValueError with a close-match hint."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            hints = [f"{k} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(k, known, 1)) else k
                     for k in unknown]
            raise ValueError(f"unknown encoder setting(s): {', '.join(hints)}; known: {', '.join(sorted(known))}")
        return cls(**d)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "EncoderConfig":
        """A preset (``tiny``, ``small``, ``base``, ``smit``, ...) with ``overrides`` applied."""
        if name not in PRESETS:
            raise ValueError(f"unknown encoder preset {name!r}; choose one of {', '.join(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)

    def replace(self, **changes: Any) -> "EncoderConfig":
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def stage_channels(self) -> list[int]:
        """Channels of the five outputs of ``SwinEncoder.forward``."""
        return [self.feature_size * 2**i for i in range(5)]


PRESETS: dict[str, EncoderConfig] = {
    # Tests and CPU demos: smallest feature size SwinUNETR accepts.
    "tiny": EncoderConfig(feature_size=12, window_size=4),
    "small": EncoderConfig(feature_size=24),
    # The benchmark paper's encoder (SwinUNETR with feature size 48).
    "base": EncoderConfig(feature_size=48),
    # SMIT (Jiang et al., MICCAI 2022) as in the authors' code, The-Veeraraghavan-Lab/SMIT models/configs_Trans.py
    # get_3DTransSmall_config_Unetr (used by its pretraining and fine-tuning scripts): embed_dim 48, depths
    # (2, 2, 4, 2), num_heads (4, 4, 4, 4), window (4, 4, 4), patch 2. It also sets drop_path_rate 0.3 (a training
    # setting) and qkv_bias=False, patch_norm=True, which SwinUNETR's encoder lacks (documentation/checkpoints.md).
    "smit": EncoderConfig(feature_size=48, depths=(2, 2, 4, 2), num_heads=(4, 4, 4, 4), window_size=4),
    # VoCo (Wu et al., CVPR 2024 / TPAMI), Luffy03/Large-Scale-Medical: SwinUNETR-v2 (use_v2=True), window 7,
    # depths 2-2-2-2, heads 3-6-12-24, feature size 48 / 96 / 192 for its B / L / H models (README "Load Pre-trained
    # models"; Self-supervised/models/voco_head.py). The public SwinUNETR base encoders (Tang et al. 2022, SuPreM,
    # BrainSegFounder's default, the model-zoo BTCV bundle) are "base". Presets describe the architecture only: an
    # import sets the merge order of the source's code (documentation/checkpoints.md).
    "voco-b": EncoderConfig(feature_size=48, use_v2=True),
    "voco-l": EncoderConfig(feature_size=96, use_v2=True),
    "voco-h": EncoderConfig(feature_size=192, use_v2=True),
}


def check_swin_input_size(spatial_shape: Sequence[int]) -> None:
    """Raise a ValueError naming every axis Swin cannot take and the nearest sizes it can."""
    bad = []
    for axis, size in enumerate(spatial_shape):
        if size < SWIN_DIVISOR or size % SWIN_DIVISOR != 0:
            lower = max(SWIN_DIVISOR, size // SWIN_DIVISOR * SWIN_DIVISOR)
            upper = (size // SWIN_DIVISOR + 1) * SWIN_DIVISOR
            options = sorted({lower, upper})
            bad.append(f"axis {axis} has size {size} (use {' or '.join(map(str, options))})")
    if bad:
        raise ValueError(
            f"Swin needs every spatial axis divisible by {SWIN_DIVISOR} and >= {SWIN_DIVISOR}; got "
            f"{tuple(spatial_shape)}: " + "; ".join(bad)
        )


def _downsample(cfg: EncoderConfig) -> Any:
    """The patch-merging class MONAI's BasicLayer instantiates (``downsample(dim=, norm_layer=, spatial_dims=)``).

    Always nnssl's own ordered merging, also for MONAI's order: MONAI's "merging" changed its order in MONAI 1.5, and
    the encoder must compute the same function whichever MONAI is installed.
    """
    return functools.partial(OrderedPatchMerging, order=cfg.merge_order)


def _apply_window_shift(swin: nn.Module, cfg: EncoderConfig) -> None:
    """Set a non-default cyclic shift on MONAI's BasicLayers and their shifted blocks (odd block indices).

    MONAI computes the shift once per layer (``BasicLayer.shift_size``, used for the attention mask) and per block
    (``SwinTransformerBlock.shift_size``); both are plain attributes read at forward time.
    """
    if cfg.window_shift is None:
        return
    for stage in range(1, 5):
        layer = getattr(swin, f"layers{stage}")[0]
        layer.shift_size = tuple(cfg.window_shift)
        for i, block in enumerate(layer.blocks):
            if i % 2 == 1:
                block.shift_size = tuple(cfg.window_shift)


def _monai_swin_transformer(cfg: EncoderConfig) -> nn.Module:
    from monai.networks.nets.swin_unetr import SwinTransformer

    swin = SwinTransformer(
        in_chans=cfg.in_channels,
        embed_dim=cfg.feature_size,
        window_size=(cfg.window_size,) * 3,
        patch_size=(cfg.patch_size,) * 3,
        depths=cfg.depths,
        num_heads=cfg.num_heads,
        mlp_ratio=4.0,
        qkv_bias=True,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=cfg.drop_path_rate,
        norm_layer=nn.LayerNorm,
        use_checkpoint=cfg.use_checkpoint,
        spatial_dims=3,
        downsample=_downsample(cfg),
        use_v2=cfg.use_v2,
    )
    _apply_window_shift(swin, cfg)
    return swin


class SwinEncoder(nn.Module):
    """MONAI Swin encoder with an optional mask token.

    forward(x (B, C, D, H, W), mask (B, D/2, H/2, W/2) bool or None) -> five feature maps
    [(B, F, D/2, H/2, W/2), (B, 2F, D/4, ...), (B, 4F, D/8, ...), (B, 8F, D/16, ...), (B, 16F, D/32, ...)],
    layer-normalised as SwinUNETR feeds them to its decoder. ``mask`` is True where a patch is hidden.
    """

    def __init__(self, cfg: EncoderConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or EncoderConfig()
        self.swinViT = _monai_swin_transformer(self.cfg)
        self.mask_token = nn.Parameter(torch.zeros(self.cfg.feature_size))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self._pending_mask: Tensor | None = None
        # The mask is applied by a hook on the patch embedding so that MONAI's own forward runs unchanged.
        self.swinViT.patch_embed.register_forward_hook(self._apply_mask_token)

    @property
    def out_channels(self) -> list[int]:
        """Channels of the five outputs: [F, 2F, 4F, 8F, 16F]."""
        return self.cfg.stage_channels()

    def _apply_mask_token(self, module: nn.Module, args: Any, tokens: Tensor) -> Tensor:
        mask = self._pending_mask
        if mask is None:
            return tokens
        if mask.shape != (tokens.shape[0], *tokens.shape[2:]):
            raise ValueError(
                f"mask shape {tuple(mask.shape)} does not match the patch grid {(tokens.shape[0], *tokens.shape[2:])}:"
                f" masks are given per {self.cfg.patch_size}^3 patch, i.e. (B, D/2, H/2, W/2)."
            )
        w = mask.unsqueeze(1).to(tokens.dtype)
        return tokens * (1.0 - w) + self.mask_token.view(1, -1, 1, 1, 1).to(tokens.dtype) * w

    def forward(self, x: Tensor, mask: Tensor | None = None) -> list[Tensor]:
        """x (B, C, D, H, W), mask (B, D/2, H/2, W/2) bool or None -> five maps (B, 2^i F, D/2^(i+1), ...).

        Sizes must be divisible by 32 (``check_swin_input_size``); see the class docstring."""
        if x.ndim != 5:
            raise ValueError(f"expected input (B, C, D, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.cfg.in_channels:
            raise ValueError(
                f"input has {x.shape[1]} channel(s) but the encoder was built for {self.cfg.in_channels}; "
                "set in_channels in the encoder config to the number of image channels."
            )
        check_swin_input_size(x.shape[2:])
        self._pending_mask = mask
        try:
            return self.swinViT(x, normalize=True)
        finally:
            self._pending_mask = None

    def swin_state_dict(self) -> dict[str, Tensor]:
        """Encoder weights in SwinUNETR's layout (keys ``swinViT.*``), detached on CPU."""
        return {k: v.detach().cpu().clone() for k, v in self.state_dict().items() if k.startswith(ENCODER_PREFIX)}


def encode_by_size(encoder: SwinEncoder, inputs: Sequence[Tensor],
                   masks: Sequence[Tensor | None] | None = None) -> list[list[Tensor]]:
    """Encode several batches, one encoder call per distinct spatial size (multi-crop's global and local crops).

    inputs: batches (N_i, C, *size_i); masks: per batch a patch mask (N_i, *size_i / 2) or None (all visible).
    Returns, per input batch, the encoder's five outputs for that batch (split back from the shared calls). Batches
    of one size run together so that the encoder sees them as one batch, exactly as separate calls would compute
    (the Swin encoder normalises per token: samples do not interact).
    """
    masks = list(masks) if masks is not None else [None] * len(inputs)
    if len(masks) != len(inputs):
        raise ValueError(f"got {len(masks)} masks for {len(inputs)} input batches")
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, x in enumerate(inputs):
        groups.setdefault(tuple(x.shape[2:]), []).append(i)
    out: list[list[Tensor] | None] = [None] * len(inputs)
    for members in groups.values():
        x = torch.cat([inputs[i] for i in members])
        if all(masks[i] is None for i in members):
            mask = None
        else:
            grid = tuple(s // encoder.cfg.patch_size for s in inputs[members[0]].shape[2:])
            mask = torch.cat([masks[i] if masks[i] is not None else
                              torch.zeros((inputs[i].shape[0], *grid), dtype=torch.bool, device=x.device)
                              for i in members])
        feats = encoder(x, mask)
        sizes = [inputs[i].shape[0] for i in members]
        parts = [f.split(sizes) for f in feats]
        for j, i in enumerate(members):
            out[i] = [p[j] for p in parts]
    return out  # type: ignore[return-value]


def build_swinunetr(cfg: EncoderConfig, out_channels: int) -> nn.Module:
    """MONAI SwinUNETR (Swin encoder + CNN decoder with skips) with this encoder architecture."""
    from monai.networks.nets import SwinUNETR

    net = SwinUNETR(
        in_channels=cfg.in_channels,
        out_channels=out_channels,
        patch_size=cfg.patch_size,
        depths=cfg.depths,
        num_heads=cfg.num_heads,
        window_size=cfg.window_size,
        feature_size=cfg.feature_size,
        dropout_path_rate=cfg.drop_path_rate,
        use_checkpoint=cfg.use_checkpoint,
        use_v2=cfg.use_v2,
        downsample=_downsample(cfg),
    )
    _apply_window_shift(net.swinViT, cfg)
    # Kept on the network so that loading a checkpoint can check the settings the tensors do not show.
    net.nnssl_encoder_config = cfg
    return net
