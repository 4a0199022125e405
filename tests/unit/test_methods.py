"""The baselines (router/methods.py) against hand-computed values."""

import numpy as np
import pytest
from conftest import synthetic_tree
from router_cases import _params_with, tiny

from der_pipeline.router.methods import (
    FixedPath,
    KNNRouter,
    MLPRouter,
    Oracle,
    RandomRouter,
    SelfCorrectionBest,
)


def test_fixed_baselines_match_hand_computed_values():
    t = tiny()
    names = t.experts
    w = FixedPath("single", names, ["e1"]).route(t)
    assert (w * t.path_matrix("task")).sum(1).tolist() == [0.9, 0.1]
    w = FixedPath("rr", names, ["e0", "e1"]).route(t)
    assert (w * t.path_matrix("task")).sum(1).tolist() == [0.8, 0.5]
    assert (w * t.path_matrix("cost")).sum(1).tolist() == [5.0, 5.0]
    assert (w * t.path_matrix("calls")).sum(1).tolist() == [2.0, 2.0]
    # oracle: query 0 best is 1.0 via e1>e1 (cost 8); query 1 best 0.7 via e0>e0 (cost 2)
    w = Oracle().route(t)
    assert (w * t.path_matrix("task")).sum(1).tolist() == [1.0, 0.7]
    assert (w * t.path_matrix("cost")).sum(1).tolist() == [8.0, 2.0]
    # escalation: e0 answers, then e1 answers afresh: e1's hop-1 value, both calls' cost
    w = FixedPath("esc", names, ["e0", "e1"], fresh=True).route(t)
    assert (w * t.path_matrix("task")).sum(1).tolist() == [0.9, 0.1]
    assert (w * t.path_matrix("cost")).sum(1).tolist() == [5.0, 5.0]
    # random over the MDP's actions: (1/2) per first expert, then (1/4) each of STOP, 2 refinements, 1 escalation
    w = RandomRouter().route(t)
    assert np.allclose(w.sum(1), 1.0)
    q0 = (0.2 + 0.3 + 0.8 + 0.9) / 8 + (0.9 + 0.4 + 1.0 + 0.2) / 8
    assert (w * t.path_matrix("task")).sum(1)[0] == pytest.approx(q0)
    ktp = RandomRouter().fit(t, _params_with(actions="ktp_only"))
    q0_ktp = (0.2 + 0.3 + 0.8 + 0.9 + 0.4 + 1.0) / 6
    assert (ktp.route(t) * t.path_matrix("task")).sum(1)[0] == pytest.approx(q0_ktp)
    sc = SelfCorrectionBest().fit(t, None)
    assert sc.chosen == "e0"  # diag means: e0 (0.3+0.7)/2=0.5, e1 (1.0+0.0)/2=0.5 -> first max


def test_knn_router_picks_by_predicted_quality_minus_cost(repo_params):
    t = synthetic_tree(n_queries=30, n_experts=3, good=2)
    p = repo_params.override("evaluate", knn_k=5)
    w = KNNRouter(alpha=0.0).fit(t, p).route(t)
    assert w[:, 2].mean() == 1.0
    w = KNNRouter(alpha=10.0).fit(t, p).route(t)  # cost dominates: the cheapest expert
    assert w[:, 0].mean() == 1.0


def test_mlp_router_learns_the_right_expert_and_is_seeded(repo_params):
    t = synthetic_tree(n_queries=30, n_experts=3, good=2)
    w = MLPRouter(alpha=0.0, seed=1).fit(t, repo_params).route(t)
    assert w[:, 2].mean() == 1.0
    a = MLPRouter(seed=3).fit(t, repo_params).predict(t)
    assert np.array_equal(a, MLPRouter(seed=3).fit(t, repo_params).predict(t))
    assert not np.array_equal(a, MLPRouter(seed=4).fit(t, repo_params).predict(t))
    w = MLPRouter(alpha=10.0, seed=1).fit(t, repo_params).route(t)  # cost dominates: the cheapest expert
    assert w[:, 0].mean() == 1.0


