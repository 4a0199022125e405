"""PPO (router/ppo.py) on small synthetic trees: it learns what a hand-made tree rewards, both rollouts."""
import dataclasses

import numpy as np
import pytest
import torch
from conftest import ppo_cfg, reward_cfg, synthetic_tree
from router_cases import ANSWER1, CFG, REFINE1, STOP, tiny

from der_pipeline.router.arrays import cost_scale
from der_pipeline.router.methods import (
    PolicyRouter,
    RandomRouter,
)
from der_pipeline.router.selection import train_ppo

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
