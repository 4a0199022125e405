"""The DER routing MDP over the cached tree: a batched torch environment plus a Gymnasium wrapper.

State s_t = [emb(Q), emb(A_{t-1}) (zeros at t = 0), one-hot step, one-hot last expert (or none)];
the ``query`` state ablation keeps emb(A_{t-1}) at zeros throughout.
Actions 0..N-1 call an expert (it answers at t = 0, refines the last answer
through the KTP at t = 1); action N is STOP, masked at t = 0. After T_max = 2
calls the episode ends; the final answer is the latest one.

Reward for calling expert a at step t (P the chosen quality signal, C the
call's cost divided by the priciest expert's mean call cost, or with
``reward.cost: params`` the expert's parameters in billions / 1000), ``per_step`` form:
    t = 0:  R = P(y_0) - alpha*C
    t > 0:  R = P(y_t) + beta*(P(y_t) - P(y_{t-1})) - alpha*C
    then +gamma if P(y_t) >= p0, and -gamma if this is call number T_max and P(y_t) < p0.
STOP earns 0. The ``terminal`` form pays only when the episode ends:
    R = P(final) - alpha*sum(C) + gamma*[P(final) >= p0] - gamma*[T_max calls made and P(final) < p0].
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from der_pipeline.config import RewardConfig
from der_pipeline.router.arrays import TreeArrays, call_costs, cost_scale


def step_reward(cfg: RewardConfig, p_now: torch.Tensor, p_prev: torch.Tensor | None, cost: torch.Tensor,
                calls_made: int) -> torch.Tensor:
    """The proposal's per-step reward for one expert call (``calls_made`` counts this call)."""
    r = p_now - cfg.alpha * cost
    if p_prev is not None:
        r = r + cfg.beta * (p_now - p_prev)
    r = r + cfg.gamma * (p_now >= cfg.p0).float()
    if calls_made == cfg.t_max:
        r = r - cfg.gamma * (p_now < cfg.p0).float()
    return r


def terminal_reward(cfg: RewardConfig, p_final: torch.Tensor, cost_sum: torch.Tensor,
                    calls: torch.Tensor) -> torch.Tensor:
    r = p_final - cfg.alpha * cost_sum + cfg.gamma * (p_final >= cfg.p0).float()
    return r - cfg.gamma * ((calls == cfg.t_max) & (p_final < cfg.p0)).float()


def build_obs(q_emb: torch.Tensor, ans_emb: torch.Tensor, t: torch.Tensor, last: torch.Tensor, n: int) -> torch.Tensor:
    """The state [emb(Q), emb(A_{t-1}), one-hot step, one-hot last expert (index n = none)], batched."""
    step = torch.nn.functional.one_hot(t.clamp(max=1), 2).float()
    last_oh = torch.nn.functional.one_hot(torch.where(last < 0, n, last), n + 1).float()
    return torch.cat([q_emb, ans_emb, step, last_oh], dim=1)


class TreeTensors:
    """The arrays as torch tensors, with the reward's P signal and normalised costs."""

    def __init__(self, arrays: TreeArrays, cfg: RewardConfig, scale: float | None = None):
        self.n = arrays.n_experts
        self.dim = arrays.q_emb.shape[1]
        self.scale = scale if scale is not None else cost_scale(arrays)
        q1, q2 = arrays.quality(cfg)
        t = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.float32)  # noqa: E731
        self.q_emb, self.a1_emb, self.a2_emb = t(arrays.q_emb), t(arrays.a1_emb), t(arrays.a2_emb)
        self.p1, self.p2 = t(q1), t(q2)
        c1, c2 = call_costs(arrays, cfg.cost, self.scale)
        self.c1, self.c2 = t(c1), t(c2)
        self.n_queries = arrays.n_queries

    @property
    def obs_dim(self) -> int:
        return 2 * self.dim + 2 + self.n + 1


