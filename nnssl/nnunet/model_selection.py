"""Model selection over explicitly named models: Swin trainers and nnU-Net's CNN side by side.

``nnUNetv2_find_best_configuration`` builds its candidates as the cross product of ``-tr``, ``-p`` and ``-c``
(``dumb_trainer_config_plans_to_trained_models_dict``, nnunetv2/evaluation/find_best_configuration.py:258-269) and
requires a trained model folder for every combination (:40-46). A Swin trainer trains only Swin plans and nnU-Net's
CNN only its own plans, so ``-tr SwinSSLTrainer nnUNetTrainer -p nnUNetSwinPlans_x nnUNetPlans`` names two models
that cannot exist and fails. :func:`find_best_over_models` passes the models as they are named instead (nnU-Net's
``<Trainer>__<Plans>__<configuration>`` folder names) to nnU-Net's own ``find_best_configuration``, after checking
that every fold was validated and, when ensembles are evaluated, saved its probabilities (``--npz``).
"""
from __future__ import annotations

from typing import Sequence

from nnssl.nnunet.datasets import dataset_folder

#: What nnU-Net's model selection needs in every fold's validation folder (ensembles: the probabilities too).
SUMMARY = "summary.json"


def split_model_folder_name(name: str) -> dict[str, str]:
    """``SwinSSLTrainer__nnUNetSwinPlans_smit__3d_fullres`` -> nnU-Net's model dict (trainer, plans, configuration).

    ValueError unless the name has exactly three ``__``-separated parts, as nnU-Net's own parser assumes
    (nnunetv2/utilities/file_path_utilities.py:13-14)."""
    parts = name.split("__")
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"model {name!r}: name models as nnU-Net names their folders, <Trainer>__<Plans>__"
                         f"<configuration> (e.g. SwinSSLTrainer__nnUNetSwinPlans_smit__3d_fullres or "
                         f"nnUNetTrainer__nnUNetPlans__3d_fullres), with exactly two '__'")
    trainer, plans, configuration = parts
    return {"trainer": trainer, "plans": plans, "configuration": configuration}


def check_models(dataset: str | int, models: Sequence[dict[str, str]], folds: Sequence[int | str],
                 ensembling: bool) -> str:
    """The dataset's name; ValueError naming the first model or fold that model selection cannot use and the
    command that makes it usable."""
    results = dataset_folder(dataset, "nnUNet_results")
    preprocessed = dataset_folder(dataset, "nnUNet_preprocessed")
    if len(models) < 1:
        raise ValueError("name at least one model (-m <Trainer>__<Plans>__<configuration>)")
    for m in models:
        folder = results / f"{m['trainer']}__{m['plans']}__{m['configuration']}"
        train = f"nnUNetv2_train {results.name} {m['configuration']} FOLD -tr {m['trainer']} -p {m['plans']}"
        if not (preprocessed / f"{m['plans']}.json").is_file():
            raise ValueError(f"plans {m['plans']} of {folder.name} do not exist in {preprocessed}")
        if not folder.is_dir():
            raise ValueError(f"{folder} does not exist: train every fold first ({train} --npz)")
        for fold in folds:
            validation = folder / f"fold_{fold}" / "validation"
            if not (validation / SUMMARY).is_file():
                raise ValueError(f"fold {fold} of {folder.name} has no validation/{SUMMARY}: train it "
                                 f"({train.replace('FOLD', str(fold))} --npz), or finish its validation with --val")
            if ensembling and not any(validation.glob("*.npz")):
                raise ValueError(
                    f"fold {fold} of {folder.name} saved no probabilities, which ensembles need: rerun its "
                    f"validation with {train.replace('FOLD', str(fold))} --val --npz (or pass --disable_ensembling)")
    return results.name


def find_best_over_models(dataset: str | int, models: Sequence[dict[str, str]], folds: Sequence[int | str],
                          ensembling: bool = True, num_processes: int = 8, overwrite: bool = True) -> dict:
    """Check the models, then run nnU-Net's model selection over exactly these models (and their pairwise
    ensembles); returns nnU-Net's result dict (also written to ``inference_information.json``)."""
    from nnunetv2.evaluation.find_best_configuration import find_best_configuration

    name = check_models(dataset, models, folds, ensembling)
    return find_best_configuration(name, [dict(m) for m in models], allow_ensembling=ensembling,
                                   num_processes=num_processes, overwrite=overwrite, folds=tuple(folds), strict=True)


__all__ = ["check_models", "find_best_over_models", "split_model_folder_name"]
