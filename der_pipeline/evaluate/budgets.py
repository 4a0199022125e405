"""The `budgets` stage: DER, the confidence cascade and the random mix, each fitted on the train split to spend
the same budget (a share of the reference expert's cost), judged on the test split.

For each share in ``budget.shares``: DER's alpha is the Lagrange multiplier the train split's folds chose
(router/budget.py; the first seed's folds), and every seed is trained at it; the cascade's pair, signal,
direction and threshold maximise the train score within the budget; the random mix sends the share of
queries that spends the budget to the reference. Claims on the test split: DER against the reference by
non-inferiority (margin ``budget.margin``; with the minimal detectable difference at ``budget.power``),
and DER against the cascade and the random mix by the paired bootstrap. Where two methods route every test
query alike, no test is run: they are the same policy there.

Writes results/budgets/<dataset>/{budgets.json, budgets.md, score_by_share.png, policy-<share>.pt} (the first
seed's policy at each share: what `serve` offers as ``der@<share>``).
"""
from __future__ import annotations

import numpy as np

from der_pipeline.artifacts import budget_policy_path, dataset_params, results_dir
from der_pipeline.config import Params
from der_pipeline.evaluate.common import load_split, summarize
from der_pipeline.evaluate.results import check_budgets
from der_pipeline.evaluate.stats import non_inferiority, paired_bootstrap
from der_pipeline.io import atomic_write_bytes, write_json
from der_pipeline.router.budget import fit_budget, reference_index
from der_pipeline.router.checkpoint import save_policy
from der_pipeline.router.env import obs_dim
from der_pipeline.router.methods import BudgetCascade, PolicyRouter, RandomMix, one_hot_paths
from der_pipeline.router.parallel import train_many
from der_pipeline.router.selection import selection_folds


def _per_query(weights: list[np.ndarray], task: np.ndarray) -> np.ndarray:
    return (np.mean(weights, axis=0) * task).sum(axis=1)


def _compare(a_w, b_w, task, p: Params, seed_offset: int) -> dict:
    if all(np.array_equal(x, y) for x, y in zip(a_w, b_w)) and len(a_w) == len(b_w):
        return {"same": True}
    test = paired_bootstrap(_per_query(a_w, task), _per_query(b_w, task), p.evaluate.bootstrap,
                            p.data.seed + seed_offset)
    return {"same": False, **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in test.items()}}


def budgets_dataset(p: Params, dataset: str) -> dict:
    p = dataset_params(p, dataset)
    split = load_split(p, dataset)
    train, test = split.train, split.test
    task = test.path_matrix("task")
    ref = reference_index(train, p, dataset)
    ref_w = [one_hot_paths(test, ref)]
    ref_cost = float(test.cost1[:, ref].mean())
    base = {"dataset": dataset, "reference": test.experts[ref], "reference_score": round(float(task[:, ref].mean()), 4),
            "reference_cost_gflops": round(ref_cost, 3), "test_queries": test.n_queries,
            "train_queries": train.n_queries, "seeds": p.seeds, "margin": p.budget.margin, "power": p.budget.power}
    if not selection_folds(train, p.ppo.selection_folds):
        return {**base, "skipped": f"{train.n_queries} train queries are too few for the {p.ppo.selection_folds} "
                                   f"folds a budget is fitted on (ppo.selection_folds)", "singles": {}, "rows": []}
    rows = []
    for share in p.budget.shares:
        fit = fit_budget(train, p, dataset, share, p.seeds[0], split.scale)
        q = p.override("reward", alpha=fit.alpha)
        trained = train_many([dict(arrays=train, reward=q.reward, cfg=q.ppo, seed=s, scale=split.scale,
                                   budget_gflops=fit.budget_gflops) for s in p.seeds], p.compute.workers)
        agents, last = [a for a, _ in trained], (trained[0][1] or [{}])[-1]
        save_policy(agents[0], budget_policy_path(p, dataset, share), experts=train.experts, scale=split.scale, p=q,
                    obs_dim=obs_dim(q.ppo.state, train.q_emb.shape[1], train.conf1.shape[-1], train.n_experts),
                    seed=p.seeds[0], cost_share=share, out_of_fold=last.get("out_of_fold"),
                    fixed_path_check=last.get("fixed_path_check"))
        der_w = [PolicyRouter(a, split.scale, q.reward, state=q.ppo.state).route(test) for a in agents]
        cascade = BudgetCascade(fit.budget_gflops, tuple(p.budget.cascade_directions)).fit(train, q)
        mix = RandomMix(ref, fit.budget_gflops).fit(train, q)
        methods = {"der": der_w, "cascade": [cascade.route(test)], "random_mix": [mix.route(test)]}
        summary = {}
        for name, w in methods.items():
            s = summarize(w, test, split.scale, q)
            summary[name] = {"score": s["accuracy"], "score_std": s["accuracy_std"], "ci_low": s["ci_low"],
                             "ci_high": s["ci_high"], "cost_gflops": s["cost_gflops"],
                             "cost_share": round(s["cost_gflops"] / ref_cost, 4), "calls": s["calls"]}
        noninf = (non_inferiority(_per_query(der_w, task), _per_query(ref_w, task), p.budget.margin,
                                  p.evaluate.bootstrap, p.data.seed, p.budget.power)
                  if not all(np.array_equal(w, ref_w[0]) for w in der_w) else {"same": True})
        rows.append({"share": share, "alpha": round(fit.alpha, 6), "feasible_on_train": fit.feasible,
                     "budget_gflops_train": round(fit.budget_gflops, 3),
                     "der_out_of_fold": fit.row()["out_of_fold"], "cascade_chosen": cascade.chosen,
                     "random_mix_chosen": mix.chosen, "methods": summary,
                     "der_vs_reference": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in noninf.items()},
                     "der_vs_cascade": _compare(der_w, methods["cascade"], task, q, 1),
                     "der_vs_random_mix": _compare(der_w, methods["random_mix"], task, q, 2)})
    singles = {e: {"score": round(float(test.task1[:, i].mean()), 4),
                   "cost_share": round(float(test.cost1[:, i].mean()) / ref_cost, 4)}
               for i, e in enumerate(test.experts)}
    return {**base, "singles": singles, "rows": rows}


