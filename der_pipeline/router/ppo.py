"""PPO for the router, written out in the manner of cleanrl's ppo.py (every step of the algorithm visible).

Actor: softmax over N experts + STOP with masked logits. Critic: a value head.
Rollouts of ``num_envs`` x ``num_steps`` from the batched tree environment, GAE,
clipped surrogate, clipped value loss, entropy bonus, gradient clipping,
minibatch epochs, linear learning-rate annealing, seeded (``ppo.rollout: sampled``).
With ``ppo.rollout: all_actions`` the batch is instead every state of the train queries with every
action's exact advantage, read off the tree (``_run_all_actions_ppo``): the same clipped surrogate,
taken in expectation over the actions.

This file holds the algorithm alone; which iteration is kept, the fold ensemble and the fallback to the
best fixed path are model selection (router/selection.py). The deviations from cleanrl are numbered in
the router's docs page.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from torch.distributions.categorical import Categorical

from der_pipeline.config import PPOConfig, RewardConfig
from der_pipeline.router.arrays import TreeArrays
from der_pipeline.router.env import T_MAX, VectorTreeEnv

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


def run_ppo(arrays: TreeArrays, reward: RewardConfig, cfg: PPOConfig, seed: int, scale: float,
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
    gradient too noisy to find when to escalate, where escalating gains little utility per query: every
    fold's policy was a constant path (benchmarks/goal_alpha.py; figures in the research log).

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
