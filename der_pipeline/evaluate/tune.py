"""The `tune` stage: which DER settings do best out of fold on the train split.

Every combination of ``evaluate.tune`` (state, reward form, action set, learning rate) is
cross-validated per seed exactly as `train` chooses its iteration (``ppo.selection_folds``
id-hash folds; the iteration kept is the one with the best mean held-out return), then every
train query is routed by the greedy policy of the fold that held it out, and the candidate is
scored by the quantity every method is judged by: the task score minus alpha times the
normalised cost (params' alpha). The test split is never read. The defaults in
params.yaml are the best row of this table; `report` shows the table and says
whether params.yaml still agrees with it. Writes results/tune/<dataset>/.
"""
from __future__ import annotations

import itertools

import numpy as np

from der_pipeline.artifacts import results_dir, dataset_params
from der_pipeline.config import Params
from der_pipeline.evaluate.common import load_split
from der_pipeline.evaluate.stats import mean_std
from der_pipeline.io import atomic_write_bytes, write_json
from der_pipeline.router.methods import BestFixedPath, PolicyRouter
from der_pipeline.router.arrays import TreeArrays, concat_arrays
from der_pipeline.router.ppo import cross_validate, selection_folds


SETTINGS = ("state", "form", "actions", "learning_rate")


def candidates(p: Params) -> list[dict]:
    grid = p.evaluate.tune
    return [{"state": s, "form": f, "actions": a, "learning_rate": lr}
            for s, f, a, lr in itertools.product(grid.state, grid.form, grid.actions, grid.learning_rate)]


def _utility(w: np.ndarray, arrays, scale: float, alpha: float) -> tuple[float, float, float]:
    score = float((w * arrays.path_matrix("task")).sum(axis=1).mean())
    cost = float((w * arrays.path_matrix("cost")).sum(axis=1).mean()) / scale
    return score, cost, score - alpha * cost


def _out_of_fold(folds, route_fold) -> tuple[np.ndarray, TreeArrays]:
    """Every train query's routing weights from the fold that held it out, and the arrays in that order."""
    weights = [route_fold(i, fit, val) for i, (fit, val) in enumerate(folds)]
    return np.concatenate(weights), concat_arrays([val for _, val in folds])


def tune_dataset(p: Params, dataset: str) -> dict:
    p = dataset_params(p, dataset)
    split = load_split(p, dataset)
    folds = selection_folds(split.train, p.ppo.selection_folds)
    if not folds:  # ppo.selection_folds is 0, or the train split is too small for that many folds
        return {"dataset": dataset, "skipped": f"no cross-validation: ppo.selection_folds = {p.ppo.selection_folds} "
                                              f"of {split.train.n_queries} train queries leaves a fold empty"}
    alpha = p.reward.alpha
    rows = []
    for cand in candidates(p):
        q = p.override("reward", form=cand["form"], actions=cand["actions"]).override(
            "ppo", state=cand["state"], learning_rate=cand["learning_rate"])
        per_seed = []
        for seed in p.seeds:
            cv = cross_validate(split.train, q.reward, q.ppo, seed=seed, scale=split.scale)
            w, held = _out_of_fold(cv.folds, lambda i, fit, val: PolicyRouter(
                cv.agents[i], split.scale, q.reward, state=q.ppo.state).route(val))
            per_seed.append(_utility(w, held, split.scale, alpha))
        score, cost, util = (mean_std([x[k] for x in per_seed]) for k in range(3))
        rows.append({**cand, "val_score": round(score[0], 4), "val_cost_norm": round(cost[0], 4),
                     "val_utility": round(util[0], 4), "val_utility_std": round(util[1], 4)})
    widest = "ktp_and_fresh" if "ktp_and_fresh" in p.evaluate.tune.actions else "ktp_only"
    q = p.override("reward", actions=widest)
    fixed_w, held = _out_of_fold(folds, lambda i, fit, val: BestFixedPath(alpha).fit(fit, q).route(val))
    fixed = _utility(fixed_w, held, split.scale, alpha)  # a constant policy per fold, for reference
    best = max(rows, key=lambda r: r["val_utility"])
    return {"dataset": dataset, "alpha": alpha, "seeds": p.seeds, "folds": len(folds),
            "train_queries": split.train.n_queries, "rows": rows, "best": {k: best[k] for k in SETTINGS},
            "best_fixed_path": {"val_score": round(fixed[0], 4), "val_cost_norm": round(fixed[1], 4),
                                "val_utility": round(fixed[2], 4)}}


def current_settings(p: Params) -> dict:
    """params.yaml's values of the tuned settings (tune itself never reads them, so changing them to the
    best row leaves the tune stage up to date)."""
    return {"state": p.ppo.state, "form": p.reward.form, "actions": p.reward.actions,
            "learning_rate": p.ppo.learning_rate}


def render_tune(out: dict, current: dict) -> str:
    if "skipped" in out:
        return f"Tune: skipped ({out['skipped']})."
    lines = ["| State | Reward form | Actions | Learning rate | Validation score | Cost (norm.) | "
             "Score - alpha x cost (± std) |", "|---|---|---|---|---|---|---|"]
    for r in sorted(out["rows"], key=lambda r: -r["val_utility"]):
        mark = " **(params.yaml)**" if {k: r[k] for k in SETTINGS} == current else ""
        lines.append(f"| {r['state']}{mark} | {r['form']} | {r['actions']} | {r['learning_rate']:g} | "
                     f"{r['val_score']:.3f} | "
                     f"{r['val_cost_norm']:.3f} | {r['val_utility']:.3f} ± {r['val_utility_std']:.3f} |")
    f = out["best_fixed_path"]
    lines += ["", f"Each row: DER cross-validated over {out['folds']} folds of the train split's {out['train_queries']} "
              f"queries (seeds {out['seeds']}): every query scored by the policy of the fold that held it out, at "
              f"alpha = {out['alpha']:g}; the test split is not used. For reference, the best constant path "
              f"chosen on the other folds scores {f['val_score']:.3f} at cost {f['val_cost_norm']:.3f} "
              f"(utility {f['val_utility']:.3f})."]
    return "\n".join(lines)


def tune(p: Params, datasets: list[str]) -> dict[str, str]:
    tables = {}
    for ds in datasets:
        out = tune_dataset(p, ds)
        folder = results_dir(p, "tune", ds)
        md = render_tune(out, current_settings(p))
        write_json(out, folder / "tune.json")
        atomic_write_bytes(folder / "tune.md", (md + "\n").encode())
        tables[ds] = md
    return tables
