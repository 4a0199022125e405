"""The `tune` stage: which DER settings do best out of fold on the train split.

Every combination of ``evaluate.tune`` (state, reward form, action set, learning rate, the
reward's gamma) is
cross-validated per seed exactly as `train` chooses its iteration (``ppo.selection_folds``
id-hash folds; the iteration kept is the one with the best mean held-out return), then every
train query is routed by the greedy policy of the fold that held it out, and the candidate is
scored by the quantity every method is judged by: the task score minus alpha times the
normalised cost (params' alpha). The test split is never read.

One setting serves every dataset: ``pooled`` ranks the candidates by their out-of-fold utility
averaged over the datasets (each dataset's utility is in its own task score, so the mean is the
sum of every dataset's gain, and a dataset where the candidates tie does not move it); the
defaults in params.yaml are its best row, and `report` shows both tables and says whether
params.yaml still agrees. Writes results/tune/<dataset>/.
"""
from __future__ import annotations

import itertools

import numpy as np

from der_pipeline.artifacts import dataset_params, results_dir
from der_pipeline.config import Params
from der_pipeline.evaluate.common import load_split
from der_pipeline.evaluate.stats import mean_std
from der_pipeline.io import atomic_write_bytes, write_json
from der_pipeline.router.arrays import TreeArrays, concat_arrays
from der_pipeline.router.methods import PolicyRouter
from der_pipeline.router.registry import make_router
from der_pipeline.router.selection import cross_validate, selection_folds

SETTINGS = ("state", "form", "actions", "learning_rate", "gamma")


def candidates(p: Params) -> list[dict]:
    grid = p.evaluate.tune
    return [{"state": s, "form": f, "actions": a, "learning_rate": lr, "gamma": g}
            for s, f, a, lr, g in itertools.product(grid.state, grid.form, grid.actions, grid.learning_rate,
                                                    grid.gamma)]


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
        q = p.override("reward", form=cand["form"], actions=cand["actions"], gamma=cand["gamma"]).override(
            "ppo", state=cand["state"], learning_rate=cand["learning_rate"])
        per_seed = []
        for seed in p.seeds:
            cv = cross_validate(split.train, q.reward, q.ppo, seed=seed, scale=split.scale)
            w, held = _out_of_fold(cv.folds, lambda i, fit, val, cv=cv, q=q: PolicyRouter(
                cv.agents[i], split.scale, q.reward, state=q.ppo.state).route(val))
            per_seed.append(_utility(w, held, split.scale, alpha))
        score, cost, util = (mean_std([x[k] for x in per_seed]) for k in range(3))
        rows.append({**cand, "val_score": round(score[0], 4), "val_cost_norm": round(cost[0], 4),
                     "val_utility": round(util[0], 4), "val_utility_std": round(util[1], 4)})
    widest = "ktp_and_fresh" if "ktp_and_fresh" in p.evaluate.tune.actions else "ktp_only"
    q = p.override("reward", actions=widest)
    fixed_w, held = _out_of_fold(folds, lambda i, fit, val: make_router("best_fixed", q, alpha).fit(fit, q).route(val))
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
            "learning_rate": p.ppo.learning_rate, "gamma": p.reward.gamma}


def render_tune(out: dict, current: dict) -> str:
    if "skipped" in out:
        return f"Tune: skipped ({out['skipped']})."
    lines = ["| State | Reward form | Actions | Learning rate | Reward gamma | Validation score | Cost (norm.) | "
             "Score - alpha x cost (± std) |", "|---|---|---|---|---|---|---|---|"]
    for r in sorted(out["rows"], key=lambda r: -r["val_utility"]):
        mark = " **(params.yaml)**" if {k: r[k] for k in SETTINGS} == current else ""
        lines.append(f"| {r['state']}{mark} | {r['form']} | {r['actions']} | {r['learning_rate']:g} | "
                     f"{r['gamma']:g} | {r['val_score']:.3f} | "
                     f"{r['val_cost_norm']:.3f} | {r['val_utility']:.3f} ± {r['val_utility_std']:.3f} |")
    f = out["best_fixed_path"]
    lines += ["", f"Each row: DER cross-validated over {out['folds']} folds of the train split's "
              f"{out['train_queries']} "
              f"queries (seeds {out['seeds']}): every query scored by the policy of the fold that held it out, at "
              f"alpha = {out['alpha']:g}; the test split is not used. For reference, the best constant path "
              f"chosen on the other folds scores {f['val_score']:.3f} at cost {f['val_cost_norm']:.3f} "
              f"(utility {f['val_utility']:.3f})."]
    return "\n".join(lines)


def _key(row: dict) -> tuple:
    return tuple(row[k] for k in SETTINGS)


def pooled(tuned: dict[str, dict]) -> dict | None:
    """One setting for every dataset: each candidate's out-of-fold utility averaged over the datasets that
    were tuned (skipped ones left out), with its largest shortfall from a dataset's own best row. The best
    is the highest mean, rounded to 4 decimals as shown; a tie goes to the candidate listed first in
    ``evaluate.tune``. None when no dataset was tuned."""
    done = {ds: out for ds, out in sorted(tuned.items()) if "skipped" not in out}
    if not done:
        return None
    keys = [_key(r) for r in next(iter(done.values()))["rows"]]
    for ds, out in done.items():
        if sorted(_key(r) for r in out["rows"]) != sorted(keys):
            raise ValueError(f"tune: {ds}'s candidates differ from the other datasets'; rerun `der-pipeline tune`")
    util = {ds: {_key(r): r["val_utility"] for r in out["rows"]} for ds, out in done.items()}
    rows = []
    for k in keys:
        short = {ds: max(u.values()) - u[k] for ds, u in util.items()}
        worst = max(short, key=short.get)
        rows.append({**dict(zip(SETTINGS, k)),
                     "mean_val_utility": round(float(np.mean([u[k] for u in util.values()])), 4),
                     "worst_shortfall": round(short[worst], 4), "worst_dataset": worst})
    best = max(rows, key=lambda r: r["mean_val_utility"])  # max keeps the first of a tie
    return {"datasets": list(done), "rows": rows, "best": {k: best[k] for k in SETTINGS}}


def render_pooled(out: dict, current: dict) -> str:
    lines = [f"One setting serves every dataset: each candidate's out-of-fold utility (score - alpha x cost), averaged "
             f"over {', '.join(out['datasets'])}; the defaults in params.yaml are "
             + ("its best row." if out["best"] == current else
                f"NOT its best row (the best is {out['best']}): set them and rerun `dvc repro`."), "",
             "| State | Reward form | Actions | Learning rate | Reward gamma | Mean utility over datasets | "
             "Largest shortfall from a dataset's best row |", "|---|---|---|---|---|---|---|"]
    for r in sorted(out["rows"], key=lambda r: -r["mean_val_utility"]):
        mark = " **(params.yaml)**" if {k: r[k] for k in SETTINGS} == current else ""
        lines.append(f"| {r['state']}{mark} | {r['form']} | {r['actions']} | {r['learning_rate']:g} | {r['gamma']:g} | "
                     f"{r['mean_val_utility']:.4f} | {r['worst_shortfall']:.4f} ({r['worst_dataset']}) |")
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
