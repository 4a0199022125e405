"""The MDP, the reward formula, PPO and the fixed baselines on small synthetic trees."""
import dataclasses

import numpy as np
import pytest
import torch
from conftest import ppo_cfg, reward_cfg, synthetic_tree

from der_pipeline.router.arrays import cost_scale
from der_pipeline.router.env import TreeEnv, VectorTreeEnv
from der_pipeline.router.methods import (
    FixedPath,
    KNNRouter,
    MLPRouter,
    Oracle,
    PolicyRouter,
    RandomRouter,
    SelfCorrectionBest,
)
from der_pipeline.router.selection import train_ppo

# With N = 2 experts the actions are: 0, 1 answer afresh (expert 0 / 1); 2, 3 refine (KTP) by expert 0 / 1;
# 4 STOP.
ANSWER0, ANSWER1, REFINE0, REFINE1, STOP = 0, 1, 2, 3, 4


def tiny():
    """2 queries, 2 experts, hand-set qualities and costs."""
    t = synthetic_tree(n_queries=2, n_experts=2, dim=3)
    t.task1 = np.array([[0.2, 0.9], [0.6, 0.1]])
    t.task2 = np.array([[[0.3, 0.8], [0.4, 1.0]], [[0.7, 0.5], [0.2, 0.0]]])
    t.cost1 = np.array([[1.0, 4.0], [1.0, 4.0]])
    t.cost2 = np.array([[[1.0, 4.0], [1.0, 4.0]], [[1.0, 4.0], [1.0, 4.0]]])
    return t


CFG = reward_cfg(signal="task", form="per_step", cost="flops", alpha=0.2, beta=0.5, gamma=0.3, p0=0.5,
                 actions="ktp_and_fresh")


def env_for(cfg, query):
    env = VectorTreeEnv(tiny(), cfg, num_envs=1, autoreset=False)
    env.reset(torch.tensor([query]))
    return env


def test_cost_is_normalised_by_the_priciest_experts_mean_call():
    assert cost_scale(tiny()) == pytest.approx(4.0)


def test_reward_t0_above_threshold():
    env = env_for(CFG, 0)
    *_, r, done, _ = env.step(torch.tensor([1]))  # P=0.9, C=4/4=1
    assert float(r) == pytest.approx(0.9 - 0.2 * 1.0 + 0.3)
    assert not bool(done)


def test_reward_t0_below_threshold_has_no_penalty_before_t_max():
    env = env_for(CFG, 0)
    *_, r, _, _ = env.step(torch.tensor([0]))  # P=0.2, C=0.25
    assert float(r) == pytest.approx(0.2 - 0.2 * 0.25)


def test_reward_t1_improvement_and_bonus():
    env = env_for(CFG, 0)
    env.step(torch.tensor([0]))
    *_, r, done, info = env.step(torch.tensor([REFINE1]))  # P(0>1)=0.8, prev 0.2, C=1
    assert float(r) == pytest.approx(0.8 + 0.5 * (0.8 - 0.2) - 0.2 * 1.0 + 0.3)
    assert bool(done) and float(info["calls"][0]) == 2.0


def test_reward_t_max_below_threshold_is_penalised():
    env = env_for(CFG, 1)
    env.step(torch.tensor([0]))  # P=0.6
    *_, r, done, _ = env.step(torch.tensor([REFINE1]))  # P(0>1)=0.5 -> >= p0: bonus; use expert 0 instead
    assert float(r) == pytest.approx(0.5 + 0.5 * (0.5 - 0.6) - 0.2 * 1.0 + 0.3)
    env = env_for(CFG, 1)
    env.step(torch.tensor([1]))  # P=0.1
    *_, r, done, _ = env.step(torch.tensor([REFINE1]))  # P(1>1)=0.0 < p0 at t = T_max
    assert float(r) == pytest.approx(0.0 + 0.5 * (0.0 - 0.1) - 0.2 * 1.0 - 0.3)


def test_stop_earns_zero_per_step_and_ends():
    env = env_for(CFG, 0)
    env.step(torch.tensor([1]))
    *_, r, done, info = env.step(torch.tensor([STOP]))
    assert float(r) == 0.0 and bool(done) and float(info["final_p"][0]) == pytest.approx(0.9)


def test_escalation_answers_afresh_by_hand():
    # query 0: expert 0 answers (P 0.2, C 1/4), then expert 1 answers afresh: its hop-1 node (P 0.9, C 4/4)
    env = env_for(CFG, 0)
    env.step(torch.tensor([ANSWER0]))
    obs, mask, r, done, info = env.step(torch.tensor([ANSWER1]))
    assert float(r) == pytest.approx(0.9 + 0.5 * (0.9 - 0.2) - 0.2 * 1.0 + 0.3)
    assert bool(done) and float(info["final_p"][0]) == pytest.approx(0.9) and float(info["calls"][0]) == 2.0
    assert float(info["cost"][0]) == pytest.approx(0.25 + 1.0)
    # terminal form: paid once, for the fresh answer, both calls' costs
    env = env_for(dataclasses.replace(CFG, form="terminal"), 1)
    env.step(torch.tensor([ANSWER1]))  # P 0.1
    *_, r, _, info = env.step(torch.tensor([ANSWER0]))  # fresh: P 0.6
    assert float(r) == pytest.approx(0.6 - 0.2 * (1.0 + 0.25) + 0.3)


