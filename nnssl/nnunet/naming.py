"""The names nnssl gives to nnU-Net objects: trainer classes, plans identifiers and model folders, built and parsed.

This is the one place that knows the naming scheme; the trainers module, the benchmark runner, the grid spec and the
results reader all call it. It imports neither torch nor nnunetv2, so reading a spec or a results tree stays cheap.

Trainers follow nnU-Net's convention (one class per experiment, named for what it changes)::

    Swin<Kind>Trainer[_<protocol>][_<k>shot][_draw<r>][_<E>epochs]
    CNNTrainer[_<k>shot][_draw<r>][_<E>epochs]

``Kind`` is ``Scratch`` (random initialisation) or ``SSL`` (the pretrained encoder attached to the plans). ``k`` is a
few-shot regime from :data:`SHOTS`, ``r >= 1`` a repeated draw (draw 0 has no suffix): with ``k`` a new k-shot
subset and a new training run, with all cases a new training run on the same cases (nnU-Net's fine-tuning is
unseeded, so each run is a new sample of initialisation, patch sampling and augmentation), ``E`` a short schedule
from :data:`EPOCHS`. ``protocol`` is a rung of the adaptation ladder (:class:`Protocol`: ``frozen``, ``probe<s>``,
``decfirst<P>``, ``llrd<NN>``); without it the whole network is fine-tuned ("full"). The protocol is part of a
run's regime (:attr:`RunName.protocol`): the report compares methods within one protocol, so a frozen pretrained
encoder is compared with a frozen random one. ``CNNTrainer`` is
nnU-Net's ``nnUNetTrainer`` with nnssl's k-shot subsets, draws and short schedules, trained on the plans of a CNN
baseline (:data:`CNN_BASELINES`: ``nnUNetPlans``, ``nnUNetResEnc...Plans``); its runs' method is the baseline's name. Plans are ``nnUNetSwinPlans`` (from scratch, the encoder the
planner wrote) or ``nnUNetSwinPlans_<name>`` (written by ``nnssl_attach``: a pretrained encoder, or with
``scratch-<encoder>`` names a from-scratch encoder of another architecture). Model folders are nnU-Net's
``<Trainer>__<Plans>__<configuration>``.

Plans identifiers never contain ``__``: nnU-Net splits model folder names at ``__`` into exactly three parts when it
selects models, writes inference instructions and exports ensembles (``convert_identifier_to_trainer_plans_config``
in ``nnunetv2/utilities/file_path_utilities.py:13-14``, unpacked into three names in
``nnunetv2/evaluation/find_best_configuration.py:183-198`` and ``nnunetv2/model_sharing/model_export.py:97``).
Earlier nnssl versions wrote ``nnUNetSwinPlans__<name>``; :func:`method_of_plans` still reads such names so that old
results stay readable, nothing writes them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

#: nnU-Net's default plans and the Swin plans nnssl's planner writes.
DEFAULT_PLANS = "nnUNetPlans"
SWIN_PLANS = "nnUNetSwinPlans"
#: The method name of from-scratch runs (no pretraining) in specs, reports and results.
SCRATCH = "scratch"
#: Prefix of the method names of from-scratch runs of another encoder (``scratch-<encoder tag>``).
SCRATCH_PREFIX = SCRATCH + "-"
#: Few-shot regimes and short schedules that have a trainer class.
SHOTS: tuple[int, ...] = (5, 10)
EPOCHS: tuple[int, ...] = (1, 2, 5, 10, 20, 50, 100, 250, 500)
#: nnU-Net's full schedule, which the trainers keep unless a variant or knob shortens it
#: (``nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py:157-159``).
NNUNET_EPOCHS, NNUNET_ITERATIONS_PER_EPOCH = 1000, 250
#: Repeated draws 1..MAX_DRAW (k-shot subsets, or repeated all-cases runs) have trainer classes (draw 0 is the
#: unsuffixed class).
MAX_DRAW = 99
#: Trainer kinds: class-name infix -> whether the kind starts from a pretrained encoder.
KINDS: dict[str, bool] = {"Scratch": False, "SSL": True}
#: The only configuration Swin plans hold.
CONFIGURATION = "3d_fullres"

#: The trainer kind of the CNN baselines (class ``CNNTrainer[...]``; no encoder, no protocol).
CNN_KIND = "CNN"
#: CNN baselines a grid can train beside the Swin runs: spec name -> (nnU-Net planner class, the plans identifier it
#: writes, planned for a GPU only). The planners are nnU-Net's own (``ExperimentPlanner`` in
#: ``nnunetv2/experiment_planning/experiment_planners/default_experiment_planner.py:27``, the ResEnc presets in
#: ``.../residual_unets/residual_encoder_unet_planners.py:220-277``: M ~9-11 GB, L ~24 GB, XL ~40 GB of VRAM).
CNN_BASELINES: dict[str, tuple[str, str, bool]] = {
    "nnunet": ("ExperimentPlanner", DEFAULT_PLANS, False),
    "resenc_m": ("nnUNetPlannerResEncM", "nnUNetResEncUNetMPlans", True),
    "resenc_l": ("nnUNetPlannerResEncL", "nnUNetResEncUNetLPlans", True),
    "resenc_xl": ("nnUNetPlannerResEncXL", "nnUNetResEncUNetXLPlans", True),
}
#: The protocol of runs without a protocol token: the whole network is fine-tuned.
FULL = "full"
#: Encoder stages a probe can read (the five outputs of the Swin encoder: patch embedding, then stages 1-4).
PROBE_STAGES: tuple[int, ...] = (0, 1, 2, 3, 4)

_NAME_RE = re.compile(r"^[A-Za-z0-9]+(?:[-_][A-Za-z0-9]+)*$")
_PROTOCOL_RE = re.compile(r"^(?P<kind>frozen|probe|decfirst|llrd)(?P<value>\d*)$")
_TRAINER_RE = re.compile(r"^Swin(?P<kind>[A-Za-z]+?)Trainer(?:_(?P<protocol>(?:frozen|probe\d+|decfirst\d+|llrd\d+)))?"
                         r"(?:_(?P<shots>\d+)shot)?(?:_draw(?P<draw>\d+))?(?:_(?P<epochs>\d+)epochs)?$")
_CNN_TRAINER_RE = re.compile(r"^CNNTrainer(?:_(?P<shots>\d+)shot)?(?:_draw(?P<draw>\d+))?(?:_(?P<epochs>\d+)epochs)?$")
TRAINER_GRAMMAR = ("Swin<Kind>Trainer[_<protocol>][_<k>shot][_draw<r>][_<E>epochs] or "
                   "CNNTrainer[_<k>shot][_draw<r>][_<E>epochs]")
PROTOCOL_GRAMMAR = ("full, frozen, probe<s> (s = encoder stage 0-4), decfirst<P> (decoder alone for the first P% of "
                    "the iterations, 1-99), llrd<NN> (layer-wise lr decay NN/100, 1-99)")


@dataclass(frozen=True)
class Protocol:
    """A rung of the adaptation ladder, as its class-name token says.

    * ``frozen``: the encoder (``swinViT``) in eval mode, without gradients and outside the optimiser; the decoder
      trains.
    * ``probe<s>``: the frozen encoder and a 1x1x1 convolution on stage ``s``'s output (0 = patch embedding, 4 = the
      bottleneck), upsampled trilinearly to the input size: how much segmentation one stage's features carry.
    * ``decfirst<P>``: the decoder alone for the first ``P``% of the iterations (encoder frozen as above), then the
      whole network, the encoder with its own linear warm-up of the schedule's warm-up length.
    * ``llrd<NN>``: layer-wise learning-rate decay ``d = NN/100``: the lr of a parameter is the schedule's lr times
      ``d**depth``, depth counted from the top: decoder 0, encoder stage 4 one, ..., stage 1 four, patch embedding five
      (BEiT/MAE fine-tuning style, per Swin stage).
    """

    kind: str
    value: int | None = None

    def __post_init__(self) -> None:
        if self.kind == "frozen":
            if self.value is not None:
                raise ValueError("protocol 'frozen' takes no number")
        elif self.kind == "probe":
            if self.value not in PROBE_STAGES:
                raise ValueError(f"protocol probe{'' if self.value is None else self.value}: the stage must be one of "
                                 f"{PROBE_STAGES} (0 = patch embedding, 4 = bottleneck), e.g. probe4")
        elif self.kind in ("decfirst", "llrd"):
            if self.value is None or not 1 <= self.value <= 99:
                what = "percent of the iterations" if self.kind == "decfirst" else "decay x 100"
                raise ValueError(f"protocol {self.kind}{'' if self.value is None else self.value}: the number "
                                 f"({what}) must lie in 1..99, e.g. {self.kind}{10 if self.kind == 'decfirst' else 75}")
        else:
            raise ValueError(f"unknown protocol {self.kind!r}; the protocols are {PROTOCOL_GRAMMAR}")

    @property
    def token(self) -> str:
        """The protocol as it appears in a trainer name: its kind and number (``frozen``, ``probe4``, ``decfirst10``,
        ``llrd75``)."""
        return self.kind + ("" if self.value is None else str(self.value))

    @property
    def trains_encoder(self) -> bool:
        """Whether the encoder's weights change at all (decfirst: after the decoder-only phase)."""
        return self.kind in ("decfirst", "llrd")

    @property
    def decay(self) -> float:
        """llrd's decay factor."""
        if self.kind != "llrd":
            raise ValueError(f"protocol {self.token} has no lr decay")
        return self.value / 100

    @property
    def fraction(self) -> float:
        """decfirst's share of the iterations with the decoder alone."""
        if self.kind != "decfirst":
            raise ValueError(f"protocol {self.token} has no decoder-only phase")
        return self.value / 100

    def label(self) -> str:
        """The protocol in words, for the report (``frozen encoder``, ``linear probe on stage 4``, ...)."""
        if self.kind == "frozen":
            return "frozen encoder"
        if self.kind == "probe":
            return f"linear probe on stage {self.value}"
        if self.kind == "decfirst":
            return f"decoder first for {self.value}% of iterations"
        return f"layer-wise lr decay {self.value / 100:g}"


