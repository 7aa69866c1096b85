"""CNN baselines in the grid: ``baselines: [nnunet]`` plans with nnU-Net's own planner, trains nnU-Net's
nnUNetTrainer (as ``CNNTrainer[...]``) on nnUNetPlans, on the same splits_final.json and k-shot subsets as the Swin
runs; GPU-sized presets (ResEnc M/L/XL) are refused on a CPU grid unless forced.

The spec and job tests are pure; one test runs a tiny grid (nnssl's and nnU-Net's preprocessing, a 5-shot Swin
scratch fold and the 5-shot CNN fold, one iteration each) and compares the two folds' subset records.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from datasets import make_dataset

from nnssl.benchmark.runner import Paths, build_jobs, run_jobs
from nnssl.benchmark.spec import SpecError, spec_from_dict
from nnssl.nnunet.naming import DEFAULT_PLANS, parse_run_name
from nnssl.nnunet.plans import PLANS_MARKER

SPEC = {
    "name": "cnn",
    "device": "cpu",
    "pretraining": {"datasets": [900], "encoder": "tiny", "crop": 64, "steps": 5, "options": {"smit": {"view_size": 32}}},
    "methods": ["scratch", "smit"],
    "downstream": {"datasets": [901], "shots": ["5", "all"], "folds": [0], "epochs": 2, "draws": 2},
    "baselines": ["nnunet"],
}


def _spec(**change):
    return spec_from_dict({**SPEC, **change})


def _jobs(tmp_path, **change):
    return {j.key: j for j in build_jobs(_spec(**change), Paths.under(tmp_path / "w"), tmp_path / "r")}


# ---------------------------------------------------------------------------------------------------------------------
# the spec
# ---------------------------------------------------------------------------------------------------------------------
def test_resenc_l_is_refused_on_a_cpu_grid_unless_forced():
    with pytest.raises(SpecError, match=r"baselines: resenc_l is planned by nnU-Net's nnUNetPlannerResEncL for a GPU "
                                        r"\(ResEnc L: 24 GB\).*force_baselines: true"):
        _spec(baselines=["nnunet", "resenc_l"])
    assert _spec(baselines=["nnunet", "resenc_l"], force_baselines=True).baselines == ["nnunet", "resenc_l"]
    assert _spec(baselines=["resenc_l"], device="cuda").reference == "resenc_l"


@pytest.mark.parametrize("change, message", [
    ({"baselines": ["nnunett"]}, "unknown CNN baseline 'nnunett' \\(did you mean 'nnunet'\\?\\)"),
    ({"baselines": "nnunet"}, "baselines must be a list"),
    ({"baselines": ["nnunet", "nnunet"]}, "lists a baseline twice"),
    ({"reference_baseline": "resenc_l"}, "reference_baseline 'resenc_l' is not one of baselines \\(nnunet\\)"),
    ({"force_baselines": "yes"}, "force_baselines must be true or false"),
    ({"downstream": {**SPEC["downstream"], "protocols": ["full", "frozn"]}}, "downstream.protocols: "),
    ({"downstream": {**SPEC["downstream"], "protocols": ["llrd75", "llrd75"]}}, "lists a protocol twice"),
    ({"downstream": {**SPEC["downstream"], "only": [{"methods": ["resenc_l"]}]}}, "resenc_l not in the spec's methods"),
])
def test_baseline_and_protocol_errors_name_the_problem(change, message):
    with pytest.raises(SpecError, match=message):
        _spec(**change)


def test_the_reference_is_fixed_in_the_spec_and_passed_to_the_report(tmp_path):
    assert _spec().reference == "nnunet"
    jobs = _jobs(tmp_path, baselines=["nnunet", "resenc_m"], reference_baseline="resenc_m", device="cuda")
    report = jobs["report"].command
    assert report[report.index("--cnn-reference") + 1] == "resenc_m"
    assert "--cnn-reference" not in _jobs(tmp_path, baselines=[])["report"].command


# ---------------------------------------------------------------------------------------------------------------------
# the jobs
# ---------------------------------------------------------------------------------------------------------------------
def test_baseline_jobs_plan_with_nnunets_planner_and_train_the_swin_runs_regimes(tmp_path):
    jobs = _jobs(tmp_path, downstream={**SPEC["downstream"], "learning_rate": 1e-3, "protocols": ["full", "frozen"]})
    pre = jobs["preprocess/nnunet"]
    assert pre.command == ["nnUNetv2_plan_and_preprocess", "-d", "901", "-c", "3d_fullres", "-pl", "ExperimentPlanner",
                           "-np", "1", "-npfp", "1"]
    assert pre.after == ["preprocess"]  # nnssl's planning extracted the fingerprint nnU-Net's planner reuses
    cnn = {k: j for k, j in jobs.items() if k.startswith("finetune/901/nnunet/")}
    swin = {k for k in jobs if k.startswith("finetune/901/scratch/")}
    # the same shots, draws and folds as the Swin scratch runs; the ladder's rungs are for the Swin runs only
    assert {k.replace("/nnunet/", "/scratch/") for k in cnn} == {k for k in swin if not k.endswith("/frozen")}
    assert sorted(cnn) == ["finetune/901/nnunet/5/0", "finetune/901/nnunet/5/0/draw1", "finetune/901/nnunet/all/0"]
    job = cnn["finetune/901/nnunet/5/0/draw1"]
    assert job.command[:5] == ["nnUNetv2_train", "901", "3d_fullres", "0", "-tr"]
    assert job.command[job.command.index("-tr") + 1] == "CNNTrainer_5shot_draw1_2epochs"
    assert job.command[job.command.index("-p") + 1] == DEFAULT_PLANS
    assert job.after == ["preprocess/nnunet"] and job.method == "nnunet"
    assert "NNSSL_LEARNING_RATE" not in job.env  # the CNN keeps nnU-Net's SGD learning rate
    assert jobs["finetune/901/scratch/5/0"].env["NNSSL_LEARNING_RATE"] == "0.001"
    run = parse_run_name(job.done_marker.parent.parent.parent.name)
    assert (run.method, run.shots, run.draw, run.epochs, run.protocol) == ("nnunet", "5", 1, 2, "full")
    frozen = jobs["finetune/901/smit/5/0/frozen"]
    assert frozen.command[frozen.command.index("-tr") + 1] == "SwinSSLTrainer_frozen_5shot_2epochs"
    assert "cka/901/smit/5/0/frozen" not in jobs  # a frozen encoder is not compared with itself


def test_only_rules_thin_the_baselines_too(tmp_path):
    only = [{"shots": ["all"], "methods": ["scratch", "smit"]}]
    jobs = _jobs(tmp_path, downstream={**SPEC["downstream"], "only": only})
    assert [k for k in jobs if k.startswith("finetune/901/nnunet/")] == ["finetune/901/nnunet/5/0",
                                                                         "finetune/901/nnunet/5/0/draw1"]


def _this_checkouts_trainers(monkeypatch) -> str:
    """nnUNet_extTrainer at this checkout's trainers/ (an editable install may point at another checkout's)."""
    from nnssl.nnunet import environment

    folder = str(Path(__file__).resolve().parents[1] / "trainers")
    monkeypatch.setattr(environment, "trainers_path", lambda: folder)
    monkeypatch.setenv("nnUNet_extTrainer", folder)
    return folder


def test_cnn_trainers_are_found_by_nnunet_and_refuse_swin_plans(monkeypatch):
    _this_checkouts_trainers(monkeypatch)
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    cls = recursive_find_trainer_class_by_name("CNNTrainer_5shot_draw3_2epochs")
    assert issubclass(cls, nnUNetTrainer) and (cls.num_shots, cls.shot_draw, cls.fixed_num_epochs) == (5, 3, 2)
    assert recursive_find_trainer_class_by_name("SwinScratchTrainer_5shot").__name__ == "SwinScratchTrainer_5shot"
    with pytest.raises(ValueError, match="are Swin plans: train them with the Swin trainers"):
        import torch

        cls(plans={"plans_name": "x", PLANS_MARKER: {"encoder": {}}}, configuration="3d_fullres", fold=0,
            dataset_json={}, device=torch.device("cpu"))


# ---------------------------------------------------------------------------------------------------------------------
# a tiny grid: the CNN trains on the Swin 5-shot run's cases
# ---------------------------------------------------------------------------------------------------------------------
def test_the_subset_record_names_no_trainer_so_every_methods_record_is_the_same(tmp_path):
    """fewshot_split records the subset of (dataset, fold, draw) only: the Swin and CNN trainers write equal files."""
    from types import SimpleNamespace

    from nnssl.finetune.regimes import fewshot_split

    records = []
    for name in ("SwinScratchTrainer_5shot", "SwinSSLTrainer_5shot", "CNNTrainer_5shot"):
        out = tmp_path / name
        cls = type(name, (SimpleNamespace,), {})
        trainer = cls(num_shots=5, shot_draw=1, fold=2, local_rank=0, output_folder=str(out),
                      plans_manager=SimpleNamespace(dataset_name="Dataset533_Cnn"), print_to_log_file=lambda *a: None)
        subset, val = fewshot_split(trainer, [f"case_{i:03d}" for i in range(12)], ["case_100", "case_101"])
        assert len(subset) == 5 and val == ["case_100", "case_101"]
        records.append((out / "fewshot_subset.json").read_text())
    assert records[0] == records[1] == records[2]


def test_an_all_cases_draw_is_a_repeated_run_on_every_training_case(tmp_path):
    """``_draw<r>`` without ``_<k>shot`` trains on the fold's whole training set (no subset record) and says in the
    log that it is a repeated run; the Swin and CNN trainer classes of such names exist for nnU-Net's lookup."""
    from types import SimpleNamespace

    from nnssl.finetune import baselines, trainers
    from nnssl.finetune.regimes import fewshot_split

    assert trainers.trainer_class("SwinScratchTrainer_draw2_2epochs").shot_draw == 2
    assert trainers.trainer_class("SwinSSLTrainer_draw1").num_shots is None
    assert baselines.cnn_trainer_class("CNNTrainer_draw1_2epochs").shot_draw == 1
    logged: list[str] = []
    trainer = SimpleNamespace(num_shots=None, shot_draw=2, fold=0, local_rank=0, output_folder=str(tmp_path),
                              plans_manager=SimpleNamespace(dataset_name="Dataset533_Cnn"),
                              print_to_log_file=lambda *a: logged.append(" ".join(map(str, a))))
    keys = [f"case_{i:03d}" for i in range(12)]
    subset, val = fewshot_split(trainer, keys, ["case_100"])
    assert subset == keys and val == ["case_100"]
    assert not (tmp_path / "fewshot_subset.json").exists()
    assert any("draw 2 of all 12 training cases" in line for line in logged), logged


