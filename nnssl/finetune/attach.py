"""Attach a pretraining checkpoint to a dataset's Swin plans: plans ``nnUNetSwinPlans__<name>``."""
from __future__ import annotations

import json
import os
import re
from copy import deepcopy
from pathlib import Path

from nnssl.io import atomic_write
from nnssl.finetune.plans import ENCODER_KEY, PRETRAINED_KEY, SWIN_PLANS, require_swin_plans

NAME_RE = re.compile(r"^[A-Za-z0-9]+(?:[-_][A-Za-z0-9]+)*$")


def _dataset_folder(dataset: str | int) -> Path:
    from nnssl.finetune.environment import require_env

    require_env(["nnUNet_preprocessed"])
    root = Path(os.environ["nnUNet_preprocessed"])
    s = str(dataset)
    if s.startswith("Dataset"):
        folder = root / s
        if folder.is_dir():
            return folder
        raise ValueError(f"{folder} does not exist: run nnssl_plan_and_preprocess for it first")
    try:
        prefix = f"Dataset{int(s):03d}_"
    except ValueError:
        raise ValueError(f"-d {dataset!r}: give a dataset id (e.g. 901) or name (Dataset901_Name)") from None
    matches = sorted(p for p in root.glob(prefix + "*") if p.is_dir())
    if len(matches) != 1:
        raise ValueError(f"dataset {dataset}: {'no' if not matches else 'several'} folder(s) {prefix}* in "
                         f"nnUNet_preprocessed={root}; run nnssl_plan_and_preprocess -d {dataset} first")
    return matches[0]


def attach_checkpoint(dataset: str | int, checkpoint: str, name: str | None = None, plans: str = SWIN_PLANS,
                      configuration: str = "3d_fullres", overwrite: bool = False) -> str:
    """Write ``<plans>__<name>.json`` next to the Swin plans; returns its path. Raises ValueError/OSError on bad
    input (not a Swin plans file, unreadable checkpoint, encoder that cannot take the plans' patch size, ...)."""
    from nnssl.checkpoint import load_checkpoint
    from nnssl.encoders.swin import EncoderConfig, check_swin_input_size

    folder = _dataset_folder(dataset)
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
    name = name or method
    if not name or not NAME_RE.match(name):
        raise ValueError(f"--name {name!r}: use letters, digits and single '-' or '_' (e.g. smit, dino-small); it "
                         f"becomes the plans identifier {plans}__<name>")
    enc = EncoderConfig.from_dict(ckpt["encoder_config"])
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
    new_conf[PRETRAINED_KEY] = {"checkpoint": str(ckpt_path), "method": method, "name": name}
    old_enc = conf.get(ENCODER_KEY, {})
    if old_enc and old_enc.get("feature_size", 0) < encoder["feature_size"]:
        print(f"note: the checkpoint's encoder (feature size {encoder['feature_size']}) is larger than the one the "
              f"batch size was planned for ({old_enc.get('feature_size')}); lower batch_size in {target.name} if "
              f"memory runs out")
    atomic_write(target, lambda f: json.dump(new, f, indent=4), binary=False)
    return str(target)
