"""Statistics on per-case Dice scores: bootstrap confidence intervals over cases, the crossed draws x cases model
where repeated k-shot draws validate on the same cases (its t interval and paired t test), paired Wilcoxon tests,
Holm correction, structure-group aggregation and the CT / MRI split of datasets.

The functions take plain numpy arrays: per-case values (one value per validation case) or, with k-shot draws,
(draws, cases) matrices; NaN means "not defined for this case" (nnU-Net writes Dice = NaN when a label is absent
from both reference and prediction) and is dropped.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

STRUCTURE_GROUPS_KEY = "nnssl_structure_groups"
# Wilcoxon's exact two-sided p-value cannot fall below 2 / 2^n: with fewer than 6 non-zero differences p >= 0.0625.
MIN_N_FOR_5PCT = 6


# ----------------------------------------------------------------------------------------------------------------------
# bootstrap confidence intervals
# ----------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MeanCI:
    """Mean over cases with a percentile-bootstrap confidence interval. n = number of (non-NaN) cases."""

    mean: float
    low: float
    high: float
    n: int

    def fmt(self, digits: int = 3) -> str:
        """``mean [low, high]`` with ``digits`` decimals; the mean alone without a CI, ``n/a`` without cases."""
        if self.n == 0 or not math.isfinite(self.mean):
            return "n/a"
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def _clean(values: Any) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64).ravel()
    return x[np.isfinite(x)]


def bootstrap_means(values: Any, n_boot: int = 10000, seed: int = 0, chunk: int = 2_000_000) -> np.ndarray:
    """Bootstrap distribution of the mean: ``n_boot`` means of resamples (with replacement) of the non-NaN values.

    Vectorised: draws an (n_boot, n) index matrix, in chunks of at most ``chunk`` indices to bound memory.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    x = _clean(values)
    n = x.size
    if n == 0:
        raise ValueError("no finite values to bootstrap")
    rng = np.random.default_rng(seed)
    rows = max(1, chunk // n)
    out = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, rows):
        stop = min(n_boot, start + rows)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = x[idx].mean(axis=1)
    return out


def bootstrap_ci(values: Any, n_boot: int = 10000, seed: int = 0, level: float = 0.95) -> MeanCI:
    """Mean of the non-NaN values with a percentile-bootstrap ``level`` CI (Efron & Tibshirani 1993).

    With one case the interval is undefined (NaN bounds); with no cases everything is NaN and n = 0.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    x = _clean(values)
    if x.size == 0:
        return MeanCI(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if x.size == 1:
        return MeanCI(mean, math.nan, math.nan, 1)
    means = bootstrap_means(x, n_boot=n_boot, seed=seed)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return MeanCI(mean, float(low), float(high), int(x.size))


def _draw_case_matrix(matrix: Any) -> np.ndarray:
    """A (draws, cases) matrix as float64 without the cases and draws that hold no finite value."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"expected a (draws, cases) matrix, got shape {m.shape}")
    m = m[:, np.isfinite(m).any(axis=0)]  # cases without any value
    return m[np.isfinite(m).any(axis=1)]  # draws without any value


@dataclass(frozen=True)
class CrossedMean:
    """Mean of a (draws, cases) matrix under the crossed random-effects model of repeated k-shot draws.

    ``x[r, c] = mu + a_r + b_c + e_rc``: draw effects ``a`` (the training subset), case effects ``b`` (the validation
    image) and their interaction. The draws validate on the same cases, so the cases' effect is shared by every draw
    and neither the (draw, case) cells nor the per-case means are independent samples. From the two-way ANOVA
    without replication, ``var(mean) = s_a^2 / R + s_b^2 / N + s_e^2 / (R N)`` with the variance components
    ``s_a^2 = (MS_draw - MS_e) / N``, ``s_b^2 = (MS_case - MS_e) / R`` (each truncated at 0) and ``s_e^2 = MS_e``,
    and Satterthwaite's degrees of freedom for that combination of mean squares: the analysis of multi-reader
    multi-case studies with readers as draws (Dorfman, Berbaum & Metz 1992, Invest. Radiol. 27:723-731; Hillis 2007,
    Stat. Med. 26:596-619). ``draws``/``cases``: the rows and the complete columns used.
    """

    mean: float
    se: float
    df: float
    draws: int
    cases: int