def test_best_fixed_path_on_hand_computed_cases():
    from der_pipeline.router.methods import BestFixedPath

    t = tiny()  # scale 4: normalised costs e0 0.25, e1 1.0 per call
    # alpha 0: best mean task over every path. Singles 0.4 / 0.5; refinements e0>e0 0.5, e0>e1 0.65, e1>e0 0.3,
    # e1>e1 0.5; escalations e0>fresh e1 0.5, e1>fresh e0 0.4 -> e0>e1 (KTP) wins
    b = BestFixedPath(alpha=0.0).fit(t, _params_with())
    assert b.chosen == "e0>e1" and (b.route(t) * t.path_matrix("task")).sum(1).tolist() == [0.8, 0.5]
    # alpha 1: utility = task - cost/4: e0 alone 0.4 - 0.25 = 0.15 beats e0>e0 0.5 - 0.5 = 0.0, e1 0.5 - 1 ...
    assert BestFixedPath(alpha=1.0).fit(t, _params_with()).chosen == "e0"


def test_confidence_cascade_on_a_hand_computed_case():
    from der_pipeline.router.methods import ConfidenceCascade

    t = synthetic_tree(n_queries=4, n_experts=2, dim=2)
    t.task1 = np.array([[1.0, 1.0], [0.0, 1.0], [1.0, 1.0], [0.0, 1.0]])  # cheap e0 wrong on queries 1 and 3
    t.cost1 = np.tile([1.0, 10.0], (4, 1))
    t.cost2 = np.tile([1.0, 10.0], (4, 2, 1))
    t.conf1 = np.zeros((4, 2, 5))
    t.conf1[:, 0, 1] = [0.9, 0.2, 0.8, 0.3]  # e0's first-token probability: low exactly where it is wrong
    t.conf1[:, 0, 0] = t.conf1[:, 0, 2] = t.conf1[:, 0, 3] = 0.5  # other signals say nothing
    c = ConfidenceCascade(alpha=0.5).fit(t, _params_with())
    assert (c.chosen["first"], c.chosen["then"], c.chosen["signal"]) == ("e0", "e1", "first_prob")
    assert 0.3 < c.chosen["threshold"] <= 0.8
    w = c.route(t)
    assert (w * t.path_matrix("task")).sum(1).tolist() == [1.0, 1.0, 1.0, 1.0]
    assert (w * t.path_matrix("cost")).sum(1).tolist() == [1.0, 11.0, 1.0, 11.0]  # escalates only when unsure
    # at a high price for cost, never escalate: e0 alone
    assert ConfidenceCascade(alpha=100.0).fit(t, _params_with()).chosen["then"] is None


def test_cascade_bound_on_a_hand_computed_case():
    from der_pipeline.evaluate.findings import _goal_bound
    from der_pipeline.router.methods import cascade_bound

    t = synthetic_tree(n_queries=4, n_experts=2, dim=2)
    t.task1 = np.array([[1.0, 1.0], [0.0, 1.0], [1.0, 1.0], [0.0, 1.0]])  # cheap e0 wrong on queries 1 and 3
    t.cost1 = np.tile([1.0, 10.0], (4, 1))
    t.conf1 = np.full((4, 2, 5), 0.5)
    t.conf1[:, 0, 1] = [0.9, 0.2, 0.8, 0.3]  # e0's first-token probability: low exactly where it is wrong
    # budget 70% of e1's 10 GFLOPs: 1 + 10 k / 4 <= 7 allows k = 2 escalations, the two wrong answers: 1.0 at 60%
    b = cascade_bound(t, 0.7)
    assert (b["strong"], b["strong_score"]) == ("e1", 1.0)
    assert b["best"] == {"first": "e0", "signal": "first_prob", "escalated_share": 0.5, "score": 1.0, "cost_share": 0.6}
    assert "within the signals' reach" in _goal_bound(b)
    # budget 40%: one escalation (cost 3.5), the least sure wrong answer: 0.75, a quarter short
    b = cascade_bound(t, 0.4)
    assert b["best"] == {"first": "e0", "signal": "first_prob", "escalated_share": 0.25, "score": 0.75,
                         "cost_share": 0.35}
    assert "0.250 short" in _goal_bound(b)
    # no signal at all (every confidence equal): nothing to escalate on, e0 alone
    t.conf1[:] = 0.5
    assert cascade_bound(t, 0.7)["best"]["escalated_share"] == 0.0
