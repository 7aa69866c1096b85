"""Reading nnU-Net preprocessed datasets for pretraining (labels ignored) and sampling random 3D crops.

Cases are read with nnU-Net's own dataset classes (blosc2 ``case.b2nd`` + ``case.pkl``, or the older npz layout), so
anything ``nnUNetv2_plan_and_preprocess`` or ``nnssl_plan_and_preprocess`` wrote (labeled or images-only) works.

Sampling is a pure function of (seed, sample index): sample ``k`` always draws the same case and crop. The loop
reads ``StepBatches``: item ``step`` stacks the samples ``step * global_batch + rank * batch + j`` and applies a
transform of (crops, step) (the method's views) where the DataLoader runs it, in a worker. A resumed run therefore
sees exactly the crops the uninterrupted run would have seen, with any number of loader workers.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from nnssl.nnunet.datasets import DatasetNotFoundError, dataset_folder, dataset_id
from nnssl.nnunet.naming import CONFIGURATION, SWIN_PLANS


class DataError(ValueError):
    """A dataset that cannot be used for pretraining; the message says why and what to do."""


#: Written beside a configuration's data folder (``.<data folder>.nnssl_complete.json``; inside it would break
#: nnU-Net's dataset-class inference, which reads every file ending there) by nnssl_plan_and_preprocess after the last
#: case (complete-or-absent): {"cases": [identifiers], "constant_cases": [identifiers whose image is constant]}.
COMPLETE_MARKER = ".nnssl_complete.json"


def complete_marker_path(data_folder: Path) -> Path:
    """The marker beside a preprocessed data folder (``.<folder>`` + COMPLETE_MARKER) that says its preprocessing
    finished."""
    data_folder = Path(data_folder)
    return data_folder.parent / f".{data_folder.name}{COMPLETE_MARKER}"
#: A crop whose share of padding (the part outside the image) is at least WARN_PADDING_SHARE at the median image shape
#: is warned about; one that leaves at least MAX_PADDING_SHARE padding even with the image that fills it best is
#: refused (a 128^3 crop of 64^3 images is 7/8 padding; a 64^3 crop of 48^3 images, 58%, is only warned about: the
#: Swin planner itself plans 64 voxels per axis for small images).
WARN_PADDING_SHARE = 0.5
MAX_PADDING_SHARE = 0.75


def read_complete_marker(data_folder: Path) -> dict[str, Any] | None:
    """The completion record of a data folder, or None (not written by nnssl, or unreadable)."""
    try:
        marker = json.loads(complete_marker_path(data_folder).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and isinstance(marker.get("cases"), list) else None


def write_complete_marker(data_folder: Path, identifiers: Sequence[str], constant: Sequence[str]) -> Path:
    """Write the completion marker of ``data_folder`` atomically: the preprocessed cases and those with a constant
    image; returns its path."""
    from nnssl.io import atomic_write

    record = {"cases": sorted(identifiers), "constant_cases": sorted(constant), "written_by": "nnssl_plan_and_preprocess"}
    return atomic_write(complete_marker_path(data_folder), lambda f: json.dump(record, f, indent=1), binary=False)


def _check_complete(data_folder: Path, identifiers: list[str], expected: int | None, dataset: int | str) -> None:
    """Refuse a data folder that an interrupted preprocessing left incomplete: a case whose properties file (written
    last by nnU-Net) is missing, or fewer cases than the completion record or dataset.json's numTraining."""
    partial = [i for i in identifiers if not (data_folder / f"{i}.pkl").is_file()]
    marker = read_complete_marker(data_folder)
    if marker is not None:
        expected = len(marker["cases"])
    done = len(identifiers) - len(partial)
    if partial or (expected is not None and done < expected):
        detail = f"{done} of {expected} cases" if expected is not None else f"{done} complete cases"
        if partial:
            detail += f", {len(partial)} half-written ({', '.join(partial[:3])})"
        raise DataError(f"{data_folder} is incomplete ({detail}): its preprocessing was interrupted. Complete it with "
                        f"`nnssl_plan_and_preprocess -d {dataset}`")


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
        """What the pretraining data was, for the run's config.json: dataset id and name, plans, configuration, number
        of cases, spacing, channel names, normalisation schemes and intensity properties."""
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
        available = sorted(p.stem for p in folder.glob("*.json") if not p.name.startswith(".")
                           and p.stem not in ("dataset", "dataset_fingerprint", "splits_final"))
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
        raise DataError(f"{data_folder} holds no preprocessed cases (*.b2nd or *.npz): run "
                        f"`nnssl_plan_and_preprocess -d {dataset}`")
    dataset_json = folder / "dataset.json"
    try:
        meta = json.loads(dataset_json.read_text()) if dataset_json.is_file() else {}
    except ValueError as e:
        raise DataError(f"{dataset_json} is not valid JSON ({e}): run `nnssl_plan_and_preprocess -d {dataset}` "
                        "again") from None
    channel_names = meta.get("channel_names", {})
    expected = meta.get("numTraining")
    _check_complete(data_folder, identifiers, expected if isinstance(expected, int) else None, dataset)
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


