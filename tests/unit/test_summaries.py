"""The numbers every results table goes through, on trees small enough to compute by hand: `summarize`
(accuracy, std over seeds, cost, calls, stop and refine rates), the signals' AUROC and the best single expert
in evaluate, the curves' pooling over seeds and cross-task pooling over datasets, and a call's cost.

Paths of a 2-expert tree are numbered as in router/arrays.py: 0 e0, 1 e1, 2 e0>e0, 3 e0>e1, 4 e1>e0,
5 e1>e1, 6 e0>fresh:e0, 7 e0>fresh:e1, 8 e1>fresh:e0, 9 e1>fresh:e1."""
import math

import numpy as np
import pytest

from der_pipeline.config import ExpertSpec
from der_pipeline.evaluate.common import summarize
from der_pipeline.evaluate.cross_task import pooled_over_tasks
from der_pipeline.evaluate.curves import _point, seed_mean_points, swept_summary, weak_and_strong
from der_pipeline.evaluate.frontier import aiq, apgr
from der_pipeline.evaluate.run import best_single_expert, signal_auroc
from der_pipeline.evaluate.stats import bootstrap_ci
from der_pipeline.experts.cost import call_cost
from der_pipeline.router.arrays import TreeArrays
from der_pipeline.router.methods import FixedPath

N_PATHS = 2 + 2 * 4


def hand_tree() -> TreeArrays:
    """Three queries, two experts.

    hop 1 right: q0 e0 only, q1 e1 only, q2 both. Refinements right: q0 e1>e0, q1 e0>e1, q2 e0>e0 (all others
    wrong). Costs (GFLOPs) hop 1: q0 [1, 3], q1 [2, 4], q2 [1, 2]; hop 2: 1 except q0 e1>e0 0.8, q1 e0>e1 0.6,
    q2 e0>e0 0.4. Latency = cost / 10; BERTScore = 0.4 + 0.5 x task score."""
    q, n, d = 3, 2, 2
    task1 = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    task2 = np.zeros((q, n, n))
    task2[0, 1, 0] = task2[1, 0, 1] = task2[2, 0, 0] = 1.0
    cost1 = np.array([[1.0, 3.0], [2.0, 4.0], [1.0, 2.0]])
    cost2 = np.ones((q, n, n))
    cost2[0, 1, 0], cost2[1, 0, 1], cost2[2, 0, 0] = 0.8, 0.6, 0.4
    return TreeArrays(
        qids=["q0", "q1", "q2"], experts=["e0", "e1"], q_emb=np.zeros((q, d), np.float32),
        a1_emb=np.zeros((q, n, d), np.float32), a2_emb=np.zeros((q, n, n, d), np.float32),
        task1=task1, task2=task2, bert1=0.4 + 0.5 * task1, bert2=0.4 + 0.5 * task2,
        cost1=cost1, cost2=cost2, lat1=cost1 / 10, lat2=cost2 / 10,
        conf1=np.full((q, n, 6), 0.5, np.float32), sec1=np.full((q, n, 3), np.nan),
        sec2=np.full((q, n, n, 3), np.nan))


def routed(paths) -> np.ndarray:
    """One path per query, as a method's weight matrix."""
    w = np.zeros((len(paths), N_PATHS))
    w[np.arange(len(paths)), paths] = 1.0
    return w


SEED_A = routed([4, 3, 2])  # q0 e1>e0 (right), q1 e0>e1 (right), q2 e0>e0 (right): score 1, cost 3.8 2.6 1.4
SEED_B = routed([1, 7, 1])  # q0 e1 (wrong), q1 e0>fresh:e1 (right), q2 e1 (right): score 2/3, cost 3 6 2