def parse_protocol(token: str) -> Protocol | None:
    """``"frozen"`` -> Protocol("frozen"); ``"full"`` (or "") -> None (the whole network fine-tunes). ValueError
    naming the grammar for anything else."""
    if token in ("", FULL):
        return None
    m = _PROTOCOL_RE.match(str(token))
    if m is None:
        raise ValueError(f"protocol {token!r} is not one of {PROTOCOL_GRAMMAR}")
    return Protocol(m.group("kind"), int(m.group("value")) if m.group("value") else None)


def protocol_label(token: str) -> str:
    """``"full"`` -> "full fine-tuning", ``"llrd75"`` -> "layer-wise lr decay 0.75"."""
    p = parse_protocol(token)
    return "full fine-tuning" if p is None else p.label()


@dataclass(frozen=True)
class TrainerName:
    """What a trainer's class name says. ``shots`` None = all training cases; ``epochs`` None = full schedule;
    ``protocol`` "full" (the whole network fine-tunes) or a :class:`Protocol` token. ``kind`` "CNN" is the CNN
    baselines' ``CNNTrainer`` (no protocol)."""

    kind: str
    shots: int | None = None
    draw: int = 0
    epochs: int | None = None
    protocol: str = FULL

    def __post_init__(self) -> None:
        if self.kind not in KINDS and self.kind != CNN_KIND:
            raise ValueError(f"trainer kind {self.kind!r} is not one of {', '.join(KINDS)} (or the {CNN_KIND} "
                             "baselines' CNNTrainer)")
        p = parse_protocol(self.protocol)
        object.__setattr__(self, "protocol", FULL if p is None else p.token)
        if self.kind == CNN_KIND and p is not None:
            raise ValueError(f"the CNN baselines train the whole network; protocol {self.protocol!r} is for the Swin "
                             "trainers")
        if self.shots is not None and self.shots not in SHOTS:
            raise ValueError(f"no few-shot trainer for {self.shots} cases: the regimes are {SHOTS} (or all cases)")
        if not 0 <= self.draw <= MAX_DRAW:
            raise ValueError(f"draw {self.draw} must lie in 0..{MAX_DRAW}")
        if self.epochs is not None and self.epochs not in EPOCHS:
            raise ValueError(f"no trainer variant for {self.epochs} epochs: choose one of {EPOCHS} (or the full "
                             "schedule)")

    @property
    def name(self) -> str:
        """The class name, e.g. ``SwinSSLTrainer_llrd75_5shot_draw1_2epochs``; inverse of ``parse_trainer_name``."""
        name = "CNNTrainer" if self.kind == CNN_KIND else f"Swin{self.kind}Trainer"
        if self.protocol != FULL:
            name += f"_{self.protocol}"
        if self.shots is not None:
            name += f"_{self.shots}shot"
        if self.draw:
            name += f"_draw{self.draw}"
        if self.epochs is not None:
            name += f"_{self.epochs}epochs"
        return name

    @property
    def pretrained(self) -> bool:
        """True for trainers that load a pretraining checkpoint (SSL), False for Scratch and the CNN baselines."""
        return KINDS.get(self.kind, False)

    @property
    def adaptation(self) -> Protocol | None:
        """The protocol, parsed (None: full fine-tuning)."""
        return parse_protocol(self.protocol)

    @property
    def shots_label(self) -> str:
        """"all" or the number of training cases, as specs and reports write it."""
        return "all" if self.shots is None else str(self.shots)