def crossed_mean(matrix: Any) -> CrossedMean | None:
    """The :class:`CrossedMean` of a (draws, cases) matrix over the cases that every draw holds (None with fewer than
    2 draws or 2 such cases)."""
    m = _draw_case_matrix(matrix)
    if m.size:
        m = m[:, np.isfinite(m).all(axis=0)]
    if m.ndim != 2 or m.shape[0] < 2 or m.shape[1] < 2:
        return None
    r, n = m.shape
    grand = float(m.mean())
    draw_means, case_means = m.mean(axis=1), m.mean(axis=0)
    ms_draw = n * float(((draw_means - grand) ** 2).sum()) / (r - 1)
    ms_case = r * float(((case_means - grand) ** 2).sum()) / (n - 1)
    df_e = (r - 1) * (n - 1)
    ms_e = float(((m - draw_means[:, None] - case_means[None, :] + grand) ** 2).sum()) / df_e
    # r n var(mean) = ms_e + max(ms_draw - ms_e, 0) + max(ms_case - ms_e, 0): each mean square once, with its net
    # coefficient (Satterthwaite's approximation needs independent mean squares), as (coefficient, mean square, df)
    kept = [(ms, df) for ms, df in ((ms_draw, r - 1), (ms_case, n - 1)) if ms > ms_e]
    terms = [(1.0 - len(kept), ms_e, df_e)] + [(1.0, ms, df) for ms, df in kept]
    total = sum(c * ms for c, ms, _ in terms)
    spread = sum((c * ms) ** 2 / df for c, ms, df in terms)
    df = total ** 2 / spread if spread > 0 else math.inf
    return CrossedMean(grand, math.sqrt(max(total, 0.0) / (r * n)), max(float(df), 1.0), r, n)


def draw_case_ci(matrix: Any, n_boot: int = 10000, seed: int = 0, level: float = 0.95) -> MeanCI:
    """Mean of a (draws, cases) matrix with a ``level`` CI: with one draw the case bootstrap of
    :func:`bootstrap_ci`; with several, the t interval of the crossed model (:func:`crossed_mean`, Satterthwaite's
    degrees of freedom), the interval :func:`paired_draw_test` inverts. n = the cases with a finite value (the
    interval uses those every draw holds); NaN bounds when fewer than 2 such cases remain."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    m = _draw_case_matrix(matrix)
    n = int(m.shape[1]) if m.size else 0
    if n == 0:
        return MeanCI(math.nan, math.nan, math.nan, 0)
    if m.shape[0] == 1:
        return bootstrap_ci(m[0], n_boot=n_boot, seed=seed, level=level)
    mean = float(np.nanmean(m))
    cm = crossed_mean(m)
    if cm is None:
        return MeanCI(mean, math.nan, math.nan, n)
    from scipy.stats import t as student_t

    half = float(student_t.ppf(0.5 + level / 2.0, cm.df)) * cm.se
    return MeanCI(mean, mean - half, mean + half, n)


def per_draw_means(matrix: Any) -> np.ndarray:
    """Per draw, the mean of a (draws, cases) matrix over its finite values; draws without any are left out."""
    m = np.asarray(matrix, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        per_draw = np.nanmean(m, axis=1) if m.size else np.zeros(0)
    return per_draw[np.isfinite(per_draw)]


def draw_spread(matrix: Any) -> tuple[float, float, int]:
    """Mean and standard deviation (ddof 1) across draws of the per-draw means of a (draws, cases) matrix, and the
    number of draws: the spread of a k-shot result over training subsets."""
    per_draw = per_draw_means(matrix)
    if per_draw.size == 0:
        return math.nan, math.nan, 0
    sd = float(per_draw.std(ddof=1)) if per_draw.size > 1 else math.nan
    return float(per_draw.mean()), sd, int(per_draw.size)


def stratified_bootstrap_ci(
    groups: Sequence[Any], n_boot: int = 10000, seed: int = 0, level: float = 0.95
) -> MeanCI:
    """Mean of group means (e.g. of task means) with a CI from resampling cases *within* each group.

    Used for the CT vs MRI summary: every task weighs the same regardless of its case count. n = number of groups.
    """
    cleaned = [_clean(g) for g in groups]
    cleaned = [g for g in cleaned if g.size > 0]
    if not cleaned:
        return MeanCI(math.nan, math.nan, math.nan, 0)
    mean = float(np.mean([g.mean() for g in cleaned]))
    if any(g.size < 2 for g in cleaned):
        return MeanCI(mean, math.nan, math.nan, len(cleaned))
    boots = np.mean([bootstrap_means(g, n_boot, seed + i) for i, g in enumerate(cleaned)], axis=0)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(boots, [alpha, 1.0 - alpha])
    return MeanCI(mean, float(low), float(high), len(cleaned))


# ----------------------------------------------------------------------------------------------------------------------
# paired tests
# ----------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PairedTest:
    """Result of a paired test of a vs b over the same cases (Wilcoxon signed-rank; with k-shot draws the crossed
    draws x cases t test of :func:`paired_draw_test`).

    n: cases paired; n_nonzero: pairs (cells with draws) with a non-zero difference; mean_diff: mean(a - b);
    statistic: Wilcoxon's W or t; p: two-sided p-value (NaN when the test is undefined; see ``note``).
    """

    n: int
    n_nonzero: int
    mean_diff: float
    statistic: float
    p: float
    note: str = ""


def finite_pairs(a: Any, b: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-case values of two arms as float64, dropping cases with a NaN on either side; ``what`` names the
    comparison in the error raised when the arms have different numbers of cases."""
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"{what}: got {x.size} and {y.size} values")
    ok = np.isfinite(x) & np.isfinite(y)
    return x[ok], y[ok]


