"""PPO for the router, written out in the manner of cleanrl's ppo.py (every step of the algorithm visible).

Actor: softmax over N experts + STOP with masked logits. Critic: a value head.
Rollouts of ``num_envs`` x ``num_steps`` from the batched tree environment, GAE,
clipped surrogate, clipped value loss, entropy bonus, gradient clipping,
minibatch epochs, linear learning-rate annealing, seeded (``ppo.rollout: sampled``).
With ``ppo.rollout: all_actions`` the batch is instead every state of the train queries with every
action's exact advantage, read off the tree (``_run_all_actions_ppo``): the same clipped surrogate,
taken in expectation over the actions.

Which iteration is kept: K-fold cross-validation on the train split (``ppo.selection_folds``). The
policy kept (``ppo.final_policy``) is either the K folds' policies at that iteration, their action
probabilities averaged (``fold_ensemble``: every member is a policy whose held-out routing was
measured), or the same PPO run again on the whole train split, stopped at that iteration (``refit``).
"""
from __future__ import annotations

import json
import random
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.distributions.categorical import Categorical

from der_pipeline.config import PPOConfig, RewardConfig
from der_pipeline.router.arrays import TreeArrays, cost_scale
from der_pipeline.router.env import T_MAX, VectorTreeEnv, path_actions
from der_pipeline.router.methods import best_fixed_index, greedy_paths

MASKED = -1e9


