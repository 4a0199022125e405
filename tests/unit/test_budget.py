"""A router fitted to a budget: the Lagrangian search, the cascade and the random mix at a budget, and the
non-inferiority test, each on a hand-made case whose answer is known."""
import numpy as np
import pytest
from conftest import synthetic_tree

from der_pipeline.evaluate.stats import non_inferiority
from der_pipeline.router.budget import bisect_alpha, fit_budget, reference_index
from der_pipeline.router.methods import RandomMix, cascade_at_budget


def test_the_search_finds_the_alpha_that_allows_exactly_the_escalations_the_budget_pays_for():
    """Escalating query k gains 1/Q of score for 10 GFLOPs over a 1-GFLOP answer, and the k-th escalation is
    worth it at any alpha under its own price p_k: the policy at alpha escalates every query with p_k > alpha.
    A budget of 1 + 10 x 7/Q GFLOPs pays for exactly 7: the search must end on a policy with 7 of them."""
    prices = np.array([0.5, 0.3, 0.2, 0.1, 0.05, 0.03, 0.02, 0.01, 0.005, 0.002])
    q = len(prices)
    tried = []

    def point(alpha):
        k = int((prices > alpha).sum())
        tried.append(alpha)
        return {"cost_gflops": 1.0 + 10.0 * k / q, "score": k / q, "escalated": k}

    alpha, chosen, feasible = bisect_alpha(point, budget=1.0 + 10.0 * 7 / q, low=1e-3, high=2.0, steps=12)
    assert feasible and chosen["escalated"] == 7
    assert prices[7] <= alpha < prices[6]  # the multiplier sits between the 8th and the 7th escalation's price
    assert len(tried) == 3 + 12  # alpha 0, both ends, then each halving
    alpha, chosen, _ = bisect_alpha(point, budget=100.0, low=1e-3, high=2.0, steps=12)
    assert alpha == 0.0 and chosen["escalated"] == q  # a budget that does not bind: the best score
    alpha, chosen, feasible = bisect_alpha(point, budget=0.5, low=1e-3, high=2.0, steps=12)
    assert not feasible and chosen["escalated"] == 0  # nothing fits: say so, at the cheapest


def _tree():
    """Expert 0 is right exactly where its first-token probability is over 0.5; expert 1 is always right and
    dear (5 GFLOPs a call against 1); expert 2 is never right."""
    tree = synthetic_tree(n_queries=60, n_experts=3, seed=4)
    tree.task1[:, 0] = (tree.conf1[:, 0, 1] > 0.5).astype(float)
    tree.cost1[:, 1] = 5.0
    return tree


def test_the_cascade_at_a_budget_escalates_the_least_confident_it_can_pay_for():
    tree = _tree()
    wrong = int((tree.task1[:, 0] == 0).sum())
    budget = 1.0 + 5.0 * wrong / 60  # exactly enough to escalate every query expert 0 gets wrong
    c = cascade_at_budget(tree, budget)
    assert (c["cheap"], c["strong"], c["direction"]) == (0, 1, "below")
    assert c["score"] == pytest.approx(1.0) and c["cost_gflops"] <= budget + 1e-9
    half = cascade_at_budget(tree, 1.0 + 5.0 * (wrong // 2) / 60)
    assert half["score"] == pytest.approx((60 - wrong + wrong // 2) / 60)  # each escalation buys one right answer


def test_an_inverted_signal_is_used_above_its_threshold():
    tree = _tree()
    tree.task1[:, 0] = 1.0 - tree.task1[:, 0]  # now expert 0 is right where it is *least* sure
    wrong = int((tree.task1[:, 0] == 0).sum())
    budget = 1.0 + 5.0 * wrong / 60
    assert cascade_at_budget(tree, budget)["score"] < 1.0  # escalating the unsure cannot reach it
    both = cascade_at_budget(tree, budget, directions=("below", "above"))
    assert both["direction"] == "above" and both["score"] == pytest.approx(1.0)


def test_the_random_mix_spends_the_budget_in_expectation(repo_params):
    tree = _tree()
    mix = RandomMix(reference=1, budget_gflops=3.0).fit(tree, repo_params)
    w = mix.route(tree)
    assert mix.cheap == 0 and mix.share == pytest.approx(0.5)  # 0.5 x 1 + 0.5 x 5 = 3 GFLOPs
    assert np.allclose(w.sum(axis=1), 1.0)
    assert (w * tree.path_matrix("cost")).sum(axis=1).mean() == pytest.approx(3.0)


def test_the_reference_is_the_strongest_expert_that_is_not_the_tasks_specialist(repo_params):
    tree = _tree()
    tree.experts = ["smollm2-135m-sst2-lora", "big", "other"]
    tree.task1[:, 0] = 1.0  # the specialist is the best on train, and still not the reference
    assert reference_index(tree, repo_params, "sst2") == 1


def test_fit_budget_meets_its_budget_out_of_fold_on_a_real_ppo_run(repo_params):
    p = repo_params.override("ppo", total_timesteps=4096, num_envs=256, num_steps=8, state="confidence")
    p = p.override("budget", steps=3)
    tree = _tree()
    tree.experts = ["cheap", "strong", "never"]
    fit = fit_budget(tree, p, "mine", share=0.6, seed=1)
    assert fit.reference == "strong" and fit.budget_gflops == pytest.approx(3.0)
    assert fit.feasible and fit.out_of_fold["cost_gflops"] <= fit.budget_gflops
    assert fit.searched[0]["alpha"] == 0.0 and len(fit.searched) >= 2


def test_non_inferiority_on_a_hand_computed_case():
    a = np.array([1, 1, 0, 1, 0, 1, 1, 1, 0, 1] * 20, dtype=float)  # 0.7
    b = np.array([1, 1, 1, 1, 0, 1, 1, 0, 0, 1] * 20, dtype=float)  # 0.7: differences +1 at 8, -1 at 3
    r = non_inferiority(a, b, margin=0.02, n=2000, seed=0, power=0.8)
    d = a - b
    sd = d.std(ddof=1)
    assert r["diff"] == 0.0 and not r["same"]
    assert r["mdd"] == pytest.approx((1.6448536 + 0.8416212) * sd / np.sqrt(200), rel=1e-6)
    assert r["lower"] == pytest.approx(-1.6448536 * sd / np.sqrt(200), abs=0.01)  # the bootstrap's 5th percentile
    assert r["non_inferior"] is (r["lower"] > -0.02) and r["non_inferior"] is False
    same = non_inferiority(a, a.copy(), 0.02, 100, 0, 0.8)
    assert same["same"] and same["lower"] is None and same["mdd"] is None