def test_escalation_mask_and_the_ktp_only_action_set():
    env = env_for(CFG, 0)
    _, mask = env.reset(torch.tensor([0]))
    assert mask[0].tolist() == [True, True, False, False, False]  # t = 0: a first answer only
    _, mask, *_ = env.step(torch.tensor([ANSWER1]))
    assert mask[0].tolist() == [True, False, True, True, True]  # no escalation to the expert that answered
    ktp = dataclasses.replace(CFG, actions="ktp_only")
    env = env_for(ktp, 0)
    _, mask, *_ = env.step(torch.tensor([ANSWER1]))
    assert mask[0].tolist() == [False, False, True, True, True]
    with pytest.raises(ValueError, match="forbids"):
        env.step(torch.tensor([ANSWER0]))


def test_terminal_form():
    cfg = dataclasses.replace(CFG, form="terminal")
    env = env_for(cfg, 0)
    *_, r0, _, _ = env.step(torch.tensor([0]))
    *_, r1, _, _ = env.step(torch.tensor([REFINE1]))
    assert float(r0) == 0.0
    assert float(r1) == pytest.approx(0.8 - 0.2 * (0.25 + 1.0) + 0.3)
    env = env_for(cfg, 1)
    env.step(torch.tensor([1]))  # P=0.1, stop: below p0 but only 1 call -> no penalty
    *_, r, _, _ = env.step(torch.tensor([STOP]))
    assert float(r) == pytest.approx(0.1 - 0.2 * 1.0)
    env = env_for(cfg, 1)
    env.step(torch.tensor([1]))
    *_, r, _, _ = env.step(torch.tensor([REFINE1]))  # 2 calls, P=0 < p0: penalty
    assert float(r) == pytest.approx(0.0 - 0.2 * 2.0 - 0.3)


def test_mask_forbids_stop_at_t0_and_a_third_call():
    env = VectorTreeEnv(tiny(), CFG, num_envs=64, seed=3)
    obs, mask = env.reset()
    assert not mask[:, 2:].any() and mask[:, :2].all()
    with pytest.raises(ValueError):
        env.step(torch.full((64,), STOP))
    gen = torch.Generator().manual_seed(0)
    calls = torch.zeros(64)
    for _ in range(50):  # random legal play: every episode ends after at most 2 calls
        legal = mask.float()
        a = torch.multinomial(legal / legal.sum(1, keepdim=True), 1, generator=gen).squeeze(1)
        is_call = (a != STOP).float()
        obs, mask, r, done, info = env.step(a)
        calls += is_call
        assert (calls[done] <= 2).all()
        assert (calls[~done] < 2).all()
        calls[done] = 0


def test_gymnasium_api():
    env = TreeEnv(tiny(), CFG)
    obs, info = env.reset(seed=0, options={"query": 0})
    assert obs.shape == env.observation_space.shape and not info["action_mask"][STOP]
    obs, r, term, trunc, info = env.step(1)
    assert not term and info["action_mask"][STOP]
    obs, r, term, trunc, info = env.step(STOP)
    assert term and not trunc and info["calls"] == 1.0


ROLLOUTS = ("all_actions", "sampled")  # PPO's batch (ppo.rollout): every action's known outcome, or sampled episodes


@pytest.mark.parametrize("rollout", ROLLOUTS)
def test_ppo_learns_to_pick_the_right_cheap_expert_and_stop(rollout):
    t = synthetic_tree(n_queries=64, n_experts=3, good=0)  # expert 0: always right and cheapest
    cfg = reward_cfg(signal="task", form="per_step", alpha=0.5, beta=0.5, gamma=0.5, p0=0.5)
    ppo = ppo_cfg(total_timesteps=40_960, num_envs=128, num_steps=8, selection_folds=0, state="query_answer",
                  rollout=rollout)
    agent, history = train_ppo(t, cfg, ppo, seed=1)
    scale = cost_scale(t)
    w = PolicyRouter(agent, scale, cfg).route(t)
    # path 0 = expert 0 alone (1 call). Per-step reward makes a 2nd call worth it too, so accept any path
    # that starts with expert 0; random play would pick expert 0 first only a third of the time.
    first_is_0 = w[:, 0] + w[:, 3:3 + 3].sum(1) + w[:, 12:12 + 3].sum(1)
    assert first_is_0.mean() > 0.95
    assert history[-1]["mean_final_p"] > 0.9


@pytest.mark.parametrize("rollout", ROLLOUTS)
def test_ppo_terminal_form_learns_to_stop(rollout):
    t = synthetic_tree(n_queries=64, n_experts=3, good=0)
    cfg = reward_cfg(signal="task", form="terminal", alpha=0.5, beta=0.5, gamma=0.5, p0=0.5)
    ppo = ppo_cfg(total_timesteps=40_960, num_envs=128, num_steps=8, selection_folds=0, state="query_answer",
                  rollout=rollout)
    agent, _ = train_ppo(t, cfg, ppo, seed=2)
    w = PolicyRouter(agent, cost_scale(t), cfg).route(t)
    assert w[:, 0].mean() > 0.9  # expert 0, then STOP: one call
    rand = RandomRouter().route(t)
    assert rand[:, 0].mean() < 0.1


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


