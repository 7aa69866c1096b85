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

The adapters live one per source (``monai.py``, ``swinunetr_ssl.py``, ``smit.py``); the architecture is read by
``nnssl.encoders.layout``; this module validates and writes whole files.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from nnssl.checkpoint import load_checkpoint, save_checkpoint
from nnssl.convert.monai import from_monai_swinunetr
from nnssl.convert.reading import file_sha256, read_checkpoint_file, unwrap_state_dict
from nnssl.convert.report import ConversionReport
from nnssl.convert.smit import from_smit
from nnssl.convert.swinunetr_ssl import from_swinunetr_ssl
from nnssl.encoders.layout import check_architecture, infer_encoder_config, reference_encoder_state, settings_line
from nnssl.encoders.swin import ENCODER_PREFIX, PRESETS, EncoderConfig
from nnssl.errors import ArchitectureMismatchError, ConversionError
from nnssl.io import atomic_write

SOURCES = ("monai-swinunetr", "swinunetr-ssl", "smit", "nnssl")
TARGETS = ("nnssl", "monai")

#: What each source's authors preprocessed with (their code's defaults), kept in the provenance for the user.
SOURCE_PREPROCESSING = {
    "swinunetr-ssl": "Tang et al. 2022 pretraining (research-contributions SwinUNETR/Pretrain defaults): RAS "
                     "orientation, CT clipped to [-1000, 1000] HU and scaled to [0, 1], no resampling (the "
                     "space_x/y/z arguments are not used), 96^3 crops",
    "smit": "SMIT pretraining (The-Veeraraghavan-Lab/SMIT train_self_supervised.py): spacing 2.0 mm isotropic, CT "
            "clipped to [-175, 250] HU and scaled to [0, 1], 96^3 crops",
    "monai-swinunetr": "unknown (a MONAI SwinUNETR state dict records no preprocessing)",
}


# ----------------------------------------------------------------------------------------------------------------
# Validation against a freshly built encoder
# ----------------------------------------------------------------------------------------------------------------

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


__all__ = ["ConversionReport", "SOURCES", "SOURCE_PREPROCESSING", "TARGETS", "convert_file", "finalize_encoder",
           "imported_payload", "load_source", "preset_config", "save_monai_state_dict"]
