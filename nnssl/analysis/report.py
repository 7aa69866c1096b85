"""Build the benchmark report (Markdown + self-contained HTML + PNG figures) from a parsed nnU-Net results tree.

The report is a list of blocks (headings, paragraphs, tables, figures) rendered twice: to Markdown (figures linked as
``figures/*.png``) and to one HTML page with the PNGs embedded as base64, so it can be mailed or archived alone.
Every section degrades to a note saying what data is missing and how to get it. See documentation/report.md.
"""
from __future__ import annotations

import base64
import csv
import datetime as _dt
import html
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nnssl.analysis import cka as cka_mod
from nnssl.analysis.convergence import FRACTIONS, analyse_log, ema_from_log, plot_curves
from nnssl.analysis.dice_stats import (
    MeanCI,
    bootstrap_ci,
    group_case_values,
    holm,
    paired_wilcoxon,
    significance_marker,
    stratified_bootstrap_ci,
)
from nnssl.analysis.fewshot import paired_gap
from nnssl.analysis.results import (
    SCRATCH,
    Regime,
    ResultsTree,
    paired_arrays,
    pooled_cases,
    regime_sort_key,
    tidy_records,
)


# ----------------------------------------------------------------------------------------------------------------------
# blocks
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Para:
    text: str
    note: bool = False  # rendered as a highlighted note (missing data, caveats)


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Figure:
    path: Path  # absolute path of the PNG
    caption: str


@dataclass
class ReportOptions:
    baseline: str = SCRATCH
    n_boot: int = 10000
    seed: int = 0
    level: float = 0.95
    digits: int = 3


@dataclass
class Report:
    title: str
    blocks: list[Any] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add(self, *blocks: Any) -> None:
        self.blocks.extend(blocks)

    def tables(self) -> list[Table]:
        return [b for b in self.blocks if isinstance(b, Table)]


# ----------------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------------
def _slug(*parts: Any) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", "_".join(str(p) for p in parts)).strip("_")


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:.{digits}f}"


def _fmt_p(p: float) -> str:
    if not math.isfinite(p):
        return "n/a"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.4f}"


