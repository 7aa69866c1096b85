"""Dice statistics: bootstrap CIs (per case and over k-shot draws), Wilcoxon and the draws' paired test, Holm, groups,
modality, convergence and few-shot gap helpers."""
import math

import numpy as np
import pytest

from nnssl.analysis.convergence import analyse_log, ema_from_log, epochs_to_fraction
from nnssl.analysis.dice_stats import (
    bootstrap_ci,
    bootstrap_means,
    crossed_mean,
    draw_case_ci,
    group_case_values,
    holm,
    label_keys,
    modality,
    paired_draw_test,
    paired_wilcoxon,
    significance_marker,
    stratified_bootstrap_ci,
    structure_groups,
)
from nnssl.analysis.fewshot import gap_percent, paired_gap


# ---------------------------------------------------------------------------------------------------------- bootstrap
def test_ci_contains_mean_and_shrinks_with_more_cases():
    rng = np.random.default_rng(0)
    small = rng.uniform(0.5, 0.9, size=10)
    large = rng.uniform(0.5, 0.9, size=400)
    ci_s = bootstrap_ci(small, n_boot=4000, seed=1)
    ci_l = bootstrap_ci(large, n_boot=4000, seed=1)
    for ci, x in ((ci_s, small), (ci_l, large)):
        assert ci.mean == pytest.approx(x.mean())
        assert ci.low < ci.mean < ci.high
        assert ci.n == x.size
    assert (ci_l.high - ci_l.low) < 0.5 * (ci_s.high - ci_s.low)


def test_ci_is_seeded_and_drops_nan():
    x = np.array([0.2, 0.4, np.nan, 0.9, 0.5])
    a, b = bootstrap_ci(x, n_boot=500, seed=3), bootstrap_ci(x, n_boot=500, seed=3)
    assert a == b
    assert a.n == 4 and a.mean == pytest.approx(0.5)
    # another seed draws other resamples (the CI bounds of 4 values may coincide, the draws do not)
    assert not np.array_equal(bootstrap_means(x, 500, seed=3), bootstrap_means(x, 500, seed=4))


def test_bootstrap_means_match_a_loop_with_the_same_draws():
    """The vectorised, chunked resampling equals drawing the same indices one resample at a time."""
    x = np.array([0.1, 0.5, 0.7, 0.2, 0.9])
    vec = bootstrap_means(x, n_boot=7, seed=11, chunk=10)  # chunk=10 -> 2 rows per chunk: exercises chunking
    rng = np.random.default_rng(11)
    loop = []
    for start in range(0, 7, 2):
        idx = rng.integers(0, 5, size=(min(7, start + 2) - start, 5))
        loop += list(x[idx].mean(axis=1))
    np.testing.assert_allclose(vec, loop)


def test_ci_degenerate_inputs():
    one = bootstrap_ci([0.7])
    assert one.mean == 0.7 and one.n == 1 and math.isnan(one.low)
    assert one.fmt() == "0.700"
    none = bootstrap_ci([np.nan])
    assert none.n == 0 and none.fmt() == "n/a"
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci([0.1, 0.2], level=1.5)


def test_stratified_ci_weighs_tasks_equally():
    a = np.full(100, 0.9) + np.linspace(-0.01, 0.01, 100)
    b = np.full(4, 0.5) + np.array([-0.01, 0.0, 0.0, 0.01])
    c = stratified_bootstrap_ci([a, b], n_boot=1000, seed=0)
    assert c.mean == pytest.approx(0.7)  # not the case-weighted 0.885
    assert c.low < 0.7 < c.high and c.n == 2


# ---------------------------------------------------------------------------------------------------------- Wilcoxon
def test_wilcoxon_hand_checked_all_positive():
    # d = 1..5 all positive: W- = 0; exact two-sided p = 2 * P(W <= 0) = 2 / 2^5 = 0.0625
    t = paired_wilcoxon([1, 2, 3, 4, 5], [0, 0, 0, 0, 0])
    assert t.statistic == 0 and t.p == pytest.approx(0.0625)
    assert t.n == 5 and t.mean_diff == pytest.approx(3.0)
    assert "unreachable" in t.note


