"""nnU-Net trainers for SwinUNETR fine-tuning: from scratch, from a pretrained encoder, few-shot and short variants.

The thin module trainers/nnssl_swin_trainers.py re-exports every class here, so nnU-Net finds them through
``nnUNet_extTrainer``. Variants follow nnU-Net's convention (one class per experiment, named for what it changes):
``Swin(Scratch|SSL)Trainer[_<k>shot[_draw<r>]][_<E>epochs]`` (grammar in ``nnssl.nnunet.naming``). They are made on
first use from their name (``trainer_class``; the module's ``__getattr__`` calls it, so nnU-Net's lookup by name,
pickling and ``from ... import`` all work) without repeating the constructor.

Optimisation (SwinUNETR fine-tuning recipe of Tang et al., CVPR 2022 / Hatamizadeh et al. 2022, as in MONAI's
research-contributions ``SwinUNETR/BTCV/main.py`` defaults: ``--optim_name adamw --optim_lr 1e-4 --reg_weight 1e-5
--lrschedule warmup_cosine --warmup_epochs 50 --max_epochs 5000``):

* AdamW, learning rate 1e-4, weight decay 1e-5;
* linear warmup over the first 1% of all iterations (50 of 5000 epochs in that recipe), then cosine decay to 0,
  updated every iteration (so 1- and 2-epoch runs still warm up and decay);
* nnU-Net's loss (Dice + CE), gradient clipping (12), data augmentation, sampling and 250 iterations per epoch are kept.

Test/demo knobs (environment variables, logged and stored in debug.json when used; never set them for real runs):
``NNSSL_ITERATIONS_PER_EPOCH``, ``NNSSL_VAL_ITERATIONS_PER_EPOCH`` (positive ints), ``NNSSL_DISABLE_MIRRORING=1``
(no mirror augmentation and no mirroring at validation/inference of this model) and ``NNSSL_LEARNING_RATE`` (a
positive number replacing the recipe's 1e-4: a run of a few hundred iterations never leaves the warm start at 1e-4,
see documentation/benchmark.md; the same value for every method keeps the comparison fair).
"""
from __future__ import annotations

import math
import os
from typing import Optional

import torch
from torch import nn
from torch._dynamo import OptimizedModule

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnssl.checkpoint import LoadReport
from nnssl.finetune.fewshot import select_fewshot, subset_seed, write_subset_record, SUBSET_FILE
from nnssl.finetune.network import build_network_from_configuration
from nnssl.nnunet.naming import EPOCHS, SHOTS, TrainerName, model_folder_name, parse_trainer_name
from nnssl.nnunet.plans import PRETRAINED_KEY, encoder_config, require_swin_plans
from nnssl.finetune.pretrained import attached_entry, load_pretrained_encoder, resolve_pretrained_checkpoint
from nnssl.nnunet.raw_dataset import require_labels
from nnssl.finetune.schedule import warmup_cosine_lr

ENV_ITERS = "NNSSL_ITERATIONS_PER_EPOCH"
ENV_VAL_ITERS = "NNSSL_VAL_ITERATIONS_PER_EPOCH"
ENV_NO_MIRROR = "NNSSL_DISABLE_MIRRORING"
ENV_LR = "NNSSL_LEARNING_RATE"
#: The checkpoints nnU-Net continues (--c) or validates (--val) from, in the order it looks for them
#: (nnunetv2/run/run_training.py:69-74 and :80).
NNUNET_CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth")


