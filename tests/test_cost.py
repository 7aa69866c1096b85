"""The compute ledger in the report: pretraining/fine-tuning mismatches the trainer records, and the Cost table
(pretraining cost, fine-tuning cost, Dice gain over scratch per pretraining hour, flagged mismatches)."""
from __future__ import annotations

import json

import pytest

from test_report import CT, CT_JSON, D, L, S, _run, _table

from nnssl.analysis.report import ReportOptions, build_report
from nnssl.analysis.results import load_results
from nnssl.finetune.pretrained import pretraining_mismatches
from nnssl.ledger import FINETUNE_RECORD

TARGET = {"spacing": [3.0, 1.0, 1.0], "patch_size": [64, 64, 64], "normalization_schemes": ["CTNormalization"]}


def _ckpt(spacing=(1.5, 1.0, 1.0), crop=(64, 64, 64), schemes=("CTNormalization",)):
    return {"config": {"crop": list(crop)},
            "provenance": {"datasets": [{"dataset_name": "Dataset900_X", "spacing": list(spacing)}],
                           "normalization": {"schemes": list(schemes)}}}


def test_mismatches_name_spacing_normalisation_and_patch_size():
    assert pretraining_mismatches(_ckpt(spacing=(3.02, 1.0, 1.0)), TARGET) == ([], [])  # within 1% per axis
    found, unrecorded = pretraining_mismatches(_ckpt(crop=(96, 96, 96), schemes=("ZScoreNormalization",)), TARGET)
    assert unrecorded == []
    assert found == [
        {"what": "normalisation", "pretraining": ["ZScoreNormalization"], "fine_tuning": ["CTNormalization"]},
        {"what": "spacing", "pretraining": [[1.5, 1.0, 1.0]], "fine_tuning": [3.0, 1.0, 1.0]},
        {"what": "patch size", "pretraining": [96, 96, 96], "fine_tuning": [64, 64, 64]}]
    # an imported checkpoint without provenance or config: nothing to compare, and said so
    assert pretraining_mismatches({}, TARGET) == ([], ["normalisation", "spacing", "patch size"])


def _ledger(hours: float, device: str = "cuda") -> dict:
    count = 1
    return {"version": 1, "wall_seconds": hours * 3600, "steps": 10, "samples_seen": 20, "mean_step_seconds": 1.0,
            "peak_memory_bytes": 10 ** 9, "device": {"type": device, "name": "GPU", "count": count},
            "gpu_hours": hours if device == "cuda" else 0.0, "cpu_core_hours": 0.0 if device == "cuda" else hours}


def _record(fold, **record):
    (fold / FINETUNE_RECORD).write_text(json.dumps(record))


@pytest.fixture
def tree(tmp_path):
    root, raw = tmp_path / "results", tmp_path / "raw"
    (raw / CT).mkdir(parents=True)
    (raw / CT / "dataset.json").write_text(json.dumps(CT_JSON))
    for fold in ("0", "1"):
        _record(_run(root, CT, "SwinScratchTrainer__nnUNetSwinPlans__3d_fullres", fold, {"1": L, "2": S}),
                protocol="full", compute=_ledger(0.5))
        smit = _run(root, CT, "SwinSSLTrainer__nnUNetSwinPlans_smit__3d_fullres", fold, {"1": L + D, "2": S + D})
        _record(smit, protocol="full", compute=_ledger(0.25),
                pretraining={"method": "smit", "compute": _ledger(2.0),
                             "mismatches": [{"what": "spacing", "pretraining": [[1.5, 1.0, 1.0]],
                                             "fine_tuning": [3.0, 1.0, 1.0]}], "unrecorded": []})
    _run(root, CT, "CNNTrainer__nnUNetPlans__3d_fullres", "0", {"1": L, "2": S})  # no record: an older run
    return root, raw


def test_cost_table_gives_costs_gain_per_pretraining_hour_and_flags_mismatches(tree, tmp_path):
    root, raw = tree
    report, paths = build_report(load_results(root, raw=raw, preprocessed=None), tmp_path / "o",
                                 ReportOptions(n_boot=200, seed=0))
    table = _table(report, "Costs from the compute ledgers")
    rows = {r[2]: dict(zip(table.header, r)) for r in table.rows}
    smit, scratch, cnn = rows["smit"], rows["scratch"], rows["nnunet (CNN baseline)"]
    assert smit["pretraining cost"] == "2 GPU-h" and smit["fine-tuning cost (all folds, draws)"] == "0.5 GPU-h"
    assert smit["Dice gain over scratch"] == "0.045 (vs scratch)"  # mean of D on the same cases
    assert smit["gain per pretraining hour"] == "0.0225 per GPU-h"
    assert smit["pretraining vs fine-tuning"] == "spacing: [[1.5, 1.0, 1.0]] vs [3.0, 1.0, 1.0]"
    assert scratch["pretraining cost"] == "none (from scratch)" and scratch["fine-tuning cost (all folds, draws)"] == "1 GPU-h"
    assert scratch["Dice gain over scratch"] == "n/a" and scratch["gain per pretraining hour"] == "-"
    assert cnn["pretraining cost"] == "none (CNN baseline)" and cnn["fine-tuning cost (all folds, draws)"] == "not recorded"
    text = paths["markdown"].read_text()
    assert "Pretraining and fine-tuning differ in spacing, intensity normalisation or patch size for smit on" in text