def _params_with(**reward):
    from conftest import REPO

    from der_pipeline.config import load_params

    return load_params(REPO / "params.yaml").override("reward", **reward)


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


def test_query_state_hides_the_answer_but_keeps_step_and_expert():
    t = tiny()
    full = VectorTreeEnv(t, CFG, num_envs=2, autoreset=False)
    blind = VectorTreeEnv(t, CFG, num_envs=2, autoreset=False, state="query")
    for env in (full, blind):
        env.reset(torch.tensor([0, 1]))
    o_full, *_ = full.step(torch.tensor([1, 0]))
    o_blind, *_ = blind.step(torch.tensor([1, 0]))
    d, f = t.q_emb.shape[1], t.conf1.shape[-1]
    assert torch.equal(o_full[:, :d], o_blind[:, :d])
    assert torch.equal(o_full[:, 2 * d:], o_blind[:, 2 * d:])  # step and last expert one-hots
    assert torch.equal(o_blind[:, d:2 * d], torch.zeros(2, d))
    assert torch.allclose(o_full[0, d:2 * d], torch.as_tensor(t.a1_emb[0, 1]))
    withconf = VectorTreeEnv(t, CFG, num_envs=2, autoreset=False, state="query_answer_confidence")
    withconf.reset(torch.tensor([0, 1]))
    o_conf, *_ = withconf.step(torch.tensor([1, 0]))
    assert o_conf.shape[1] == o_full.shape[1] + f
    assert torch.allclose(o_conf[0, 2 * d:2 * d + f], torch.as_tensor(t.conf1[0, 1]))  # the answer's confidence


def test_confidence_state_is_the_answers_confidence_step_and_expert_only():
    t = tiny()
    env = VectorTreeEnv(t, CFG, num_envs=2, autoreset=False, state="confidence")
    obs, _ = env.reset(torch.tensor([0, 1]))
    f = t.conf1.shape[-1]
    assert obs.shape == (2, f + 2 + 3) and torch.equal(obs[:, :f], torch.zeros(2, f))
    obs, *_ = env.step(torch.tensor([1, 0]))
    assert torch.allclose(obs[0, :f], torch.as_tensor(t.conf1[0, 1])) and obs[0, f + 1] == 1.0


def test_params_cost_unit_is_parameters_in_billions_over_1000():
    t = tiny()
    t.params_b = (0.5, 1.5)
    cfg = dataclasses.replace(CFG, cost="params", alpha=1.0, gamma=0.0)
    env = VectorTreeEnv(t, cfg, num_envs=1, autoreset=False)
    env.reset(torch.tensor([0]))
    _, _, r, _, _ = env.step(torch.tensor([1]))
    assert r.item() == pytest.approx(0.9 - 1.5 / 1000)


def test_der_paper_preset_trains_and_learns_the_expert_bertscore_favours(repo_params):
    t = synthetic_tree(n_queries=64, n_experts=3, good=1)  # BERTScore 0.9 for expert 1's answers, 0.4 otherwise
    t.params_b = (0.1, 0.3, 1.5)
    p = repo_params.with_preset("der-paper")
    ppo = dataclasses.replace(p.ppo, total_timesteps=40_960, num_envs=128, selection_folds=0)
    agent, history = train_ppo(t, p.reward, ppo, seed=1)
    assert np.isfinite(history[-1]["mean_return"])
    w = PolicyRouter(agent, cost_scale(t), p.reward, state=ppo.state).route(t)
    # the final answer is expert 1's: alone, refined by it, or its own fresh answer after another's (the
    # per-step reward's beta = 5 pays for the improvement, so starting elsewhere and escalating can pay)
    final_is_1 = w[:, 1] + w[:, 3 + 1:12:3].sum(axis=1) + w[:, 12 + 1::3].sum(axis=1)
    assert final_is_1.mean() > 0.9


def test_selection_folds_partition_the_train_split_by_a_fixed_hash():
    from der_pipeline.router.selection import selection_folds

    t = synthetic_tree(n_queries=200, n_experts=3)
    folds = selection_folds(t, 3)
    assert len(folds) == 3
    held = [val.qids for _, val in folds]
    assert sorted(q for h in held for q in h) == sorted(t.qids)  # every query held out exactly once
    for fit, val in folds:
        assert set(fit.qids).isdisjoint(val.qids) and len(fit.qids) + len(val.qids) == 200
        assert 40 < len(val.qids) < 95
    assert [val.qids for _, val in selection_folds(t, 3)] == held  # the same folds every time (a hash of the id)
    assert selection_folds(t, 0) == [] and selection_folds(t.subset([0, 1]), 3) == []  # none, or a fold empty


