"""The names nnssl gives to nnU-Net objects: trainer classes, plans identifiers and model folders, built and parsed.

This is the one place that knows the naming scheme; the trainers module, the benchmark runner, the grid spec and the
results reader all call it. It imports neither torch nor nnunetv2, so reading a spec or a results tree stays cheap.

Trainers follow nnU-Net's convention (one class per experiment, named for what it changes)::

    Swin<Kind>Trainer[_<k>shot[_draw<r>]][_<E>epochs]

``Kind`` is ``Scratch`` (random initialisation) or ``SSL`` (the pretrained encoder attached to the plans). ``k`` is a
few-shot regime from :data:`SHOTS`, ``r >= 1`` a repeated draw of the k-shot subset (draw 0, today's subset, has no
suffix), ``E`` a short schedule from :data:`EPOCHS`. Plans are ``nnUNetSwinPlans`` (from scratch, the encoder the
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
#: Repeated k-shot draws 1..MAX_DRAW have trainer classes (draw 0 is the unsuffixed class).
MAX_DRAW = 99
#: Trainer kinds: class-name infix -> whether the kind starts from a pretrained encoder.
KINDS: dict[str, bool] = {"Scratch": False, "SSL": True}
#: The only configuration Swin plans hold.
CONFIGURATION = "3d_fullres"

_NAME_RE = re.compile(r"^[A-Za-z0-9]+(?:[-_][A-Za-z0-9]+)*$")
_TRAINER_RE = re.compile(r"^Swin(?P<kind>[A-Za-z]+?)Trainer(?:_(?P<shots>\d+)shot(?:_draw(?P<draw>\d+))?)?"
                         r"(?:_(?P<epochs>\d+)epochs)?$")


@dataclass(frozen=True)
class TrainerName:
    """What a Swin trainer's class name says. ``shots`` None = all training cases; ``epochs`` None = full schedule."""

    kind: str
    shots: int | None = None
    draw: int = 0
    epochs: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"trainer kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.shots is not None and self.shots not in SHOTS:
            raise ValueError(f"no few-shot trainer for {self.shots} cases: the regimes are {SHOTS} (or all cases)")
        if self.draw and self.shots is None:
            raise ValueError("a draw needs a few-shot regime: all training cases have one 'draw' only")
        if not 0 <= self.draw <= MAX_DRAW:
            raise ValueError(f"draw {self.draw} must lie in 0..{MAX_DRAW}")
        if self.epochs is not None and self.epochs not in EPOCHS:
            raise ValueError(f"no trainer variant for {self.epochs} epochs: choose one of {EPOCHS} (or the full "
                             "schedule)")

    @property
    def name(self) -> str:
        """The class name, e.g. ``SwinSSLTrainer_5shot_draw1_2epochs``; inverse of ``parse_trainer_name``."""
        name = f"Swin{self.kind}Trainer"
        if self.shots is not None:
            name += f"_{self.shots}shot" + (f"_draw{self.draw}" if self.draw else "")
        if self.epochs is not None:
            name += f"_{self.epochs}epochs"
        return name

    @property
    def pretrained(self) -> bool:
        """True for trainers that load a pretraining checkpoint (SSL), False for Scratch."""
        return KINDS[self.kind]

    @property
    def shots_label(self) -> str:
        """"all" or the number of training cases, as specs and reports write it."""
        return "all" if self.shots is None else str(self.shots)


def parse_trainer_name(name: str) -> TrainerName:
    """``SwinSSLTrainer_5shot_draw1_2epochs`` -> TrainerName(kind="SSL", shots=5, draw=1, epochs=2).

    Raises ValueError saying why a name is not one of nnssl's trainers.
    """
    m = _TRAINER_RE.match(name)
    if m is None:
        raise ValueError(f"trainer {name!r} does not match Swin<Kind>Trainer[_<k>shot[_draw<r>]][_<E>epochs]")
    if m.group("draw") is not None and int(m.group("draw")) == 0:
        raise ValueError(f"trainer {name!r}: draw 0 is the class without a _draw suffix")
    return TrainerName(kind=m.group("kind"), shots=None if m.group("shots") is None else int(m.group("shots")),
                       draw=int(m.group("draw") or 0),
                       epochs=None if m.group("epochs") is None else int(m.group("epochs")))


def is_scratch(method: str) -> bool:
    """True for from-scratch method names: ``scratch`` and ``scratch-<encoder tag>``."""
    return method == SCRATCH or method.startswith(SCRATCH_PREFIX)


def trainer_name(method: str, shots: str | int | None = None, epochs: int | None = None, draw: int = 0) -> str:
    """The trainer class that fine-tunes ``method`` (scratch methods train from random initialisation).

    ``shots`` is "all", None or a few-shot regime; ``draw`` the repeated k-shot draw (0 = the first subset).
    """
    k = None if shots in (None, "all") else int(shots)
    return TrainerName("Scratch" if is_scratch(method) else "SSL", k, int(draw), epochs).name


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
    """Plans identifier of a method's runs: ``nnUNetSwinPlans`` for scratch, else ``nnUNetSwinPlans_<method>``."""
    if method == SCRATCH:
        return SWIN_PLANS
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
    method = method_of_plans(plans)
    if t.pretrained and is_scratch(method):
        raise ValueError(f"{trainer} with plans {plans} has no pretrained method; expected "
                         f"{SWIN_PLANS}{ATTACHED_SEPARATOR}<method>")
    if not t.pretrained and not is_scratch(method):
        raise ValueError(f"{trainer} (from scratch) with pretraining plans {plans!r} is ambiguous; use {SWIN_PLANS} "
                         f"or {SWIN_PLANS}{ATTACHED_SEPARATOR}{SCRATCH_PREFIX}<encoder>")
    return RunName(trainer=trainer, plans=plans, configuration=configuration, method=method, shots=t.shots_label,
                   epochs=t.epochs, draw=t.draw)


__all__ = [
    "ATTACHED_SEPARATOR", "CONFIGURATION", "DEFAULT_PLANS", "EPOCHS", "KINDS", "MAX_DRAW", "NNUNET_EPOCHS",
    "NNUNET_ITERATIONS_PER_EPOCH", "RunName", "SCRATCH",
    "SCRATCH_PREFIX", "SHOTS", "SWIN_PLANS", "TrainerName", "attached_plans_name", "check_plans_identifier",
    "check_plans_suffix", "encoder_tag", "is_scratch", "method_of_plans",
    "model_folder_name", "parse_run_name", "parse_trainer_name", "plans_name", "scratch_method", "trainer_name",
]
