"""Reading nnU-Net preprocessed datasets for pretraining (labels ignored) and sampling random 3D crops.

Cases are read with nnU-Net's own dataset classes (blosc2 ``case.b2nd`` + ``case.pkl``, or the older npz layout), so
anything ``nnUNetv2_plan_and_preprocess`` or ``nnssl_plan_and_preprocess`` wrote (labeled or images-only) works.

Sampling is a pure function of (seed, sample index): sample ``k`` always draws the same case and crop. The loop
asks for indices ``step * global_batch + rank * batch + j``, so a resumed run sees exactly the crops the
uninterrupted run would have seen, with any number of loader workers.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from nnssl.nnunet.datasets import DatasetNotFoundError, dataset_folder, dataset_id
from nnssl.nnunet.naming import CONFIGURATION, SWIN_PLANS


class DataError(ValueError):
    """A dataset that cannot be used for pretraining; the message says why and what to do."""


@dataclass
class PreprocessedSource:
    """One preprocessed dataset: where its cases are and how they were made (for the checkpoint's provenance)."""

    dataset_id: int
    dataset_name: str
    folder: Path
    plans_identifier: str
    configuration: str
    identifiers: list[str]
    num_channels: int
    spacing: list[float]
    normalization_schemes: list[str]
    intensity_properties: dict[str, Any] = field(default_factory=dict)
    channel_names: dict[str, str] = field(default_factory=dict)

    def provenance(self) -> dict[str, Any]:
        return {
            "dataset_id": self.dataset_id,
            "dataset_name": self.dataset_name,
            "plans": self.plans_identifier,
            "configuration": self.configuration,
            "num_cases": len(self.identifiers),
            "spacing": self.spacing,
            "channel_names": self.channel_names,
            "normalization_schemes": self.normalization_schemes,
            "intensity_properties": self.intensity_properties,
        }


def find_source(dataset: int | str, plans_identifier: str = SWIN_PLANS,
                configuration: str = CONFIGURATION) -> PreprocessedSource:
    """Locate one preprocessed dataset and its cases; clear errors when plans or data are missing."""
    try:
        folder = dataset_folder(dataset, "nnUNet_preprocessed")
    except DatasetNotFoundError as e:
        raise DataError(str(e)) from None
    plans_file = folder / f"{plans_identifier}.json"
    if not plans_file.is_file():
        available = sorted(p.stem for p in folder.glob("*.json") if p.stem not in ("dataset", "dataset_fingerprint",
                                                                                    "splits_final"))
        raise DataError(
            f"{folder.name} has no plans {plans_identifier!r} (found: {available or 'none'}): run "
            f"`nnssl_plan_and_preprocess -d {dataset}` or pass -p with one of the plans found"
        )
    plans = json.loads(plans_file.read_text())
    configs = plans.get("configurations", {})
    if configuration not in configs:
        raise DataError(f"plans {plans_file} have no configuration {configuration!r}; available: {sorted(configs)}")
    cfg = configs[configuration]
    while "data_identifier" not in cfg and "inherits_from" in cfg:  # nnU-Net's configuration inheritance
        cfg = {**configs[cfg["inherits_from"]], **{k: v for k, v in cfg.items() if k != "inherits_from"}}
    data_folder = folder / cfg["data_identifier"]
    if not data_folder.is_dir():
        raise DataError(
            f"{data_folder} does not exist: the {configuration} configuration of {folder.name} was planned but not "
            f"preprocessed; run `nnssl_plan_and_preprocess -d {dataset} -c {configuration}`"
        )
    identifiers = sorted(
        {p.name[: -len(suffix)] for suffix in (".b2nd", ".npz") for p in data_folder.glob(f"*{suffix}")
         if not p.name.endswith(f"_seg{suffix}")}
    )
    if not identifiers:
        raise DataError(f"{data_folder} holds no preprocessed cases (*.b2nd or *.npz)")
    dataset_json = folder / "dataset.json"
    channel_names = json.loads(dataset_json.read_text()).get("channel_names", {}) if dataset_json.is_file() else {}
    num_channels = len(channel_names) or len(cfg.get("normalization_schemes", [])) or 1
    intensity = plans.get("foreground_intensity_properties_per_channel", {})
    return PreprocessedSource(
        dataset_id=dataset_id(folder.name),
        dataset_name=folder.name,
        folder=data_folder,
        plans_identifier=plans_identifier,
        configuration=configuration,
        identifiers=identifiers,
        num_channels=num_channels,
        spacing=[float(s) for s in cfg.get("spacing", [])],
        normalization_schemes=list(cfg.get("normalization_schemes", [])),
        intensity_properties=intensity,
        channel_names=channel_names,
    )


def find_sources(datasets: Sequence[int | str], plans_identifier: str = SWIN_PLANS,
                 configuration: str = CONFIGURATION) -> list[PreprocessedSource]:
    """Every dataset of ``datasets`` (ids or names); DataError when their image channels differ."""
    if not datasets:
        raise DataError("no dataset given: pass one or more ids with -d")
    sources = [find_source(d, plans_identifier, configuration) for d in datasets]
    channels = {s.num_channels for s in sources}
    if len(channels) > 1:
        detail = ", ".join(f"{s.dataset_name}: {s.num_channels}" for s in sources)
        raise DataError(f"the datasets have different numbers of image channels ({detail}); pretrain on datasets "
                        "with the same channels")
    return sources


def load_image(folder: Path, identifier: str) -> np.ndarray:
    """The preprocessed image (C, D, H, W) of one case, memory-mapped where nnU-Net's format allows."""
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2, nnUNetDatasetNumpy

    if (folder / f"{identifier}.b2nd").is_file():
        if (folder / f"{identifier}_seg.b2nd").is_file():
            data, _seg, _prev, _props = nnUNetDatasetBlosc2(str(folder), [identifier]).load_case(identifier)
            return data
        import blosc2  # an images-only folder without segmentation files: open the image as nnU-Net does

        return blosc2.open(urlpath=str(folder / f"{identifier}.b2nd"), mode="r", dparams={"nthreads": 1},
                           mmap_mode="r")
    data, _seg, _prev, _props = nnUNetDatasetNumpy(str(folder), [identifier]).load_case(identifier)
    return data


class RandomCropDataset(Dataset):
    """Map-style dataset: index k -> one random crop (C, *crop) float32, a pure function of (seed, k).

    Crops that are almost pure background (less than ``min_foreground`` of the voxels above the case's
    background level) are re-drawn up to ``max_tries`` times; the crop with the most foreground is kept.
    Images smaller than the crop are padded with their minimum (the background).
    """

    def __init__(self, sources: Sequence[PreprocessedSource], crop: Sequence[int], seed: int = 0,
                 min_foreground: float = 0.2, max_tries: int = 10) -> None:
        self.cases = [(s.folder, i) for s in sources for i in s.identifiers]
        if not self.cases:
            raise DataError("the given datasets hold no cases")
        self.crop = tuple(int(c) for c in crop)
        if len(self.crop) != 3 or min(self.crop) < 1:
            raise DataError(f"crop must be three positive sizes, got {crop}")
        self.seed = int(seed)
        self.min_foreground = min_foreground
        self.max_tries = max_tries
        self.num_channels = sources[0].num_channels
        self._thresholds: dict[int, float] = {}

    def __len__(self) -> int:  # sampling is by index, unbounded; a nominal epoch visits every case once
        return len(self.cases)

    def _background_threshold(self, case: int, image: np.ndarray) -> float:
        if case not in self._thresholds:
            sub = np.asarray(image[0][::4, ::4, ::4], dtype=np.float32)
            lo, hi = np.percentile(sub, [1, 99])
            self._thresholds[case] = float(lo + 0.1 * (hi - lo))
        return self._thresholds[case]

    def _choose_case(self, index: int, rng: np.random.Generator) -> int:
        return int(rng.integers(len(self.cases)))

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.sample(index).image

    def sample(self, index: int) -> "Crop":
        """Crop ``index`` with where it was taken (what ``__getitem__`` returns, plus its case and start)."""
        rng = np.random.default_rng([self.seed, int(index)])
        case = self._choose_case(index, rng)
        image = load_image(*self.cases[case])
        shape = image.shape[1:]
        threshold = self._background_threshold(case, image)
        best, best_fg, best_start = None, -1.0, None
        for _ in range(self.max_tries):
            start = [int(rng.integers(0, max(s - c, 0) + 1)) for s, c in zip(shape, self.crop)]
            window = tuple(slice(st, st + c) for st, c in zip(start, self.crop))
            patch = np.asarray(image[(slice(None),) + window], dtype=np.float32)
            fg = float((patch[0] > threshold).mean())
            if fg > best_fg:
                best, best_fg, best_start = patch, fg, start
            if fg >= self.min_foreground:
                break
        assert best is not None and best_start is not None
        if best.shape[1:] != self.crop:
            pad = [(0, 0)] + [(0, c - s) for s, c in zip(best.shape[1:], self.crop)]
            best = np.pad(best, pad, mode="constant", constant_values=float(best.min()))
        if best.shape[0] != self.num_channels:
            raise DataError(f"case {self.cases[case][1]} has {best.shape[0]} channels, expected {self.num_channels}")
        return Crop(case, tuple(best_start), torch.from_numpy(np.ascontiguousarray(best)))

    def crop_labels(self, crop: "Crop") -> np.ndarray:
        """The segmentation (D, H, W) int16 under ``crop`` (padded with 0 like the image), from the case's ``_seg``."""
        seg = load_segmentation(*self.cases[crop.case])
        window = tuple(slice(st, st + c) for st, c in zip(crop.start, self.crop))
        labels = np.asarray(seg[(0,) + window], dtype=np.int16)
        if labels.shape != self.crop:
            labels = np.pad(labels, [(0, c - s) for s, c in zip(labels.shape, self.crop)])
        return labels


@dataclass
class Crop:
    """One crop of a RandomCropDataset: the case index, the crop's start voxel and the image (C, *crop)."""

    case: int
    start: tuple[int, ...]
    image: torch.Tensor


def load_segmentation(folder: Path, identifier: str) -> np.ndarray:
    """The preprocessed segmentation (1, D, H, W) of one case (nnU-Net's ``<case>_seg`` file; -1 outside the
    non-zero region when the plans crop to it)."""
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2, nnUNetDatasetNumpy

    if (folder / f"{identifier}_seg.b2nd").is_file():
        return nnUNetDatasetBlosc2(str(folder), [identifier]).load_case(identifier)[1]
    if (folder / f"{identifier}.npz").is_file():
        try:
            return nnUNetDatasetNumpy(str(folder), [identifier]).load_case(identifier)[1]
        except KeyError:  # an npz without a 'seg' array
            pass
    raise DataError(f"{folder} has no segmentation for case {identifier} ({identifier}_seg.b2nd): the images are "
                    "unlabelled; use a labelled target dataset preprocessed by nnU-Net")


class RoundRobinCropDataset(RandomCropDataset):
    """Crop ``k`` comes from case ``k mod n_cases``: every case is used before any repeats (evaluation sets)."""

    def _choose_case(self, index: int, rng: np.random.Generator) -> int:
        return int(index) % len(self.cases)


class StepSampler(Sampler[int]):
    """Yields the sample indices of steps ``start_step`` .. ``total_steps - 1`` for one rank (sharded sampling)."""

    def __init__(self, start_step: int, total_steps: int, batch_size: int, rank: int = 0, world_size: int = 1):
        self.start_step, self.total_steps = start_step, total_steps
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size

    def __iter__(self) -> Iterator[int]:
        global_batch = self.batch_size * self.world_size
        for step in range(self.start_step, self.total_steps):
            base = step * global_batch + self.rank * self.batch_size
            yield from range(base, base + self.batch_size)

    def __len__(self) -> int:
        return max(self.total_steps - self.start_step, 0) * self.batch_size
