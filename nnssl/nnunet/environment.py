"""nnU-Net environment variables: what each is for, checks with errors that say how to fix them."""
from __future__ import annotations

import os
from pathlib import Path

#: name -> what nnU-Net uses it for
NNUNET_ENV_VARS: dict[str, str] = {
    "nnUNet_raw": "raw datasets (DatasetXXX_Name/imagesTr, labelsTr, dataset.json)",
    "nnUNet_preprocessed": "fingerprints, plans and preprocessed data",
    "nnUNet_results": "trained models (DatasetXXX_Name/<Trainer>__<Plans>__<config>/fold_N)",
    "nnUNet_extTrainer": "folder(s) nnU-Net searches for external trainer classes (must include nnssl's trainers)",
}


#: Where nnssl_pretrain writes when nnssl_results is unset: beside nnU-Net's results.
PRETRAIN_SUBFOLDER = "nnssl_pretrain"


def nnssl_results_root() -> Path | None:
    """The nnssl results folder: ``$nnssl_results``, else ``$nnUNet_results/nnssl_pretrain`` (where nnssl_pretrain
    writes its runs); None when neither variable is set."""
    root = os.environ.get("nnssl_results")
    if root:
        return Path(root)
    results = os.environ.get("nnUNet_results")
    return Path(results) / PRETRAIN_SUBFOLDER if results else None


def trainers_path() -> str:
    """Absolute path of the installed trainers folder (package ``nnssl_trainers``), for ``nnUNet_extTrainer``."""
    import nnssl_trainers

    return str(Path(list(nnssl_trainers.__path__)[0]).resolve())


def export_line() -> str:
    """The shell line that points ``nnUNet_extTrainer`` at the installed trainers."""
    return f"export nnUNet_extTrainer={trainers_path()}"


def env_problems(names: list[str] | None = None) -> list[str]:
    """One message per missing/wrong variable among `names` (default: all four), each saying how to fix it."""
    problems = []
    for name in names or list(NNUNET_ENV_VARS):
        value = os.environ.get(name)
        if name == "nnUNet_extTrainer":
            if not value:
                problems.append(f"nnUNet_extTrainer is not set: nnU-Net cannot find the Swin trainers. Fix: "
                                f"{export_line()}")
                continue
            paths = [Path(p).resolve() for p in value.split(os.pathsep) if p.strip()]
            if Path(trainers_path()) not in paths:
                problems.append(f"nnUNet_extTrainer={value} does not include nnssl's trainers folder. Fix: "
                                f"{export_line()}  (separate several folders with '{os.pathsep}')")
            continue
        if not value:
            problems.append(f"{name} is not set (needed for {NNUNET_ENV_VARS[name]}). Fix: export {name}=/path/to/"
                            f"{name}  (see nnU-Net's documentation/setting_up_paths.md)")
        elif not Path(value).is_dir():
            problems.append(f"{name}={value} is not an existing folder. Fix: mkdir -p {value}, or point {name} at "
                            f"the right folder")
    return problems


def require_env(names: list[str]) -> None:
    """Raise EnvironmentError naming every missing variable and the export line that fixes it."""
    problems = env_problems(names)
    if problems:
        raise EnvironmentError("\n".join(problems))
