"""The report, built from a small fabricated nnU-Net results tree whose numbers are known by construction."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from nnssl.analysis.cka import write_cka_json
from nnssl.analysis.report import ReportOptions, build_report
from nnssl.analysis.results import load_results, parse_run_name
from nnssl.cli.report import main

CT = "Dataset901_PhantomCTOrgans"
MR = "Dataset902_PhantomMRIOrgans"
L = np.array([0.60, 0.65, 0.70, 0.75, 0.80, 0.85, 0.90, 0.95])  # scratch liver, mean 0.775
S = L - 0.2  # scratch spleen, mean 0.575 -> per-case foreground mean 0.675
D = np.arange(1, 9) / 100.0  # smit's per-case improvement, mean 0.045, all positive and distinct
D2 = np.array([0.02, -0.01, 0.03, -0.04, 0.05, 0.06, -0.07, 0.08])  # simmim's: mixed signs, mean 0.015
CT_JSON = {
    "channel_names": {"0": "CT"},
    "labels": {"background": 0, "liver": 1, "spleen": 2},
    "file_ending": ".nii.gz",
    "numTraining": 8,
    "nnssl_structure_groups": {"large": ["liver"], "small": ["spleen"]},
}
MR_JSON = {"channel_names": {"0": "T2"}, "labels": {"background": 0, "liver": 1}, "file_ending": ".nii.gz",
           "numTraining": 6}


def _summary(per_label: dict[str, np.ndarray]) -> dict:
    n = len(next(iter(per_label.values())))
    cases = [{"metrics": {k: {"Dice": float(v[i]), "IoU": 0.0} for k, v in per_label.items()},
              "prediction_file": f"/x/validation/case_{i:03d}.nii.gz",
              "reference_file": f"/data/gt_segmentations/case_{i:03d}.nii.gz"} for i in range(n)]
    means = {k: {"Dice": float(np.mean(v))} for k, v in per_label.items()}
    return {"foreground_mean": {"Dice": float(np.mean([m["Dice"] for m in means.values()]))},
            "mean": means, "metric_per_case": cases}


def _run(root: Path, dataset: str, folder: str, fold: str, per_label: dict | None, ds_json: dict | None = None,
         ema: list | None = None, ckpt: str = "checkpoint_final.pth") -> Path:
    fd = root / dataset / folder / f"fold_{fold}"
    (fd / "validation").mkdir(parents=True, exist_ok=True)
    if ds_json is not None:
        (root / dataset / folder / "dataset.json").write_text(json.dumps(ds_json))
    if per_label is not None:
        (fd / "validation" / "summary.json").write_text(json.dumps(_summary(per_label)))
    if ema is not None:
        import torch

        n = len(ema)
        log = {"mean_fg_dice": list(ema), "ema_fg_dice": list(ema), "train_losses": [1.0] * n,
               "val_losses": [1.0] * n, "lrs": [0.01] * n, "dice_per_class_or_region": [[0.5]] * n,
               "epoch_start_timestamps": [10.0 * i for i in range(n)],
               "epoch_end_timestamps": [10.0 * i + 8.0 for i in range(n)]}
        torch.save({"logging": log}, fd / ckpt)
    return fd


@pytest.fixture
def tree_root(tmp_path):
    root, raw = tmp_path / "results", tmp_path / "raw"
    (raw / CT).mkdir(parents=True)
    (raw / CT / "dataset.json").write_text(json.dumps(CT_JSON))
    _run(root, CT, "SwinScratchTrainer__nnUNetSwinPlans__3d_fullres", "0", {"1": L, "2": S},
         ema=[0.1, 0.4, 0.7, 0.75, 0.78, 0.8])
    _run(root, CT, "SwinSSLTrainer__nnUNetSwinPlans_smit__3d_fullres", "0", {"1": L + D, "2": S + D},
         ema=[0.5, 0.7, 0.78, 0.8, 0.8, 0.8])
    _run(root, CT, "SwinSSLTrainer__nnUNetSwinPlans_simmim__3d_fullres", "0", {"1": L + D2, "2": S + D2})
    _run(root, CT, "SwinScratchTrainer_5shot__nnUNetSwinPlans__3d_fullres", "0", {"1": L - 0.3, "2": S - 0.3},
         ema=[0.1, 0.2, 0.3], ckpt="checkpoint_latest.pth")
    _run(root, CT, "SwinSSLTrainer_5shot__nnUNetSwinPlans_smit__3d_fullres", "0", {"1": L + D - 0.1, "2": S + D - 0.1})
    _run(root, CT, "SwinSSLTrainer__nnUNetSwinPlans_smit__3d_fullres", "1", None)  # unfinished fold
    _run(root, CT, "nnUNetTrainer__nnUNetPlans__3d_fullres", "0", {"1": L})  # not part of the benchmark
    m = np.array([0.5, 0.55, 0.6, 0.65, 0.7, 0.6])
    _run(root, MR, "SwinScratchTrainer__nnUNetSwinPlans__3d_fullres", "0", {"1": m}, ds_json=MR_JSON)
    _run(root, MR, "SwinSSLTrainer__nnUNetSwinPlans_smit__3d_fullres", "0", {"1": m + 0.1}, ds_json=MR_JSON)
    write_cka_json(root / "cka" / f"{MR}_smit_all.json", dataset=MR, method="smit", shots="all",
                   matrices={"linear": np.diag([0.91, 0.82, 0.73]) + 0.05}, n_examples=6)
    return root, raw


def _table(report, caption_start):
    tabs = [t for t in report.tables() if t.caption.startswith(caption_start)]
    assert len(tabs) == 1, [t.caption for t in report.tables()]
    return tabs[0]


def _row(table, first):
    rows = [r for r in table.rows if r[0] == first]
    assert len(rows) == 1, table.rows
    return dict(zip(table.header, rows[0]))


def test_parse_run_name():
    r = parse_run_name("SwinSSLTrainer_5shot_2epochs__nnUNetSwinPlans_smit__3d_fullres")
    assert (r.method, r.shots, r.epochs, r.configuration) == ("smit", "5", 2, "3d_fullres")
    r = parse_run_name("SwinScratchTrainer__nnUNetSwinPlans__3d_fullres")
    assert (r.method, r.shots, r.epochs) == ("scratch", "all", None)
    for bad, why in [("SwinSSLTrainer__nnUNetSwinPlans__3d_fullres", "no pretrained method"),
                     ("SwinScratchTrainer__nnUNetSwinPlans_smit__3d_fullres", "ambiguous"),
                     ("nnUNetTrainer__nnUNetPlans__3d_fullres", "does not match"),
                     ("SwinSSLTrainer__nnUNetPlans__3d_fullres", "neither"), ("fold_0", "not a")]:
        with pytest.raises(ValueError, match=why):
            parse_run_name(bad)


def test_load_results_parses_the_tree(tree_root):
    root, raw = tree_root
    tree = load_results(root, raw=raw, preprocessed=None)
    assert tree.dataset_names() == [CT, MR]
    assert len(tree.folds) == 7
    ignored = dict(tree.ignored)
    assert "not finished" in ignored[f"{CT}/SwinSSLTrainer__nnUNetSwinPlans_smit__3d_fullres/fold_1"]
    assert "does not match" in ignored[f"{CT}/nnUNetTrainer__nnUNetPlans__3d_fullres"]
    ct = tree.datasets[CT]
    assert ct.modality == "CT" and ct.source == raw / CT / "dataset.json"
    assert ct.groups == {"large": ["liver"], "small": ["spleen"]}
    assert tree.datasets[MR].modality == "MRI"  # found via the model folder's copy of dataset.json
    f = [x for x in tree.folds if x.dataset == CT and x.method == "scratch" and x.run.shots == "all"][0]
    assert f.cases[0] == "case_000"
    np.testing.assert_allclose(f.fg_case_dice(), L - 0.1)
    assert f.logging["ema_fg_dice"][-1] == 0.8 and f.logging_source == "checkpoint_final.pth"
    latest = [x for x in tree.folds if x.dataset == CT and x.method == "scratch" and x.run.shots == "5"][0]
    assert latest.logging_source == "checkpoint_latest.pth" and "unfinished" in latest.notes[0]


def test_report_tables_show_the_known_numbers(tree_root, tmp_path):
    root, raw = tree_root
    tree = load_results(root, raw=raw, preprocessed=None)
    out = tmp_path / "out"
    report, paths = build_report(tree, out, ReportOptions(n_boot=500, seed=0))

    dice = _table(report, f"{CT}, all cases: mean Dice")
    scratch, smit = _row(dice, "scratch"), _row(dice, "smit")
    assert scratch["liver"].startswith("0.775 [") and scratch["spleen"].startswith("0.575 [")
    assert scratch["foreground"].startswith("0.675 [") and scratch["nnU-Net fg mean"] == "0.675"
    assert scratch["cases"] == "8" and scratch["folds"] == "0"
    assert smit["liver"].startswith("0.820 [") and smit["foreground"].startswith("0.720 [")
    lo, hi = (float(v) for v in smit["foreground"][7:-1].split(", "))
    assert lo < 0.720 < hi
    assert _row(_table(report, f"{CT}, 5-shot: mean Dice"), "scratch")["foreground"].startswith("0.375 [")

    # smit: 8 positive, distinct differences -> W = 0, exact p = 2 / 2^8 = 0.0078125. simmim: W- = 1 + 4 + 7 = 12,
    # p > 0.1. Holm over the 2 tests: smit's p is the smallest -> 2 * 0.0078125 = 0.015625; simmim's stays its own.
    vs = _table(report, f"{CT}, all cases: each method vs scratch")
    sig, sig2 = _row(vs, "smit vs scratch"), _row(vs, "simmim vs scratch")
    assert sig["pairs"] == "8" and sig["mean diff (A-B)"] == "0.045" and sig["W"] == "0.0"
    assert sig["p"] == "0.0078" and sig["p (Holm)"] == "0.0156" and sig["sig."] == "*"
    assert sig2["W"] == "12.0" and sig2["mean diff (A-B)"] == "0.015" and sig2["p"] == sig2["p (Holm)"]
    assert sig2["sig."] == "ns"
    # best (smit) vs each other: vs simmim only 4 non-zero differences (the other 4 are identical) -> noted
    best = _table(report, f"{CT}, all cases: best method (smit) vs each other")
    assert _row(best, "smit vs simmim")["pairs"] == "8" and "unreachable" in _row(best, "smit vs simmim")["note"]
    # with two methods the best-vs-others tests equal the vs-baseline ones: stated, not repeated
    assert not [t for t in report.tables() if t.caption.startswith(f"{MR}, all cases: best method")]
    summary = _table(report, "Best method per task")
    srow = [r for r in summary.rows if r[:2] == [CT, "all cases"]][0]
    assert srow[2:] == ["smit", "0.720", "0.675", "0.045", "0.0156", "*"]

    groups = _table(report, f"{CT}: mean Dice of each group")
    assert groups.header[:4] == ["method", "regime", "large", "small"]
    g = [r for r in groups.rows if r[:2] == ["scratch", "all cases"]][0]
    assert g[2].startswith("0.775 [") and g[3].startswith("0.575 [")
    assert any("no structure groups" in b.text for b in report.blocks if hasattr(b, "note") and b.note)

    mod = _table(report, "Foreground Dice averaged over tasks")
    rows = {(r[0], r[1], r[2]): r for r in mod.rows}
    assert rows[("CT", "all cases", "scratch")][4].startswith("0.675 [")
    assert rows[("MRI", "all cases", "smit")][4].startswith("0.700 [")

    conv = _table(report, f"{CT}, all cases: convergence")
    c_scr, c_smit = _row(conv, "scratch"), _row(conv, "smit")
    assert c_scr["final EMA pseudo-Dice"] == "0.800" and c_scr["epochs trained"] == "6"
    assert c_scr["epochs to 90% of final"] == "4.0" and c_scr["epochs to 95% of final"] == "5.0"
    assert c_smit["epochs to 90% of final"] == "3.0" and c_scr["s/epoch"] == "8.0"

    gap = _table(report, "gap % =")
    gaps = {r[1]: dict(zip(gap.header, r)) for r in gap.rows}
    assert gaps["scratch"]["Dice all"] == "0.675" and gaps["scratch"]["Dice k-shot"] == "0.375"
    assert gaps["scratch"]["gap % [CI]"].startswith("44.4")  # (0.675 - 0.375) / 0.675
    assert gaps["smit"]["gap % [CI]"].startswith("13.9")  # (0.720 - 0.620) / 0.720
    assert gaps["smit"]["regime"] == "5-shot"

    cka = _table(report, "CKA between")
    assert cka.rows[0][:5] == [MR, "smit", "all cases", "0", "linear"]
    assert cka.rows[0][6] == "0.96 / 0.87 / 0.78"

    md = paths["markdown"].read_text()
    assert "0.775 [" in md and "44.4" in md and "![" in md
    for line in md.splitlines():
        if line.startswith("!["):
            assert (out / line.split("](")[1].rstrip(")")).is_file()
    page = paths["html"].read_text()
    n_figs = md.count("![")
    assert page.count("src='data:image/png;base64,") == n_figs >= 5
    assert "src='figures" not in page and "0.775 [" in page
    with open(paths["csv"]) as fh:
        recs = list(csv.DictReader(fh))
    assert len(recs) == 5 * 8 * 3 + 2 * 6 * 2  # CT: 5 runs x 8 cases x (2 labels + fg); MRI: 2 x 6 x (1 + fg)
    assert {r["method"] for r in recs} == {"scratch", "smit", "simmim"}


def test_sections_degrade_with_notes(tmp_path):
    root = tmp_path / "results"
    _run(root, CT, "SwinScratchTrainer__nnUNetSwinPlans__3d_fullres", "0", {"1": L}, ds_json=CT_JSON)
    report, paths = build_report(load_results(root, raw=tmp_path / "none", preprocessed=None), tmp_path / "o",
                                 ReportOptions(n_boot=100))
    notes = " ".join(b.text for b in report.blocks if getattr(b, "note", False))
    for phrase in ("at least two methods", "needs both", "No training logs", "k-shot run", "No CKA results"):
        assert phrase in notes
    md = paths["markdown"].read_text()
    assert "0.775 [" in md  # the Dice table is still there

    empty = tmp_path / "empty"
    empty.mkdir()
    report, _ = build_report(load_results(empty), tmp_path / "o2", ReportOptions(n_boot=10))
    assert any("No finished nnU-Net runs" in b.text for b in report.blocks if getattr(b, "note", False))


def test_cli(tree_root, tmp_path, capsys):
    root, raw = tree_root
    out = tmp_path / "cli_out"
    assert main([str(root), "--out", str(out), "--bootstrap", "200", "--seed", "1", "--raw", str(raw)]) == 0
    assert (out / "report.html").is_file() and (out / "report.md").is_file() and (out / "figures").is_dir()
    printed = capsys.readouterr().out
    assert "report:" in printed and "ignored" in printed

    # override groups with a typo: the report still builds, the problem is named
    gfile = tmp_path / "groups.json"
    gfile.write_text(json.dumps({"901": {"small": ["kidney"]}}))
    assert main([str(root), "--out", str(tmp_path / "o3"), "--bootstrap", "50", "--raw", str(raw),
                 "--groups", str(gfile), "--no-logs"]) == 0
    err = capsys.readouterr().err
    assert "kidney" in err
    assert "structure groups unavailable" in (tmp_path / "o3" / "report.md").read_text()

    assert main([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([str(root), "--bootstrap", "0"]) == 2
    (tmp_path / "bad.json").write_text("{")
    assert main([str(root), "--groups", str(tmp_path / "bad.json")]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_reads_summary_written_by_nnunet_itself(tmp_path):
    """Region keys, int keys and NaN Dice exactly as nnU-Net's own save_summary_json writes them."""
    from nnunetv2.evaluation.evaluate_predictions import save_summary_json

    from nnssl.analysis.dice_stats import label_keys
    from nnssl.analysis.results import read_summary

    per_case = [{"metrics": {(1, 2): {"Dice": 0.9}, 3: {"Dice": float("nan")}}, "reference_file": "/gt/BraTS_001.nii.gz",
                 "prediction_file": "/pred/BraTS_001.nii.gz"},
                {"metrics": {(1, 2): {"Dice": 0.7}, 3: {"Dice": 0.5}}, "reference_file": "/gt/BraTS_002.nii.gz",
                 "prediction_file": "/pred/BraTS_002.nii.gz"}]
    results = {"metric_per_case": per_case, "mean": {(1, 2): {"Dice": 0.8}, 3: {"Dice": 0.5}},
               "foreground_mean": {"Dice": 0.65}}
    save_summary_json(results, str(tmp_path / "summary.json"))
    cases, dice, means, fg = read_summary(tmp_path / "summary.json", ".nii.gz")
    assert cases == ["BraTS_001", "BraTS_002"]
    assert set(dice) == {"(1, 2)", "3"}
    np.testing.assert_allclose(dice["(1, 2)"], [0.9, 0.7])
    assert np.isnan(dice["3"][0]) and dice["3"][1] == 0.5
    assert means == {"(1, 2)": 0.8, "3": 0.5} and fg == 0.65
    names = label_keys({"labels": {"background": 0, "whole tumour": [1, 2], "enhancing": 3}})
    assert names["(1, 2)"] == "whole tumour" and names["3"] == "enhancing"