def parse_trainer_name(name: str) -> TrainerName:
    """``SwinSSLTrainer_llrd75_5shot_draw1_2epochs`` -> TrainerName(kind="SSL", shots=5, draw=1, epochs=2,
    protocol="llrd75"); ``CNNTrainer_5shot`` -> TrainerName(kind="CNN", shots=5).

    Raises ValueError saying why a name is not one of nnssl's trainers.
    """
    m = _TRAINER_RE.match(name)
    kind = m.group("kind") if m is not None else None
    if m is None:
        m = _CNN_TRAINER_RE.match(name)
        kind = CNN_KIND
    if m is None:
        raise ValueError(f"trainer {name!r} does not match {TRAINER_GRAMMAR} (protocols: {PROTOCOL_GRAMMAR})")
    if m.group("draw") is not None and int(m.group("draw")) == 0:
        raise ValueError(f"trainer {name!r}: draw 0 is the class without a _draw suffix")
    protocol = m.groupdict().get("protocol") or FULL
    try:
        return TrainerName(kind=kind, shots=None if m.group("shots") is None else int(m.group("shots")),
                           draw=int(m.group("draw") or 0),
                           epochs=None if m.group("epochs") is None else int(m.group("epochs")), protocol=protocol)
    except ValueError as e:
        raise ValueError(f"trainer {name!r}: {e}") from None


