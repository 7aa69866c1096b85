"""The headline: every pretrained method against its from-scratch baseline, per dataset and regime, in one table.

Each row: the method's mean foreground Dice with its CI, the baseline's (the from-scratch runs of the same encoder,
``ReportContext.baseline_for``), and their difference with its CI and a two-sided paired test: the case bootstrap and
Wilcoxon over the cases for a single run per fold; where repeated runs (k-shot draws, all-cases repeats) share the
cases, the crossed draws x cases t interval and t test on the paired differences (``dice_stats.draw_case_ci``,
``paired_draw_test``), so that p and the CI agree. Holm's correction runs over every comparison of the table (methods
x datasets x regimes), so the family is fixed before anything is looked at; per-label comparisons are in the detail
tables below. One sentence says which differences are significant, or that none are at this budget, and one what the
design could have detected: the smallest difference found at 80% power after the correction, at the pooled spread of
the paired per-case differences of the rows with one run per fold, and, for the rows with repeated runs, with the
draws as the unit (``nnssl.analysis.power``).
"""
from __future__ import annotations

import math

import numpy as np

from nnssl.analysis.dice_stats import draw_case_ci, holm, paired_draw_test, per_draw_means, significance_marker
from nnssl.analysis.power import design_sentence, draw_design_sentence, pilot_sd
from nnssl.analysis.report.blocks import Heading, Para, Table
from nnssl.analysis.report.context import ReportContext
from nnssl.analysis.report.format import fmt_p
from nnssl.analysis.results import Regime, paired_case_means, paired_draw_matrices
from nnssl.nnunet.naming import is_scratch


def headline(ctx: ReportContext) -> None:
    """Add the headline section: one table of every pretrained method against its from-scratch baseline
    (:func:`comparisons`, full fine-tuning) with Dice CIs, the CI of the difference and the paired test's p
    (``paired_draw_test``) Holm-corrected over the table; a sentence on the significant rows, one on the detectable
    difference."""
    r, d = ctx.report, ctx.opt.digits
    level = int(round(ctx.opt.level * 100))
    r.add(Heading(2, "Headline: pretraining against training from scratch"))
    rows, tests, differences, draw_differences = [], [], [], []
    unmatched: list[str] = []
    for ds, regime, m, base in comparisons(ctx, unmatched):
        a, b = ctx.cases(ds, regime, m), ctx.cases(ds, regime, base)
        ma, mb = paired_draw_matrices(a, b)
        diff = draw_case_ci(ma - mb, n_boot=ctx.opt.n_boot, seed=ctx.opt.seed, level=ctx.opt.level)
        pt = paired_draw_test(ma, mb)
        case_a, case_b, _ = paired_case_means(a, b)
        tests.append(pt)
        differences.append(case_a - case_b)
        draw_differences.append(per_draw_means(ma - mb))
        rows.append([ds, regime.label(), m, ctx.case_ci(ds, regime, m).fmt(d), base,
                     ctx.case_ci(ds, regime, base).fmt(d), diff.fmt(d), str(pt.n)])
    if not rows:
        r.add(Para("No pretrained method has a from-scratch baseline of its encoder in the same dataset and regime: "
                   "run the scratch trainers too (methods: [scratch, ...] in the grid spec).", note=True))
        return
    adjusted = holm([pt.p for pt in tests])
    for row, pt, p in zip(rows, tests, adjusted):
        row += [fmt_p(p), significance_marker(p), pt.note]
    significant = [f"{row[2]} on {row[0]} ({row[1]}: {row[6]})" for row, p in zip(rows, adjusted)
                   if math.isfinite(p) and p < 0.05]
    if significant:
        sentence = (f"{len(significant)} of {len(rows)} differences to training from scratch are significant after "
                    f"Holm's correction over all {len(rows)} comparisons (p < 0.05): " + "; ".join(significant) + ".")
    else:
        sentence = (f"None of the {len(rows)} differences to training from scratch is significant after Holm's "
                    f"correction over all {len(rows)} comparisons at this budget (p < 0.05 needed); the "
                    f"{level}% intervals show how large a difference the runs can still hide.")
    r.add(Para(sentence))
    single = [i for i, x in enumerate(draw_differences) if x.size < 2]  # the rows a Wilcoxon over cases tests
    power = _power_sentence([differences[i] for i in single], [tests[i].n for i in single], len(tests), d)
    if power:
        r.add(Para(power))
    draws_power = _draws_power_sentence(draw_differences, len(tests), d)
    if draws_power:
        r.add(Para(draws_power))
    r.add(Table(
        ["dataset", "regime", "method", f"Dice [{level}% CI]", "baseline", f"baseline Dice [{level}% CI]",
         f"difference [{level}% CI]", "cases", "p (Holm)", "sig.", "note"], rows,
        caption="Mean foreground Dice per method against the from-scratch runs of the same encoder; CIs bootstrap "
                "the validation cases (one run per fold) or, with repeated runs (k-shot draws, all-cases repeats), "
                "come from the crossed draws x cases model; p: paired Wilcoxon over cases, or with repeated runs that "
                "model's t test; Holm-corrected over every row of this table."))
    if unmatched:
        r.add(Para("No from-scratch baseline of the same encoder for: " + ", ".join(unmatched) + ". Their "
                   "comparisons would mix pretraining with architecture; the grid plans a scratch run per encoder "
                   "(`scratch-<encoder>`).", note=True))


def comparisons(ctx: ReportContext, unmatched: list[str] | None = None) -> list[tuple[str, Regime, str, str]]:
    """The headline's family of tests: (dataset, regime, pretrained method, its from-scratch baseline), in table
    order; methods without a baseline of their encoder are appended to ``unmatched`` as "m (dataset, regime)"."""
    t, out = ctx.tree, []
    for ds in t.dataset_names():
        for regime in ctx.headline_regimes(ds):  # full fine-tuning: the ladder's rungs have their own family
            for m in ctx.swin_methods(ds, regime):  # the CNN baselines too (report.baselines)
                if is_scratch(m):
                    continue
                base = ctx.baseline_for(ds, regime, m)
                if base is None:
                    if unmatched is not None:
                        unmatched.append(f"{m} ({ds}, {regime.label()})")
                    continue
                out.append((ds, regime, m, base))
    return out


def paired_differences(ctx: ReportContext) -> list[np.ndarray]:
    """Per comparison of the headline, the paired per-case differences (method - baseline, each case averaged over
    the draws both share): the spread a power calculation for a larger design starts from."""
    out = []
    for ds, regime, m, base in comparisons(ctx):
        case_a, case_b, _ = paired_case_means(ctx.cases(ds, regime, m), ctx.cases(ds, regime, base))
        out.append(case_a - case_b)
    return out


def _power_sentence(differences: list, cases: list[int], comparisons: int, digits: int) -> str | None:
    """What the rows with one run per fold could detect with the Wilcoxon over cases, at Holm's correction over all
    ``comparisons`` of the table (None when no such row has two paired cases to measure a spread)."""
    try:
        sd, _ = pilot_sd(differences)
    except ValueError:
        return None
    return design_sentence(sd, cases, comparisons=comparisons, digits=digits)


def _draws_power_sentence(draw_differences: list[np.ndarray], comparisons: int, digits: int) -> str | None:
    """What the rows with two or more k-shot draws could detect with the draws as the unit (None without such
    rows); the Holm family is the whole table's."""
    with_draws = [x for x in draw_differences if x.size >= 2]
    if not with_draws:
        return None
    sd, _ = pilot_sd(with_draws)
    return draw_design_sentence(sd, [x.size for x in with_draws], comparisons=comparisons, digits=digits)
