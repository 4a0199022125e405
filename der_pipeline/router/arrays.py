"""The cached tree as dense arrays: what the environment, the baselines and evaluation look up.

For N experts, hop-1 values are [Q, N] (expert i answers) and hop-2 values are
[Q, N, N] (expert j refines expert i's answer through the KTP). Besides refining,
a second call can ask expert j to answer afresh (escalation): its hop-1 node,
already in the tree, after expert i's call. Paths are numbered flat:

    i                      expert i answers (one call)
    N + i*N + j            i answers, j refines it (KTP)
    N + N*N + i*N + j      i answers, j answers afresh (escalation; the final answer is j's)

``path_matrix`` gives every path's value in that order, so a routing method is a
distribution over the N + 2·N² paths. ``conf1`` holds the experts' own confidence
in their hop-1 answers (experts/confidence.py), as features in [0, 1]. ``sec1`` /
``sec2`` hold the secondary metrics (schemas.SECONDARY_METRICS, last axis), NaN
where the answer type has none: reported, never rewarded. Built from the stored tables by
router/dataset.py; this module holds the arrays alone.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from der_pipeline.config import ANSWER_TYPES, RewardConfig
from der_pipeline.schemas import SECONDARY_METRICS, join_path


@dataclass
class TreeArrays:
    qids: list[str]
    experts: list[str]
    q_emb: np.ndarray  # [Q, D]
    a1_emb: np.ndarray  # [Q, N, D]
    a2_emb: np.ndarray  # [Q, N, N, D]
    task1: np.ndarray  # [Q, N] task metric of the hop-1 answers
    task2: np.ndarray  # [Q, N, N]
    bert1: np.ndarray
    bert2: np.ndarray
    cost1: np.ndarray  # GFLOPs of the call
    cost2: np.ndarray
    lat1: np.ndarray  # seconds of the call
    lat2: np.ndarray
    conf1: np.ndarray  # [Q, N, F] confidence features of the hop-1 answers (CONF_FEATURES)
    sec1: np.ndarray  # [Q, N, K] secondary metrics (SECONDARY_METRICS) of the hop-1 answers; NaN: none
    sec2: np.ndarray  # [Q, N, N, K]
    params_b: tuple[float, ...] = ()  # each expert's parameters in billions (the `params` cost unit)
    q_task: np.ndarray | None = None  # [Q, len(ANSWER_TYPES)] one-hot of the query's answer type (its prompt)

    @property
    def n_paths(self) -> int:
        return self.n_experts + 2 * self.n_experts ** 2

    @property
    def n_queries(self) -> int:
        return len(self.qids)

    @property
    def n_experts(self) -> int:
        return len(self.experts)

    def subset(self, idx: np.ndarray | list[int]) -> TreeArrays:
        idx = np.asarray(idx, dtype=np.int64)
        fields = {k: v[idx] for k, v in self.__dict__.items() if isinstance(v, np.ndarray)}
        return replace(self, qids=[self.qids[i] for i in idx], **fields)

    def quality(self, cfg: RewardConfig) -> tuple[np.ndarray, np.ndarray]:
        """The reward's P signal at hop 1 and hop 2."""
        if cfg.signal == "task":
            return self.task1, self.task2
        if cfg.signal == "bertscore":
            return self.bert1, self.bert2
        w = cfg.mix_weight
        return w * self.task1 + (1 - w) * self.bert1, w * self.task2 + (1 - w) * self.bert2

    def path_matrix(self, which: str) -> np.ndarray:
        """[Q, N + 2·N²] values of every path: task, bert, calls, cost (summed), latency (summed) or a
        secondary metric (SECONDARY_METRICS: the final answer's, NaN where the answer type has none)."""
        q, n = self.n_queries, self.n_experts
        if which in SECONDARY_METRICS:
            k = SECONDARY_METRICS.index(which)
            a, b, f = self.sec1[..., k], self.sec2[..., k], self.sec1[:, None, :, k]
        elif which == "task":
            a, b, f = self.task1, self.task2, self.task1[:, None, :]
        elif which == "bert":
            a, b, f = self.bert1, self.bert2, self.bert1[:, None, :]
        elif which == "calls":
            a, b, f = np.ones((q, n)), np.full((q, n, n), 2.0), np.full((q, n, n), 2.0)
        elif which == "cost":
            a, b, f = self.cost1, self.cost1[:, :, None] + self.cost2, self.cost1[:, :, None] + self.cost1[:, None, :]
        elif which == "latency":
            a, b, f = self.lat1, self.lat1[:, :, None] + self.lat2, self.lat1[:, :, None] + self.lat1[:, None, :]
        else:
            raise ValueError(which)
        f = np.broadcast_to(f, (q, n, n))
        return np.concatenate([a, b.reshape(q, n * n), f.reshape(q, n * n)], axis=1).astype(np.float64)

    def path_names(self) -> list[str]:
        n = self.experts
        return ([join_path([a]) for a in n] + [join_path([a, b]) for a in n for b in n]
                + [f"{a}>fresh:{b}" for a in n for b in n])


