"""Registry of pretext tasks: ``-m`` name -> task class. Adding a method = one module + one line here."""
from __future__ import annotations

import difflib
import importlib

from nnssl.tasks.base import PretextTask, config_from_overrides

#: name -> "module:Class". Modules are imported on first use so that a broken method cannot break the others.
_REGISTRY: dict[str, str] = {
    "smit": "nnssl.tasks.smit:SMIT",
    "simmim": "nnssl.tasks.simmim:SimMIM",
    "dino": "nnssl.tasks.dino:DINO",
    "ibot": "nnssl.tasks.ibot:IBOT",
    "simclr": "nnssl.tasks.simclr:SimCLR",
    "mocov3": "nnssl.tasks.mocov3:MoCoV3",
    "cpc": "nnssl.tasks.cpc:CPC",
    "rotation": "nnssl.tasks.rotation:RotationPrediction",
    "swinunetr": "nnssl.tasks.swinunetr:SwinUNETRPretraining",
    "mae": "nnssl.tasks.mae:MAE",
}


def method_names() -> list[str]:
    """Every registered method name (``-m`` key), in registry order, whether or not its module imports."""
    return list(_REGISTRY)


def available_methods() -> list[str]:
    """Names of the methods whose modules import."""
    names = []
    for name in _REGISTRY:
        try:
            get_task_class(name)
        except ImportError:
            continue
        names.append(name)
    return names


def get_task_class(name: str) -> type[PretextTask]:
    """The task class registered as ``name``; ValueError suggesting the closest name for unknown ones."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, 1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown method {name!r}{hint}; run `nnssl_pretrain --list` to see the methods")
    module_name, class_name = _REGISTRY[name].split(":")
    module = importlib.import_module(module_name)
    return getattr(module, class_name)


__all__ = ["PretextTask", "available_methods", "config_from_overrides", "get_task_class", "method_names"]
