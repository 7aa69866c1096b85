"""Fine-tuning convergence from nnU-Net's logs and the few-to-many-shot gap."""
from __future__ import annotations

from nnssl.analysis.convergence import FRACTIONS, analyse_log, ema_from_log, plot_curves
from nnssl.analysis.fewshot import paired_gap
from nnssl.analysis.report.blocks import Figure, Heading, Para, Table
from nnssl.analysis.report.context import ReportContext
from nnssl.analysis.report.format import fmt, fmt_spread, save_figure, slug
from nnssl.analysis.results import case_means, paired_arrays
from nnssl.nnunet.naming import FULL, protocol_label


def convergence(ctx: ReportContext) -> None:
    """Add the "Convergence" section from the folds' training logs: per dataset and regime a table of each
    method over its runs (epochs trained, final and best EMA pseudo-Dice, epochs to x% of final and AUC with bootstrap
    CIs, s/epoch) and a figure of the EMA pseudo-Dice curves; a note when no fold has a log."""
    r, t = ctx.report, ctx.tree
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
                        key = f"{ctx.label(m)} fold {f.fold}" + (f" draw {f.run.draw}" if f.run.draw else "")
                        curves[key] = ema_from_log(f.logging)[0]
                        # one colour per method, one line style per fold
                        styles[key] = {"color": ctx.colors[m],
                                       "linestyle": ("-", "--", ":", "-.")[(len(convs) - 1) % 4]}
                    except ValueError as e:
                        r.warnings.append(f"{f.path}: {e}")
                if not convs:
                    continue
                # epochs-to-x% and AUC: mean with a bootstrap CI over the runs (folds, and k-shot draws)
                rows.append([ctx.label(m), str(len(convs)), fmt_spread([c.n_epochs for c in convs], 0),
                             fmt_spread([c.final for c in convs], 3), fmt_spread([c.best for c in convs], 3)]
                            + [run_ci(ctx, [c.epochs_to[fr] for c in convs], 1) for fr in FRACTIONS]
                            + [run_ci(ctx, [c.auc for c in convs], 3)]
                            + [fmt_spread([c.seconds_per_epoch for c in convs], 1),
                               "; ".join(sorted({c.note for c in convs if c.note}))])
            if not rows:
                continue
            any_log = True
            level = int(round(ctx.opt.level * 100))
            r.add(Heading(3, f"{ds}, {regime.label()}"), Table(
                ["method", "runs", "epochs trained", "final EMA pseudo-Dice", "best EMA pseudo-Dice"]
                + [f"epochs to {p}% of final" for p in pct] + ["AUC / epochs", "s/epoch", "note"], rows,
                caption=f"{ds}, {regime.label()}: convergence over the runs (folds, and k-shot draws); epochs to x% "
                        f"and AUC / epochs (mean EMA pseudo-Dice over training): mean [{level}% bootstrap CI over "
                        "runs], other columns: mean (min-max when runs differ)"))
            fig = plot_curves(curves, title=f"{ds}, {regime.label()}", styles=styles)
            p = save_figure(fig, ctx.fig_dir / f"convergence_{slug(ds, regime.label())}.png")
            r.add(Figure(p, f"{ds}, {regime.label()}: EMA validation pseudo-Dice per epoch; dots mark 95% of final"))
    if not any_log:
        r.add(Para("No training logs found (checkpoint_final.pth / checkpoint_latest.pth with a 'logging' dict), "
                   "so convergence cannot be reported.", note=True))


def run_ci(ctx: ReportContext, values: list, digits: int) -> str:
    """Mean [CI] of one value per run, bootstrapping the runs; undefined values (None, NaN) are left out."""
    return ctx.ci([float("nan") if v is None else float(v) for v in values]).fmt(digits)


def fewshot(ctx: ReportContext) -> None:
    """Add the "Few-to-many-shot gap" section: for each dataset and method with an all-cases run and a k-shot run
    of the same budget, configuration and protocol, the Dice of both on the paired validation cases (k-shot draws
    averaged per case) and the relative gap % [CI]; a note when no such pair exists."""
    r, t = ctx.report, ctx.tree
    r.add(Heading(2, "Few-to-many-shot gap"))
    rows = []
    for ds in t.dataset_names():
        regimes = t.regimes(ds)
        for full in (reg for reg in regimes if reg.shots == "all"):
            for few in (reg for reg in regimes if reg.shots != "all" and reg.epochs == full.epochs
                        and reg.configuration == full.configuration and reg.protocol == full.protocol):
                for m in t.methods(ds, few):
                    if m not in t.methods(ds, full):
                        continue
                    # per validation case: the all-cases run against the k-shot draws' mean
                    a, k, _ = paired_arrays(case_means(ctx.cases(ds, full, m)), case_means(ctx.cases(ds, few, m)))
                    g = paired_gap(a, k, n_boot=ctx.opt.n_boot, seed=ctx.opt.seed, level=ctx.opt.level)
                    budget = "" if full.epochs is None else f", {full.epochs} epochs"
                    rung = f", {protocol_label(few.protocol)}" if few.protocol != FULL else ""
                    rows.append([ds, ctx.label(m), f"{few.shots}-shot{budget}{rung}", str(g.n), fmt(g.dice_all, 3),
                                 fmt(g.dice_k, 3), g.fmt(1)])
    if not rows:
        r.add(Para("Needs, for the same dataset and method, a run on all cases and a k-shot run "
                   "(Swin*Trainer_<k>shot); none found.", note=True))
        return
    r.add(Table(["dataset", "method", "regime", "paired cases", "Dice all", "Dice k-shot", "gap % [CI]"], rows,
                caption="gap % = (Dice_all - Dice_kshot) / Dice_all * 100 on the same validation cases; "
                        "smaller = less lost with few labels."))