@pytest.mark.slow  # ~2.5 min on the shared 2-core machine: two plannings, two one-iteration trainings, validation
def test_a_tiny_grid_trains_the_cnn_on_the_swin_runs_subset(tmp_path, monkeypatch):
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnssl_results"):
        monkeypatch.delenv(k, raising=False)
    _this_checkouts_trainers(monkeypatch)
    paths = Paths.under(tmp_path / "w")
    make_dataset(paths.raw, 533, name="Cnn", num_cases=8, shape=(30, 32, 30), seed=5)
    spec = spec_from_dict({
        "name": "cnn", "device": "cpu", "pretraining": {"datasets": [533], "encoder": "tiny"},
        "methods": ["scratch"], "baselines": ["nnunet"],
        "downstream": {"datasets": [533], "shots": ["5"], "folds": [0], "epochs": 1, "iterations_per_epoch": 1,
                       "val_iterations_per_epoch": 1, "mirroring": False, "probe": False, "attention": False}})
    jobs = [j for j in build_jobs(spec, paths, tmp_path / "r") if j.stage in ("preprocess", "finetune")]
    assert [j.key for j in jobs] == ["preprocess", "finetune/533/scratch/5/0", "preprocess/nnunet",
                                     "finetune/533/nnunet/5/0"]
    failures = run_jobs(jobs, paths, tmp_path / "logs", progress=False)
    logs = "\n".join(p.read_text()[-2000:] for p in sorted((tmp_path / "logs").glob("*.log")))
    assert failures == 0, logs
    dataset = paths.results / "Dataset533_Cnn"
    swin = dataset / "SwinScratchTrainer_5shot_1epochs__nnUNetSwinPlans__3d_fullres" / "fold_0"
    cnn = dataset / f"CNNTrainer_5shot_1epochs__{DEFAULT_PLANS}__3d_fullres" / "fold_0"
    swin_subset = json.loads((swin / "fewshot_subset.json").read_text())
    cnn_subset = json.loads((cnn / "fewshot_subset.json").read_text())
    assert cnn_subset == swin_subset and len(swin_subset["train_subset"]) == 5
    # nnU-Net's own plans and network: planned by its ExperimentPlanner, a plain conv U-Net trained with SGD
    plans = json.loads((paths.preprocessed / "Dataset533_Cnn" / f"{DEFAULT_PLANS}.json").read_text())
    arch = plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"]
    assert arch.endswith("PlainConvUNet")
    record = json.loads((cnn / "nnssl_finetune.json").read_text())
    assert record["protocol"] == "full" and record["baseline"] == DEFAULT_PLANS
    assert record["compute"]["steps"] == 1 and record["compute"]["peak_memory_bytes"] > 0
    assert (cnn / "validation" / "summary.json").is_file()
    # the report reads the CNN fold as the nnunet baseline
    from nnssl.analysis.results import load_results

    tree = load_results(paths.results, raw=paths.raw, preprocessed=None)
    assert sorted({f.method for f in tree.folds}) == ["nnunet", "scratch"]
    assert Path(tree.select("Dataset533_Cnn", next(iter(tree.regimes("Dataset533_Cnn"))), "nnunet")[0].path).is_dir()
