"""The encoder's architecture read from its tensors, and checks that two architectures agree.

A MONAI-layout Swin state dict (keys ``swinViT.*``) determines its ``EncoderConfig``: feature size, depths, heads,
window, patch size, input channels, v2 blocks. Checkpoint loading uses this to explain a mismatch in settings rather
than in hundreds of shapes, and every importer uses it to validate what it converted.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from nnssl.encoders.swin import ENCODER_PREFIX, EncoderConfig, SwinEncoder
from nnssl.errors import ArchitectureMismatchError, ConversionError

#: Settings read from the tensors; in_channels is left out of mismatch checks because fine-tuning adapts it.
ARCHITECTURE_FIELDS = ("feature_size", "depths", "num_heads", "window_size", "patch_size", "use_v2")
#: Settings the tensors do not show (same shapes for every value) but that change what the encoder computes: they
#: come from the source's code at import and travel in the checkpoint's encoder_config.
COMPUTATION_FIELDS = ("merge_order", "window_shift")


def with_encoder_prefix(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Accept encoder keys with or without ``swinViT.``."""
    if any(k.startswith(ENCODER_PREFIX) for k in state):
        return {k: v for k, v in state.items() if k.startswith(ENCODER_PREFIX)}
    return {ENCODER_PREFIX + k: v for k, v in state.items()}


def window_from_bias_table(rows: int, key: str = "relative_position_bias_table") -> int:
    """Window size w from the relative-position bias table length (2w - 1)^3 (3D Swin, cubic windows)."""
    side = round(rows ** (1.0 / 3.0))
    for s in (side - 1, side, side + 1):
        if s > 0 and s ** 3 == rows and s % 2 == 1:
            return (s + 1) // 2
    raise ConversionError(
        f"{key} has {rows} rows, which is not (2w-1)^3 for any window size w: the checkpoint uses non-cubic windows "
        "(or a 2D Swin), which nnssl's 3D encoder (one window_size for all axes) cannot build")


def infer_encoder_config(state: Mapping[str, Tensor]) -> EncoderConfig:
    """Encoder architecture read from MONAI-layout Swin tensors (keys ``swinViT.*`` or without the prefix).

    - feature_size, in_channels, patch_size: ``patch_embed.proj.weight`` (F, C_in, p, p, p);
    - depths: the block indices present in ``layers{s}.0.blocks.{j}`` for the four stages;
    - num_heads: columns of each stage's ``relative_position_bias_table`` ((2w-1)^3, heads);
    - window_size: from the table length (2w-1)^3;
    - use_v2: presence of the SwinUNETR-v2 residual conv blocks ``layers{s}c``.
    Raises ConversionError naming the tensor when the layout is not a 4-stage 3D MONAI Swin with mlp_ratio 4.
    """
    s = with_encoder_prefix(state)
    key = ENCODER_PREFIX + "patch_embed.proj.weight"
    if key not in s:
        sample = sorted(state)[:5]
        raise ConversionError(
            f"no patch-embedding tensor '{key}': not a MONAI-layout Swin encoder (first keys: {sample}). For a public "
            "release pick the matching --from format (or --from auto)")
    proj = s[key]
    if proj.ndim != 5 or len(set(proj.shape[2:])) != 1:
        raise ConversionError(f"{key} has shape {tuple(proj.shape)}: expected a cubic 3D kernel (F, C_in, p, p, p); "
                              "2D or anisotropic patch embeddings are not supported")
    feature_size, in_channels, patch_size = int(proj.shape[0]), int(proj.shape[1]), int(proj.shape[2])
    depths, heads, windows = [], [], []
    for stage in range(1, 5):
        prefix = f"{ENCODER_PREFIX}layers{stage}.0.blocks."
        blocks = sorted({int(k[len(prefix):].split(".", 1)[0]) for k in s if k.startswith(prefix)})
        if not blocks:
            raise ConversionError(f"stage {stage} has no blocks (no '{prefix}*' tensors): nnssl's encoder is a "
                                  "4-stage Swin (SwinUNETR)")
        gaps = sorted(set(range(blocks[-1] + 1)) - set(blocks))
        if gaps:
            raise ConversionError(f"stage {stage} lacks block(s) {gaps} (found {blocks}): the checkpoint is incomplete")
        dim = feature_size * 2 ** (stage - 1)
        stage_heads, stage_windows = set(), set()
        for b in blocks:
            table_key = f"{prefix}{b}.attn.relative_position_bias_table"
            if table_key not in s:
                raise ConversionError(f"missing encoder tensor {table_key}: the number of heads and the window size "
                                      "cannot be read without it")
            rows, h = s[table_key].shape
            stage_heads.add(int(h))
            stage_windows.add(window_from_bias_table(int(rows), table_key))
            norm = s.get(f"{prefix}{b}.norm1.weight")
            if norm is not None and norm.shape[0] != dim:
                raise ConversionError(
                    f"{prefix}{b}.norm1.weight has {norm.shape[0]} channels, expected feature_size * 2**{stage - 1} = "
                    f"{dim}: the stages do not double the channels as SwinUNETR's encoder does")
            fc1 = s.get(f"{prefix}{b}.mlp.linear1.weight", s.get(f"{prefix}{b}.mlp.fc1.weight"))
            if fc1 is not None and fc1.shape[0] != 4 * dim:
                raise ConversionError(
                    f"stage {stage} block {b} has an MLP hidden size {fc1.shape[0]} = {fc1.shape[0] / dim:g} x {dim}: "
                    "SwinUNETR's encoder uses mlp_ratio=4 and nnssl cannot build another ratio")
        if len(stage_heads) != 1 or len(stage_windows) != 1:
            raise ConversionError(f"stage {stage} mixes head counts {sorted(stage_heads)} or window sizes "
                                  f"{sorted(stage_windows)} across its blocks: not a SwinUNETR encoder")
        depths.append(len(blocks))
        heads.append(stage_heads.pop())
        windows.append(stage_windows.pop())
    if len(set(windows)) != 1:
        raise ConversionError(f"the stages use different window sizes {windows}: nnssl's encoder uses one window_size")
    use_v2 = any(k.startswith(f"{ENCODER_PREFIX}layers1c.") for k in s)
    try:
        return EncoderConfig(feature_size=feature_size, depths=tuple(depths), num_heads=tuple(heads),
                             window_size=windows[0], patch_size=patch_size, in_channels=in_channels, use_v2=use_v2)
    except ValueError as e:
        raise ConversionError(f"the checkpoint's encoder (feature_size={feature_size}, depths={depths}, "
                              f"num_heads={heads}, window_size={windows[0]}, patch_size={patch_size}) cannot be "
                              f"built by nnssl: {e}") from e


