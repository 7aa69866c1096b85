"""The nnssl pretraining checkpoint: format, atomic writing, validation, and loading the encoder elsewhere.

A checkpoint is a ``torch.save`` dict (documented in documentation/checkpoints.md):

- ``format`` = "nnssl", ``format_version`` = 1, ``method``, ``encoder_config`` (EncoderConfig.to_dict());
- ``encoder``: the student encoder in MONAI SwinUNETR's layout (``swinViT.*``), loadable into
  ``monai.networks.nets.SwinUNETR`` with no missing encoder key;
- ``task_state`` (heads, teacher, centres: everything ``--resume`` needs), ``optimizer``, ``scaler``, ``step``,
  ``config`` (the resolved run configuration), ``provenance`` (datasets, plans, spacing, intensity normalisation),
  ``rng`` (generator states).
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nnssl.encoders.layout import computation_differences, explain_encoder_mismatch
from nnssl.encoders.swin import ENCODER_PREFIX, EncoderConfig
from nnssl.errors import CheckpointError
from nnssl.io import atomic_write

FORMAT = "nnssl"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("format", "format_version", "method", "encoder_config", "encoder")


def all_finite(tensors: Iterable[Tensor]) -> Tensor:
    """One fused check: a 0-dim bool tensor, True when no floating-point tensor of ``tensors`` holds NaN or Inf.

    The max-norm of each tensor (``torch._foreach_norm`` with ord inf, one kernel per device and dtype) is NaN or Inf
    exactly when the tensor holds one (no overflow, unlike the 2-norm); the result stays on the device (no host
    synchronisation until it is read).
    """
    by_device: dict[torch.device, list[Tensor]] = {}
    for t in tensors:
        if torch.is_tensor(t) and t.is_floating_point() and t.numel():
            by_device.setdefault(t.device, []).append(t.detach())
    flags = [torch.isfinite(torch.stack([n.float() for n in torch._foreach_norm(ts, float("inf"))])).all()
             for ts in by_device.values()]
    if not flags:
        return torch.ones((), dtype=torch.bool)
    return torch.stack([f.cpu() for f in flags]).all() if len(flags) > 1 else flags[0]


def nonfinite_names(state: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors of ``state`` that hold NaN or Inf (one fused check first, so the common
    all-finite case costs one reduction)."""
    if bool(all_finite(state.values())):
        return []
    return [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and v.numel()
            and not bool(torch.isfinite(v).all())]


def describe_nonfinite(bad: list[str], total: int, what: str = "encoder tensors") -> str:
    """One sentence: how many of ``total`` tensors hold NaN/Inf, naming up to three of ``bad``."""
    return f"{len(bad)} of {total} {what} hold NaN or Inf values (e.g. {', '.join(bad[:3])})"


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors inside a payload (the size of its torch.save file, roughly)."""
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any],
                    keep_previous: str | os.PathLike | None = None) -> Path:
    """Write ``payload`` atomically: a temporary file in the same folder, fsync, then rename over ``path``.

    A crash mid-write leaves the previous checkpoint intact; ``keep_previous`` keeps the replaced one under that name
    (a second generation to fall back to). An encoder with NaN or Inf values is refused (CheckpointError): such a
    file would load, attach and fine-tune at a NaN loss without a word. A full device raises nnssl.io.NoSpaceError.
    """
    path = Path(path)
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **payload}
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise CheckpointError(f"refusing to write a checkpoint without {missing}")
    bad = nonfinite_names(payload["encoder"])
    if bad:
        raise CheckpointError(f"refusing to write {path}: {describe_nonfinite(bad, len(payload['encoder']))}")
    atomic_write(path, lambda f: torch.save(payload, f), keep_previous=keep_previous,
                 size_hint=_tensor_bytes(payload))
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate an nnssl checkpoint; errors name the problem and what to do."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist: give the checkpoint_final.pth of an nnssl_pretrain "
                                "run or a file written by nnssl_convert")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # a truncated or foreign file
        reason = str(e).split(". ")[0].strip().rstrip(".")
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({reason}): it is truncated or no "
                              "checkpoint; copy it again or use another one (a run folder keeps "
                              "checkpoint_previous.pth)") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not an nnssl checkpoint; convert public weights first with "
            "`nnssl_convert IN OUT --from auto` (or name its source: voco, suprem, swinunetr-ssl, ...)"
        )
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {ckpt['format_version']}, newer than this nnssl ({FORMAT_VERSION}): upgrade nnssl"
        )
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} lacks {missing}: it was not written by nnssl_pretrain or nnssl_convert")
    EncoderConfig.from_dict(ckpt["encoder_config"])  # validates
    if not isinstance(ckpt["encoder"], Mapping):
        raise CheckpointError(f"{path}: 'encoder' is not a mapping of tensor names to tensors")
    bad = nonfinite_names(ckpt["encoder"])
    if bad:
        raise CheckpointError(
            f"{path} is unusable: {describe_nonfinite(bad, len(ckpt['encoder']))}; the run that wrote it diverged. "
            "Use an earlier checkpoint (a run folder keeps checkpoint_previous.pth) or pretrain again with a lower "
            "--lr")
    return ckpt


def encoder_config_of(ckpt: dict[str, Any]) -> EncoderConfig:
    """The EncoderConfig stored in a loaded checkpoint."""
    return EncoderConfig.from_dict(ckpt["encoder_config"])


def encoder_state_for_swinunetr(ckpt: dict[str, Any]) -> dict[str, Tensor]:
    """The encoder tensors with SwinUNETR's ``swinViT.*`` keys (for ``SwinUNETR.load_state_dict(strict=False)``)."""
    return {k: v for k, v in ckpt["encoder"].items() if k.startswith(ENCODER_PREFIX)}


