"""Every routing method behind one interface (after RouteLLM's router registry).

A method is fitted on the train split and then, for each test query, gives a
probability distribution over the tree's N + N*N paths (one-hot for the
deterministic ones; the random router's is exact, not sampled). Evaluation then
reads any quantity of the chosen paths from the cached tree.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch

from der_pipeline.config import Params
from der_pipeline.router.arrays import TreeArrays, cost_scale
from der_pipeline.router.env import VectorTreeEnv


def path_index(n: int, first: int, second: int | None = None) -> int:
    return first if second is None else n + first * n + second


class Router(ABC):
    name: str = ""
    bound: bool = False  # an upper bound that uses the reference (the oracle), not a real router

    def fit(self, train: TreeArrays, p: Params) -> "Router":
        return self

    @abstractmethod
    def route(self, test: TreeArrays) -> np.ndarray:
        """[Q, N + N*N] probabilities over paths."""


class FixedPath(Router):
    def __init__(self, name: str, experts: list[str], path: list[str]):
        self.name = name
        self.idx = path_index(len(experts), *[experts.index(e) for e in path])

    def route(self, test: TreeArrays) -> np.ndarray:
        w = np.zeros((test.n_queries, test.n_experts * (test.n_experts + 1)))
        w[:, self.idx] = 1.0
        return w


class SelfCorrectionBest(Router):
    """The expert whose self-refinement (i, i) scores best on the train split."""

    name = "self-correction (best on train)"

    def fit(self, train: TreeArrays, p: Params) -> "SelfCorrectionBest":
        diag = np.einsum("qii->qi", train.task2).mean(axis=0)
        self.expert = int(np.argmax(diag))
        self.chosen = train.experts[self.expert]
        return self

    def route(self, test: TreeArrays) -> np.ndarray:
        n = test.n_experts
        w = np.zeros((test.n_queries, n * (n + 1)))
        w[:, path_index(n, self.expert, self.expert)] = 1.0
        return w


class RandomRouter(Router):
    """Uniform over allowed actions: an expert at t = 0, then STOP or any expert. Exact expectation."""

    name = "random"

    def route(self, test: TreeArrays) -> np.ndarray:
        n = test.n_experts
        w = np.zeros((test.n_queries, n * (n + 1)))
        for i in range(n):
            w[:, i] = 1.0 / n * 1.0 / (n + 1)
            for j in range(n):
                w[:, path_index(n, i, j)] = 1.0 / n * 1.0 / (n + 1)
        return w


class Oracle(Router):
    """The cheapest path reaching the best task quality in the tree: an upper bound that peeks at the reference."""

    name = "oracle (upper bound)"
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

    @abstractmethod
    def predict(self, test: TreeArrays) -> np.ndarray:
        """[Q, N] predicted quality of each expert's answer."""

    def _fit_price(self, train: TreeArrays, p: Params, alpha: float | None) -> None:
        self.alpha_used = p.reward.alpha if alpha is None else alpha
        self.cost = train.cost1.mean(axis=0) / cost_scale(train)

    def route(self, test: TreeArrays, alpha: float | None = None) -> np.ndarray:
        a = self.alpha_used if alpha is None else alpha
        choice = np.argmax(self.predict(test) - a * self.cost[None, :], axis=1)
        n = test.n_experts
        w = np.zeros((test.n_queries, n * (n + 1)))
        w[np.arange(test.n_queries), choice] = 1.0
        return w


class KNNRouter(PredictedQualityRouter):
    """RouteLLM-style supervised router: the mean quality of each expert over the k nearest train
    queries (cosine similarity of query embeddings). Deterministic."""

    def __init__(self, alpha: float | None = None):
        self.alpha = alpha
        self.name = "supervised router (kNN)" if alpha is None else f"supervised router (kNN, alpha={alpha:g})"

    def fit(self, train: TreeArrays, p: Params) -> "KNNRouter":
        self._fit_price(train, p, self.alpha)
        self.k = min(p.evaluate.knn_k, train.n_queries)
        self.train_emb = train.q_emb / np.linalg.norm(train.q_emb, axis=1, keepdims=True).clip(1e-9)
        self.train_q = train.quality(p.reward)[0]
        return self

    def predict(self, test: TreeArrays) -> np.ndarray:
        emb = test.q_emb / np.linalg.norm(test.q_emb, axis=1, keepdims=True).clip(1e-9)
        sims = emb @ self.train_emb.T
        nn_idx = np.argsort(-sims, axis=1, kind="stable")[:, : self.k]
        return self.train_q[nn_idx].mean(axis=1)  # [Q, N]


class MLPRouter(PredictedQualityRouter):
    """A seeded supervised router (in the manner of RouteLLM's classifier routers): a small MLP on the
    query embedding predicts every expert's quality (sigmoid, cross-entropy on the train split's P signal)."""

    def __init__(self, alpha: float | None = None, seed: int = 1):
        self.alpha, self.seed = alpha, seed
        self.name = "supervised router (MLP)" if alpha is None else f"supervised router (MLP, alpha={alpha:g})"

    def fit(self, train: TreeArrays, p: Params) -> "MLPRouter":
        self._fit_price(train, p, self.alpha)
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

    def predict(self, test: TreeArrays) -> np.ndarray:
        with torch.no_grad():
            return torch.sigmoid(self.net(torch.as_tensor(test.q_emb, dtype=torch.float32))).numpy()


class PolicyRouter(Router):
    """A trained DER policy, greedy: runs the MDP on every test query once."""

    def __init__(self, agent, scale: float, name: str = "DER (agent)", state: str = "query_answer"):
        self.agent, self.scale, self.name, self.state = agent, scale, name, state

    def route(self, test: TreeArrays) -> np.ndarray:
        paths = greedy_paths(self.agent, test, self.scale, self.state)
        n = test.n_experts
        w = np.zeros((test.n_queries, n * (n + 1)))
        w[np.arange(test.n_queries), paths] = 1.0
        return w


def greedy_paths(agent, arrays: TreeArrays, scale: float, state: str = "query_answer") -> np.ndarray:
    """The flat path index each query ends on under the greedy policy."""
    from der_pipeline.config import RewardConfig

    env = VectorTreeEnv(arrays, RewardConfig(), num_envs=arrays.n_queries, scale=scale, autoreset=False,
                        state=state)
    obs, mask = env.reset(torch.arange(arrays.n_queries))
    first = agent.greedy(obs, mask)
    obs, mask, _, _, _ = env.step(first)
    second = agent.greedy(obs, mask)
    n = arrays.n_experts
    stop = second == n
    flat = torch.where(stop, first, n + first * n + second.clamp(max=n - 1))
    return flat.numpy()


def baseline_routers(p: Params) -> list[Router]:
    names = p.expert_names()
    routers: list[Router] = [FixedPath(f"single: {e}", names, [e]) for e in names]
    rr = p.evaluate.round_robin_order
    routers.append(FixedPath(f"round-robin ({' > '.join(rr)})", names, rr))
    routers += [FixedPath(f"self-correction: {e}", names, [e, e]) for e in names]
    routers += [SelfCorrectionBest(), RandomRouter(), KNNRouter(), Oracle()]
    return routers


REGISTRY: dict[str, type[Router]] = {
    "random": RandomRouter, "oracle": Oracle, "knn": KNNRouter, "mlp": MLPRouter,
    "self-correction-best": SelfCorrectionBest,
}
