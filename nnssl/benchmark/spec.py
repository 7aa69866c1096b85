"""The benchmark grid: which methods are pretrained on what, and fine-tuned on which tasks, shots and folds.

A spec is a JSON or YAML file (documented in documentation/benchmark.md):

    name: my_study
    device: cuda
    pretraining: {datasets: [900], encoder: base, crop: 96, batch_size: 2, steps: 20000, lr: 1.0e-4,
                  num_workers: 4, options: {smit: {mask_ratio: 0.7}}}
    methods: [scratch, smit, simmim, dino, ibot, simclr, mocov3, cpc, rotation, swinunetr]
    checkpoints: {swinunetr_public: /path/to/converted.pth}     # optional: reuse existing checkpoints
    downstream: {datasets: [901, 902], shots: [5, 10, all], folds: [0, 1, 2, 3, 4], epochs: 50}

``scratch`` is the from-scratch baseline (SwinScratchTrainer): it needs no pretraining.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnssl.nnunet.naming import EPOCHS, SCRATCH, SHOTS


class SpecError(ValueError):
    """An invalid benchmark spec; the message names the field and the fix."""


@dataclass
class PretrainingSpec:
    datasets: list[str]
    encoder: str = "base"
    crop: int | list[int] = 96
    batch_size: int = 2
    steps: int = 1000
    lr: float = 1e-4
    num_workers: int = 2
    seed: int = 0
    options: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class DownstreamSpec:
    datasets: list[str]
    shots: list[str] = field(default_factory=lambda: ["all"])
    folds: list[int] = field(default_factory=lambda: [0])
    epochs: int | None = None  # None: the trainers' default schedule
    # Demo/CI budget knobs, passed to the trainers as NNSSL_* environment variables (None: nnU-Net's defaults).
    iterations_per_epoch: int | None = None
    val_iterations_per_epoch: int | None = None
    mirroring: bool = True
    cka_images: int = 16


@dataclass
class BenchmarkSpec:
    name: str
    pretraining: PretrainingSpec
    downstream: DownstreamSpec
    methods: list[str] = field(default_factory=lambda: [SCRATCH])
    checkpoints: dict[str, str] = field(default_factory=dict)
    device: str = "cuda"
    phantoms: dict[str, Any] | None = None  # generate phantom datasets first (the demo)

    def validate(self) -> "BenchmarkSpec":
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
        if self.downstream.cka_images < 4:
            raise SpecError("downstream.cka_images must be >= 4 (the unbiased CKA needs 4 images per batch)")
        return self

    @property
    def pretrained_methods(self) -> list[str]:
        return [m for m in self.methods if m != SCRATCH]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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


def spec_from_dict(data: dict[str, Any]) -> BenchmarkSpec:
    data = dict(data)
    for key in ("name", "pretraining", "downstream"):
        if key not in data:
            raise SpecError(f"the spec needs a {key!r} entry (see documentation/benchmark.md)")
    data["pretraining"] = _build(PretrainingSpec, data["pretraining"], "pretraining")
    data["downstream"] = _build(DownstreamSpec, data["downstream"], "downstream")
    spec = _build(BenchmarkSpec, data, "spec")
    spec.pretraining.datasets = [str(d) for d in spec.pretraining.datasets]
    spec.downstream.datasets = [str(d) for d in spec.downstream.datasets]
    spec.downstream.shots = [str(s) for s in spec.downstream.shots]
    return spec.validate()


def load_spec(path: str | Path) -> BenchmarkSpec:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"spec {path} does not exist")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SpecError(f"{path} is not valid JSON ({e}); YAML specs need a .yaml or .yml suffix") from None
    return spec_from_dict(data)


def demo_spec(methods: list[str] | None = None) -> BenchmarkSpec:
    """The README demo: tiny encoder on CPU; scratch plus one method of each family; CT and MRI targets."""
    return spec_from_dict({
        "name": "demo",
        "device": "cpu",
        "phantoms": {"datasets": [900, 901, 902], "seed": 0},
        "pretraining": {"datasets": [900], "encoder": "tiny", "crop": 64, "batch_size": 2, "steps": 30,
                        "lr": 3e-4, "num_workers": 1,
                        # CPU-sized heads and crops; the paper values (65536-way heads, 8-10 local crops) are for GPUs
                        "options": {"dino": {"out_dim": 4096, "local_crops_number": 2},
                                    "ibot": {"out_dim": 4096, "patch_out_dim": 4096, "local_crops_number": 2},
                                    "smit": {"out_dim": 4096, "patch_out_dim": 4096}}},
        "methods": methods or [SCRATCH, "simmim", "dino", "simclr", "rotation"],
        "downstream": {"datasets": [901, 902], "shots": ["5", "all"], "folds": [0], "epochs": 2,
                       "iterations_per_epoch": 4, "val_iterations_per_epoch": 1, "mirroring": False,
                       "cka_images": 8},
    })
