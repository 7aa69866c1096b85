"""Discover and parse an nnU-Net results tree into tidy records.

Layout read (nnU-Net v2)::

    RESULTS/DatasetXXX_Name/<Trainer>__<Plans>__<configuration>/fold_<N|all>/
        validation/summary.json          per-case Dice ('metric_per_case'), 'mean', 'foreground_mean'
        checkpoint_final.pth             'logging' dict: per-epoch mean_fg_dice, ema_fg_dice, losses, timestamps
        (checkpoint_latest.pth)          used when the final checkpoint is missing (unfinished training)

Run naming: ``nnssl.nnunet.naming`` (trainer
``Swin(Scratch|SSL)Trainer[_<protocol>][_<k>shot][_draw<r>][_<E>epochs]``, plans ``nnUNetSwinPlans`` for scratch or
``nnUNetSwinPlans_<method>``; the CNN baselines' ``CNNTrainer[...]`` on nnU-Net's ``nnUNetPlans`` /
``nnUNetResEnc...Plans``, method ``nnunet`` / ``resenc_l``). Folders that do not match are not read; they are listed in
:attr:`ResultsTree.ignored` with the reason.
"""
from __future__ import annotations

import json
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from nnssl.analysis.dice_stats import label_keys, modality, structure_groups
from nnssl.nnunet.datasets import DATASET_RE
from nnssl.nnunet.naming import FULL, SCRATCH, RunName, encoder_tag, parse_run_name, protocol_label

FOLD_RE = re.compile(r"^fold_(\d+|all)$")
# top-level folders that live in a results folder but are not datasets (CKA, attention and probe results, reports)
_NON_DATASET_DIRS = {"cka", "attention", "probe", "report", "nnssl_report"}
_KNOWN_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".png", ".tif", ".tiff", ".bmp", ".npz", ".b2nd")


@dataclass(frozen=True, order=True)
class Regime:
    """A comparable experimental setting within one dataset: label regime, fine-tuning budget, configuration and
    adaptation protocol ("full", or a rung of the ladder: methods are compared within one protocol, so a frozen
    pretrained encoder meets a frozen random one)."""

    shots: str
    epochs: int | None
    configuration: str
    protocol: str = FULL

    @property
    def shots_sort(self) -> tuple[int, int]:
        """Sort key of the label regime: ``(0, 0)`` for all cases, then ``(1, k)`` for k-shot."""
        return (0, 0) if self.shots == "all" else (1, int(self.shots))

    def label(self) -> str:
        """Human-readable name, e.g. "5-shot, 100 epochs": shots, then the budget, a configuration other than
        3d_fullres and a protocol other than full fine-tuning where they are set."""
        s = "all cases" if self.shots == "all" else f"{self.shots}-shot"
        if self.epochs is not None:
            s += f", {self.epochs} epochs"
        if self.configuration != "3d_fullres":
            s += f", {self.configuration}"
        if self.protocol != FULL:
            s += f", {protocol_label(self.protocol)}"
        return s

    @property
    def full(self) -> "Regime":
        """The same shots, budget and configuration with the whole network fine-tuned (where CNN baselines are)."""
        return Regime(self.shots, self.epochs, self.configuration)


def regime_sort_key(r: Regime) -> tuple:
    """Table order of regimes: configuration, budget (full schedule first), shots (all cases first), full
    fine-tuning before the other protocols, then protocol name."""
    return (r.configuration, -1 if r.epochs is None else r.epochs, r.shots_sort, r.protocol != FULL, r.protocol)


@dataclass
class DatasetInfo:
    """Metadata of one target dataset from its dataset.json (labels, modality, structure groups)."""

    name: str
    dataset_json: dict[str, Any] | None
    source: Path | None
    key_to_name: dict[str, str] = field(default_factory=dict)
    modality: str = "unknown"
    groups: dict[str, list[str]] = field(default_factory=dict)
    groups_error: str = ""

    def label_name(self, key: str) -> str:
        """The dataset.json name of a summary.json label key (``"label <key>"`` when unknown)."""
        return self.key_to_name.get(key, f"label {key}")


