"""Feature reuse: CKA per encoder stage between a pretrained encoder and the same encoder after fine-tuning.

Both encoders see the same target images (crops of the fold's validation cases, a pure function of the seed), and
``nnssl.analysis.cka`` compares their five stage outputs: linear CKA over all images (Kornblith et al. 2019) and the
minibatch debiased CKA (Nguyen et al. 2020). A diagonal near 1 means the stage was reused as pretrained.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnssl.analysis import cka as cka_lib
from nnssl.checkpoint import CheckpointError, encoder_config_of, load_checkpoint, load_encoder_into
from nnssl.data.preprocessed import PreprocessedSource, RandomCropDataset, RoundRobinCropDataset, find_source
from nnssl.encoders.swin import ENCODER_PREFIX, SwinEncoder
from nnssl.nnunet.naming import CONFIGURATION, model_folder_name
from nnssl.nnunet.plans import ENCODER_KEY, encoder_config

STAGES = ["patch_embed", "stage1", "stage2", "stage3", "stage4"]


def pretrained_encoder(checkpoint: str | os.PathLike, in_channels: int) -> SwinEncoder:
    """The encoder as pretraining left it (input channels adapted like fine-tuning does)."""
    ckpt = load_checkpoint(checkpoint)
    encoder = SwinEncoder(encoder_config_of(ckpt).replace(in_channels=in_channels, use_checkpoint=False))
    load_encoder_into(encoder, ckpt)
    return encoder.eval()


def fold_folder(dataset_name: str, trainer: str, plans: str, configuration: str, fold: int | str) -> Path:
    """The fold folder ``$nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>/fold_<fold>``; ValueError
    when nnUNet_results is unset, FileNotFoundError when the folder does not exist."""
    results = os.environ.get("nnUNet_results")
    if not results:
        raise ValueError("nnUNet_results is not set: export nnUNet_results=/path/to/results")
    folder = Path(results) / dataset_name / model_folder_name(trainer, plans, configuration) / f"fold_{fold}"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist: fine-tune first (nnUNetv2_train ... -tr {trainer} -p {plans})")
    return folder


def finetuned_encoder(folder: Path, configuration: str, in_channels: int) -> SwinEncoder:
    """The Swin encoder of an nnU-Net fold's final (or latest) checkpoint."""
    ckpt_file = folder / "checkpoint_final.pth"
    if not ckpt_file.is_file():
        ckpt_file = folder / "checkpoint_latest.pth"
    if not ckpt_file.is_file():
        raise FileNotFoundError(f"{folder} holds no checkpoint_final.pth or checkpoint_latest.pth")
    plans = json.loads((folder.parent / "plans.json").read_text())
    conf = plans["configurations"][configuration]
    if conf.get(ENCODER_KEY) is None:
        raise ValueError(f"{folder.parent / 'plans.json'} has no {ENCODER_KEY}: not a Swin fine-tuning run")
    cfg = encoder_config({k: v for k, v in conf.items() if k != "patch_size"}, in_channels)
    weights = torch.load(ckpt_file, map_location="cpu", weights_only=False)["network_weights"]
    state = {}
    for key, value in weights.items():
        for prefix in ("_orig_mod.", "module."):
            key = key[len(prefix):] if key.startswith(prefix) else key
        if key.startswith(ENCODER_PREFIX):
            state[key] = value
    encoder = SwinEncoder(cfg)
    result = encoder.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k.startswith(ENCODER_PREFIX)]
    if missing:
        raise CheckpointError(f"{ckpt_file} lacks encoder tensors {missing[:5]}: not a SwinUNETR fine-tuning run")
    return encoder.eval()


def validation_cases(preprocessed_dataset: Path, fold: int | str) -> list[str] | None:
    """The fold's validation cases from ``splits_final.json`` in the preprocessed dataset folder; None
    without that file, for a non-numeric fold (``all``) or a fold the splits do not have."""
    splits = preprocessed_dataset / "splits_final.json"
    if not splits.is_file() or not str(fold).isdigit():
        return None
    folds = json.loads(splits.read_text())
    return list(folds[int(fold)]["val"]) if int(fold) < len(folds) else None


@dataclass
class FeatureReuse:
    """What :func:`measure_feature_reuse` measured: (n_stages, n_stages) linear CKA over all images and minibatch
    debiased CKA (rows: encoder ``a``'s stages, columns: ``b``'s), the number of images and the cases of the crops."""

    linear: np.ndarray
    unbiased: np.ndarray
    n_images: int
    cases: list[str]