CONF_FEATURES = ("yes_prob", "first_prob", "mean_prob", "min_prob", "length", "yes_margin")


def yes_margin(yes_prob):
    """How sure a two-way answer is, whichever way it goes: |2 P(yes) - 1| (0 at a coin toss, 1 when certain;
    0 where the answer is not yes/no, whose P(yes) reads 0.5). P(yes) itself is not monotone in certainty,
    and a small policy network learns a threshold on this far more easily than a bump around 0.5."""
    return abs(2 * yes_prob - 1)


def task_features(answer_types: list[str]) -> np.ndarray:
    """[Q, len(ANSWER_TYPES)] one-hot of each query's answer type: what a request always knows (it picks the
    prompt and the parser), and few enough values that a policy cannot memorise queries by it."""
    out = np.zeros((len(answer_types), len(ANSWER_TYPES)), np.float32)
    for i, a in enumerate(answer_types):
        out[i, ANSWER_TYPES.index(a)] = 1.0
    return out


def conf_features(row: dict | None) -> list[float]:
    """A node's confidence as features in [0, 1]: P(yes) (0.5 where not a yes/no answer), the first token's
    probability, the geometric-mean and the least token probability, the length (tokens / 32, capped) and
    the yes/no margin (``yes_margin``)."""
    if row is None:
        return [0.5, 0.0, 0.0, 0.0, 0.0, 0.0]
    import math

    def prob(lp):
        return 0.0 if lp is None else math.exp(lp)

    yes = row.get("yes_prob")
    first = row.get("first_prob")
    yes = 0.5 if yes is None else float(yes)
    return [yes, 0.0 if first is None else float(first), prob(row.get("mean_logprob")),
            prob(row.get("min_logprob")), min((row.get("answer_tokens") or 0) / 32.0, 1.0), yes_margin(yes)]


def path_index(n: int, first: int, second: int | None = None, fresh: bool = False) -> int:
    """The flat number of a path (see the module docstring)."""
    if second is None:
        return first
    return n + (n * n if fresh else 0) + first * n + second


def concat_arrays(parts: list[TreeArrays]) -> TreeArrays:
    """Several datasets' arrays as one (same number of experts, same embedder): the cross-task mixture.

    An action calls an expert slot. Where a dataset has a specialist (params.yaml ``specialists``) the
    slot of its base expert is the specialist there, and the mixture names that slot by both ("a/b")."""
    first = parts[0]
    for a in parts[1:]:
        if a.n_experts != first.n_experts or a.q_emb.shape[1] != first.q_emb.shape[1]:
            raise ValueError("cross-task: every dataset needs the same number of experts and embedding size")
    slots = [list(dict.fromkeys(a.experts[i] for a in parts)) for i in range(first.n_experts)]
    fields = {k: np.concatenate([getattr(a, k) for a in parts]) for k, v in first.__dict__.items()
              if isinstance(v, np.ndarray)}
    return replace(first, qids=[q for a in parts for q in a.qids], experts=["/".join(s) for s in slots], **fields)


def call_costs(arrays: TreeArrays, unit: str, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """The reward's cost C of each hop-1 and hop-2 call, in the reward's unit.

    flops: the call's GFLOPs divided by ``scale`` (the priciest expert's mean call);
    params: the expert's parameters in billions / 1000, per call (as the public DER code does).
    """
    if unit == "flops":
        return arrays.cost1 / scale, arrays.cost2 / scale
    if not arrays.params_b:
        raise ValueError("reward.cost = params needs each expert's params_b")
    per_expert = np.asarray(arrays.params_b, dtype=np.float64) / 1000.0
    q, n = arrays.n_queries, arrays.n_experts
    return np.broadcast_to(per_expert, (q, n)).copy(), np.broadcast_to(per_expert, (q, n, n)).copy()


def cost_scale(arrays: TreeArrays) -> float:
    """The most expensive expert's mean GFLOPs per call (over both hops): costs are divided by it."""
    n = arrays.n_experts
    means = [np.mean(np.concatenate([arrays.cost1[:, i], arrays.cost2[:, :, i].reshape(-1)])) for i in range(n)]
    scale = float(max(means))
    return scale if scale > 0 else 1.0


def split_arrays(arrays: TreeArrays, splits: list[str]) -> tuple[TreeArrays, TreeArrays]:
    train = [i for i, s in enumerate(splits) if s == "train"]
    test = [i for i, s in enumerate(splits) if s == "test"]
    if not train or not test:
        raise ValueError(f"need queries in both splits (train {len(train)}, test {len(test)}); "
                         f"raise the sample size or data.test_fraction")
    return arrays.subset(train), arrays.subset(test)