def _claim(c: dict) -> str:
    if c.get("same"):
        return "same policy on every test query"
    return f"{c['diff']:+.3f} ({c['ci_low']:+.3f} to {c['ci_high']:+.3f}), p {c['p_value']:.3f}"


def noninferiority_text(c: dict, margin: float) -> str:
    """DER against the reference as one line: the verdict, the difference, the lower bound against -margin and
    the minimal detectable difference (the budgets table and the README's headline alike)."""
    if c["same"]:
        return "DER is the reference's own policy here"
    verdict = "non-inferior" if c["non_inferior"] else "not shown non-inferior"
    return (f"{verdict} ({c['diff']:+.3f}, lower bound {c['lower']:+.3f} vs -{margin:g}; "
            f"detectable {c['mdd']:.3f} at {c['power']:.0%} power)")


def render(out: dict) -> str:
    if out.get("skipped"):
        return f"No budgets for {out['dataset']}: {out['skipped']}."
    lines = [f"Reference: {out['reference']} ({out['reference_score']:.3f} at {out['reference_cost_gflops']} GFLOPs a "
             f"query on the {out['test_queries']} test queries); budgets and every fit on the {out['train_queries']} "
             f"train queries.", "",
             "| Budget (share of the reference's cost) | DER (alpha) | confidence cascade | random mix |",
             "|---|---|---|---|"]
    for r in out["rows"]:
        m = r["methods"]
        cells = [f"{m[k]['score']:.3f} at {m[k]['cost_share']:.2f}" for k in ("der", "cascade", "random_mix")]
        lines.append(f"| {r['share']:g} | {cells[0]} ({r['alpha']:g}) | {cells[1]} | {cells[2]} |")
    lines += ["", "| Budget | DER - reference (non-inferiority) | DER - cascade | DER - random mix |",
              "|---|---|---|---|"]
    for r in out["rows"]:
        lines.append(f"| {r['share']:g} | {noninferiority_text(r['der_vs_reference'], out['margin'])} | "
                     f"{_claim(r['der_vs_cascade'])} | {_claim(r['der_vs_random_mix'])} |")
    return "\n".join(lines)


def plot(out: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("der", "DER"), ("cascade", "confidence cascade"), ("random_mix", "random mix")):
        pts = [(r["methods"][key]["cost_share"], r["methods"][key]["score"]) for r in out["rows"]]
        ax.plot(*zip(*pts), marker="o", label=label)
    for name, s in out["singles"].items():
        ax.scatter([s["cost_share"]], [s["score"]], marker="x", color="grey")
        ax.annotate(name, (s["cost_share"], s["score"]), fontsize=6)
    ax.set_xlabel(f"mean cost, share of {out['reference']}'s")
    ax.set_ylabel("test score")
    ax.set_title(f"{out['dataset']}: score at each budget")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def budgets(p: Params, datasets: list[str]) -> dict[str, str]:
    tables = {}
    for ds in datasets:
        out = check_budgets(budgets_dataset(p, ds), f"the budgets stage's results for {ds}")
        folder = results_dir(p, "budgets", ds)
        md = render(out)
        write_json(out, folder / "budgets.json")
        atomic_write_bytes(folder / "budgets.md", (md + "\n").encode())
        if out["rows"]:
            plot(out, folder / "score_by_share.png")
        tables[ds] = md
    return tables