@dataclass
class FoldResult:
    """One trained fold: per-case Dice from validation/summary.json and the training log from the checkpoint."""

    dataset: str
    run: RunName
    fold: str
    path: Path
    cases: list[str]
    dice: dict[str, np.ndarray]  # label key ("1", "(1, 2)") -> (n_cases,) Dice, NaN where undefined
    summary_mean: dict[str, float]  # nnU-Net's own per-label means
    summary_fg_mean: float  # nnU-Net's own 'foreground_mean' Dice
    logging: dict[str, list] | None = None
    logging_source: str | None = None
    notes: list[str] = field(default_factory=list)
    #: The encoder architecture of the run (``naming.encoder_tag`` of its plans' nnssl_encoder), None if unknown.
    encoder_tag: str | None = None

    @property
    def method(self) -> str:
        """The run's method, from its run name (``scratch`` without pretraining, ``nnunet`` etc. for CNN baselines)."""
        return self.run.method

    @property
    def regime(self) -> Regime:
        """The run's :class:`Regime` (shots, epochs, configuration, protocol from its run name)."""
        return Regime(self.run.shots, self.run.epochs, self.run.configuration, self.run.protocol)

    def fg_case_dice(self) -> np.ndarray:
        """Per-case foreground Dice = NaN-aware mean over the foreground labels of each case, (n_cases,)."""
        if not self.dice:
            return np.full(len(self.cases), np.nan)
        stack = np.vstack([self.dice[k] for k in sorted(self.dice)])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(stack, axis=0)


@dataclass
class ResultsTree:
    """Everything :func:`load_results` read from a results folder: the parsed folds, each dataset's
    :class:`DatasetInfo` and the folders that were not read, with the reason."""

    root: Path
    folds: list[FoldResult]
    datasets: dict[str, DatasetInfo]
    ignored: list[tuple[str, str]]  # (path relative to root, reason)

    def dataset_names(self) -> list[str]:
        """Sorted names of the datasets that have at least one parsed fold."""
        return sorted({f.dataset for f in self.folds})

    def regimes(self, dataset: str) -> list[Regime]:
        """The regimes with folds in ``dataset``, in :func:`regime_sort_key` order."""
        return sorted({f.regime for f in self.folds if f.dataset == dataset}, key=regime_sort_key)

    def methods(self, dataset: str | None = None, regime: Regime | None = None) -> list[str]:
        """Methods with folds in ``dataset`` / ``regime`` (None = any), scratch first, then alphabetical."""
        ms = {
            f.method
            for f in self.folds
            if (dataset is None or f.dataset == dataset) and (regime is None or f.regime == regime)
        }
        # scratch first, then alphabetical: stable table order
        return sorted(ms, key=lambda m: (m != SCRATCH, m))

    def encoder_tag(self, dataset: str, regime: Regime, method: str) -> str | None:
        """The encoder architecture of a method's runs in one regime (None when their plans do not say)."""
        tags = {f.encoder_tag for f in self.select(dataset, regime, method)} - {None}
        return tags.pop() if len(tags) == 1 else None

    def select(self, dataset: str, regime: Regime, method: str) -> list[FoldResult]:
        """The folds of one method in one dataset and regime, sorted by fold name."""
        return sorted(
            (f for f in self.folds if f.dataset == dataset and f.regime == regime and f.method == method),
            key=lambda f: f.fold,
        )


# ----------------------------------------------------------------------------------------------------------------------
# reading single files
# ----------------------------------------------------------------------------------------------------------------------
def case_id(reference_file: str, file_ending: str | None = None) -> str:
    """Case identifier from nnU-Net's 'reference_file' path: the basename without the file ending."""
    base = os.path.basename(str(reference_file).replace("\\", "/"))
    endings = ((file_ending,) if file_ending else ()) + _KNOWN_ENDINGS
    for e in endings:
        if e and base.endswith(e):
            return base[: -len(e)]
    return base


