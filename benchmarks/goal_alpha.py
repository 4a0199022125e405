"""At which price does the train split say the routing goal is within reach? For each alpha of
``evaluate.alpha_sweep``: DER, the confidence cascade and the best fixed path, each fitted on K-1 folds
of the train split (DER: the folds' policies of ``ppo.selection_folds`` cross-validation, at the
iteration kept: ``CrossValidation.out_of_fold``, what the curves stage chooses the goal's price from) and
scored on the held-out fold, beside the strongest single expert of the train split. For DER it also
prints the share of the folds' policies that send every held-out query down one path: where most do, its
out-of-fold point is a mix of fixed paths, not a router.

The goal (issue 14): a score at least the strongest expert's at no more than ``--share`` (70%) of its
mean cost. Out of fold, "goal" marks the methods that reach it. The alpha of the params (the proposal's
0.1) is a price, not a setting to tune; this shows at which prices escalating pays out of sample, so
that an operating point for the goal can be chosen on the train split alone. The test split is never
read. Folds are DER's (zlib.crc32(qid) bands), so every method sees the same held-out queries.

    python benchmarks/goal_alpha.py [--params params.yaml] [--dataset sst2 ...] [--seeds 1 2 3]
                                    [--alphas 0.02 0.05 0.1] [--state confidence] [--share 0.7]
                                    [--gamma 0]

``--gamma`` sets DER's ``reward.gamma`` (the proposal's bonus for a final P >= p0 and penalty for ending
two calls below it): with it, an escalation that still ends wrong costs gamma more than stopping wrong,
so the reward is no longer the score - alpha x cost every method is judged by; at 0 it is exactly that.
"""
from __future__ import annotations

import argparse

import numpy as np

from der_pipeline.config import load_params
from der_pipeline.evaluate.common import load_split
from der_pipeline.router.methods import BestFixedPath, ConfidenceCascade
from der_pipeline.router.selection import cross_validate, selection_folds


def out_of_fold(folds, route) -> tuple[float, float, float]:
    """Mean score, mean cost (GFLOPs) and share of two-call paths over the held-out folds, where
    ``route(fit, val)`` gives each held-out query's flat path index."""
    score, cost, two = [], [], []
    for fit, val in folds:
        idx = route(fit, val)
        rows = np.arange(val.n_queries)
        score.append(val.path_matrix("task")[rows, idx])
        cost.append(val.path_matrix("cost")[rows, idx])
        two.append(idx >= val.n_experts)
    return (float(np.concatenate(score).mean()), float(np.concatenate(cost).mean()),
            float(np.concatenate(two).mean()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--dataset", nargs="+", default=["sst2"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="PPO seeds (DER is their mean)")
    ap.add_argument("--alphas", type=float, nargs="+", help="default: evaluate.alpha_sweep")
    ap.add_argument("--state", help="DER's state (default: ppo.state)")
    ap.add_argument("--share", type=float, default=0.7, help="the goal's cost budget, a share of the strongest's")
    ap.add_argument("--gamma", type=float, help="DER's reward.gamma (default: the params')")
    args = ap.parse_args()
    if not 0 < args.share <= 1:
        ap.error("--share must be in (0, 1]")
    p = load_params(args.params)
    if args.state:
        p = p.override("ppo", state=args.state)
    if args.gamma is not None:
        if args.gamma < 0:
            ap.error("--gamma must be at least 0")
        p = p.override("reward", gamma=args.gamma)
    alphas = args.alphas or p.evaluate.alpha_sweep
    if any(a < 0 for a in alphas):
        ap.error("--alphas must be at least 0")
    for dataset in args.dataset:
        split = load_split(p, dataset)
        train, scale = split.train, split.scale
        folds = selection_folds(train, p.ppo.selection_folds)
        if not folds:
            raise SystemExit(f"{dataset}: too few train queries for {p.ppo.selection_folds} folds")
        strong = int(np.argmax(train.task1.mean(axis=0)))
        s_score, s_cost = float(train.task1[:, strong].mean()), float(train.cost1[:, strong].mean())
        budget = args.share * s_cost
        print(f"{dataset}: {train.n_queries} train queries, {len(folds)} folds, DER state {p.ppo.state}, "
              f"reward {p.reward.form} with gamma {p.reward.gamma:g}, "
              f"seeds {args.seeds}; strongest expert {train.experts[strong]} scores {s_score:.3f} at "
              f"{s_cost:.1f} GFLOPs; the goal: a score >= {s_score:.3f} at <= {budget:.1f} GFLOPs")
        for alpha in alphas:
            q = p.override("reward", alpha=alpha)
            rows = {
                "cascade": out_of_fold(folds, lambda fit, val, a=alpha, q=q: ConfidenceCascade(a).fit(fit, q)
                                       .route(val).argmax(axis=1)),
                "best fixed path": out_of_fold(folds, lambda fit, val, a=alpha, q=q: BestFixedPath(a).fit(fit, q)
                                               .route(val).argmax(axis=1)),
            }
            der = []
            for seed in args.seeds:
                pt = cross_validate(train, q.reward, q.ppo, seed=seed, scale=scale).out_of_fold(
                    q.reward, scale, q.ppo.state)
                der.append((pt["score"], pt["cost_gflops"], pt["two_calls"], pt["constant_folds"]))
            rows["DER"] = tuple(float(np.mean([d[k] for d in der])) for k in range(3))
            constant = float(np.mean([d[3] for d in der]))
            for name, (score, cost, two) in rows.items():
                goal = "goal" if score >= s_score and cost <= budget else ""
                note = f", constant fold policies {constant:4.0%}" if name == "DER" else ""
                print(f"  alpha {alpha:<5g} {name:16s} score {score:.3f} at {cost:6.1f} GFLOPs "
                      f"({cost / s_cost:4.0%} of the strongest's), two calls {two:4.0%}, utility "
                      f"{score - alpha * cost / scale:.4f}{note} {goal}".rstrip())


if __name__ == "__main__":
    main()
