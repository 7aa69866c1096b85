"""Swin trainers for nnU-Net's external-trainer lookup (nnUNet_extTrainer); the classes live in nnssl.finetune."""
from nnssl.finetune.trainers import *  # noqa: F401,F403
from nnssl.finetune.trainers import TRAINER_CLASSES, __all__  # noqa: F401
