"""Loading a pretraining checkpoint's encoder into the fine-tuning network (SwinSSLTrainer).

The checkpoint is attached through the plans (``nnssl_attach`` writes ``nnUNetSwinPlans_<name>`` with
``"nnssl_pretrained": {"checkpoint", "method", "name"}``), following nnU-Net's own pattern of per-experiment plans.
Loading uses the checkpoint contract: ``nnssl.checkpoint.load_checkpoint`` + ``load_encoder_into`` (which fails on any
missing or mismatched encoder tensor and adapts the patch embedding to another number of input channels).
"""
from __future__ import annotations

import os
from typing import Any, Callable

from torch import nn

from nnssl.nnunet.naming import SWIN_PLANS, attached_plans_name
from nnssl.nnunet.plans import PRETRAINED_KEY


class NoCheckpointAttachedError(ValueError):
    """SwinSSLTrainer was started with plans that name no pretraining checkpoint."""


def attach_hint(dataset: str, base_plans: str = SWIN_PLANS) -> str:
    """How to attach a checkpoint to the Swin plans ``base_plans`` and train with the result."""
    return (f"attach one with: nnssl_attach -d {dataset} --checkpoint /path/to/checkpoint.pt --name NAME "
            f"-p {base_plans}, then train with -p {attached_plans_name(base_plans, 'NAME')} (or use "
            f"SwinScratchTrainer for training from scratch)")


def pretrained_checkpoint_path(configuration: dict, dataset: str, plans_name: str) -> str:
    entry = configuration.get(PRETRAINED_KEY)
    if not entry or not entry.get("checkpoint"):
        raise NoCheckpointAttachedError(
            f"plans '{plans_name}' name no pretraining checkpoint (no \"{PRETRAINED_KEY}\"): SwinSSLTrainer "
            f"fine-tunes a pretrained encoder; "
            + attach_hint(dataset, SWIN_PLANS if plans_name == "?" else plans_name))
    path = entry["checkpoint"]
    if not os.path.isfile(path):
        raise FileNotFoundError(f"the checkpoint attached in plans '{plans_name}' does not exist: {path}. Restore it "
                                f"or re-attach it with nnssl_attach -d {dataset} --checkpoint CKPT --name NAME --overwrite")
    return path


def normalization_differences(ckpt: dict[str, Any], configuration: dict) -> list[str]:
    """Differences between the pretraining data's intensity normalisation (checkpoint provenance) and the target's."""
    prov = (ckpt.get("provenance") or {}).get("normalization") or {}
    src = prov.get("schemes")
    dst = configuration.get("normalization_schemes")
    if src is None:
        return ["the checkpoint records no normalisation scheme (provenance.normalization.schemes)"]
    if list(src) != list(dst or []):
        # multi-channel targets whose channels all share the single pretraining scheme are fine
        if not (len(set(src)) == 1 and dst and set(dst) == set(src)):
            return [f"pretraining normalisation {list(src)} vs target {list(dst or [])}"]
    return []


def load_pretrained_encoder(network: nn.Module, configuration: dict, dataset: str, plans_name: str,
                            in_channels: int, log: Callable[[str], None] = print) -> Any:
    """Load the attached checkpoint's encoder into `network` (a SwinUNETR); returns the LoadReport.

    Logs "loaded N/N encoder tensors", warns when the normalisation schemes differ, raises on missing/mismatched keys.
    """
    from nnssl.checkpoint import load_checkpoint, load_encoder_into

    path = pretrained_checkpoint_path(configuration, dataset, plans_name)
    ckpt = load_checkpoint(path)
    report = load_encoder_into(network, ckpt, in_channels)
    if report.unexpected:
        # the attached plans build a smaller encoder than the checkpoint's (e.g. edited depths): refuse rather than
        # fine-tune a truncated encoder in silence
        raise ValueError(
            f"the checkpoint {path} holds {len(report.unexpected)} encoder tensor(s) the network does not have, e.g. "
            f"{report.unexpected[:5]}: the plans' encoder {configuration.get('nnssl_encoder')} differs from the "
            f"checkpoint's {ckpt.get('encoder_config')}. Re-attach with nnssl_attach (it copies the encoder config).")
    log(f"nnssl: pretrained encoder from {path} (method {ckpt.get('method')}): {report.summary()}")
    if report.adapted:
        src_ch = ckpt.get("encoder_config", {}).get("in_channels")
        log(f"nnssl: the checkpoint has {src_ch} input channel(s), the target {in_channels}: patch embedding "
            f"averaged over its input channels, repeated over the target's and scaled by {src_ch}/{in_channels}")
    for diff in normalization_differences(ckpt, configuration):
        log(f"nnssl: WARNING intensity normalisation differs between pretraining and fine-tuning: {diff}. The "
            f"encoder may see intensities on another scale than in pretraining.")
    return report
