"""Model selection (router/selection.py): folds, the kept iteration, the fixed-path check, the fold ensemble."""
import dataclasses

import numpy as np
import pytest
import torch
from conftest import ppo_cfg, reward_cfg, synthetic_tree
from router_cases import ANSWER0, REFINE1, STOP

from der_pipeline.router.arrays import cost_scale
from der_pipeline.router.selection import train_ppo


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