def test_ppo_keeps_the_iteration_with_the_best_cross_validated_return():
    from der_pipeline.router.ppo import greedy_return
    from der_pipeline.router.selection import cross_validate

    t = synthetic_tree(n_queries=64, n_experts=3, good=0)
    cfg = reward_cfg(signal="task", form="per_step", alpha=0.5, beta=0.5, gamma=0.5, p0=0.5)
    ppo = ppo_cfg(total_timesteps=20_480, num_envs=128, num_steps=8, selection_folds=3, eval_every=2,
                  state="query_answer", fallback="none")  # expert 0 is always right: the fixed path would be kept
    agent, history = train_ppo(t, cfg, ppo, seed=1)
    checked = [h["val_return"] for h in history if "val_return" in h]
    assert len(checked) == len(history) // 2 + (len(history) % 2)
    kept = history[-1]["selected_iteration"]
    assert history[kept - 1]["val_return"] == history[-1]["best_val_return"]
    gain = max(checked) - history[-1]["untrained_val_return"]
    assert gain > 0 and history[kept - 1]["val_return"] >= max(checked) - ppo.selection_tolerance * gain
    assert all(h["val_return"] < max(checked) - ppo.selection_tolerance * gain  # the latest within the band
               for h in history[kept:] if "val_return" in h)
    # the checked value is the mean of the folds' held-out returns, each of the fold's own policy
    cv = cross_validate(t, cfg, ppo, seed=1, scale=cost_scale(t))
    assert cv.best_iteration == kept
    per_fold = [greedy_return(a, val, cfg, cost_scale(t), "query_answer") for a, (_, val) in zip(cv.agents, cv.folds)]
    assert np.mean(per_fold) == pytest.approx(max(checked), abs=1e-6)
    # the policy kept (ppo.final_policy: fold_ensemble) is the folds' policies at that iteration
    from der_pipeline.router.selection import FoldEnsemble

    assert isinstance(agent, FoldEnsemble) and len(agent.members) == 3
    for member, fold_agent in zip(agent.members, cv.agents):
        assert all(torch.equal(x, y) for x, y in zip(member.state_dict().values(), fold_agent.state_dict().values()))
    # and the same seed gives the same weights
    again, _ = train_ppo(t, cfg, ppo, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(agent.state_dict().values(), again.state_dict().values()))
    # the refit: one policy, the whole-train-split run stopped at the kept iteration
    refit, refit_log = train_ppo(t, cfg, dataclasses.replace(ppo, final_policy="refit"), seed=1)
    assert not isinstance(refit, FoldEnsemble) and refit_log[-1]["selected_iteration"] == kept


def test_fixed_path_policy_takes_its_path_on_every_query():
    from der_pipeline.router.arrays import path_index
    from der_pipeline.router.env import path_actions
    from der_pipeline.router.methods import greedy_paths
    from der_pipeline.router.ppo import Agent
    from der_pipeline.router.selection import FixedPathPolicy

    t, n = synthetic_tree(n_queries=12, n_experts=3), 3
    cfg = reward_cfg(signal="task", form="terminal", actions="ktp_and_fresh")
    learned = Agent(10, 2 * n + 1, hidden=8)
    assert path_actions(n, path_index(n, 2)) == (2, 2 * n)  # a single answer, then STOP
    assert path_actions(n, path_index(n, 0, 1)) == (0, n + 1)  # 1 refines 0's answer
    assert path_actions(n, path_index(n, 0, 2, fresh=True)) == (0, 2)  # 2 answers afresh after 0
    with pytest.raises(ValueError, match="not one of the 21 paths"):
        path_actions(n, 21)
    for path in [path_index(n, 1), path_index(n, 2, 0), path_index(n, 0, 2, fresh=True)]:
        policy = FixedPathPolicy(path, n, learned)
        assert (greedy_paths(policy, t, cost_scale(t), cfg, "confidence") == path).all()
        # ask and serve print the action probabilities: all of it on the path's action
        mask = torch.ones(1, 2 * n + 1, dtype=torch.bool)
        probs = torch.softmax(policy.masked_logits(torch.zeros(1, 10), mask), dim=1)[0]
        assert probs[path_actions(n, path)[1]] == pytest.approx(1.0)


class _RowPolicy(torch.nn.Module):
    """A hand-made policy for one held-out fold: expert 0 first; then STOP where ``stop[row]``, else expert 1
    afresh (rows in the order greedy_paths resets them: the fold's query order)."""

    obs_dim, n_actions, hidden = 0, 5, 0

    def __init__(self, stop):
        super().__init__()
        self.stop = torch.as_tensor(stop)

    def greedy(self, x, mask):
        second = mask[:, -1]  # STOP is allowed at t = 1 only
        return torch.where(second, torch.where(self.stop, 4, 1), torch.zeros(len(x), dtype=torch.long))


