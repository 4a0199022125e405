"""The DER routing MDP over the cached tree: a batched torch environment plus a Gymnasium wrapper.

State s_t (``ppo.state``):
    query_answer             [emb(Q), emb(A_{t-1}), one-hot step, one-hot last expert]   (the proposal's)
    query_answer_confidence  [emb(Q), emb(A_{t-1}), conf(A_{t-1}), one-hot step, one-hot last expert]
    query                    [emb(Q), zeros, one-hot step, one-hot last expert]   (the ablation: no answer seen)
    confidence               [conf(A_{t-1}), one-hot step, one-hot last expert]   (no embeddings to memorise)
    confidence_task          [conf(A_{t-1}), one-hot answer type, one-hot step, one-hot last expert]
                             (what the query is, for one policy over several tasks, in a form too coarse to
                             memorise a query by; the request knows it: it picks the prompt)
with zeros for A at t = 0 and conf(A) the expert's own confidence features (arrays.CONF_FEATURES).

Actions, for N experts: 0..N-1 ask expert j for an answer of its own (at t = 0 the first answer; at
t = 1 an escalation: j answers afresh and its answer replaces the first), N..2N-1 ask expert j to
refine the last answer through the KTP (t = 1 only), 2N is STOP (t = 1 only). ``reward.actions:
ktp_only`` masks the escalations (the proposal's action set); an escalation to the expert that
answered first is masked (it would repeat its answer). After T_max = 2 calls the episode ends; the
final answer is the latest one.

Reward for calling expert a at step t (P the chosen quality signal, C the call's cost divided by the
priciest expert's mean call cost, or with ``reward.cost: params`` the expert's parameters in billions
/ 1000), ``per_step`` form:
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

from der_pipeline.config import ANSWER_TYPES, RewardConfig
from der_pipeline.router.arrays import TreeArrays, call_costs, cost_scale

T_MAX = 2  # expert calls per episode: the depth of the precomputed tree (N answers, N x N refinements)


def step_reward(cfg: RewardConfig, p_now: torch.Tensor, p_prev: torch.Tensor | None, cost: torch.Tensor,
                calls_made: int) -> torch.Tensor:
    """The proposal's per-step reward for one expert call (``calls_made`` counts this call)."""
    r = p_now - cfg.alpha * cost
    if p_prev is not None:
        r = r + cfg.beta * (p_now - p_prev)
    r = r + cfg.gamma * (p_now >= cfg.p0).float()
    if calls_made == T_MAX:
        r = r - cfg.gamma * (p_now < cfg.p0).float()
    return r


def terminal_reward(cfg: RewardConfig, p_final: torch.Tensor, cost_sum: torch.Tensor,
                    calls: torch.Tensor) -> torch.Tensor:
    r = p_final - cfg.alpha * cost_sum + cfg.gamma * (p_final >= cfg.p0).float()
    return r - cfg.gamma * ((calls == T_MAX) & (p_final < cfg.p0)).float()


STATES = ("query_answer", "query_answer_confidence", "query", "confidence", "confidence_task")


def obs_dim(state: str, emb_dim: int, n_conf: int, n: int) -> int:
    emb = 0 if state in ("confidence", "confidence_task") else 2 * emb_dim
    conf = n_conf if state in ("confidence", "query_answer_confidence", "confidence_task") else 0
    task = len(ANSWER_TYPES) if state == "confidence_task" else 0
    return emb + conf + task + 2 + n + 1


def build_obs(state: str, q_emb: torch.Tensor, ans_emb: torch.Tensor, conf: torch.Tensor, t: torch.Tensor,
              last: torch.Tensor, n: int, task: torch.Tensor | None = None) -> torch.Tensor:
    """The state (see the module docstring), batched; ``last`` = -1 before the first call; ``task``: the
    answer-type one-hot (arrays.task_features), read by ``confidence_task`` only."""
    step = torch.nn.functional.one_hot(t.clamp(max=1), 2).float()
    last_oh = torch.nn.functional.one_hot(torch.where(last < 0, n, last), n + 1).float()
    if state == "confidence":
        return torch.cat([conf, step, last_oh], dim=1)
    if state == "confidence_task":
        if task is None:
            raise ValueError("state confidence_task needs each query's answer type (TreeArrays.q_task)")
        return torch.cat([conf, task, step, last_oh], dim=1)
    if state == "query_answer_confidence":
        return torch.cat([q_emb, ans_emb, conf, step, last_oh], dim=1)
    if state == "query":
        ans_emb = torch.zeros_like(ans_emb)
    return torch.cat([q_emb, ans_emb, step, last_oh], dim=1)


