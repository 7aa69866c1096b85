"""Public Swin checkpoints in and out: MONAI SwinUNETR, the SwinUNETR self-supervised release, SMIT, nnssl.

Every import normalises the source to MONAI SwinUNETR's encoder layout (keys ``swinViT.*``, the layout of
``nnssl.encoders.swin.SwinEncoder``), infers the architecture from the tensors (``infer_encoder_config``), and then
checks the result against a freshly built encoder of that architecture: a missing, unexpected or mis-shaped encoder
tensor is an error, never a partial load. What happened to every source tensor is kept in a ``ConversionReport``
(matched / converted / dropped / missing) that the CLI always prints.

Source layouts (read from the authors' code):

- ``monai-swinunetr``: a ``monai.networks.nets.SwinUNETR`` state dict (keys ``swinViT.*`` plus the CNN decoder), bare
  or inside a ``state_dict`` / ``model`` / ``net`` / ``network_weights`` wrapper, with or without ``module.``
  (DataParallel) or ``_orig_mod.`` (torch.compile) prefixes. The decoder is dropped.
- ``swinunetr-ssl``: the self-supervised release of Tang et al. 2022 (CVPR, https://arxiv.org/abs/2111.14791),
  ``model_swinvit.pt``: ``{"state_dict": {"module.patch_embed.proj.weight", "module.layers1.0.blocks.0.mlp.fc1.weight",
  ..., "module.norm.*", "module.convTrans3d.*", "module.rotation_head.*", "module.contrastive_head.*"}}`` (the key names
  ``SwinUNETR.load_from`` in MONAI reads), and checkpoints of Project-MONAI/research-contributions
  SwinUNETR/Pretrain (``models/ssl_head.py``: ``module.swin_vit.*`` + ``rotation_head`` / ``contrastive_head`` /
  ``conv``). Heads are dropped; the older MLP names ``mlp.fc1`` / ``mlp.fc2`` become ``mlp.linear1`` / ``mlp.linear2``.
- ``smit``: SMIT (Jiang et al., MICCAI 2022, https://arxiv.org/abs/2205.10342), The-Veeraraghavan-Lab/SMIT
  ``models/Trans.py``: ``{"state_dict": transformer.state_dict()}`` (keys ``patch_embed.*``, ``layers.{i}.blocks.*``,
  ``layers.{i}.downsample.*``, ``norm0..3``, ``mask_token``) or iBOT-style ``{"student": {"module.backbone.
  transformer.*"}}`` (SMIT-HeartSubSeg). Its Swin differs from MONAI's in three ways that are mapped exactly: stage
  ``layers.{i}`` -> ``layers{i+1}.0``; ``qkv_bias=False`` -> a zero qkv bias; the patch-merging concatenation order
  (SMIT puts offset (0,1,1) fifth and (1,0,1) sixth, MONAI the reverse), undone by permuting the merging LayerNorm
  and reduction weights. Its patch-embedding LayerNorm (``patch_norm=True``) and absolute position embedding have no
  MONAI counterpart: refused unless ``allow_inexact`` drops them (recorded in the checkpoint's provenance).
- ``nnssl``: an nnssl checkpoint (``nnssl.checkpoint``), re-validated, or exported to MONAI (``to="monai"``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nnssl.checkpoint import ENCODER_PREFIX, CheckpointError, load_checkpoint, save_checkpoint
from nnssl.encoders.swin import PRESETS, EncoderConfig, SwinEncoder
from nnssl.io import atomic_write

SOURCES = ("monai-swinunetr", "swinunetr-ssl", "smit", "nnssl")
TARGETS = ("nnssl", "monai")

#: Settings read from the tensors; in_channels is left out of mismatch checks because fine-tuning adapts it.
ARCHITECTURE_FIELDS = ("feature_size", "depths", "num_heads", "window_size", "patch_size", "use_v2")

#: Wrapper keys searched (in this order) for the state dict inside a checkpoint file.
WRAPPER_KEYS = ("state_dict", "model", "net", "network_weights", "student", "teacher")

#: Leading prefixes added by DataParallel/DistributedDataParallel and torch.compile.
RUNTIME_PREFIXES = ("module.", "_orig_mod.")

#: Patch-merging concatenation orders as (d, h, w) offsets of the eight sub-grids.
#: MONAI ``PatchMerging`` ("merging", the SwinUNETR default) and SMIT's ``PatchMerging`` (models/Trans.py).
MONAI_MERGE_ORDER = ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1), (1, 1, 1))
SMIT_MERGE_ORDER = ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (0, 1, 1), (1, 0, 1), (1, 1, 1))

#: What each source's authors preprocessed with (their code's defaults), kept in the provenance for the user.
SOURCE_PREPROCESSING = {
    "swinunetr-ssl": "Tang et al. 2022 pretraining (research-contributions SwinUNETR/Pretrain defaults): CT clipped "
                     "to [-1000, 1000] HU and scaled to [0, 1], spacing 1.5 x 1.5 x 2.0 mm, 96^3 crops",
    "smit": "SMIT pretraining (The-Veeraraghavan-Lab/SMIT train_self_supervised.py): spacing 2.0 mm isotropic, CT "
            "clipped to [-175, 250] HU and scaled to [0, 1], 96^3 crops",
    "monai-swinunetr": "unknown (a MONAI SwinUNETR state dict records no preprocessing)",
}


class ConversionError(CheckpointError):
    """A source checkpoint that cannot be converted exactly; ``report`` holds what was found so far."""

    def __init__(self, message: str, report: "ConversionReport | None" = None) -> None:
        super().__init__(message)
        self.report = report


class ArchitectureMismatchError(ConversionError):
    """The tensors describe another encoder architecture than the one expected; the message names the settings."""


@dataclass
class ConversionReport:
    """What a conversion did with every tensor.

    matched: target keys copied unchanged (only the wrapper/prefix of the key differed);
    converted: (source key, target key, how) for renamed or transformed tensors;
    dropped: (source key, why) for tensors that are not part of the encoder;
    missing: encoder tensors the source lacks (any entry makes the conversion fail);
    inexact: source tensors dropped although they change the encoder's function (only with allow_inexact).
    """

    source_format: str
    source_file: str = ""
    matched: list[str] = field(default_factory=list)
    converted: list[tuple[str, str, str]] = field(default_factory=list)
    dropped: list[tuple[str, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    inexact: list[str] = field(default_factory=list)
    config: EncoderConfig | None = None

    def summary(self, verbose: bool = False) -> str:
        """Human-readable load report; groups by reason and shows three examples per group unless ``verbose``."""
        lines = [f"load report ({self.source_format}{': ' + self.source_file if self.source_file else ''})"]
        if self.config is not None:
            c = self.config
            lines.append(f"  architecture (from the tensors): feature_size={c.feature_size} depths={list(c.depths)} "
                         f"num_heads={list(c.num_heads)} window_size={c.window_size} patch_size={c.patch_size} "
                         f"in_channels={c.in_channels} use_v2={c.use_v2}")
        lines.append(f"  matched:   {len(self.matched)} tensor(s) copied unchanged")
        lines.append(f"  converted: {len(self.converted)} tensor(s)")
        lines += _grouped([(how, f"{src} -> {dst}") for src, dst, how in self.converted], verbose)
        lines.append(f"  dropped:   {len(self.dropped)} tensor(s)")
        lines += _grouped([(why, src) for src, why in self.dropped], verbose)
        lines.append(f"  missing:   {len(self.missing)} encoder tensor(s)")
        lines += [f"      {k}" for k in (self.missing if verbose else self.missing[:10])]
        if len(self.missing) > 10 and not verbose:
            lines.append(f"      ... and {len(self.missing) - 10} more")
        if self.inexact:
            lines.append(f"  WARNING inexact: {len(self.inexact)} tensor(s) with no counterpart in MONAI's Swin were "
                         f"dropped ({', '.join(self.inexact)}); the encoder computes a different function than the "
                         "source's")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data version for the checkpoint's provenance (tensor names only)."""
        return {
            "source_format": self.source_format,
            "matched": len(self.matched),
            "converted": [list(c) for c in self.converted],
            "dropped": [list(d) for d in self.dropped],
            "missing": list(self.missing),
            "inexact": list(self.inexact),
        }