def test_headline_is_the_first_table_and_corrects_over_all_its_comparisons(tree_root, tmp_path):
    root, raw = tree_root
    report, paths = build_report(load_results(root, raw=raw, preprocessed=None), tmp_path / "o",
                                 ReportOptions(n_boot=500, seed=0))
    assert report.tables()[0].caption.startswith("Mean foreground Dice per method against the from-scratch runs")
    head = report.tables()[0]
    rows = {(r[0], r[1], r[2]): dict(zip(head.header, r)) for r in head.rows}
    # smit (CT all, CT 5-shot, MR all) and simmim (CT all): four comparisons, Holm over all four
    assert set(rows) == {(CT, "all cases", "smit"), (CT, "all cases", "simmim"), (CT, "5-shot", "smit"),
                         (MR, "all cases", "smit")}
    smit = rows[(CT, "all cases", "smit")]
    assert smit["baseline"] == "scratch" and smit["difference [95% CI]"].startswith("0.045 [")
    # the per-regime table corrects over 2 tests (0.0156); the headline over 4: 4 x 0.0078 = 0.0312
    assert smit["p (Holm)"] == "0.0312" and smit["sig."] == "*"
    page = paths["html"].read_text()
    assert page.index("<table>") < page.index("Datasets") and page.index("Headline") < page.index("<table>")
    sentence = next(b.text for b in report.blocks if type(b).__name__ == "Para" and "Holm's correction" in b.text)
    assert sentence.startswith("2 of 4 differences") and f"smit on {CT} (5-shot" in sentence
    # what the design could detect: 8 CT cases reach Holm's level over 4 tests, the 6 MRI cases never can
    power = next(b.text for b in report.blocks if type(b).__name__ == "Para" and "pooled SD" in b.text)
    assert "with 8 cases" in power and "fewer than 8 cases can never reach significance" in power


