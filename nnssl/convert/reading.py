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


def _rename_mlp(key: str) -> tuple[str, bool]:
    for old, new in _MLP_RENAMES:
        if old in key:
            return key.replace(old, new), True
    return key, False


def take_tensor(report: ConversionReport, out: dict[str, Tensor], src: str, dst: str, value: Tensor) -> None:
    """Record one encoder tensor: a renamed MLP layer counts as converted, a prefix change as matched."""
    dst, renamed = _rename_mlp(dst)
    out[dst] = value
    if renamed:
        report.converted.append((src, dst, "renamed mlp.fc1/fc2 -> mlp.linear1/linear2 (older MONAI/timm names)"))
    else:
        report.matched.append(dst)



__all__ = ["RUNTIME_PREFIXES", "SWIN_TOP_LEVEL", "WRAPPER_KEYS", "file_sha256", "read_checkpoint_file",
           "strip_prefixes", "take_tensor", "unwrap_state_dict"]