def _positive_int_env(name: str) -> Optional[int]:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer (or unset for nnU-Net's default)")
    return n


def _positive_float_env(name: str) -> Optional[float]:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        x = float(value)
    except ValueError:
        x = float("nan")
    if not (math.isfinite(x) and x > 0):
        raise ValueError(f"{name}={value!r} must be a finite number > 0 (or unset for the recipe's value)")
    return x


class WarmupCosineScheduler:
    """Per-iteration warmup + cosine learning rate, driven by nnU-Net's per-epoch ``step(epoch)`` call and by
    ``set_iteration(global_iteration)`` from train_step."""

    def __init__(self, optimizer: torch.optim.Optimizer, base_lr: float, total_iterations: int,
                 warmup_iterations: int) -> None:
        self.optimizer, self.base_lr = optimizer, base_lr
        self.total, self.warmup = total_iterations, warmup_iterations
        self.iterations_per_epoch = 1

    def lr_at(self, iteration: int) -> float:
        return warmup_cosine_lr(iteration, self.total, self.warmup, self.base_lr)

    def set_iteration(self, iteration: int) -> None:
        lr = self.lr_at(iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self, epoch: Optional[int] = None) -> None:
        self.set_iteration((epoch or 0) * self.iterations_per_epoch)

    def state_dict(self) -> dict:
        return {"base_lr": self.base_lr, "total": self.total, "warmup": self.warmup}


class SwinScratchTrainer(nnUNetTrainer):
    """SwinUNETR (MONAI; encoder from the plans' "nnssl_encoder") trained from random initialisation.

    No deep supervision (SwinUNETR has a single output), AdamW + warmup/cosine (module docstring).
    """

    #: set by the generated variants
    num_shots: Optional[int] = None
    shot_draw: int = 0
    fixed_num_epochs: Optional[int] = None
    warmup_fraction: float = 0.01

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        require_swin_plans(plans, configuration)
        require_labels(dataset_json, plans.get("dataset_name", "the dataset"))
        _check_patch_size(plans, configuration)
        self._check_before_init(plans, configuration, fold)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.enable_deep_supervision = False
        self.initial_lr = 1e-4
        self.weight_decay = 1e-5
        if self.fixed_num_epochs is not None:
            self.num_epochs = self.fixed_num_epochs
        self._iteration_in_epoch = 0
        self.nnssl_knobs = {}
        iters, val_iters = _positive_int_env(ENV_ITERS), _positive_int_env(ENV_VAL_ITERS)
        if iters is not None:
            self.num_iterations_per_epoch = iters
            self.nnssl_knobs[ENV_ITERS] = iters
        if val_iters is not None:
            self.num_val_iterations_per_epoch = val_iters
            self.nnssl_knobs[ENV_VAL_ITERS] = val_iters
        self.disable_mirroring = os.environ.get(ENV_NO_MIRROR, "").lower() in ("1", "true", "yes")
        if self.disable_mirroring:
            self.nnssl_knobs[ENV_NO_MIRROR] = True
        lr = _positive_float_env(ENV_LR)
        if lr is not None:
            self.initial_lr = lr
            self.nnssl_knobs[ENV_LR] = lr
        if self.nnssl_knobs:
            self.print_to_log_file(f"nnssl: test/demo knobs active: {self.nnssl_knobs}")

    def _check_before_init(self, plans: dict, configuration: str, fold: int | str) -> None:
        """Hook for checks that must fail before nnU-Net creates the output folder."""

    @classmethod
    def _existing_nnunet_checkpoint(cls, plans: dict, configuration: str, fold: int | str) -> Optional[str]:
        """The checkpoint nnU-Net's --c or --val would restore in this trainer's fold folder, if there is one.

        Computed before nnU-Net's constructor runs, from the same parts it joins into ``output_folder``
        (nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py:130-135).
        """
        results = os.environ.get("nnUNet_results")
        if not results:
            return None
        fold_folder = os.path.join(results, plans.get("dataset_name", ""),
                                   model_folder_name(cls.__name__, plans.get("plans_name", ""), configuration),
                                   f"fold_{fold}")
        for name in NNUNET_CHECKPOINTS:
            if os.path.isfile(os.path.join(fold_folder, name)):
                return os.path.join(fold_folder, name)
        return None

    @staticmethod
    def build_network_architecture(plans_manager: PlansManager,
                                   configuration_manager: ConfigurationManager,
                                   num_input_channels: int,
                                   num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        """SwinUNETR from the plans only (also used by nnUNetv2_predict; independent of any checkpoint).
        enable_deep_supervision is ignored: SwinUNETR has one full-resolution output."""
        require_swin_plans(plans_manager.plans)
        return build_network_from_configuration(configuration_manager.configuration, num_input_channels,
                                                num_output_channels)

    def set_deep_supervision_enabled(self, enabled: bool) -> None:
        """Nothing to switch: SwinUNETR has no deep-supervision outputs (nnU-Net calls this with True after
        validation; the loss is never wrapped because enable_deep_supervision is False)."""

    def _do_i_compile(self) -> bool:
        """torch.compile only on request (nnUNet_compile=1): nnU-Net compiles by default on CUDA, but SwinUNETR's
        window padding and shifted-window masks have not been validated under compile here."""
        if os.environ.get("nnUNet_compile", "").lower() not in ("true", "1", "t"):
            return False
        return super()._do_i_compile()

    def _unwrapped_network(self) -> nn.Module:
        mod = self.network.module if self.is_ddp else self.network
        return mod._orig_mod if isinstance(mod, OptimizedModule) else mod

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.network.parameters(), lr=self.initial_lr, weight_decay=self.weight_decay)
        total = max(1, self.num_epochs * self.num_iterations_per_epoch)
        warmup = min(total, max(1, round(self.warmup_fraction * total)))
        scheduler = WarmupCosineScheduler(optimizer, self.initial_lr, total, warmup)
        scheduler.iterations_per_epoch = self.num_iterations_per_epoch
        return optimizer, scheduler

    def on_train_epoch_start(self):
        self._iteration_in_epoch = 0
        super().on_train_epoch_start()

    def train_step(self, batch: dict) -> dict:
        self.lr_scheduler.set_iteration(self.current_epoch * self.num_iterations_per_epoch + self._iteration_in_epoch)
        self._iteration_in_epoch += 1
        return super().train_step(batch)

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        if self.disable_mirroring:
            mirror_axes = None
            self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial_patch_size, mirror_axes

    def initialize(self):
        super().initialize()
        if self.device.type == "cpu":
            # oneDNN's 3D convolution backward is several times faster on channels-last tensors on CPUs
            # (benchmarks/finetune_step.py); the layout changes no value. Parameters keep their identity, so the
            # optimiser nnU-Net just built still holds them.
            self._unwrapped_network().to(memory_format=torch.channels_last_3d)
        self.logger.update_config({"nnssl": {"trainer": self.__class__.__name__, "num_shots": self.num_shots,
                                             "shot_draw": self.shot_draw,
                                             "num_epochs": self.num_epochs, "warmup_fraction": self.warmup_fraction,
                                             "knobs": self.nnssl_knobs}})

    def do_split(self):
        tr_keys, val_keys = super().do_split()
        if self.num_shots is None:
            return tr_keys, val_keys
        dataset = self.plans_manager.dataset_name
        subset = select_fewshot(tr_keys, self.num_shots, dataset, self.fold, self.shot_draw)
        if self.local_rank == 0:
            write_subset_record(self.output_folder, {
                "dataset": dataset, "fold": self.fold, "shots": self.num_shots, "draw": self.shot_draw,
                "seed": subset_seed(dataset, self.fold, self.shot_draw),
                "rule": "sorted fold training cases, permuted with seed(dataset, fold, draw); first k (nested, "
                        "method-independent)",
                "train_subset": subset, "fold_train_cases": sorted(map(str, tr_keys)),
                "num_validation_cases": len(val_keys), "trainer": self.__class__.__name__})
        draw = f" (draw {self.shot_draw})" if self.shot_draw else ""
        self.print_to_log_file(f"nnssl: {self.num_shots}-shot subset{draw} of {len(tr_keys)} training cases: {subset} "
                               f"(recorded in {SUBSET_FILE}); validating on all {len(val_keys)} validation cases")
        return subset, val_keys


class SwinSSLTrainer(SwinScratchTrainer):
    """SwinScratchTrainer whose encoder starts from the pretraining checkpoint attached to the plans.

    ``nnssl_attach -d D --checkpoint CKPT --name NAME`` writes plans ``nnUNetSwinPlans_NAME``; a run that starts fresh
    loads the encoder in initialize() (all ``swinViT.*`` tensors, failing on any missing or mismatched one), logs
    "loaded N/N encoder tensors", adapts the patch embedding to another number of input channels and warns when the
    normalisation differs. A run that restores nnU-Net's own checkpoint (``--c``, ``--val``) never loads the
    pretrained encoder and does not need its file: the run's weights are the checkpoint's.
    """

    #: set by load_checkpoint() before nnU-Net initialises the trainer to restore a checkpoint into it
    _restoring_checkpoint: bool = False
    pretrained_report = None

    def _check_before_init(self, plans: dict, configuration: str, fold: int | str) -> None:
        # fail with the how-to-attach (or where-it-was-searched) message before nnU-Net creates any output folder
        conf = plans["configurations"][configuration]
        dataset, plans_name = plans.get("dataset_name", "DATASET"), plans.get("plans_name", "?")
        if self._existing_nnunet_checkpoint(plans, configuration, fold) is not None:
            # continuing or validating: the weights come from nnU-Net's checkpoint, the pretraining file may be gone
            if not conf.get(PRETRAINED_KEY):
                attached_entry(conf, dataset, plans_name)  # raises: plans that never attached a checkpoint
            return
        resolve_pretrained_checkpoint(conf, dataset, plans_name)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        """nnU-Net's load_checkpoint; when it initialises the trainer first (--c, --val), the pretrained encoder is
        not loaded: the checkpoint's weights replace the network's anyway, and its file is not needed."""
        if not self.was_initialized:
            self._restoring_checkpoint = True
            source = filename_or_checkpoint if isinstance(filename_or_checkpoint, str) else "a checkpoint dict"
            self.print_to_log_file(f"nnssl: restoring nnU-Net's checkpoint {source}; the pretrained encoder is not "
                                   f"loaded (the run continues from its own weights)")
        super().load_checkpoint(filename_or_checkpoint)

    def initialize(self):
        super().initialize()
        if not self._restoring_checkpoint:
            self.pretrained_report = self.load_pretrained_encoder_into(self._unwrapped_network())

    def load_pretrained_encoder_into(self, network: nn.Module) -> LoadReport:
        """Load the attached checkpoint's encoder into ``network``; returns the LoadReport.

        Under DDP every rank calls this in initialize() and reads the same file (verified by the sha256 in the
        plans), so all ranks start from identical weights; the report goes through print_to_log_file, which nnU-Net
        writes on rank 0 only (nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py:515-516).
        """
        return load_pretrained_encoder(network, self.configuration_manager.configuration,
                                       self.plans_manager.dataset_name, self.plans_manager.plans_name,
                                       self.num_input_channels, log=self.print_to_log_file)


def _check_patch_size(plans: dict, configuration: str) -> None:
    """Refuse, before nnU-Net creates any folder, a patch size SwinUNETR cannot take (e.g. plans moved from another
    dataset and then edited, or hand-written configurations)."""
    conf = PlansManager(plans).get_configuration(configuration).configuration
    try:
        encoder_config(conf, 1)
    except ValueError as e:
        raise ValueError(f"plans '{plans.get('plans_name', '?')}', configuration '{configuration}': {e}") from None


_BASES: dict[str, type] = {"Scratch": SwinScratchTrainer, "SSL": SwinSSLTrainer}
_CLASSES: dict[str, type] = {c.__name__: c for c in _BASES.values()}


def _make_variant(spec: TrainerName) -> type:
    base = _BASES[spec.kind]
    what = ", ".join(filter(None, [
        f"{spec.shots}-shot subset of the fold's training cases" if spec.shots else "",
        f"draw {spec.draw}" if spec.draw else "",
        f"{spec.epochs} epochs" if spec.epochs else ""]))
    return type(spec.name, (base,), {"num_shots": spec.shots, "shot_draw": spec.draw, "fixed_num_epochs": spec.epochs,
                                     "__module__": __name__, "__qualname__": spec.name,
                                     "__doc__": f"{base.__name__} with {what}."})


def trainer_class(name: str) -> type:
    """The trainer class called ``name`` (made once, then cached). Raises AttributeError for other names, so that
    ``hasattr(module, name)`` (nnU-Net's trainer lookup) is False for them."""
    if name not in _CLASSES:
        try:
            spec = parse_trainer_name(name)
        except ValueError as e:
            raise AttributeError(f"module {__name__!r} has no trainer {name!r}: {e}") from None
        _CLASSES[name] = _make_variant(spec)
    return _CLASSES[name]


def __getattr__(name: str) -> type:
    if name.startswith("Swin"):
        return trainer_class(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: The classes of the regimes and schedules the naming room lists (draws and others are made on demand).
TRAINER_CLASSES: dict[str, type] = {
    TrainerName(kind, shots, 0, epochs).name: trainer_class(TrainerName(kind, shots, 0, epochs).name)
    for kind in _BASES for shots in (None, *SHOTS) for epochs in (None, *EPOCHS)}
__all__ = sorted(TRAINER_CLASSES) + ["TRAINER_CLASSES", "trainer_class"]
