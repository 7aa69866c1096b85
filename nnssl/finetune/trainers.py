"""nnU-Net trainers for SwinUNETR fine-tuning: from scratch, from a pretrained encoder, few-shot and short variants.

The thin module trainers/nnssl_swin_trainers.py re-exports every class here, so nnU-Net finds them through
``nnUNet_extTrainer``. Variants follow nnU-Net's convention (one class per experiment, named for what it changes):
``Swin<Kind>Trainer[_<protocol>][_<k>shot][_draw<r>][_<E>epochs]`` (grammar in ``nnssl.nnunet.naming``). They are made
on first use from their name (``trainer_class``; the module's ``__getattr__`` calls it, so nnU-Net's lookup by name,
pickling and ``from ... import`` all work) without repeating the constructor.

Adaptation protocols (``_frozen``, ``_probe<s>``, ``_decfirst<P>``, ``_llrd<NN>``; ``nnssl.finetune.adaptation``)
change what trains and at which lr: ``configure_optimizers`` builds the protocol's parameter groups (frozen encoders
in none, before nnU-Net wraps DDP), the scheduler scales each group's lr, ``train_step`` and
``on_train_epoch_start`` keep the encoder in the protocol's mode; a probe variant's ``build_network_architecture``
builds the probe network (so nnUNetv2_predict builds it too). Every fold writes ``nnssl_finetune.json``: protocol,
parameter groups, what is frozen, the pretrained encoder's load report and the compute ledger (``nnssl.ledger``).

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

import os
from typing import Optional

import torch
from torch import nn
from torch._dynamo import OptimizedModule

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnssl.checkpoint import LoadReport
from nnssl.cpu_memory import keep_freed_memory
from nnssl.finetune import adaptation
from nnssl.finetune.concurrency import apply_thread_limit, split_lock
from nnssl.finetune.network import build_network_from_configuration, build_probe_from_configuration
from nnssl.finetune.regimes import (ENV_ITERS, ENV_LR, ENV_NO_MIRROR, ENV_VAL_ITERS,  # noqa: F401 (re-exported)
                                    StepTimer, apply_budget_knobs, fewshot_split, finetune_compute,
                                    positive_float_env, positive_int_env, variant_class,
                                    write_finetune_record)
from nnssl.nnunet.naming import (EPOCHS, SHOTS, Protocol, TrainerName, model_folder_name)
from nnssl.nnunet.plans import PRETRAINED_KEY, encoder_config, require_swin_plans
from nnssl.finetune.pretrained import attached_entry, load_pretrained_encoder, resolve_pretrained_checkpoint
from nnssl.nnunet.raw_dataset import require_labels
from nnssl.finetune.schedule import warmup_cosine_lr

#: The checkpoints nnU-Net continues (--c) or validates (--val) from, in the order it looks for them
#: (nnunetv2/run/run_training.py:69-74 and :80).
NNUNET_CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth")
_positive_int_env, _positive_float_env = positive_int_env, positive_float_env


class WarmupCosineScheduler:
    """Per-iteration warmup + cosine learning rate, driven by nnU-Net's per-epoch ``step(epoch)`` call and by
    ``set_iteration(global_iteration)`` from train_step."""

    def __init__(self, optimizer: torch.optim.Optimizer, base_lr: float, total_iterations: int,
                 warmup_iterations: int, delayed_start: int = 0) -> None:
        self.optimizer, self.base_lr = optimizer, base_lr
        self.total, self.warmup = total_iterations, warmup_iterations
        #: decfirst: the iteration at which the delayed (encoder) group starts its own warm-up
        self.delayed_start = delayed_start
        self.iterations_per_epoch = 1

    def lr_at(self, iteration: int) -> float:
        """The schedule's lr at global ``iteration`` (``warmup_cosine_lr``: linear warm-up, then cosine decay to 0
        at ``total``), before any group's scaling."""
        return warmup_cosine_lr(iteration, self.total, self.warmup, self.base_lr)

    def group_lr(self, group: dict, iteration: int) -> float:
        """A parameter group's lr: the schedule's times the group's ``lr_scale`` (layer-wise decay), times the
        delayed group's warm-up factor (decfirst)."""
        lr = self.lr_at(iteration) * group.get("lr_scale", 1.0)
        if group.get("delayed"):
            lr *= adaptation.encoder_lr_factor(iteration, self.delayed_start, self.warmup)
        return lr

    def set_iteration(self, iteration: int) -> None:
        """Set every optimiser parameter group's lr to :meth:`group_lr` at global ``iteration``."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.group_lr(group, iteration)

    def step(self, epoch: Optional[int] = None) -> None:
        """nnU-Net's per-epoch ``lr_scheduler.step(epoch)``: sets the lrs of the epoch's first iteration
        (``epoch * iterations_per_epoch``); train_step then updates them every iteration."""
        self.set_iteration((epoch or 0) * self.iterations_per_epoch)

    def state_dict(self) -> dict:
        """The schedule's settings (base lr, total and warm-up iterations, delayed start): the lr at any
        iteration follows from them, so nothing else is kept."""
        return {"base_lr": self.base_lr, "total": self.total, "warmup": self.warmup,
                "delayed_start": self.delayed_start}


class SwinScratchTrainer(nnUNetTrainer):
    """SwinUNETR (MONAI; encoder from the plans' "nnssl_encoder") trained from random initialisation.

    No deep supervision (SwinUNETR has a single output), AdamW + warmup/cosine (module docstring).
    """

    #: set by the generated variants
    num_shots: Optional[int] = None
    shot_draw: int = 0
    fixed_num_epochs: Optional[int] = None
    #: the rung of the adaptation ladder (None: the whole network fine-tunes); nnssl.finetune.adaptation
    adaptation: Optional[Protocol] = None
    warmup_fraction: float = 0.01

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        require_swin_plans(plans, configuration)
        require_labels(dataset_json, plans.get("dataset_name", "the dataset"))
        _check_patch_size(plans, configuration)
        self._check_before_init(plans, configuration, fold)
        super().__init__(plans, configuration, fold, dataset_json, device)
        apply_thread_limit(self)  # nnU-Net just set every core; concurrent runs share them
        self.enable_deep_supervision = False
        self.initial_lr = 1e-4
        self.weight_decay = 1e-5
        if self.fixed_num_epochs is not None:
            self.num_epochs = self.fixed_num_epochs
        self._iteration_in_epoch = 0
        self._encoder_training: Optional[bool] = None  # the encoder's current state under a protocol
        self._step_timer = StepTimer()
        self.nnssl_knobs = apply_budget_knobs(self)
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
        mod = self.network
        if isinstance(mod, nn.parallel.DistributedDataParallel):  # also before nnU-Net wraps it (configure_optimizers)
            mod = mod.module
        return mod._orig_mod if isinstance(mod, OptimizedModule) else mod

    def configure_optimizers(self):
        """AdamW over the protocol's parameter groups (one group for full fine-tuning; frozen encoders are in none),
        with the per-iteration warm-up + cosine schedule scaled per group. nnU-Net calls this before it wraps the
        network in DDP, so frozen parameters are outside DDP's reducer too."""
        self.param_groups = adaptation.parameter_groups(self._unwrapped_network(), self.adaptation)
        optimizer = torch.optim.AdamW(self.param_groups, lr=self.initial_lr, weight_decay=self.weight_decay)
        total = max(1, self.num_epochs * self.num_iterations_per_epoch)
        warmup = min(total, max(1, round(self.warmup_fraction * total)))
        scheduler = WarmupCosineScheduler(optimizer, self.initial_lr, total, warmup,
                                          delayed_start=adaptation.decoder_only_iterations(self.adaptation, total))
        scheduler.iterations_per_epoch = self.num_iterations_per_epoch
        return optimizer, scheduler

    def _iteration(self) -> int:
        return self.current_epoch * self.num_iterations_per_epoch + self._iteration_in_epoch

    def _apply_protocol(self, iteration: int) -> None:
        """Put the encoder in the state the protocol asks for at this iteration: frozen and probe always in eval
        mode without gradients; decfirst so until its decoder-only phase ends (under DDP the gradients stay on, as
        DDP's reducer was fixed when the network was wrapped, and the encoder group's lr of 0 keeps its weights
        unchanged), then in train mode with gradients."""
        p = self.adaptation
        if p is None:
            return
        training = p.kind == "decfirst" and iteration >= self.lr_scheduler.delayed_start
        if p.kind == "llrd":
            return
        adaptation.set_encoder_trainable(self._unwrapped_network(), training,
                                         toggle_grad=p.kind == "decfirst" and not self.is_ddp)
        if training != self._encoder_training and self._encoder_training is not None:
            self.print_to_log_file(f"nnssl: iteration {iteration}: decoder-only phase over, the encoder trains now "
                                   f"(its lr warms up over {self.lr_scheduler.warmup} iterations)")
        self._encoder_training = training

    def on_train_epoch_start(self):
        """nnU-Net's on_train_epoch_start: resets the in-epoch iteration count, runs nnU-Net's (``network.train()``,
        lr step), then puts the encoder back in the protocol's state and, under a protocol, logs each group's lr."""
        self._iteration_in_epoch = 0
        super().on_train_epoch_start()  # network.train(): the protocol puts the encoder back where it belongs
        self._apply_protocol(self._iteration())
        if self.adaptation is not None:
            it = self._iteration()
            self.print_to_log_file("nnssl: lr per parameter group: " + ", ".join(
                f"{g['name']} {self.lr_scheduler.group_lr(g, it):.3e}" for g in self.optimizer.param_groups))

    def train_step(self, batch: dict) -> dict:
        """nnU-Net's train_step: first sets the lrs for the current global iteration and the encoder's protocol
        state, counts the iteration, and times nnU-Net's step with the StepTimer (compute ledger)."""
        iteration = self._iteration()
        self.lr_scheduler.set_iteration(iteration)
        self._apply_protocol(iteration)
        self._iteration_in_epoch += 1
        self._step_timer.start()
        try:
            return super().train_step(batch)
        finally:
            self._step_timer.stop()

    def _adaptation_record(self) -> dict:
        net = self._unwrapped_network()
        return {"trainer": self.__class__.__name__,
                "protocol": self.adaptation.token if self.adaptation is not None else "full",
                "protocol_label": self.adaptation.label() if self.adaptation is not None else "full fine-tuning",
                "parameter_groups": adaptation.describe_groups(self.param_groups),
                "frozen_encoder": adaptation.frozen_summary(net),
                "decoder_only_iterations": self.lr_scheduler.delayed_start,
                # the encoder's size (the report's Dice-against-encoder-size figure; a probe keeps the encoder too)
                "encoder_parameters": int(sum(p.numel() for n, p in net.named_parameters()
                                              if n.startswith("swinViT."))),
                "lr_rule": "lr(group, it) = warmup_cosine(it) x lr_scale (llrd: decay ** depth from the top; "
                           "decfirst: the encoder group x 0 before decoder_only_iterations, then a linear warm-up)"}

    def _log_protocol(self) -> None:
        p = self.adaptation
        groups = adaptation.describe_groups(self.param_groups)
        frozen = adaptation.frozen_summary(self._unwrapped_network())
        listed = "; ".join(f"{g['name']}: {g['tensors']} tensors, {g['parameters']} parameters, lr x {g['lr_scale']:.4g}"
                           + (" (after the decoder-only phase)" if g.get("delayed") else "") for g in groups)
        what = "full fine-tuning" if p is None else p.label()
        self.print_to_log_file(f"nnssl: protocol {what}; optimiser groups: {listed}")
        if p is not None and p.kind in ("frozen", "probe"):
            self.print_to_log_file(f"nnssl: frozen: encoder swinViT ({frozen['tensors']} tensors, "
                                   f"{frozen['parameters']} parameters) in eval mode, no gradients, not in the "
                                   "optimiser")
        elif p is not None and p.kind == "decfirst":
            self.print_to_log_file(f"nnssl: decoder alone for the first {self.lr_scheduler.delayed_start} of "
                                   f"{self.lr_scheduler.total} iterations (encoder in eval mode, lr 0), then the whole "
                                   f"network, the encoder's lr warming up over {self.lr_scheduler.warmup} iterations")

    def on_train_end(self):
        """nnU-Net's on_train_end, then adds the compute ledger (``finetune_compute``: epoch timestamps, step
        timer) to the fold's nnssl_finetune.json."""
        super().on_train_end()
        write_finetune_record(self, {"compute": finetune_compute(self, self._step_timer)})

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
        """nnU-Net's initialize, then: on CPU malloc keeps freed memory (``nnssl.cpu_memory``) and the network moves
        to channels-last-3d memory (same values), nnssl's
        settings (trainer, shots, draw, epochs, warm-up, protocol, knobs) go into the logger's config, and the protocol
        is logged and recorded (parameter groups, frozen encoder, encoder size) in nnssl_finetune.json."""
        super().initialize()
        if self.device.type == "cpu":
            # every iteration reuses the pages the last one freed instead of mapping and zeroing them again
            # (nnssl/cpu_memory.py); before nnU-Net forks its augmentation workers in on_train_start
            keep_freed_memory()
            # oneDNN's 3D convolution backward is several times faster on channels-last tensors on CPUs
            # (benchmarks/finetune_step.py); the layout changes no value. Parameters keep their identity, so the
            # optimiser nnU-Net just built still holds them.
            self._unwrapped_network().to(memory_format=torch.channels_last_3d)
        self.logger.update_config({"nnssl": {"trainer": self.__class__.__name__, "num_shots": self.num_shots,
                                             "shot_draw": self.shot_draw,
                                             "num_epochs": self.num_epochs, "warmup_fraction": self.warmup_fraction,
                                             "protocol": self.adaptation.token if self.adaptation else "full",
                                             "knobs": self.nnssl_knobs}})
        self._log_protocol()
        write_finetune_record(self, self._adaptation_record())

    def do_split(self):
        """nnU-Net's do_split, the fold's training cases reduced to the variant's k-shot subset
        (``fewshot_split``; unchanged without ``num_shots``); the validation cases stay the fold's."""
        with split_lock(self.preprocessed_dataset_folder_base):  # one split file, written once
            tr_keys, val_keys = super().do_split()
        return fewshot_split(self, tr_keys, val_keys)


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
        """nnU-Net's initialize (through SwinScratchTrainer's); then, unless nnU-Net's own checkpoint is being
        restored (--c, --val), loads the attached pretrained encoder (:meth:`load_pretrained_encoder_into`) and
        writes its load report and pretraining facts to nnssl_finetune.json."""
        super().initialize()
        if not self._restoring_checkpoint:
            pretraining: dict = {}
            self.pretrained_report = self.load_pretrained_encoder_into(self._unwrapped_network(), pretraining)
            write_finetune_record(self, {"pretrained_encoder": self.pretrained_report.summary(),
                                         "pretraining": pretraining})

    def load_pretrained_encoder_into(self, network: nn.Module, record: dict | None = None) -> LoadReport:
        """Load the attached checkpoint's encoder into ``network``; returns the LoadReport.

        Under DDP every rank calls this in initialize() and reads the same file (verified by the sha256 in the
        plans), so all ranks start from identical weights; the report goes through print_to_log_file, which nnU-Net
        writes on rank 0 only (nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py:515-516).
        """
        return load_pretrained_encoder(network, self.configuration_manager.configuration,
                                       self.plans_manager.dataset_name, self.plans_manager.plans_name,
                                       self.num_input_channels, log=self.print_to_log_file, record=record)


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


def _probe_architecture(stage: int):
    """build_network_architecture of a probe variant: the linear probe of encoder stage ``stage``, from the plans
    only (nnUNetv2_predict calls it on the class with the same signature)."""

    def build_network_architecture(plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        require_swin_plans(plans_manager.plans)
        return build_probe_from_configuration(configuration_manager.configuration, num_input_channels,
                                              num_output_channels, stage)

    build_network_architecture.__doc__ = (f"The linear probe of encoder stage {stage} (1x1x1 convolution, upsampled), "
                                          "built from the plans only.")
    return build_network_architecture


def _make_variant(spec: TrainerName) -> type:
    base = _BASES[spec.kind]
    protocol = spec.adaptation
    what = ", ".join(filter(None, [
        protocol.label() if protocol is not None else "",
        f"{spec.shots}-shot subset of the fold's training cases" if spec.shots else "",
        f"draw {spec.draw}" if spec.draw else "",
        f"{spec.epochs} epochs" if spec.epochs else ""]))
    attrs = {"num_shots": spec.shots, "shot_draw": spec.draw, "fixed_num_epochs": spec.epochs,
             "adaptation": protocol, "__module__": __name__, "__qualname__": spec.name,
             "__doc__": f"{base.__name__} with {what}."}
    if protocol is not None and protocol.kind == "probe":
        attrs["build_network_architecture"] = staticmethod(_probe_architecture(protocol.value))
    return type(spec.name, (base,), attrs)


def trainer_class(name: str) -> type:
    """The trainer class called ``name`` (made once, then cached). Raises AttributeError for other names, so that
    ``hasattr(module, name)`` (nnU-Net's trainer lookup) is False for them. ``CNNTrainer[...]`` names are the CNN
    baselines' (``nnssl.finetune.baselines``)."""
    return variant_class(name, _CLASSES, __name__, _BASES, _make_variant, _cnn_class)


def _cnn_class(name: str, spec: TrainerName) -> type:
    from nnssl.finetune.baselines import cnn_trainer_class

    return cnn_trainer_class(name)


def __getattr__(name: str) -> type:
    if name.startswith("Swin"):
        return trainer_class(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: The classes of the regimes and schedules the naming room lists (draws and others are made on demand).
TRAINER_CLASSES: dict[str, type] = {
    TrainerName(kind, shots, 0, epochs).name: trainer_class(TrainerName(kind, shots, 0, epochs).name)
    for kind in _BASES for shots in (None, *SHOTS) for epochs in (None, *EPOCHS)}
__all__ = sorted(TRAINER_CLASSES) + ["TRAINER_CLASSES", "trainer_class"]
