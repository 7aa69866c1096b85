"""Convergence metrics: epochs to 90/95% of the final pseudo-Dice and the normalised area under the EMA curve, with
bootstrap CIs over the runs (folds and k-shot draws) in the report's convergence table."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from nnssl.analysis.convergence import analyse_log, normalised_auc
from nnssl.analysis.report import ReportOptions, build_report
from nnssl.analysis.results import load_results

CT = "Dataset901_PhantomCTOrgans"


def test_normalised_auc_is_the_mean_of_the_curve():
    assert normalised_auc([0.2, 0.4, 0.6, 0.8]) == pytest.approx(0.5)
    assert normalised_auc([0.5, math.nan, 0.7]) == pytest.approx(0.6)  # undefined epochs left out
    assert math.isnan(normalised_auc([]))
    c = analyse_log({"ema_fg_dice": [0.1, 0.5, 0.8, 0.9, 1.0]})
    assert c.auc == pytest.approx(0.66) and c.epochs_to == {0.9: 4, 0.95: 5}


def _run(root, folder, fold, ema):
    fd = root / CT / folder / f"fold_{fold}"
    (fd / "validation").mkdir(parents=True)
    cases = [{"metrics": {"1": {"Dice": 0.5}}, "reference_file": f"/gt/case_{i}.nii.gz",
              "prediction_file": f"/p/case_{i}.nii.gz"} for i in range(3)]
    (fd / "validation" / "summary.json").write_text(json.dumps(
        {"foreground_mean": {"Dice": 0.5}, "mean": {"1": {"Dice": 0.5}}, "metric_per_case": cases}))
    torch.save({"logging": {"ema_fg_dice": list(ema), "mean_fg_dice": list(ema)}}, fd / "checkpoint_final.pth")


def test_convergence_table_has_cis_over_folds_and_draws(tmp_path):
    root = tmp_path / "results"
    curves = {("SwinSSLTrainer_5shot__nnUNetSwinPlans__smit__3d_fullres", "0"): [0.2, 0.6, 0.8, 0.8],
              ("SwinSSLTrainer_5shot__nnUNetSwinPlans__smit__3d_fullres", "1"): [0.4, 0.8, 0.8, 0.8],
              ("SwinSSLTrainer_5shot_draw1__nnUNetSwinPlans__smit__3d_fullres", "0"): [0.1, 0.2, 0.3, 0.8]}
    for (folder, fold), ema in curves.items():
        _run(root, folder, fold, ema)
    tree = load_results(root)
    report, _ = build_report(tree, tmp_path / "out", ReportOptions(n_boot=2000), cka_files=[], attention_files=[])
    table = next(t for t in report.tables() if t.caption.startswith(f"{CT}, 5-shot: convergence"))
    row = dict(zip(table.header, table.rows[0]))
    assert row["runs"] == "3"  # two folds of draw 0 and one fold of draw 1
    aucs = [np.mean(v) for v in curves.values()]  # 0.6, 0.7, 0.35
    mean, ci = row["AUC / epochs"].split(" [")
    assert float(mean) == pytest.approx(np.mean(aucs), abs=1e-3)
    low, high = (float(v) for v in ci.rstrip("]").split(", "))
    assert round(min(aucs), 3) <= low < float(mean) < high <= round(max(aucs), 3)
    # epochs to 90% of final (0.72): 3, 2 and 4 -> mean 3.0 with a CI inside [2, 4]
    assert row["epochs to 90% of final"].startswith("3.0 [")
    assert "95% bootstrap CI over runs" in table.caption
