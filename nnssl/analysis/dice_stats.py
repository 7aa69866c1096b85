"""Statistics on per-case Dice scores: bootstrap confidence intervals (per case, and two-stage over k-shot draws
then cases), paired tests (Wilcoxon over cases; the two-stage bootstrap where draws repeat the cases), Holm correction,
structure-group aggregation and the CT / MRI split of datasets.

All functions take plain numpy arrays of per-case values (one value per validation case); NaN means "not defined for
this case" (nnU-Net writes Dice = NaN when a label is absent from both reference and prediction) and is dropped.
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


def hierarchical_bootstrap_means(matrix: Any, n_boot: int = 10000, seed: int = 0) -> np.ndarray:
    """Two-stage bootstrap distribution of the mean of a (draws, cases) matrix: ``n_boot`` means, each over R of the
    R draws drawn with replacement and N of the N cases drawn with replacement (the same cases for every drawn
    draw), averaging the finite values; resamples without any finite value are left out.

    Repeated k-shot draws validate on the same cases, so (draw, case) values are not independent samples: the
    draws carry the spread over training subsets, the cases the spread over validation images.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    m = _draw_case_matrix(matrix)
    if m.size == 0:
        raise ValueError("no finite values to bootstrap")
    r, n = m.shape
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for start in range(0, n_boot, 500):
        stop = min(n_boot, start + 500)
        di = rng.integers(0, r, size=(stop - start, r))
        ci = rng.integers(0, n, size=(stop - start, n))
        sample = m[di[:, :, None], ci[:, None, :]]  # (b, R, N)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            means[start:stop] = np.nanmean(sample.reshape(stop - start, -1), axis=1)
    return means[np.isfinite(means)]


def hierarchical_bootstrap_ci(matrix: Any, n_boot: int = 10000, seed: int = 0, level: float = 0.95) -> MeanCI:
    """Mean of a (draws, cases) matrix with a two-stage percentile-bootstrap CI: resample the draws, then the cases
    (:func:`hierarchical_bootstrap_means`). With one draw this is the case bootstrap of ``bootstrap_ci``; n = the
    number of cases with a finite value.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    m = _draw_case_matrix(matrix)
    n = int(m.shape[1]) if m.size else 0
    if n == 0:
        return MeanCI(math.nan, math.nan, math.nan, 0)
    mean = float(np.nanmean(m))
    if m.shape[0] == 1:
        return bootstrap_ci(m[0], n_boot=n_boot, seed=seed, level=level)
    means = hierarchical_bootstrap_means(m, n_boot=n_boot, seed=seed)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return MeanCI(mean, float(low), float(high), n)


def draw_spread(matrix: Any) -> tuple[float, float, int]:
    """Mean and standard deviation (ddof 1) across draws of the per-draw means of a (draws, cases) matrix, and the
    number of draws: the spread of a k-shot result over training subsets."""
    m = np.asarray(matrix, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        per_draw = np.nanmean(m, axis=1) if m.size else np.zeros(0)
    per_draw = per_draw[np.isfinite(per_draw)]
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
    """Result of a paired Wilcoxon signed-rank test of a vs b over the same cases.

    n: pairs where both are defined; n_nonzero: pairs with a non-zero difference (the ones Wilcoxon ranks);
    mean_diff: mean(a - b); p: two-sided p-value (NaN when the test is undefined; see ``note``).
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


def paired_draw_test(a: Any, b: Any, n_boot: int = 10000, seed: int = 0) -> PairedTest:
    """Paired test of two aligned (draws, cases) matrices: the same k-shot draws and validation cases on both sides.

    One draw: the Wilcoxon signed-rank test over the cases (:func:`paired_wilcoxon`). Several draws: the draws
    validate on the same cases, so a Wilcoxon over case means averaged across the draws would ignore how much the
    result moves from one training subset to the next and claim far too much (three draws that disagree in sign can
    still give p < 1e-6). The p-value then comes from the two-stage bootstrap that gives the difference's CI
    (:func:`hierarchical_bootstrap_means` of a - b, draws then cases): p = 2 min(P*(mean <= 0), P*(mean >= 0)), each
    share counted as (k + 1) / (B + 1) so that p > 0, as Monte Carlo p-values are (Davison & Hinkley 1997, ch. 4).
    With the same ``seed`` as the CI, p < 1 - level exactly where the percentile interval of that level excludes 0,
    up to the resolution of B resamples. ``n``: cases paired; ``n_nonzero``: cases whose draw-averaged difference is
    not 0; ``statistic``: NaN (no rank statistic); ``note`` names the test.
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"paired draw test needs two aligned (draws, cases) matrices, got {x.shape} and {y.shape}")
    shared = np.flatnonzero(np.isfinite(x - y).any(axis=1))  # draws with a case both sides hold
    if shared.size <= 1:
        row = int(shared[0]) if shared.size else 0
        return paired_wilcoxon(x[row], y[row]) if x.size else paired_wilcoxon([], [])
    d = _draw_case_matrix(x - y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        case_diff = np.nanmean(d, axis=0)
    r, n = d.shape
    mean_diff = float(np.nanmean(d))
    n_nonzero = int(np.count_nonzero(case_diff))
    if n_nonzero == 0:
        return PairedTest(n, 0, mean_diff, math.nan, math.nan, "all paired differences are zero (identical results)")
    means = hierarchical_bootstrap_means(d, n_boot=n_boot, seed=seed)
    below = (np.count_nonzero(means <= 0.0) + 1) / (means.size + 1)
    above = (np.count_nonzero(means >= 0.0) + 1) / (means.size + 1)
    p = min(1.0, 2.0 * min(below, above))
    return PairedTest(n, n_nonzero, mean_diff, math.nan, float(p),
                      f"two-stage bootstrap over {r} draws and {n} cases")


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