def test_summarize_two_seeds_by_hand(repo_params):
    t = hand_tree()
    out = summarize([SEED_A, SEED_B], t, 2.0, repo_params)
    # accuracy: seeds 1 and 2/3 -> mean 5/6, sample std (1/3)/sqrt(2)
    assert out["accuracy"] == 0.8333 and out["accuracy_std"] == 0.2357
    # per query, the seeds' mean: q0 (1 + 0) / 2, q1 1, q2 1
    assert out["_per_query"].tolist() == [0.5, 1.0, 1.0]
    lo, hi = bootstrap_ci(np.array([0.5, 1.0, 1.0]), repo_params.evaluate.bootstrap, repo_params.data.seed)
    assert (out["ci_low"], out["ci_high"]) == (round(lo, 4), round(hi, 4)) and 0.5 <= lo < hi <= 1.0
    # cost: seed A (3.8 + 2.6 + 1.4) / 3 = 2.6, seed B (3 + 6 + 2) / 3 = 11/3; mean 3.1333, std 1.0667/sqrt(2)
    assert out["cost_gflops"] == 3.13 and out["cost_gflops_std"] == 0.75 and out["cost_norm"] == 1.5667
    # calls per query (seed mean): q0 (2 + 1) / 2, q1 2, q2 (2 + 1) / 2 -> 5/3
    assert out["calls"] == 1.667
    # latency = cost / 10 per call: q0 (0.38 + 0.3) / 2, q1 (0.26 + 0.6) / 2, q2 (0.14 + 0.2) / 2 -> 0.3133
    assert out["latency_s"] == 0.313
    # BERTScore: q0 (0.9 + 0.4) / 2, q1 0.9, q2 0.9 -> 0.8167
    assert out["bertscore_f1"] == 0.8167
    # first expert, by query: q0 e1 (both seeds), q1 e0 (both), q2 half each -> [1.5, 1.5] / 3
    assert out["first_expert_share"] == [0.5, 0.5]
    # a refinement (KTP) on each query in one seed of two: 3 x 0.5 / 3; an escalation on q1 in seed B only
    assert out["refine_rate"] == 0.5 and out["escalate_rate"] == 0.167
    # stop if right: weight on a first answer that was right (q0 e0 never first; q2 e1 0.5 of 1.5 first-right
    # weight: q2 e0 0.5 refined, q2 e1 0.5 stopped) -> 0.5 / 1.0; refine if wrong: a wrong first answer is
    # q0 e1 (weight 1: refined 0.5, stopped 0.5) and q1 e0 (weight 1, always called again) -> 1.5 / 2
    assert out["stop_if_right"] == 0.5 and out["refine_if_wrong"] == 0.75
    assert out["seeds"] == 2
    assert not {"exact_match", "rouge1", "rouge2"} & set(out)  # NaN secondary metrics are not reported


def test_summarize_of_a_deterministic_single_expert(repo_params):
    t = hand_tree()
    out = summarize([FixedPath("single:e1", t.experts, ["e1"]).route(t)], t, 2.0, repo_params)
    assert out["accuracy"] == 0.6667 and out["accuracy_std"] == 0.0 and out["seeds"] == 1  # right on q1, q2
    assert out["cost_gflops"] == 3.0 and out["cost_gflops_std"] == 0.0 and out["cost_norm"] == 1.5  # (3+4+2)/3
    assert out["calls"] == 1.0 and out["refine_rate"] == 0.0 and out["escalate_rate"] == 0.0
    assert out["first_expert_share"] == [0.0, 1.0]
    assert out["stop_if_right"] == 1.0 and out["refine_if_wrong"] == 0.0  # it stops, right (q1, q2) or wrong (q0)
    # on q0 alone e1 is never right: no share of right first answers to report
    only_q0 = t.subset([0])
    one = summarize([FixedPath("single:e1", t.experts, ["e1"]).route(only_q0)], only_q0, 2.0, repo_params)
    assert one["stop_if_right"] is None and one["refine_if_wrong"] == 0.0 and one["accuracy"] == 0.0


def auroc_tree() -> TreeArrays:
    """Four queries, three experts, for the confidence signals' AUROC (CONF_FEATURES order: yes_prob,
    first_prob, mean_prob, min_prob, length, yes_margin; the cascade signals read the first four)."""
    t = hand_tree().subset([0, 1, 2, 0])
    t.qids = ["a", "b", "c", "d"]
    t.experts = ["e0", "e1", "e2"]
    t.task1 = np.array([[1.0, 1.0, 1.0], [0.5, 0.0, 1.0], [0.49, 0.0, 1.0], [0.0, 0.0, 1.0]])  # right: >= 0.5
    conf = np.zeros((4, 3, 6), np.float32)
    conf[:, 0, :4] = np.array([[0.75, 0.9, 0.2, 0.5], [0.5, 0.7, 0.4, 0.5], [0.25, 0.3, 0.6, 0.5],
                               [0.625, 0.7, 0.8, 0.5]])
    conf[:, 1, :4] = np.array([[0.5, 0.6, 1.0, 0.3], [0.5, 0.1, 0.0, 0.3], [0.5, 0.2, 0.0, 0.1],
                               [0.5, 0.9, 0.0, 0.5]])
    conf[:, 2, :4] = 0.5
    t.conf1 = conf
    return t