def test_repeated_draws_are_aggregated_per_case_not_pooled(tmp_path):
    """Three 5-shot draws validate on the same 8 cases: CIs and tests count 8 cases, the spread shows 3 draws."""
    root = tmp_path / "results"
    for draw, shift in ((0, 0.0), (1, 0.02), (2, -0.02)):
        suffix = f"_draw{draw}" if draw else ""
        _run(root, CT, f"SwinScratchTrainer_5shot{suffix}__nnUNetSwinPlans__3d_fullres", "0", {"1": L - 0.3 + shift},
             ds_json=CT_JSON)
        _run(root, CT, f"SwinSSLTrainer_5shot{suffix}__nnUNetSwinPlans__smit__3d_fullres", "0",
             {"1": L - 0.3 + shift + D}, ds_json=CT_JSON)
    tree = load_results(root, preprocessed=None)
    assert sorted({f.run.draw for f in tree.folds}) == [0, 1, 2] and len(tree.regimes(CT)) == 1
    report, _ = build_report(tree, tmp_path / "o", ReportOptions(n_boot=300, seed=0))
    dice = _table(report, f"{CT}, 5-shot: mean Dice")
    scratch = _row(dice, "scratch")
    assert scratch["cases"] == "8" and scratch["liver"].startswith("0.475 [")
    assert scratch["draws: mean ± SD"] == "0.475 ± 0.020 (3)"
    vs = _row(_table(report, f"{CT}, 5-shot: each method vs scratch"), "smit vs scratch")
    assert vs["pairs"] == "8" and vs["mean diff (A-B)"] == "0.045"  # per case, averaged over the 3 draws