def test_wilcoxon_hand_checked_one_negative():
    # d = [1, -2, 3, 4, 5, 6]: W- = rank(2) = 2; subsets of {1..6} with rank sum <= 2: {}, {1}, {2} -> 3/64
    # two-sided p = 2 * 3 / 64 = 0.09375
    x = np.array([1.1, 0.0, 3.5, 4.0, 5.2, 6.0])
    y = x - np.array([1, -2, 3, 4, 5, 6])
    t = paired_wilcoxon(x, y)
    assert t.statistic == 2 and t.p == pytest.approx(0.09375)
    assert t.n_nonzero == 6 and t.note == ""


def test_wilcoxon_zero_and_nan_pairs():
    t = paired_wilcoxon([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert math.isnan(t.p) and "zero" in t.note and t.n == 3
    # zero differences are dropped (zero_method="wilcox"): same p as the five non-zero pairs alone
    t2 = paired_wilcoxon([1, 0, 3, 4, 5, 6, 0, np.nan], [0, 0, 0, 0, 0, 0, 0, 1])
    assert t2.n == 7 and t2.n_nonzero == 5 and t2.p == pytest.approx(0.0625)
    t3 = paired_wilcoxon([np.nan], [1.0])
    assert t3.n == 0 and math.isnan(t3.p)
    with pytest.raises(ValueError, match="same cases"):
        paired_wilcoxon([1, 2], [1, 2, 3])


# ---------------------------------------------------------------------------------------------------------- draws
def _draws(shifts, noise=0.002, cases=40, seed=0):
    """Scratch and method (draws, cases) matrices: the method is scratch + a per-draw shift + small case noise."""
    rng = np.random.default_rng(seed)
    base = np.tile(rng.uniform(0.3, 0.7, cases), (len(shifts), 1))
    return base + np.asarray(shifts, float)[:, None] + rng.normal(0, noise, base.shape), base


def test_crossed_mean_hand_checked():
    """Two draws x three cases: grand mean 2.5; draw means 1, 4 and case means 1, 2, 4.5 give MS_draw = 3 * 4.5 =
    13.5, MS_case = 2 * 6.5 / 2 = 6.5, residuals +-0.5, +-0.5, -+1 give MS_e = 3 / 2 = 1.5; r n var = 1.5 + 12 + 5 =
    18.5 over 6 cells; Satterthwaite: 18.5^2 / (13.5^2 / 1 + 6.5^2 / 2 + (-1 * 1.5)^2 / 2) = 342.25 / 204.5."""
    cm = crossed_mean([[0.0, 1.0, 2.0], [2.0, 3.0, 7.0]])
    assert cm.mean == 2.5 and cm.draws == 2 and cm.cases == 3
    assert cm.se == pytest.approx(math.sqrt(18.5 / 6)) and cm.df == pytest.approx(342.25 / 204.5)
    # a case that one draw lacks is left out; one draw or one complete case: no crossed estimate
    assert crossed_mean([[0.0, 1.0, 2.0, 5.0], [2.0, 3.0, 7.0, np.nan]]) == cm
    assert crossed_mean([[0.0, 1.0]]) is None and crossed_mean([[0.0, np.nan], [1.0, 2.0]]) is None


def test_draw_case_ci_with_one_draw_is_the_case_bootstrap_and_widens_with_the_draws_spread():
    a, b = _draws([0.03])
    one = draw_case_ci(a - b, n_boot=2000, seed=3)
    assert one == bootstrap_ci((a - b)[0], n_boot=2000, seed=3) and one.n == 40
    steady = draw_case_ci(_draws([0.03, 0.03, 0.03])[0] - b[:1])
    spread = draw_case_ci(_draws([0.08, -0.02, 0.03])[0] - b[:1])
    assert steady.n == spread.n == 40  # draws repeat the cases: n counts cases, not (draw, case) pairs
    assert steady.low < 0.03 < steady.high and (spread.high - spread.low) > 10 * (steady.high - steady.low)


def test_paired_draw_test_counts_the_spread_across_draws():
    """Three draws that disagree in sign: the Wilcoxon over case means (the draws averaged away) calls a tiny mean
    difference certain; the crossed test does not, and agrees with its interval, which contains 0."""
    a, b = _draws([0.06, -0.05, 0.01])
    naive = paired_wilcoxon(a.mean(axis=0), b.mean(axis=0))
    assert naive.p < 1e-6
    t = paired_draw_test(a, b)
    ci = draw_case_ci(a - b)
    assert t.p > 0.5 and ci.low < 0 < ci.high
    assert t.n == 40 and t.n_nonzero == 120 and t.mean_diff == pytest.approx(naive.mean_diff)
    assert "3 draws, 40 cases" in t.note and t.statistic == pytest.approx(t.mean_diff / crossed_mean(a - b).se)
    # draws that agree: significant, but with 2 draws' worth of evidence about the subsets, not 40 cases'
    steady = paired_draw_test(*_draws([0.03, 0.025, 0.035]))
    assert 1e-4 < steady.p < 0.05


def test_paired_draw_test_p_agrees_with_the_interval():
    rng = np.random.default_rng(1)
    for i in range(40):
        shifts = rng.normal(rng.uniform(-0.03, 0.03), rng.uniform(0.0, 0.03), size=int(rng.integers(2, 5)))
        a, b = _draws(shifts, noise=float(rng.uniform(0.005, 0.05)), cases=int(rng.integers(8, 40)), seed=i)
        t, ci = paired_draw_test(a, b), draw_case_ci(a - b)
        assert (t.p < 0.05) == (ci.low > 0 or ci.high < 0), (t, ci)


def test_paired_draw_test_holds_its_level_with_five_draws():
    """A true null (draw and case effects, no difference): at nominal 5% the crossed test rejects in about 5% of
    designs with 5 draws (a two-stage bootstrap over draws and cases rejected far more often)."""
    rng = np.random.default_rng(0)
    rejections = []
    for _ in range(600):
        d = rng.normal(0, 0.02, (5, 1)) + rng.normal(0, 0.05, (1, 40)) + rng.normal(0, 0.005, (5, 40))
        rejections.append(paired_draw_test(d, np.zeros_like(d)).p < 0.05)
    assert 0.02 <= np.mean(rejections) <= 0.085


def test_draws_that_cancel_are_tested_not_called_identical():
    x = np.tile(np.linspace(0.3, 0.7, 10), (2, 1))
    t = paired_draw_test(x + np.array([[0.1], [-0.1]]), x)
    assert t.p > 0.5 and "zero" not in t.note and t.n_nonzero == 20


def test_paired_draw_test_with_one_draw_is_the_wilcoxon_over_cases():
    x = np.array([[1.1, 0.0, 3.5, 4.0, 5.2, 6.0]])
    y = x - np.array([[1, -2, 3, 4, 5, 6]])
    assert paired_draw_test(x, y) == paired_wilcoxon(x[0], y[0])
    # a second draw that only one side ran (NaN on the other) leaves one shared draw: still the Wilcoxon
    xa, ya = np.vstack([x, x + 1]), np.vstack([y, np.full(6, np.nan)])
    assert paired_draw_test(xa, ya) == paired_wilcoxon(x[0], y[0])
    same = paired_draw_test(np.tile(x, (3, 1)), np.tile(x, (3, 1)))
    assert math.isnan(same.p) and "zero" in same.note
    with pytest.raises(ValueError, match="aligned"):
        paired_draw_test(x, y[:, :3])


# ---------------------------------------------------------------------------------------------------------- Holm
def test_holm_hand_checked():
    # sorted: 0.005*4 = 0.02; 0.01*3 = 0.03; 0.03*2 = 0.06; 0.04*1 = 0.04 -> running max 0.06
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    # capped at 1, and NaN excluded from the family (m = 2)
    out = holm([0.6, np.nan, 0.2])
    np.testing.assert_allclose(out[[0, 2]], [0.6, 0.4])
    assert math.isnan(out[1])
    np.testing.assert_allclose(holm([0.5, 0.9]), [1.0, 1.0])
    assert holm([]).size == 0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([1.5])


def test_significance_marker():
    assert [significance_marker(p) for p in (0.0005, 0.005, 0.03, 0.2, float("nan"))] == ["***", "**", "*", "ns", ""]


# ---------------------------------------------------------------------------------------------------------- groups
DS = {
    "channel_names": {"0": "CT"},
    "labels": {"background": 0, "liver": 1, "spleen": 2, "tumour": [2, 3], "ignore": 4},
    "nnssl_structure_groups": {"large": ["liver"], "small": ["spleen", "tumour"]},
}


def test_label_keys_and_groups():
    keys = label_keys(DS)
    assert keys["1"] == "liver" and keys["(2, 3)"] == "tumour" and keys["(1,)"] == "liver"
    assert "4" not in keys and "0" not in keys
    assert structure_groups(DS) == {"large": ["liver"], "small": ["spleen", "tumour"]}
    assert structure_groups(DS, {"all": ["liver", "spleen"]}) == {"all": ["liver", "spleen"]}
    with pytest.raises(ValueError, match="unknown labels \\['kidney'\\]"):
        structure_groups(DS, {"x": ["kidney"]})
    per_label = {"1": np.array([0.9, 0.8]), "2": np.array([0.5, np.nan]), "(2, 3)": np.array([0.3, 0.4])}
    np.testing.assert_allclose(group_case_values(per_label, keys, ["spleen", "tumour"]), [0.4, 0.4])


def test_modality():
    assert modality({"channel_names": {"0": "CT"}}) == "CT"
    assert modality({"channel_names": {"0": "T2"}}) == "MRI"
    assert modality({"channel_names": {"0": "MRI"}}) == "MRI"
    assert modality({"channel_names": {"0": "FLAIR", "1": "T1Gd"}}) == "MRI"
    assert modality({"channel_names": {"0": "rgb_to_0_1"}}) == "other"


# ---------------------------------------------------------------------------------------------------------- convergence
def test_convergence_definitions():
    log = {"ema_fg_dice": [0.1, 0.4, 0.7, 0.75, 0.78, 0.8],
           "epoch_start_timestamps": [0, 10, 20, 30, 40, 50], "epoch_end_timestamps": [9, 19, 29, 39, 49, 59]}
    c = analyse_log(log)
    # final = 0.8: 90% = 0.72 first reached at epoch 4 (0.75); 95% = 0.76 at epoch 5 (0.78)
    assert c.final == 0.8 and c.n_epochs == 6
    assert c.epochs_to == {0.9: 4, 0.95: 5}
    assert c.seconds_to[0.9] == 39 and c.seconds_per_epoch == 9
    assert epochs_to_fraction([0.0, 0.0], 0.9) is None


def test_ema_recomputed_like_nnunet():
    ema, note = ema_from_log({"mean_fg_dice": [0.5, 1.0, 0.0]})
    np.testing.assert_allclose(ema, [0.5, 0.55, 0.495])
    assert "recomputed" in note
    with pytest.raises(ValueError, match="mean_fg_dice"):
        ema_from_log({"train_losses": [1.0]})


# ---------------------------------------------------------------------------------------------------------- few-shot
def test_gap():
    assert gap_percent(0.8, 0.6) == pytest.approx(25.0)
    assert math.isnan(gap_percent(0.0, 0.1))
    g = paired_gap([0.8, 0.9, 0.7, 0.8], [0.6, 0.7, 0.5, 0.6], n_boot=2000, seed=0)
    assert g.gap == pytest.approx((0.8 - 0.6) / 0.8 * 100)
    assert g.low <= g.gap <= g.high and g.n == 4
    with pytest.raises(ValueError, match="same cases"):
        paired_gap([0.1], [0.1, 0.2])
