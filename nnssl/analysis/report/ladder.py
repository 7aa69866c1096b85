"""The adaptation ladder: Dice of every method under each protocol (full fine-tuning, frozen encoder, per-stage
probes, decoder-first warm-up, layer-wise lr decay), and pretraining against scratch within each rung.

A rung is part of the regime (``Regime.protocol``), so a pretrained method is compared with the from-scratch runs of
the same protocol: a frozen pretrained encoder with a frozen random one (the probe's floor). Those comparisons form
their own Holm family over every rung's rows; the headline keeps full fine-tuning only.
"""
from __future__ import annotations

import math

from nnssl.analysis.report.baselines import Comparison, compare_family, significant
from nnssl.analysis.report.blocks import Figure, Heading, Para, Table
from nnssl.analysis.report.context import ReportContext
from nnssl.analysis.report.format import pyplot, save_figure, slug
from nnssl.analysis.results import Regime
from nnssl.nnunet.naming import FULL, is_scratch, protocol_label


def _groups(ctx: ReportContext, ds: str) -> dict[Regime, list[Regime]]:
    """Regimes of a dataset grouped by everything but the protocol (key: the full-fine-tuning regime)."""
    out: dict[Regime, list[Regime]] = {}
    for regime in ctx.tree.regimes(ds):
        out.setdefault(regime.full, []).append(regime)
    return out


def ladder(ctx: ReportContext) -> None:
    """Add the "Adaptation ladder" section (only when a run uses a protocol other than full fine-tuning): per
    dataset and regime, a table and figure of each Swin method's Dice [CI] under each protocol, then one Holm family
    of pretrained methods against the from-scratch runs of the same encoder and protocol (:func:`compare_family`)."""
    r, t, d = ctx.report, ctx.tree, ctx.opt.digits
    if not any(f.regime.protocol != FULL for f in t.folds):
        return  # no rung but full fine-tuning: nothing to add to the tables above
    level = int(round(ctx.opt.level * 100))
    r.add(Heading(2, "Adaptation ladder"))
    comparisons = []
    for ds in t.dataset_names():
        for base, regimes in _groups(ctx, ds).items():
            if all(reg.protocol == FULL for reg in regimes):
                continue
            methods = sorted({m for reg in regimes for m in ctx.swin_methods(ds, reg)},
                             key=lambda m: (not is_scratch(m), m))
            rows = []
            for m in methods:
                row = [m]
                for reg in regimes:
                    row.append(ctx.case_ci(ds, reg, m).fmt(d) if m in t.methods(ds, reg) else "-")
                rows.append(row)
            label = base.label()
            r.add(Heading(3, f"{ds}, {label}"))
            r.add(Table(["method"] + [protocol_label(reg.protocol) for reg in regimes], rows,
                        caption=f"{ds}, {label}: mean foreground Dice [{level}% CI] per adaptation protocol (columns); "
                                "scratch rows under frozen or probe protocols are the random-encoder floor."))
            r.add(_figure(ctx, ds, base, regimes, methods))
            for reg in regimes:
                if reg.protocol == FULL:
                    continue
                for m in ctx.swin_methods(ds, reg):
                    b = ctx.baseline_for(ds, reg, m) if not is_scratch(m) else None
                    if b is not None:
                        comparisons.append(Comparison(ds, reg, m, reg, b))
    if not comparisons:
        r.add(Para("No rung has a pretrained method and a from-scratch run of the same protocol: fine-tune scratch "
                   "with the same protocols (methods: [scratch, ...] in the grid spec).", note=True))
        return
    rows = compare_family(ctx, comparisons)
    sig = significant(rows)
    sentence = (f"{len(sig)} of {len(rows)} rung comparisons of pretraining against scratch are significant after "
                f"Holm's correction over the {len(rows)} rows of this table" + (
                    ": " + "; ".join(f"{row[2]} on {row[0]} ({row[1]}: {row[6]})" for row in sig) + "." if sig
                    else " (p < 0.05 needed)."))
    r.add(Para(sentence))
    r.add(Table(["dataset", "regime", "method", f"Dice [{level}% CI]", "baseline", f"baseline Dice [{level}% CI]",
                 f"difference [{level}% CI]", "cases", "p (Holm)", "sig.", "note"], rows,
                caption="Each pretrained method against the from-scratch runs of the same encoder and protocol, per "
                        "rung; p: paired Wilcoxon over cases, or with k-shot draws the crossed draws x cases t "
                        "test; Holm-corrected over this table (a family of its own)."))


def _figure(ctx: ReportContext, ds: str, base: Regime, regimes: list[Regime], methods: list[str]) -> Figure:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(regimes) + 2.5), 3.6))
    xs = list(range(len(regimes)))
    for j, m in enumerate(methods):
        pts = []
        for i, reg in enumerate(regimes):
            if m not in ctx.tree.methods(ds, reg):
                continue
            c = ctx.case_ci(ds, reg, m)
            if math.isfinite(c.mean):
                pts.append((i + (j - (len(methods) - 1) / 2) * 0.06, c.mean,
                            c.mean - c.low if math.isfinite(c.low) else 0.0,
                            c.high - c.mean if math.isfinite(c.high) else 0.0))
        if pts:
            x, y, lo, hi = zip(*pts)
            ax.errorbar(x, y, yerr=[lo, hi], marker="o", capsize=2, label=m, color=ctx.colors.get(m),
                        linestyle="--" if is_scratch(m) else "-")
    ax.set_xticks(xs, [protocol_label(reg.protocol) for reg in regimes], rotation=20, ha="right", fontsize=7)
    ax.set_ylabel("foreground Dice")
    ax.set_ylim(0, 1)
    ax.set_title(f"{ds}, {base.label()}: adaptation ladder, {int(ctx.opt.level * 100)}% CI", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    p = save_figure(fig, ctx.fig_dir / f"ladder_{slug(ds, base.label())}.png")
    return Figure(p, f"{ds}, {base.label()}: Dice per adaptation protocol (dashed: from scratch)")