@pytest.mark.parametrize("shots, regime", [("_5shot", "5-shot"), ("", "all cases")])
def test_draws_that_disagree_are_not_significant_in_the_headline_or_the_paired_tests(tmp_path, shots, regime):
    """smit beats scratch on every case once the three draws are averaged (a Wilcoxon over those 8 case means gives
    p = 2/256), but by +0.06, -0.05 and +0.01 in the three draws: the draws' spread makes the difference uncertain,
    and the p-value must say so as the CI of the crossed draws x cases model does. The same holds for 5-shot draws
    and for repeated all-cases runs (``SwinSSLTrainer_draw<r>``)."""
    root = tmp_path / "results"
    for draw, (shift, gain) in enumerate(((0.0, 0.06), (0.02, -0.05), (-0.02, 0.01))):
        suffix = f"_draw{draw}" if draw else ""
        _run(root, CT, f"SwinScratchTrainer{shots}{suffix}__nnUNetSwinPlans__3d_fullres", "0", {"1": L - 0.3 + shift},
             ds_json=CT_JSON)
        _run(root, CT, f"SwinSSLTrainer{shots}{suffix}__nnUNetSwinPlans__smit__3d_fullres", "0",
             {"1": L - 0.3 + shift + gain + D / 10}, ds_json=CT_JSON)
    report, _ = build_report(load_results(root, preprocessed=None), tmp_path / "o", ReportOptions(n_boot=2000, seed=0))
    head = report.tables()[0]
    row = dict(zip(head.header, head.rows[0]))
    low, high = (float(v) for v in row["difference [95% CI]"].split("[")[1].rstrip("]").split(","))
    assert low < 0 < high and row["cases"] == "8"
    assert float(row["p (Holm)"]) > 0.05 and row["sig."] == "ns" and "3 draws, 8 cases" in row["note"]
    vs = _row(_table(report, f"{CT}, {regime}: each method vs scratch"), "smit vs scratch")
    assert vs["W"].startswith("t=") and float(vs["p"]) > 0.05 and vs["sig."] == "ns"
    assert vs["mean diff (A-B)"] == "0.011"  # (0.06 - 0.05 + 0.01) / 3 + mean(D) / 10 = 0.0067 + 0.0045
    # the design's power with the draws as the unit: per-draw differences 0.0645, -0.0455, 0.0145 (SD 0.055)
    power = next(b.text for b in report.blocks
                 if type(b).__name__ == "Para" and "repeated draws" in b.text)
    assert "pooled SD of 0.055" in power and "with 3 draws" in power


