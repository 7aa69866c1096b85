"""Swin trainers for nnU-Net's external-trainer lookup (nnUNet_extTrainer); the classes live in nnssl.finetune."""
from nnssl.finetune.trainers import *  # noqa: F401,F403
from nnssl.finetune.trainers import TRAINER_CLASSES, __all__, trainer_class  # noqa: F401


def __getattr__(name: str) -> type:
    """Variants not listed in TRAINER_CLASSES (e.g. repeated draws) are made from their name on first use."""
    if name.startswith("Swin"):
        return trainer_class(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
