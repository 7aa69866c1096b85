"""The benchmark grid: which methods are pretrained on what, and fine-tuned on which tasks, shots and folds.

A spec is a JSON or YAML file (documented in documentation/benchmark.md):

    name: my_study
    device: cuda
    pretraining: {datasets: [900], encoder: base, crop: 96, batch_size: 2, steps: 20000, num_workers: 4,
                  options: {smit: {mask_ratio: 0.7}},               # method options (nnssl_pretrain -o)
                  per_method: {smit: {crop: 128, lr: 6.0e-4}}}      # settings of one method
    # lr, min_lr, warmup_steps, weight_decay, weight_decay_end, clip_grad: unset = each method's reference recipe
    methods: [scratch, smit, simmim, dino, ibot, simclr, mocov3, cpc, rotation, swinunetr]
    checkpoints: {swinunetr_public: /path/to/converted.pth}     # optional: reuse existing checkpoints
    downstream: {datasets: [901, 902], shots: [5, 10, all], folds: [0, 1, 2, 3, 4], epochs: 50,
                 probe: true}                               # frozen-feature probes of each pretrained encoder
    slurm: {partition: gpu, gpus_per_job: 4, cpus_per_gpu: 8, nodes: 2,          # optional: cluster resources
            time: {default: "04:00:00", pretrain: "2-00:00:00"}, mem: 64G}

``scratch`` is the from-scratch baseline (SwinScratchTrainer): it needs no pretraining.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from nnssl.nnunet.naming import (EPOCHS, MAX_DRAW, NNUNET_EPOCHS, NNUNET_ITERATIONS_PER_EPOCH, SCRATCH, SHOTS,
                                 is_scratch)
from nnssl.nnunet.naming import CNN_BASELINES, FULL, PROTOCOL_GRAMMAR, parse_protocol, variant_method


class SpecError(ValueError):
    """An invalid benchmark spec; the message names the field and the fix."""


#: Pretraining settings a spec may set for all methods or per method (``per_method``).
PER_METHOD_SETTINGS = ("crop", "batch_size", "steps", "num_workers", "lr", "min_lr", "warmup_steps", "weight_decay",
                       "weight_decay_end", "clip_grad")
#: The optimisation settings among them: unset, each method trains with its reference recipe.
OPTIM_SETTINGS = ("lr", "min_lr", "warmup_steps", "weight_decay", "weight_decay_end", "clip_grad")


@dataclass
class PretrainingSpec:
    """How the methods are pretrained. Optimisation settings left unset take each method's reference recipe
    (``nnssl_pretrain -m METHOD --show-config``); ``per_method`` overrides any of PER_METHOD_SETTINGS for one
    method."""

    datasets: list[str]
    encoder: str = "base"
    crop: int | list[int] = 96
    batch_size: int = 2
    steps: int = 1000
    num_workers: int = 2
    seed: int = 0
    lr: float | None = None
    min_lr: float | None = None
    warmup_steps: int | None = None
    weight_decay: float | None = None
    weight_decay_end: float | None = None
    clip_grad: float | None = None
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    per_method: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: design experiments: each method is pretrained on each share of the cases (nested seeded subsets)...
    data_fractions: list[float] = field(default_factory=lambda: [1.0])
    #: ... and with each encoder preset (None: ``encoder`` only); every other preset gets its own scratch baseline
    encoders: list[str] | None = None

    def encoder_list(self) -> list[str]:
        """The encoder presets the grid pretrains: ``encoders`` (the design axis) when given, else the one
        ``encoder``."""
        return list(self.encoders) if self.encoders else [self.encoder]

    def settings(self, method: str) -> dict[str, Any]:
        """The pretraining settings of ``method``: PER_METHOD_SETTINGS, per-method values over the shared ones
        (optimisation settings that are None are left to the method's recipe)."""
        values = {k: getattr(self, k) for k in PER_METHOD_SETTINGS}
        values.update(self.per_method.get(method, {}))
        return values

    def crop_of(self, method: str) -> tuple[int, int, int]:
        """The pretraining crop of ``method`` as three edges (a single number in the spec is a cube)."""
        crop = self.settings(method)["crop"]
        crop = list(crop) if isinstance(crop, (list, tuple)) else [crop]
        return tuple(int(c) for c in (crop * 3 if len(crop) == 1 else crop))  # type: ignore[return-value]


@dataclass(frozen=True)
class PretrainingRun:
    """One pretraining run of the grid: ``name`` is the method as the grid and the report know it (``smit``, or a
    design-experiment variant such as ``smit-small-data25``), ``method`` the pretext task it runs."""

    name: str
    method: str
    encoder: str
    fraction: float


@dataclass
class DownstreamSpec:
    """The ``downstream:`` entry: target datasets, shot regimes, folds and draws the grid fine-tunes on, with the
    fine-tuning budget (epochs, iterations per epoch) and the analyses run on the results (CKA images, attention,
    probes)."""

    datasets: list[str]
    shots: list[str] = field(default_factory=lambda: ["all"])
    folds: list[int] = field(default_factory=lambda: [0])
    epochs: int | None = None  # None: the trainers' default schedule
    #: Repeated k-shot draws per regime and fold (draw 0 = the first subset): each a new subset and a new run.
    draws: int = 1
    #: Fine-tuning runs per all-cases arm and fold (run r >= 1 is the trainer's ``_draw<r>`` class on the same cases):
    #: nnU-Net's fine-tuning is unseeded, so one run per arm is one sample of its training noise; the report treats
    #: the runs as draws (the crossed draws x cases test).
    repeats: int = 1
    # Demo/CI budget knobs, passed to the trainers as NNSSL_* environment variables (None: nnU-Net's defaults).
    iterations_per_epoch: int | None = None
    val_iterations_per_epoch: int | None = None
    mirroring: bool = True
    cka_images: int = 16
    #: after each pretrained fine-tuning run, measure its attention (nnssl_attention) on this many validation crops
    attention: bool = True
    attention_images: int = 8
    #: a frozen-feature probe (nnssl_probe) of every pretrained encoder against a random one, per dataset
    probe: bool = True
    #: encoder output 0-4 whose tokens the probes read (stride 2^(stage+1)); small images want an earlier stage
    probe_stage: int = 2
    #: fine-tuning learning rate of every method (NNSSL_LEARNING_RATE; None: the trainers' recipe, 1e-4)
    learning_rate: float | None = None
    #: dataset -> a fixed split file (nnU-Net's splits_final.json layout) installed before any fine-tuning; relative
    #: paths are read from the spec file's folder
    splits: dict[str, str] = field(default_factory=dict)
    #: rules that thin the grid: [{datasets: [...], shots: [...], methods: [...]}]; a run (dataset, method, shots)
    #: is fine-tuned only if every rule whose datasets and shots match it lists the method (``methods: []``: none)
    only: list[dict[str, list[str]]] = field(default_factory=list)
    #: rungs of the adaptation ladder every Swin method (scratch too) is fine-tuned with: full, frozen, probe<s>,
    #: decfirst<P>, llrd<NN> (nnssl.nnunet.naming.Protocol)
    protocols: list[str] = field(default_factory=lambda: [FULL])

    def includes(self, dataset: str, method: str, shots: str) -> bool:
        """Whether the grid fine-tunes ``method`` (or CNN baseline) on ``dataset`` at ``shots``: every ``only`` rule
        that matches the dataset and regime must list it (from-scratch baselines of other encoders follow
        ``scratch``)."""
        name = SCRATCH if is_scratch(method) else method
        for rule in self.only:
            if ("datasets" in rule and dataset not in rule["datasets"]) or ("shots" in rule and shots not in
                                                                            rule["shots"]):
                continue
            if name not in rule["methods"]:
                return False
        return True

    def draws_of(self, shots: str) -> int:
        """Runs per arm and fold of regime ``shots``: ``repeats`` for all cases, ``draws`` for a k-shot regime."""
        return self.repeats if shots == "all" else self.draws

    @property
    def iterations(self) -> int:
        """Fine-tuning iterations of one run: epochs x iterations per epoch (nnU-Net's 1000 x 250 when unset)."""
        return (self.epochs or NNUNET_EPOCHS) * (self.iterations_per_epoch or NNUNET_ITERATIONS_PER_EPOCH)


#: The grid's job stages (the runner's ``STAGES``; a test checks that they agree). ``slurm.time`` and ``slurm.mem``
#: may be given per stage, under these names or ``default``.
SLURM_STAGES = ("phantoms", "preprocess", "pretrain", "attach", "probe", "splits", "finetune", "cka", "attention",
                "report")
# SLURM's --time forms: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS.
_SLURM_TIME = re.compile(r"^(\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d+|\d+-\d+:\d{1,2}|\d+-\d+:\d{1,2}:\d{1,2})$")
_SLURM_MEM = re.compile(r"^\d+[KMGT]?$", re.I)


@dataclass
class SlurmSpec:
    """Cluster resources of the exported jobs (``--export-jobs``); every field is optional.

    ``gpus_per_job`` and ``nodes`` size a pretraining job (``gpus_per_job`` GPUs on each of ``nodes`` nodes, one
    torchrun per node); fine-tuning and CKA jobs take one GPU each; the other jobs take none. ``time`` and ``mem`` are
    one value for every job or a mapping ``{stage: value, default: value}``.
    """

    partition: str | None = None
    gpus_per_job: int = 1
    cpus_per_gpu: int | None = None  # CPUs per GPU of a GPU job; jobs without a GPU get this many
    time: str | dict[str, str] | None = None
    mem: str | int | dict[str, str | int] | None = None
    nodes: int = 1
    port: int = 29500  # rendezvous port on a multi-node pretraining job's first node
    extra: list[str] = field(default_factory=list)  # more #SBATCH options for every job, e.g. --account=proj

    def validate(self, device: str) -> "SlurmSpec":
        """Check the cluster resources for ``device`` (positive counts, a TCP port, a partition name, several nodes only
        on CUDA); returns self, SpecError naming the bad key otherwise."""
        for key in ("gpus_per_job", "nodes"):
            if not _positive_int(getattr(self, key)):
                raise SpecError(f"slurm.{key} must be a positive integer, got {getattr(self, key)!r}")
        if self.cpus_per_gpu is not None and not _positive_int(self.cpus_per_gpu):
            raise SpecError(f"slurm.cpus_per_gpu must be a positive integer, got {self.cpus_per_gpu!r}")
        if self.nodes > 1 and device != "cuda":
            raise SpecError(f"slurm.nodes: {self.nodes} nodes need device: cuda (multi-node pretraining is DDP over "
                            "GPUs); set nodes: 1 for a CPU grid")
        if not _positive_int(self.port) or not 1024 <= self.port <= 65535:
            raise SpecError(f"slurm.port must be a TCP port in 1024..65535, got {self.port!r}")
        if self.partition is not None and not (isinstance(self.partition, str) and re.fullmatch(r"\S+", self.partition)):
            raise SpecError(f"slurm.partition must be a partition name (see sinfo), got {self.partition!r}")
        self.time = _per_stage(self.time, "time", _check_time)
        self.mem = _per_stage(self.mem, "mem", _check_mem)
        if not isinstance(self.extra, list) or not all(isinstance(o, str) and o.startswith("--") for o in self.extra):
            raise SpecError(f"slurm.extra must be a list of sbatch options such as --account=proj, got {self.extra!r}")
        return self

    def limit(self, key: str, stage: str) -> str | None:
        """The ``time`` or ``mem`` of a stage's jobs: its own entry, else ``default``, else the single value."""
        value = getattr(self, key)
        if isinstance(value, dict):
            return value.get(stage, value.get("default"))
        return value


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _per_stage(value: Any, key: str, check: Callable[[Any, str], str]) -> Any:
    if value is None:
        return None
    if not isinstance(value, dict):
        return check(value, f"slurm.{key}")
    known = (*SLURM_STAGES, "default")
    for stage in value:
        if stage not in known:
            close = difflib.get_close_matches(str(stage), known, 1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SpecError(f"slurm.{key}: unknown stage {stage!r}{hint}; known: {', '.join(known)}")
    return {stage: check(v, f"slurm.{key}.{stage}") for stage, v in value.items()}


def _check_time(value: Any, where: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML 1.1 reads an unquoted 12:00:00 as 43200 (base 60), so a number here is ambiguous: refuse it.
        raise SpecError(f"{where}: got the number {value}; write the time as a quoted string, e.g. \"12:00:00\" "
                        "(unquoted, YAML reads HH:MM:SS as seconds) or \"90\" for minutes")
    if not isinstance(value, str) or not _SLURM_TIME.match(value):
        raise SpecError(f"{where}: {value!r} is not a SLURM time; use minutes, HH:MM:SS or D-HH:MM:SS (2-00:00:00)")
    return value


def _check_mem(value: Any, where: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return str(value)  # SLURM's unit: megabytes
    if not isinstance(value, str) or not _SLURM_MEM.match(value):
        raise SpecError(f"{where}: {value!r} is not a SLURM memory size; use e.g. 64G or 16000M (per node)")
    return value


@dataclass
class BenchmarkSpec:
    """A whole benchmark grid, as read from a YAML or JSON spec (documentation/benchmark.md): the methods to pretrain
    (or given ``checkpoints``), the pretraining and downstream settings, the device, phantom generation, CNN baselines
    and SLURM resources."""

    name: str
    pretraining: PretrainingSpec
    downstream: DownstreamSpec
    methods: list[str] = field(default_factory=lambda: [SCRATCH])
    checkpoints: dict[str, str] = field(default_factory=dict)
    device: str = "cuda"
    phantoms: dict[str, Any] | None = None  # generate phantom datasets first (the demo)
    slurm: SlurmSpec | None = None  # cluster resources of --export-jobs (None: SlurmSpec's defaults)
    #: CNN baselines trained on the same folds, k-shot subsets and draws (nnssl.nnunet.naming.CNN_BASELINES)
    baselines: list[str] = field(default_factory=list)
    #: the baseline the report tests every Swin method against (its own test family); default: the first baseline
    reference_baseline: str | None = None
    #: train GPU-sized baselines (ResEnc M/L/XL) on a CPU grid anyway
    force_baselines: bool = False

    def validate(self) -> "BenchmarkSpec":
        """Check the spec as a whole before anything runs (known methods with close-match hints, checkpoint names,
        device, baselines, phantoms, shot regimes); returns self, SpecError naming the problem and its fix otherwise."""
        from nnssl.tasks import method_names

        registry = set(method_names())
        known = registry | {SCRATCH} | set(self.checkpoints)
        for m in self.methods:
            if m not in known:
                close = difflib.get_close_matches(m, known, 1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise SpecError(f"methods: unknown method {m!r}{hint}; known: {', '.join(sorted(known))}")
        for name, path in self.checkpoints.items():
            if name in registry:
                raise SpecError(f"checkpoints: {name!r} clashes with a method name; give the checkpoint another name")
        for s in self.downstream.shots:
            if s != "all" and not (str(s).isdigit() and int(s) > 0):
                raise SpecError(f"downstream.shots: {s!r} must be 'all' or a positive number of cases (5, 10)")
        if self.device not in ("cpu", "cuda"):
            raise SpecError(f"device must be cpu or cuda, got {self.device!r}")
        if not self.downstream.datasets:
            raise SpecError("downstream.datasets is empty: name the target datasets to fine-tune on")
        for s in self.downstream.shots:
            if s != "all" and int(s) not in SHOTS:
                raise SpecError(f"downstream.shots: no trainer for {s} cases; the few-shot trainers exist for {SHOTS}")
        if self.downstream.epochs is not None and self.downstream.epochs not in EPOCHS:
            raise SpecError(f"downstream.epochs: no trainer variant for {self.downstream.epochs} epochs; choose one of "
                            f"{EPOCHS} or omit it for nnU-Net's full schedule")
        for key in ("epochs", "iterations_per_epoch", "val_iterations_per_epoch"):
            value = getattr(self.downstream, key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise SpecError(f"downstream.{key} must be a positive integer, got {value!r}")
        for key in ("draws", "repeats"):  # runs per arm and fold: draw 0..MAX_DRAW each have a trainer class
            value = getattr(self.downstream, key)
            if not _positive_int(value) or value > MAX_DRAW + 1:
                raise SpecError(f"downstream.{key} must be an integer in 1..{MAX_DRAW + 1}, got {value!r}")
        if self.downstream.draws > 1 and all(s == "all" for s in self.downstream.shots):
            raise SpecError("downstream.draws > 1 repeats k-shot subsets, but downstream.shots has no k-shot regime "
                            "(e.g. shots: [5, all]); downstream.repeats repeats the all-cases runs")
        if self.downstream.repeats > 1 and "all" not in self.downstream.shots:
            raise SpecError("downstream.repeats > 1 repeats the all-cases runs, but downstream.shots has no 'all' "
                            "regime; downstream.draws repeats the k-shot runs")
        if not isinstance(self.downstream.probe, bool):
            raise SpecError(f"downstream.probe must be true or false, got {self.downstream.probe!r}")
        if self.downstream.cka_images < 4:
            raise SpecError("downstream.cka_images must be >= 4 (the unbiased CKA needs 4 images per batch)")
        if not isinstance(self.downstream.attention, bool):
            raise SpecError(f"downstream.attention must be true or false, got {self.downstream.attention!r}")
        images = self.downstream.attention_images
        if not isinstance(images, int) or isinstance(images, bool) or images < 1:
            raise SpecError(f"downstream.attention_images must be a positive integer, got {images!r}")
        lr = self.downstream.learning_rate
        if lr is not None and (not isinstance(lr, (int, float)) or isinstance(lr, bool) or not math.isfinite(lr)
                               or lr <= 0):
            raise SpecError(f"downstream.learning_rate must be a finite number > 0 (or left out for the trainers' "
                            f"1e-4), got {lr!r}")
        stage = self.downstream.probe_stage
        if isinstance(stage, bool) or not isinstance(stage, int) or not 0 <= stage <= 4:
            raise SpecError(f"downstream.probe_stage must be an encoder output 0-4 (stride 2^(stage+1)), got {stage!r}")
        self._validate_splits()
        self._validate_ladder_and_baselines()
        self._validate_only()
        if self.phantoms is not None:
            self.phantoms = validate_phantoms(self.phantoms)
        self._validate_pretraining(registry)
        if self.slurm is not None:
            self.slurm.validate(self.device)
        return self

    def _validate_only(self) -> None:
        """``downstream.only`` rules name known datasets, regimes and methods (values normalised to strings)."""
        rules = self.downstream.only
        if not isinstance(rules, list):
            raise SpecError(f"downstream.only must be a list of rules {{datasets, shots, methods}}, got "
                            f"{type(rules).__name__}")
        known = {"datasets": self.downstream.datasets, "shots": self.downstream.shots,
                 "methods": self.methods + self.baselines}
        for i, rule in enumerate(rules):
            where = f"downstream.only[{i}]"
            if not isinstance(rule, dict) or "methods" not in rule or not set(rule) <= set(known):
                raise SpecError(f"{where} must be a mapping with methods and optionally datasets and shots, e.g. "
                                "{datasets: [902], methods: [scratch, smit]}")
            for key, values in rule.items():
                # methods: [] drops the matching datasets and regimes from fine-tuning altogether
                if not isinstance(values, list) or (not values and key != "methods"):
                    raise SpecError(f"{where}.{key} must be a non-empty list, got {values!r}")
                rule[key] = [str(v) for v in values]
                unknown = [v for v in rule[key] if v not in known[key]]
                if unknown:
                    raise SpecError(f"{where}.{key}: {', '.join(unknown)} not in the spec's {key} "
                                    f"({', '.join(known[key])})")

    def _validate_splits(self) -> None:
        """Every split file exists, is an nnU-Net split and has the folds the grid trains (its cases are checked
        against the preprocessed dataset by the grid's splits job, once the dataset exists)."""
        from nnssl.nnunet.splits import SplitError, read_splits

        splits = self.downstream.splits
        if not isinstance(splits, dict):
            raise SpecError(f"downstream.splits must map a dataset to a split file, got {type(splits).__name__}")
        for d, path in splits.items():
            if str(d) not in self.downstream.datasets:
                raise SpecError(f"downstream.splits: dataset {d!r} is not one of downstream.datasets "
                                f"({', '.join(self.downstream.datasets)})")
            try:
                folds = read_splits(path)
            except SplitError as e:
                raise SpecError(f"downstream.splits.{d}: {e}") from None
            beyond = [f for f in self.downstream.folds if f >= len(folds)]
            if beyond:
                raise SpecError(f"downstream.splits.{d}: {path} has {len(folds)} fold(s) (0..{len(folds) - 1}), but "
                                f"downstream.folds asks for {beyond}")

    def _validate_ladder_and_baselines(self) -> None:
        """downstream.protocols are ladder rungs; baselines are known CNN baselines, GPU-sized ones only on a GPU
        grid (unless force_baselines), their names clash with no method; the reference is one of them."""
        protocols = self.downstream.protocols
        if not isinstance(protocols, list) or not protocols:
            raise SpecError(f"downstream.protocols must be a non-empty list of {PROTOCOL_GRAMMAR}, got {protocols!r}")
        tokens = []
        for p in protocols:
            try:
                parsed = parse_protocol(str(p))
            except ValueError as e:
                raise SpecError(f"downstream.protocols: {e}") from None
            tokens.append(FULL if parsed is None else parsed.token)
        if len(set(tokens)) != len(tokens):
            raise SpecError(f"downstream.protocols lists a protocol twice: {protocols!r}")
        self.downstream.protocols = tokens
        if not isinstance(self.baselines, list):
            raise SpecError(f"baselines must be a list such as [nnunet, resenc_l], got {self.baselines!r}")
        for b in self.baselines:
            if b not in CNN_BASELINES:
                close = difflib.get_close_matches(str(b), CNN_BASELINES, 1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise SpecError(f"baselines: unknown CNN baseline {b!r}{hint}; known: {', '.join(CNN_BASELINES)}")
            if b in self.methods or b in self.checkpoints:
                raise SpecError(f"baselines: {b!r} is also a method or checkpoint name; rename the checkpoint")
            planner, _, gpu_only = CNN_BASELINES[b]
            if gpu_only and self.device == "cpu" and not self.force_baselines:
                raise SpecError(f"baselines: {b} is planned by nnU-Net's {planner} for a GPU (ResEnc L: 24 GB), and a "
                                "CPU grid would train it for days per fold; use device: cuda, drop it from baselines "
                                "(nnunet runs on CPU), or set force_baselines: true to train it anyway")
        if len(set(self.baselines)) != len(self.baselines):
            raise SpecError(f"baselines lists a baseline twice: {self.baselines!r}")
        if not isinstance(self.force_baselines, bool):
            raise SpecError(f"force_baselines must be true or false, got {self.force_baselines!r}")
        if self.reference_baseline is not None and self.reference_baseline not in self.baselines:
            raise SpecError(f"reference_baseline {self.reference_baseline!r} is not one of baselines "
                            f"({', '.join(self.baselines) or 'none'}): add it there or leave it out (the first "
                            "baseline is the reference)")

    @property
    def reference(self) -> str | None:
        """The CNN baseline the report tests against (fixed in the spec, never picked from the results)."""
        return self.reference_baseline or (self.baselines[0] if self.baselines else None)

    def _validate_design_axes(self, presets: Any) -> None:
        """pretraining.data_fractions: whole percentages in (0, 1]; pretraining.encoders: known presets; each once,
        and no variant name clashes with a method, checkpoint or baseline."""
        pre = self.pretraining
        fractions = pre.data_fractions
        if not isinstance(fractions, list) or not fractions:
            raise SpecError(f"pretraining.data_fractions must be a non-empty list such as [0.25, 0.5, 1.0], got "
                            f"{fractions!r}")
        for f in fractions:
            ok = isinstance(f, (int, float)) and not isinstance(f, bool) and math.isfinite(f) and 0 < f <= 1
            if not ok or abs(round(f * 100) - f * 100) > 1e-6:
                raise SpecError(f"pretraining.data_fractions: {f!r} must be a share of the cases in (0, 1] in whole "
                                "percent (0.25, 0.5, 1.0); the subsets are nested (0.25 inside 0.5)")
        if len({round(f * 100) for f in fractions}) != len(fractions):
            raise SpecError(f"pretraining.data_fractions lists a fraction twice: {fractions!r}")
        pre.data_fractions = [float(f) for f in fractions]
        if pre.encoders is not None:
            if not isinstance(pre.encoders, list) or not pre.encoders:
                raise SpecError(f"pretraining.encoders must be a non-empty list of presets such as [tiny, small, "
                                f"base], got {pre.encoders!r}")
            for e in pre.encoders:
                if e not in presets:
                    raise SpecError(f"pretraining.encoders: unknown preset {e!r}; choose from {', '.join(presets)}")
            if len(set(pre.encoders)) != len(pre.encoders):
                raise SpecError(f"pretraining.encoders lists a preset twice: {pre.encoders!r}")
        taken = set(self.methods) | set(self.checkpoints) | set(self.baselines)
        for run in self.pretraining_runs:
            if run.name != run.method and run.name in taken:
                raise SpecError(f"the design-experiment run {run.name!r} ({run.method}, encoder {run.encoder}, "
                                f"{run.fraction:g} of the cases) has the name of a method, checkpoint or baseline; "
                                "rename that one")

    def _validate_pretraining(self, registry: set[str]) -> None:
        """Every pretraining setting and method option as the commands would check them, before anything runs."""
        from nnssl.encoders.swin import PRESETS, check_swin_input_size
        from nnssl.tasks import config_from_overrides, get_task_class

        pre = self.pretraining
        if pre.encoder not in PRESETS:
            raise SpecError(f"pretraining.encoder: unknown preset {pre.encoder!r}; choose one of {', '.join(PRESETS)}")
        self._validate_design_axes(PRESETS)
        for section, table in (("options", pre.options), ("per_method", pre.per_method)):
            if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
                raise SpecError(f"pretraining.{section} must map a method to a mapping of settings")
            for m in table:
                if m not in registry and m not in self.checkpoints:
                    close = difflib.get_close_matches(m, registry, 1)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    raise SpecError(f"pretraining.{section}: unknown method {m!r}{hint}")
        for m in [m for m in self.pretrained_methods if m in registry and m not in self.checkpoints]:
            unknown = sorted(set(pre.per_method.get(m, {})) - set(PER_METHOD_SETTINGS))
            if unknown:
                raise SpecError(f"pretraining.per_method.{m}: unknown setting(s) {unknown}; known: "
                                f"{', '.join(PER_METHOD_SETTINGS)}")
            where = f"pretraining.per_method.{m}" if m in pre.per_method else "pretraining"
            values = pre.settings(m)
            for key in ("batch_size", "steps"):
                if not isinstance(values[key], int) or isinstance(values[key], bool) or values[key] < 1:
                    raise SpecError(f"{where}.{key} must be a positive integer, got {values[key]!r}")
            if not isinstance(values["num_workers"], int) or values["num_workers"] < 0:
                raise SpecError(f"{where}.num_workers must be an integer >= 0, got {values['num_workers']!r}")
            for key in OPTIM_SETTINGS:
                v = values[key]
                if v is None:
                    continue
                bad = not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0 \
                    or (key == "lr" and v == 0) or (key == "warmup_steps" and (not isinstance(v, int) or
                                                                               v >= values["steps"]))
                if bad:
                    raise SpecError(f"{where}.{key}={v!r} is not valid: lr > 0, warmup_steps an integer below steps, "
                                    "the others finite and >= 0 (leave it out for the method's reference recipe)")
            cls = get_task_class(m)
            try:
                cfg = config_from_overrides(cls.Config, {k: str(v) if not isinstance(v, str) else v
                                                         for k, v in pre.options.get(m, {}).items()})
            except (ValueError, TypeError) as e:
                raise SpecError(f"pretraining.options.{m}: {e}") from None
            try:
                crop = pre.crop_of(m)
                check_swin_input_size(crop)
                cls.check_crop(crop, cfg)
            except ValueError as e:
                raise SpecError(f"{where}.crop: {e}") from None

    @property
    def pretrained_methods(self) -> list[str]:
        """The spec's methods without scratch: the ones fine-tuned from a pretrained encoder."""
        return [m for m in self.methods if m != SCRATCH]

    @property
    def pretraining_runs(self) -> list[PretrainingRun]:
        """The runs the grid pretrains: every pretrained method (not a given checkpoint) x encoder x data fraction;
        the spec's preset and all cases add no token to the name."""
        pre = self.pretraining
        return [PretrainingRun(variant_method(m, e if e != pre.encoder else None, f if f != 1.0 else None), m, e,
                               float(f))
                for m in self.pretrained_methods if m not in self.checkpoints
                for e in pre.encoder_list() for f in pre.data_fractions]

    @property
    def finetuned_pretrained(self) -> list[str]:
        """Every pretrained encoder the grid fine-tunes: the pretraining runs' names, then the given checkpoints."""
        return [r.name for r in self.pretraining_runs] + [m for m in self.pretrained_methods if m in self.checkpoints]

    def base_method(self, name: str) -> str:
        """The spec's method of a design-experiment variant (``smit-small-data25`` -> ``smit``); other names as
        they are."""
        return next((r.method for r in self.pretraining_runs if r.name == name), name)

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain data (nested dataclasses as dicts), as written beside the grid's results."""
        return dataclasses.asdict(self)


PHANTOM_KEYS = ("datasets", "seed", "cases", "size", "spacing")


def validate_phantoms(ph: Any) -> dict[str, Any]:
    """The ``phantoms:`` entry: datasets (ids), seed, and cases / size / spacing, each either one value for every
    dataset or a mapping dataset -> value (so that a pretraining set can be larger than the targets)."""
    if not isinstance(ph, dict):
        raise SpecError(f"phantoms must be a mapping (datasets, seed, cases, size, spacing), got {type(ph).__name__}")
    unknown = sorted(set(ph) - set(PHANTOM_KEYS))
    if unknown:
        raise SpecError(f"phantoms: unknown key(s) {', '.join(unknown)}; known: {', '.join(PHANTOM_KEYS)}")
    datasets = ph.get("datasets", [])
    if not isinstance(datasets, list) or not datasets:
        raise SpecError("phantoms.datasets must be a non-empty list of phantom dataset ids, e.g. [900, 901, 902]")
    out: dict[str, Any] = {"datasets": [str(d) for d in datasets], "seed": ph.get("seed", 0)}
    if not isinstance(out["seed"], int) or isinstance(out["seed"], bool):
        raise SpecError(f"phantoms.seed must be an integer, got {out['seed']!r}")
    checks: dict[str, Callable[[Any], bool]] = {
        "cases": lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
        "size": lambda v: (isinstance(v, int) and v > 0) or (isinstance(v, list) and len(v) == 3
                                                              and all(isinstance(x, int) and x > 0 for x in v)),
        "spacing": lambda v: isinstance(v, list) and len(v) == 3 and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0 for x in v),
    }
    hints = {"cases": "a positive integer", "size": "a positive integer or [D, H, W]", "spacing": "[z, y, x] in mm"}
    for key, ok in checks.items():
        if key not in ph:
            continue
        value = ph[key]
        per = {str(k): v for k, v in value.items()} if isinstance(value, dict) else {d: value for d in out["datasets"]}
        extra = sorted(set(per) - set(out["datasets"]))
        if extra:
            raise SpecError(f"phantoms.{key}: dataset(s) {', '.join(extra)} are not in phantoms.datasets")
        for d, v in per.items():
            if not ok(v):
                raise SpecError(f"phantoms.{key}{'.' + d if isinstance(value, dict) else ''} must be {hints[key]}, "
                                f"got {v!r}")
        out[key] = per
    return out


def phantom_arguments(ph: dict[str, Any], dataset: str) -> list[str]:
    """The nnssl_phantoms options of one dataset of a validated ``phantoms:`` entry."""
    args = ["--seed", str(ph.get("seed", 0))]
    for key in ("cases", "size", "spacing"):
        value = ph.get(key, {}).get(dataset)
        if value is not None:
            args += [f"--{key}", *[str(v) for v in (value if isinstance(value, list) else [value])]]
    return args


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise SpecError(f"{where} must be a mapping, got {type(data).__name__}")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        hints = [f"{k} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(k, fields, 1)) else k for k in unknown]
        raise SpecError(f"{where}: unknown key(s) {', '.join(hints)}; known: {', '.join(sorted(fields))}")
    try:
        return cls(**data)
    except TypeError as e:
        raise SpecError(f"{where}: {e}") from None


def spec_from_dict(data: dict[str, Any], base_dir: str | Path | None = None) -> BenchmarkSpec:
    """Build and validate a spec; ``base_dir`` is where relative split-file paths are read from: the spec file's
    folder (None: the current directory)."""
    if not isinstance(data, dict):
        what = "is empty" if data is None else f"holds a {type(data).__name__}, not a mapping"
        raise SpecError(f"the spec {what}: write a mapping with name, pretraining and downstream entries (see "
                        "documentation/benchmark.md)")
    data = dict(data)
    for key in ("name", "pretraining", "downstream"):
        if key not in data:
            raise SpecError(f"the spec needs a {key!r} entry (see documentation/benchmark.md)")
    data["pretraining"] = _build(PretrainingSpec, data["pretraining"], "pretraining")
    data["downstream"] = _build(DownstreamSpec, data["downstream"], "downstream")
    if data.get("slurm") is not None:
        data["slurm"] = _build(SlurmSpec, data["slurm"], "slurm")
    spec = _build(BenchmarkSpec, data, "spec")
    if not isinstance(spec.name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", spec.name):
        raise SpecError(f"name: {spec.name!r} must be a word of letters, digits, '_', '-' and '.' (it names folders)")
    for where, value in (("pretraining.datasets", spec.pretraining.datasets), ("downstream.datasets",
                         spec.downstream.datasets), ("downstream.shots", spec.downstream.shots),
                         ("downstream.folds", spec.downstream.folds), ("methods", spec.methods)):
        if not isinstance(value, list):
            raise SpecError(f"{where} must be a list, e.g. [{value!r}], got {type(value).__name__}")
    if not all(isinstance(f, int) and not isinstance(f, bool) and f >= 0 for f in spec.downstream.folds):
        raise SpecError(f"downstream.folds must be fold numbers >= 0, got {spec.downstream.folds!r}")
    spec.pretraining.datasets = [str(d) for d in spec.pretraining.datasets]
    spec.downstream.datasets = [str(d) for d in spec.downstream.datasets]
    spec.downstream.shots = [str(s) for s in spec.downstream.shots]
    if isinstance(spec.downstream.splits, dict):
        base = Path(base_dir) if base_dir is not None else Path.cwd()
        spec.downstream.splits = {str(d): str((base / str(p)).resolve()) for d, p in spec.downstream.splits.items()}
    return spec.validate()


def load_spec(path: str | Path) -> BenchmarkSpec:
    """Read and validate a benchmark spec from a ``.yaml``/``.yml`` or JSON file; FileNotFoundError when it does not
    exist, SpecError with the line and column of a syntax error or the key that is wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"spec {path} does not exist")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            where = getattr(e, "problem_mark", None)
            at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise SpecError(f"{path} is not valid YAML{at} ({problem}): fix the syntax there") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SpecError(f"{path} is not valid JSON ({e}); YAML specs need a .yaml or .yml suffix") from None
    if not isinstance(data, dict):
        what = "is empty" if data is None else f"holds a {type(data).__name__}, not a mapping"
        raise SpecError(f"{path} {what}: write a mapping with name, pretraining and downstream entries (see "
                        "documentation/benchmark.md)")
    return spec_from_dict(data, base_dir=path.parent)


def demo_spec(methods: list[str] | None = None) -> BenchmarkSpec:
    """The README demo: tiny encoder on CPU; scratch plus one method of each family, SMIT among them; CT and MRI
    targets.

    Sized to learn in about 25-30 minutes on 2 CPU cores (documentation/results.md): the targets are written at
    10 mm (32^3 CT, 24x32x32 MRI), where a fine-tuning iteration costs a third of one at 5 mm, and every method is
    pretrained and probed, but only scratch and SMIT are fine-tuned (CT with 5 and all cases, MRI with all cases), each
    for 700 iterations at lr 1e-2: on the from-scratch curves (two runs per task) the mean over the large organs has
    levelled off by 500-650 iterations on both tasks, and 800 iterations made the demo 26 minutes; 500 iterations
    learnt spleen and kidneys on CT but in one of two MRI runs missed both kidneys. ``--methods`` fine-tunes the
    methods it names.
    """
    chosen = methods or [SCRATCH, "smit", "dino", "simclr", "rotation"]
    tuned = [m for m in chosen if m in (SCRATCH, "smit")] if methods is None else chosen
    return spec_from_dict({
        "name": "demo",
        "device": "cpu",
        "phantoms": {"datasets": [900, 901, 902], "seed": 0, "cases": {901: 40, 902: 40},
                     "size": {901: 32, 902: [24, 32, 32]}, "spacing": {901: [10, 10, 10], 902: [12, 10, 10]}},
        "pretraining": {"datasets": [900], "encoder": "tiny", "crop": 64, "batch_size": 2, "steps": 100,
                        "lr": 3e-4, "num_workers": 1,
                        # CPU-sized heads and crops; the paper values (65536-way heads, 8-10 local crops) are for GPUs
                        "options": {"dino": {"out_dim": 4096, "local_crops_number": 2},
                                    "ibot": {"out_dim": 4096, "patch_out_dim": 4096, "local_crops_number": 2},
                                    "smit": {"out_dim": 4096, "patch_out_dim": 4096, "view_size": 32},
                                    "cpc": {"prediction_steps": 1}}},
        "methods": chosen,
        "downstream": {"datasets": [901, 902], "shots": ["5", "all"], "folds": [0], "epochs": 20,
                       "iterations_per_epoch": 35, "val_iterations_per_epoch": 2, "mirroring": False,
                       "learning_rate": 1e-2, "cka_images": 16, "probe_stage": 1,
                       "only": [{"methods": tuned}, {"datasets": [902], "shots": [5], "methods": []}]},
    })
