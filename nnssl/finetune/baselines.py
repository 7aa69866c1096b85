"""CNN baselines on the Swin runs' exact splits and subsets: ``CNNTrainer[_<k>shot][_draw<r>][_<E>epochs]``.

``CNNTrainer`` is nnU-Net's default ``nnUNetTrainer`` unchanged in what it trains (its network from the plans, SGD
with lr 1e-2 and the poly schedule, deep supervision, augmentation): it adds nnssl's regimes, which is all a fair
comparison needs. The k-shot subset of a fold and draw is ``nnssl.finetune.fewshot.select_fewshot`` of nnU-Net's
own ``splits_final.json`` split, so a ``CNNTrainer_5shot`` fold trains on the cases of the ``SwinSSLTrainer_5shot``
and ``SwinScratchTrainer_5shot`` folds (same subset record). Trained on ``nnUNetPlans`` it is the ``nnunet`` baseline,
on ``nnUNetResEncUNetLPlans`` (``nnUNetPlannerResEncL``) ``resenc_l``: the method name comes from the plans
(``nnssl.nnunet.naming.CNN_BASELINES``).

The budget knobs NNSSL_ITERATIONS_PER_EPOCH, NNSSL_VAL_ITERATIONS_PER_EPOCH and NNSSL_DISABLE_MIRRORING apply as to
the Swin trainers; NNSSL_LEARNING_RATE does not (it replaces the Swin recipe's AdamW lr; the CNN keeps nnU-Net's
SGD lr). Classes are made from their name on first use, as the Swin variants are (module ``__getattr__``).
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnssl.finetune.concurrency import apply_thread_limit, split_lock
from nnssl.finetune.regimes import (ENV_LR, StepTimer, apply_budget_knobs, fewshot_split, finetune_compute,
                                    variant_class, write_finetune_record)
from nnssl.nnunet.naming import CNN_BASELINES, CNN_KIND, EPOCHS, SHOTS, TrainerName
from nnssl.nnunet.plans import PLANS_MARKER


class CNNTrainer(nnUNetTrainer):
    """nnU-Net's nnUNetTrainer with nnssl's k-shot subsets, draws, short schedules and budget knobs."""

    #: set by the generated variants
    num_shots: Optional[int] = None
    shot_draw: int = 0
    fixed_num_epochs: Optional[int] = None
    adaptation = None  # the CNN trains the whole network

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        if plans.get(PLANS_MARKER):
            raise ValueError(
                f"{self.__class__.__name__} trains nnU-Net's CNN plans "
                f"({', '.join(p for _, p, _ in CNN_BASELINES.values())}); "
                f"plans '{plans.get('plans_name', '?')}' are Swin plans: train them with the Swin trainers "
                "(SwinScratchTrainer, SwinSSLTrainer) or pass -p nnUNetPlans")
        super().__init__(plans, configuration, fold, dataset_json, device)
        apply_thread_limit(self)  # nnU-Net just set every core; concurrent runs share them
        if self.fixed_num_epochs is not None:
            self.num_epochs = self.fixed_num_epochs
        self._step_timer = StepTimer()
        self.nnssl_knobs = apply_budget_knobs(self, learning_rate=False)
        if self.nnssl_knobs:
            self.print_to_log_file(f"nnssl: test/demo knobs active: {self.nnssl_knobs}")
        if os.environ.get(ENV_LR):
            self.print_to_log_file(f"nnssl: {ENV_LR} is ignored by the CNN baseline: it keeps nnU-Net's SGD learning "
                                   f"rate {self.initial_lr}")

    def do_split(self):
        """nnU-Net's do_split, the fold's training cases reduced to the variant's k-shot subset (``fewshot_split``,
        the same subset as the Swin runs'; unchanged without ``num_shots``); the validation cases stay the fold's."""
        with split_lock(self.preprocessed_dataset_folder_base):  # one split file, written once
            tr_keys, val_keys = super().do_split()
        return fewshot_split(self, tr_keys, val_keys)

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        """nnU-Net's configure_rotation_dummyDA_mirroring_and_inital_patch_size, unchanged unless
        NNSSL_DISABLE_MIRRORING is set: then no mirror axes for augmentation and none allowed at inference."""
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        if self.disable_mirroring:
            mirror_axes = None
            self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial_patch_size, mirror_axes

    def initialize(self):
        """nnU-Net's initialize, then writes nnssl_finetune.json: trainer, full fine-tuning, the baseline's plans
        and one parameter group holding the whole network."""
        super().initialize()
        write_finetune_record(self, {
            "trainer": self.__class__.__name__, "protocol": "full", "protocol_label": "full fine-tuning",
            "baseline": self.plans_manager.plans_name,
            "parameter_groups": [{"name": "all", "tensors": len(list(self.network.parameters())),
                                  "parameters": int(sum(p.numel() for p in self.network.parameters())),
                                  "lr_scale": 1.0}]})

    def train_step(self, batch: dict) -> dict:
        """nnU-Net's train_step unchanged, timed with the StepTimer for the compute ledger."""
        self._step_timer.start()
        try:
            return super().train_step(batch)
        finally:
            self._step_timer.stop()

    def on_train_end(self):
        """nnU-Net's on_train_end, then adds the compute ledger (``finetune_compute``) to the fold's
        nnssl_finetune.json."""
        super().on_train_end()
        write_finetune_record(self, {"compute": finetune_compute(self, self._step_timer)})


_CLASSES: dict[str, type] = {CNNTrainer.__name__: CNNTrainer}


def _make_variant(spec: TrainerName) -> type:
    what = ", ".join(filter(None, [
        f"{spec.shots}-shot subset of the fold's training cases" if spec.shots else "",
        f"draw {spec.draw}" if spec.draw else "",
        f"{spec.epochs} epochs" if spec.epochs else ""]))
    return type(spec.name, (CNNTrainer,), {"num_shots": spec.shots, "shot_draw": spec.draw,
                                           "fixed_num_epochs": spec.epochs, "__module__": __name__,
                                           "__qualname__": spec.name, "__doc__": f"CNNTrainer with {what}."})


def cnn_trainer_class(name: str) -> type:
    """The CNN trainer class called ``name`` (made once, then cached); AttributeError for other names."""
    return variant_class(name, _CLASSES, __name__, (CNN_KIND,), _make_variant, _swin_name)


def _swin_name(name: str, spec: TrainerName) -> type:
    raise AttributeError(f"module {__name__!r} has no trainer {name!r}: it is a Swin trainer (nnssl.finetune.trainers)")


def __getattr__(name: str) -> type:
    if name.startswith("CNNTrainer"):
        return cnn_trainer_class(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: The CNN classes of the regimes and schedules the naming room lists (draws are made on demand).
CNN_TRAINER_CLASSES: dict[str, type] = {
    TrainerName(CNN_KIND, shots, 0, epochs).name: cnn_trainer_class(TrainerName(CNN_KIND, shots, 0, epochs).name)
    for shots in (None, *SHOTS) for epochs in (None, *EPOCHS)}
__all__ = sorted(CNN_TRAINER_CLASSES) + ["CNN_TRAINER_CLASSES", "cnn_trainer_class"]
