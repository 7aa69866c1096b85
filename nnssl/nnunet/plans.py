"""The plans contract: what nnssl stores in nnU-Net plans and how the trainers and planners read it.

Top level: ``"nnssl_plans": true`` (marks a Swin plans file). Inside ``configurations.<config>``:
``"nnssl_encoder"`` (EncoderConfig.to_dict() without in_channels) and, in ``nnUNetSwinPlans_<name>`` only,
``"nnssl_pretrained": {"name": str, "method": str, "sha256": hex, "file": relative path}``.

Plans travel: nnU-Net copies them into every model folder (``plans.json``), into exported model zips and, with
``nnUNetv2_move_plans_between_datasets``, to other datasets. So they hold no absolute path of the machine that wrote
them: the checkpoint is identified by its content hash, and ``file`` is only where to look first (resolved at training
time by ``nnssl.finetune.pretrained.resolve_pretrained_checkpoint``).
"""
from __future__ import annotations

import os

from nnssl.encoders.swin import EncoderConfig, check_swin_input_size
from nnssl.nnunet.naming import SWIN_PLANS, plans_name

#: Top-level marker of a Swin plans file.
PLANS_MARKER = "nnssl_plans"
#: Per configuration: the encoder architecture (EncoderConfig.to_dict() without in_channels).
ENCODER_KEY = "nnssl_encoder"
#: Per configuration, in attached plans only: what identifies the pretraining checkpoint.
PRETRAINED_KEY = "nnssl_pretrained"
#: Fields of the PRETRAINED_KEY entry: the ``<name>`` of the plans identifier, the checkpoint's pretraining method,
#: the sha256 of the checkpoint file (what identifies it) and a relative path where to look for it first.
PRETRAINED_NAME, PRETRAINED_METHOD, PRETRAINED_SHA256, PRETRAINED_FILE = "name", "method", "sha256", "file"
#: The field earlier nnssl versions wrote instead of sha256 and file: the checkpoint's absolute path.
LEGACY_PRETRAINED_PATH = "checkpoint"


class NotSwinPlansError(ValueError):
    """A plans file without the nnssl marker was given to a Swin trainer."""


class UnsupportedConfigurationError(ValueError):
    """A configuration the Swin trainers cannot train (2D, nnU-Net's low-resolution stage or cascade)."""


#: What to say for nnU-Net's configurations that Swin plans do not hold, and what to use instead.
_NOT_PLANNED = {
    "3d_lowres": "nnssl plans one stage at full resolution (nnssl_plan_and_preprocess writes 3d_fullres only), so "
                 "Swin plans have no 3d_lowres: train 3d_fullres (the sliding window covers images of any size), or "
                 "train nnU-Net's CNN cascade with nnUNetTrainer -p nnUNetPlans and ensemble it with the Swin model "
                 "(nnUNetv2_ensemble)",
    "3d_cascade_fullres": "the Swin trainers do not train nnU-Net's cascade: nnssl plans no 3d_lowres stage whose "
                          "segmentations 3d_cascade_fullres takes as extra input channels. Train 3d_fullres, or train "
                          "nnU-Net's CNN cascade with nnUNetTrainer -p nnUNetPlans and ensemble it with the Swin "
                          "model (nnUNetv2_ensemble)",
}


def _refuse_2d(name: str, configuration: str, conf: dict | None) -> None:
    patch = (conf or {}).get("patch_size")
    if configuration == "2d" or (patch is not None and len(patch) == 2):
        raise UnsupportedConfigurationError(
            f"configuration '{configuration}' of plans '{name}' is 2D, and the Swin trainers train 3D networks only: "
            f"SwinUNETR's encoder is 3D (3D patch embedding, windows and patch merging). Use 3d_fullres with Swin "
            f"plans ({SWIN_PLANS}), or nnU-Net's own nnUNetTrainer -p nnUNetPlans for a 2D model.")


def require_swin_plans(plans: dict, configuration: str | None = None) -> None:
    """Raise unless `plans` were written by nnssl's planner and `configuration` is one the Swin trainers train.

    2D configurations raise UnsupportedConfigurationError (whatever the plans), plans without the nnssl marker
    NotSwinPlansError, configurations the plans lack or cascade stages UnsupportedConfigurationError, each naming what
    to use instead.
    """
    name = plans.get("plans_name", "?")
    configurations = plans.get("configurations", {})
    if configuration is not None:
        _refuse_2d(name, configuration, configurations.get(configuration))
    if plans.get(PLANS_MARKER) is not True:
        raise NotSwinPlansError(
            f"plans '{name}' are not a Swin plans file (no \"{PLANS_MARKER}\": true): the Swin trainers need "
            f"patch sizes divisible by 32 and an encoder config. Run nnssl_plan_and_preprocess -d DATASET and "
            f"train with -p {SWIN_PLANS} (or -p {plans_name('NAME')} after nnssl_attach -d DATASET --checkpoint CKPT "
            f"--name NAME).")
    if configuration is None:
        return
    if configuration not in configurations:
        reason = _NOT_PLANNED.get(configuration, "use 3d_fullres")
        raise UnsupportedConfigurationError(
            f"plans '{name}' have no configuration '{configuration}' (Swin plans hold "
            f"{', '.join(configurations) or 'nothing'}): {reason}.")
    if configurations[configuration].get("previous_stage") is not None:
        raise UnsupportedConfigurationError(
            f"configuration '{configuration}' of plans '{name}' is a cascade stage (previous_stage "
            f"'{configurations[configuration]['previous_stage']}'): {_NOT_PLANNED['3d_cascade_fullres']}.")


def encoder_config(configuration: dict, in_channels: int) -> EncoderConfig:
    """EncoderConfig from a plans configuration dict (defaults = paper's base encoder when the key is absent)."""
    enc = dict(configuration.get(ENCODER_KEY) or {})
    enc.pop("in_channels", None)
    try:
        cfg = EncoderConfig.from_dict({**enc, "in_channels": int(in_channels)})
    except (TypeError, ValueError) as e:
        raise ValueError(f"invalid \"{ENCODER_KEY}\" in the plans: {e}. Re-run nnssl_plan_and_preprocess or "
                         f"nnssl_attach.") from None
    patch = configuration.get("patch_size")
    if patch is not None:
        try:
            check_swin_input_size(patch)
        except ValueError as e:
            raise ValueError(f"the plans' patch_size {patch} does not suit Swin: {e}. Edit patch_size in the plans "
                             f"or re-run nnssl_plan_and_preprocess.") from None
        if all(int(p) == 32 for p in patch):
            raise ValueError(f"the plans' patch_size {patch} leaves SwinUNETR's bottleneck (patch / 32) a single "
                             f"voxel, which its instance norm cannot train on: make one axis 64.")
    return cfg


def make_pretrained_entry(name: str, method: str, sha256: str, file: str) -> dict[str, str]:
    """The PRETRAINED_KEY entry; ValueError for an absolute ``file`` (plans must not hold this machine's paths)."""
    if os.path.isabs(file) or file.startswith("~"):
        raise ValueError(f"the checkpoint location stored in plans must be relative, got {file!r}")
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError(f"{sha256!r} is not a hex sha256 digest")
    return {PRETRAINED_NAME: name, PRETRAINED_METHOD: method, PRETRAINED_SHA256: sha256,
            PRETRAINED_FILE: file.replace(os.sep, "/")}