def config_differences(expected: EncoderConfig, found: EncoderConfig) -> list[str]:
    """One line per architecture setting that differs: 'window_size: checkpoint 4, expected 7'."""
    diffs = []
    for name in ARCHITECTURE_FIELDS:
        a, b = getattr(found, name), getattr(expected, name)
        if a != b:
            fmt = (lambda v: list(v)) if isinstance(a, tuple) else (lambda v: v)
            diffs.append(f"{name}: checkpoint {fmt(a)}, expected {fmt(b)}")
    return diffs


def settings_line(cfg: EncoderConfig) -> str:
    """The encoder settings to use, in the words of the config/plans key ``nnssl_encoder``."""
    line = (f"feature_size={cfg.feature_size}, depths={list(cfg.depths)}, num_heads={list(cfg.num_heads)}, "
            f"window_size={cfg.window_size}, patch_size={cfg.patch_size}, use_v2={cfg.use_v2}")
    extra = computation_line(cfg)
    return f"{line}, {extra}" if extra else line


def computation_line(cfg: EncoderConfig) -> str:
    """The settings outside the tensors that differ from MONAI's defaults, e.g. 'merge_order=monai-legacy'."""
    d = cfg.to_dict()
    default = EncoderConfig().to_dict()
    return ", ".join(f"{name}={d[name]}" for name in COMPUTATION_FIELDS if d[name] != default[name])


def computation_differences(expected: EncoderConfig, found: EncoderConfig) -> list[str]:
    """One line per setting outside the tensors that differs: 'merge_order: checkpoint monai-legacy, network monai'."""
    a, b = found.to_dict(), expected.to_dict()
    return [f"{name}: checkpoint {a[name]}, network {b[name]}" for name in COMPUTATION_FIELDS if a[name] != b[name]]


def check_architecture(expected: EncoderConfig, found: EncoderConfig, what: str = "the expected encoder") -> None:
    """Raise ArchitectureMismatchError naming each differing setting and the value to use."""
    diffs = config_differences(expected, found)
    if diffs:
        raise ArchitectureMismatchError(
            f"the checkpoint's encoder architecture differs from {what}: {'; '.join(diffs)}. Use the checkpoint's "
            f"settings ({settings_line(found)}), e.g. in the plans' \"nnssl_encoder\" entry or the encoder config")


def explain_encoder_mismatch(target: nn.Module | Mapping[str, Tensor], source: Mapping[str, Tensor]) -> str:
    """Why ``source`` (encoder tensors) does not fit ``target`` (a SwinUNETR/SwinEncoder or its state dict).

    For messages at load time: both architectures are read from the tensors, so the text names the settings
    (e.g. "window_size: checkpoint 4, expected 7") instead of listing hundreds of shape mismatches.
    """
    target_state = target.state_dict() if isinstance(target, nn.Module) else target
    target_state = {k: v for k, v in target_state.items() if k.startswith(ENCODER_PREFIX)}
    try:
        have, want = infer_encoder_config(source), infer_encoder_config(target_state)
    except ConversionError as e:
        return f"the encoder layouts could not be compared ({e})"
    diffs = config_differences(want, have)
    if not diffs:
        return "the architectures agree"
    return "; ".join(diffs) + f". Build the network with the checkpoint's settings: {settings_line(have)}"



def reference_encoder_state(cfg: EncoderConfig) -> dict[str, Tensor]:
    """The ``swinViT.*`` tensors of a freshly built nnssl encoder (names, shapes, the derived index buffers)."""
    with torch.random.fork_rng(devices=[]):
        return SwinEncoder(cfg.replace(drop_path_rate=0.0, use_checkpoint=False)).swin_state_dict()


__all__ = ["ARCHITECTURE_FIELDS", "COMPUTATION_FIELDS", "check_architecture", "computation_differences",
           "computation_line", "config_differences", "explain_encoder_mismatch",
           "infer_encoder_config", "reference_encoder_state", "settings_line", "window_from_bias_table",
           "with_encoder_prefix"]