def paired_wilcoxon(a: Any, b: Any) -> PairedTest:
    """Two-sided paired Wilcoxon signed-rank test (scipy.stats.wilcoxon, zero differences dropped ("wilcox")).

    a, b: per-case values in the same case order. Pairs with a NaN on either side are dropped.
    Returns p = NaN with a note when there are no pairs or all differences are zero, and a note when fewer than
    6 non-zero differences make p < 0.05 impossible.
    """
    from scipy.stats import wilcoxon

    x, y = finite_pairs(a, b, "paired test needs the same cases on both sides")
    n = int(x.size)
    if n == 0:
        return PairedTest(0, 0, math.nan, math.nan, math.nan, "no paired cases")
    d = x - y
    n_nonzero = int(np.count_nonzero(d))
    mean_diff = float(d.mean())
    if n_nonzero == 0:
        return PairedTest(n, 0, mean_diff, math.nan, math.nan, "all paired differences are zero (identical results)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = wilcoxon(x, y, zero_method="wilcox", alternative="two-sided")
    note = ""
    if n_nonzero < MIN_N_FOR_5PCT:
        note = f"only {n_nonzero} non-zero differences: p < 0.05 is unreachable"
    return PairedTest(n, n_nonzero, mean_diff, float(res.statistic), float(res.pvalue), note)


def paired_draw_test(a: Any, b: Any) -> PairedTest:
    """Paired test of two aligned (draws, cases) matrices: the same k-shot draws and validation cases on both sides.

    One shared draw: the Wilcoxon signed-rank test over the cases (:func:`paired_wilcoxon`). Several: the draws
    validate on the same cases, so a test over the case means averaged across the draws would ignore how much the
    result moves from one training subset to the next (three draws at +0.06, -0.05 and +0.01 still give p < 1e-6),
    and resampling draws and cases (a two-stage bootstrap) rejects a true null far too often with three draws. The
    test is then the t test of the crossed model on the paired differences a - b (:func:`crossed_mean`:
    t = mean / se on Satterthwaite's degrees of freedom), whose interval :func:`draw_case_ci` reports, so p < 1 -
    level exactly where that interval excludes 0. Simulated with 40 cases at nominal 5%, it rejected a true null
    in 5-5.5% of designs with 5 or 10 draws, in 3.5-8.3% with 3 and 10% with 2, depending on how the spread splits
    between draws and cases: few draws cannot pin down the draws' spread. ``n``: cases every shared draw holds;
    ``n_nonzero``: (draw, case) cells whose difference is not 0; ``statistic``: t; ``note`` names the test.
    """
    from scipy.stats import t as student_t

    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"paired draw test needs two aligned (draws, cases) matrices, got {x.shape} and {y.shape}")
    shared = np.flatnonzero(np.isfinite(x - y).any(axis=1))  # draws with a case both sides hold
    if shared.size <= 1:
        row = int(shared[0]) if shared.size else 0
        return paired_wilcoxon(x[row], y[row]) if x.size else paired_wilcoxon([], [])
    d = _draw_case_matrix(x - y)
    d = d[:, np.isfinite(d).all(axis=0)]
    r, n = d.shape
    if n == 0:
        return PairedTest(0, 0, math.nan, math.nan, math.nan, f"no case that all {r} shared draws hold")
    mean_diff = float(d.mean())
    n_nonzero = int(np.count_nonzero(d))
    if n_nonzero == 0:
        return PairedTest(n, 0, mean_diff, math.nan, math.nan, "all paired differences are zero (identical results)")
    cm = crossed_mean(d)
    if cm is None:  # a single complete case
        return PairedTest(n, n_nonzero, mean_diff, math.nan, math.nan, f"only {n} case that all {r} draws hold")
    note = f"crossed draws x cases t test ({r} draws, {n} cases, df {cm.df:.1f})"
    if cm.se == 0.0:  # every cell the same non-zero difference
        return PairedTest(n, n_nonzero, mean_diff, math.inf, 0.0, note)
    t = cm.mean / cm.se
    return PairedTest(n, n_nonzero, mean_diff, float(t), float(2.0 * student_t.sf(abs(t), cm.df)), note)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni step-down adjusted p-values (Holm 1979), in the input order.

    Sorted ascending p_(1) <= ... <= p_(m): adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)).
    NaN entries are not part of the family (m counts finite p only) and stay NaN.
    """
    p = np.asarray(pvalues, dtype=np.float64).ravel()
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = finite.size
    if m == 0:
        return out
    if np.any((p[finite] < 0) | (p[finite] > 1)):
        raise ValueError(f"p-values must lie in [0, 1], got {p[finite]}")
    order = finite[np.argsort(p[finite], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out


def significance_marker(p: float) -> str:
    """'***' p < 0.001, '**' p < 0.01, '*' p < 0.05, 'ns' otherwise, '' for NaN."""
    if not math.isfinite(p):
        return ""
    if p < 0.001:
        return "***"
    if p < 0.01:
        return "**"
    if p < 0.05:
        return "*"
    return "ns"


# ----------------------------------------------------------------------------------------------------------------------
# labels, structure groups and modality from dataset.json
# ----------------------------------------------------------------------------------------------------------------------
def label_keys(dataset_json: Mapping[str, Any]) -> dict[str, str]:
    """Map nnU-Net summary.json label keys to label names, foreground only.

    nnU-Net writes ``str(label)`` for labels (``"1"``) and ``str(tuple(region))`` for regions (``"(1, 2)"``).
    The ignore label (name ``"ignore"``) is not evaluated by nnU-Net and is left out.
    """
    labels = dataset_json.get("labels")
    if not isinstance(labels, Mapping):
        raise ValueError("dataset.json has no 'labels' mapping")
    out: dict[str, str] = {}
    for name, value in labels.items():
        if name == "ignore":
            continue
        values = [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]
        if values == [0]:
            continue  # background is not evaluated
        # register both spellings of single-label regions ("1" and "(1,)") so either summary style resolves
        out[str(tuple(values))] = name
        if len(values) == 1:
            out[str(values[0])] = name
    return out


def structure_groups(
    dataset_json: Mapping[str, Any], override: Mapping[str, Sequence[str]] | None = None
) -> dict[str, list[str]]:
    """Structure groups -> label names, from dataset.json key ``nnssl_structure_groups`` or ``override``.

    Typical groups: small, large, gastrointestinal, tumour. Empty dict when neither defines groups.
    Raises ValueError naming the unknown labels when a group lists a name that is not a foreground label.
    """
    groups = override if override is not None else dataset_json.get(STRUCTURE_GROUPS_KEY, {})
    if not isinstance(groups, Mapping):
        raise ValueError(f"{STRUCTURE_GROUPS_KEY} must map a group name to a list of label names, got {type(groups).__name__}")
    names = set(label_keys(dataset_json).values())
    out: dict[str, list[str]] = {}
    for group, members in groups.items():
        if isinstance(members, str) or not isinstance(members, Sequence):
            raise ValueError(f"structure group {group!r} must be a list of label names, got {members!r}")
        unknown = [m for m in members if m not in names]
        if unknown:
            raise ValueError(
                f"structure group {group!r} lists unknown labels {unknown}; the dataset's labels are {sorted(names)}"
            )
        out[str(group)] = list(members)
    return out


def group_case_values(
    per_label: Mapping[str, np.ndarray], key_to_name: Mapping[str, str], members: Sequence[str]
) -> np.ndarray:
    """Per-case mean Dice over the labels of one group (NaN-aware). per_label: label key -> (n_cases,) values."""
    name_to_keys: dict[str, list[str]] = {}
    for k, nme in key_to_name.items():
        name_to_keys.setdefault(nme, []).append(k)
    cols = []
    for nme in members:
        for k in name_to_keys.get(nme, []):
            if k in per_label:
                cols.append(np.asarray(per_label[k], dtype=np.float64))
                break
    if not cols:
        return np.array([], dtype=np.float64)
    stack = np.vstack(cols)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cases stay NaN on purpose
        return np.nanmean(stack, axis=0)


_MRI_NAMES = ("mr", "t1", "t2", "flair", "dwi", "adc", "pd", "swi", "dce", "bold")


def modality(dataset_json: Mapping[str, Any]) -> str:
    """'CT' if any channel is named CT (nnU-Net's CT normalisation key), 'MRI' if a channel looks like an MR
    sequence (MR, MRI, T1, T2, FLAIR, DWI, ADC, ...), else 'other'. Reads ``channel_names`` (or old ``modality``)."""
    channels = dataset_json.get("channel_names", dataset_json.get("modality"))
    if not isinstance(channels, Mapping) or not channels:
        return "other"
    names = [str(v).strip().lower() for v in channels.values()]
    if any(n == "ct" for n in names):
        return "CT"
    for n in names:
        token = n.replace("-", "").replace("_", "").replace(" ", "")
        if any(token.startswith(m.lower()) for m in _MRI_NAMES):
            return "MRI"
    return "other"
