"""Dice per task and method with CIs and the bar figure; structure groups; CT versus MRI."""
from __future__ import annotations

import math

import numpy as np

from nnssl.analysis.dice_stats import MeanCI, group_case_values, stratified_bootstrap_ci
from nnssl.analysis.report.blocks import Figure, Heading, Para, Table
from nnssl.analysis.report.context import ReportContext
from nnssl.analysis.report.format import fmt, pyplot, save_figure, slug
from nnssl.analysis.results import Regime, case_means, regime_sort_key
from nnssl.nnunet.naming import is_cnn_baseline


def dice(ctx: ReportContext) -> None:
    """Add the "Dice per task and method" section: per dataset and regime a table of each method's folds, cases,
    per-label and foreground Dice [CI] (with k-shot draws, the crossed draws x cases interval), nnU-Net's own
    foreground mean and, with repeated draws, the mean ± SD across draws; then the dataset's bar figure
    (:func:`dice_figure`)."""
    r, t, d = ctx.report, ctx.tree, ctx.opt.digits
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
            draws = max(ctx.spread(ds, regime, m)[2] for m in t.methods(ds, regime))
            header = ["method", "folds", "cases"] + [info.label_name(k) for k in keys] + [
                "foreground", "nnU-Net fg mean"] + (["draws: mean ± SD"] if draws > 1 else [])
            rows = []
            for m in t.methods(ds, regime):
                folds = t.select(ds, regime, m)
                fg = ctx.case_ci(ds, regime, m)
                bars.setdefault(regime, {})[m] = fg
                per_label = [ctx.case_ci(ds, regime, m, k).fmt(d) for k in keys]
                nn_fg = float(np.mean([f.summary_fg_mean for f in folds]))
                row = ([ctx.label(m), ",".join(sorted({f.fold for f in folds})), str(fg.n)] + per_label
                       + [fg.fmt(d), fmt(nn_fg, d)])
                if draws > 1:
                    mean, sd, n = ctx.spread(ds, regime, m)
                    row.append(f"{fmt(mean, d)} ± {fmt(sd, d)} ({n})")
                rows.append(row)
            caption = f"{ds}, {regime.label()}: mean Dice [{int(ctx.opt.level * 100)}% CI]"
            if draws > 1:
                caption += (" over validation cases, from the crossed draws x cases model of the repeated runs "
                            "(k-shot draws or all-cases repeats); the "
                            "last column is the "
                            "mean and SD across draws of each draw's mean")
            r.add(Table(header, rows, caption=caption))
        r.add(dice_figure(ctx, ds, bars))

def dice_figure(ctx: ReportContext, ds: str, bars: dict[Regime, dict[str, MeanCI]]) -> Figure:
    """Bar figure of one dataset: mean foreground Dice with its CI per regime (x axis) and method (bars, CNN
    baselines hatched), from ``bars`` (regime -> method -> MeanCI); saved as ``figures/dice_<dataset>.png``."""
    plt = pyplot()
    regimes = sorted(bars, key=regime_sort_key)
    methods = sorted({m for v in bars.values() for m in v}, key=lambda m: (m != ctx.opt.baseline, m))
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
        ax.bar(xs, ys, width=width, yerr=[lo, hi], capsize=2, label=ctx.label(m), color=ctx.colors.get(m),
               hatch="//" if is_cnn_baseline(m) else None, edgecolor="black" if is_cnn_baseline(m) else None)
    ax.set_xticks(range(len(regimes)), [reg.label() for reg in regimes])
    ax.set_ylabel("foreground Dice")
    ax.set_ylim(0, 1)
    ax.set_title(f"{ds}\nforeground Dice, {int(ctx.opt.level * 100)}% bootstrap CI", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    p = save_figure(fig, ctx.fig_dir / f"dice_{slug(ds)}.png")
    return Figure(p, f"{ds}: mean foreground Dice per method and regime with {int(ctx.opt.level * 100)}% CI "
                     "(hatched: CNN baselines)")


def groups(ctx: ReportContext) -> None:
    """Add the "Structure groups" section: per dataset with structure groups (dataset.json's
    ``nnssl_structure_groups`` or --groups), the mean Dice [CI] of each group's labels per case for every method and
    regime; a note for datasets without groups or with a group error (also added to the report's warnings)."""
    r, t, d = ctx.report, ctx.tree, ctx.opt.digits
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
                row = [ctx.label(m), regime.label()]
                for g, members in info.groups.items():
                    vals = np.concatenate([group_case_values(f.dice, info.key_to_name, members) for f in folds])
                    row.append(ctx.ci(vals).fmt(d) if vals.size else "n/a")
                rows.append(row)
        caption = "; ".join(f"{g}: {', '.join(ms)}" for g, ms in info.groups.items())
        r.add(Heading(3, ds), Table(["method", "regime"] + list(info.groups), rows,
                                    caption=f"{ds}: mean Dice of each group's labels per case [CI]. {caption}"))
    if not shown and not t.folds:
        r.add(Para("No data.", note=True))


def modality(ctx: ReportContext) -> None:
    """Add the "CT versus MRI" section: per modality, regime and method, the mean of the task means of
    foreground Dice (each dataset weighs the same) with a CI from resampling cases within each task; a note when the
    target datasets are not both CT and MRI."""
    r, t, d = ctx.report, ctx.tree, ctx.opt.digits
    r.add(Heading(2, "CT versus MRI"))
    by: dict[tuple[str, Regime, str], list[np.ndarray]] = {}
    tasks: dict[tuple[str, Regime, str], list[str]] = {}
    for ds in t.dataset_names():
        mod = t.datasets[ds].modality
        for regime in t.regimes(ds):
            for m in t.methods(ds, regime):
                vals = np.array(list(case_means(ctx.cases(ds, regime, m)).values()))
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
    for key in sorted(by, key=lambda k: (k[0], regime_sort_key(k[1]), k[2] != ctx.opt.baseline, k[2])):
        mod, regime, m = key
        c = stratified_bootstrap_ci(by[key], n_boot=ctx.opt.n_boot, seed=ctx.opt.seed, level=ctx.opt.level)
        rows.append([mod, regime.label(), ctx.label(m), str(c.n), c.fmt(d), ", ".join(tasks[key])])
    r.add(Table(["modality", "regime", "method", "tasks", "mean of task means [CI]", "datasets"], rows,
                caption="Foreground Dice averaged over tasks (each task weighs the same); CI from resampling "
                        "cases within each task."))