def test_fixed_path_check_by_hand():
    """Out of fold, the per-query utility of a policy that stops exactly on expert 0's right answers,
    against the best fixed path fitted on the other folds, computed here from the tree's numbers."""
    from der_pipeline.router.methods import best_fixed_index
    from der_pipeline.router.selection import CrossValidation, FixedPathPolicy, fixed_path_check, selection_folds

    q = 30
    t = synthetic_tree(n_queries=q, n_experts=2, good=1)
    t.task1[:, 0] = (np.arange(q) % 5 < 2).astype(float)  # expert 0 right on 40% of queries, expert 1 on all
    t.cost1[:] = [1.0, 10.0]
    t.cost2[:] = [1.0, 10.0]
    cfg = reward_cfg(signal="task", form="terminal", actions="ktp_and_fresh", alpha=0.5, gamma=0.0)
    scale = cost_scale(t)
    assert scale == 10.0
    folds = selection_folds(t, 3)
    agents = [_RowPolicy(val.task1[:, 0] == 1) for _, val in folds]
    cv = CrossValidation(folds, {}, [], 0, agents, [])
    assert all(best_fixed_index(fit, 0.5, False) == 1 for fit, _ in folds)  # expert 1 alone: 1 - 0.5 x 1
    check = fixed_path_check(cv, t, cfg, scale, "confidence")
    # right first answer: 1 - 0.5 x 1/10 = 0.95, else 1 - 0.5 x 11/10 = 0.45; the fixed path: 0.5
    diff = np.concatenate([np.where(val.task1[:, 0] == 1, 0.95, 0.45) - 0.5 for _, val in folds])
    assert check["gain"] == pytest.approx(diff.mean()) and check["gain"] == pytest.approx(0.4 * 0.45 - 0.6 * 0.05)
    assert check["se"] == pytest.approx(diff.std(ddof=1) / np.sqrt(q))
    assert check["beats_fixed_path"] and check["path_name"] == "e1" and check["path"] == 1
    assert check["fixed_out_of_fold"] == {"score": 1.0, "cost_gflops": 10.0, "two_calls": 0.0, "constant_folds": 1.0}
    # a policy that is the fixed path itself gains nothing, and the tie goes to the fixed path
    same = CrossValidation(folds, {}, [], 0, [FixedPathPolicy(1, 2, _RowPolicy([])) for _ in folds], [])
    tie = fixed_path_check(same, t, cfg, scale, "confidence")
    assert tie["gain"] == 0.0 and tie["se"] == 0.0 and not tie["beats_fixed_path"]


def test_train_keeps_the_best_fixed_path_where_the_policy_does_not_beat_it(tmp_path, repo_params):
    """Expert 0 is always right and the cheapest: no policy can beat answering with it, so the fallback keeps
    that path (saved and loaded as such, the learned weights beside it); ``fallback: none`` keeps the
    folds' policies."""
    from der_pipeline.router.checkpoint import load_policy, save_policy
    from der_pipeline.router.selection import FixedPathPolicy, FoldEnsemble

    t = synthetic_tree(n_queries=60, n_experts=3, good=0)
    cfg = reward_cfg(signal="task", form="terminal", alpha=0.1)
    ppo = ppo_cfg(total_timesteps=8192, num_envs=128, num_steps=8, selection_folds=3, eval_every=2,
                  state="confidence", fallback="best_fixed_path")
    agent, history = train_ppo(t, cfg, ppo, seed=1)
    kept = history[-1]
    assert isinstance(agent, FixedPathPolicy) and agent.path == 0 and kept["policy"] == "best_fixed_path"
    assert not kept["fixed_path_check"]["beats_fixed_path"] and kept["fixed_path_check"]["path_name"] == "e0"
    assert kept["out_of_fold"]["constant_folds"] == 1.0 and kept["out_of_fold"]["score"] == 1.0
    p = repo_params.override("ppo", fallback="best_fixed_path")
    save_policy(agent, tmp_path / "policy.pt", experts=t.experts, scale=cost_scale(t), p=p, obs_dim=agent.obs_dim,
                seed=1, out_of_fold=kept["out_of_fold"], fixed_path_check=kept["fixed_path_check"])
    loaded, ckpt = load_policy(tmp_path / "policy.pt")
    assert isinstance(loaded, FixedPathPolicy) and loaded.path == 0 and isinstance(loaded.learned, FoldEnsemble)
    assert ckpt["fixed_path_check"]["path_name"] == "e0"
    learned, log = train_ppo(t, cfg, dataclasses.replace(ppo, fallback="none"), seed=1)
    assert isinstance(learned, FoldEnsemble) and log[-1]["policy"] == "learned"
    assert log[-1]["fixed_path_check"] == kept["fixed_path_check"]  # checked either way, and logged


def test_fold_ensemble_averages_its_members_action_probabilities(tmp_path, repo_params):
    from der_pipeline.router.checkpoint import load_policy, save_policy
    from der_pipeline.router.ppo import Agent
    from der_pipeline.router.selection import FoldEnsemble

    torch.manual_seed(0)
    members = [Agent(5, 4, hidden=8) for _ in range(3)]
    with torch.no_grad():  # member i prefers action i strongly; member 2 prefers action 2 only a little
        for i, m in enumerate(members):
            m.actor[-1].weight.zero_()
            m.actor[-1].bias.copy_(torch.tensor([0.0, 0.0, 0.0, 0.0]))
            m.actor[-1].bias[i] = [4.0, 4.0, 0.5][i]
    ensemble = FoldEnsemble(members)
    x = torch.randn(2, 5)
    mask = torch.tensor([[True, True, True, False], [False, True, True, True]])
    probs = torch.softmax(ensemble.masked_logits(x, mask), dim=1)
    each = torch.stack([torch.softmax(m.masked_logits(x, mask), dim=1) for m in members]).mean(0)
    assert torch.allclose(probs, each, atol=1e-6)  # the mean of the members' distributions
    assert probs[0, 3] < 1e-6 and probs[1, 0] < 1e-6  # masked actions stay masked
    # row 0: actions 0 and 1 each get one member's 0.95, action 2 a mild preference: the tie is 0 or 1
    assert ensemble.greedy(x, mask)[0].item() in (0, 1)
    # row 1 (action 0 masked): member 0 is spread over 1..3, so action 1 has the most mass in total
    assert ensemble.greedy(x, mask)[1].item() == 1
    # a saved ensemble loads back as one, with the same outputs
    save_policy(ensemble, tmp_path / "policy.pt", experts=["a"], scale=1.0, p=repo_params, obs_dim=5, seed=1)
    loaded, ckpt = load_policy(tmp_path / "policy.pt")
    assert ckpt["members"] == 3 and isinstance(loaded, FoldEnsemble)
    assert torch.allclose(loaded.masked_logits(x, mask), ensemble.masked_logits(x, mask))