class VectorTreeEnv:
    """``num_envs`` episodes at once over the cached tree; finished episodes restart on a new random query."""

    def __init__(self, arrays: TreeArrays, cfg: RewardConfig, num_envs: int, seed: int = 0,
                 scale: float | None = None, autoreset: bool = True, state: str = "query_answer"):
        if state not in ("query_answer", "query"):
            raise ValueError(f"state must be query_answer or query, got {state!r}")
        self.cfg = cfg
        self.state = state
        self.data = TreeTensors(arrays, cfg, scale)
        self.num_envs = num_envs
        self.autoreset = autoreset
        self.n_actions = self.data.n + 1
        self.stop = self.data.n
        self.gen = torch.Generator().manual_seed(seed)
        self.q = torch.zeros(num_envs, dtype=torch.long)
        self.t = torch.zeros(num_envs, dtype=torch.long)
        self.last = torch.full((num_envs,), -1, dtype=torch.long)
        self.cost_sum = torch.zeros(num_envs)

    @property
    def obs_dim(self) -> int:
        return self.data.obs_dim

    def reset(self, queries: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if queries is None:
            queries = torch.randint(self.data.n_queries, (self.num_envs,), generator=self.gen)
        self.q = queries.clone()
        self.t.zero_()
        self.last.fill_(-1)
        self.cost_sum.zero_()
        return self.observe(), self.action_mask()

    def _reset_some(self, which: torch.Tensor) -> None:
        k = int(which.sum())
        if k:
            self.q[which] = torch.randint(self.data.n_queries, (k,), generator=self.gen)
            self.t[which] = 0
            self.last[which] = -1
            self.cost_sum[which] = 0.0

    def observe(self) -> torch.Tensor:
        d = self.data
        at1 = self.t >= 1
        last = self.last.clamp(min=0)
        ans = torch.zeros(self.num_envs, d.dim)
        if self.state == "query_answer":  # the "query" ablation hides the last answer (zeros)
            ans[at1] = d.a1_emb[self.q[at1], last[at1]]
        return build_obs(d.q_emb[self.q], ans, self.t, self.last, d.n)

    def action_mask(self) -> torch.Tensor:
        """True where an action is allowed: STOP never at t = 0."""
        mask = torch.ones(self.num_envs, self.n_actions, dtype=torch.bool)
        mask[self.t == 0, self.stop] = False
        return mask

    def step(self, actions: torch.Tensor):
        """Returns obs, mask, reward, done, info (info: per finished episode, its calls, quality and return parts)."""
        d, cfg = self.data, self.cfg
        mask = self.action_mask()
        if not bool(mask.gather(1, actions[:, None]).all()):
            raise ValueError("an action was taken that the mask forbids (STOP at t = 0)")
        reward = torch.zeros(self.num_envs)
        done = torch.zeros(self.num_envs, dtype=torch.bool)
        final_p = torch.zeros(self.num_envs)
        calls = torch.zeros(self.num_envs)
        terminal = cfg.form == "terminal"

        first = self.t == 0
        if first.any():
            q, a = self.q[first], actions[first]
            p, c = d.p1[q, a], d.c1[q, a]
            self.cost_sum[first] += c
            if not terminal:
                reward[first] = step_reward(cfg, p, None, c, calls_made=1)
            self.last[first] = a
        second = (self.t == 1) & (actions != self.stop)
        if second.any():
            q, a, prev = self.q[second], actions[second], self.last[second]
            p, p_prev, c = d.p2[q, prev, a], d.p1[q, prev], d.c2[q, prev, a]
            self.cost_sum[second] += c
            if terminal:
                reward[second] = terminal_reward(cfg, p, self.cost_sum[second], torch.full_like(p, 2.0))
            else:
                reward[second] = step_reward(cfg, p, p_prev, c, calls_made=2)
            done[second] = True
            final_p[second], calls[second] = p, 2.0
        stopped = (self.t == 1) & (actions == self.stop)
        if stopped.any():
            q, prev = self.q[stopped], self.last[stopped]
            p = d.p1[q, prev]
            if terminal:
                reward[stopped] = terminal_reward(cfg, p, self.cost_sum[stopped], torch.ones_like(p))
            done[stopped] = True
            final_p[stopped], calls[stopped] = p, 1.0
        info = {"final_p": final_p[done], "calls": calls[done], "cost": self.cost_sum[done].clone()}
        self.t = torch.where(done, self.t, self.t + 1)
        if self.autoreset:
            self._reset_some(done)
        return self.observe(), self.action_mask(), reward, done, info


class TreeEnv(gym.Env):
    """One episode at a time, Gymnasium API: ``info['action_mask']`` marks the allowed actions."""

    metadata = {"render_modes": []}

    def __init__(self, arrays: TreeArrays, cfg: RewardConfig, scale: float | None = None,
                 state: str = "query_answer"):
        super().__init__()
        self._env = VectorTreeEnv(arrays, cfg, num_envs=1, scale=scale, autoreset=False, state=state)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (self._env.obs_dim,), np.float32)
        self.action_space = gym.spaces.Discrete(self._env.n_actions)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._env.gen.manual_seed(seed)
        query = None if not options or "query" not in options else torch.tensor([int(options["query"])])
        obs, mask = self._env.reset(query)
        return obs[0].numpy(), {"action_mask": mask[0].numpy()}

    def step(self, action):
        obs, mask, reward, done, info = self._env.step(torch.tensor([int(action)]))
        out = {"action_mask": mask[0].numpy()}
        if bool(done[0]):
            out.update(final_p=float(info["final_p"][0]), calls=float(info["calls"][0]))
        return obs[0].numpy(), float(reward[0]), bool(done[0]), False, out
