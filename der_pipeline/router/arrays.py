"""The cached tree as dense arrays: what the environment, the baselines and evaluation look up.

For N experts, hop-1 values are [Q, N] (expert i answers) and hop-2 values are
[Q, N, N] (expert j refines expert i's answer). Paths are also numbered
flat: i for (i), and N + i*N + j for (i, j); ``path_matrix`` gives every
path's value in that order, so a routing method is a distribution over paths.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from der_pipeline.config import Params, RewardConfig
from der_pipeline.schemas import join_path


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
    params_b: tuple[float, ...] = ()  # each expert's parameters in billions (the `params` cost unit)

    @property
    def n_queries(self) -> int:
        return len(self.qids)

    @property
    def n_experts(self) -> int:
        return len(self.experts)

    def subset(self, idx: np.ndarray | list[int]) -> "TreeArrays":
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
        """[Q, N + N*N] values of every path: task, bert, calls, cost (summed) or latency (summed)."""
        q, n = self.n_queries, self.n_experts
        if which == "task":
            a, b = self.task1, self.task2
        elif which == "bert":
            a, b = self.bert1, self.bert2
        elif which == "calls":
            a, b = np.ones((q, n)), np.full((q, n, n), 2.0)
        elif which == "cost":
            a, b = self.cost1, self.cost1[:, :, None] + self.cost2
        elif which == "latency":
            a, b = self.lat1, self.lat1[:, :, None] + self.lat2
        else:
            raise ValueError(which)
        return np.concatenate([a, b.reshape(q, n * n)], axis=1).astype(np.float64)

    def path_names(self) -> list[str]:
        n = self.experts
        return [join_path([a]) for a in n] + [join_path([a, b]) for a in n for b in n]


def concat_arrays(parts: list[TreeArrays]) -> TreeArrays:
    """Several datasets' arrays as one (same experts, same embedder): the cross-task mixture."""
    first = parts[0]
    for a in parts[1:]:
        if a.experts != first.experts or a.q_emb.shape[1] != first.q_emb.shape[1]:
            raise ValueError("cross-task: every dataset needs the same experts and embedding size")
    fields = {k: np.concatenate([getattr(a, k) for a in parts]) for k, v in first.__dict__.items()
              if isinstance(v, np.ndarray)}
    return replace(first, qids=[q for a in parts for q in a.qids], **fields)


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


def build_arrays(p: Params, dataset: str) -> tuple[TreeArrays, list[str]]:
    """Dense arrays for every query with a complete tree, scores and embeddings; also each query's split."""
    from der_pipeline.signals.embed import load_embeddings
    from der_pipeline.signals.score import load_scores
    from der_pipeline.tree import load_tree

    prepared, tree = load_tree(p, dataset)
    scores = load_scores(p, dataset)
    emb = load_embeddings(p, dataset)
    names = p.expert_names()
    n = len(names)
    qids = prepared["qid"].to_pylist()
    qpos = {q: i for i, q in enumerate(qids)}
    dim = len(next(iter(emb.values())))
    Q = len(qids)
    arr = {k: np.zeros((Q, n)) for k in ("task1", "bert1", "cost1", "lat1")}
    arr.update({k: np.zeros((Q, n, n)) for k in ("task2", "bert2", "cost2", "lat2")})
    filled = np.zeros((Q, n + n * n), dtype=bool)
    a1 = np.zeros((Q, n, dim), np.float32)
    a2 = np.zeros((Q, n, n, dim), np.float32)
    epos = {e: i for i, e in enumerate(names)}

    def slot(qid: str, path: str):
        parts = path.split(">")
        if len(parts) == 1:
            return qpos[qid], (epos[parts[0]],), epos[parts[0]]
        i, j = epos[parts[0]], epos[parts[1]]
        return qpos[qid], (i, j), n + i * n + j

    for qid, path, cost, lat in zip(tree["qid"].to_pylist(), tree["path"].to_pylist(), tree["cost"].to_pylist(),
                                    tree["latency_s"].to_pylist()):
        qi, ij, flat = slot(qid, path)
        hop = len(ij)
        arr[f"cost{hop}"][(qi, *ij)] = cost
        arr[f"lat{hop}"][(qi, *ij)] = lat
        vec = emb.get((qid, path))
        if vec is None:
            raise ValueError(f"{dataset}: no embedding for node ({qid}, {path}); rerun `der-pipeline embed`")
        (a1 if hop == 1 else a2)[(qi, *ij)] = vec
    for qid, path, ts, bs in zip(scores["qid"].to_pylist(), scores["path"].to_pylist(),
                                 scores["task_score"].to_pylist(), scores["bertscore_f1"].to_pylist()):
        if qid not in qpos or path.split(">")[0] not in epos:
            continue
        qi, ij, flat = slot(qid, path)
        hop = len(ij)
        arr[f"task{hop}"][(qi, *ij)] = ts
        arr[f"bert{hop}"][(qi, *ij)] = bs
        filled[qi, flat] = True
    if not filled.all():
        raise ValueError(f"{dataset}: {(~filled).sum()} tree nodes have no score; rerun `der-pipeline score`")
    q_emb = np.stack([emb[(q, "")] for q in qids]).astype(np.float32)
    arrays = TreeArrays(qids=qids, experts=names, q_emb=q_emb, a1_emb=a1, a2_emb=a2, **arr,
                        params_b=tuple(e.params_b for e in p.experts))
    return arrays, prepared["split"].to_pylist()


def split_arrays(arrays: TreeArrays, splits: list[str]) -> tuple[TreeArrays, TreeArrays]:
    train = [i for i, s in enumerate(splits) if s == "train"]
    test = [i for i, s in enumerate(splits) if s == "test"]
    if not train or not test:
        raise ValueError(f"need queries in both splits (train {len(train)}, test {len(test)}); "
                         f"raise the sample size or data.test_fraction")
    return arrays.subset(train), arrays.subset(test)