def test_signal_auroc_by_hand():
    out = signal_auroc(auroc_tree())
    # e0: right on a, b (0.5 counts as right), wrong on c (0.49), d.
    # yes margin |2 P(yes) - 1|: right [0.5, 0], wrong [0.5, 0.25] -> pairs 0.5 (tie) + 1 + 0 + 0 = 1.5 of 4
    # first_prob: right [0.9, 0.7], wrong [0.3, 0.7] -> 1 + 1 + 1 + 0.5 (tie) = 3.5 of 4
    # mean_prob: every right answer below every wrong one -> 0; min_prob: the same on every query -> no
    # information, reported as None (not an AUROC of 0.5)
    assert out["e0"] == {"right_share": 0.5, "yes_margin": 0.375, "first_prob": 0.875, "mean_prob": 0.0,
                         "min_prob": None}
    # e1: right on a only. margin 0 everywhere -> None; first_prob 0.6 against [0.1, 0.2, 0.9] -> 2 of 3;
    # mean_prob 1.0 against zeros -> 1; min_prob 0.3 against [0.3, 0.1, 0.5] -> 0.5 + 1 + 0 = 1.5 of 3
    assert out["e1"] == {"right_share": 0.25, "yes_margin": None, "first_prob": 0.6667, "mean_prob": 1.0,
                         "min_prob": 0.5}
    # e2 is always right: no wrong answer to tell apart, so no AUROC
    assert out["e2"] == {"right_share": 1.0, "yes_margin": None, "first_prob": None, "mean_prob": None,
                         "min_prob": None}


def test_the_best_single_expert_is_the_most_accurate_single_and_a_tie_goes_to_the_first(repo_params):
    t = hand_tree()
    methods = {f"single:{e}": summarize([FixedPath(f"single:{e}", t.experts, [e]).route(t)], t, 2.0, repo_params)
               for e in t.experts}
    assert methods["single:e0"]["accuracy"] == methods["single:e1"]["accuracy"] == 0.6667  # e0: q0, q2; e1: q1, q2
    methods.update({"der": {"accuracy": 1.0}, "oracle": {"accuracy": 1.0}, "self_correction:e1": {"accuracy": 0.9},
                    "round_robin": {"accuracy": 0.95}})
    assert best_single_expert(methods) == "single:e0"  # tied with e1: the pool's first; other methods never count
    methods["single:e1"] = {"accuracy": 0.7}
    assert best_single_expert(methods) == "single:e1"
    with pytest.raises(ValueError, match="no single-expert method"):
        best_single_expert({"der": {"accuracy": 1.0}})


def test_a_curve_point_is_the_mean_normalised_cost_and_score():
    t = hand_tree()
    assert _point(SEED_A, t, 2.0) == pytest.approx((2.6 / 2, 1.0))
    assert _point(SEED_B, t, 2.0) == pytest.approx((11 / 3 / 2, 2 / 3))
    assert _point((SEED_A + SEED_B) / 2, t, 1.0) == pytest.approx((3.1333333, 5 / 6))


def test_apgr_ends_are_the_cheapest_and_the_best_single_expert():
    singles = {"single:a": (0.2, 0.5), "single:b": (1.0, 0.7), "single:c": (0.6, 0.9), "single:d": (0.3, 0.85)}
    assert weak_and_strong(singles) == ("single:a", "single:c")  # by cost alone, by score alone (d: best value)
    assert weak_and_strong({"single:a": (0.2, 0.9), "single:b": (0.2, 0.9)}) == ("single:a", "single:a")


