"""The design experiments: Dice against the number of pretraining cases and against the encoder's size, per method
and regime, with CIs (the grid's pretraining.data_fractions and pretraining.encoders axes).

What a run was pretrained on and how large its encoder is comes from the fold's ``nnssl_finetune.json``: the Swin
trainers record ``encoder_parameters`` (every run, scratch too) and, for a pretrained encoder, ``pretraining``
(``method``, ``data_fraction``, ``pretraining_cases``, from the checkpoint). A figure appears where a method was
pretrained on at least two amounts of data (same encoder size), or at two encoder sizes (same amount of data).
"""
from __future__ import annotations

import math
from typing import Any

from nnssl.analysis.report.blocks import Figure, Heading, Table
from nnssl.analysis.report.context import ReportContext
from nnssl.analysis.report.cost import read_record
from nnssl.analysis.report.format import pyplot, save_figure, slug
from nnssl.analysis.results import Regime
from nnssl.nnunet.naming import is_cnn_baseline, is_scratch


def _facts(ctx: ReportContext, ds: str, regime: Regime, m: str) -> dict[str, Any] | None:
    """(base method, pretraining cases, data fraction, encoder parameters) of a method's runs, from its first fold
    with a record; None without one."""
    for f in ctx.tree.select(ds, regime, m):
        rec = read_record(f)
        if not rec:
            continue
        pre = rec.get("pretraining") if isinstance(rec.get("pretraining"), dict) else {}
        params = rec.get("encoder_parameters") or pre.get("encoder_parameters")
        return {"base": "scratch" if is_scratch(m) else str(pre.get("method") or m),
                "cases": pre.get("pretraining_cases"), "fraction": pre.get("data_fraction"),
                "params": int(params) if params else None}
    return None


def design(ctx: ReportContext) -> None:
    """Add the "Design experiments" section (only where it applies): per dataset and regime, tables and figures
    of mean foreground Dice [CI] against the number of pretraining cases (a method pretrained on >= 2 amounts at one
    encoder size) and against encoder parameters (>= 2 sizes at one data fraction, scratch runs per size beside them),
    from the folds' nnssl_finetune.json records."""
    r, t, d = ctx.report, ctx.tree, ctx.opt.digits
    level = int(round(ctx.opt.level * 100))
    added = False
    for ds in t.dataset_names():
        for regime in t.regimes(ds):
            facts = {m: f for m in t.methods(ds, regime) if not is_cnn_baseline(m)
                     if (f := _facts(ctx, ds, regime, m)) is not None}
            pre = {m: f for m, f in facts.items() if not is_scratch(m)}
            # Dice against pretraining cases: one series per (method, encoder size), >= 2 amounts of data
            data_series: dict[tuple[str, int | None], list[str]] = {}
            for m, f in pre.items():
                if f["cases"] is not None:
                    data_series.setdefault((f["base"], f["params"]), []).append(m)
            data_series = {k: sorted(v, key=lambda m: pre[m]["cases"]) for k, v in data_series.items()
                           if len({pre[m]["cases"] for m in v}) > 1}
            # Dice against encoder size: one series per (method, data fraction), >= 2 sizes; scratch per size
            size_series: dict[tuple[str, Any], list[str]] = {}
            for m, f in pre.items():
                if f["params"]:
                    size_series.setdefault((f["base"], f["fraction"]), []).append(m)
            size_series = {k: sorted(v, key=lambda m: pre[m]["params"]) for k, v in size_series.items()
                           if len({pre[m]["params"] for m in v}) > 1}
            if not data_series and not size_series:
                continue
            if not added:
                r.add(Heading(2, "Design experiments"))
                added = True
            label = regime.label()
            if data_series:
                rows = [[f"{base}" + (f" ({params:,} encoder parameters)" if params else ""), m,
                         str(pre[m]["cases"]), _fraction(pre[m]["fraction"]), ctx.case_ci(ds, regime, m).fmt(d)]
                        for (base, params), ms in sorted(data_series.items(), key=str) for m in ms]
                r.add(Heading(3, f"{ds}, {label}: Dice against pretraining data"))
                r.add(Table(["method", "run", "pretraining cases", "share", f"Dice [{level}% CI]"], rows,
                            caption=f"{ds}, {label}: mean foreground Dice against the number of pretraining cases "
                                    "(nested seeded subsets, identical for every method)."))
                r.add(_figure(ctx, ds, regime, data_series, pre, "cases", "pretraining cases", facts))
            if size_series:
                scratch = sorted((m for m in facts if is_scratch(m) and facts[m]["params"]),
                                 key=lambda m: facts[m]["params"])
                rows = [[base, m, f"{pre[m]['params']:,}", _fraction(fraction), ctx.case_ci(ds, regime, m).fmt(d)]
                        for (base, fraction), ms in sorted(size_series.items(), key=str) for m in ms]
                rows += [["scratch", m, f"{facts[m]['params']:,}", "-", ctx.case_ci(ds, regime, m).fmt(d)]
                         for m in scratch]
                r.add(Heading(3, f"{ds}, {label}: Dice against encoder size"))
                r.add(Table(["method", "run", "encoder parameters", "share", f"Dice [{level}% CI]"], rows,
                            caption=f"{ds}, {label}: mean foreground Dice against the encoder's parameters; scratch "
                                    "rows: the from-scratch baseline of each size (same plans, patch and batch)."))
                series = dict(size_series)
                if len({facts[m]["params"] for m in scratch}) > 1:
                    series[("scratch", None)] = scratch
                r.add(_figure(ctx, ds, regime, series, {**pre, **{m: facts[m] for m in scratch}}, "params",
                              "encoder parameters", facts))


def _fraction(f: Any) -> str:
    return "-" if f is None else f"{float(f):.0%}"


def _figure(ctx: ReportContext, ds: str, regime: Regime, series: dict, facts: dict[str, dict], key: str,
            xlabel: str, all_facts: dict[str, dict]) -> Figure:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for (base, extra), ms in sorted(series.items(), key=str):
        pts = []
        for m in ms:
            c = ctx.case_ci(ds, regime, m)
            if math.isfinite(c.mean):
                pts.append((facts[m][key], c.mean, c.mean - c.low if math.isfinite(c.low) else 0.0,
                            c.high - c.mean if math.isfinite(c.high) else 0.0))
        if not pts:
            continue
        x, y, lo, hi = zip(*pts)
        name = base if extra is None else (f"{base}, {extra:,} params" if key == "cases" else
                                           f"{base}, {_fraction(extra)} of the data")
        ax.errorbar(x, y, yerr=[lo, hi], marker="o", capsize=2, label=name, color=ctx.colors.get(ms[-1]),
                    linestyle="--" if base == "scratch" else "-")
    if key == "cases":  # the from-scratch level of the encoder, for reference
        for m, f in all_facts.items():
            if is_scratch(m):
                c = ctx.case_ci(ds, regime, m)
                if math.isfinite(c.mean):
                    ax.axhline(c.mean, color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("foreground Dice")
    ax.set_ylim(0, 1)
    ax.set_title(f"{ds}, {regime.label()}: {int(ctx.opt.level * 100)}% CI", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    p = save_figure(fig, ctx.fig_dir / f"design_{key}_{slug(ds, regime.label())}.png")
    what = "pretraining cases" if key == "cases" else "encoder parameters"
    return Figure(p, f"{ds}, {regime.label()}: Dice against {what} per method"
                     + (" (dotted: from scratch)" if key == "cases" else " (dashed: from scratch per size)"))
