"""Pretraining: does each pretraining run show a learning signal? Its loss falling between the first and the last
10% of its steps, or a frozen-feature probe (nnssl_probe) of its encoder beating the same probe on a random one."""
from __future__ import annotations

import math
from pathlib import Path

from nnssl.analysis import pretraining as pre
from nnssl.analysis import probe as probe_mod
from nnssl.analysis.report.blocks import Figure, Heading, Para, Table
from nnssl.analysis.report.context import ReportContext
from nnssl.analysis.report.format import fmt, save_figure, slug

PROBE_NAMES = {"knn": "k-NN", "linear": "linear"}
METRIC_NAMES = {"balanced_accuracy": "balanced accuracy", "macro_f1": "macro-F1 (foreground)"}


def _pct(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{100 * x:+.1f}%"


def _change(c: pre.WindowChange) -> str:
    if not math.isfinite(c.change):
        return "n/a"
    if not (math.isfinite(c.low) and math.isfinite(c.high)):
        return _pct(c.change)
    return f"{_pct(c.change)} [{_pct(c.low)}, {_pct(c.high)}]"


def _est(e: probe_mod.Estimate, digits: int = 3) -> str:
    if not math.isfinite(e.value):
        return "n/a"
    if not (math.isfinite(e.low) and math.isfinite(e.high)):
        return f"{e.value:+.{digits}f}"
    return f"{e.value:+.{digits}f} [{e.low:+.{digits}f}, {e.high:+.{digits}f}]"


def _runs(ctx: ReportContext) -> list[pre.PretrainingRun]:
    r = ctx.report
    runs: list[pre.PretrainingRun] = []
    for folder in ctx.pretraining_dirs:
        folder = Path(folder)
        found = pre.find_runs(folder)
        if not found:
            why = "does not exist" if not folder.exists() else "holds no pretraining run (no config.json or log.jsonl)"
            msg = f"Pretraining folder `{folder}` {why}: no run of it is shown."
            r.add(Para(msg, note=True))
            r.warnings.append(msg.replace("`", ""))
        for run_dir in found:
            runs.append(pre.read_run(run_dir, n_boot=ctx.opt.n_boot, seed=ctx.opt.seed, level=ctx.opt.level))
    return runs


def _loss_part(ctx: ReportContext, runs: list[pre.PretrainingRun]) -> dict[str, str]:
    """The loss table and one figure per run; returns method -> loss verdict."""
    r = ctx.report
    rows, verdicts = [], {}
    for run in runs:
        c = run.change
        steps = f"{c.n_steps}" + (f" / {run.steps_planned}" if run.steps_planned else "")
        rows.append([run.folder.name, run.method, steps, str(c.window) if c.window else "n/a", fmt(c.first, 4),
                     fmt(c.last, 4), _change(c), c.verdict, "; ".join(run.notes)])
        # a grid's design-experiment run (folder smit-small-data25 of method smit) is a method of its own, as in
        # its probe and fine-tuning results; several runs of one method: falling when any of them is
        key = run.folder.name if run.folder.name.startswith(run.method + "-") else run.method
        if verdicts.get(key) != pre.FALLING:
            verdicts[key] = c.verdict
    r.add(Table(["run", "method", "steps logged / planned", "steps per window", "mean loss, first 10%",
                 "mean loss, last 10%", "change [CI]", "verdict", "notes"], rows,
                caption=f"Total loss over the first and the last 10% of the logged steps; change = (last - first) / "
                        f"|first| with a {int(round(100 * ctx.opt.level))}% moving-block-bootstrap CI over the steps "
                        "of each window. falling = the whole CI below zero."))
    for run in runs:
        if not run.log.records:
            continue
        name = run.folder.name if run.folder.name == run.method else f"{run.folder.name} ({run.method})"
        title = f"{name}: pretraining loss"
        fig = pre.plot_run(run, title)
        path = save_figure(fig, ctx.fig_dir / f"pretraining_{slug(run.folder.parent.name, run.folder.name)}.png")
        r.add(Figure(path, f"{title}; faint: per step, bold: exponential moving average, shaded: the two 10% windows"))
    return verdicts


def _anatomy_part(ctx: ReportContext, runs: list[pre.PretrainingRun]) -> None:
    """Mean milliseconds per step part of each run that logged them."""
    timed = [run for run in runs if run.anatomy is not None]
    if not timed:
        return
    rows = []
    for run in timed:
        a = run.anatomy
        assert a is not None
        rows.append([run.folder.name, run.method, str(a.steps)]
                    + [fmt(a.mean_ms[p], 1) if p in a.mean_ms else "-" for p in pre.STEP_PARTS]
                    + [fmt(a.step_ms, 1), f"{100 * a.data_share:.1f}%" if math.isfinite(a.data_share) else "n/a",
                       fmt(a.steps_per_s, 2), fmt(a.peak_mib, 0) if math.isfinite(a.peak_mib) else "n/a"])
    ctx.report.add(Heading(3, "Step anatomy"), Table(
        ["run", "method", "timed steps", "data wait ms", "views ms (main process)", "H2D ms", "forward ms",
         "backward ms", "optimiser ms", "step ms", "data-wait share", "steps/s", "peak MiB"], rows,
        caption="Mean milliseconds per step part over the logged steps (nnssl_pretrain's ms/<part> records: wall "
                "clock on the CPU, CUDA events on the GPU). views: built in the main process (\"-\": built in the "
                "loader workers, inside the data wait). Peak MiB: CUDA allocator peak, or the process's peak RSS "
                "on the CPU."))


def _probe_part(ctx: ReportContext) -> dict[str, dict[str, list[str]]]:
    """One probe table per method; returns method -> dataset (and stage, when not 2) -> probes that beat the random
    encoder in balanced accuracy."""
    r = ctx.report
    by_method: dict[str, list[dict]] = {}
    for path in ctx.probe_files:
        try:
            doc = probe_mod.read_probe_json(path)
        except ValueError as e:
            r.add(Para(f"Skipped {Path(path).name}: {e}", note=True))
            r.warnings.append(str(e))
            continue
        by_method.setdefault(doc["method"], []).append(doc)
    beats: dict[str, dict[str, list[str]]] = {}
    for method in sorted(by_method):
        rows = []
        for doc in sorted(by_method[method], key=lambda d: (d["dataset"], d["stage"])):
            # both probes must win on the same tokens: one entry per dataset and stage
            where = doc["dataset"] if doc["stage"] == 2 else f"{doc['dataset']} (stage {doc['stage']})"
            winners = beats.setdefault(method, {}).setdefault(where, [])
            for probe in probe_mod.PROBES:
                entry = doc["probes"][probe]
                for metric in probe_mod.METRICS:
                    verdict = probe_mod.beats_random(entry["difference"][metric])
                    if metric == "balanced_accuracy" and verdict == "yes":
                        winners.append(probe)
                    rows.append([doc["dataset"], str(doc["stage"]), PROBE_NAMES[probe], METRIC_NAMES[metric],
                                 fmt(entry["pretrained"][metric].value, 3), fmt(entry["random"][metric].value, 3),
                                 _est(entry["difference"][metric]), verdict])
        r.add(Heading(3, f"Frozen-feature probe: {method}"), Table(
            ["dataset", "stage", "probe", "metric", "pretrained", "random", "difference [CI]", "beats random"], rows,
            caption="Probes on frozen tokens of the test cases (train cases: the fold's training cases). difference "
                    f"= pretrained - random encoder of the same architecture, {int(round(100 * ctx.opt.level))}% "
                    "bootstrap CI over test cases; beats random = the CI above zero (worse: below)."))
    return beats


def pretraining(ctx: ReportContext) -> None:
    """Add the "Pretraining" section: a per-method learning-signal summary table first (when any), then the loss table
    and curves of the runs in ``ctx.pretraining_dirs``, their step anatomy, and the frozen-feature probe tables from
    ``ctx.probe_files``; notes say how to add missing runs or probe results."""
    r = ctx.report
    r.add(Heading(2, "Pretraining"))
    summary_at = len(r.blocks)  # the per-method summary goes first, once the parts below are known
    if not ctx.pretraining_dirs:
        r.add(Para("No pretraining run folders given: pass `nnssl_report --pretraining DIR` (a folder of "
                   "`nnssl_pretrain` runs such as `$nnssl_results/<spec name>`, or one run folder) to see each "
                   "run's loss curve and whether its loss falls.", note=True))
        runs = []
    else:
        runs = _runs(ctx)
    loss = _loss_part(ctx, runs) if runs else {}
    _anatomy_part(ctx, runs)
    if not ctx.probe_files:
        r.add(Para("No probe results found (expected `probe/*.json` in the results folder or `--probe DIR`, written "
                   "by `nnssl_probe`): distillation and contrastive methods, whose loss need not fall in a short run, "
                   "show their learning signal there.", note=True))
    probes = _probe_part(ctx) if ctx.probe_files else {}
    methods = sorted(set(loss) | set(probes))
    if not methods:
        return
    rows = []
    for m in methods:
        datasets = probes.get(m, {})
        # the probe beats the random encoder on a dataset when both probes do (balanced accuracy CI above 0)
        won = sorted(d for d, p in datasets.items() if set(p) >= set(probe_mod.PROBES))
        partly = sorted(d for d, p in datasets.items() if p and d not in won)
        probe_text = ("n/a" if not datasets else
                      f"beats random on {', '.join(won)}" if won else
                      f"only one probe beats random ({', '.join(partly)})" if partly else "does not beat random")
        signal = "yes" if loss.get(m) == pre.FALLING or won else "no"
        rows.append([m, loss.get(m, "n/a"), probe_text, signal])
    r.blocks.insert(summary_at, Table(["method", "loss", "frozen-feature probe", "learning signal"], rows,
                caption="Learning signal: the loss falls beyond its CI, or both probes (k-NN and linear) of the "
                        "pretrained encoder beat the random encoder in balanced accuracy on a target dataset."))
