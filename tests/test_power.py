"""Power of the headline's paired Holm-corrected Wilcoxon tests (nnssl.analysis.power)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import wilcoxon

from nnssl.analysis.power import (cases_needed, design_sentence, detectable_difference, draw_design_sentence,
                                  draw_detectable_difference, draws_needed, pilot_sd, wilcoxon_floor_cases)


def test_floor_is_where_the_exact_test_first_reaches_the_corrected_level():
    for m in (1, 4, 16, 40):
        n = wilcoxon_floor_cases(m)
        assert 2 / 2 ** n <= 0.05 / m < 2 / 2 ** (n - 1)
        # the exact test on n identical-sign differences reaches its smallest p-value, 2 / 2**n
        assert wilcoxon(np.arange(1.0, n + 1)).pvalue == pytest.approx(2 / 2 ** n)
    assert wilcoxon_floor_cases(1) == 6 and wilcoxon_floor_cases(16) == 10


def test_detectable_difference_shrinks_with_cases_and_grows_with_comparisons():
    assert math.isinf(detectable_difference(0.05, 4, 1))  # below the floor nothing is detectable
    d = [detectable_difference(0.05, n, 8) for n in (10, 20, 40, 80)]
    assert all(a > b for a, b in zip(d, d[1:]))
    assert detectable_difference(0.05, 20, 1) < detectable_difference(0.05, 20, 16)
    # about sqrt(2) smaller for twice the cases once the t quantiles have settled
    assert detectable_difference(0.05, 400, 4) / detectable_difference(0.05, 800, 4) == pytest.approx(2 ** 0.5,
                                                                                                        rel=0.01)
    with pytest.raises(ValueError, match="sd"):
        detectable_difference(float("nan"), 20)


def test_cases_needed_is_the_first_n_that_detects_the_target():
    n = cases_needed(0.05, 0.08, comparisons=16)
    assert detectable_difference(0.08, n, 16) <= 0.05 < detectable_difference(0.08, n - 1, 16)


def test_the_approximation_holds_by_simulation():
    """At the detectable difference, the exact paired Wilcoxon test rejects at alpha/m in about 80% of designs."""
    rng = np.random.default_rng(0)
    sd, n, m = 0.06, 24, 8
    delta = detectable_difference(sd, n, m)
    rejections = [wilcoxon(rng.normal(delta, sd, n)).pvalue < 0.05 / m for _ in range(600)]
    assert 0.72 <= np.mean(rejections) <= 0.92  # 3/pi is the least favourable efficiency: power is at least 80%


def test_draws_as_the_unit_size_like_a_t_test_over_draws():
    """3 draws at Holm's level for 16 comparisons: (t[1 - 0.05/32, 2] + t[0.8, 2]) * sd / sqrt(3), by simulation
    too: a t-test over per-draw differences at that size rejects in about 80% of designs."""
    from scipy.stats import t as student_t, ttest_1samp

    expected = (student_t.ppf(1 - 0.05 / 32, 2) + student_t.ppf(0.8, 2)) * 0.02 / math.sqrt(3)
    assert draw_detectable_difference(0.02, 3, 16) == pytest.approx(expected) and expected > 0.2
    assert math.isinf(draw_detectable_difference(0.02, 1, 16))
    r = draws_needed(0.05, 0.02, 16)
    assert draw_detectable_difference(0.02, r, 16) <= 0.05 < draw_detectable_difference(0.02, r - 1, 16)
    rng = np.random.default_rng(0)
    delta = draw_detectable_difference(0.03, 8, 4)
    rejections = [ttest_1samp(rng.normal(delta, 0.03, 8), 0).pvalue < 0.05 / 4 for _ in range(800)]
    assert 0.72 <= np.mean(rejections) <= 0.9  # the shifted-t approximation slightly overstates the needed size
    sentence = draw_design_sentence(0.02, [3], 16)
    assert "0.218 with 3 draws" in sentence and f"about {r} draws" in sentence


def test_pilot_sd_pools_the_comparisons_and_drops_missing_values():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.0, 0.1, 200), rng.normal(0.3, 0.1, 300)  # different means do not inflate the pooled spread
    sd, total = pilot_sd([a, np.append(b, np.nan), [0.5]])
    assert total == 500 and sd == pytest.approx(0.1, rel=0.1)
    with pytest.raises(ValueError, match="two or more"):
        pilot_sd([[0.1], []])


def test_sentence_names_the_floor_when_no_difference_can_be_significant():
    few = design_sentence(0.05, [4, 4], 16)
    assert "no difference can be significant" in few and "at least 10 cases" in few
    mixed = design_sentence(0.05, [6, 40], 16)
    assert f"is {detectable_difference(0.05, 40, 16):.3f} with 40 cases" in mixed
    assert "fewer than 10 cases can never reach significance" in mixed
    assert f"about {cases_needed(0.05, 0.05, 16)} validation cases" in mixed


def test_study_power_script_sizes_the_shipped_studies_and_refuses_bad_input(tmp_path):
    """benchmarks/study_power.py: the detectable difference of each spec at a stated spread equals
    detectable_difference at the spec's comparisons and validation cases; a bad spread or pilot is one error line."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    script, spec = root / "benchmarks" / "study_power.py", root / "benchmarks" / "study_cpu.yaml"
    out = subprocess.run([sys.executable, str(script), "--sd", "0.05", str(spec)], capture_output=True, text=True,
                         cwd=root)
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if line.startswith("| study_cpu"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "16" and cells[2] == "901: 40, 902: 40"
    assert float(cells[4]) == round(detectable_difference(0.05, 40, 16), 3)
    assert int(cells[5]) == cases_needed(0.05, 0.05, 16)
    # its 5-shot rows have 3 draws: sized with the draws as the unit at the default draw SD of 0.02
    assert cells[6] == f"{draw_detectable_difference(0.02, 3, 16):.3f} with 3 draws"
    assert int(cells[7]) == draws_needed(0.05, 0.02, 16)
    for bad, message in ((["--sd", "-1"], "--sd must be a finite number > 0"),
                         (["--draw-sd", "0", "--sd", "0.05"], "--draw-sd must be a finite number > 0"),
                         (["--pilot", str(tmp_path / "missing")], "is not a folder"),
                         (["--pilot", str(tmp_path)], "no paired per-case differences")):
        out = subprocess.run([sys.executable, str(script), *bad, str(spec)], capture_output=True, text=True, cwd=root)
        assert out.returncode == 2 and out.stderr.startswith("error:") and message in out.stderr, out.stderr