def allowed_actions(t: torch.Tensor, last: torch.Tensor, n: int, ktp_only: bool) -> torch.Tensor:
    """[B, 2N + 1] True where an action is allowed: at t = 0 only a first answer; at t = 1 a refinement,
    STOP, or (unless ``ktp_only``) an escalation to another expert than the one that answered."""
    mask = torch.ones(len(t), 2 * n + 1, dtype=torch.bool)
    first = t == 0
    mask[first, n:] = False
    second = ~first
    if ktp_only:
        mask[second, :n] = False
    else:
        rows = torch.nonzero(second).squeeze(1)
        mask[rows, last[rows].clamp(min=0)] = False  # escalating to the same expert repeats its answer
    return mask


def path_actions(n: int, path: int) -> tuple[int, int]:
    """The two actions that take an episode down the flat path ``path`` (arrays.path_index numbers the
    paths): the first expert, then STOP (a single answer), N + j (j refines) or j (j answers afresh)."""
    if not 0 <= path < n + 2 * n * n:
        raise ValueError(f"path {path} is not one of the {n + 2 * n * n} paths of a tree of {n} experts")
    if path < n:
        return path, 2 * n
    first, second = divmod((path - n) % (n * n), n)
    return first, (n + second if path < n + n * n else second)


class TreeTensors:
    """The arrays as torch tensors, with the reward's P signal and normalised costs."""

    def __init__(self, arrays: TreeArrays, cfg: RewardConfig, scale: float | None = None):
        self.n = arrays.n_experts
        self.dim = arrays.q_emb.shape[1]
        self.scale = scale if scale is not None else cost_scale(arrays)
        q1, q2 = arrays.quality(cfg)
        t = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.float32)  # noqa: E731
        self.q_emb, self.a1_emb, self.a2_emb = t(arrays.q_emb), t(arrays.a1_emb), t(arrays.a2_emb)
        self.conf1 = t(arrays.conf1)
        self.q_task = None if arrays.q_task is None else t(arrays.q_task)
        self.p1, self.p2 = t(q1), t(q2)
        c1, c2 = call_costs(arrays, cfg.cost, self.scale)
        self.c1, self.c2 = t(c1), t(c2)
        self.n_queries = arrays.n_queries



class VectorTreeEnv:
    """``num_envs`` episodes at once over the cached tree; finished episodes restart on a new random query."""

    def __init__(self, arrays: TreeArrays, cfg: RewardConfig, num_envs: int, seed: int = 0,
                 scale: float | None = None, autoreset: bool = True, state: str = "query_answer"):
        if state not in STATES:
            raise ValueError(f"state must be one of {STATES}, got {state!r}")
        self.cfg = cfg
        self.state = state
        self.data = TreeTensors(arrays, cfg, scale)
        self.num_envs = num_envs
        self.autoreset = autoreset
        n = self.data.n
        self.n_actions = 2 * n + 1  # answer afresh 0..N-1, refine N..2N-1, STOP 2N
        self.stop = 2 * n
        self.gen = torch.Generator().manual_seed(seed)
        self.q = torch.zeros(num_envs, dtype=torch.long)
        self.t = torch.zeros(num_envs, dtype=torch.long)
        self.last = torch.full((num_envs,), -1, dtype=torch.long)
        self.cost_sum = torch.zeros(num_envs)

    @property
    def obs_dim(self) -> int:
        return obs_dim(self.state, self.data.dim, self.data.conf1.shape[-1], self.data.n)

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
        conf = torch.zeros(self.num_envs, d.conf1.shape[-1])
        ans[at1] = d.a1_emb[self.q[at1], last[at1]]
        conf[at1] = d.conf1[self.q[at1], last[at1]]
        task = None if d.q_task is None else d.q_task[self.q]
        return build_obs(self.state, d.q_emb[self.q], ans, conf, self.t, self.last, d.n, task)

    def action_mask(self) -> torch.Tensor:
        return allowed_actions(self.t, self.last, self.data.n, self.cfg.actions == "ktp_only")

    def step(self, actions: torch.Tensor):
        """Returns obs, mask, reward, done, info (info: per finished episode, its calls, quality and return parts)."""
        d, cfg = self.data, self.cfg
        mask = self.action_mask()
        if not bool(mask.gather(1, actions[:, None]).all()):
            raise ValueError("an action was taken that the mask forbids")
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
            fresh = a < d.n
            j = torch.where(fresh, a, a - d.n)
            p = torch.where(fresh, d.p1[q, j], d.p2[q, prev, j])
            c = torch.where(fresh, d.c1[q, j], d.c2[q, prev, j])
            p_prev = d.p1[q, prev]
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