def _rows(method, points, seed):
    return [{"method": method, "alpha": a, "seed": seed, "cost_norm": c, "accuracy": q}
            for a, (c, q) in zip((0.0, 0.5), points)]


def test_a_swept_method_is_scored_on_its_seed_mean_curve_with_the_std_across_seeds():
    rows = _rows("der", [(1.0, 0.8), (0.5, 0.6)], 1) + _rows("der", [(0.8, 0.8), (0.3, 0.4)], 2)
    assert np.array(seed_mean_points(rows, [0.0, 0.5])) == pytest.approx(np.array([[0.9, 0.8], [0.4, 0.5]]))
    weak, strong = (0.3, 0.4), (0.9, 0.8)

    def metrics_of(points):
        return {"aiq": aiq(points, 1.0), "apgr": apgr(points, weak, strong)}

    out = swept_summary(rows, [0.0, 0.5], metrics_of)
    # AIQ of the mean curve (0.4, 0.5)-(0.9, 0.8), flat to 1: 0.5 x 1.3 / 2 + 0.1 x 0.8 = 0.405.
    # Per seed: (0.5, .6)-(1, .8): 0.35; (0.3, .4)-(0.8, .8) then flat: 0.3 + 0.16 = 0.46; std 0.11 / sqrt(2)
    assert out["aiq"] == 0.405 and out["aiq_std"] == 0.0778
    # APGR over costs 0.3..0.9 (weak point added): mean curve (0.045 + 0.325) / 0.6 = 0.6167 -> (0.6167 - 0.4)
    # / 0.4 = 0.5417; seed 1: (0.1 + 0.272) / 0.6 -> 0.55; seed 2: (0.3 + 0.08) / 0.6 -> 0.5833
    assert out["apgr"] == 0.5417 and out["apgr_std"] == round((0.58333333 - 0.55) / math.sqrt(2), 4) == 0.0236
    assert out["points"] == [[0.9, 0.8], [0.4, 0.5]]
    fixed = swept_summary(_rows("knn", [(1.0, 0.8), (0.5, 0.6)], None), [0.0, 0.5], metrics_of)
    assert fixed["aiq"] == 0.35 and "aiq_std" not in fixed and "apgr_std" not in fixed  # no seeds: no std


def test_cross_task_pooling_weights_every_query_once():
    by_dataset = {"boolq": {"calls": 1.5, "cost_gflops": 10.0}, "hotpotqa": {"calls": 2.0, "cost_gflops": 40.0}}
    per_query = {"boolq": np.array([1.0, 0.0, 1.0, 1.0]), "hotpotqa": np.array([0.0, 0.5])}
    # 3.5 / 6 queries, not the datasets' mean (0.75 + 0.25) / 2; calls (1.5 x 4 + 2 x 2) / 6; cost 120 / 6
    assert pooled_over_tasks(by_dataset, per_query) == {"accuracy": 0.5833, "calls": 1.667, "cost_gflops": 20.0}
    per_query["hotpotqa"] = np.array([0.0, 0.0])
    assert pooled_over_tasks(by_dataset, per_query)["accuracy"] == 0.5  # 3 / 6 (the datasets' mean: 0.375)


def test_call_cost_is_two_flops_per_parameter_and_token_unless_priced_per_call():
    e = ExpertSpec(name="a", source="a.gguf", params_b=0.5, chat=True)
    assert call_cost(e, 100, 20) == 120.0 and isinstance(call_cost(e, 100, 20), float)  # 2 x 0.5 x 120
    assert call_cost(e, np.array([10, 30]), np.array([2, 0])).tolist() == [12.0, 30.0]
    priced = ExpertSpec(name="b", source="openai:b", params_b=7.0, chat=True, cost_per_call=7.5)
    assert call_cost(priced, 100, 20) == 7.5 and isinstance(call_cost(priced, 100, 20), float)
    fixed = call_cost(priced, np.array([[10, 3000]]), np.array([[5, 1]]))
    assert fixed.shape == (1, 2) and fixed.tolist() == [[7.5, 7.5]]  # whatever the tokens
    free = ExpertSpec(name="c", source="openai:c", params_b=1.0, chat=True, cost_per_call=0.0)
    assert call_cost(free, 100, 20) == 0.0  # a price of 0 is a price, not "no price"