def case_shape(folder: Path, identifier: str) -> tuple[int, ...]:
    """The spatial shape of one preprocessed case (read from the blosc2 header where possible: no decompression)."""
    path = folder / f"{identifier}.b2nd"
    if path.is_file():
        import blosc2

        return tuple(int(s) for s in blosc2.open(urlpath=str(path), mode="r").shape[1:])
    return tuple(int(s) for s in load_image(folder, identifier).shape[1:])


def padding_share(shape: Sequence[float], crop: Sequence[int]) -> float:
    """The share of a crop that lies outside an image of ``shape`` (and is padded)."""
    inside = float(np.prod([min(float(s), c) / c for s, c in zip(shape, crop)]))
    return 1.0 - inside


def check_crop_fits(sources: Sequence[PreprocessedSource], crop: Sequence[int]) -> list[str]:
    """Warnings about a crop much larger than the images; DataError when it exceeds every image.

    A crop larger than an image is padded with the image's background. At the median image shape a padding share of
    WARN_PADDING_SHARE or more is warned about; when even the image that fills the crop best leaves MAX_PADDING_SHARE
    padding (e.g. a 128^3 crop of 64^3 images: 7/8), every crop is mostly padding and the run is refused.
    """
    crop = tuple(int(c) for c in crop)
    shapes = [case_shape(s.folder, i) for s in sources for i in s.identifiers]
    if not shapes:
        return []
    median = np.median(np.asarray(shapes, dtype=float), axis=0)
    suggestion = tuple(max(32, int(m // 32) * 32) for m in median)
    names = ", ".join(s.dataset_name for s in sources)
    best = min(padding_share(sh, crop) for sh in shapes)
    if best >= MAX_PADDING_SHARE:
        largest = max(shapes, key=lambda sh: float(np.prod([min(a, c) for a, c in zip(sh, crop)])))
        raise DataError(f"the crop {crop} exceeds every image of {names} (the one that fills it best, "
                        f"{'x'.join(map(str, largest))}, leaves {best:.0%} of each crop padding): use a crop that fits "
                        f"the images, e.g. --crop {' '.join(map(str, suggestion))}")
    at_median = padding_share(median, crop)
    if at_median >= WARN_PADDING_SHARE:
        return [f"the crop {crop} exceeds the median image shape of {names} "
                f"({'x'.join(f'{m:g}' for m in median)}): {at_median:.0%} of a typical crop is padding. Consider "
                f"--crop {' '.join(map(str, suggestion))}"]
    return []


def is_constant_image(image: Any) -> bool:
    """True when every voxel of every channel has one value (e.g. an all-zero image): a strided look first, the
    whole image only when that is constant."""
    sub = np.asarray(image[(slice(None),) + (slice(None, None, 4),) * 3])
    if sub.size and sub.min() != sub.max():
        return False
    full = np.asarray(image[...])
    return bool(full.size == 0 or full.min() == full.max())


def constant_cases(folder: Path, identifiers: Sequence[str], stop_at_varying: bool = False) -> list[str]:
    """The cases whose preprocessed image is constant; ``stop_at_varying``: stop at the first case that is not
    (enough to tell whether all are)."""
    constant = []
    for identifier in identifiers:
        if is_constant_image(load_image(folder, identifier)):
            constant.append(identifier)
        elif stop_at_varying:
            break
    return constant


def check_not_constant(sources: Sequence[PreprocessedSource]) -> list[str]:
    """DataError when every case of every dataset is constant (nothing to learn from); warnings naming the constant
    cases that nnssl_plan_and_preprocess recorded."""
    warnings, all_constant = [], True
    for s in sources:
        marker = read_complete_marker(s.folder)
        if marker is not None and isinstance(marker.get("constant_cases"), list):
            constant = [i for i in marker["constant_cases"] if i in set(s.identifiers)]
            if constant and len(constant) < len(s.identifiers):
                warnings.append(f"{len(constant)} of {len(s.identifiers)} cases of {s.dataset_name} have a constant "
                                f"image ({', '.join(constant[:5])}): they add nothing but background crops")
            all_constant &= len(constant) == len(s.identifiers)
        elif all_constant:
            all_constant = len(constant_cases(s.folder, s.identifiers, stop_at_varying=True)) == len(s.identifiers)
    if all_constant:
        names = ", ".join(s.dataset_name for s in sources)
        raise DataError(f"every case of {names} has a constant image (e.g. all zero): there is nothing to pretrain on. "
                        "Check the raw images, then run nnssl_plan_and_preprocess again with --clean")
    return warnings


#: Blocks of the background estimate: a 3 x 3 x 3 grid of cubes of this edge (corners, edge and face centres, the
#: centre), so that a case is never decompressed whole to find its background.
BACKGROUND_BLOCKS, BACKGROUND_BLOCK_EDGE = 3, 16


def background_threshold(image: Any) -> float:
    """The level above which a voxel of the first channel counts as foreground: 10% of the way from the 1st to the
    99th percentile of a bounded sample (``BACKGROUND_BLOCKS``^3 cubes of ``BACKGROUND_BLOCK_EDGE`` voxels at the
    image's corners, edge and face centres and centre).

    A pure function of the image, read by slicing: a blosc2 array decompresses only the chunks the cubes touch, a
    bounded number whatever the volume's size (a strided read such as ``image[0][::4, ::4, ::4]`` decompresses all
    of it). The corner cubes sample what surrounds the body, the others the body.
    """
    shape = tuple(int(s) for s in image.shape[1:])
    edge = [min(BACKGROUND_BLOCK_EDGE, s) for s in shape]
    starts = [sorted({round(i * (s - e) / (BACKGROUND_BLOCKS - 1)) for i in range(BACKGROUND_BLOCKS)})
              for s, e in zip(shape, edge)]
    blocks = [np.asarray(image[(0, slice(a, a + edge[0]), slice(b, b + edge[1]), slice(c, c + edge[2]))],
                         dtype=np.float32).ravel()
              for a in starts[0] for b in starts[1] for c in starts[2]]
    lo, hi = np.percentile(np.concatenate(blocks), [1, 99])
    return float(lo + 0.1 * (hi - lo))


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
            self._thresholds[case] = background_threshold(image)
        return self._thresholds[case]

    def _choose_case(self, index: int, rng: np.random.Generator) -> int:
        return int(rng.integers(len(self.cases)))

    def case_name(self, index: int) -> str:
        """``Dataset/case`` that sample ``index`` draws (the same draw as ``__getitem__``, without reading it)."""
        folder, identifier = self.cases[self._choose_case(index, np.random.default_rng([self.seed, int(index)]))]
        return f"{folder.parent.name}/{identifier}"

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


class StepBatches(Dataset):
    """Map-style dataset over steps: item ``step`` is one rank's batch of that step, ``transform(crops, step)``.

    The crops are the samples ``step * batch * world_size + rank * batch + j`` (j < batch) of ``crops``, stacked to
    (batch, C, D, H, W); ``transform`` (picklable, e.g. the method's views seeded by the step) runs in the DataLoader
    worker that reads the item. Read it with ``DataLoader(..., batch_size=None, sampler=range(start, total))``.
    """

    def __init__(self, crops: RandomCropDataset, batch_size: int, rank: int = 0, world_size: int = 1,
                 transform: Callable[[torch.Tensor, int], Any] | None = None) -> None:
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need batch_size >= 1 and 0 <= rank < world_size, got {batch_size}, {rank}, {world_size}")
        self.crops, self.batch_size, self.rank, self.world_size = crops, batch_size, rank, world_size
        self.transform = transform

    def indices(self, step: int) -> range:
        """The sample indices of this rank's batch at ``step``."""
        base = step * self.batch_size * self.world_size + self.rank * self.batch_size
        return range(base, base + self.batch_size)

    def __len__(self) -> int:  # unbounded by steps; nominally one pass over the cases
        return max(1, len(self.crops) // self.batch_size)

    def __getitem__(self, step: int) -> Any:
        crops = torch.stack([self.crops[k] for k in self.indices(int(step))])
        return crops if self.transform is None else self.transform(crops, int(step))