def layer_init(layer: nn.Linear, std: float = np.sqrt(2), bias_const: float = 0.0) -> nn.Linear:
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class Agent(nn.Module):
    def __init__(self, obs_dim: int, n_actions: int, hidden: int = 64):
        super().__init__()
        self.obs_dim, self.n_actions, self.hidden = obs_dim, n_actions, hidden
        self.critic = nn.Sequential(
            layer_init(nn.Linear(obs_dim, hidden)), nn.Tanh(),
            layer_init(nn.Linear(hidden, hidden)), nn.Tanh(),
            layer_init(nn.Linear(hidden, 1), std=1.0),
        )
        self.actor = nn.Sequential(
            layer_init(nn.Linear(obs_dim, hidden)), nn.Tanh(),
            layer_init(nn.Linear(hidden, hidden)), nn.Tanh(),
            layer_init(nn.Linear(hidden, n_actions), std=0.01),
        )

    def get_value(self, x: torch.Tensor) -> torch.Tensor:
        return self.critic(x)

    def masked_logits(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.where(mask, self.actor(x), torch.full((), MASKED))

    def get_action_and_value(self, x, mask, action=None):
        probs = Categorical(logits=self.masked_logits(x, mask))
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action), probs.entropy(), self.critic(x)

    @torch.no_grad()
    def greedy(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.masked_logits(x, mask).argmax(dim=1)


class FoldEnsemble(nn.Module):
    """The K folds' policies as one: the action distribution is the mean of theirs (so its greedy action
    is the one they give the most probability together). ``masked_logits`` returns the log of that mean,
    so a softmax of it gives the mean probabilities back. Why not a refit on the whole train split: PPO's
    path depends on its data, and a refit stopped at the folds' iteration is a different policy, never
    validated; on SST-2 at alpha = 0.05 the folds' policies escalated on 24% of their held-out queries and
    the refits on none (benchmarks/final_policy.py compares the two out of sample)."""

    def __init__(self, members: list[Agent]):
        super().__init__()
        if not members:
            raise ValueError("a fold ensemble needs at least one policy")
        self.members = nn.ModuleList(members)
        first = members[0]
        self.obs_dim, self.n_actions, self.hidden = first.obs_dim, first.n_actions, first.hidden

    def masked_logits(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logp = torch.stack([torch.log_softmax(m.masked_logits(x, mask), dim=1) for m in self.members])
        mean = torch.logsumexp(logp, dim=0) - np.log(len(self.members))
        return torch.where(mask, mean, torch.full((), MASKED))

    @torch.no_grad()
    def greedy(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.masked_logits(x, mask).argmax(dim=1)


class FixedPathPolicy(nn.Module):
    """A constant policy: every query goes down one path of the tree (the best fixed path, kept in place of
    a learned policy that does not beat it out of fold: ``fixed_path_check``). At t = 0 it asks the path's
    first expert; at t = 1, the only step where STOP is allowed (which is how it reads the step from the
    mask), it stops, refines or escalates as the path says. ``learned``: the policy it stands in for,
    saved beside it in the checkpoint."""

    def __init__(self, path: int, n_experts: int, learned: nn.Module):
        super().__init__()
        self.path, self.n = path, n_experts
        self.first, self.second = path_actions(n_experts, path)
        self.learned = learned
        self.obs_dim, self.n_actions, self.hidden = learned.obs_dim, learned.n_actions, learned.hidden

    def masked_logits(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        action = torch.where(mask[:, 2 * self.n], self.second, self.first)
        chosen = nn.functional.one_hot(action, self.n_actions).bool() & mask
        return torch.where(chosen, torch.zeros(()), torch.full((), MASKED))

    @torch.no_grad()
    def greedy(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.masked_logits(x, mask).argmax(dim=1)


def selection_folds(arrays: TreeArrays, k: int) -> list[tuple[TreeArrays, TreeArrays]]:
    """The train queries in ``k`` folds by a hash of the query id, as (fit, held-out) pairs: fold i holds
    the queries whose zlib.crc32(qid) / 2**32 falls in [i/k, (i+1)/k). Fixed across seeds and runs (the
    same bands as benchmarks/cascade_cv.py); the test split is never touched. Empty when ``k`` < 2 or a
    fold would be empty (too few queries to cross-validate)."""
    if k < 2:
        return []
    key = np.array([zlib.crc32(q.encode()) / 2**32 for q in arrays.qids])
    band = np.minimum((key * k).astype(np.int64), k - 1)
    folds = []
    for i in range(k):
        val, fit = np.flatnonzero(band == i), np.flatnonzero(band != i)
        if len(val) == 0 or len(fit) == 0:
            return []
        folds.append((arrays.subset(fit), arrays.subset(val)))
    return folds


def greedy_return(agent: Agent, arrays: TreeArrays, reward: RewardConfig, scale: float | None, state: str) -> float:
    """Mean episode return of the greedy policy, one episode per query (the model-selection score)."""
    return _greedy_return(agent, _episode_env(arrays, reward, scale, state))


def _episode_env(arrays: TreeArrays, reward: RewardConfig, scale: float | None, state: str) -> VectorTreeEnv:
    return VectorTreeEnv(arrays, reward, num_envs=arrays.n_queries, scale=scale, autoreset=False, state=state)


@torch.no_grad()
def _greedy_return(agent: Agent, env: VectorTreeEnv) -> float:
    n = env.num_envs
    obs, mask = env.reset(torch.arange(n))
    total = torch.zeros(n)
    live = torch.ones(n, dtype=torch.bool)
    for _ in range(T_MAX):
        action = agent.greedy(obs, mask)
        obs, mask, r, done, _ = env.step(torch.where(live, action, torch.zeros_like(action)))
        total += torch.where(live, r, torch.zeros_like(r))
        live &= ~done
        if not live.any():
            break
    return float(total.mean())


@dataclass
class PPORun:
    """One PPO run: the final agent, one log row per iteration, the agent's weights at the iterations
    asked for, and (with a held-out set) the greedy held-out return at every checked iteration."""
    agent: Agent
    rows: list[dict]
    snapshots: dict[int, dict]
    val_returns: dict[int, float]
    untrained_val_return: float | None

    def agent_at(self, iteration: int) -> Agent:
        agent = Agent(self.agent.obs_dim, self.agent.n_actions, self.agent.hidden)
        agent.load_state_dict(self.snapshots[iteration])
        return agent


@dataclass
class CrossValidation:
    """The K-fold choice of the PPO iteration to keep: the policy of fold i is trained on the other folds
    and its greedy return on fold i is checked every ``eval_every`` iterations; the iteration kept is the
    latest whose mean over the folds is within ``selection_tolerance`` of the best (``keep_iteration``).
    One 94-query fold was too few: its noise, not the policy, decided which iteration was kept
    (benchmarks/cascade_cv.py)."""
    folds: list[tuple[TreeArrays, TreeArrays]]
    curve: dict[int, list[float]]  # iteration -> each fold's held-out greedy return
    untrained: list[float]  # each fold's held-out greedy return before any update
    best_iteration: int
    agents: list[Agent]  # each fold's policy at best_iteration: out-of-fold routing of the train split
    runs: list[PPORun]  # each fold's run (its training log)

    def mean_return(self, iteration: int) -> float:
        return float(np.mean(self.curve[iteration]))

    def out_of_fold(self, reward: RewardConfig, scale: float, state: str) -> dict:
        """What the kept folds' policies do on the queries they did not train on: the mean task score and
        the mean cost (GFLOPs) of the greedy paths over every held-out fold, and the share of two-call
        paths. Each train query is held out once, so this is the train split's own out-of-sample estimate
        of DER's operating point (the curves stage chooses the goal's price from it; the test split is
        never read). ``constant_folds``: the share of the folds whose policy sends every held-out query down
        the same path. Why: a mean over folds of constant policies (one fold's always the specialist,
        another's always the strongest expert) can look like a router's operating point without any
        policy reading its state (SST-2, alpha 0.05 and 0.1: benchmarks/goal_alpha.py)."""
        score, cost, two, constant = [], [], [], []
        for (_, val), agent in zip(self.folds, self.agents):
            idx = greedy_paths(agent, val, scale, reward, state)
            rows = np.arange(val.n_queries)
            score.append(val.path_matrix("task")[rows, idx])
            cost.append(val.path_matrix("cost")[rows, idx])
            two.append(idx >= val.n_experts)
            constant.append(len(np.unique(idx)) == 1)
        return {"score": float(np.concatenate(score).mean()), "cost_gflops": float(np.concatenate(cost).mean()),
                "two_calls": float(np.concatenate(two).mean()), "constant_folds": float(np.mean(constant))}


def fixed_path_check(cv: CrossValidation, arrays: TreeArrays, reward: RewardConfig, scale: float,
                     state: str) -> dict:
    """Does the learned policy beat a constant one on queries it did not train on? On every held-out fold,
    each query's utility (task score - alpha x cost / scale, what every method is judged by) under the
    fold's kept policy, against the best fixed path fitted on the other folds (``BestFixedPath``'s rule).
    ``gain``: the mean of the per-query differences over the train split; ``se``: their standard error.
    ``beats_fixed_path`` when gain > se: the one-standard-error rule (Breiman et al. 1984; Hastie,
    Tibshirani and Friedman, ESL 7.10) with the constant path as the simpler model, so a policy whose
    out-of-fold edge is within its own noise is not preferred to a rule with nothing to learn (on BoolQ
    the tuned settings' edge is 0.004 of utility, with a seed spread of 0.008). ``path``: the best fixed
    path on the whole of ``arrays`` (the fallback); ``fixed_out_of_fold``: the fold-fitted fixed paths'
    operating point, in ``CrossValidation.out_of_fold``'s keys."""
    diff, score, cost, two = [], [], [], []
    for (fit, val), agent in zip(cv.folds, cv.agents):
        rows = np.arange(val.n_queries)
        task, gflops = val.path_matrix("task"), val.path_matrix("cost")
        mine = greedy_paths(agent, val, scale, reward, state)
        const = best_fixed_index(fit, reward.alpha, reward.actions == "ktp_only")
        diff.append((task[rows, mine] - reward.alpha * gflops[rows, mine] / scale)
                    - (task[:, const] - reward.alpha * gflops[:, const] / scale))
        score.append(task[:, const])
        cost.append(gflops[:, const])
        two.append(np.full(val.n_queries, const >= val.n_experts))
    diff = np.concatenate(diff)
    gain = float(diff.mean())
    se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
    path = best_fixed_index(arrays, reward.alpha, reward.actions == "ktp_only")
    return {"gain": gain, "se": se, "beats_fixed_path": gain > se, "path": path,
            "path_name": arrays.path_names()[path],
            "fixed_out_of_fold": {"score": float(np.concatenate(score).mean()),
                                  "cost_gflops": float(np.concatenate(cost).mean()),
                                  "two_calls": float(np.concatenate(two).mean()), "constant_folds": 1.0}}


def keep_iteration(mean_returns: dict[int, float], untrained: float, tolerance: float) -> int:
    """The iteration to keep from the cross-validated curve: the latest whose mean return is within
    ``tolerance`` x (best - untrained) of the best. Why the latest: once the folds' policies agree (a
    plateau, often the same greedy routing to 1e-4), the earliest point of the plateau is where the
    whole-split refit, which sees other queries in its minibatches, has had the fewest updates to get
    there; the latest point has had the most. The band is a fraction of the gain PPO made over the
    untrained policy, so it is scale-free across datasets (a return of about 1 on BoolQ, 0.15 on XSum);
    with no gain, or tolerance 0, it keeps the latest of the exact best."""
    best = max(mean_returns.values())
    floor = best - tolerance * max(best - untrained, 0.0)
    return max(it for it, value in mean_returns.items() if value >= floor)


def cross_validate(arrays: TreeArrays, reward: RewardConfig, cfg: PPOConfig, seed: int = 1,
                   scale: float | None = None) -> CrossValidation | None:
    """K-fold cross-validation of PPO on ``arrays`` (K = ``cfg.selection_folds``); None where K < 2 or the
    queries are too few for K folds."""
    scale = scale if scale is not None else cost_scale(arrays)
    folds = selection_folds(arrays, cfg.selection_folds)
    if not folds:
        return None
    runs = [_run_ppo(fit, reward, cfg, seed, scale, val=val) for fit, val in folds]
    curve = {it: [run.val_returns[it] for run in runs] for it in sorted(runs[0].val_returns)}
    best = keep_iteration({it: float(np.mean(v)) for it, v in curve.items()},
                          float(np.mean([run.untrained_val_return for run in runs])), cfg.selection_tolerance)
    return CrossValidation(folds, curve, [run.untrained_val_return for run in runs], best,
                           [run.agent_at(best) for run in runs], runs)


def train_ppo(arrays: TreeArrays, reward: RewardConfig, cfg: PPOConfig, seed: int = 1, log_path: Path | None = None,
              scale: float | None = None) -> tuple[Agent | FoldEnsemble | FixedPathPolicy, list[dict]]:
    """PPO on ``arrays`` (the train split). With ``cfg.selection_folds`` = K >= 2, K-fold cross-validation
    (``cross_validate``) chooses how many iterations to keep, and the policy kept is ``cfg.final_policy``:
    the folds' policies at that iteration (``fold_ensemble``; the log's rows are the folds' training
    statistics, averaged) or a run on the whole train split with the same seed, stopped there (``refit``).
    Either way a policy that memorises its training queries is not kept. With ``cfg.fallback:
    best_fixed_path`` a policy that does not beat the best fixed path out of fold (``fixed_path_check``)
    is replaced by that path (``FixedPathPolicy``). Each checked row of the log
    carries the cross-validated return (``val_return``, the mean over folds, and ``val_return_folds``);
    the log's last line marks the kept iteration, with the folds' out-of-fold operating point
    (``CrossValidation.out_of_fold``). K = 0 keeps the last iteration of one run."""
    scale = scale if scale is not None else cost_scale(arrays)
    cv = cross_validate(arrays, reward, cfg, seed, scale)
    if cv is not None and cfg.final_policy == "fold_ensemble":
        history = _mean_rows([run.rows for run in cv.runs])
        agent = FoldEnsemble(cv.agents)
    else:
        run = _run_ppo(arrays, reward, cfg, seed, scale, keep=cv.best_iteration if cv else None)
        history, agent = run.rows, (run.agent_at(cv.best_iteration) if cv else run.agent)
    if cv is not None:
        for row in history:
            if row["iteration"] in cv.curve:
                row["val_return"] = cv.mean_return(row["iteration"])
                row["val_return_folds"] = [round(v, 4) for v in cv.curve[row["iteration"]]]
        kept = {"selected_iteration": cv.best_iteration, "best_val_return": cv.mean_return(cv.best_iteration),
                "untrained_val_return": float(np.mean(cv.untrained)), "final_policy": cfg.final_policy,
                "out_of_fold": cv.out_of_fold(reward, scale, cfg.state)}
        check = fixed_path_check(cv, arrays, reward, scale, cfg.state)
        kept["fixed_path_check"] = {k: check[k] for k in ("gain", "se", "beats_fixed_path", "path_name")}
        kept["policy"] = "learned"
        if cfg.fallback == "best_fixed_path" and not check["beats_fixed_path"]:
            agent = FixedPathPolicy(check["path"], arrays.n_experts, agent)
            kept.update(policy="best_fixed_path", out_of_fold=check["fixed_out_of_fold"])
        history[-1].update(kept)
    if log_path:
        lines = [json.dumps(row) for row in history]
        if cv is not None:  # the log's last line marks the kept iteration
            lines.append(json.dumps({"kept": kept}))
        Path(log_path).write_text("\n".join(lines) + "\n")
    return agent, history


def _mean_rows(runs: list[list[dict]]) -> list[dict]:
    """Per iteration, the mean of each statistic over several runs' logs (the folds' runs)."""
    return [{k: (row[k] if k in ("iteration", "global_step") else float(np.mean([r[i][k] for r in runs])))
             for k in row} for i, row in enumerate(runs[0])]


def _run_ppo(arrays: TreeArrays, reward: RewardConfig, cfg: PPOConfig, seed: int, scale: float,
             val: TreeArrays | None = None, keep: int | None = None) -> PPORun:
    """PPO on ``arrays`` with the batch ``cfg.rollout`` asks for (``_run_sampled_ppo`` or
    ``_run_all_actions_ppo``)."""
    run = _run_all_actions_ppo if cfg.rollout == "all_actions" else _run_sampled_ppo
    return run(arrays, reward, cfg, seed, scale, val=val, keep=keep)


@dataclass
class ActionTable:
    """Every state of the MDP over some queries, and every action's reward there: the tree holds the outcome
    of all 2N + 1 actions at every state, so nothing has to be sampled. ``obs0``/``mask0``: the Q first
    states; ``reward0`` [Q, A]: the reward of each first call (0 in the terminal form); ``obs1``/``mask1``
    [Q, N, ...]: the state after expert j answered first; ``reward1`` [Q, N, A]: the reward of each second
    action there (refine, escalate or STOP; each ends the episode at T_max = 2)."""
    obs0: torch.Tensor
    mask0: torch.Tensor
    reward0: torch.Tensor
    obs1: torch.Tensor
    mask1: torch.Tensor
    reward1: torch.Tensor
    final_p1: torch.Tensor  # [Q, N, A]: the quality signal P of the final answer after that second action
    calls1: torch.Tensor  # [A]: the calls an episode has made once this second action is taken (STOP: 1)


def action_table(arrays: TreeArrays, reward: RewardConfig, scale: float, state: str) -> ActionTable:
    """The ``ActionTable`` of ``arrays``, read off the environment itself (N x (2N + 2) batched steps), so
    the rewards are exactly those a sampled episode would earn."""
    env = _episode_env(arrays, reward, scale, state)
    q, n, a = arrays.n_queries, arrays.n_experts, env.n_actions
    everyone = torch.arange(q)
    obs0, mask0 = env.reset(everyone)
    reward0 = torch.zeros(q, a)
    obs1 = torch.zeros(q, n, env.obs_dim)
    mask1 = torch.zeros(q, n, a, dtype=torch.bool)
    reward1 = torch.zeros(q, n, a)
    final_p1 = torch.zeros(q, n, a)
    for j in range(n):
        env.reset(everyone)
        obs1[:, j], mask1[:, j], reward0[:, j], _, _ = env.step(torch.full((q,), j))
        for action in torch.nonzero(mask1[0, j]).flatten().tolist():  # the mask at t = 1 depends on j only
            env.reset(everyone)
            env.step(torch.full((q,), j))
            _, _, reward1[:, j, action], _, info = env.step(torch.full((q,), action))
            final_p1[:, j, action] = info["final_p"]
    calls1 = torch.full((a,), 2.0)
    calls1[env.stop] = 1.0
    return ActionTable(obs0, mask0, reward0, obs1, mask1, reward1, final_p1, calls1)


def _run_all_actions_ppo(arrays: TreeArrays, reward: RewardConfig, cfg: PPOConfig, seed: int, scale: float,
                         val: TreeArrays | None = None, keep: int | None = None) -> PPORun:
    """PPO whose batch is every state of the train queries with every action's exact advantage, instead of
    sampled episodes (``ppo.rollout: all_actions``). Why: the tree knows what all 2N + 1 actions earn at
    every state, and sampled episodes (one action per state, 2,048 steps an update) left the policy
    gradient too noisy to find when to escalate (escalating gains under 0.01 of utility per query on
    SST-2): every fold's policy was a constant path (benchmarks/goal_alpha.py).

    Per iteration, with the policy before the update (pi_old):
        A1(s1, a) = R1(s1, a) - V1(s1),       V1(s1) = sum_a pi_old(a | s1) R1(s1, a)
        Q0(s0, a) = R0(s0, a) + gamma * V1(s1 after a),   A0 = Q0 - V0,   V0 = sum_a pi_old(a | s0) Q0(s0, a)
    over every first state s0 and every second state s1 (after each expert's first answer). Each state
    is weighted by how often pi_old visits it (s0: 1; s1 after expert j: pi_old(j | s0)), so the batch is
    the on-policy state distribution (weighting the s1 states alike stalled the synthetic learning test in
    tests/test_router.py). The loss is PPO's clipped surrogate in
    expectation over the actions, sum_a pi_old(a | s) max(-A ratio, -A clip(ratio)), whose gradient at
    ratio = 1 is the exact policy gradient at s; minus ``ent_coef`` x the entropy. There is no critic to
    fit: V is exact. The advantages are scaled by their pi_old-weighted standard deviation (``norm_adv``).
    ``total_timesteps`` / (``num_envs`` x ``num_steps``) iterations, as with sampled episodes; each makes
    ``update_epochs`` passes over the states in ``num_minibatches`` minibatches. The log's ``mean_return``
    ``mean_calls`` and ``mean_final_p`` are the policy's expected return, calls and final P per episode over the
    train queries (before the iteration's update)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(1)

    val_env = _episode_env(val, reward, scale, cfg.state) if val is not None else None
    table = action_table(arrays, reward, scale, cfg.state)
    q, n, n_actions = table.reward1.shape
    obs_dim = table.obs0.shape[1]
    agent = Agent(obs_dim, n_actions, cfg.hidden)
    untrained_val = _greedy_return(agent, val_env) if val_env is not None else None
    snapshots: dict[int, dict] = {}
    val_returns: dict[int, float] = {}
    optimizer = torch.optim.Adam(agent.parameters(), lr=cfg.learning_rate, eps=1e-5)
    num_iterations = cfg.total_timesteps // (cfg.num_envs * cfg.num_steps)

    b_obs = torch.cat([table.obs0, table.obs1.reshape(q * n, obs_dim)])
    b_masks = torch.cat([table.mask0, table.mask1.reshape(q * n, n_actions)])
    batch_size = len(b_obs)
    minibatch_size = max(1, batch_size // cfg.num_minibatches)
    history: list[dict] = []
    for iteration in range(1, num_iterations + 1):
        if cfg.anneal_lr:
            frac = 1.0 - (iteration - 1.0) / num_iterations
            optimizer.param_groups[0]["lr"] = frac * cfg.learning_rate

        # exact advantages of every action under pi_old, second step first (it values the first)
        with torch.no_grad():
            probs1 = torch.softmax(agent.masked_logits(table.obs1.reshape(q * n, obs_dim),
                                                       table.mask1.reshape(q * n, n_actions)), dim=1)
            probs1 = probs1.reshape(q, n, n_actions)
            value1 = (probs1 * table.reward1).sum(-1)  # [Q, N]
            q0 = table.reward0.clone()
            q0[:, :n] += cfg.gamma * value1
            probs0 = torch.softmax(agent.masked_logits(table.obs0, table.mask0), dim=1)
            value0 = (probs0 * q0).sum(-1)
            b_probs = torch.cat([probs0, probs1.reshape(q * n, n_actions)])
            b_advantages = torch.cat([q0 - value0[:, None], (table.reward1 - value1[..., None]).reshape(q * n, -1)])
            b_advantages = torch.where(b_masks, b_advantages, torch.zeros(()))
            # how often pi_old visits each state: every first state once, the state after expert j with pi_old(j)
            b_weights = torch.cat([torch.ones(q), probs0[:, :n].reshape(q * n)])
            b_weights = b_weights / b_weights.mean()
            if cfg.norm_adv:
                std = ((b_probs * b_advantages ** 2).sum(1).mean()).sqrt()  # over the states, unweighted
                b_advantages = b_advantages / (std + 1e-8)
            calls = 1.0 + (probs1 * (table.calls1 - 1.0)).sum(-1)  # expected calls after each first expert
            expected_calls = float((probs0[:, :n] * calls).sum(1).mean())
            expected_p = float((probs0[:, :n] * (probs1 * table.final_p1).sum(-1)).sum(1).mean())

        b_inds = np.arange(batch_size)
        clipfracs = []
        for _epoch in range(cfg.update_epochs):
            np.random.shuffle(b_inds)
            for start in range(0, batch_size, minibatch_size):
                mb_inds = b_inds[start:start + minibatch_size]
                mb_masks, mb_old = b_masks[mb_inds], b_probs[mb_inds]
                logits = agent.masked_logits(b_obs[mb_inds], mb_masks)
                newprobs = torch.softmax(logits, dim=1)
                ratio = torch.where(mb_masks & (mb_old > 0), newprobs / mb_old.clamp(min=1e-12), torch.ones(()))
                with torch.no_grad():
                    logratio = ratio.log()
                    approx_kl = (mb_old * ((ratio - 1) - logratio)).sum(1).mean()
                    clipfracs += [(mb_old * ((ratio - 1.0).abs() > cfg.clip_coef).float()).sum(1).mean().item()]

                mb_advantages = b_advantages[mb_inds]
                pg_loss1 = -mb_advantages * ratio
                pg_loss2 = -mb_advantages * torch.clamp(ratio, 1 - cfg.clip_coef, 1 + cfg.clip_coef)
                mb_weights = b_weights[mb_inds]
                pg_loss = (mb_weights * (mb_old * torch.max(pg_loss1, pg_loss2)).sum(1)).mean()

                entropy_loss = (mb_weights * Categorical(logits=logits).entropy()).mean()
                loss = pg_loss - cfg.ent_coef * entropy_loss

                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), cfg.max_grad_norm)
                optimizer.step()

        row = {
            "iteration": iteration,
            "global_step": iteration * batch_size,
            "episodes": q,
            "mean_return": float(value0.mean()),
            "mean_calls": expected_calls,
            "mean_final_p": expected_p,
            "entropy": float(entropy_loss.detach()),
            "approx_kl": float(approx_kl),
            "clipfrac": float(np.mean(clipfracs)),
            "value_loss": 0.0,
            "policy_loss": float(pg_loss.detach()),
            "lr": optimizer.param_groups[0]["lr"],
        }
        if val_env is not None and (iteration % cfg.eval_every == 0 or iteration == num_iterations):
            val_returns[iteration] = _greedy_return(agent, val_env)
            snapshots[iteration] = {k: v.clone() for k, v in agent.state_dict().items()}
        if iteration == keep:
            snapshots[iteration] = {k: v.clone() for k, v in agent.state_dict().items()}
        history.append(row)
    return PPORun(agent, history, snapshots, val_returns, untrained_val)


def _run_sampled_ppo(arrays: TreeArrays, reward: RewardConfig, cfg: PPOConfig, seed: int, scale: float,
                     val: TreeArrays | None = None, keep: int | None = None) -> PPORun:
    """cleanrl's PPO loop on ``arrays``, seeded; with ``val`` the greedy return on it at every checked
    iteration (and a snapshot there); ``keep``: an iteration whose weights to snapshot as well."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(1)  # small MLPs: one thread is as fast, and robust when other work shares the cores

    val_env = _episode_env(val, reward, scale, cfg.state) if val is not None else None  # built once
    envs = VectorTreeEnv(arrays, reward, cfg.num_envs, seed=seed, scale=scale, state=cfg.state)
    agent = Agent(envs.obs_dim, envs.n_actions, cfg.hidden)
    untrained_val = _greedy_return(agent, val_env) if val_env is not None else None  # iteration 0: the baseline
    snapshots: dict[int, dict] = {}
    val_returns: dict[int, float] = {}
    optimizer = torch.optim.Adam(agent.parameters(), lr=cfg.learning_rate, eps=1e-5)
    batch_size = cfg.num_envs * cfg.num_steps
    minibatch_size = batch_size // cfg.num_minibatches
    num_iterations = cfg.total_timesteps // batch_size

    obs = torch.zeros((cfg.num_steps, cfg.num_envs, envs.obs_dim))
    masks = torch.zeros((cfg.num_steps, cfg.num_envs, envs.n_actions), dtype=torch.bool)
    actions = torch.zeros((cfg.num_steps, cfg.num_envs), dtype=torch.long)
    logprobs = torch.zeros((cfg.num_steps, cfg.num_envs))
    rewards = torch.zeros((cfg.num_steps, cfg.num_envs))
    dones = torch.zeros((cfg.num_steps, cfg.num_envs))
    values = torch.zeros((cfg.num_steps, cfg.num_envs))

    next_obs, next_mask = envs.reset()
    next_done = torch.zeros(cfg.num_envs)
    ep_return = torch.zeros(cfg.num_envs)
    history: list[dict] = []
    for iteration in range(1, num_iterations + 1):
        if cfg.anneal_lr:
            frac = 1.0 - (iteration - 1.0) / num_iterations
            optimizer.param_groups[0]["lr"] = frac * cfg.learning_rate

        finished_returns, finished_calls, finished_p = [], [], []
        for step in range(cfg.num_steps):
            obs[step] = next_obs
            masks[step] = next_mask
            dones[step] = next_done
            with torch.no_grad():
                action, logprob, _, value = agent.get_action_and_value(next_obs, next_mask)
                values[step] = value.flatten()
            actions[step] = action
            logprobs[step] = logprob
            next_obs, next_mask, reward, done, info = envs.step(action)
            rewards[step] = reward
            next_done = done.float()
            ep_return += reward
            finished_returns.append(ep_return[done].clone())
            finished_calls.append(info["calls"])
            finished_p.append(info["final_p"])
            ep_return[done] = 0.0

        # bootstrap value if not done, then generalised advantage estimation
        with torch.no_grad():
            next_value = agent.get_value(next_obs).reshape(1, -1)
            advantages = torch.zeros_like(rewards)
            lastgaelam = 0
            for t in reversed(range(cfg.num_steps)):
                if t == cfg.num_steps - 1:
                    nextnonterminal = 1.0 - next_done
                    nextvalues = next_value
                else:
                    nextnonterminal = 1.0 - dones[t + 1]
                    nextvalues = values[t + 1]
                delta = rewards[t] + cfg.gamma * nextvalues * nextnonterminal - values[t]
                advantages[t] = lastgaelam = delta + cfg.gamma * cfg.gae_lambda * nextnonterminal * lastgaelam
            returns = advantages + values

        b_obs = obs.reshape((-1, envs.obs_dim))
        b_masks = masks.reshape((-1, envs.n_actions))
        b_logprobs = logprobs.reshape(-1)
        b_actions = actions.reshape(-1)
        b_advantages = advantages.reshape(-1)
        b_returns = returns.reshape(-1)
        b_values = values.reshape(-1)

        b_inds = np.arange(batch_size)
        clipfracs = []
        for _epoch in range(cfg.update_epochs):
            np.random.shuffle(b_inds)
            for start in range(0, batch_size, minibatch_size):
                mb_inds = b_inds[start:start + minibatch_size]
                _, newlogprob, entropy, newvalue = agent.get_action_and_value(
                    b_obs[mb_inds], b_masks[mb_inds], b_actions[mb_inds])
                logratio = newlogprob - b_logprobs[mb_inds]
                ratio = logratio.exp()
                with torch.no_grad():
                    approx_kl = ((ratio - 1) - logratio).mean()
                    clipfracs += [((ratio - 1.0).abs() > cfg.clip_coef).float().mean().item()]

                mb_advantages = b_advantages[mb_inds]
                if cfg.norm_adv:
                    mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)

                pg_loss1 = -mb_advantages * ratio
                pg_loss2 = -mb_advantages * torch.clamp(ratio, 1 - cfg.clip_coef, 1 + cfg.clip_coef)
                pg_loss = torch.max(pg_loss1, pg_loss2).mean()

                newvalue = newvalue.view(-1)
                if cfg.clip_vloss:
                    v_loss_unclipped = (newvalue - b_returns[mb_inds]) ** 2
                    v_clipped = b_values[mb_inds] + torch.clamp(newvalue - b_values[mb_inds],
                                                                -cfg.clip_coef, cfg.clip_coef)
                    v_loss_clipped = (v_clipped - b_returns[mb_inds]) ** 2
                    v_loss = 0.5 * torch.max(v_loss_unclipped, v_loss_clipped).mean()
                else:
                    v_loss = 0.5 * ((newvalue - b_returns[mb_inds]) ** 2).mean()

                entropy_loss = entropy.mean()
                loss = pg_loss - cfg.ent_coef * entropy_loss + v_loss * cfg.vf_coef

                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), cfg.max_grad_norm)
                optimizer.step()

        rets = torch.cat(finished_returns)
        row = {
            "iteration": iteration,
            "global_step": iteration * batch_size,
            "episodes": int(rets.numel()),
            "mean_return": float(rets.mean()) if rets.numel() else float("nan"),
            "mean_calls": float(torch.cat(finished_calls).mean()) if rets.numel() else float("nan"),
            "mean_final_p": float(torch.cat(finished_p).mean()) if rets.numel() else float("nan"),
            "entropy": float(entropy_loss.detach()),
            "approx_kl": float(approx_kl),
            "clipfrac": float(np.mean(clipfracs)),
            "value_loss": float(v_loss.detach()),
            "policy_loss": float(pg_loss.detach()),
            "lr": optimizer.param_groups[0]["lr"],  # no timings: the log is a DVC-tracked output
        }
        if val_env is not None and (iteration % cfg.eval_every == 0 or iteration == num_iterations):
            val_returns[iteration] = _greedy_return(agent, val_env)
            snapshots[iteration] = {k: v.clone() for k, v in agent.state_dict().items()}
        if iteration == keep:
            snapshots[iteration] = {k: v.clone() for k, v in agent.state_dict().items()}
        history.append(row)
    return PPORun(agent, history, snapshots, val_returns, untrained_val)
