"""Against the CNN baseline: every Swin run (pretrained and scratch, every rung of the ladder) against the reference
CNN baseline of the same dataset, shots and budget, as one family of tests.

The reference (``ReportOptions.cnn_reference``, the grid passes the spec's ``reference_baseline``, default its first
baseline) is fixed before the results are read, never picked from them. Rows pair the same validation cases of the
same folds and k-shot draws (the CNN runs train on the Swin runs' splits and subsets), with the CI of the difference
and a paired test (``dice_stats.draw_case_ci`` and ``paired_draw_test``: the case bootstrap and Wilcoxon over cases,
the crossed draws x cases model where repeated runs share the cases), Holm-corrected over this table only: the
headline's SSL-vs-scratch family is not diluted by it. Other CNN baselines appear in the Dice tables, marked,
without tests.
"""
from __future__ import annotations

from dataclasses import dataclass

from nnssl.analysis.dice_stats import draw_case_ci, holm, paired_draw_test, significance_marker
from nnssl.analysis.report.blocks import Heading, Para, Table
from nnssl.analysis.report.context import ReportContext
from nnssl.analysis.report.format import fmt_p
from nnssl.analysis.results import Regime, paired_draw_matrices
from nnssl.nnunet.naming import is_cnn_baseline


@dataclass(frozen=True)
class Comparison:
    """Method ``a`` in regime ``regime_a`` against method ``b`` in ``regime_b`` on one dataset."""

    dataset: str
    regime_a: Regime
    a: str
    regime_b: Regime
    b: str


def compare_family(ctx: ReportContext, comparisons: list[Comparison]) -> list[list[str]]:
    """One row per comparison: Dice of A and B with CIs, the difference A - B with its CI (``draw_case_ci``), the
    paired cases, Holm-adjusted p over the whole list (one family), its marker and the test's note."""
    d = ctx.opt.digits
    rows, tests = [], []
    for c in comparisons:
        xa, xb = ctx.cases(c.dataset, c.regime_a, c.a), ctx.cases(c.dataset, c.regime_b, c.b)
        ma, mb = paired_draw_matrices(xa, xb)
        diff = draw_case_ci(ma - mb, n_boot=ctx.opt.n_boot, seed=ctx.opt.seed, level=ctx.opt.level)
        pt = paired_draw_test(ma, mb)
        tests.append(pt)
        rows.append([c.dataset, c.regime_a.label(), ctx.label(c.a), ctx.case_ci(c.dataset, c.regime_a, c.a).fmt(d),
                     ctx.label(c.b), ctx.case_ci(c.dataset, c.regime_b, c.b).fmt(d), diff.fmt(d), str(pt.n)])
    for row, pt, p in zip(rows, tests, holm([pt.p for pt in tests])):
        row += [fmt_p(p), significance_marker(p), pt.note]
    return rows


def significant(rows: list[list[str]]) -> list[list[str]]:
    """Rows of :func:`compare_family` significant after Holm's correction (p < 0.05: a marker in column -2)."""
    return [row for row in rows if row[-2] in ("*", "**", "***")]


def cnn_comparison(ctx: ReportContext) -> None:
    """Add the "Against the CNN baseline" section (nothing when no CNN runs exist): every Swin method of
    each regime against the reference CNN baseline (``opt.cnn_reference``) of the same shots and budget under full
    fine-tuning, one Holm family (:func:`compare_family`), with a sentence naming the significant rows."""
    r, t = ctx.report, ctx.tree
    ref = ctx.opt.cnn_reference
    found = sorted({f.method for f in t.folds if is_cnn_baseline(f.method)})
    if not found:
        return  # no CNN runs: nothing to compare (the grid trains them with baselines: [nnunet, ...])
    level = int(round(ctx.opt.level * 100))
    r.add(Heading(2, f"Against the CNN baseline ({ref})"))
    comparisons = []
    for ds in t.dataset_names():
        for regime in t.regimes(ds):
            if ref not in t.methods(ds, regime.full):
                continue
            comparisons += [Comparison(ds, regime, m, regime.full, ref) for m in ctx.swin_methods(ds, regime)]
    if not comparisons:
        r.add(Para(f"No run of the reference CNN baseline `{ref}` beside the Swin runs (CNN baselines found: "
                   f"{', '.join(found)}). The reference is fixed before the results are read: pass it with "
                   "--cnn-reference (the grid passes the spec's reference_baseline).", note=True))
        return
    rows = compare_family(ctx, comparisons)
    sig = significant(rows)
    if sig:
        sentence = (f"{len(sig)} of {len(rows)} differences to the CNN baseline {ref} are significant after Holm's "
                    f"correction over this table's {len(rows)} comparisons: "
                    + "; ".join(f"{row[2]} on {row[0]} ({row[1]}: {row[6]})" for row in sig) + ".")
    else:
        sentence = (f"None of the {len(rows)} differences to the CNN baseline {ref} is significant after Holm's "
                    f"correction over this table's {len(rows)} comparisons (p < 0.05 needed).")
    r.add(Para(sentence + " This family is separate from the headline's: its tests do not enter that correction."))
    r.add(Table(["dataset", "regime", "method", f"Dice [{level}% CI]", "CNN baseline", f"CNN Dice [{level}% CI]",
                 f"difference [{level}% CI]", "cases", "p (Holm)", "sig.", "note"], rows,
                caption=f"Every Swin run against {ref} trained on the same folds, k-shot subsets and draws "
                        "(ladder rungs against the CNN of the same shots and budget); CIs over cases, with repeated "
                        "runs (k-shot draws, all-cases repeats) from the crossed draws x cases model; p: paired "
                        "Wilcoxon over cases, or with repeated runs that model's t test; Holm-corrected over this "
                        "table."))
    others = [b for b in found if b != ref]
    if others:
        r.add(Para(f"Other CNN baselines ({', '.join(others)}) are shown in the Dice tables, marked, without tests: "
                   f"the reference of this family is {ref}.", note=True))
