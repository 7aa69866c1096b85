"""Attach a pretraining checkpoint to a dataset's Swin plans: plans ``nnUNetSwinPlans_<name>``.

The attached plans identify the checkpoint by name, method and sha256 and hold no absolute path (see
``nnssl.finetune.pretrained`` for where training looks for the file).
"""
from __future__ import annotations

import json
from copy import deepcopy
from typing import Callable

from nnssl.io import atomic_write
from nnssl.nnunet.datasets import dataset_folder
from nnssl.nnunet.naming import CONFIGURATION, SWIN_PLANS, attached_plans_name, check_plans_identifier, \
    check_plans_suffix, encoder_tag, is_scratch, scratch_method
from nnssl.nnunet.plans import ENCODER_KEY, PRETRAINED_KEY, require_swin_plans


def attach_checkpoint(dataset: str | int, checkpoint: str, name: str | None = None, plans: str = SWIN_PLANS,
                      configuration: str = CONFIGURATION, overwrite: bool = False,
                      architecture_only: bool = False, note: Callable[[str], None] = print) -> str:
    """Write ``<plans>_<name>.json`` next to the Swin plans; returns its path. Raises ValueError/OSError on bad
    input (not a Swin plans file, unreadable checkpoint, encoder that cannot take the plans' patch size, ...).

    ``architecture_only``: copy the checkpoint's encoder architecture but attach no weights, for the from-scratch
    baseline of that encoder (same patch and batch size as the pretrained runs; default name
    ``scratch-<encoder tag>``, trained with SwinScratchTrainer). ``note`` receives remarks that do not stop the
    attachment (a larger encoder, a checkpoint stored by name only)."""
    from nnssl.checkpoint import load_checkpoint
    from nnssl.encoders.swin import EncoderConfig, check_swin_input_size
    from nnssl.finetune.pretrained import describe_checkpoint

    folder = dataset_folder(dataset, "nnUNet_preprocessed")
    check_plans_identifier(plans, what="-p")
    src = folder / f"{plans}.json"
    if not src.is_file():
        raise FileNotFoundError(f"{src} does not exist: run nnssl_plan_and_preprocess -d {dataset} first")
    base = json.loads(src.read_text())
    require_swin_plans(base, configuration)
    if base["configurations"][configuration].get(PRETRAINED_KEY):
        raise ValueError(f"-p {plans}: these plans already attach a checkpoint; attach to the Swin plans they were "
                         f"copied from (e.g. {SWIN_PLANS})")
    ckpt = load_checkpoint(checkpoint)
    method = str(ckpt.get("method", ""))
    enc = EncoderConfig.from_dict(ckpt["encoder_config"])
    if architecture_only:
        architecture = {k: v for k, v in enc.to_dict().items() if k != "in_channels"}
        name = name or scratch_method(encoder_tag(architecture))
        if not is_scratch(name):
            raise ValueError(f"--name {name!r}: plans without pretrained weights are from-scratch runs and are named "
                             f"scratch-<encoder> (e.g. {scratch_method(encoder_tag(architecture))}), so that the report "
                             "reads them as a baseline")
    name = name or method
    check_plans_suffix(name, what="--name")
    conf = base["configurations"][configuration]
    try:
        check_swin_input_size(conf["patch_size"])
    except ValueError as e:
        raise ValueError(f"the plans' patch size cannot be used with Swin: {e}") from None
    if enc.patch_size ** 5 > min(conf["patch_size"]):
        raise ValueError(f"the checkpoint's encoder (patch_size {enc.patch_size}) downsamples by "
                         f"{enc.patch_size ** 5}, more than the plans' smallest patch axis {min(conf['patch_size'])}")
    identifier = attached_plans_name(plans, name)
    target = folder / f"{identifier}.json"
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass --overwrite to replace it or choose another --name")
    new = deepcopy(base)
    new["plans_name"] = identifier
    encoder = enc.to_dict()
    encoder.pop("in_channels", None)
    new_conf = new["configurations"][configuration]
    new_conf[ENCODER_KEY] = encoder
    # data_identifier is kept: the attached plans train on the Swin plans' preprocessed data
    where = ""
    if not architecture_only:
        entry, where = describe_checkpoint(checkpoint, name, method)
        new_conf[PRETRAINED_KEY] = entry
    old_enc = conf.get(ENCODER_KEY, {})
    if old_enc and old_enc.get("feature_size", 0) < encoder["feature_size"]:
        note(f"note: the checkpoint's encoder (feature size {encoder['feature_size']}) is larger than the one the "
             f"batch size was planned for ({old_enc.get('feature_size')}); lower batch_size in {target.name} if "
             f"memory runs out")
    if where:
        note(f"note: {where}")
    atomic_write(target, lambda f: json.dump(new, f, indent=4), binary=False)
    return str(target)
