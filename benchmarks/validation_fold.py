"""Why PPO keeps the iteration chosen by cross-validation: train and test accuracy of DER with and
without the K-fold choice (ppo.selection_folds), on a dataset's cached tree (a few PPO runs, minutes).

    python benchmarks/validation_fold.py [--params params.yaml] [--dataset boolq] [--steps 150000] [--gamma 0.5]
"""
from __future__ import annotations

import argparse

import numpy as np

from der_pipeline.config import load_params
from der_pipeline.evaluate.common import load_split
from der_pipeline.router.methods import PolicyRouter
from der_pipeline.router.selection import train_ppo


def accuracy(router: PolicyRouter, arrays) -> float:
    return float((router.route(arrays) * arrays.path_matrix("task")).sum(axis=1).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--dataset", default="boolq")
    ap.add_argument("--steps", type=int, default=150_000, help="PPO steps (long enough to memorise)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--gamma", type=float, help="DER's reward.gamma (default: the params')")
    args = ap.parse_args()
    if args.gamma is not None and args.gamma < 0:
        ap.error("--gamma must be >= 0")
    p = load_params(args.params)
    if args.gamma is not None:
        p = p.override("reward", gamma=args.gamma)
    split = load_split(p, args.dataset)
    print(f"{args.dataset}: {split.train.n_queries} train / {split.test.n_queries} test queries, "
          f"{args.steps:,} PPO steps, reward {p.reward.form} alpha={p.reward.alpha:g} gamma={p.reward.gamma:g}, "
          f"seeds {args.seeds}")
    for label, folds in (("no selection (keep the last iteration)", 0),
                         (f"{p.ppo.selection_folds}-fold CV (keep the chosen iteration)", p.ppo.selection_folds)):
        # the learned policies themselves, never the fixed path kept in place of one (ppo.fallback)
        cfg = p.override("ppo", total_timesteps=args.steps, selection_folds=folds, fallback="none").ppo
        train_acc, test_acc = [], []
        for seed in args.seeds:
            agent, _ = train_ppo(split.train, p.reward, cfg, seed=seed, scale=split.scale)
            router = PolicyRouter(agent, split.scale, p.reward, state=cfg.state)
            train_acc.append(accuracy(router, split.train))
            test_acc.append(accuracy(router, split.test))
        print(f"{label:48s}: train accuracy {np.mean(train_acc):.3f}, test accuracy {np.mean(test_acc):.3f}")


if __name__ == "__main__":
    main()