def _grouped(items: list[tuple[str, str]], verbose: bool) -> list[str]:
    groups: dict[str, list[str]] = {}
    for reason, name in items:
        groups.setdefault(reason, []).append(name)
    lines = []
    for reason, names in groups.items():
        shown = names if verbose else names[:3]
        more = "" if verbose or len(names) <= 3 else f", ... (+{len(names) - 3})"
        lines.append(f"    [{len(names)}] {reason}: {', '.join(shown)}{more}")
    return lines


# ----------------------------------------------------------------------------------------------------------------
# Reading files and peeling wrappers
# ----------------------------------------------------------------------------------------------------------------

def read_checkpoint_file(path: str | os.PathLike) -> Any:
    """``torch.load`` on CPU with a clear error for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input checkpoint {path} does not exist")
    try:
        # weights_only=False: public releases pickle plain Python objects (epoch, args) next to the tensors.
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated download, not a torch file
        raise ConversionError(f"{path} is not a readable PyTorch checkpoint ({e})") from e


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and any(isinstance(v, Tensor) for v in obj.values())


def unwrap_state_dict(obj: Any) -> tuple[dict[str, Tensor], list[str]]:
    """Find the tensor dict inside a checkpoint: returns (state, wrapper path such as ["state_dict"]).

    Descends through WRAPPER_KEYS (first match wins, so an iBOT-style file gives its ``student``) until a mapping
    with tensor values is reached; non-tensor entries beside the tensors are ignored.
    """
    path: list[str] = []
    while not _is_state_dict(obj):
        if not isinstance(obj, Mapping):
            raise ConversionError(f"expected a dict of tensors, found {type(obj).__name__}")
        for key in WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                path.append(key)
                break
        else:
            raise ConversionError(
                f"no state dict found: the file's top-level keys are {sorted(map(str, obj))[:12]}; expected tensors or "
                f"one of the wrappers {list(WRAPPER_KEYS)}")
    return {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}, path


def strip_prefixes(state: dict[str, Tensor], prefixes: tuple[str, ...] = RUNTIME_PREFIXES) -> dict[str, Tensor]:
    """Remove leading runtime prefixes (``module.``, ``_orig_mod.``), repeatedly (nested wrappers)."""
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if key.startswith(p):
                    key, changed = key[len(p):], True
        out[key] = value
    return out


# ----------------------------------------------------------------------------------------------------------------
# Architecture inference
# ----------------------------------------------------------------------------------------------------------------

def _with_encoder_prefix(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
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
    s = _with_encoder_prefix(state)
    key = ENCODER_PREFIX + "patch_embed.proj.weight"
    if key not in s:
        sample = sorted(state)[:5]
        raise ConversionError(
            f"no patch-embedding tensor '{key}': not a MONAI-layout Swin encoder (first keys: {sample}). For a public "
            "release pick the matching --from format (monai-swinunetr, swinunetr-ssl, smit)")
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
    return (f"feature_size={cfg.feature_size}, depths={list(cfg.depths)}, num_heads={list(cfg.num_heads)}, "
            f"window_size={cfg.window_size}, patch_size={cfg.patch_size}, use_v2={cfg.use_v2}")


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


# ----------------------------------------------------------------------------------------------------------------
# Source layouts -> MONAI layout
# ----------------------------------------------------------------------------------------------------------------

_MLP_RENAMES = ((".mlp.fc1.", ".mlp.linear1."), (".mlp.fc2.", ".mlp.linear2."))
_SWIN_TOP_LEVEL = re.compile(r"^(patch_embed|layers[1-4]c?)\.")


def _rename_mlp(key: str) -> tuple[str, bool]:
    for old, new in _MLP_RENAMES:
        if old in key:
            return key.replace(old, new), True
    return key, False


def _take(report: ConversionReport, out: dict[str, Tensor], src: str, dst: str, value: Tensor) -> None:
    """Record one encoder tensor: a renamed MLP layer counts as converted, a prefix change as matched."""
    dst, renamed = _rename_mlp(dst)
    out[dst] = value
    if renamed:
        report.converted.append((src, dst, "renamed mlp.fc1/fc2 -> mlp.linear1/linear2 (older MONAI/timm names)"))
    else:
        report.matched.append(dst)


def from_monai_swinunetr(state: dict[str, Tensor], report: ConversionReport) -> dict[str, Tensor]:
    """MONAI SwinUNETR (or SwinEncoder) state dict -> encoder tensors; the decoder and mask token are dropped."""
    state = strip_prefixes(state)
    if not any(k.startswith(ENCODER_PREFIX) for k in state):
        hint = ""
        if any(_SWIN_TOP_LEVEL.match(k) or k.startswith("swin_vit.") for k in state):
            hint = (" The keys look like a bare Swin encoder (the layout of the SwinUNETR self-supervised release): "
                    "use --from swinunetr-ssl.")
        elif any(k.startswith(("layers.0.", "transformer.", "backbone.")) for k in state):
            hint = " The keys look like SMIT's Swin: use --from smit."
        raise ConversionError(f"no 'swinViT.*' tensors: not a MONAI SwinUNETR state dict.{hint}", report)
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith(ENCODER_PREFIX):
            _take(report, out, key, key, value)
        elif key == "mask_token":
            report.dropped.append((key, "nnssl mask token (pretraining only, not part of SwinUNETR)"))
        else:
            report.dropped.append((key, "SwinUNETR decoder / not part of the Swin encoder"))
    return out


#: Top-level modules of the SwinUNETR-SSL pretraining model that are not the encoder (ssl_head.py and the release).
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
            _take(report, out, key, ENCODER_PREFIX + key[len("swin_vit."):], value)
        elif key.startswith(ENCODER_PREFIX):
            _take(report, out, key, key, value)
        elif _SWIN_TOP_LEVEL.match(key):
            _take(report, out, key, ENCODER_PREFIX + key, value)
        elif top in _SSL_HEADS:
            report.dropped.append((key, _SSL_HEADS[top]))
        else:
            report.dropped.append((key, "not part of the Swin encoder (unrecognised module)"))
    if not out:
        raise ConversionError("no Swin encoder tensors (module.patch_embed.*, module.layers1.*, module.swin_vit.* or "
                              "swinViT.*): not a SwinUNETR self-supervised checkpoint", report)
    return out


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
            _take(report, out, key, ENCODER_PREFIX + key, value)
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
                _take(report, out, key, dst, value)
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


# ----------------------------------------------------------------------------------------------------------------
# Validation against a freshly built encoder
# ----------------------------------------------------------------------------------------------------------------

def reference_encoder_state(cfg: EncoderConfig) -> dict[str, Tensor]:
    """The ``swinViT.*`` tensors of a freshly built nnssl encoder (names, shapes, the derived index buffers)."""
    with torch.random.fork_rng(devices=[]):
        return SwinEncoder(cfg.replace(drop_path_rate=0.0, use_checkpoint=False)).swin_state_dict()


def finalize_encoder(state: dict[str, Tensor], report: ConversionReport,
                     expected: EncoderConfig | None = None) -> dict[str, Tensor]:
    """Infer the architecture, compare with a fresh encoder and return the exact ``swinViT.*`` dict to save.

    Fails (ConversionError, with the report) on missing encoder tensors, tensors the encoder does not have, shapes
    that differ, or a relative-position index that differs from MONAI's; fills an absent index buffer (it is derived
    from the window size, not learned). With ``expected``, a differing architecture raises ArchitectureMismatchError.
    """
    try:
        cfg = infer_encoder_config(state)
    except ConversionError as e:
        e.report = report
        raise
    report.config = cfg
    if expected is not None:
        try:
            check_architecture(expected.replace(in_channels=cfg.in_channels), cfg)
        except ArchitectureMismatchError as e:
            e.report = report
            raise
    reference = reference_encoder_state(cfg)
    out: dict[str, Tensor] = {}
    problems: list[str] = []
    for key, ref in reference.items():
        if key not in state:
            if key.endswith("relative_position_index"):
                out[key] = ref
                report.converted.append(("(absent)", key, "relative_position_index recomputed from the window size"))
            else:
                report.missing.append(key)
            continue
        value = state[key]
        if tuple(value.shape) != tuple(ref.shape):
            problems.append(f"{key}: checkpoint {tuple(value.shape)} vs encoder {tuple(ref.shape)}")
            continue
        if key.endswith("relative_position_index"):
            if not torch.equal(value.to(ref.dtype), ref):
                problems.append(f"{key}: the relative-position index differs from MONAI's (another window indexing "
                                "convention), so the bias table cannot be used as is")
            out[key] = ref
            continue
        if value.dtype != ref.dtype:
            report.converted.append((key, key, f"cast {value.dtype} -> {ref.dtype}"))
        out[key] = value.detach().to(ref.dtype).clone()
    unexpected = sorted(set(state) - set(reference))
    if unexpected:
        problems.append(f"{len(unexpected)} encoder tensor(s) that nnssl's encoder ({settings_line(cfg)}) does not "
                        f"have, e.g. {unexpected[:5]}")
    if report.missing:
        raise ConversionError(
            f"{len(report.missing)} encoder tensor(s) missing from the checkpoint, e.g. {report.missing[:5]}: refusing "
            "a partial encoder. Check that the file is complete and that --from names its format", report)
    if problems:
        raise ConversionError("the checkpoint does not fit the encoder its tensors describe: " + "; ".join(problems),
                              report)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Whole-file conversions
# ----------------------------------------------------------------------------------------------------------------

def load_source(path: str | os.PathLike, source: str, allow_inexact: bool = False,
                expected: EncoderConfig | None = None) -> tuple[dict[str, Tensor], ConversionReport, dict | None]:
    """Read ``path`` in format ``source`` -> (validated ``swinViT.*`` tensors, report, nnssl checkpoint or None)."""
    if source not in SOURCES:
        raise ValueError(f"unknown source format {source!r}; choose one of {', '.join(SOURCES)}")
    report = ConversionReport(source_format=source, source_file=str(path))
    if source == "nnssl":
        ckpt = load_checkpoint(path)
        state = dict(ckpt["encoder"])
        report.matched.extend(k for k in state if k.startswith(ENCODER_PREFIX))
        for k in state:
            if not k.startswith(ENCODER_PREFIX):
                report.dropped.append((k, "not a swinViT.* encoder tensor"))
        state = {k: v for k, v in state.items() if k.startswith(ENCODER_PREFIX)}
        encoder = finalize_encoder(state, report, expected)
        # The stored config must describe the stored tensors: a disagreement would build the wrong network later.
        try:
            check_architecture(EncoderConfig.from_dict(ckpt["encoder_config"]), report.config,
                               what="the checkpoint's own encoder_config")
        except ArchitectureMismatchError as e:
            e.report = report
            raise
        return encoder, report, ckpt
    raw = read_checkpoint_file(path)
    state, _ = unwrap_state_dict(raw)
    if source == "monai-swinunetr":
        state = from_monai_swinunetr(state, report)
    elif source == "swinunetr-ssl":
        state = from_swinunetr_ssl(state, report)
    else:
        state = from_smit(state, report, allow_inexact=allow_inexact)
    return finalize_encoder(state, report, expected), report, None


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def imported_payload(encoder: dict[str, Tensor], report: ConversionReport, in_path: str | os.PathLike,
                     method: str | None = None) -> dict[str, Any]:
    """nnssl checkpoint payload (see nnssl.checkpoint) for an imported public encoder."""
    assert report.config is not None
    in_path = Path(in_path).resolve()
    return {
        "method": method or f"imported-{report.source_format}",
        "encoder_config": report.config.to_dict(),
        "encoder": encoder,
        "task_state": {},
        "optimizer": None,
        "scaler": None,
        "step": 0,
        "config": {"imported": True, "source_format": report.source_format},
        "provenance": {
            # Public releases do not record nnU-Net plans or normalisation; the trainer warns about that.
            "datasets": [], "plans": None, "configuration": None, "spacing": None, "normalization": None,
            "imported_from": {
                "file": str(in_path),
                "sha256": file_sha256(in_path),
                "format": report.source_format,
                "source_preprocessing": SOURCE_PREPROCESSING.get(report.source_format, "unknown"),
                "conversion": report.to_dict(),
            },
        },
        "rng": {},
    }


def save_monai_state_dict(path: str | os.PathLike, encoder: dict[str, Tensor]) -> Path:
    """Write ``{"swinViT.*": tensor}`` atomically: ``SwinUNETR.load_state_dict(torch.load(path), strict=False)``."""
    return atomic_write(path, lambda f: torch.save(dict(encoder), f))


def convert_file(in_path: str | os.PathLike, out_path: str | os.PathLike, source: str, to: str = "nnssl",
                 method: str | None = None, expected: EncoderConfig | None = None,
                 allow_inexact: bool = False) -> ConversionReport:
    """Convert ``in_path`` (format ``source``) to an nnssl checkpoint (``to="nnssl"``) or a MONAI state dict.

    Raises ConversionError (``.report`` filled) on anything that cannot be converted exactly.
    """
    if to not in TARGETS:
        raise ValueError(f"unknown target format {to!r}; choose one of {', '.join(TARGETS)}")
    if Path(in_path).resolve() == Path(out_path).resolve():
        raise ValueError(f"input and output are the same file ({in_path}): choose another output path")
    encoder, report, ckpt = load_source(in_path, source, allow_inexact=allow_inexact, expected=expected)
    if to == "monai":
        save_monai_state_dict(out_path, encoder)
    elif ckpt is not None:  # nnssl -> nnssl: keep everything, store the validated encoder
        payload = {k: v for k, v in ckpt.items() if k not in ("format", "format_version")}
        payload["encoder"] = encoder
        if method:
            payload["method"] = method
        save_checkpoint(out_path, payload)
    else:
        save_checkpoint(out_path, imported_payload(encoder, report, in_path, method))
    return report


def preset_config(name: str) -> EncoderConfig:
    """An encoder preset by name, with an error listing the presets."""
    if name not in PRESETS:
        raise ValueError(f"unknown encoder preset {name!r}; choose one of {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name])
