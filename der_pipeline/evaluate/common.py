"""What every evaluation stage shares: a dataset's train/test arrays, DER policies per seed, and the
summary of a method (one routing weight matrix per seed) on the test split."""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np

from der_pipeline.artifacts import dataset_params, policy_path
from der_pipeline.config import Params
from der_pipeline.evaluate.stats import bootstrap_ci, mean_std
from der_pipeline.router.arrays import TreeArrays, cost_scale, split_arrays
from der_pipeline.router.checkpoint import load_policy
from der_pipeline.router.dataset import build_arrays
from der_pipeline.router.methods import PolicyRouter
from der_pipeline.router.parallel import train_many
from der_pipeline.schemas import SECONDARY_METRICS

log = logging.getLogger(__name__)


@dataclass
class DatasetSplit:
    dataset: str
    train: TreeArrays
    test: TreeArrays
    scale: float  # the priciest expert's mean call on the train split (GFLOPs): cost_norm divides by it


def load_split(p: Params, dataset: str) -> DatasetSplit:
    p = dataset_params(p, dataset)
    arrays, splits = build_arrays(p, dataset)
    train, test = split_arrays(arrays, splits)
    return DatasetSplit(dataset, train, test, cost_scale(train))


def _matches(ckpt: dict, p: Params, experts: list[str]) -> bool:
    return (ckpt["experts"] == experts and ckpt["reward"] == dataclasses.asdict(p.reward)
            and ckpt["ppo"] == dataclasses.asdict(p.ppo))


def saved_policies(p: Params, split: DatasetSplit, method_id: str = "der") -> list[PolicyRouter]:
    """The `train` stage's policies, one per seed; an error if they were trained with other settings."""
    routers = []
    for seed in p.seeds:
        path = policy_path(p, split.dataset, seed)
        agent, ckpt = load_policy(path)
        if not _matches(ckpt, p, split.train.experts):
            raise ValueError(f"{path} was trained with other experts or reward/ppo settings than params.yaml; "
                             f"rerun `der-pipeline train` (or `dvc repro`)")
        routers.append(PolicyRouter(agent, split.scale, p.reward, method_id, state=p.ppo.state,
                                    out_of_fold=ckpt.get("out_of_fold")))
    return routers


def der_policies(p: Params, split: DatasetSplit, method_id: str = "der",
                 train: TreeArrays | None = None) -> list[PolicyRouter]:
    """DER under ``p``'s reward and ppo settings, one policy per seed: the saved ones when ``p`` is what
    they were trained with, otherwise trained here (seconds each)."""
    train = split.train if train is None else train
    if train is split.train:
        try:
            return saved_policies(p, split, method_id)
        except (FileNotFoundError, ValueError):
            pass
    routers = []
    trained = train_many([dict(arrays=train, reward=p.reward, cfg=p.ppo, seed=seed, scale=split.scale)
                          for seed in p.seeds], p.compute.workers)
    for agent, history in trained:
        routers.append(PolicyRouter(agent, split.scale, p.reward, method_id, state=p.ppo.state,
                                    out_of_fold=history[-1].get("out_of_fold") if history else None))
    return routers


def with_reward(p: Params, **values) -> Params:
    return p.override("reward", **values)


def with_ppo(p: Params, **values) -> Params:
    return p.override("ppo", **values)


def summarize(weights: list[np.ndarray], test: TreeArrays, scale: float, p: Params) -> dict:
    """Test-split numbers of a method given its path weights, one matrix per seed (one for deterministic
    methods). Accuracy is the mean over seeds with the std across seeds; the 95% interval is a bootstrap
    over queries of the per-query score averaged over seeds."""
    task, cost = test.path_matrix("task"), test.path_matrix("cost")
    per_seed_acc = [float((w * task).sum(axis=1).mean()) for w in weights]
    per_seed_cost = [float((w * cost).sum(axis=1).mean()) for w in weights]
    w_mean = np.mean(weights, axis=0)
    per_query = (w_mean * task).sum(axis=1)
    lo, hi = bootstrap_ci(per_query, p.evaluate.bootstrap, p.data.seed)
    acc, acc_std = mean_std(per_seed_acc)
    c, c_std = mean_std(per_seed_cost)
    n = test.n_experts
    w1 = w_mean[:, :n]
    w2 = w_mean[:, n:n + n * n].reshape(-1, n, n).sum(axis=2)  # by first expert, refined (KTP)
    w3 = w_mean[:, n + n * n:].reshape(-1, n, n).sum(axis=2)  # by first expert, escalated to a fresh answer
    right = test.task1 >= 0.5
    first = w1 + w2 + w3
    out = {
        "accuracy": round(acc, 4), "accuracy_std": round(acc_std, 4), "ci_low": round(lo, 4), "ci_high": round(hi, 4),
        "bertscore_f1": round(float((w_mean * test.path_matrix("bert")).sum(axis=1).mean()), 4),
        "calls": round(float((w_mean * test.path_matrix("calls")).sum(axis=1).mean()), 3),
        "cost_gflops": round(c, 2), "cost_gflops_std": round(c_std, 2), "cost_norm": round(c / scale, 4),
        "latency_s": round(float((w_mean * test.path_matrix("latency")).sum(axis=1).mean()), 3),
        "first_expert_share": [round(float(x), 3) for x in first.mean(axis=0)],
        "refine_rate": round(float(w2.sum(axis=1).mean()), 3),
        "escalate_rate": round(float(w3.sum(axis=1).mean()), 3),
        "stop_if_right": _ratio((w1 * right).sum(), (first * right).sum()),
        "refine_if_wrong": _ratio(((w2 + w3) * ~right).sum(), (first * ~right).sum()),  # a second call of any kind
        "seeds": len(weights),
    }
    for name in SECONDARY_METRICS:  # reported where every test answer has it (exact match; ROUGE-1/2)
        values = test.path_matrix(name)
        if not np.isnan(values).any():
            out[name] = round(float((w_mean * values).sum(axis=1).mean()), 4)
    out["_per_query"] = per_query  # for paired tests; dropped before writing JSON
    return out


def _ratio(a: float, b: float) -> float | None:
    return round(float(a / b), 3) if b > 0 else None


def public(metrics: dict) -> dict:
    """A method's metrics without the private per-query vector."""
    return {k: v for k, v in metrics.items() if not k.startswith("_")}
