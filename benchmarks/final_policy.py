"""Which policy to keep after cross-validation (``ppo.final_policy``): the K folds' policies averaged
(fold_ensemble) or a PPO run on the whole train split stopped at the folds' iteration (refit)?

Neither can be scored on queries it was fitted on, so both are scored out of sample by nested
cross-validation on the train split alone: the train split is cut into 3 outer folds (a hash of the
query id other than DER's own folds); on two of them the whole training procedure runs (its own K-fold
choice of the iteration, then the final policy), and the third scores it. The test split is never read.

    python benchmarks/final_policy.py [--params params.yaml] [--dataset sst2 ...] [--alphas 0.05 0.1]
                                      [--seeds 1 2 3]
"""
from __future__ import annotations

import argparse
import dataclasses
import zlib

import numpy as np

from der_pipeline.config import load_params
from der_pipeline.evaluate.common import load_split
from der_pipeline.router.methods import greedy_paths
from der_pipeline.router.selection import train_ppo

OUTER_FOLDS = 3


def outer_bands(qids: list[str]) -> np.ndarray:
    """Outer fold of each query: a band of crc32(qid + '#outer'), independent of DER's crc32(qid) folds
    (the same hash would leave one inner fold empty)."""
    key = np.array([zlib.crc32((q + "#outer").encode()) / 2**32 for q in qids])
    return np.minimum((key * OUTER_FOLDS).astype(int), OUTER_FOLDS - 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--dataset", nargs="+", default=["sst2", "boolq"])
    ap.add_argument("--alphas", type=float, nargs="+", help="default: reward.alpha")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = ap.parse_args()
    p = load_params(args.params)
    if p.ppo.selection_folds < 2:
        ap.error("ppo.selection_folds must be at least 2: there is nothing to choose between without folds")
    for dataset in args.dataset:
        split = load_split(p, dataset)
        train, scale = split.train, split.scale
        band = outer_bands(train.qids)
        print(f"{dataset}: {train.n_queries} train queries in {OUTER_FOLDS} outer folds, "
              f"{p.ppo.selection_folds} inner folds, seeds {args.seeds}, state {p.ppo.state}")
        for alpha in args.alphas or [p.reward.alpha]:
            q = p.override("reward", alpha=alpha)
            for final in ("refit", "fold_ensemble"):
                cfg = dataclasses.replace(q.ppo, final_policy=final, fallback="none")  # the policies themselves
                score, cost, two = [], [], []
                for seed in args.seeds:
                    for k in range(OUTER_FOLDS):
                        fit, held = train.subset(np.flatnonzero(band != k)), train.subset(np.flatnonzero(band == k))
                        agent, _ = train_ppo(fit, q.reward, cfg, seed=seed, scale=scale)
                        idx = greedy_paths(agent, held, scale, q.reward, cfg.state)
                        rows = np.arange(held.n_queries)
                        score.append(held.path_matrix("task")[rows, idx])
                        cost.append(held.path_matrix("cost")[rows, idx])
                        two.append(idx >= held.n_experts)
                s, c, t = (float(np.concatenate(x).mean()) for x in (score, cost, two))
                print(f"  alpha {alpha:<5g} {final:14s} held-out score {s:.3f} at {c:6.1f} GFLOPs, two calls "
                      f"{t:4.0%}, utility {s - alpha * c / scale:.4f}", flush=True)


if __name__ == "__main__":
    main()