def test_keep_iteration_takes_the_latest_within_a_fraction_of_the_gain():
    from der_pipeline.router.selection import keep_iteration

    curve = {2: 0.96, 4: 1.0008, 6: 1.0093, 8: 1.0092, 10: 0.99, 12: 1.0092, 14: 0.97}  # untrained 0.51: gain 0.4993
    assert keep_iteration(curve, 0.51, 0.01) == 12  # band 1.0093 - 0.005: 6, 8 and 12 are in it, 14 is not
    assert keep_iteration(curve, 0.51, 0.0) == 6  # tolerance 0: the best itself
    assert keep_iteration(curve, 0.51, 0.5) == 14  # band 1.0093 - 0.25: 14 (0.97) is in it
    assert keep_iteration({2: 0.3, 4: 0.3, 6: 0.2}, 0.5, 0.01) == 4  # no gain over untrained: the latest exact best


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


def test_auroc_on_known_cases():
    from der_pipeline.evaluate.stats import auroc

    assert auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert auroc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75  # sklearn's example
    assert auroc([0.3, 0.4], [1, 1]) is None


@pytest.mark.parametrize("rollout", ROLLOUTS)
def test_ppo_on_the_confidence_state_learns_to_escalate_only_when_the_cheap_expert_is_unsure(rollout):
    rng = np.random.default_rng(0)
    q = 96
    t = synthetic_tree(n_queries=q, n_experts=2, dim=4)
    right = rng.uniform(size=q) < 0.7  # the cheap expert e0 is right on ~70% of queries, e1 always
    t.task1 = np.stack([right.astype(float), np.ones(q)], axis=1)
    t.task2 = np.zeros((q, 2, 2))  # refinements fail here: only an escalation can fix a wrong first answer
    t.cost1 = np.tile([1.0, 10.0], (q, 1))
    t.cost2 = np.tile([1.0, 10.0], (q, 2, 1))
    t.conf1 = np.full((q, 2, 5), 0.5, dtype=np.float32)
    t.conf1[:, 0, 1] = np.where(right, 0.9, 0.1)  # e0 knows when it is right
    cfg = reward_cfg(signal="task", form="terminal", actions="ktp_and_fresh", alpha=0.5, gamma=0.0, p0=0.5)
    # lr 1e-3: at params' 2.5e-4 and this budget PPO settles on always stopping (the tune stage compares both)
    ppo = ppo_cfg(total_timesteps=40_960, num_envs=128, num_steps=8, selection_folds=0, state="confidence",
                  learning_rate=1e-3, rollout=rollout)
    agent, _ = train_ppo(t, cfg, ppo, seed=1)
    w = PolicyRouter(agent, cost_scale(t), cfg, state="confidence").route(t)
    score = (w * t.path_matrix("task")).sum(1)
    escalated = w[:, 2 + 4 + 1]  # e0 > fresh e1 (N + N*N + 0*N + 1)
    assert score.mean() > 0.95
    assert escalated[~right].mean() > 0.9 and escalated[right].mean() < 0.1  # a cascade, learned


def test_secondary_metrics_follow_the_final_answer_and_are_reported_only_where_present(repo_params):
    """ROUGE-1 (or EM) of a path is its final answer's: the refiner's after KTP, the fresh expert's after an
    escalation; ``summarize`` reports it only when every test answer has it (NaN: the answer type has none)."""
    from der_pipeline.evaluate.common import summarize
    from der_pipeline.schemas import SECONDARY_METRICS

    t = tiny()
    k = SECONDARY_METRICS.index("rouge1")
    t.sec1[..., k] = [[0.1, 0.5], [0.2, 0.3]]
    t.sec2[..., k] = [[[0.11, 0.12], [0.13, 0.14]], [[0.21, 0.22], [0.23, 0.24]]]
    names = t.experts
    assert (FixedPath("r", names, ["e0", "e1"]).route(t) * t.path_matrix("rouge1")).sum(1).tolist() == [0.12, 0.22]
    assert (FixedPath("f", names, ["e0", "e1"], fresh=True).route(t) * t.path_matrix("rouge1")).sum(1).tolist() \
        == [0.5, 0.3]
    out = summarize([FixedPath("s", names, ["e1"]).route(t)], t, 1.0, repo_params)
    assert out["rouge1"] == pytest.approx(0.4)
    assert "exact_match" not in out and "rouge2" not in out


