"""CNN baseline trainers (CNNTrainer[_<k>shot][_draw<r>][_<E>epochs]) for nnU-Net's external-trainer lookup
(nnUNet_extTrainer); the classes live in nnssl.finetune.baselines."""
from nnssl.finetune.baselines import *  # noqa: F401,F403
from nnssl.finetune.baselines import CNN_TRAINER_CLASSES, __all__, cnn_trainer_class  # noqa: F401


def __getattr__(name: str) -> type:
    """Variants not listed in CNN_TRAINER_CLASSES (repeated draws) are made from their name on first use."""
    if name.startswith("CNNTrainer"):
        return cnn_trainer_class(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
