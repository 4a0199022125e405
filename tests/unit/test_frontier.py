"""AIQ, APGR and CPT against curves computed by hand; the paired bootstrap on cases with a known answer."""
import numpy as np
import pytest

from der_pipeline.evaluate.frontier import aiq, apgr, cpt, upper_hull
from der_pipeline.evaluate.stats import bootstrap_ci, mean_std, paired_bootstrap


def test_upper_hull_drops_dominated_and_concave_points_and_cuts_at_the_best():
    pts = [(1, 0.5), (2, 0.55), (3, 0.8), (4, 0.7), (2, 0.4)]
    # (2, 0.55) lies under the chord (1, .5)-(3, .8) (0.65 there); (4, .7) comes after the best point
    assert upper_hull(pts) == [(1.0, 0.5), (3.0, 0.8)]


def test_aiq_hand_computed():
    # hull (1, .5)-(3, .8), then flat .8 to c_max 4; zero below cost 1
    # area = 0 (0..1) + (2 * (.5 + .8) / 2 = 1.3) + (1 * .8) = 2.1; AIQ = 2.1 / 4
    assert aiq([(1, 0.5), (2, 0.55), (3, 0.8), (4, 0.7)], c_max=4) == pytest.approx(2.1 / 4)
    # one point: flat from its cost to c_max
    assert aiq([(2, 0.6)], c_max=4) == pytest.approx(0.6 * 2 / 4)
    # more quality at every cost never lowers AIQ
    assert aiq([(1, 0.6), (3, 0.9)], 4) > aiq([(1, 0.5), (3, 0.8)], 4)


def test_apgr_hand_computed():
    weak, strong = (1.0, 0.5), (3.0, 0.9)  # gap 0.4 over costs 1..3
    # a router at (2, 0.9): hull with the weak point is (1,.5)-(2,.9) then flat .9
    # mean quality over 1..3 = (1 * (.5 + .9) / 2 + 1 * .9) / 2 = 0.8 -> PGR (0.8 - 0.5) / 0.4 = 0.75
    assert apgr([(2.0, 0.9)], weak, strong) == pytest.approx(0.75)
    # the strong expert's own point: the straight line from weak to strong, half the gap on average
    assert apgr([strong], weak, strong) == pytest.approx(0.5)
    # only the weak expert: nothing recovered
    assert apgr([weak], weak, strong) == pytest.approx(0.0)
    assert np.isnan(apgr([(2, 0.9)], weak, (3.0, 0.4)))  # no gap to recover


def test_cpt_hand_computed():
    weak, strong = (1.0, 0.5), (4.0, 0.9)
    # hull (1,.5)-(2,.9): 50% of the gap (.7) at cost 1.5, 80% (.82) at cost 1.8; as a share of 4
    assert cpt([(2.0, 0.9)], weak, strong, 0.5) == pytest.approx(1.5 / 4)
    assert cpt([(2.0, 0.9)], weak, strong, 0.8) == pytest.approx(1.8 / 4)
    assert cpt([(2.0, 0.6)], weak, strong, 0.5) is None  # never recovers half the gap
    assert cpt([strong], weak, strong, 0.5) == pytest.approx(2.5 / 4)


def test_paired_bootstrap_finds_a_known_difference():
    rng = np.random.default_rng(0)
    b = (rng.random(400) < 0.5).astype(float)
    a = b.copy()
    wrong = np.flatnonzero(b == 0)
    a[wrong[: len(wrong) // 2]] = 1.0  # a fixes half of b's errors: a known gain of about 0.25
    out = paired_bootstrap(a, b, n=2000, seed=1)
    assert out["diff"] == pytest.approx((a - b).mean())
    true_gain = (len(wrong) // 2) / len(b)
    assert out["ci_low"] < true_gain < out["ci_high"] and out["ci_high"] - out["ci_low"] < 0.1
    assert out["ci_low"] > 0 and out["p_value"] < 0.01


def test_paired_bootstrap_finds_no_difference_between_equals():
    rng = np.random.default_rng(1)
    b = (rng.random(200) < 0.6).astype(float)
    a = b.copy()
    swap = rng.choice(200, 40, replace=False)
    a[swap] = 1 - a[swap]  # as many flips each way, roughly: no real difference
    out = paired_bootstrap(a, b, n=2000, seed=1)
    assert out["ci_low"] < 0 < out["ci_high"] and out["p_value"] > 0.05
    assert paired_bootstrap(b, b, n=100, seed=0)["p_value"] == 1.0
    with pytest.raises(ValueError):
        paired_bootstrap(a, b[:10], n=10, seed=0)


def test_bootstrap_ci_and_seed_std():
    lo, hi = bootstrap_ci(np.array([0.0, 1.0] * 100), n=1000, seed=0)
    assert lo < 0.5 < hi and hi - lo < 0.2
    assert mean_std([0.5, 0.7]) == pytest.approx((0.6, np.std([0.5, 0.7], ddof=1)))
    assert mean_std([0.4]) == (0.4, 0.0)