def test_bertscore_evidence_on_a_hand_made_tree():
    """Shares of right / wrong nodes over each p0, and Spearman's rho of BERTScore with the task score."""
    from der_pipeline.evaluate.ablate import bertscore_evidence
    from der_pipeline.evaluate.common import DatasetSplit

    t = tiny()  # task1 [[0.2, 0.9], [0.6, 0.1]], task2 as in tiny()
    t.bert1 = t.task1.copy()  # BERTScore ranks the nodes exactly as the task score does
    t.bert2 = t.task2.copy()
    ev = bertscore_evidence(DatasetSplit("toy", t, t, 1.0), [0.5])
    assert ev["nodes"] == 12 and ev["right"] == 6 and ev["wrong"] == 6
    assert ev["spearman_with_task"] == pytest.approx(1.0)
    assert ev["right_at_or_above_0.5"] == 1.0 and ev["wrong_at_or_above_0.5"] == 0.0
    t.bert1, t.bert2 = 1 - t.task1, 1 - t.task2  # the reverse ranking
    assert bertscore_evidence(DatasetSplit("toy", t, t, 1.0), [0.5])["spearman_with_task"] == pytest.approx(-1.0)
    t.bert1, t.bert2 = np.full_like(t.task1, 0.8), np.full_like(t.task2, 0.8)  # constant: no ranking at all
    assert bertscore_evidence(DatasetSplit("toy", t, t, 1.0), [0.5])["spearman_with_task"] is None


def test_conf_features_carry_the_yes_no_margin():
    from der_pipeline.router.arrays import CONF_FEATURES, conf_features

    sure_no = dict(zip(CONF_FEATURES, conf_features({"yes_prob": 0.05, "first_prob": 0.9, "mean_logprob": -0.1,
                                                     "min_logprob": -0.2, "answer_tokens": 2})))
    toss = dict(zip(CONF_FEATURES, conf_features({"yes_prob": 0.5, "first_prob": 0.5, "mean_logprob": -0.7,
                                                  "min_logprob": -0.7, "answer_tokens": 2})))
    span = dict(zip(CONF_FEATURES, conf_features({"yes_prob": None, "first_prob": 0.6, "mean_logprob": -0.5,
                                                  "min_logprob": -1.0, "answer_tokens": 64})))
    assert sure_no["yes_margin"] == pytest.approx(0.9) and toss["yes_margin"] == 0.0
    assert span["yes_prob"] == 0.5 and span["yes_margin"] == 0.0 and span["length"] == 1.0  # not a yes/no answer
    assert conf_features(None) == [0.5, 0.0, 0.0, 0.0, 0.0, 0.0]  # no signals: no confidence either way


class _ConstantPolicy:
    """A policy that answers with ``first`` and then takes ``second`` (STOP is masked only at t = 0)."""

    def __init__(self, first: int, second: int):
        self.first, self.second = first, second

    def greedy(self, obs, mask):
        return torch.full((mask.shape[0],), self.second if bool(mask[0, -1]) else self.first, dtype=torch.long)


