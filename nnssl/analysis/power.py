"""How large a Dice difference a design can detect: power of the headline's paired, Holm-corrected tests.

The headline compares each pretrained method with its from-scratch baseline by a two-sided paired Wilcoxon
signed-rank test over validation cases (or, where k-shot draws repeat the cases, by the t test of the crossed
draws x cases model; ``dice_stats.paired_draw_test``) and corrects the p-values with Holm's method over all ``m``
comparisons. Holm's first step tests the smallest p-value at
``alpha / m``, so a design that detects a difference at ``alpha / m`` detects it under Holm; this module sizes at that
level (conservative for every later step).

Power of the Wilcoxon test is approximated through the paired t-test on ``n * 3 / pi`` cases: ``3 / pi`` is the
asymptotic relative efficiency of the signed-rank test to the t-test for normally distributed differences (Hodges &
Lehmann 1956, Ann. Math. Statist. 27(2):324-335), the least favourable common case. Besides the approximation, the
exact test has a hard floor: with ``n`` non-zero differences its smallest two-sided p-value is ``2 / 2**n``, so fewer
than :func:`wilcoxon_floor_cases` cases can never be significant, whatever the difference.

With repeated draws (k-shot subsets, or repeated all-cases runs) the training run is a second source of spread that
more validation cases do not shrink: the draws are then the unit of the test. :func:`draw_detectable_difference`
sizes that design as a paired t-test over the per-draw mean differences (``draws - 1`` degrees of freedom) at
Holm's first level: the crossed test the report runs comes to that when the draws' spread dominates, and has more
degrees of freedom (more power) when the cases' spread does, so this is the bound to plan with.

All sizes are in Dice (a difference of 0.05 = five Dice points); ``sd`` is the standard deviation of the per-case
paired differences, measured on a pilot (:func:`pilot_sd`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

#: Asymptotic relative efficiency of the Wilcoxon signed-rank test to the t-test under normal differences.
WILCOXON_ARE = 3.0 / math.pi


def _check(alpha: float, power: float, comparisons: int) -> None:
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"alpha ({alpha}) and power ({power}) must lie strictly between 0 and 1")
    if comparisons < 1:
        raise ValueError(f"comparisons must be >= 1, got {comparisons}")


def wilcoxon_floor_cases(comparisons: int = 1, alpha: float = 0.05) -> int:
    """Smallest number of cases at which the exact two-sided signed-rank test can reach ``p <= alpha / comparisons``
    (its smallest p-value is ``2 / 2**n``). E.g. 6 cases for one comparison, 10 for 16."""
    _check(alpha, 0.5, comparisons)
    return max(1, math.ceil(math.log2(2 * comparisons / alpha)))


def detectable_difference(sd: float, n: int, comparisons: int = 1, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true mean paired difference detected with probability ``power`` by the two-sided Wilcoxon test on
    ``n`` cases at level ``alpha / comparisons``; ``inf`` below the exact test's floor of cases.

    ``(t[1 - alpha / (2 m), df] + t[power, df]) * sd / sqrt(n_eff)`` with ``n_eff = n * 3 / pi`` and ``df = n_eff - 1``
    (the t-test's normal-shift approximation, one-sided tail neglected).
    """
    from scipy.stats import t as student_t

    _check(alpha, power, comparisons)
    if not math.isfinite(sd) or sd < 0:
        raise ValueError(f"sd must be a finite number >= 0, got {sd}")
    if n < wilcoxon_floor_cases(comparisons, alpha) or n * WILCOXON_ARE <= 1:
        return math.inf
    n_eff = n * WILCOXON_ARE
    df = n_eff - 1
    return float((student_t.ppf(1 - alpha / (2 * comparisons), df) + student_t.ppf(power, df)) * sd
                 / math.sqrt(n_eff))


def _smallest_design(detectable: Any, start: int, target: float, limit: int, unit: str, sd: float) -> int:
    """The smallest size from ``start`` up whose ``detectable(size)`` is at most ``target`` (ValueError beyond
    ``limit``; ``unit`` names the size in that message)."""
    if not target > 0:
        raise ValueError(f"target difference must be > 0, got {target}")
    n = start
    while detectable(n) > target:
        n += 1
        if n > limit:
            raise ValueError(f"more than {limit} {unit} would be needed to detect {target} at sd {sd}")
    return n


def cases_needed(target: float, sd: float, comparisons: int = 1, alpha: float = 0.05, power: float = 0.8,
                 limit: int = 100_000) -> int:
    """Smallest number of validation cases whose design detects ``target`` (see :func:`detectable_difference`)."""
    return _smallest_design(lambda n: detectable_difference(sd, n, comparisons, alpha, power),
                            wilcoxon_floor_cases(comparisons, alpha), target, limit, "cases", sd)


