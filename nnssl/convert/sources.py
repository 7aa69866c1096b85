"""The named checkpoint sources: how to read and write each, and what its code did that the tensors do not show.

For every source: the adapter (``read``: state dict -> ``swinViT.*`` tensors, ``write``: encoder -> the source's
file layout), the patch-merging order its training code used (nnssl.encoders.merging; None where one file format
serves several MONAI versions and the user must say), the array axes it trained on (``axes``: axis codes such as
"RAS" after MONAI's ``Orientationd``, "voxel" for a pipeline that does not reorient, None when unknown) and its
preprocessing, all read from the publishing repositories (documentation/checkpoints.md cites file and line).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import Tensor

from nnssl.convert.brainsegfounder import from_brainsegfounder, to_brainsegfounder
from nnssl.convert.monai import from_monai_swinunetr, to_monai_swinunetr
from nnssl.convert.monai_bundle import from_monai_bundle, to_monai_bundle
from nnssl.convert.report import ConversionReport
from nnssl.convert.smit import from_smit
from nnssl.convert.suprem import from_suprem, to_suprem
from nnssl.convert.swinunetr_ssl import from_swinunetr_ssl, to_swinunetr_ssl
from nnssl.convert.voco import from_voco, to_voco

Reader = Callable[[dict[str, Tensor], ConversionReport], dict[str, Tensor]]
Writer = Callable[[dict[str, Tensor]], Any]

#: "voxel": arrays in each file's own voxel order (i, j, k), as MONAI's LoadImage gives them without Orientationd.
VOXEL_AXES = "voxel"


@dataclass(frozen=True)
class Source:
    """One checkpoint source (see the module docstring)."""

    name: str
    description: str
    read: Reader | None = None
    write: Writer | None = None
    merge_order: str | None = None
    merge_order_evidence: str = ""
    axes: str | None = None
    preprocessing: str = "unknown"
    #: The merge order the source's *code* runs when a file is exported to it; None: the MONAI installed where it is
    #: loaded decides (the user says which with --merging).
    runtime_merge_order: str | None = None


_LEGACY_MONAI = "trained with MONAI < 1.5, whose PatchMerging takes sub-grids (0,1,0) and (0,0,1) twice"

SOURCES: dict[str, Source] = {s.name: s for s in (
    Source("monai-swinunetr", "a MONAI SwinUNETR state dict (swinViT.* + CNN decoder), any wrapper or module. prefix",
           from_monai_swinunetr, to_monai_swinunetr,
           merge_order=None, axes=None,
           preprocessing="unknown (a MONAI SwinUNETR state dict records no preprocessing)"),
    Source("monai-bundle", "MONAI model-zoo bundle swin_unetr_btcv_segmentation (models/model.pt)",
           from_monai_bundle, to_monai_bundle,
           merge_order="monai-legacy",
           merge_order_evidence="bundle weights of 2022, verified with MONAI 1.4.0 (configs/metadata.json); "
                                + _LEGACY_MONAI,
           axes="RAS",
           preprocessing="model-zoo swin_unetr_btcv_segmentation configs/train.json: Orientationd RAS, Spacingd "
                         "1.5 x 1.5 x 2.0 mm, CT clipped to [-175, 250] HU and scaled to [0, 1], 96^3 crops"),
    Source("swinunetr-ssl", "SwinUNETR self-supervised release (Tang et al. 2022, model_swinvit.pt) or "
                            "research-contributions SwinUNETR/Pretrain SSLHead checkpoints",
           from_swinunetr_ssl, to_swinunetr_ssl,
           merge_order="monai-legacy",
           merge_order_evidence="research-contributions SwinUNETR/Pretrain pins MONAI a23c7f54 (requirements.txt); "
                                + _LEGACY_MONAI,
           axes="RAS", runtime_merge_order="monai-legacy",
           preprocessing="Tang et al. 2022 pretraining (research-contributions SwinUNETR/Pretrain defaults): RAS "
                         "orientation, CT clipped to [-1000, 1000] HU and scaled to [0, 1], no resampling (the "
                         "space_x/y/z arguments are not used), 96^3 crops"),
    Source("smit", "SMIT's Swin (Jiang et al., MICCAI 2022; The-Veeraraghavan-Lab/SMIT models/Trans.py)",
           from_smit, None,
           merge_order="monai",
           merge_order_evidence="SMIT's own PatchMerging order (models/Trans.py), permuted exactly to MONAI >= 1.5's",
           axes=VOXEL_AXES,
           preprocessing="SMIT pretraining (The-Veeraraghavan-Lab/SMIT train_self_supervised.py): no reorientation "
                         "(each file's voxel axes), spacing 2.0 mm isotropic, CT clipped to [-175, 250] HU and scaled "
                         "to [0, 1], 96^3 crops"),
    Source("voco", "VoCo (Wu et al. CVPR 2024 / TPAMI; Luffy03/Large-Scale-Medical, Luffy03/VoCo): SwinUNETR-v2 "
                   "B/L/H (feature size 48/96/192), SSL heads or VoComni",
           from_voco, to_voco,
           merge_order="monai-legacy",
           merge_order_evidence="Large-Scale-Medical and VoCo pin monai==1.3.0 (requirements.txt); " + _LEGACY_MONAI,
           axes="RAS", runtime_merge_order="monai-legacy",
           preprocessing="VoCo pretraining (Large-Scale-Medical Self-supervised): Orientationd RAS, Spacingd 1.5 mm "
                         "isotropic, CT clipped to [-175, 250] HU and scaled to [0, 1], 96^3 crops"),
    Source("suprem", "SuPreM's supervised SwinUNETR (Li et al., ICLR 2024; MrGiovanni/SuPreM, AbdomenAtlas 1.1)",
           from_suprem, to_suprem,
           merge_order="monai-legacy",
           merge_order_evidence="SuPreM's own SwinUNETR copy (supervised_pretraining/backbone/swinunetr.py) "
                                "concatenates the MONAI < 1.5 order",
           axes="RAS", runtime_merge_order="monai-legacy",
           preprocessing="SuPreM supervised pretraining (supervised_pretraining/train.py defaults): Orientationd RAS, "
                         "Spacingd 1.5 mm isotropic, CT clipped to [-175, 250] HU and scaled to [0, 1], 96^3 crops"),
    Source("brainsegfounder", "BrainSegFounder SwinUNETR pretraining (lab-smile/BrainSegFounder pretrain/, "
                              "two-channel T1/T2 input)",
           from_brainsegfounder, to_brainsegfounder,
           merge_order="monai-legacy",
           merge_order_evidence="BrainSegFounder pins MONAI a23c7f54 (pretrain/requirements.txt); " + _LEGACY_MONAI,
           axes="RAS", runtime_merge_order="monai-legacy",
           preprocessing="BrainSegFounder pretraining (pretrain/utils/data_utils.py, main_T1T2.py defaults): "
                         "Orientationd RAS, no resampling, ScaleIntensityRanged a_min/a_max (defaults -1000/1000) to "
                         "[0, 1], 96^3 crops of T1 and T2 as two channels"),
    Source("nnssl", "an nnssl checkpoint (nnssl.checkpoint)", None, None,
           preprocessing="recorded in the checkpoint's own provenance"),
)}

#: Export formats: nnssl, MONAI (swinViT.* for SwinUNETR) and the source layouts that have a writer.
TARGETS: tuple[str, ...] = ("nnssl", "monai") + tuple(n for n, s in SOURCES.items() if s.write is not None
                                                      and n != "monai-swinunetr")

__all__ = ["SOURCES", "Source", "TARGETS", "VOXEL_AXES"]
