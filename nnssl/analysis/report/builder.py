"""The report's order of sections: each is a function of its own module taking the shared ``ReportContext``."""
from __future__ import annotations

from nnssl.analysis.report import attention, dice, features, headline, overview, pretraining, tests, training
from nnssl.analysis.report import baselines, cost, design, ladder
from nnssl.analysis.report.blocks import Heading, Para, Report, Table
from nnssl.analysis.report.context import ReportContext


def build(ctx: ReportContext) -> Report:
    """Run every section in the report's order: the title, the headline (what a reader looks at first), the
    overview, and the summary table before the Dice section."""
    r = ctx.report
    ctx.fig_dir.mkdir(parents=True, exist_ok=True)
    r.add(Heading(1, r.title))
    headline.headline(ctx)
    overview.overview(ctx)
    summary_at = len(r.blocks)
    dice.dice(ctx)
    tests.significance(ctx)
    if ctx.summary_rows:
        r.blocks[summary_at:summary_at] = [Heading(2, "Summary"), Table(
            ["dataset", "regime", "best method", "its foreground Dice", f"{ctx.opt.baseline} Dice",
             f"difference vs {ctx.opt.baseline}", "p (Holm)", "sig."], ctx.summary_rows,
            caption="Best method per task and regime (highest mean foreground Dice) against the baseline; "
                    "details in the sections below.")]
    ladder.ladder(ctx)
    baselines.cnn_comparison(ctx)
    dice.groups(ctx)
    dice.modality(ctx)
    training.convergence(ctx)
    training.fewshot(ctx)
    cost.cost(ctx)
    design.design(ctx)
    features.cka(ctx)
    attention.attention(ctx)
    pretraining.pretraining(ctx)
    r.add(Heading(2, "Definitions"), Para(
        "Dice per case comes from nnU-Net's validation/summary.json (validation cases of each fold, pooled over "
        "folds). Foreground Dice of a case = mean over its foreground labels that are defined (nnU-Net writes NaN "
        "when a label is absent from reference and prediction). Confidence intervals: percentile bootstrap over "
        f"cases, {ctx.opt.n_boot} resamples, seed {ctx.opt.seed}; with repeated runs (k-shot draws or all-cases "
        "repeats), which validate on the same cases, the t interval of the crossed draws x cases random-effects "
        "model (Satterthwaite's degrees of "
        "freedom). Tests: two-sided paired Wilcoxon signed-rank over common cases (zero differences dropped); with "
        "repeated runs, that model's t test on the paired differences of the draws both sides share, so p agrees "
        "with "
        "the CI; Holm-corrected "
        "within each table family (the headline: over all its rows); "
        "* p<0.05, ** p<0.01, *** p<0.001 after correction, ns otherwise. See documentation/report.md."))
    return r