def is_scratch(method: str) -> bool:
    """True for from-scratch method names: ``scratch`` and ``scratch-<encoder tag>``."""
    return method == SCRATCH or method.startswith(SCRATCH_PREFIX)


def is_cnn_baseline(method: str) -> bool:
    """True for the CNN baselines' method names (:data:`CNN_BASELINES`: ``nnunet``, ``resenc_l``, ...)."""
    return method in CNN_BASELINES


def trainer_name(method: str, shots: str | int | None = None, epochs: int | None = None, draw: int = 0,
                 protocol: str = FULL) -> str:
    """The trainer class that fine-tunes ``method`` (scratch methods train from random initialisation, CNN baselines
    with ``CNNTrainer``).

    ``shots`` is "all", None or a few-shot regime; ``draw`` the repeated draw (0 = the first subset or run);
    ``protocol`` "full" or a rung of the adaptation ladder (:class:`Protocol`).
    """
    k = None if shots in (None, "all") else int(shots)
    kind = CNN_KIND if is_cnn_baseline(method) else "Scratch" if is_scratch(method) else "SSL"
    return TrainerName(kind, k, int(draw), epochs, protocol).name


#: Joins a base plans identifier and an attached checkpoint's name: ``nnUNetSwinPlans`` + ``smit``.
ATTACHED_SEPARATOR = "_"
#: The separator of earlier nnssl versions (read, never written: nnU-Net's model selection cannot parse it).
_LEGACY_SEPARATOR = "__"