def _fmt_spread(values: Sequence[float | None], digits: int = 1) -> str:
    """mean over folds, with (min-max) when several folds differ; n/a when none is defined."""
    v = [float(x) for x in values if x is not None and math.isfinite(x)]
    if not v:
        return "n/a"
    m = float(np.mean(v))
    if len(v) == 1 or min(v) == max(v):
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ({min(v):.{digits}f}-{max(v):.{digits}f})"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    plt = _plt()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------------------------------
# the builder
# ----------------------------------------------------------------------------------------------------------------------
class ReportBuilder:
    """Turns a :class:`ResultsTree` (+ optional CKA result files) into a :class:`Report`; figures go to out/figures."""

    def __init__(self, tree: ResultsTree, out_dir: Path, options: ReportOptions | None = None,
                 cka_files: Sequence[Path] = ()) -> None:
        self.tree = tree
        self.out = Path(out_dir)
        self.fig_dir = self.out / "figures"
        self.opt = options or ReportOptions()
        self.cka_files = list(cka_files)
        self.report = Report("nnssl benchmark report")
        self.summary_rows: list[list[str]] = []
        # one colour per method in every figure
        all_methods = sorted({f.method for f in tree.folds}, key=lambda m: (m != self.opt.baseline, m))
        self.colors = {m: f"C{i % 10}" for i, m in enumerate(all_methods)}

    # -- small utilities ------------------------------------------------------------------------------------------------
    def ci(self, values: Any) -> MeanCI:
        return bootstrap_ci(values, n_boot=self.opt.n_boot, seed=self.opt.seed, level=self.opt.level)

    def cases(self, dataset: str, regime: Regime, method: str, label: str | None = None) -> dict:
        return pooled_cases(self.tree.select(dataset, regime, method), label)

    def build(self) -> Report:
        r = self.report
        self.fig_dir.mkdir(parents=True, exist_ok=True)
        self._overview()
        summary_at = len(r.blocks)
        self._dice()
        self._significance()
        if self.summary_rows:
            r.blocks[summary_at:summary_at] = [Heading(2, "Summary"), Table(
                ["dataset", "regime", "best method", "its foreground Dice", f"{self.opt.baseline} Dice",
                 f"difference vs {self.opt.baseline}", "p (Holm)", "sig."], self.summary_rows,
                caption="Best method per task and regime (highest mean foreground Dice) against the baseline; "
                        "details in the sections below.")]
        self._groups()
        self._modality()
        self._convergence()
        self._fewshot()
        self._cka()
        r.add(Heading(2, "Definitions"), Para(
            "Dice per case comes from nnU-Net's validation/summary.json (validation cases of each fold, pooled over "
            "folds). Foreground Dice of a case = mean over its foreground labels that are defined (nnU-Net writes NaN "
            "when a label is absent from reference and prediction). Confidence intervals: percentile bootstrap over "
            f"cases, {self.opt.n_boot} resamples, seed {self.opt.seed}. Tests: two-sided paired Wilcoxon signed-rank "
            "over common cases (zero differences dropped), Holm-corrected within each table family; "
            "* p<0.05, ** p<0.01, *** p<0.001 after correction, ns otherwise. See documentation/report.md."))
        return r

    # -- sections -------------------------------------------------------------------------------------------------------
    def _overview(self) -> None:
        r, t = self.report, self.tree
        r.add(Heading(1, r.title), Para(
            f"Results folder: `{t.root}`. Generated {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}. "
            f"{len(t.dataset_names())} target dataset(s), {len(t.folds)} finished fold(s). Baseline: "
            f"`{self.opt.baseline}`."))
        if not t.folds:
            r.add(Para("No finished nnU-Net runs were found (a run needs "
                       "Dataset*/<Trainer>__<Plans>__<config>/fold_*/validation/summary.json). Every section below is "
                       "empty. Check the RESULTS path and the run names (see the ignored folders).", note=True))
        rows = []
        for ds in t.dataset_names():
            info = t.datasets[ds]
            labels = ", ".join(sorted(set(info.key_to_name.values()))) or "unknown (no dataset.json)"
            runs = sorted({(f.method, f.regime.label()) for f in t.folds if f.dataset == ds})
            rows.append([ds, info.modality, labels, str(len(runs)),
                         str(info.source) if info.source else "not found"])
        if rows:
            r.add(Heading(2, "Datasets"), Table(["dataset", "modality", "labels", "method x regime", "dataset.json"],
                                               rows))
        if t.ignored:
            r.add(Heading(3, "Ignored folders"), Table(["folder", "reason"], [[p, why] for p, why in t.ignored]))
        notes = [[f"{f.dataset}/{f.run.trainer}__{f.run.plans}__{f.run.configuration}/fold_{f.fold}", n]
                 for f in t.folds for n in f.notes]
        if notes:
            r.add(Heading(3, "Notes on runs"), Table(["run", "note"], notes))

    def _dice(self) -> None:
        r, t, d = self.report, self.tree, self.opt.digits
        r.add(Heading(2, "Dice per task and method"))
        if not t.folds:
            r.add(Para("No data.", note=True))
            return
        for ds in t.dataset_names():
            info = t.datasets[ds]
            r.add(Heading(3, ds))
            bars: dict[Regime, dict[str, MeanCI]] = {}
            for regime in t.regimes(ds):
                keys = sorted({k for f in t.folds if f.dataset == ds and f.regime == regime for k in f.dice})
                header = ["method", "folds", "cases"] + [info.label_name(k) for k in keys] + [
                    "foreground", "nnU-Net fg mean"]
                rows = []
                for m in t.methods(ds, regime):
                    folds = t.select(ds, regime, m)
                    fg = self.ci(list(self.cases(ds, regime, m).values()))
                    bars.setdefault(regime, {})[m] = fg
                    per_label = [self.ci(list(self.cases(ds, regime, m, k).values())).fmt(d) for k in keys]
                    nn_fg = float(np.mean([f.summary_fg_mean for f in folds]))
                    rows.append([m, ",".join(f.fold for f in folds), str(fg.n)] + per_label + [fg.fmt(d), _fmt(nn_fg, d)])
                r.add(Table(header, rows, caption=f"{ds}, {regime.label()}: mean Dice [{int(self.opt.level * 100)}% CI]"))
            r.add(self._dice_figure(ds, bars))

    def _dice_figure(self, ds: str, bars: dict[Regime, dict[str, MeanCI]]) -> Figure:
        plt = _plt()
        regimes = sorted(bars, key=regime_sort_key)
        methods = sorted({m for v in bars.values() for m in v}, key=lambda m: (m != self.opt.baseline, m))
        width = 0.8 / max(1, len(methods))
        fig, ax = plt.subplots(figsize=(max(5.5, 2.5 + 0.5 * len(methods) * len(regimes)), 3.8))
        for j, m in enumerate(methods):
            xs, ys, lo, hi = [], [], [], []
            for i, reg in enumerate(regimes):
                c = bars[reg].get(m)
                if c is None or not math.isfinite(c.mean):
                    continue
                xs.append(i + (j - (len(methods) - 1) / 2) * width)
                ys.append(c.mean)
                lo.append(c.mean - c.low if math.isfinite(c.low) else 0.0)
                hi.append(c.high - c.mean if math.isfinite(c.high) else 0.0)
            ax.bar(xs, ys, width=width, yerr=[lo, hi], capsize=2, label=m, color=self.colors.get(m))
        ax.set_xticks(range(len(regimes)), [reg.label() for reg in regimes])
        ax.set_ylabel("foreground Dice")
        ax.set_ylim(0, 1)
        ax.set_title(f"{ds}\nforeground Dice, {int(self.opt.level * 100)}% bootstrap CI", fontsize=9)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        fig.tight_layout()
        p = _save(fig, self.fig_dir / f"dice_{_slug(ds)}.png")
        return Figure(p, f"{ds}: mean foreground Dice per method and regime with {int(self.opt.level * 100)}% CI")

    def _compare(self, ds: str, regime: Regime, pairs: list[tuple[str, str]], family: str):
        """Paired Wilcoxon tests of the given (A, B) pairs, Holm-corrected as one family.

        Returns (table, {(A, B): (PairedTest, Holm-adjusted p)})."""
        res = []
        for a, b in pairs:
            xa, xb, _ = paired_arrays(self.cases(ds, regime, a), self.cases(ds, regime, b))
            res.append(((a, b), paired_wilcoxon(xa, xb)))
        adj = holm([pt.p for _, pt in res])
        rows = []
        for ((a, b), pt), p_adj in zip(res, adj):
            rows.append([f"{a} vs {b}", str(pt.n), _fmt(pt.mean_diff, self.opt.digits), _fmt(pt.statistic, 1),
                         _fmt_p(pt.p), _fmt_p(p_adj), significance_marker(p_adj), pt.note])
        table = Table(["comparison", "pairs", "mean diff (A-B)", "W", "p", "p (Holm)", "sig.", "note"], rows,
                      caption=f"{ds}, {regime.label()}: {family} (paired Wilcoxon on foreground Dice, Holm-corrected "
                              f"within this table)")
        return table, {pair: (pt, p_adj) for (pair, pt), p_adj in zip(res, adj)}

    def _significance(self) -> None:
        r, t, base, d = self.report, self.tree, self.opt.baseline, self.opt.digits
        r.add(Heading(2, "Paired tests"))
        any_table = False
        for ds in t.dataset_names():
            for regime in t.regimes(ds):
                methods = t.methods(ds, regime)
                means = {m: float(np.nanmean(list(self.cases(ds, regime, m).values()) or [np.nan])) for m in methods}
                finite = {m: v for m, v in means.items() if math.isfinite(v)}
                best = max(finite, key=lambda m: (finite[m], m == base)) if finite else None
                if len(methods) < 2:
                    continue
                r.add(Heading(3, f"{ds}, {regime.label()}"))
                any_table = True
                vs_base: dict = {}
                if base in methods:
                    table, vs_base = self._compare(ds, regime, [(m, base) for m in methods if m != base],
                                                   f"each method vs {base}")
                    r.add(table)
                else:
                    r.add(Para(f"No `{base}` baseline run in this regime: comparisons against it are skipped.",
                               note=True))
                if best is None:
                    continue
                others = [m for m in methods if m != best]
                if base in methods and {frozenset((best, m)) for m in others} == {frozenset(p) for p in vs_base}:
                    # the best-vs-others family would repeat the vs-baseline tests exactly
                    r.add(Para(f"Best method: `{best}`; its comparisons with the others are the ones above."))
                else:
                    r.add(self._compare(ds, regime, [(best, m) for m in others],
                                        f"best method ({best}) vs each other")[0])
                if base in methods:
                    pt, p_adj = vs_base.get((best, base), (None, math.nan))
                    self.summary_rows.append([
                        ds, regime.label(), best, _fmt(finite[best], d), _fmt(means.get(base), d),
                        _fmt(pt.mean_diff, d) if pt else "-", _fmt_p(p_adj) if pt else "-",
                        significance_marker(p_adj) if pt else "(best is the baseline)"])
        if not any_table:
            r.add(Para("Paired tests need at least two methods on the same dataset and regime; none found.",
                       note=True))

    def _groups(self) -> None:
        r, t, d = self.report, self.tree, self.opt.digits
        r.add(Heading(2, "Structure groups"))
        shown = False
        for ds in t.dataset_names():
            info = t.datasets[ds]
            if info.groups_error:
                r.add(Para(f"{ds}: structure groups unavailable: {info.groups_error}", note=True))
                r.warnings.append(info.groups_error)
                continue
            if not info.groups:
                r.add(Para(f"{ds}: no structure groups defined (add \"nnssl_structure_groups\" to its dataset.json or "
                           "pass --groups).", note=True))
                continue
            shown = True
            rows = []
            for regime in t.regimes(ds):
                for m in t.methods(ds, regime):
                    folds = t.select(ds, regime, m)
                    row = [m, regime.label()]
                    for g, members in info.groups.items():
                        vals = np.concatenate([group_case_values(f.dice, info.key_to_name, members) for f in folds])
                        row.append(self.ci(vals).fmt(d) if vals.size else "n/a")
                    rows.append(row)
            caption = "; ".join(f"{g}: {', '.join(ms)}" for g, ms in info.groups.items())
            r.add(Heading(3, ds), Table(["method", "regime"] + list(info.groups), rows,
                                        caption=f"{ds}: mean Dice of each group's labels per case [CI]. {caption}"))
        if not shown and not t.folds:
            r.add(Para("No data.", note=True))

    def _modality(self) -> None:
        r, t, d = self.report, self.tree, self.opt.digits
        r.add(Heading(2, "CT versus MRI"))
        by: dict[tuple[str, Regime, str], list[np.ndarray]] = {}
        tasks: dict[tuple[str, Regime, str], list[str]] = {}
        for ds in t.dataset_names():
            mod = t.datasets[ds].modality
            for regime in t.regimes(ds):
                for m in t.methods(ds, regime):
                    vals = np.array(list(self.cases(ds, regime, m).values()))
                    by.setdefault((mod, regime, m), []).append(vals)
                    tasks.setdefault((mod, regime, m), []).append(ds)
        if not by:
            r.add(Para("No data.", note=True))
            return
        mods = sorted({k[0] for k in by})
        if not ({"CT", "MRI"} <= set(mods)):
            r.add(Para(f"Only {', '.join(mods)} target datasets found: the CT vs MRI comparison needs both.",
                       note=True))
        rows = []
        for key in sorted(by, key=lambda k: (k[0], regime_sort_key(k[1]), k[2] != self.opt.baseline, k[2])):
            mod, regime, m = key
            c = stratified_bootstrap_ci(by[key], n_boot=self.opt.n_boot, seed=self.opt.seed, level=self.opt.level)
            rows.append([mod, regime.label(), m, str(c.n), c.fmt(d), ", ".join(tasks[key])])
        r.add(Table(["modality", "regime", "method", "tasks", "mean of task means [CI]", "datasets"], rows,
                    caption="Foreground Dice averaged over tasks (each task weighs the same); CI from resampling "
                            "cases within each task."))

    def _convergence(self) -> None:
        r, t = self.report, self.tree
        r.add(Heading(2, "Convergence"))
        pct = [int(round(f * 100)) for f in FRACTIONS]
        any_log = False
        for ds in t.dataset_names():
            for regime in t.regimes(ds):
                rows, curves, styles = [], {}, {}
                for m in t.methods(ds, regime):
                    convs = []
                    for f in t.select(ds, regime, m):
                        if f.logging is None:
                            continue
                        try:
                            convs.append(analyse_log(f.logging))
                            key = f"{m} fold {f.fold}"
                            curves[key] = ema_from_log(f.logging)[0]
                            # one colour per method, one line style per fold
                            styles[key] = {"color": self.colors[m],
                                           "linestyle": ("-", "--", ":", "-.")[(len(convs) - 1) % 4]}
                        except ValueError as e:
                            r.warnings.append(f"{f.path}: {e}")
                    if not convs:
                        continue
                    rows.append([m, str(len(convs)), _fmt_spread([c.n_epochs for c in convs], 0),
                                 _fmt_spread([c.final for c in convs], 3), _fmt_spread([c.best for c in convs], 3)]
                                + [_fmt_spread([c.epochs_to[fr] for c in convs], 1) for fr in FRACTIONS]
                                + [_fmt_spread([c.seconds_per_epoch for c in convs], 1),
                                   "; ".join(sorted({c.note for c in convs if c.note}))])
                if not rows:
                    continue
                any_log = True
                r.add(Heading(3, f"{ds}, {regime.label()}"), Table(
                    ["method", "folds", "epochs trained", "final EMA pseudo-Dice", "best EMA pseudo-Dice"]
                    + [f"epochs to {p}% of final" for p in pct] + ["s/epoch", "note"], rows,
                    caption=f"{ds}, {regime.label()}: convergence, mean over folds (min-max when folds differ)"))
                fig = plot_curves(curves, title=f"{ds}, {regime.label()}", styles=styles)
                p = _save(fig, self.fig_dir / f"convergence_{_slug(ds, regime.label())}.png")
                r.add(Figure(p, f"{ds}, {regime.label()}: EMA validation pseudo-Dice per epoch; dots mark 95% of final"))
        if not any_log:
            r.add(Para("No training logs found (checkpoint_final.pth / checkpoint_latest.pth with a 'logging' dict), "
                       "so convergence cannot be reported.", note=True))

    def _fewshot(self) -> None:
        r, t = self.report, self.tree
        r.add(Heading(2, "Few-to-many-shot gap"))
        rows = []
        for ds in t.dataset_names():
            regimes = t.regimes(ds)
            for full in (reg for reg in regimes if reg.shots == "all"):
                for few in (reg for reg in regimes if reg.shots != "all" and reg.epochs == full.epochs
                            and reg.configuration == full.configuration):
                    for m in t.methods(ds, few):
                        if m not in t.methods(ds, full):
                            continue
                        a, k, _ = paired_arrays(self.cases(ds, full, m), self.cases(ds, few, m))
                        g = paired_gap(a, k, n_boot=self.opt.n_boot, seed=self.opt.seed, level=self.opt.level)
                        budget = "" if full.epochs is None else f", {full.epochs} epochs"
                        rows.append([ds, m, f"{few.shots}-shot{budget}", str(g.n), _fmt(g.dice_all, 3),
                                     _fmt(g.dice_k, 3), g.fmt(1)])
        if not rows:
            r.add(Para("Needs, for the same dataset and method, a run on all cases and a k-shot run "
                       "(Swin*Trainer_<k>shot); none found.", note=True))
            return
        r.add(Table(["dataset", "method", "regime", "paired cases", "Dice all", "Dice k-shot", "gap % [CI]"], rows,
                    caption="gap % = (Dice_all - Dice_kshot) / Dice_all * 100 on the same validation cases; "
                            "smaller = less lost with few labels."))

    def _cka(self) -> None:
        r = self.report
        r.add(Heading(2, "CKA feature reuse"))
        if not self.cka_files:
            r.add(Para("No CKA results found (expected `cka/*.json` in the results folder, written by `nnssl_cka`).",
                       note=True))
            return
        rows = []
        for path in self.cka_files:
            try:
                doc = cka_mod.read_cka_json(path)
            except ValueError as e:
                r.add(Para(f"Skipped {path.name}: {e}", note=True))
                r.warnings.append(str(e))
                continue
            shots = "all cases" if doc["shots"] == "all" else f"{doc['shots']}-shot"
            for kind, m in doc["cka"].items():
                title = f"{doc['dataset']}, {doc['method']}, {shots}, fold {doc['fold']}: {kind} CKA"
                fig = cka_mod.plot_cka_heatmap(m, doc["stages_a"], doc["stages_b"], title=title,
                                               label_a=doc["label_a"], label_b=doc["label_b"])
                p = _save(fig, self.fig_dir / f"cka_{_slug(path.stem, kind)}.png")
                r.add(Figure(p, title))
                diag = [_fmt(float(m[i, i]), 2) for i in range(min(m.shape))]
                rows.append([doc["dataset"], doc["method"], shots, doc["fold"], kind,
                             str(doc.get("n_examples") or "n/a"), " / ".join(diag)])
        if rows:
            r.add(Table(["dataset", "method", "regime", "fold", "kind", "images", "diagonal (stage i vs stage i)"],
                        rows, caption="CKA between the pretrained and the fine-tuned encoder; 1 = features kept, "
                                      "near 0 = replaced."))


