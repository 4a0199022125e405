"""Does escalating pay out of sample? K-fold cross-validation, on the train split alone, of the confidence
cascade against the best single expert, both fitted on K-1 folds and scored on the held-out one.

A small fold can favour or punish escalation by chance; this prints what every fold says, so one can
tell a router that never escalates because escalation does not pay from one whose fold was unlucky (it
is why DER chooses its PPO iteration by K-fold cross-validation, ppo.selection_folds, not on one fold).
Folds are bands of the same hash as DER's (zlib.crc32(qid) / 2**32): with the same K they are DER's folds.
Utility is what every method is judged by: task score minus alpha times the normalised cost. The test
split is never read.

    python benchmarks/cascade_cv.py [--params params.yaml] [--dataset sst2 ...] [--folds 4] [--alpha A]
"""
from __future__ import annotations

import argparse
import zlib

import numpy as np

from der_pipeline.config import load_params
from der_pipeline.evaluate.common import load_split
from der_pipeline.router.methods import CASCADE_SIGNALS, ConfidenceCascade, cascade_outcome


def hash_bands(qids: list[str], folds: int) -> np.ndarray:
    """Fold number of each query: the band of its id hash (as der_pipeline.router.selection.selection_folds)."""
    key = np.array([zlib.crc32(q.encode()) / 2**32 for q in qids])
    return np.minimum((key * folds).astype(int), folds - 1)


def cascade_on(c: ConfidenceCascade, part) -> tuple[float, float, float]:
    """Mean score, mean cost (GFLOPs) and escalated share of a fitted cascade on ``part``."""
    if c.strong is None:
        return float(part.task1[:, c.cheap].mean()), float(part.cost1[:, c.cheap].mean()), 0.0
    esc = CASCADE_SIGNALS[c.signal](part.conf1[:, c.cheap]) < c.threshold
    score, cost = cascade_outcome(part, c.cheap, c.strong, esc)
    return score, cost, float(esc.mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--dataset", nargs="+", default=["sst2"])
    ap.add_argument("--folds", type=int, default=4, help="K, at least 2")
    ap.add_argument("--alpha", type=float, help="the cost weight (default: params.yaml's reward.alpha)")
    args = ap.parse_args()
    if args.folds < 2:
        ap.error("--folds must be at least 2")
    if args.alpha is not None and args.alpha < 0:
        ap.error("--alpha must be at least 0")
    p = load_params(args.params)
    if args.alpha is not None:
        p = p.override("reward", alpha=args.alpha)  # the cascade's fit reads reward.alpha
    alpha = p.reward.alpha
    for dataset in args.dataset:
        split = load_split(p, dataset)
        train, scale = split.train, split.scale
        fold = hash_bands(train.qids, args.folds)
        print(f"{dataset}: {train.n_queries} train queries, {args.folds} folds, alpha={alpha:g} "
              f"(utility = score - alpha x cost / {scale:.1f} GFLOPs)")
        totals = {"cascade": [], "single": []}
        for k in range(args.folds):
            held, rest = np.flatnonzero(fold == k), np.flatnonzero(fold != k)
            if len(held) == 0 or len(rest) == 0:
                print(f"  fold {k}: empty, skipped")
                continue
            fit, val = train.subset(rest), train.subset(held)
            cascade = ConfidenceCascade().fit(fit, p)
            c_score, c_cost, c_esc = cascade_on(cascade, val)
            utility = fit.task1.mean(axis=0) - alpha * fit.cost1.mean(axis=0) / scale
            best = int(np.argmax(utility))
            s_score, s_cost = float(val.task1[:, best].mean()), float(val.cost1[:, best].mean())
            totals["cascade"].append((len(held), c_score, c_cost))
            totals["single"].append((len(held), s_score, s_cost))
            then = cascade.chosen["then"] or "(never escalates)"
            print(f"  fold {k} ({len(held)} held out): cascade {cascade.chosen['first']} > {then} "
                  f"escalates {c_esc:.0%}, scores {c_score:.3f} at {c_cost:.1f} (utility "
                  f"{c_score - alpha * c_cost / scale:.4f}); best single {train.experts[best]} scores "
                  f"{s_score:.3f} at {s_cost:.1f} (utility {s_score - alpha * s_cost / scale:.4f})")
        for name, rows in totals.items():
            if not rows:
                continue
            w = np.array([r[0] for r in rows], dtype=float)
            score = float(np.average([r[1] for r in rows], weights=w))
            cost = float(np.average([r[2] for r in rows], weights=w))
            print(f"  cross-validated {name}: score {score:.3f} at {cost:.1f} GFLOPs, "
                  f"utility {score - alpha * cost / scale:.4f}")


if __name__ == "__main__":
    main()
