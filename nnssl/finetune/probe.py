"""Frozen-feature probe of a pretraining checkpoint on a labelled target dataset (``nnssl_probe``).

The encoder as pretraining left it and a randomly initialised encoder of the same architecture (built exactly as
pretraining builds its encoder: ``torch.manual_seed(seed)`` then ``SwinEncoder(cfg)``, so with the run's own seed it
is the very initialisation pretraining started from) see the same crops of the dataset's preprocessed cases. Every
token of one stage gets the majority label of its voxels; a k-NN and a linear probe are fitted on tokens of the train
cases and scored on tokens of the test cases (``nnssl.analysis.probe``). The encoders only run forward.

Sampling is a pure function of the seed: the cases (``--cases``), the crops of each case (even crops anywhere, odd
crops centred on a voxel of a foreground class present in the case, so that small structures have tokens; positions
repeated within a case are dropped, e.g. when the crop covers the whole image), and the class-balanced subsample of
at most ``max_tokens`` tokens per split.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from nnssl.analysis import probe as probe_lib
from nnssl.checkpoint import encoder_config_of, load_checkpoint, load_encoder_into
from nnssl.data.preprocessed import DataError, PreprocessedSource, find_source
from nnssl.encoders.swin import EncoderConfig, SwinEncoder, check_swin_input_size
from nnssl.nnunet.datasets import DATASET_RE, env_root
from nnssl.nnunet.naming import CONFIGURATION, SWIN_PLANS

DEFAULT_STAGE = 2  # stride 8: fine enough for organs, coarse enough to be cheap
DEFAULT_CROP = (96, 96, 96)  # when the checkpoint does not record its pretraining crop (imported encoders)
TRAIN_FRACTION = 0.8


def stage_stride(stage: int, patch_size: int = 2) -> int:
    """Voxels per token edge of SwinEncoder output ``stage`` (0: patch embedding, stride 2; each stage doubles)."""
    return patch_size * 2 ** stage


# ----------------------------------------------------------------------------------------------------------------------
# labels and cases
# ----------------------------------------------------------------------------------------------------------------------
def _label_values(value: Any) -> list[int]:
    """dataset.json label value(s): an int, or a region's list of ints."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def labelled_datasets(plans: str = SWIN_PLANS) -> list[str]:
    """Names of the preprocessed datasets (with ``plans``) whose dataset.json has a foreground label."""
    try:
        root = env_root("nnUNet_preprocessed")
    except ValueError:
        return []
    out = []
    for folder in sorted(root.glob("Dataset*")):
        if not DATASET_RE.match(folder.name) or not (folder / f"{plans}.json").is_file():
            continue
        try:
            dj = json.loads((folder / "dataset.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not dj.get("images_only") and any(v > 0 for k, val in dj.get("labels", {}).items() if k != "ignore"
                                             for v in _label_values(val)):
            out.append(folder.name)
    return out


@dataclass
class LabelSet:
    """The classes a token can take: 0..num_classes-1 (0 = background), their names, and nnU-Net's ignore label."""

    num_classes: int
    names: dict[int, str]
    ignore: int | None


def dataset_labels(source: PreprocessedSource) -> LabelSet:
    """The label set of a preprocessed dataset from its dataset.json; DataError (naming labelled datasets) when the
    dataset is images-only or has no foreground label."""
    dj_file = source.folder.parent / "dataset.json"
    dj = json.loads(dj_file.read_text()) if dj_file.is_file() else {}
    labels = {k: _label_values(v) for k, v in dj.get("labels", {}).items()}
    ignore = labels.pop("ignore", [None])[0] if "ignore" in labels else None
    foreground = sorted({v for vals in labels.values() for v in vals if v > 0})
    if dj.get("images_only") or not foreground:
        others = [d for d in labelled_datasets(source.plans_identifier) if d != source.dataset_name]
        why = "is images-only" if dj.get("images_only") else (
            f"has no foreground label in {dj_file}" if dj_file.is_file() else f"has no dataset.json ({dj_file})")
        hint = (f"pass a labelled one, e.g. -d {others[0]}" if others else
                "pass a labelled dataset (with labelsTr), preprocessed with nnssl_plan_and_preprocess")
        raise DataError(f"{source.dataset_name} {why}: the probe needs segmentations to label its tokens; {hint}")
    names = {v: k for k, vals in labels.items() for v in vals if len(vals) == 1}
    names.setdefault(0, "background")
    return LabelSet(num_classes=max(foreground) + 1, names=names, ignore=ignore)


@dataclass
class ProbeSplit:
    """The probe's train and test case identifiers (:func:`probe_split`) and the rule that chose them."""

    train: list[str]
    test: list[str]
    rule: str


def probe_split(source: PreprocessedSource, fold: int | str = 0, max_cases: int | None = None,
                seed: int = 0) -> ProbeSplit:
    """Train cases = the fold's training cases of nnU-Net's splits_final.json if present, else the first 80% of the
    (sorted) cases; test cases = the rest (the fold's validation cases). ``max_cases`` keeps a seeded subset of that
    many cases with the same train/test proportions (at least one of each)."""
    ids = list(source.identifiers)
    if len(ids) < 2:
        raise DataError(f"{source.dataset_name} has {len(ids)} preprocessed case(s); the probe needs at least 2 "
                        "(train and test cases)")
    splits = source.folder.parent / "splits_final.json"
    train: list[str] = []
    test: list[str] = []
    rule = ""
    if splits.is_file() and str(fold).isdigit():
        folds = json.loads(splits.read_text())
        if int(fold) < len(folds):
            known = set(ids)
            train = [c for c in folds[int(fold)]["train"] if c in known]
            test = [c for c in folds[int(fold)]["val"] if c in known]
            rule = f"splits_final.json fold {fold}"
    if not train or not test:
        n_train = min(len(ids) - 1, max(1, round(TRAIN_FRACTION * len(ids))))
        train, test = ids[:n_train], ids[n_train:]
        rule = "first 80% of the cases" + (" (splits_final.json has no such fold)" if rule or splits.is_file()
                                           else " (no splits_final.json)")
    if max_cases is not None and max_cases < len(train) + len(test):
        if max_cases < 2:
            raise DataError(f"--cases {max_cases}: the probe needs at least 2 cases (one to train, one to test)")
        n_test = min(len(test), max(1, round(max_cases * len(test) / (len(train) + len(test)))))
        n_train = min(len(train), max(1, max_cases - n_test))
        rng = np.random.default_rng([seed, 1])
        train = sorted(rng.choice(sorted(train), size=n_train, replace=False).tolist())
        test = sorted(rng.choice(sorted(test), size=n_test, replace=False).tolist())
        rule += f", seeded subset of {n_train} + {n_test} cases"
    return ProbeSplit(sorted(train), sorted(test), rule)


# ----------------------------------------------------------------------------------------------------------------------
# crops
# ----------------------------------------------------------------------------------------------------------------------
def load_labelled_case(folder: Path, identifier: str) -> tuple[Any, Any, dict[str, Any]]:
    """(image (C, D, H, W), segmentation (1, D, H, W), properties) of a preprocessed case, with nnU-Net's readers
    (blosc2 arrays are memory-mapped: slicing reads only the crop)."""
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2, nnUNetDatasetNumpy

    if (folder / f"{identifier}.b2nd").is_file():
        if not (folder / f"{identifier}_seg.b2nd").is_file():
            raise DataError(f"{folder / identifier}_seg.b2nd is missing: the case has no segmentation; "
                            "re-run nnssl_plan_and_preprocess on the labelled raw dataset")
        data, seg, _prev, props = nnUNetDatasetBlosc2(str(folder), [identifier]).load_case(identifier)
    else:
        data, seg, _prev, props = nnUNetDatasetNumpy(str(folder), [identifier]).load_case(identifier)
    return data, seg, props


def _foreground_voxels(seg: Any, props: dict[str, Any], labels: LabelSet) -> dict[int, np.ndarray]:
    """Foreground class -> (n, 3) voxel coordinates: nnU-Net's sampled ``class_locations`` when the case has them,
    else read from the segmentation."""
    out: dict[int, np.ndarray] = {}
    locations = props.get("class_locations") or {}
    for c, locs in locations.items():
        locs = np.asarray(locs)
        if isinstance(c, (int, np.integer)) and 0 < int(c) < labels.num_classes and locs.size:
            out[int(c)] = locs[:, -3:]  # nnU-Net stores (channel, z, y, x)
    if out:
        return out
    s = np.asarray(seg[0])
    for c in range(1, labels.num_classes):
        idx = np.argwhere(s == c)
        if idx.size:
            out[c] = idx
    return out


def crop_starts(shape: Sequence[int], crop: Sequence[int], n_crops: int, foreground: dict[int, np.ndarray],
                rng: np.random.Generator) -> list[tuple[int, int, int]]:
    """Start corners of ``n_crops`` crops of an image ``shape`` (D, H, W): even crops uniform, odd crops centred on a
    random voxel of a random foreground class present (uniform otherwise), clipped to the image; duplicates
    dropped (an image no larger than the crop has one position)."""
    starts: list[tuple[int, int, int]] = []
    classes = sorted(foreground)
    for k in range(n_crops):
        if k % 2 == 1 and classes:
            locs = foreground[classes[int(rng.integers(len(classes)))]]
            centre = locs[int(rng.integers(len(locs)))]
            start = tuple(int(min(max(int(c) - cs // 2, 0), max(s - cs, 0))) for c, s, cs in zip(centre, shape, crop))
        else:
            start = tuple(int(rng.integers(0, max(s - cs, 0) + 1)) for s, cs in zip(shape, crop))
        if start not in starts:
            starts.append(start)
    return starts


def cut(array: Any, start: Sequence[int], crop: Sequence[int], fill: float | None) -> np.ndarray:
    """array[:, start:start+crop] as numpy (C, *crop), padded at the far end with ``fill`` (None: the crop's minimum)
    where the image is smaller than the crop."""
    window = (slice(None),) + tuple(slice(st, st + c) for st, c in zip(start, crop))
    patch = np.asarray(array[window])
    if patch.shape[1:] != tuple(crop):
        value = float(patch.min()) if fill is None else fill
        pad = [(0, 0)] + [(0, c - s) for s, c in zip(patch.shape[1:], crop)]
        patch = np.pad(patch, pad, mode="constant", constant_values=value)
    return patch


def clean_labels(seg: np.ndarray, labels: LabelSet) -> np.ndarray:
    """Segmentation with everything that is not a class (nnU-Net's -1, padding, the ignore label) set to -1."""
    seg = seg.astype(np.int16)
    invalid = (seg < 0) | (seg >= labels.num_classes)
    if labels.ignore is not None:
        invalid |= seg == labels.ignore
    seg[invalid] = -1
    return seg


@dataclass
class CropPlan:
    """One crop: which case (index into ``cases``), its split, start corner, token labels (n_tokens,) and the indices
    of the tokens chosen for the probe."""

    case: int
    split: str
    start: tuple[int, int, int]
    labels: np.ndarray
    chosen: np.ndarray | None = None


def plan_crops(source: PreprocessedSource, split: ProbeSplit, labels: LabelSet, crop: Sequence[int],
               crops_per_case: int, stride: int, max_tokens: int, seed: int) -> tuple[list[str], list[CropPlan]]:
    """Crop positions and token labels of every case (no encoder runs yet), then the class-balanced choice of at most
    ``max_tokens`` labelled tokens per split. Returns (cases, crops); cases = train cases then test cases."""
    cases = split.train + split.test
    index_of = {c: i for i, c in enumerate(source.identifiers)}  # stable case seeds, whatever --cases kept
    plans: list[CropPlan] = []
    for ci, case in enumerate(cases):
        _data, seg, props = load_labelled_case(source.folder, case)
        rng = np.random.default_rng([seed, index_of[case]])
        for start in crop_starts(seg.shape[1:], crop, crops_per_case, _foreground_voxels(seg, props, labels), rng):
            s = clean_labels(cut(seg, start, crop, fill=-1)[0], labels)
            tok = probe_lib.token_labels(s, stride, labels.num_classes).ravel()
            plans.append(CropPlan(ci, "train" if ci < len(split.train) else "test", start, tok))
    rng = np.random.default_rng([seed, 2])
    for part in ("train", "test"):
        members = [p for p in plans if p.split == part]
        if not members:
            continue
        all_labels = np.concatenate([p.labels for p in members])
        offsets = np.cumsum([0] + [p.labels.size for p in members])
        chosen = probe_lib.balanced_subsample(all_labels, max_tokens, rng)
        for p, lo, hi in zip(members, offsets[:-1], offsets[1:]):
            p.chosen = chosen[(chosen >= lo) & (chosen < hi)] - lo
    return cases, plans


# ----------------------------------------------------------------------------------------------------------------------
# encoders and features
# ----------------------------------------------------------------------------------------------------------------------
def pretraining_seed(ckpt: dict[str, Any]) -> int:
    """The seed the run was pretrained with (its config), 0 when the checkpoint does not record one."""
    seed = (ckpt.get("config") or {}).get("seed", 0)
    return int(seed) if isinstance(seed, int) else 0


def pretraining_crop(ckpt: dict[str, Any]) -> tuple[int, int, int]:
    """The crop the encoder was pretrained on (its config), else DEFAULT_CROP."""
    crop = (ckpt.get("config") or {}).get("crop")
    if isinstance(crop, (list, tuple)) and len(crop) == 3:
        return tuple(int(c) for c in crop)  # type: ignore[return-value]
    return DEFAULT_CROP


def pretrained_encoder(ckpt: dict[str, Any], in_channels: int) -> SwinEncoder:
    """The checkpoint's encoder with ``in_channels`` inputs (the patch embedding adapted as fine-tuning does)."""
    encoder = SwinEncoder(encoder_config_of(ckpt).replace(in_channels=in_channels, use_checkpoint=False))
    load_encoder_into(encoder, ckpt)
    return encoder.eval()


def random_encoder(ckpt: dict[str, Any], in_channels: int, seed: int) -> SwinEncoder:
    """A randomly initialised encoder of the checkpoint's architecture, seeded as pretraining seeds its encoder
    (``torch.manual_seed(seed)`` then ``SwinEncoder(cfg)`` with the checkpoint's own input channels), then adapted
    to ``in_channels`` exactly like the pretrained one, so that the two differ only in what pretraining learnt."""
    cfg: EncoderConfig = encoder_config_of(ckpt).replace(use_checkpoint=False)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        init = SwinEncoder(cfg)
    finally:
        torch.random.set_rng_state(state)  # the caller's random stream stays as it was
    if cfg.in_channels == in_channels:
        return init.eval()
    return pretrained_encoder({"encoder_config": cfg.to_dict(), "encoder": init.swin_state_dict()}, in_channels)


@torch.no_grad()
def token_features(encoders: dict[str, SwinEncoder], source: PreprocessedSource, cases: list[str],
                   plans: list[CropPlan], crop: Sequence[int], stage: int, batch_size: int = 4,
                   device: str = "cpu") -> dict[str, dict[str, np.ndarray]]:
    """Features of the chosen tokens: encoder -> split -> (n_tokens, C) float32, in crop order (as the labels)."""
    out: dict[str, dict[str, list[np.ndarray]]] = {n: {"train": [], "test": []} for n in encoders}
    todo = [p for p in plans if p.chosen is not None and p.chosen.size]
    for e in encoders.values():
        e.to(device).eval()
    loaded: tuple[int, Any] | None = None
    for b in range(0, len(todo), batch_size):
        batch = todo[b:b + batch_size]
        images = []
        for p in batch:
            if loaded is None or loaded[0] != p.case:  # crops of a case are consecutive: read each case once
                loaded = (p.case, load_labelled_case(source.folder, cases[p.case])[0])
            images.append(cut(loaded[1], p.start, crop, fill=None).astype(np.float32))
        x = torch.from_numpy(np.stack(images)).to(device)
        for name, encoder in encoders.items():
            f = encoder(x)[stage].float()  # (B, C, d, h, w)
            tokens = f.permute(0, 2, 3, 4, 1).reshape(f.shape[0], -1, f.shape[1]).cpu().numpy()
            for i, p in enumerate(batch):
                out[name][p.split].append(tokens[i, p.chosen])
    channels = {n: e.out_channels[stage] for n, e in encoders.items()}
    return {n: {s: (np.concatenate(v) if v else np.zeros((0, channels[n]), np.float32)) for s, v in d.items()}
            for n, d in out.items()}


def _split_labels(plans: list[CropPlan], part: str) -> tuple[np.ndarray, np.ndarray]:
    """(labels, case index) of the chosen tokens of one split, in crop order."""
    members = [p for p in plans if p.split == part and p.chosen is not None and p.chosen.size]
    if not members:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return (np.concatenate([p.labels[p.chosen] for p in members]),
            np.concatenate([np.full(p.chosen.size, p.case, np.int64) for p in members]))


def _counts(y: np.ndarray, labels: LabelSet) -> dict[str, int]:
    return {str(c): int((y == c).sum()) for c in range(labels.num_classes) if (y == c).any()}


def run_probe(checkpoint: str | os.PathLike, dataset: int | str, plans: str = SWIN_PLANS,
              configuration: str = CONFIGURATION, fold: int | str = 0, stage: int = DEFAULT_STAGE,
              max_cases: int | None = 40, crops_per_case: int = 4, crop: Sequence[int] | None = None,
              max_tokens: int = 20000, k: int = 10, alpha: float = 1e-2, n_boot: int = 2000, level: float = 0.95,
              seed: int = 0, random_seed: int | None = None, batch_size: int = 4, device: str = "cpu",
              method: str | None = None) -> dict[str, Any]:
    """Probe a checkpoint's encoder and a random one on a labelled dataset. Returns the keyword arguments of
    ``nnssl.analysis.probe.write_probe_json`` (dataset, method, stage, stride, probes, classes, tokens, extra)."""
    t0 = time.perf_counter()
    if not 0 <= stage <= 4:
        raise ValueError(f"--stage {stage}: the Swin encoder has stages 0 (patch embedding, stride 2) to 4 "
                         "(stride 32)")
    for name, value, low in (("--crops-per-case", crops_per_case, 1), ("--max-tokens", max_tokens, 10),
                             ("--k", k, 1), ("--bootstrap", n_boot, 1)):
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    if not 0 < level < 1 or alpha <= 0:
        raise ValueError("--level must lie in (0, 1) and --ridge be > 0")
    ckpt = load_checkpoint(checkpoint)
    source = find_source(dataset, plans, configuration)
    labels = dataset_labels(source)
    crop = tuple(int(c) for c in (crop or pretraining_crop(ckpt)))
    if len(crop) == 1:
        crop = crop * 3
    check_swin_input_size(crop)
    stride = stage_stride(stage, encoder_config_of(ckpt).patch_size)  # <= 32, so it divides every Swin crop
    split = probe_split(source, fold, max_cases, seed)
    cases, crops = plan_crops(source, split, labels, crop, crops_per_case, stride, max_tokens, seed)
    train_y, _ = _split_labels(crops, "train")
    test_y, test_case = _split_labels(crops, "test")
    if train_y.size == 0 or test_y.size == 0:
        raise DataError(f"no labelled tokens in the {'train' if train_y.size == 0 else 'test'} cases of "
                        f"{source.dataset_name} (every token lies on the padding or ignore region): use a lower "
                        "--stage or more --cases")
    if not (test_y > 0).any():
        raise DataError(f"the test cases of {source.dataset_name} have no foreground token at stage {stage} "
                        f"(stride {stride}): use a lower --stage, more --crops-per-case or more --cases")
    random_seed = pretraining_seed(ckpt) if random_seed is None else int(random_seed)
    encoders = {"pretrained": pretrained_encoder(ckpt, source.num_channels),
                "random": random_encoder(ckpt, source.num_channels, random_seed)}
    feats = token_features(encoders, source, cases, crops, crop, stage, batch_size, device)
    n_train_cases = len(split.train)
    tokens = {n: probe_lib.ProbeTokens(f["train"], train_y, f["test"], test_y, test_case - n_train_cases)
              for n, f in feats.items()}
    probes = probe_lib.evaluate(tokens, labels.num_classes, len(split.test), k=k, alpha=alpha, n_boot=n_boot,
                                seed=seed, level=level)
    cfg = encoder_config_of(ckpt)
    return {
        "dataset": source.dataset_name,
        "method": method or str(ckpt.get("method", "unknown")),
        "stage": stage,
        "stride": stride,
        "probes": probes,
        "classes": {str(c): labels.names.get(c, f"label {c}") for c in range(labels.num_classes)},
        "tokens": {"train": int(train_y.size), "test": int(test_y.size), "max_per_split": int(max_tokens),
                   "train_per_class": _counts(train_y, labels), "test_per_class": _counts(test_y, labels),
                   "channels": int(cfg.stage_channels()[stage])},
        "extra": {
            "checkpoint": str(checkpoint), "plans": plans, "configuration": configuration, "fold": str(fold),
            "split": split.rule, "train_cases": split.train, "test_cases": split.test, "crop": list(crop),
            "crops_per_case": crops_per_case, "crops": len(crops), "seed": seed, "random_seed": random_seed,
            "bootstrap": {"n_boot": n_boot, "level": level, "unit": "test case"},
            "encoder_config": cfg.to_dict(), "device": device, "seconds": round(time.perf_counter() - t0, 1),
        },
    }


def default_output(dataset_name: str, method: str, stage: int) -> Path:
    """$nnUNet_results/probe/<dataset>__<method>__stage<S>.json (where nnssl_report looks by default)."""
    results = os.environ.get("nnUNet_results")
    if not results:
        raise ValueError("nnUNet_results is not set: pass --out FILE.json or export nnUNet_results")
    return Path(results) / "probe" / f"{dataset_name}__{method}__stage{stage}.json"


__all__ = ["DEFAULT_STAGE", "LabelSet", "ProbeSplit", "dataset_labels", "default_output", "labelled_datasets",
           "plan_crops", "pretrained_encoder", "probe_split", "random_encoder", "run_probe", "stage_stride",
           "token_features"]