# ----------------------------------------------------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------------------------------------------------
def _md_cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def render_markdown(report: Report, out_dir: Path) -> str:
    lines: list[str] = []
    for b in report.blocks:
        if isinstance(b, Heading):
            lines += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Para):
            lines += [("> **Note:** " + b.text) if b.note else b.text, ""]
        elif isinstance(b, Table):
            if b.caption:
                lines += [f"*{b.caption}*", ""]
            lines.append("| " + " | ".join(_md_cell(h) for h in b.header) + " |")
            lines.append("|" + "|".join("---" for _ in b.header) + "|")
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            lines.append("")
        elif isinstance(b, Figure):
            rel = os.path.relpath(b.path, out_dir).replace(os.sep, "/")
            lines += [f"![{b.caption}]({rel})", "", f"*{b.caption}*", ""]
    return "\n".join(lines)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px}
th{background:#f0f0f0}caption{caption-side:top;text-align:left;font-style:italic;padding:4px 0}
.note{background:#fff6d5;border-left:4px solid #e0b000;padding:6px 10px}img{max-width:100%}
figure{margin:1em 0}figcaption{font-style:italic;font-size:13px}code{background:#f4f4f4;padding:0 3px}"""


def _inline(text: str) -> str:
    """Escape HTML and turn `code` spans into <code>."""
    parts = str(text).split("`")
    return "".join(html.escape(p) if i % 2 == 0 else f"<code>{html.escape(p)}</code>" for i, p in enumerate(parts))


def render_html(report: Report) -> str:
    out = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>", f"<title>{html.escape(report.title)}</title>",
           f"<style>{_CSS}</style></head><body>"]
    for b in report.blocks:
        if isinstance(b, Heading):
            out.append(f"<h{b.level}>{_inline(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            out.append(f"<p class='note'><b>Note:</b> {_inline(b.text)}</p>" if b.note else f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, Table):
            out.append("<table>")
            if b.caption:
                out.append(f"<caption>{_inline(b.caption)}</caption>")
            out.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in b.header) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in b.rows]
            out.append("</table>")
        elif isinstance(b, Figure):
            data = base64.b64encode(Path(b.path).read_bytes()).decode("ascii")
            out.append(f"<figure><img alt='{html.escape(b.caption)}' src='data:image/png;base64,{data}'>"
                       f"<figcaption>{html.escape(b.caption)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_records_csv(tree: ResultsTree, path: Path) -> Path:
    """All per-case Dice values as a tidy CSV (see results.tidy_records)."""
    rows = tidy_records(tree)
    fields = ["dataset", "modality", "method", "shots", "epochs", "configuration", "trainer", "plans", "fold", "case",
              "label", "label_name", "dice"]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)
    return path


def find_cka_files(*folders: Path | None) -> list[Path]:
    """Sorted, de-duplicated ``*.json`` files in the given CKA folders (missing folders are skipped)."""
    files: dict[Path, None] = {}
    for d in folders:
        if d is not None and Path(d).is_dir():
            for p in sorted(Path(d).glob("*.json")):
                files[p.resolve()] = None
    return list(files)


def build_report(tree: ResultsTree, out_dir: str | os.PathLike, options: ReportOptions | None = None,
                 cka_files: Sequence[Path] | None = None) -> tuple[Report, dict[str, Path]]:
    """Build and write the report. Returns (report, {"markdown", "html", "csv", "figures"} -> paths).

    cka_files default: ``<tree.root>/cka/*.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cka_files is None:
        cka_files = find_cka_files(Path(tree.root) / "cka")
    report = ReportBuilder(tree, out, options, cka_files).build()
    md_path, html_path = out / "report.md", out / "report.html"
    _atomic_write(md_path, render_markdown(report, out))
    _atomic_write(html_path, render_html(report))
    csv_path = write_records_csv(tree, out / "dice_per_case.csv")
    return report, {"markdown": md_path, "html": html_path, "csv": csv_path, "figures": out / "figures"}
