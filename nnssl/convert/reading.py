"""Reading checkpoint files of any origin: torch.load with clear errors, wrapper keys, runtime prefixes, and the
helper every source adapter uses to record an encoder tensor."""
from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from nnssl.convert.report import ConversionReport
from nnssl.encoders.swin import ENCODER_PREFIX
from nnssl.errors import ConversionError

#: Wrapper keys searched (in this order) for the state dict inside a checkpoint file.
WRAPPER_KEYS = ("state_dict", "model", "net", "network_weights", "student", "teacher")

#: Leading prefixes added by DataParallel/DistributedDataParallel and torch.compile.
RUNTIME_PREFIXES = ("module.", "_orig_mod.")

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



def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (hex), read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_MLP_RENAMES = ((".mlp.fc1.", ".mlp.linear1."), (".mlp.fc2.", ".mlp.linear2."))
SWIN_TOP_LEVEL = re.compile(r"^(patch_embed|layers[1-4]c?)\.")

#: The CNN modules of MONAI's SwinUNETR around its ``swinViT`` (monai/networks/nets/swin_unetr.py, SwinUNETR.__init__).
SWINUNETR_DECODER = frozenset({"encoder1", "encoder2", "encoder3", "encoder4", "encoder10", "decoder1", "decoder2",
                               "decoder3", "decoder4", "decoder5", "out"})


def _rename_mlp(key: str) -> tuple[str, bool]:
    for old, new in _MLP_RENAMES:
        if old in key:
            return key.replace(old, new), True
    return key, False


def top_module(key: str) -> str:
    """'encoder1.layer.conv1.conv.weight' -> 'encoder1'."""
    return key.split(".", 1)[0]


def rename_swin_vit(key: str) -> str:
    """``swin_vit.*`` (research-contributions SwinUNETR/Pretrain's attribute name) -> ``swinViT.*``."""
    return ENCODER_PREFIX + key[len("swin_vit."):] if key.startswith("swin_vit.") else key


def unrecognised(report: ConversionReport, key: str, where: str) -> None:
    """A tensor the adapter cannot place: unmappable (fails the conversion unless --drop-unmappable), not dropped,
    because it might be part of the encoder under a name the adapter does not know."""
    report.unmappable.append((key, f"not recognised as part of {where}"))


def take_tensor(report: ConversionReport, out: dict[str, Tensor], src: str, dst: str, value: Tensor) -> None:
    """Record one encoder tensor: a renamed MLP layer counts as converted, a prefix change as matched."""
    dst, renamed = _rename_mlp(dst)
    out[dst] = value
    if renamed:
        report.converted.append((src, dst, "renamed mlp.fc1/fc2 -> mlp.linear1/linear2 (older MONAI/timm names)"))
    else:
        report.matched.append(dst)



__all__ = ["RUNTIME_PREFIXES", "SWINUNETR_DECODER", "SWIN_TOP_LEVEL", "WRAPPER_KEYS", "file_sha256",
           "read_checkpoint_file", "rename_swin_vit", "strip_prefixes", "take_tensor", "top_module", "unrecognised",
           "unwrap_state_dict"]