@dataclass
class LoadReport:
    """What an encoder load did: tensor names per outcome."""

    loaded: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)

    @property
    def expected(self) -> int:
        """Number of encoder tensors the target expected (loaded, adapted, missing or of another shape)."""
        return len(self.loaded) + len(self.adapted) + len(self.missing) + len(self.shape_mismatch)

    def summary(self) -> str:
        """One line: tensors loaded of expected, adapted ones, ignored unexpected ones."""
        text = f"loaded {len(self.loaded) + len(self.adapted)}/{self.expected} encoder tensors"
        if self.adapted:
            text += f" ({len(self.adapted)} adapted to the input channels: {', '.join(self.adapted)})"
        if self.unexpected:
            text += f"; ignored {len(self.unexpected)} unexpected tensor(s)"
        return text


def adapt_patch_embedding(weight: Tensor, in_channels: int) -> Tensor:
    """Pretrained patch-embedding kernel (F, C_src, k, k, k) -> (F, in_channels, k, k, k).

    Rule (documented in documentation/nnunet_integration.md): average the kernel over its source channels and repeat it
    over the target channels, scaled by C_src / in_channels, so that an input whose channels all equal the
    pretraining image gives the same embedding as before.
    """
    c_src = weight.shape[1]
    mean = weight.mean(dim=1, keepdim=True)
    return mean.repeat(1, in_channels, 1, 1, 1) * (c_src / in_channels)


def load_encoder_into(target: nn.Module, ckpt: dict[str, Any], in_channels: int | None = None) -> LoadReport:
    """Copy the checkpoint's encoder into ``target`` (a SwinUNETR, or a module whose keys are ``swinViT.*``).

    Raises CheckpointError when any encoder tensor of ``target`` is missing from the checkpoint or has another
    shape (naming them and the encoder setting to use), so that a partial load never passes in silence.
    A different number of input channels is handled by ``adapt_patch_embedding``.
    """
    source = encoder_state_for_swinunetr(ckpt)
    target_state = {k: v for k, v in target.state_dict().items() if k.startswith(ENCODER_PREFIX)}
    if not target_state:
        raise CheckpointError("the target network has no 'swinViT.*' tensors: it is not a SwinUNETR-style network")
    # Patch-merging order and window shift do not show in the shapes: a network built with other values would take
    # every tensor and compute another function, so compare them with the checkpoint's config where the network
    # records its own (nnssl's SwinEncoder and build_swinunetr do).
    built_with = getattr(target, "nnssl_encoder_config", None) or getattr(target, "cfg", None)
    if isinstance(built_with, EncoderConfig) and "encoder_config" in ckpt:
        diffs = computation_differences(built_with, EncoderConfig.from_dict(ckpt["encoder_config"]))
        if diffs:
            raise CheckpointError(
                f"the network was built with other encoder settings than the checkpoint's: {'; '.join(diffs)}. Build "
                "it from the checkpoint's encoder_config (nnssl_attach copies it into the plans)")
    report = LoadReport()
    new_state: dict[str, Tensor] = {}
    for key, tensor in target_state.items():
        if key not in source:
            report.missing.append(key)
            continue
        value = source[key]
        if value.shape != tensor.shape:
            if key.endswith("patch_embed.proj.weight") and value.shape[0] == tensor.shape[0] \
                    and value.shape[2:] == tensor.shape[2:]:
                new_state[key] = adapt_patch_embedding(value, tensor.shape[1]).to(tensor.dtype)
                report.adapted.append(key)
                continue
            report.shape_mismatch.append(f"{key}: checkpoint {tuple(value.shape)} vs network {tuple(tensor.shape)}")
            continue
        new_state[key] = value.to(tensor.dtype)
        report.loaded.append(key)
    report.unexpected = sorted(set(source) - set(target_state))
    if report.missing or report.shape_mismatch:
        problems = report.missing[:5] + report.shape_mismatch[:5]
        raise CheckpointError(
            f"the checkpoint's encoder does not fit the network: {len(report.missing)} missing and "
            f"{len(report.shape_mismatch)} mismatched tensor(s), e.g. {problems}. "
            f"{explain_encoder_mismatch(target, source)} (nnssl_attach copies the checkpoint's encoder into the plans)."
        )
    target.load_state_dict(new_state, strict=False)
    return report