def check_plans_suffix(name: str, what: str = "name") -> str:
    """Validate the ``<name>`` of ``nnUNetSwinPlans_<name>`` (letters, digits, single '-' or '_'); ``what`` names
    the option the value came from in the error."""
    if not name or not _NAME_RE.match(name) or "__" in name:
        raise ValueError(f"{what} {name!r}: use letters, digits and single '-' or '_' (e.g. smit, dino-small); it "
                         f"becomes the plans identifier {SWIN_PLANS}{ATTACHED_SEPARATOR}<name>")
    return name


def check_plans_identifier(identifier: str, what: str = "plans") -> str:
    """A plans identifier nnU-Net's tools can parse back out of a model folder name: no ``__`` in it."""
    if not identifier or "__" in identifier or "/" in identifier or identifier.endswith(".json"):
        raise ValueError(f"{what} {identifier!r}: a plans identifier (the plans file name without .json) must not "
                         f"contain '__' or '/': nnU-Net splits model folder names <Trainer>__<Plans>__<configuration> "
                         f"at '__' when it selects models and exports them")
    return identifier


def attached_plans_name(base: str, name: str) -> str:
    """The identifier ``nnssl_attach`` writes: ``nnUNetSwinPlans`` + ``smit`` -> ``nnUNetSwinPlans_smit`` (``base`` may
    be any Swin plans, e.g. plans moved from the pretraining dataset)."""
    return check_plans_identifier(base) + ATTACHED_SEPARATOR + check_plans_suffix(name)


def plans_name(method: str) -> str:
    """Plans identifier of a method's runs: ``nnUNetSwinPlans`` for scratch, nnU-Net's plans for a CNN baseline
    (``nnUNetPlans``, ``nnUNetResEncUNetLPlans``), else ``nnUNetSwinPlans_<method>``."""
    if method == SCRATCH:
        return SWIN_PLANS
    if is_cnn_baseline(method):
        return CNN_BASELINES[method][1]
    return attached_plans_name(SWIN_PLANS, method)


def method_of_plans(plans: str) -> str:
    """Inverse of :func:`plans_name` (also for the ``nnUNetSwinPlans__<method>`` of earlier
    nnssl versions); ValueError for
    plans that are not nnssl's."""
    if plans == SWIN_PLANS:
        return SCRATCH
    for separator in (_LEGACY_SEPARATOR, ATTACHED_SEPARATOR):  # the longer first: "__x" is legacy, not "_" + "_x"
        prefix = SWIN_PLANS + separator
        if plans.startswith(prefix) and len(plans) > len(prefix):
            return check_plans_suffix(plans[len(prefix):])
    raise ValueError(f"plans {plans!r} are neither {SWIN_PLANS} nor {SWIN_PLANS}{ATTACHED_SEPARATOR}<name>")


def baseline_of_plans(plans: str) -> str:
    """The CNN baseline whose plans are ``plans`` (``nnUNetPlans`` -> ``nnunet``); ValueError for other plans."""
    for name, (_, identifier, _) in CNN_BASELINES.items():
        if plans == identifier:
            return name
    raise ValueError(f"plans {plans!r} are none of the CNN baselines' plans "
                     f"({', '.join(p for _, p, _ in CNN_BASELINES.values())})")


#: Marks a design-experiment variant pretrained on a share of the data: ``<method>[-<encoder>]-data<percent>``.
DATA_TOKEN = "data"


def variant_method(method: str, encoder: str | None = None, fraction: float | None = None) -> str:
    """The method name of a design-experiment variant: ``smit`` pretrained with encoder preset ``small`` on 25% of
    the pretraining cases is ``smit-small-data25`` (None: the grid's preset / all cases, no token)."""
    name = method + (f"-{encoder}" if encoder else "")
    if fraction is not None:
        percent = round(fraction * 100)
        if abs(percent - fraction * 100) > 1e-6:
            raise ValueError(f"data fraction {fraction!r} is not a whole percentage (0.25, 0.5, ...)")
        name += f"-{DATA_TOKEN}{percent}"
    return check_plans_suffix(name)


def scratch_method(encoder_tag: str) -> str:
    """The method name of a from-scratch run of another encoder, e.g. ``scratch-base``."""
    return SCRATCH_PREFIX + check_plans_suffix(encoder_tag)


