"""The Wilson interval against values computed by hand and its defining property."""

import math

import pytest

from rosi.metrics import Rate, wilson_interval


def test_wilson_matches_hand_computed_values():
    # k=8, n=10, z=1.96: centre (0.8 + 0.19208) / 1.38416, half 1.96*sqrt(0.016 + 0.0096040)/1.38416
    lo, hi = wilson_interval(8, 10, z=1.96)
    assert lo == pytest.approx((0.99208 - 1.96 * math.sqrt(0.025604)) / 1.38416, abs=1e-12)
    assert hi == pytest.approx((0.99208 + 1.96 * math.sqrt(0.025604)) / 1.38416, abs=1e-12)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)


def test_wilson_edges_stay_in_range_and_are_not_degenerate():
    lo, hi = wilson_interval(0, 20)
    assert lo == 0.0 and 0.1 < hi < 0.2
    lo, hi = wilson_interval(20, 20)
    assert hi == 1.0 and 0.8 < lo < 0.9
    # symmetric: k of n mirrors n-k of n
    a, b = wilson_interval(3, 17), wilson_interval(14, 17)
    assert a[0] == pytest.approx(1 - b[1]) and a[1] == pytest.approx(1 - b[0])


def test_wilson_bounds_are_where_the_score_test_is_exactly_z():
    k, n, z = 37, 102, 1.959963984540054
    for bound in wilson_interval(k, n):
        assert abs(k / n - bound) / math.sqrt(bound * (1 - bound) / n) == pytest.approx(z, rel=1e-9)


def test_rate_and_errors():
    r = Rate(51, 102)
    assert r.value == 0.5 and str(r).startswith("50.0% [") and str(r).endswith("(n=102)")
    with pytest.raises(ValueError, match="n > 0"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match="0..5"):
        wilson_interval(6, 5)


def test_paired_difference_counts_discordant_pairs_and_tests_them():
    from rosi.metrics import PairedDifference

    a = [True] * 60 + [False] * 40
    b = [True] * 50 + [False] * 10 + [True] * 5 + [False] * 35  # 10 only a, 5 only b
    d = PairedDifference.of(a, b)
    assert (d.n, d.a_correct, d.b_correct, d.a_only, d.b_only) == (100, 60, 55, 10, 5)
    assert d.difference == pytest.approx(-0.05)
    lo, hi = d.interval
    se = math.sqrt((15 - 25 / 100) / 100**2)
    assert (lo, hi) == pytest.approx((-0.05 - 1.959964 * se, -0.05 + 1.959964 * se), rel=1e-5)
    # exact McNemar: P(X <= 5 | 15, 1/2) * 2
    assert d.p_value == pytest.approx(2 * sum(math.comb(15, i) for i in range(6)) / 2**15)
    same = PairedDifference.of(a, a)
    assert same.difference == 0 and same.interval == (0.0, 0.0) and same.p_value == 1.0
    with pytest.raises(ValueError, match="same questions"):
        PairedDifference.of(a, b[:-1])
