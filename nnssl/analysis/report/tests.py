"""Paired tests with Holm correction: each method against the baseline, the best against the rest.

Wilcoxon over the validation cases where each fold has one run; where k-shot draws repeat the cases, the crossed
draws x cases t test of ``dice_stats.paired_draw_test``, so the draws' spread counts.
"""
from __future__ import annotations

import math

import numpy as np

from nnssl.analysis.dice_stats import holm, paired_draw_test, significance_marker
from nnssl.analysis.report.blocks import Heading, Para, Table
from nnssl.analysis.report.context import ReportContext
from nnssl.analysis.report.format import fmt, fmt_p
from nnssl.analysis.results import Regime, case_means, paired_draw_matrices
from nnssl.nnunet.naming import is_scratch


def compare(ctx: ReportContext, ds: str, regime: Regime, pairs: list[tuple[str, str]], family: str):
    """Paired tests (``paired_draw_test``) of the given (A, B) pairs, Holm-corrected as one family.

    Returns (table, {(A, B): (PairedTest, Holm-adjusted p)})."""
    res = []
    for a, b in pairs:
        ma, mb = paired_draw_matrices(ctx.cases(ds, regime, a), ctx.cases(ds, regime, b))
        res.append(((a, b), paired_draw_test(ma, mb)))
    adj = holm([pt.p for _, pt in res])
    rows = []
    for ((a, b), pt), p_adj in zip(res, adj):
        statistic = f"t={fmt(pt.statistic, 2)}" if pt.note.startswith("crossed") else fmt(pt.statistic, 1)
        rows.append([f"{a} vs {b}", str(pt.n), fmt(pt.mean_diff, ctx.opt.digits), statistic,
                     fmt_p(pt.p), fmt_p(p_adj), significance_marker(p_adj), pt.note])
    table = Table(["comparison", "pairs", "mean diff (A-B)", "W", "p", "p (Holm)", "sig.", "note"], rows,
                  caption=f"{ds}, {regime.label()}: {family} (paired test on foreground Dice: Wilcoxon over the "
                          f"validation cases, or with k-shot draws the crossed draws x cases t test over the draws "
                          f"both share (its statistic in the W column as t=...); mean diff: over those draws and "
                          f"cases; Holm-corrected within this table)")
    return table, {pair: (pt, p_adj) for (pair, pt), p_adj in zip(res, adj)}


def significance(ctx: ReportContext) -> None:
    """Add the "Paired tests" section: per dataset and regime with >= 2 Swin methods, Holm-corrected paired-test
    tables of each pretrained method against its from-scratch baseline (when the baseline ran) and of the best method
    against the others (unless that repeats the first); the best-vs-baseline row goes to ``ctx.summary_rows``."""
    r, t, base, d = ctx.report, ctx.tree, ctx.opt.baseline, ctx.opt.digits
    r.add(Heading(2, "Paired tests"))
    any_table = False
    for ds in t.dataset_names():
        for regime in t.regimes(ds):
            methods = ctx.swin_methods(ds, regime)  # CNN baselines: their own family (report.baselines)
            means = {m: float(np.nanmean(list(case_means(ctx.cases(ds, regime, m)).values()) or [np.nan]))
                     for m in methods}
            finite = {m: v for m, v in means.items() if math.isfinite(v)}
            best = max(finite, key=lambda m: (finite[m], m == base)) if finite else None
            if len(methods) < 2:
                continue
            r.add(Heading(3, f"{ds}, {regime.label()}"))
            any_table = True
            vs_base: dict = {}
            pairs = [(m, ctx.baseline_for(ds, regime, m)) for m in methods if not is_scratch(m)]
            pairs = [(m, b) for m, b in pairs if b is not None]
            if base in methods and pairs:
                family = f"each method vs {base}" if all(b == base for _, b in pairs) else \
                    "each method vs the from-scratch runs of its encoder"
                table, vs_base = compare(ctx, ds, regime, pairs, family)
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
                r.add(compare(ctx, ds, regime, [(best, m) for m in others],
                                    f"best method ({best}) vs each other")[0])
            if base in methods:
                pt, p_adj = vs_base.get((best, base), (None, math.nan))
                ctx.summary_rows.append([
                    ds, regime.label(), best, fmt(finite[best], d), fmt(means.get(base), d),
                    fmt(pt.mean_diff, d) if pt else "-", fmt_p(p_adj) if pt else "-",
                    significance_marker(p_adj) if pt else "(best is the baseline)"])
    if not any_table:
        r.add(Para("Paired tests need at least two methods on the same dataset and regime; none found.",
                   note=True))
