"""The report with CNN baselines and adaptation-ladder rungs beside the Swin runs: marked rows, their own test
families, and a headline that stays the SSL-vs-scratch family of full fine-tuning."""
from __future__ import annotations

import json

import numpy as np
import pytest

from test_report import CT, CT_JSON, D, L, S, _run, _table

from nnssl.analysis.report import ReportOptions, build_report
from nnssl.analysis.results import load_results
from nnssl.cli.report import main


@pytest.fixture
def tree(tmp_path):
    root, raw = tmp_path / "results", tmp_path / "raw"
    (raw / CT).mkdir(parents=True)
    (raw / CT / "dataset.json").write_text(json.dumps(CT_JSON))
    _run(root, CT, "SwinScratchTrainer__nnUNetSwinPlans__3d_fullres", "0", {"1": L, "2": S})
    _run(root, CT, "SwinSSLTrainer__nnUNetSwinPlans_smit__3d_fullres", "0", {"1": L + D, "2": S + D})
    # ladder rungs of both: frozen (random floor for scratch) and layer-wise lr decay
    _run(root, CT, "SwinScratchTrainer_frozen__nnUNetSwinPlans__3d_fullres", "0", {"1": L - 0.4, "2": S - 0.4})
    _run(root, CT, "SwinSSLTrainer_frozen__nnUNetSwinPlans_smit__3d_fullres", "0", {"1": L - 0.2 + D, "2": S - 0.2 + D})
    _run(root, CT, "SwinSSLTrainer_llrd75__nnUNetSwinPlans_smit__3d_fullres", "0", {"1": L + 2 * D, "2": S + 2 * D})
    # the CNN baseline, better than every Swin run
    _run(root, CT, "CNNTrainer__nnUNetPlans__3d_fullres", "0", {"1": L + 0.1 + D[::-1], "2": S + 0.1 + D[::-1]})
    return root, raw


def _report(tree, tmp_path, **opts):
    root, raw = tree
    return build_report(load_results(root, raw=raw, preprocessed=None), tmp_path / "o",
                        ReportOptions(n_boot=300, seed=0, **opts))


def test_headline_keeps_full_fine_tuning_and_leaves_the_cnn_out(tree, tmp_path):
    report, _ = _report(tree, tmp_path)
    head = report.tables()[0]
    assert head.caption.startswith("Mean foreground Dice per method against the from-scratch runs")
    assert [(r[1], r[2]) for r in head.rows] == [("all cases", "smit")]  # one comparison: the family of one


def test_cnn_baseline_rows_are_marked_and_tested_in_their_own_family(tree, tmp_path):
    report, paths = _report(tree, tmp_path)
    dice = _table(report, f"{CT}, all cases: mean Dice")
    assert "nnunet (CNN baseline)" in [r[0] for r in dice.rows]
    cnn = _table(report, "Every Swin run against nnunet")
    rows = {(r[1], r[2]): dict(zip(cnn.header, r)) for r in cnn.rows}
    # every Swin run (full and ladder rungs, pretrained and scratch) against the CNN of the same shots and budget
    assert set(rows) == {("all cases", "scratch"), ("all cases", "smit"), ("all cases, frozen encoder", "scratch"),
                         ("all cases, frozen encoder", "smit"), ("all cases, layer-wise lr decay 0.75", "smit")}
    smit = rows[("all cases", "smit")]
    assert smit["CNN baseline"] == "nnunet (CNN baseline)" and smit["difference [95% CI]"].startswith("-0.100 [")
    # exact Wilcoxon of 8 negative differences: p = 2/256; Holm over the 5 rows of this family
    assert smit["p (Holm)"] == "0.0391"
    assert "separate from the headline" in paths["markdown"].read_text()
    # the per-regime paired tests leave the CNN out too
    for t in report.tables():
        if "Holm-corrected within this table" in t.caption:
            assert not any("nnunet" in r[0] for r in t.rows)


def test_ladder_compares_each_rung_with_scratch_of_the_same_protocol(tree, tmp_path):
    report, _ = _report(tree, tmp_path)
    ladder = _table(report, f"{CT}, all cases: mean foreground Dice [95% CI] per adaptation protocol")
    assert ladder.header == ["method", "full fine-tuning", "frozen encoder", "layer-wise lr decay 0.75"]
    scratch = dict(zip(ladder.header, ladder.rows[0]))
    assert scratch["method"] == "scratch" and scratch["layer-wise lr decay 0.75"] == "-"
    tests = _table(report, "Each pretrained method against the from-scratch runs of the same encoder and protocol")
    assert [(r[1], r[2], r[4]) for r in tests.rows] == [("all cases, frozen encoder", "smit", "scratch")]
    assert tests.rows[0][6].startswith("0.245 [")  # 0.2 + mean(D): frozen pretrained over frozen random


def test_a_reference_without_runs_is_a_note_not_a_choice(tree, tmp_path):
    report, _ = _report(tree, tmp_path, cnn_reference="resenc_l")
    notes = [b.text for b in report.blocks if type(b).__name__ == "Para" and b.note]
    assert any("No run of the reference CNN baseline `resenc_l`" in n for n in notes)
    assert not any(t.caption.startswith("Every Swin run against") for t in report.tables())


def test_cli_refuses_an_unknown_reference(tree, tmp_path, capsys):
    root, raw = tree
    assert main([str(root), "--out", str(tmp_path / "o"), "--raw", str(raw), "--no-logs",
                 "--cnn-reference", "unet3d"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --cnn-reference 'unet3d' is not a CNN baseline")


def test_tidy_csv_has_the_protocol(tree, tmp_path):
    import csv

    _, paths = _report(tree, tmp_path)
    rows = list(csv.DictReader(paths["csv"].open()))
    assert {r["protocol"] for r in rows} == {"full", "frozen", "llrd75"}
    assert {r["method"] for r in rows if r["trainer"] == "CNNTrainer"} == {"nnunet"}
    assert np.isfinite(float(rows[0]["dice"]))


def test_few_shot_gap_pairs_runs_of_the_same_protocol_and_marks_the_cnn(tree, tmp_path):
    root, _ = tree
    _run(root, CT, "SwinScratchTrainer_frozen_5shot__nnUNetSwinPlans__3d_fullres", "0", {"1": L - 0.5, "2": S - 0.5})
    _run(root, CT, "CNNTrainer_5shot__nnUNetPlans__3d_fullres", "0", {"1": L, "2": S})
    report, _ = _report(tree, tmp_path)
    gap = _table(report, "gap % =")
    rows = sorted((r[1], r[2], r[4]) for r in gap.rows)
    # the frozen 5-shot scratch run is paired with the frozen all-cases run, never with full fine-tuning
    frozen_all = f"{np.mean(np.concatenate([L, S]) - 0.4):.3f}"
    assert rows == [("nnunet (CNN baseline)", "5-shot", f"{np.mean(np.concatenate([L + D, S + D]) + 0.1):.3f}"),
                    ("scratch", "5-shot, frozen encoder", frozen_all)]
