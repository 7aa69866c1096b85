"""Attach a pretraining checkpoint to a dataset's Swin plans: plans ``nnUNetSwinPlans__<name>``."""
from __future__ import annotations

import json
from copy import deepcopy
from pathlib import Path

from nnssl.io import atomic_write
from nnssl.nnunet.datasets import dataset_folder
from nnssl.nnunet.naming import CONFIGURATION, SWIN_PLANS, check_plans_suffix, encoder_tag, is_scratch, scratch_method
from nnssl.nnunet.plans import ENCODER_KEY, PRETRAINED_KEY, require_swin_plans

def attach_checkpoint(dataset: str | int, checkpoint: str, name: str | None = None, plans: str = SWIN_PLANS,
                      configuration: str = CONFIGURATION, overwrite: bool = False,
                      architecture_only: bool = False) -> str:
    """Write ``<plans>__<name>.json`` next to the Swin plans; returns its path. Raises ValueError/OSError on bad
    input (not a Swin plans file, unreadable checkpoint, encoder that cannot take the plans' patch size, ...).

    ``architecture_only``: copy the checkpoint's encoder architecture but attach no weights, for the from-scratch
    baseline of that encoder (same patch and batch size as the pretrained runs; default name
    ``scratch-<encoder tag>``, trained with SwinScratchTrainer)."""
    from nnssl.checkpoint import load_checkpoint
    from nnssl.encoders.swin import EncoderConfig, check_swin_input_size

    folder = dataset_folder(dataset, "nnUNet_preprocessed")
    if "__" in plans:
        raise ValueError(f"-p {plans}: attach to the base Swin plans (e.g. {SWIN_PLANS}), not to attached plans")
    src = folder / f"{plans}.json"
    if not src.is_file():
        raise FileNotFoundError(f"{src} does not exist: run nnssl_plan_and_preprocess -d {dataset} first")
    base = json.loads(src.read_text())
    require_swin_plans(base, configuration)
    ckpt_path = Path(checkpoint).resolve()
    ckpt = load_checkpoint(ckpt_path)
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
    target = folder / f"{plans}__{name}.json"
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass --overwrite to replace it or choose another --name")
    new = deepcopy(base)
    new["plans_name"] = f"{plans}__{name}"
    encoder = enc.to_dict()
    encoder.pop("in_channels", None)
    new_conf = new["configurations"][configuration]
    new_conf[ENCODER_KEY] = encoder
    # data_identifier is kept: the attached plans train on the Swin plans' preprocessed data
    if not architecture_only:
        new_conf[PRETRAINED_KEY] = {"checkpoint": str(ckpt_path), "method": method, "name": name}
    old_enc = conf.get(ENCODER_KEY, {})
    if old_enc and old_enc.get("feature_size", 0) < encoder["feature_size"]:
        print(f"note: the checkpoint's encoder (feature size {encoder['feature_size']}) is larger than the one the "
              f"batch size was planned for ({old_enc.get('feature_size')}); lower batch_size in {target.name} if "
              f"memory runs out")
    atomic_write(target, lambda f: json.dump(new, f, indent=4), binary=False)
    return str(target)