@torch.no_grad()
def measure_feature_reuse(a: SwinEncoder, b: SwinEncoder, dataset: RandomCropDataset, n_images: int = 16,
                          batch_size: int = 4, device: str = "cpu", pooling: str = "flatten") -> FeatureReuse:
    """Stage-by-stage CKA between encoders ``a`` and ``b`` on ``n_images`` crops (batches of >= 4 images)."""
    if n_images < 4 or batch_size < 4:
        raise ValueError("CKA needs at least 4 images per batch (the unbiased HSIC estimator): raise --images/--batch")
    a, b = a.to(device), b.to(device)
    minibatch = cka_lib.StageMinibatchCKA(pooling=pooling)
    all_a: list[list[np.ndarray]] = [[] for _ in STAGES]
    all_b: list[list[np.ndarray]] = [[] for _ in STAGES]
    for batch in range(n_images // batch_size):  # whole batches only: each needs >= 4 images
        start = batch * batch_size
        x = torch.stack([dataset[i] for i in range(start, start + batch_size)]).to(device)
        fa = [f.float().cpu() for f in a(x)]
        fb = [f.float().cpu() for f in b(x)]
        minibatch.update(fa, fb)
        for s in range(len(STAGES)):
            all_a[s].append(cka_lib.features_to_examples(fa[s], pooling))
            all_b[s].append(cka_lib.features_to_examples(fb[s], pooling))
    linear = cka_lib.stage_cka([np.concatenate(x) for x in all_a], [np.concatenate(y) for y in all_b], "linear")
    return FeatureReuse(linear=linear, unbiased=minibatch.compute(), n_images=sum(len(x) for x in all_a[0]),
                        cases=sorted({dataset.cases[i][1] for i in range(len(dataset.cases))}))


@dataclass
class FoldEncoders:
    """A fine-tuning fold's two encoders and the target images to compare them on (see :func:`load_fold_encoders`)."""

    source: PreprocessedSource  # the target dataset's preprocessed data (identifiers: the cases the crops come from)
    folder: Path  # the fold folder (nnUNet_results/<Dataset>/<Trainer>__<Plans>__<conf>/fold_<f>)
    patch: list[int]  # the fine-tuning patch size, the size of every crop
    crops: RoundRobinCropDataset  # crop k of case k mod n_cases, a pure function of the seed
    pretrained: SwinEncoder
    finetuned: SwinEncoder
    held_out: bool  # the crops come from the fold's validation cases only

    def meta(self, trainer: str, plans: str, checkpoint: str | os.PathLike) -> dict[str, Any]:
        """The comparison's metadata for the result file: dataset, trainer, plans, fold, patch size, the source's
        cases, whether they are held out, and the pretrained checkpoint."""
        return {"dataset_name": self.source.dataset_name, "trainer": trainer, "plans": plans,
                "fold": self.folder.name.removeprefix("fold_"), "patch_size": self.patch,
                "cases": sorted(self.source.identifiers), "held_out": self.held_out, "checkpoint": str(checkpoint)}


def load_fold_encoders(pretrained: str | os.PathLike, dataset: str, trainer: str, plans: str, fold: int | str,
                       configuration: str = CONFIGURATION, min_validation_cases: int = 1,
                       seed: int = 0) -> FoldEncoders:
    """The pretrained encoder, the same encoder after fine-tuning in an nnU-Net fold, and crops of target images.

    The crops come from the fold's validation cases (not trained on) when there are at least
    ``min_validation_cases`` of them, else from all of the dataset's cases.
    """
    source = find_source(dataset, plans, configuration)
    val = set(validation_cases(source.folder.parent, fold) or [])
    held_out = len(val & set(source.identifiers)) >= max(1, min_validation_cases)
    if held_out:
        source.identifiers = [i for i in source.identifiers if i in val]
    folder = fold_folder(source.dataset_name, trainer, plans, configuration, fold)
    plans_json = json.loads((folder.parent / "plans.json").read_text())
    patch = plans_json["configurations"][configuration]["patch_size"]
    crops = RoundRobinCropDataset([source], patch, seed=seed)
    return FoldEncoders(source, folder, patch, crops, pretrained_encoder(pretrained, source.num_channels),
                        finetuned_encoder(folder, configuration, source.num_channels), held_out)


def feature_reuse_for_fold(pretrained: str | os.PathLike, dataset: str, trainer: str, plans: str, fold: int | str,
                           configuration: str = CONFIGURATION, n_images: int = 16, batch_size: int = 4,
                           device: str = "cpu", seed: int = 0, pooling: str = "flatten") -> tuple[FeatureReuse, dict[str, Any]]:
    """Stage-by-stage CKA between the pretrained encoder of checkpoint ``pretrained`` and the same encoder after
    fine-tuning in one nnU-Net fold, on ``n_images`` crops (:func:`measure_feature_reuse`): (result, metadata)."""
    # The fold's validation cases were not trained on. Repeated images bias CKA upwards (a crop as large as the image
    # repeats it exactly), so with fewer validation cases than images all cases of the dataset are used.
    fe = load_fold_encoders(pretrained, dataset, trainer, plans, fold, configuration, min_validation_cases=n_images,
                            seed=seed)
    result = measure_feature_reuse(fe.pretrained, fe.finetuned, fe.crops, n_images, batch_size, device, pooling)
    meta = fe.meta(trainer, plans, pretrained)
    meta.update(fold=str(fold), cases=result.cases)
    return result, meta