def read_summary(path: Path, file_ending: str | None = None) -> tuple[list[str], dict[str, np.ndarray], dict[str, float], float]:
    """Parse nnU-Net's validation/summary.json -> (case ids, label key -> per-case Dice, per-label means, fg mean)."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); re-run nnU-Net's validation (nnUNetv2_train ... --val)") from e
    if "metric_per_case" not in doc:
        raise ValueError(f"{path} has no 'metric_per_case'; is it an nnU-Net v2 summary.json?")
    cases: list[str] = []
    per_case: list[dict[str, Any]] = []
    for i, entry in enumerate(doc["metric_per_case"]):
        ref = entry.get("reference_file") or entry.get("prediction_file") or f"case_{i:04d}"
        cases.append(case_id(ref, file_ending))
        per_case.append(entry.get("metrics", {}))
    if len(set(cases)) != len(cases):
        raise ValueError(f"{path}: duplicate case ids in metric_per_case")
    keys = sorted({k for m in per_case for k in m})
    dice = {
        k: np.array([_as_float(m.get(k, {}).get("Dice")) for m in per_case], dtype=np.float64) for k in keys
    }
    means = {str(k): _as_float(v.get("Dice")) for k, v in doc.get("mean", {}).items() if isinstance(v, dict)}
    fg = _as_float(doc.get("foreground_mean", {}).get("Dice")) if isinstance(doc.get("foreground_mean"), dict) else math.nan
    return cases, dice, means, fg


def _as_float(v: Any) -> float:
    if v is None:
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def read_training_log(fold_dir: Path) -> tuple[dict[str, list] | None, str | None, list[str]]:
    """The nnU-Net 'logging' dict from checkpoint_final.pth (else checkpoint_latest.pth).

    Returns (logging or None, file name used or None, notes).
    """
    notes: list[str] = []
    for name in ("checkpoint_final.pth", "checkpoint_latest.pth"):
        p = fold_dir / name
        if not p.is_file():
            continue
        import torch  # lazy: reading summaries must not need torch

        try:
            ckpt = torch.load(p, map_location="cpu", weights_only=False)
        except Exception as e:  # a truncated file from a killed job: say so, try the next one
            notes.append(f"could not read {name}: {type(e).__name__}: {e}")
            continue
        log = ckpt.get("logging") if isinstance(ckpt, dict) else None
        if not isinstance(log, dict):
            notes.append(f"{name} holds no 'logging' dict")
            continue
        if name != "checkpoint_final.pth":
            notes.append("training log from checkpoint_latest.pth (checkpoint_final.pth missing: unfinished run?)")
        return {k: list(v) for k, v in log.items() if isinstance(v, (list, tuple))}, name, notes
    notes.append("no checkpoint with a training log (checkpoint_final.pth / checkpoint_latest.pth)")
    return None, None, notes


def run_encoder_tag(model_dir: Path, configuration: str) -> str | None:
    """``naming.encoder_tag`` of the encoder in the plans nnU-Net copied into a model folder (None if absent)."""
    plans = Path(model_dir) / "plans.json"
    if not plans.is_file():
        return None
    try:
        encoder = json.loads(plans.read_text())["configurations"][configuration]["nnssl_encoder"]
        return encoder_tag(encoder)
    except (json.JSONDecodeError, KeyError, TypeError):
        return None


def find_dataset_json(dataset: str, model_dirs: Iterable[Path], raw: Path | None, preprocessed: Path | None) -> Path | None:
    """dataset.json for ``dataset``: $nnUNet_raw first (the editable source), then $nnUNet_preprocessed, then the copy
    nnU-Net keeps in each model folder of the results tree."""
    candidates = []
    if raw is not None:
        candidates.append(Path(raw) / dataset / "dataset.json")
    if preprocessed is not None:
        candidates.append(Path(preprocessed) / dataset / "dataset.json")
    candidates += [Path(d) / "dataset.json" for d in model_dirs]
    for c in candidates:
        if c.is_file():
            return c
    return None


def load_dataset_info(
    dataset: str, json_path: Path | None, groups_override: dict[str, list[str]] | None = None
) -> DatasetInfo:
    """Build the :class:`DatasetInfo` of ``dataset`` from ``json_path`` (None = not found): label names,
    modality and structure groups (``groups_override`` replaces dataset.json's). Label or group problems are kept
    in ``groups_error`` instead of raised."""
    if json_path is None:
        return DatasetInfo(dataset, None, None, groups_error="no dataset.json found")
    doc = json.loads(Path(json_path).read_text(encoding="utf-8"))
    info = DatasetInfo(dataset, doc, Path(json_path))
    try:
        info.key_to_name = label_keys(doc)
    except ValueError as e:
        info.groups_error = str(e)
        return info
    info.modality = modality(doc)
    try:
        info.groups = structure_groups(doc, groups_override)
    except ValueError as e:
        info.groups_error = f"{dataset}: {e}"
    return info


# ----------------------------------------------------------------------------------------------------------------------
# walking the tree
# ----------------------------------------------------------------------------------------------------------------------
def _is_run(name: str) -> bool:
    try:
        parse_run_name(name)
        return True
    except ValueError:
        return False


def _dataset_dirs(root: Path, ignored: list[tuple[str, str]], skip: set[Path]) -> list[Path]:
    if DATASET_RE.match(root.name):
        return [root]  # RESULTS is itself one dataset folder
    out = []
    for p in sorted(root.iterdir()):
        if not p.is_dir() or p.resolve() in skip or p.name.startswith("."):
            continue
        if DATASET_RE.match(p.name):
            out.append(p)
        elif p.name not in _NON_DATASET_DIRS:
            ignored.append((p.name, "not a Dataset<XXX>_<Name> folder"))
    return out


def load_results(
    root: str | os.PathLike,
    raw: str | os.PathLike | None = None,
    preprocessed: str | os.PathLike | None = None,
    groups_override: dict[str, dict[str, list[str]]] | None = None,
    read_logs: bool = True,
    skip: Iterable[str | os.PathLike] = (),
    progress: bool = False,
) -> ResultsTree:
    """Walk an nnU-Net results folder (or one Dataset folder) and parse every finished fold.

    raw / preprocessed: folders to look up dataset.json in (default: $nnUNet_raw / $nnUNet_preprocessed).
    groups_override: dataset name (or its 3-digit id) -> {group: [label names]}, replaces dataset.json's
    ``nnssl_structure_groups``. read_logs: also read the training logs from the checkpoints (needs torch).
    skip: folders to leave out of the walk (e.g. the report's own output folder).
    progress: show a tqdm bar over the folds (reading big checkpoints takes a while).
    A fold without validation/summary.json is listed in ``ignored`` as unfinished.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"results folder {root} does not exist; pass the nnUNet_results folder (or set $nnUNet_results)")
    raw = Path(raw) if raw is not None else (Path(os.environ["nnUNet_raw"]) if os.environ.get("nnUNet_raw") else None)
    preprocessed = (
        Path(preprocessed)
        if preprocessed is not None
        else (Path(os.environ["nnUNet_preprocessed"]) if os.environ.get("nnUNet_preprocessed") else None)
    )
    ignored: list[tuple[str, str]] = []
    folds: list[FoldResult] = []
    datasets: dict[str, DatasetInfo] = {}
    skip_set = {Path(s).resolve() for s in skip}
    ds_dirs = _dataset_dirs(root, ignored, skip_set)
    bar = None
    if progress:
        from tqdm import tqdm

        n_folds = sum(1 for d in ds_dirs for m in d.iterdir() if m.is_dir() and _is_run(m.name)
                      for f in m.iterdir() if f.is_dir() and FOLD_RE.match(f.name))
        bar = tqdm(total=n_folds, desc="reading results", unit="fold")
    for ds_dir in ds_dirs:
        dataset = ds_dir.name
        rel_base = ds_dir.relative_to(root) if ds_dir != root else Path(".")
        model_dirs: list[tuple[Path, RunName]] = []
        for md in sorted(p for p in ds_dir.iterdir() if p.is_dir()):
            if md.resolve() in skip_set or md.name in _NON_DATASET_DIRS:
                continue
            try:
                model_dirs.append((md, parse_run_name(md.name)))
            except ValueError as e:
                ignored.append((str(rel_base / md.name), str(e)))
        json_path = find_dataset_json(dataset, [m for m, _ in model_dirs], raw, preprocessed)
        override = None
        if groups_override:
            m = DATASET_RE.match(dataset)
            override = groups_override.get(dataset) or (groups_override.get(m.group(1)) if m else None)
        info = load_dataset_info(dataset, json_path, override)
        file_ending = info.dataset_json.get("file_ending") if info.dataset_json else None
        for md, run in model_dirs:
            tag = run_encoder_tag(md, run.configuration)
            for fd in sorted(p for p in md.iterdir() if p.is_dir()):
                rel = str(rel_base / md.name / fd.name)
                fm = FOLD_RE.match(fd.name)
                if fm is None:
                    ignored.append((rel, "not a fold_<N> folder"))
                    continue
                if bar is not None:
                    bar.update(1)
                summary = fd / "validation" / "summary.json"
                if not summary.is_file():
                    ignored.append((rel, "no validation/summary.json (training or validation not finished)"))
                    continue
                try:
                    cases, dice, means, fg = read_summary(summary, file_ending)
                except ValueError as e:
                    ignored.append((rel, str(e)))
                    continue
                fr = FoldResult(dataset, run, fm.group(1), fd, cases, dice, means, fg, encoder_tag=tag)
                if read_logs:
                    fr.logging, fr.logging_source, notes = read_training_log(fd)
                    fr.notes += notes
                folds.append(fr)
        if any(f.dataset == dataset for f in folds):
            datasets[dataset] = info
    if bar is not None:
        bar.close()
    return ResultsTree(root, folds, datasets, ignored)


# ----------------------------------------------------------------------------------------------------------------------
# tidy views
# ----------------------------------------------------------------------------------------------------------------------
def tidy_records(tree: ResultsTree) -> list[dict[str, Any]]:
    """One row per (dataset, method, regime, fold, case, label) with its Dice: easy to load into any table tool.

    Keys: dataset, modality, method, shots, epochs, configuration, trainer, plans, fold, case, label (key),
    label_name, dice. The per-case foreground mean appears as label ``"foreground"``.
    """
    rows: list[dict[str, Any]] = []
    for f in tree.folds:
        info = tree.datasets.get(f.dataset)
        base = {
            "dataset": f.dataset,
            "modality": info.modality if info else "unknown",
            "method": f.method,
            "shots": f.run.shots,
            "epochs": f.run.epochs,
            "protocol": f.run.protocol,
            "configuration": f.run.configuration,
            "trainer": f.run.trainer,
            "plans": f.run.plans,
            "fold": f.fold,
        }
        fg = f.fg_case_dice()
        for i, c in enumerate(f.cases):
            for k in sorted(f.dice):
                rows.append({**base, "case": c, "label": k,
                             "label_name": info.label_name(k) if info else k, "dice": float(f.dice[k][i])})
            rows.append({**base, "case": c, "label": "foreground", "label_name": "foreground", "dice": float(fg[i])})
    return rows


#: A per-case value's key: (draw, fold, case). Draw 0 is the only one of regimes without repeated k-shot draws.
CaseKey = tuple[int, str, str]


def pooled_cases(folds: list[FoldResult], label: str | None = None) -> dict[CaseKey, float]:
    """(draw, fold, case) -> Dice of ``label`` (None = per-case foreground mean), pooled over the given folds.

    Validation cases of different folds are disjoint in nnU-Net's cross-validation, so pooling folds gives one value
    per case and draw; repeated k-shot draws of one fold validate on the same cases, so their values are kept apart
    by the draw (they are not new cases). The key pairs the same case of the same draw across methods.
    """
    out: dict[CaseKey, float] = {}
    for f in folds:
        vals = f.fg_case_dice() if label is None else f.dice.get(label, np.full(len(f.cases), np.nan))
        for c, v in zip(f.cases, vals):
            out[(f.run.draw, f.fold, c)] = float(v)
    return out


def case_means(values: dict[CaseKey, float]) -> dict[tuple[str, str], float]:
    """(fold, case) -> mean over the case's draws (NaN draws ignored): one value per validation case."""
    groups: dict[tuple[str, str], list[float]] = {}
    for (_draw, fold, case), v in values.items():
        groups.setdefault((fold, case), []).append(v)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return {k: float(np.nanmean(v)) for k, v in groups.items()}


def draw_matrix(values: dict[CaseKey, float]) -> np.ndarray:
    """(n_draws, n_cases) values, draws and cases in sorted order, NaN where a draw lacks a case."""
    draws = sorted({k[0] for k in values})
    cases = sorted({k[1:] for k in values})
    m = np.full((len(draws), len(cases)), np.nan)
    di, ci = {d: i for i, d in enumerate(draws)}, {c: i for i, c in enumerate(cases)}
    for (d, fold, case), v in values.items():
        m[di[d], ci[(fold, case)]] = v
    return m


def paired_arrays(a: dict, b: dict) -> tuple[np.ndarray, np.ndarray, int]:
    """Values of the keys present in both dicts, in a common order, and the number of common keys."""
    keys = sorted(set(a) & set(b))
    return np.array([a[k] for k in keys]), np.array([b[k] for k in keys]), len(keys)


def paired_case_means(a: dict[CaseKey, float], b: dict[CaseKey, float]) -> tuple[np.ndarray, np.ndarray, int]:
    """Per validation case, the mean over the draws both sides share: (a's means, b's means, cases). The unit of a
    paired test is the case, never a (draw, case) pair, since draws repeat the same validation cases."""
    common = set(a) & set(b)
    return paired_arrays(case_means({k: a[k] for k in common}), case_means({k: b[k] for k in common}))


def paired_draw_matrices(a: dict[CaseKey, float], b: dict[CaseKey, float]) -> tuple[np.ndarray, np.ndarray]:
    """The (draws, cases) matrices of the keys both sides share, aligned (for a hierarchical bootstrap)."""
    common = set(a) & set(b)
    return draw_matrix({k: a[k] for k in common}), draw_matrix({k: b[k] for k in common})
