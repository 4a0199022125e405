"""Every routing method behind one interface (after RouteLLM's router registry).

A method is fitted on the train split and then, for each test query, gives a
probability distribution over the tree's N + 2·N² paths (arrays.py numbers them; one-hot for the
deterministic ones; the random router's is exact, not sampled). Evaluation then
reads any quantity of the chosen paths from the cached tree. Each router has a
stable ``id`` (evaluate/names.py lists them and gives their display names); router/registry.py builds
them by id.

A router that needs nothing but what a live request has (the query's embedding, the last answer's
confidence) also routes live, one decision at a time (``act``), so `serve` can serve it by its id.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from der_pipeline.config import Params, RewardConfig
from der_pipeline.router.arrays import CONF_FEATURES, TreeArrays, cost_scale, path_index, yes_margin
from der_pipeline.router.env import VectorTreeEnv, path_actions


@dataclass
class LiveState:
    """What a live router knows before each decision on one query: the step ``t`` (0: no answer yet), the
    last expert's index (-1 before the first call), the query's embedding and the last answer's confidence
    features (CONF_FEATURES). Actions: i < N asks expert i (afresh after a first answer), N + i has expert
    i refine the last answer (the KTP), 2N is STOP."""

    t: int
    last: int
    n: int
    q_emb: np.ndarray | None
    conf: np.ndarray


def one_hot_paths(test: TreeArrays, idx) -> np.ndarray:
    """[Q, paths] weights putting all mass on path ``idx`` (one int, or one per query)."""
    w = np.zeros((test.n_queries, test.n_paths))
    w[np.arange(test.n_queries), idx] = 1.0
    return w


class Router(ABC):
    id: str = ""
    bound: bool = False  # an upper bound that uses the reference (the oracle), not a real router
    live: bool = False  # routes live (``act``): `serve` can serve it by its id
    needs_query_embedding: bool = False  # ``act`` reads LiveState.q_emb

    def fit(self, train: TreeArrays, p: Params) -> Router:
        return self

    @abstractmethod
    def route(self, test: TreeArrays) -> np.ndarray:
        """[Q, N + 2·N²] probabilities over paths."""

    def act(self, state: LiveState) -> int:
        """The action to take in ``state`` (LiveState's numbering); a router that is not ``live`` has none."""
        raise NotImplementedError(f"router {self.id!r} cannot route live")


class PathRouter(Router):
    """A router that sends every query down one flat path ``idx`` (set by its constructor or its fit)."""

    idx: int
    live = True

    def route(self, test: TreeArrays) -> np.ndarray:
        return one_hot_paths(test, self.idx)

    def act(self, state: LiveState) -> int:
        first, second = path_actions(state.n, self.idx)
        return first if state.t == 0 else second


class FixedPath(PathRouter):
    """Always the same path: one expert, one refining another (KTP), or with ``fresh`` one answering afresh."""

    def __init__(self, method_id: str, experts: list[str], path: list[str], fresh: bool = False):
        self.id = method_id
        self.idx = path_index(len(experts), *[experts.index(e) for e in path], fresh=fresh)


class SelfCorrectionBest(PathRouter):
    """The expert whose self-refinement (i, i) scores best on the train split."""

    id = "self_correction_best"

    def fit(self, train: TreeArrays, p: Params) -> SelfCorrectionBest:
        diag = np.einsum("qii->qi", train.task2).mean(axis=0)
        self.expert = int(np.argmax(diag))
        self.idx = path_index(train.n_experts, self.expert, self.expert)
        self.chosen = train.experts[self.expert]
        return self


class RandomRouter(Router):
    """Uniform over the allowed actions of the MDP (reward.actions): an expert at t = 0, then STOP, any
    refinement, or (unless ktp_only) an escalation to another expert. Exact expectation."""

    id = "random"
    fresh = True

    def fit(self, train: TreeArrays, p: Params) -> RandomRouter:
        self.fresh = p.reward.actions != "ktp_only"
        return self

    def route(self, test: TreeArrays) -> np.ndarray:
        n = test.n_experts
        second = 1 + n + (n - 1 if self.fresh else 0)  # STOP, refinements, escalations
        w = np.zeros((test.n_queries, test.n_paths))
        for i in range(n):
            w[:, i] = 1.0 / n / second
            for j in range(n):
                w[:, path_index(n, i, j)] = 1.0 / n / second
                if self.fresh and j != i:
                    w[:, path_index(n, i, j, fresh=True)] = 1.0 / n / second
        return w


class Oracle(Router):
    """The cheapest path reaching the best task quality in the tree: an upper bound that peeks at the reference."""

    id = "oracle"
    bound = True

    def route(self, test: TreeArrays) -> np.ndarray:
        quality, cost = test.path_matrix("task"), test.path_matrix("cost")
        w = np.zeros_like(quality)
        for q in range(test.n_queries):
            best = np.flatnonzero(quality[q] >= quality[q].max() - 1e-9)
            w[q, best[np.argmin(cost[q, best])]] = 1.0
        return w


class PredictedQualityRouter(Router):
    """A one-call router that predicts each expert's quality for a query and picks
    argmax(predicted quality - alpha * the expert's normalised mean cost); ``alpha`` is its willingness
    to pay (the reward's alpha unless given)."""

    alpha_used: float
    cost: np.ndarray

    def _fit_price(self, train: TreeArrays, p: Params, alpha: float | None) -> None:
        self.alpha_used = p.reward.alpha if alpha is None else alpha
        self.cost = train.cost1.mean(axis=0) / cost_scale(train)

    live = True
    needs_query_embedding = True

    def predict(self, test: TreeArrays) -> np.ndarray:
        """[Q, N] predicted quality of each expert's answer."""
        return self.predict_embeddings(test.q_emb)

    @abstractmethod
    def predict_embeddings(self, q_emb: np.ndarray) -> np.ndarray:
        """[Q, N] predicted quality of each expert's answer to the queries of these embeddings."""

    def route(self, test: TreeArrays, alpha: float | None = None) -> np.ndarray:
        a = self.alpha_used if alpha is None else alpha
        return one_hot_paths(test, np.argmax(self.predict(test) - a * self.cost[None, :], axis=1))

    def act(self, state: LiveState) -> int:
        if state.t > 0:
            return 2 * state.n  # one call, then STOP
        pred = self.predict_embeddings(np.asarray(state.q_emb, dtype=np.float32)[None])[0]
        return int(np.argmax(pred - self.alpha_used * self.cost))


class KNNRouter(PredictedQualityRouter):
    """RouteLLM-style supervised router: the mean quality of each expert over the k nearest train
    queries (cosine similarity of query embeddings). Deterministic."""

    def __init__(self, alpha: float | None = None):
        self.alpha = alpha
        self.id = "knn"

    def fit(self, train: TreeArrays, p: Params) -> KNNRouter:
        self._fit_price(train, p, self.alpha)
        self.k = min(p.evaluate.knn_k, train.n_queries)
        self.train_emb = train.q_emb / np.linalg.norm(train.q_emb, axis=1, keepdims=True).clip(1e-9)
        self.train_q = train.quality(p.reward)[0]
        return self

    def predict_embeddings(self, q_emb: np.ndarray) -> np.ndarray:
        emb = q_emb / np.linalg.norm(q_emb, axis=1, keepdims=True).clip(1e-9)
        sims = emb @ self.train_emb.T
        nn_idx = np.argsort(-sims, axis=1, kind="stable")[:, : self.k]
        return self.train_q[nn_idx].mean(axis=1)  # [Q, N]


class MLPRouter(PredictedQualityRouter):
    """A seeded supervised router (in the manner of RouteLLM's classifier routers): a small MLP on the
    query embedding predicts every expert's quality (sigmoid, cross-entropy on the train split's P signal)."""

    def __init__(self, alpha: float | None = None, seed: int = 1):
        self.alpha, self.seed = alpha, seed
        self.id = "mlp"

    def fit(self, train: TreeArrays, p: Params) -> MLPRouter:
        self._fit_price(train, p, self.alpha)
        with one_thread():
            torch.manual_seed(self.seed)
            x = torch.as_tensor(train.q_emb, dtype=torch.float32)
            y = torch.as_tensor(train.quality(p.reward)[0], dtype=torch.float32).clamp(0, 1)
            self.net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 64), torch.nn.ReLU(),
                                           torch.nn.Linear(64, train.n_experts))
            opt = torch.optim.Adam(self.net.parameters(), lr=1e-3, weight_decay=1e-3)
            for _ in range(p.evaluate.mlp_epochs):
                loss = torch.nn.functional.binary_cross_entropy_with_logits(self.net(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
        return self

    def predict_embeddings(self, q_emb: np.ndarray) -> np.ndarray:
        with one_thread(), torch.no_grad():
            return torch.sigmoid(self.net(torch.as_tensor(q_emb, dtype=torch.float32))).numpy()


@contextmanager
def one_thread():
    """torch on one thread inside, as before outside: how a reduction is split over threads changes its
    rounding, so a fit that must reproduce everywhere runs on one (der_pipeline/__init__.py has the other half)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def allowed_paths(n: int, ktp_only: bool) -> np.ndarray:
    """[N + 2·N²] True for the paths the MDP can take: every single answer and refinement, and (unless
    ``ktp_only``) every escalation to another expert."""
    ok = np.ones(n + 2 * n * n, dtype=bool)
    fresh = ok[n + n * n:].reshape(n, n)
    fresh[:] = not ktp_only
    np.fill_diagonal(fresh, False)
    return ok


def best_fixed_index(train: TreeArrays, alpha: float, ktp_only: bool, singles_only: bool = False) -> int:
    """The flat index of the path with the highest mean task score minus alpha times its normalised cost
    on ``train`` (the MDP's paths, ``allowed_paths``; only the single answers with ``singles_only``)."""
    cost = train.path_matrix("cost").mean(axis=0) / cost_scale(train)
    utility = train.path_matrix("task").mean(axis=0) - alpha * cost
    utility[~allowed_paths(train.n_experts, ktp_only)] = -np.inf
    if singles_only:
        utility[train.n_experts:] = -np.inf
    return int(np.argmax(utility))


class BestFixedPath(PathRouter):
    """The best constant policy: the one path (of the MDP's, see ``allowed_paths``) with the highest
    train-split task score minus alpha times its normalised cost. An RL agent that loses to it has
    learned nothing about individual queries."""

    id = "best_fixed"

    def __init__(self, alpha: float | None = None, singles_only: bool = False):
        self.alpha = alpha
        self.singles_only = singles_only  # the best fixed *expert* (the cross-task "task-aware" baseline)
        if singles_only:
            self.id = "task_aware"

    def fit(self, train: TreeArrays, p: Params) -> BestFixedPath:
        a = p.reward.alpha if self.alpha is None else self.alpha
        self.idx = best_fixed_index(train, a, p.reward.actions == "ktp_only", self.singles_only)
        self.chosen = train.path_names()[self.idx]
        return self


def _feature(name: str):
    i = CONF_FEATURES.index(name)
    return lambda c: c[..., i]


# a cascade's signals, read from the confidence features (CONF_FEATURES) by name
CASCADE_SIGNALS = {"yes_margin": lambda c: yes_margin(c[..., CONF_FEATURES.index("yes_prob")]),
                   "first_prob": _feature("first_prob"), "mean_prob": _feature("mean_prob"),
                   "min_prob": _feature("min_prob")}


def cascade_outcome(arrays: TreeArrays, cheap: int, strong: int, escalate: np.ndarray) -> tuple[float, float]:
    """Mean task score and mean cost (GFLOPs) when expert ``cheap`` answers every query and the queries in
    ``escalate`` (a boolean mask) are also asked of ``strong`` afresh, whose answer is final."""
    score = np.where(escalate, arrays.task1[:, strong], arrays.task1[:, cheap]).mean()
    cost = np.where(escalate, arrays.cost1[:, cheap] + arrays.cost1[:, strong], arrays.cost1[:, cheap]).mean()
    return float(score), float(cost)


def cascade_bound(train: TreeArrays, cost_share: float) -> dict:
    """How far one confidence signal can take a router towards the strongest expert (on ``train``) at no more
    than ``cost_share`` of its mean cost: the best-scoring cascade over every cheaper first expert, every
    signal of CASCADE_SIGNALS and every threshold (each distinct value; none escalated included), within
    the budget. Fitted and scored on the same queries, so it is optimistic: where even it falls short of
    the strongest expert's score, the signals, not the learner, are what is lacking."""
    strong = int(np.argmax(train.task1.mean(axis=0)))
    strong_score, strong_cost = float(train.task1[:, strong].mean()), float(train.cost1[:, strong].mean())
    best = None
    for i in range(train.n_experts):
        if train.cost1[:, i].mean() >= strong_cost:
            continue
        for name, signal in CASCADE_SIGNALS.items():
            conf = signal(train.conf1[:, i])
            for tau in np.unique(conf):  # escalate the queries whose confidence is under tau
                esc = conf < tau
                score, cost = cascade_outcome(train, i, strong, esc)
                if cost <= cost_share * strong_cost and (best is None or score > best["score"] + 1e-12):
                    best = {"first": train.experts[i], "signal": name, "escalated_share": round(float(esc.mean()), 4),
                            "score": round(score, 4), "cost_share": round(cost / strong_cost, 4)}
    return {"strong": train.experts[strong], "strong_score": round(strong_score, 4), "budget_share": cost_share,
            "best": best}


def escalations(train: TreeArrays, thresholds, directions: tuple[str, ...] = ("below",)):
    """Every escalation rule a cascade can be fitted over, in one order: a cheaper expert i first, a pricier j
    answering afresh, a signal of CASCADE_SIGNALS on i's answer, a direction and a threshold from
    ``thresholds(signal values)``; yields (i, j, signal name, direction, threshold, the train queries
    escalated). ``below``: escalate where the signal is under the threshold (unsure); ``above``: over it."""
    n = train.n_experts
    mean_cost = train.cost1.mean(axis=0)
    for i in range(n):
        for j in range(n):
            if mean_cost[j] <= mean_cost[i]:
                continue
            for name, signal in CASCADE_SIGNALS.items():
                conf = signal(train.conf1[:, i])
                for tau in thresholds(conf):
                    for direction in directions:
                        yield i, j, name, direction, float(tau), (conf < tau if direction == "below" else conf > tau)


def _quantile_thresholds(conf: np.ndarray) -> list[float]:
    """The alpha-fitted cascade's thresholds: 20 quantiles of the signal, and one that escalates every query."""
    return [*np.unique(np.quantile(conf, np.linspace(0.05, 1.0, 20))), np.inf]


class ConfidenceCascade(Router):
    """A confidence cascade in the manner of FrugalGPT and AutoMix: a cheaper expert answers; when its own
    confidence is under a threshold, a pricier expert answers afresh (an escalation path). The pair, the
    confidence signal (CASCADE_SIGNALS) and the threshold are fitted on the train split to maximise the task
    score minus alpha times the normalised cost; the single experts are candidates too (never escalate)."""

    id = "cascade"
    live = True

    def __init__(self, alpha: float | None = None):
        self.alpha = alpha

    def fit(self, train: TreeArrays, p: Params) -> ConfidenceCascade:
        a = p.reward.alpha if self.alpha is None else self.alpha
        scale = cost_scale(train)
        best = (-np.inf, None)
        for i in range(train.n_experts):  # never escalate: expert i alone
            u = train.task1[:, i].mean() - a * train.cost1[:, i].mean() / scale
            best = max(best, (u, (i, None, None, None)), key=lambda x: x[0])
        for i, j, name, _, tau, esc in escalations(train, _quantile_thresholds):
            score, cost = cascade_outcome(train, i, j, esc)
            u = score - a * cost / scale
            if u > best[0] + 1e-12:
                best = (u, (i, j, name, tau))
        self.cheap, self.strong, self.signal, self.threshold = best[1]
        self.chosen = {"first": train.experts[self.cheap],
                       "then": None if self.strong is None else train.experts[self.strong],
                       "signal": self.signal, "threshold": self.threshold}
        return self

    def route(self, test: TreeArrays) -> np.ndarray:
        n = test.n_experts
        if self.strong is None:
            return one_hot_paths(test, self.cheap)
        esc = CASCADE_SIGNALS[self.signal](test.conf1[:, self.cheap]) < self.threshold
        idx = np.where(esc, path_index(n, self.cheap, self.strong, fresh=True), self.cheap)
        return one_hot_paths(test, idx)

    def act(self, state: LiveState) -> int:
        if state.t == 0:
            return self.cheap
        if self.strong is None or not CASCADE_SIGNALS[self.signal](np.asarray(state.conf)) < self.threshold:
            return 2 * state.n  # confident enough: STOP
        return self.strong  # escalate: the stronger expert answers afresh


def cascade_at_budget(train: TreeArrays, budget_gflops: float, directions: tuple[str, ...] = ("below",)) -> dict:
    """The confidence cascade fitted to a budget instead of an alpha: the highest train-split score whose mean
    cost is at most ``budget_gflops``, over every pair (cheap first, pricier afresh), signal, direction and
    threshold (each distinct value), the single experts included; among equal scores the one that spends
    more. ``directions``: escalate when the signal is ``below`` a threshold (the usual reading: unsure), or
    ``above`` it too (a signal the cheap expert reads backwards: on SST-2 the specialist is least confident
    exactly where it is right and the strong expert wrong)."""
    n = train.n_experts
    mean_cost = train.cost1.mean(axis=0)
    best = None

    def consider(score: float, cost: float, choice: dict) -> None:
        nonlocal best
        if cost <= budget_gflops + 1e-9 and (best is None or (score, cost) > (best["score"], best["cost_gflops"])):
            best = {**choice, "score": score, "cost_gflops": cost}

    for i in range(n):
        consider(float(train.task1[:, i].mean()), float(mean_cost[i]), {"cheap": i, "strong": None})
    for i, j, name, direction, tau, esc in escalations(train, np.unique, directions):
        score, cost = cascade_outcome(train, i, j, esc)
        consider(score, cost, {"cheap": i, "strong": j, "signal": name, "direction": direction, "threshold": tau})
    return best


class BudgetCascade(Router):
    """The confidence cascade at a budget (``cascade_at_budget``), fitted on the train split."""

    id = "cascade_budget"
    live = True

    def __init__(self, budget_gflops: float, directions: tuple[str, ...] = ("below", "above")):
        self.budget_gflops, self.directions = budget_gflops, tuple(directions)

    def fit(self, train: TreeArrays, p: Params) -> BudgetCascade:
        self.choice = cascade_at_budget(train, self.budget_gflops, self.directions)
        c = self.choice
        self.chosen = {"first": train.experts[c["cheap"]],
                       "then": None if c["strong"] is None else train.experts[c["strong"]],
                       **{k: c.get(k) for k in ("signal", "direction", "threshold")}}
        return self

    def _escalate(self, conf: np.ndarray) -> np.ndarray:
        c = self.choice
        value = CASCADE_SIGNALS[c["signal"]](conf)
        return value < c["threshold"] if c["direction"] == "below" else value > c["threshold"]

    def route(self, test: TreeArrays) -> np.ndarray:
        c = self.choice
        if c["strong"] is None:
            return one_hot_paths(test, c["cheap"])
        esc = self._escalate(test.conf1[:, c["cheap"]])
        return one_hot_paths(test, np.where(esc, path_index(test.n_experts, c["cheap"], c["strong"], fresh=True),
                                            c["cheap"]))

    def act(self, state: LiveState) -> int:
        c = self.choice
        if state.t == 0:
            return c["cheap"]
        if c["strong"] is None or not bool(self._escalate(np.asarray(state.conf))):
            return 2 * state.n
        return c["strong"]


class RandomMix(Router):
    """A cheap expert and the reference mixed at random to spend the budget: each query goes to the reference
    alone with the probability that makes the expected cost the budget, else to the cheap expert alone
    (an exact expectation, like RandomRouter). The cheap expert is the one whose mix scores best on the train
    split: the baseline every budgeted router must beat, since it uses nothing about the query."""

    id = "random_mix"

    def __init__(self, reference: int, budget_gflops: float):
        self.reference, self.budget_gflops = reference, budget_gflops

    def fit(self, train: TreeArrays, p: Params) -> RandomMix:
        cost, score = train.cost1.mean(axis=0), train.task1.mean(axis=0)
        best = None
        for i in range(train.n_experts):
            if i == self.reference:
                continue
            q = _mix_share(cost[i], cost[self.reference], self.budget_gflops)
            value = q * score[self.reference] + (1 - q) * score[i]
            if best is None or value > best[0]:
                best = (value, i, q)
        _, self.cheap, self.share = best
        self.chosen = {"cheap": train.experts[self.cheap], "reference": train.experts[self.reference],
                       "reference_share": round(self.share, 4)}
        return self

    def route(self, test: TreeArrays) -> np.ndarray:
        w = np.zeros((test.n_queries, test.n_paths))
        w[:, self.reference] = self.share
        w[:, self.cheap] += 1 - self.share
        return w


def _mix_share(cheap_cost: float, ref_cost: float, budget: float) -> float:
    """The share of queries sent to the reference so the mix's expected cost is the budget (at most 1)."""
    if ref_cost <= cheap_cost:
        return 1.0
    return float(np.clip((budget - cheap_cost) / (ref_cost - cheap_cost), 0.0, 1.0))


class PolicyRouter(Router):
    """A trained DER policy, greedy: runs the MDP on every test query once. ``out_of_fold``: its train
    split's cross-validated operating point (score, cost_gflops, two_calls), where it was cross-validated."""

    def __init__(self, agent, scale: float, reward: RewardConfig, method_id: str = "der", state: str = "query_answer",
                 out_of_fold: dict | None = None):
        self.agent, self.scale, self.reward, self.id, self.state = agent, scale, reward, method_id, state
        self.out_of_fold = out_of_fold

    def route(self, test: TreeArrays) -> np.ndarray:
        return one_hot_paths(test, greedy_paths(self.agent, test, self.scale, self.reward, self.state))


def greedy_paths(agent, arrays: TreeArrays, scale: float, reward: RewardConfig,
                 state: str = "query_answer") -> np.ndarray:
    """The flat path index each query ends on under the greedy policy (the env of ``reward``: its action set)."""
    env = VectorTreeEnv(arrays, reward, num_envs=arrays.n_queries, scale=scale, autoreset=False, state=state)
    obs, mask = env.reset(torch.arange(arrays.n_queries))
    first = agent.greedy(obs, mask)
    obs, mask, _, _, _ = env.step(first)
    second = agent.greedy(obs, mask)
    n = arrays.n_experts
    stop = second == env.stop
    fresh = second < n
    refine = n + first * n + (second - n).clamp(min=0)
    escalate = n + n * n + first * n + second.clamp(max=n - 1)
    return torch.where(stop, first, torch.where(fresh, escalate, refine)).numpy()