class _SplitPolicy(_ConstantPolicy):
    """e0 first; then STOP on the first half of the ``n`` queries and e1's refinement on the rest."""

    def __init__(self, n: int):
        super().__init__(ANSWER0, STOP)
        self.n = n

    def greedy(self, obs, mask):
        if not bool(mask[0, -1]):
            return torch.full((mask.shape[0],), self.first, dtype=torch.long)
        return torch.where(torch.arange(mask.shape[0]) < self.n // 2, STOP, REFINE1)


def test_out_of_fold_scores_each_folds_policy_on_its_own_held_out_queries():
    from der_pipeline.router.selection import CrossValidation, selection_folds

    t = synthetic_tree(n_queries=60, n_experts=2, good=1)  # e1 right (cost 2), e0 wrong (cost 1); e0>e1 right
    folds = selection_folds(t, 3)
    cfg = reward_cfg(signal="task", form="terminal", alpha=0.1, actions="ktp_and_fresh")
    # fold 0's policy: e0 and STOP (score 0, cost 1); folds 1 and 2: e0, then e1 refines (score 1, cost 1 + 2)
    agents = [_ConstantPolicy(ANSWER0, STOP), _ConstantPolicy(ANSWER0, REFINE1), _ConstantPolicy(ANSWER0, REFINE1)]
    cv = CrossValidation(folds, {}, [], 0, agents, [])
    held = [val.n_queries for _, val in folds]
    got = cv.out_of_fold(cfg, cost_scale(t), "query_answer")
    share = (held[1] + held[2]) / 60
    assert got["score"] == pytest.approx(share)
    assert got["cost_gflops"] == pytest.approx((held[0] * 1.0 + (held[1] + held[2]) * 3.0) / 60)
    assert got["two_calls"] == pytest.approx(share)
    assert got["constant_folds"] == 1.0  # every fold's policy routes all its held-out queries one way
    agents[1] = _SplitPolicy(folds[1][1].n_queries)
    assert cv.out_of_fold(cfg, cost_scale(t), "query_answer")["constant_folds"] == pytest.approx(2 / 3)


def test_the_kept_policy_carries_its_out_of_fold_operating_point(tmp_path, repo_params):
    from der_pipeline.router.checkpoint import load_policy, save_policy
    from der_pipeline.router.selection import cross_validate

    t = synthetic_tree(n_queries=64, n_experts=3, good=0)
    cfg = reward_cfg(signal="task", form="per_step", alpha=0.5, beta=0.5, gamma=0.5, p0=0.5)
    ppo = ppo_cfg(total_timesteps=8_192, num_envs=128, num_steps=8, selection_folds=3, eval_every=2,
                  state="query_answer", fallback="none")  # the fallback's own point: see test_train_keeps_...
    agent, history = train_ppo(t, cfg, ppo, seed=1)
    cv = cross_validate(t, cfg, ppo, seed=1, scale=cost_scale(t))
    assert history[-1]["out_of_fold"] == cv.out_of_fold(cfg, cost_scale(t), "query_answer")
    save_policy(agent, tmp_path / "policy.pt", experts=t.experts, scale=cost_scale(t), p=repo_params,
                obs_dim=agent.members[0].obs_dim,
                seed=1, out_of_fold=history[-1]["out_of_fold"])
    assert load_policy(tmp_path / "policy.pt")[1]["out_of_fold"] == history[-1]["out_of_fold"]


def test_action_table_holds_every_actions_reward_by_hand():
    """The all-actions batch (ppo.rollout: all_actions) reads every state's every reward off the environment."""
    from der_pipeline.router.ppo import action_table

    table = action_table(tiny(), CFG, cost_scale(tiny()), "query_answer")
    assert table.reward0.shape == (2, 5) and table.reward1.shape == (2, 2, 5)
    assert float(table.reward0[0, 1]) == pytest.approx(0.9 - 0.2 * 1.0 + 0.3)  # query 0, expert 1 first
    assert float(table.reward0[0, 0]) == pytest.approx(0.2 - 0.2 * 0.25)
    # query 0 after expert 0: refine by 1 (P 0.8 from 0.2), escalate to 1 afresh (P 0.9), STOP (0)
    assert float(table.reward1[0, 0, REFINE1]) == pytest.approx(0.8 + 0.5 * (0.8 - 0.2) - 0.2 * 1.0 + 0.3)
    assert float(table.reward1[0, 0, ANSWER1]) == pytest.approx(0.9 + 0.5 * (0.9 - 0.2) - 0.2 * 1.0 + 0.3)
    assert float(table.reward1[0, 0, STOP]) == 0.0
    assert float(table.final_p1[1, 1, STOP]) == pytest.approx(0.1) and float(table.final_p1[1, 0, REFINE1]) == 0.5
    assert not table.mask0[:, 2:].any() and table.mask1[0, 0].tolist() == [False, True, True, True, True]
    assert table.calls1.tolist() == [2.0, 2.0, 2.0, 2.0, 1.0]
    # the terminal form pays nothing for a first call and the whole episode's reward at its end
    terminal = action_table(tiny(), dataclasses.replace(CFG, form="terminal"), cost_scale(tiny()), "query_answer")
    assert not terminal.reward0.any()
    assert float(terminal.reward1[0, 0, STOP]) == pytest.approx(0.2 - 0.2 * 0.25)  # P 0.2 < p0: one call, no penalty
    assert float(terminal.reward1[0, 0, ANSWER1]) == pytest.approx(0.9 - 0.2 * 1.25 + 0.3)


def test_all_actions_ppo_logs_the_policys_expected_return_and_is_seeded():
    t = synthetic_tree(n_queries=48, n_experts=3, good=1)
    cfg = reward_cfg(signal="task", form="terminal", alpha=0.2, gamma=0.0, p0=0.5)
    ppo = ppo_cfg(total_timesteps=8192, num_envs=128, num_steps=8, selection_folds=0, state="query_answer",
                  rollout="all_actions")
    agent, history = train_ppo(t, cfg, ppo, seed=3)
    assert len(history) == 8 and all(h["episodes"] == 48 for h in history)
    assert history[-1]["mean_return"] > history[0]["mean_return"]  # the expected return rises
    assert all(1.0 <= h["mean_calls"] <= 2.0 and 0.0 <= h["mean_final_p"] <= 1.0 for h in history)
    again, _ = train_ppo(t, cfg, ppo, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(agent.state_dict().values(), again.state_dict().values()))


def test_a_crafted_checkpoint_is_refused_without_running_its_code(tmp_path):
    """A pickle whose loading runs a shell command (the classic __reduce__ trick) is refused by the one
    checkpoint loader, and the command never runs."""
    import pickle

    from der_pipeline.router.checkpoint import CheckpointError, load_policy

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))

    import torch
    path = tmp_path / "boolq" / "seed-1" / "policy.pt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {}, "evil": Evil()}, path)  # torch.save pickles the object as it is
    with pytest.raises(CheckpointError, match=r"policy\.pt: not a readable policy checkpoint.*der-pipeline train "
                                               r"-d boolq --to-models"):
        load_policy(path)
    assert not marker.exists()
    path.write_bytes(pickle.dumps({"evil": Evil()}))  # a plain pickle, not torch's zip format
    with pytest.raises(CheckpointError):
        load_policy(path)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", None])
def test_a_corrupt_or_foreign_file_names_itself_and_how_to_retrain(tmp_path, content):
    import torch

    from der_pipeline.router.checkpoint import CheckpointError, load_policy

    path = tmp_path / "sst2" / "seed-2" / "policy.pt"
    path.parent.mkdir(parents=True)
    if content is None:
        torch.save({"weights": torch.zeros(3)}, path)  # a real torch file, but not a policy checkpoint
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"seed-2/policy\.pt: .*der-pipeline train -d sst2 --to-models"):
        load_policy(path)


def test_every_committed_checkpoint_loads_as_data_only():
    from conftest import REPO

    from der_pipeline.router.checkpoint import load_policy

    paths = sorted(REPO.glob("models/*/seed-*/policy.pt"))
    assert len(paths) >= 30
    for path in paths:
        agent, ckpt = load_policy(path)
        assert ckpt["experts"] and ckpt["n_actions"] >= len(ckpt["experts"])