def encoder_tag(encoder: dict) -> str:
    """A plans-name-safe tag of an encoder architecture (the plans' ``nnssl_encoder`` dict), e.g. ``f48-d2222-h36122
    4-w7``: feature size, depths, heads, window, and patch size / v2 blocks / merge order / window shift where they
    differ from the defaults. Input channels, drop-path and checkpointing are not architecture and are left out."""
    tag = (f"f{encoder['feature_size']}-d{''.join(str(d) for d in encoder['depths'])}"
           f"-h{'_'.join(str(h) for h in encoder['num_heads'])}-w{encoder['window_size']}")
    if encoder.get("patch_size", 2) != 2:
        tag += f"-p{encoder['patch_size']}"
    if encoder.get("use_v2"):
        tag += "-v2"
    if encoder.get("merge_order", "monai") != "monai":
        tag += f"-m{encoder['merge_order'].replace('-', '')}"
    if encoder.get("window_shift") is not None:
        tag += "-s" + "".join("1" if s else "0" for s in encoder["window_shift"])
    return tag


def model_folder_name(trainer: str, plans: str, configuration: str = CONFIGURATION) -> str:
    """nnU-Net's model folder ``<Trainer>__<Plans>__<configuration>``."""
    return f"{trainer}__{plans}__{configuration}"


@dataclass(frozen=True)
class RunName:
    """What a model folder name says: trainer, plans, configuration and the derived method / shots / draw / epochs."""

    trainer: str
    plans: str
    configuration: str
    method: str
    shots: str  # "all" or the number of labelled training cases, e.g. "5"
    epochs: int | None  # fine-tuning budget from the _<E>epochs suffix, None when absent
    draw: int = 0
    protocol: str = FULL  # the adaptation-ladder rung ("full": the whole network fine-tuned)


def parse_run_name(folder_name: str) -> RunName:
    """Parse ``<Trainer>__<Plans>__<configuration>``; ValueError saying why a name does not follow the convention.

    >>> parse_run_name("SwinSSLTrainer_5shot__nnUNetSwinPlans_smit__3d_fullres").method
    'smit'
    """
    parts = folder_name.split("__")
    if len(parts) < 3:
        raise ValueError("not a <Trainer>__<Plans>__<configuration> folder")
    trainer, configuration = parts[0], parts[-1]
    plans = "__".join(parts[1:-1])
    t = parse_trainer_name(trainer)
    if t.kind == CNN_KIND:
        return RunName(trainer=trainer, plans=plans, configuration=configuration, method=baseline_of_plans(plans),
                       shots=t.shots_label, epochs=t.epochs, draw=t.draw)
    method = method_of_plans(plans)
    if t.pretrained and is_scratch(method):
        raise ValueError(f"{trainer} with plans {plans} has no pretrained method; expected "
                         f"{SWIN_PLANS}{ATTACHED_SEPARATOR}<method>")
    if not t.pretrained and not is_scratch(method):
        raise ValueError(f"{trainer} (from scratch) with pretraining plans {plans!r} is ambiguous; use {SWIN_PLANS} "
                         f"or {SWIN_PLANS}{ATTACHED_SEPARATOR}{SCRATCH_PREFIX}<encoder>")
    return RunName(trainer=trainer, plans=plans, configuration=configuration, method=method, shots=t.shots_label,
                   epochs=t.epochs, draw=t.draw, protocol=t.protocol)


__all__ = [
    "CNN_BASELINES", "CNN_KIND", "FULL", "PROBE_STAGES", "PROTOCOL_GRAMMAR", "Protocol", "TRAINER_GRAMMAR",
    "baseline_of_plans", "is_cnn_baseline", "parse_protocol", "protocol_label",
    "ATTACHED_SEPARATOR", "CONFIGURATION", "DEFAULT_PLANS", "EPOCHS", "KINDS", "MAX_DRAW", "NNUNET_EPOCHS",
    "NNUNET_ITERATIONS_PER_EPOCH", "RunName", "SCRATCH",
    "SCRATCH_PREFIX", "SHOTS", "SWIN_PLANS", "TrainerName", "attached_plans_name", "check_plans_identifier",
    "check_plans_suffix", "encoder_tag", "is_scratch", "method_of_plans",
    "model_folder_name", "parse_run_name", "parse_trainer_name", "plans_name", "scratch_method", "trainer_name",
    "DATA_TOKEN", "variant_method",
]