def test_pretrained_runs_of_another_encoder_are_compared_with_scratch_runs_of_that_encoder(tmp_path):
    root = tmp_path / "results"
    enc = {"feature_size": 12, "depths": [2, 2, 2, 2], "num_heads": [3, 6, 12, 24], "window_size": 4}
    big = {**enc, "feature_size": 48, "window_size": 7}
    runs = [("SwinScratchTrainer__nnUNetSwinPlans__3d_fullres", enc, 0.0),
            ("SwinSSLTrainer__nnUNetSwinPlans__smit__3d_fullres", enc, 0.01),
            ("SwinScratchTrainer__nnUNetSwinPlans__scratch-f48-d2222-h3_6_12_24-w7__3d_fullres", big, 0.1),
            ("SwinSSLTrainer__nnUNetSwinPlans__public__3d_fullres", big, 0.12)]
    for folder, encoder, shift in runs:
        fd = _run(root, CT, folder, "0", {"1": L + shift}, ds_json=CT_JSON)
        (fd.parent / "plans.json").write_text(json.dumps({"configurations": {"3d_fullres": {"nnssl_encoder": encoder}}}))
    report, _ = build_report(load_results(root, preprocessed=None), tmp_path / "o", ReportOptions(n_boot=200))
    head = report.tables()[0]
    baseline = {r[2]: r[4] for r in head.rows}
    assert baseline == {"smit": "scratch", "public": "scratch-f48-d2222-h3_6_12_24-w7"}


def test_result_finders_skip_the_settings_records_beside_the_results(tmp_path):
    """The grid writes .<result>.nnssl_job.json beside every CKA, attention and probe JSON: not a result."""
    from nnssl.analysis.report import find_cka_files, find_probe_files

    (tmp_path / "901__smit.json").write_text("{}")
    (tmp_path / ".901__smit.json.nnssl_job.json").write_text("{}")
    assert find_cka_files(tmp_path, tmp_path / "missing") == [(tmp_path / "901__smit.json").resolve()]
    assert find_probe_files(tmp_path) == [(tmp_path / "901__smit.json").resolve()]
