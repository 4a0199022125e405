"""A dataset's cached tree, scores, embeddings and confidence, read into the router's dense arrays (arrays.py)."""
from __future__ import annotations

import numpy as np

from der_pipeline.artifacts import dataset_params, load_confidence, load_embeddings, load_scores
from der_pipeline.config import Params
from der_pipeline.experts.cost import call_cost
from der_pipeline.generate.tree import load_tree
from der_pipeline.router.arrays import CONF_FEATURES, TreeArrays, conf_features, task_features
from der_pipeline.schemas import SECONDARY_METRICS, split_path


def build_arrays(p: Params, dataset: str) -> tuple[TreeArrays, list[str]]:
    """Dense arrays for every query with a complete tree, scores and embeddings; also each query's split.

    Costs are computed here from each call's tokens and the current params (experts/cost.py), never
    read from the tree, so a change of ``params_b`` or ``cost_per_call`` needs no regeneration."""
    p = dataset_params(p, dataset)
    prepared, tree = load_tree(p, dataset)
    confidence = load_confidence(p, dataset, tree)
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
        parts = split_path(path)
        if len(parts) == 1:
            return qpos[qid], (epos[parts[0]],), epos[parts[0]]
        i, j = epos[parts[0]], epos[parts[1]]
        return qpos[qid], (i, j), n + i * n + j

    costs = np.zeros(tree.num_rows)
    experts_col = tree["expert"].to_pylist()
    ptok = np.asarray(tree["prompt_tokens"].to_numpy(), dtype=np.float64)
    ctok = np.asarray(tree["completion_tokens"].to_numpy(), dtype=np.float64)
    for e in p.experts:
        rows = np.asarray([x == e.name for x in experts_col])
        if rows.any():
            costs[rows] = call_cost(e, ptok[rows], ctok[rows])
    for qid, path, cost, lat in zip(tree["qid"].to_pylist(), tree["path"].to_pylist(), costs,
                                    tree["latency_s"].to_pylist()):
        qi, ij, flat = slot(qid, path)
        hop = len(ij)
        arr[f"cost{hop}"][(qi, *ij)] = cost
        arr[f"lat{hop}"][(qi, *ij)] = lat
        vec = emb.get((qid, path))
        if vec is None:
            raise ValueError(f"{dataset}: no embedding for node ({qid}, {path}); rerun `der-pipeline embed`")
        (a1 if hop == 1 else a2)[(qi, *ij)] = vec
    sec = {1: np.full((Q, n, len(SECONDARY_METRICS)), np.nan), 2: np.full((Q, n, n, len(SECONDARY_METRICS)), np.nan)}
    secondary = list(zip(*(scores[m].to_pylist() for m in SECONDARY_METRICS)))
    for qid, path, ts, bs, sv in zip(scores["qid"].to_pylist(), scores["path"].to_pylist(),
                                     scores["task_score"].to_pylist(), scores["bertscore_f1"].to_pylist(), secondary):
        if qid not in qpos or split_path(path)[0] not in epos:
            continue
        qi, ij, flat = slot(qid, path)
        hop = len(ij)
        arr[f"task{hop}"][(qi, *ij)] = ts
        arr[f"bert{hop}"][(qi, *ij)] = bs
        sec[hop][(qi, *ij)] = [np.nan if v is None else v for v in sv]
        filled[qi, flat] = True
    if not filled.all():
        raise ValueError(f"{dataset}: {(~filled).sum()} tree nodes have no score; rerun `der-pipeline score`")
    conf1 = np.zeros((Q, n, len(CONF_FEATURES)), np.float32)
    missing = 0
    for qi, qid in enumerate(qids):
        for i, e in enumerate(names):
            row = confidence.get((qid, e))
            missing += row is None
            conf1[qi, i] = conf_features(row)
    if missing:
        raise ValueError(f"{dataset}: {missing} hop-1 nodes have no confidence signals yet; run "
                         f"`der-pipeline confidence` (resumable)")
    q_emb = np.stack([emb[(q, "")] for q in qids]).astype(np.float32)
    arrays = TreeArrays(qids=qids, experts=names, q_emb=q_emb, a1_emb=a1, a2_emb=a2, **arr, conf1=conf1,
                        sec1=sec[1], sec2=sec[2], params_b=tuple(e.params_b for e in p.experts),
                        q_task=task_features(prepared["answer_type"].to_pylist()))
    return arrays, prepared["split"].to_pylist()