def pilot_sd(differences: Sequence[Any]) -> tuple[float, int]:
    """Pooled standard deviation of paired per-case differences over several comparisons (one array each, NaN
    dropped): the square root of the mean of their sample variances weighted by degrees of freedom. Returns
    (sd, total cases). Comparisons with fewer than two cases do not count."""
    ss, dof, total = 0.0, 0, 0
    for d in differences:
        a = np.asarray(d, dtype=float)
        a = a[np.isfinite(a)]
        if a.size < 2:
            continue
        ss += float(((a - a.mean()) ** 2).sum())
        dof += a.size - 1
        total += a.size
    if dof == 0:
        raise ValueError("no comparison has two or more paired cases: the pilot cannot estimate a spread")
    return math.sqrt(ss / dof), total


def design_sentence(sd: float, cases: Sequence[int], comparisons: int, target: float = 0.05, alpha: float = 0.05,
                    power: float = 0.8, digits: int = 3) -> str:
    """One sentence on what a table of ``comparisons`` tests with these numbers of cases can detect at spread ``sd``."""
    floor = wilcoxon_floor_cases(comparisons, alpha)
    head = (f"The paired per-case differences have a pooled SD of {sd:.{digits}f}; at {power:.0%} power after Holm's "
            f"correction over {comparisons} comparison{'s' if comparisons != 1 else ''}")
    sizes = sorted(set(int(n) for n in cases))
    found = [(n, detectable_difference(sd, n, comparisons, alpha, power)) for n in sizes]
    finite = [(n, x) for n, x in found if math.isfinite(x)]
    if not finite:
        body = (f" no difference can be significant: the exact Wilcoxon test needs at least {floor} cases to reach "
                f"p < {alpha:g}/{comparisons}, these comparisons have {', '.join(str(n) for n in sizes)}")
    else:
        body = " the smallest detectable Dice difference is " + ", ".join(
            f"{x:.{digits}f} with {n} cases" for n, x in finite)
        if len(finite) < len(found):
            body += f" (fewer than {floor} cases can never reach significance)"
    needed = cases_needed(target, sd, comparisons, alpha, power) if sd > 0 else floor
    return head + body + f"; detecting {target:g} would take about {needed} validation cases per comparison."


def draw_detectable_difference(sd: float, draws: int, comparisons: int = 1, alpha: float = 0.05,
                               power: float = 0.8) -> float:
    """Smallest true mean difference detected with probability ``power`` when the k-shot draws are the unit: a
    two-sided paired t-test over ``draws`` per-draw mean differences of spread ``sd`` at level ``alpha /
    comparisons``, ``(t[1 - alpha / (2 m), draws - 1] + t[power, draws - 1]) * sd / sqrt(draws)``; ``inf`` with
    fewer than 2 draws. E.g. sd 0.02 with 3 draws and 16 comparisons: 0.218."""
    from scipy.stats import t as student_t

    _check(alpha, power, comparisons)
    if not math.isfinite(sd) or sd < 0:
        raise ValueError(f"sd must be a finite number >= 0, got {sd}")
    if draws < 2:
        return math.inf
    df = draws - 1
    return float((student_t.ppf(1 - alpha / (2 * comparisons), df) + student_t.ppf(power, df)) * sd
                 / math.sqrt(draws))


def draws_needed(target: float, sd: float, comparisons: int = 1, alpha: float = 0.05, power: float = 0.8,
                 limit: int = 10_000) -> int:
    """Smallest number of k-shot draws whose design detects ``target`` (see :func:`draw_detectable_difference`)."""
    return _smallest_design(lambda r: draw_detectable_difference(sd, r, comparisons, alpha, power), 2, target, limit,
                            "draws", sd)


def draw_design_sentence(sd: float, draws: Sequence[int], comparisons: int, target: float = 0.05,
                         alpha: float = 0.05, power: float = 0.8, digits: int = 3) -> str:
    """One sentence on what the rows with ``draws`` draws each (k-shot draws, all-cases repeats) can detect when the
    per-draw mean differences spread by ``sd`` (``comparisons``: the whole table's Holm family)."""
    sizes = sorted(set(int(r) for r in draws))
    found = ", ".join(f"{draw_detectable_difference(sd, r, comparisons, alpha, power):.{digits}f} with {r} draws"
                      for r in sizes)
    needed = draws_needed(target, sd, comparisons, alpha, power) if sd > 0 else 2
    return (f"In the rows with repeated draws (k-shot subsets or repeated runs) each training run adds its own "
            f"spread: the per-draw mean differences "
            f"have a pooled SD of {sd:.{digits}f}, so with the draws as the unit (a paired t-test over draws at "
            f"{power:.0%} power after Holm's correction over {comparisons} comparison{'s' if comparisons != 1 else ''})"
            f" the smallest detectable difference is {found}; detecting {target:g} would take about {needed} draws "
            f"per comparison.")


__all__ = ["WILCOXON_ARE", "cases_needed", "design_sentence", "detectable_difference", "draw_design_sentence",
           "draw_detectable_difference", "draws_needed", "pilot_sd", "wilcoxon_floor_cases"]
