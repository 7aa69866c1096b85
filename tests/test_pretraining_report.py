"""The report's Pretraining section: reading log.jsonl, the first-vs-last-window loss statistic and its verdict, and
the probe tables, on synthetic run folders whose answers are known by construction."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from nnssl.analysis import pretraining as pre
from nnssl.analysis.probe import write_probe_json
from nnssl.analysis.report import ReportOptions, build_report
from nnssl.analysis.results import load_results
from nnssl.cli.report import main


def _run(folder, method: str, losses, parts: dict[str, np.ndarray] | None = None, steps: int | None = None,
         tail: str = "") -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"method": method, "steps": steps or len(losses), "seed": 0}))
    lines = []
    for i, v in enumerate(losses):
        rec = {"step": i, "lr": 1e-4, "loss": float(v)}
        for k, p in (parts or {}).items():
            rec[f"loss/{k}"] = float(p[i])
        lines.append(json.dumps(rec))
    (folder / "log.jsonl").write_text("\n".join(lines) + "\n" + tail)


def _falling(n: int = 400, seed: int = 0) -> np.ndarray:
    t = np.arange(n)
    return 1.0 + 2.0 * np.exp(-t / 100) + 0.05 * np.random.default_rng(seed).normal(size=n)


def _flat(n: int = 400, seed: int = 1) -> np.ndarray:
    return 5.0 + 0.3 * np.random.default_rng(seed).normal(size=n)


def test_read_log_skips_a_partial_last_line_and_keeps_the_last_record_of_a_step(tmp_path):
    f = tmp_path / "log.jsonl"
    f.write_text('{"step": 0, "loss": 3.0}\n\n{"step": 1, "loss": 2.0}\nnot json\n{"step": 1, "loss": 1.5}\n'
                 '{"step": 2, "loss": NaN}\n{"step": 3, "lo')
    log = pre.read_log(f)
    assert [r["step"] for r in log.records] == [0, 1, 2]
    assert log.partial_last_line and log.bad_lines == 1
    steps, loss = log.series("loss")
    assert steps.tolist() == [0, 1] and loss.tolist() == [3.0, 1.5]  # NaN dropped, step 1's last record kept
    f.write_text('{"step": 0, "loss": 3.0}\n{"step": 1, "loss": 2.0}')  # complete, no final newline
    assert not pre.read_log(f).partial_last_line and len(pre.read_log(f).records) == 2


def test_window_statistic_and_verdict():
    falling = pre.window_change(_falling(), n_boot=1000)
    assert falling.verdict == pre.FALLING and falling.window == 40
    assert falling.high < 0 and falling.low < falling.change < falling.high
    first = _falling()[:40].mean()
    assert falling.first == pytest.approx(first) and falling.change == pytest.approx((falling.last - first) / first)

    flat = pre.window_change(_flat(), n_boot=1000)
    assert flat.verdict == pre.FLAT and flat.low < 0 < flat.high
    rising = pre.window_change(_flat() + np.linspace(0, 3, 400), n_boot=1000)
    assert rising.verdict == pre.FLAT and rising.low > 0
    # a 1% decrease under noise of 6%: the point estimate falls, but not beyond its CI
    small = pre.window_change(_flat() - np.linspace(0, 0.05, 400), n_boot=1000)
    assert small.change < 0 and small.verdict == pre.FLAT
    assert pre.window_change([3.0, 2.0, 1.0]).verdict == pre.TOO_SHORT  # one step per window: no interval
    assert pre.window_change([]).verdict == pre.TOO_SHORT


def test_block_bootstrap_widens_the_interval_of_correlated_steps():
    """Neighbouring steps of an AR(1) series are correlated: resampling single steps understates the spread."""
    rng = np.random.default_rng(0)
    x = np.zeros(1000)
    for i in range(1, x.size):
        x[i] = 0.9 * x[i - 1] + rng.normal()
    iid = pre.block_bootstrap_means(x, 1, 2000, np.random.default_rng(1)).std()
    block = pre.block_bootstrap_means(x, 10, 2000, np.random.default_rng(1)).std()
    assert block > 1.8 * iid
    assert pre.block_bootstrap_means(x, 10, 100, np.random.default_rng(1), chunk=50).shape == (100,)  # in chunks


def test_find_runs_accepts_a_run_folder_or_a_folder_of_runs(tmp_path):
    _run(tmp_path / "study" / "simmim", "simmim", _falling())
    _run(tmp_path / "study" / "dino", "dino", _flat())
    (tmp_path / "study" / "not_a_run").mkdir()
    assert [p.name for p in pre.find_runs(tmp_path / "study")] == ["dino", "simmim"]
    assert pre.find_runs(tmp_path / "study" / "simmim") == [tmp_path / "study" / "simmim"]
    assert pre.find_runs(tmp_path / "missing") == []


def _probe(path, method: str, diff_low: float, linear_low: float | None = None, stage: int = 2) -> None:
    def est(v, lo, hi):
        return {"value": v, "low": lo, "high": hi}

    def entry(low):
        return {"pretrained": {"balanced_accuracy": est(0.9, 0.85, 0.95), "macro_f1": est(0.6, 0.5, 0.7)},
                "random": {"balanced_accuracy": est(0.7, 0.6, 0.8), "macro_f1": est(0.3, 0.2, 0.4)},
                "difference": {"balanced_accuracy": est(0.2, low, 0.3), "macro_f1": est(0.3, 0.2, 0.4)}}

    write_probe_json(path, dataset="Dataset901_PhantomCTOrgans", method=method, stage=stage, stride=2 ** (stage + 1),
                     probes={"knn": entry(diff_low), "linear": entry(diff_low if linear_low is None else linear_low)},
                     classes={"0": "background", "1": "liver"}, tokens={"train": 100, "test": 50})


def test_section_with_runs_and_probes(tmp_path):
    study = tmp_path / "nnssl_results" / "study"
    _run(study / "simmim", "simmim", _falling(), parts={"rec": _falling(seed=3) / 2})
    _run(study / "dino", "dino", _flat())
    # interrupted while writing: 300 of 400 steps, partial last line
    _run(study / "simclr", "simclr", _flat()[:300], steps=400, tail='{"step": 300, "lo')
    probes = tmp_path / "probe"
    _probe(probes / "dino.json", "dino", diff_low=0.05)  # beats random
    _probe(probes / "simclr.json", "simclr", diff_low=-0.05)  # CI includes 0
    (probes / "broken.json").write_text("{")
    results = tmp_path / "results"
    results.mkdir()
    report, paths = build_report(load_results(results), tmp_path / "out", ReportOptions(n_boot=500),
                                 pretraining_dirs=[study], probe_files=sorted(probes.glob("*.json")))
    start = next(i for i, b in enumerate(report.blocks) if getattr(b, "text", None) == "Pretraining")
    summary = report.blocks[start + 1]
    assert summary.header == ["method", "loss", "frozen-feature probe", "learning signal"]
    rows = {r[0]: r for r in summary.rows}
    assert rows["simmim"][1:] == ["falling", "n/a", "yes"]
    assert rows["dino"][1] == "flat/rising" and rows["dino"][2].startswith("beats random on Dataset901")
    assert rows["dino"][3] == "yes"
    assert rows["simclr"][1] == "flat/rising" and rows["simclr"][2] == "does not beat random"
    assert rows["simclr"][3] == "no"
    loss_table = next(t for t in report.tables() if "verdict" in t.header)
    by_run = {r[0]: r for r in loss_table.rows}
    assert by_run["simclr"][2] == "300 / 400" and "partial last line" in by_run["simclr"][-1]
    assert "unfinished" in by_run["simclr"][-1]
    assert by_run["simmim"][6].startswith("-") and "[" in by_run["simmim"][6]
    md = paths["markdown"].read_text()
    assert "moving-block-bootstrap" in md and "Frozen-feature probe: dino" in md and "Skipped broken.json" in md
    figures = sorted(p.name for p in (tmp_path / "out" / "figures").glob("pretraining_*.png"))
    assert figures == ["pretraining_study_dino.png", "pretraining_study_simclr.png", "pretraining_study_simmim.png"]


def test_design_experiment_runs_are_methods_of_their_own(tmp_path):
    """The grid's run folder smit-data25 (method smit in config.json) matches its probe, named smit-data25."""
    study = tmp_path / "nnssl_results" / "study"
    _run(study / "smit", "smit", _flat())
    _run(study / "smit-data25", "smit", _falling())
    _probe(tmp_path / "probe" / "p.json", "smit-data25", diff_low=-0.05)
    results = tmp_path / "results"
    results.mkdir()
    report, _ = build_report(load_results(results), tmp_path / "out", ReportOptions(n_boot=200),
                             pretraining_dirs=[study], probe_files=[tmp_path / "probe" / "p.json"])
    summary = next(t for t in report.tables() if t.header == ["method", "loss", "frozen-feature probe",
                                                              "learning signal"])
    rows = {r[0]: r[1:] for r in summary.rows}
    assert rows == {"smit": ["flat/rising", "n/a", "no"], "smit-data25": ["falling", "does not beat random", "yes"]}


