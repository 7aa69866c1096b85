"""The naming room: trainer, plans and model-folder names are built and parsed in one place, and the names the
runner builds are the ones the trainers module defines and the results reader parses."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from nnssl.benchmark.runner import Paths, build_jobs
from nnssl.benchmark.spec import spec_from_dict
from nnssl.nnunet import naming
from nnssl.nnunet.naming import (EPOCHS, SHOTS, TrainerName, method_of_plans, parse_run_name, parse_trainer_name,
                                 plans_name, trainer_name)

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("kind", ["Scratch", "SSL"])
@pytest.mark.parametrize("shots", [None, *SHOTS])
@pytest.mark.parametrize("epochs", [None, 2, 500])
@pytest.mark.parametrize("draw", [0, 3])
def test_trainer_names_round_trip(kind, shots, epochs, draw):
    """With all cases a draw is a repeated run on the same cases (``SwinSSLTrainer_draw3``), with k cases a new
    subset (``SwinSSLTrainer_5shot_draw3``)."""
    spec = TrainerName(kind, shots, draw, epochs)
    assert parse_trainer_name(spec.name) == spec
    expected = f"Swin{kind}Trainer" + (f"_{shots}shot" if shots else "") + (f"_draw{draw}" if draw else "") \
        + (f"_{epochs}epochs" if epochs else "")
    assert spec.name == expected


@pytest.mark.parametrize("bad, why", [("SwinSSLTrainer_7shot", "no few-shot trainer for 7"),
                                      ("SwinSSLTrainer_3epochs", "no trainer variant for 3 epochs"),
                                      ("SwinSSLTrainer_5shot_draw0", "draw 0"),
                                      ("SwinSSLTrainer_draw0", "draw 0"),
                                      ("SwinSSLTrainer_draw1_5shot", "does not match"),
                                      ("SwinFancyTrainer", "kind 'Fancy'"),
                                      ("nnUNetTrainer", "does not match")])
def test_bad_trainer_names_say_why(bad, why):
    with pytest.raises(ValueError, match=why):
        parse_trainer_name(bad)


def test_plans_names_round_trip():
    assert plans_name("scratch") == "nnUNetSwinPlans" and method_of_plans("nnUNetSwinPlans") == "scratch"
    assert method_of_plans(plans_name("dino-small")) == "dino-small"
    with pytest.raises(ValueError, match="use letters"):
        plans_name("a__b")


def test_runner_names_are_the_trainers_and_the_readers(tmp_path):
    """Every fine-tuning job the runner builds names a trainer class nnU-Net finds, and its model folder parses back
    to the job's method, shots and epochs."""
    from nnssl.finetune import trainers

    spec = spec_from_dict({"name": "n", "device": "cpu", "pretraining": {"datasets": [900], "encoder": "tiny"},
                           "methods": ["scratch", "smit"],
                           "downstream": {"datasets": [901], "shots": ["5", "10", "all"], "epochs": 2}})
    jobs = [j for j in build_jobs(spec, Paths.under(tmp_path), tmp_path / "r") if j.stage == "finetune"]
    assert len(jobs) == 6
    for job in jobs:
        _, _, method, shots, _fold = job.key.split("/")
        trainer = job.command[job.command.index("-tr") + 1]
        plans = job.command[job.command.index("-p") + 1]
        cls = trainers.trainer_class(trainer)
        assert cls.__name__ == trainer and cls.num_shots == (None if shots == "all" else int(shots))
        run = parse_run_name(job.done_marker.parent.parent.parent.name)
        assert (run.method, run.shots, run.epochs, run.trainer, run.plans) == (method, shots, 2, trainer, plans)
        assert trainer == trainer_name(method, shots, 2)


def test_naming_literals_live_in_the_naming_room():
    """'nnUNetSwinPlans' and the trainer grammar are written in nnssl/nnunet/naming.py only."""
    offenders = []
    for folder in ("nnssl", "planners", "trainers"):
        for path in (REPO / folder).rglob("*.py"):
            if path == Path(naming.__file__).resolve():
                continue
            text = path.read_text()
            if re.search(r"[\"']nnUNetSwinPlans[\"'_]", text) or "Swin(Scratch|SSL)Trainer(" in text:
                offenders.append(str(path.relative_to(REPO)))
    assert not offenders, offenders


def test_every_epochs_variant_exists():
    from nnssl.finetune import trainers

    for e in EPOCHS:
        assert trainers.trainer_class(f"SwinScratchTrainer_{e}epochs").fixed_num_epochs == e
