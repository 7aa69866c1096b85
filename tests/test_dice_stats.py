"""Dice statistics: bootstrap CIs, Wilcoxon, Holm, groups, modality, convergence and few-shot gap helpers."""
import math

import numpy as np
import pytest

from nnssl.analysis.convergence import analyse_log, ema_from_log, epochs_to_fraction
from nnssl.analysis.dice_stats import (
    bootstrap_ci,
    bootstrap_means,
    group_case_values,
    holm,
    label_keys,
    modality,
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