def test_both_probes_must_win_at_the_same_stage(tmp_path):
    _probe(tmp_path / "s1.json", "mocov3", diff_low=0.05, linear_low=-0.05, stage=1)  # k-NN wins at stage 1
    _probe(tmp_path / "s2.json", "mocov3", diff_low=-0.05, linear_low=0.05)  # linear wins at stage 2
    results = tmp_path / "results"
    results.mkdir()
    report, _ = build_report(load_results(results), tmp_path / "o", ReportOptions(n_boot=50),
                             probe_files=[tmp_path / "s1.json", tmp_path / "s2.json"])
    summary = next(t for t in report.tables() if t.header[-1] == "learning signal")
    assert summary.rows == [["mocov3", "n/a", "only one probe beats random (Dataset901_PhantomCTOrgans, "
                                               "Dataset901_PhantomCTOrgans (stage 1))", "no"]]


def test_section_degrades_to_notes(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    report, _ = build_report(load_results(results), tmp_path / "o", ReportOptions(n_boot=50))
    notes = " ".join(b.text for b in report.blocks if getattr(b, "note", False))
    assert "No pretraining run folders given" in notes and "No probe results found" in notes
    report, _ = build_report(load_results(results), tmp_path / "o2", ReportOptions(n_boot=50),
                             pretraining_dirs=[tmp_path / "missing"])
    notes = " ".join(b.text for b in report.blocks if getattr(b, "note", False))
    assert "does not exist" in notes and any("missing" in w for w in report.warnings)


def test_cli_options(tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    _run(tmp_path / "runs" / "simmim", "simmim", _falling())
    _probe(tmp_path / "probes" / "p.json", "simmim", 0.05)
    out = tmp_path / "out"
    assert main([str(results), "--out", str(out), "--bootstrap", "100", "--no-logs",
                 "--pretraining", str(tmp_path / "runs" / "simmim"), "--probe", str(tmp_path / "probes")]) == 0
    md = (out / "report.md").read_text()
    assert "| simmim | falling | beats random on Dataset901_PhantomCTOrgans | yes |" in md
    capsys.readouterr()
    assert main([str(results), "--pretraining", str(tmp_path / "probes" / "p.json")]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main([str(results), "--out", str(tmp_path / "o2"), "--bootstrap", "10", "--no-logs",
                 "--pretraining", str(tmp_path / "runs"), "--probe", str(tmp_path / "nope")]) == 0
    assert "--probe folder" in capsys.readouterr().err
    # nothing at all to report (no runs, no probes, no pretraining): refused, nothing written
    assert main([str(results), "--out", str(tmp_path / "o4"), "--no-logs", "--probe", str(tmp_path / "nope")]) == 2
    assert "no finished fine-tuning runs" in capsys.readouterr().err and not (tmp_path / "o4").exists()
    assert math.isfinite(pre.window_change(_falling()).change)

    _probe(results / "probe" / "default.json", "dino", 0.05)  # RESULTS/probe is read without --probe
    assert main([str(results), "--out", str(tmp_path / "o3"), "--bootstrap", "10", "--no-logs"]) == 0
    assert "ignored probe" not in capsys.readouterr().out  # not a dataset folder, and not listed as ignored
    assert "Frozen-feature probe: dino" in (tmp_path / "o3" / "report.md").read_text()


def test_step_anatomy_table_shows_the_mean_of_each_part(tmp_path):
    study = tmp_path / "study"
    _run(study / "simmim", "simmim", _falling(40))
    _run(study / "dino", "dino", _flat(40))  # an older run: no timings
    lines = []
    for i, v in enumerate(_falling(40)):
        rec = {"step": i, "loss": float(v), "ms/data": 2.0 + (i % 2) * 2.0, "ms/h2d": 0.5, "ms/forward": 30.0,
               "ms/backward": 50.0, "ms/optimizer": 7.5, "ms/step": 100.0, "peak_mib": 900.0 + i}
        lines.append(json.dumps(rec))
    (study / "simmim" / "log.jsonl").write_text("\n".join(lines) + "\n")
    run = pre.read_run(study / "simmim", n_boot=50)
    assert run.anatomy is not None and run.anatomy.steps == 40
    assert run.anatomy.mean_ms == {"data": 3.0, "h2d": 0.5, "forward": 30.0, "backward": 50.0, "optimizer": 7.5}
    assert run.anatomy.data_share == pytest.approx(0.03) and run.anatomy.peak_mib == 939.0
    assert pre.read_run(study / "dino", n_boot=50).anatomy is None

    results = tmp_path / "results"
    results.mkdir()
    report, paths = build_report(load_results(results), tmp_path / "out", ReportOptions(n_boot=50),
                                 pretraining_dirs=[study])
    table = next(t for t in report.tables() if "data-wait share" in t.header)
    assert [r[0] for r in table.rows] == ["simmim"]
    row = dict(zip(table.header, table.rows[0]))
    assert row["data wait ms"] == "3.0" and row["views ms (main process)"] == "-" and row["forward ms"] == "30.0"
    assert row["data-wait share"] == "3.0%" and row["steps/s"] == "10.00" and row["peak MiB"] == "939"
    assert "Step anatomy" in paths["markdown"].read_text()

    _run(tmp_path / "old" / "dino", "dino", _flat(40))
    report, _ = build_report(load_results(results), tmp_path / "out2", ReportOptions(n_boot=50),
                             pretraining_dirs=[tmp_path / "old"])
    assert not [t for t in report.tables() if "data-wait share" in t.header]
