"""The MDP (router/env.py): rewards by hand, masks, the escalation action, the state views, gymnasium's API."""
import dataclasses

import pytest
import torch
from router_cases import ANSWER0, ANSWER1, CFG, REFINE1, STOP, env_for, tiny

from der_pipeline.router.env import TreeEnv, VectorTreeEnv


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
