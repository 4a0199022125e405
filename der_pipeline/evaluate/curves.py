"""The `curves` stage: accuracy against cost for every method with a knob, and the routing papers' metrics.

DER is retrained per seed at every alpha of ``evaluate.alpha_sweep``; the
supervised routers (kNN, MLP per seed) sweep their willingness to pay over the
same values. Fixed methods are single points. From each method's points:
AIQ, APGR, CPT(50%), CPT(80%) (definitions and sources in frontier.py).

The routing goal's price (``goal_operating_point``): alpha is a price, and the
goal (the strongest expert's score at <= 70% of its cost) may be within reach
at another price than the params' one. Which alpha to hold DER to is chosen on
the train split alone, from the out-of-fold operating point of DER's folds'
policies at each alpha; the test split then says whether the goal holds there.
Writes results/curves/<dataset>/{frontier.json, frontier.md, curve.csv,
cost_accuracy.png} and metrics/curves.csv (for `dvc plots`).
"""
from __future__ import annotations

import csv
import io

import numpy as np

from der_pipeline.artifacts import dataset_params, results_dir
from der_pipeline.config import Params
from der_pipeline.data.sources import answer_type_of
from der_pipeline.evaluate.aggregate import merge_aggregate_csv
from der_pipeline.evaluate.common import der_policies, load_split, with_reward
from der_pipeline.evaluate.frontier import aiq, apgr, cpt
from der_pipeline.evaluate.names import expert_of, method_label
from der_pipeline.evaluate.run import METRIC_LABEL
from der_pipeline.evaluate.stats import mean_std, paired_bootstrap
from der_pipeline.io import atomic_write_bytes, write_json
from der_pipeline.router.arrays import TreeArrays
from der_pipeline.router.registry import PRICED, baseline_routers, make_router
from der_pipeline.signals.metrics import TASK_METRIC

SWEPT = ("der", "cascade", "best_fixed", "mlp", "knn")


def _point(w: np.ndarray, test: TreeArrays, scale: float) -> tuple[float, float]:
    return (float((w * test.path_matrix("cost")).sum(axis=1).mean() / scale),
            float((w * test.path_matrix("task")).sum(axis=1).mean()))


def curves_dataset(p: Params, dataset: str) -> tuple[dict, list[dict]]:
    p = dataset_params(p, dataset)
    split = load_split(p, dataset)
    train, test, scale = split.train, split.test, split.scale
    rows: list[dict] = []  # one per (method, alpha, seed)
    knn = make_router("knn", p).fit(train, p)
    mlps = [make_router("mlp", p, seed=s).fit(train, p) for s in p.seeds]
    der_at: dict[float, list] = {}  # alpha -> DER's policies, one per seed
    for alpha in p.evaluate.alpha_sweep:
        ders = der_at[alpha] = der_policies(with_reward(p, alpha=alpha), split)
        for seed, der, mlp in zip(p.seeds, ders, mlps):
            for method, w in (("der", der.route(test)), ("mlp", mlp.route(test, alpha))):
                c, q = _point(w, test, scale)
                rows.append({"dataset": dataset, "method": method, "alpha": alpha, "seed": seed,
                             "cost_norm": round(c, 4), "accuracy": round(q, 4)})
        for method, router in (("knn", None), ("cascade", make_router("cascade", p, alpha)),
                               ("best_fixed", make_router("best_fixed", p, alpha))):
            w = knn.route(test, alpha) if router is None else router.fit(train, p).route(test)
            c, q = _point(w, test, scale)
            rows.append({"dataset": dataset, "method": method, "alpha": alpha, "seed": None,
                         "cost_norm": round(c, 4), "accuracy": round(q, 4)})

    fixed = {}
    for r in baseline_routers(p):
        if r.id in PRICED:  # swept over alpha above
            continue
        r.fit(train, p)
        fixed[r.id] = {"point": _point(r.route(test), test, scale), "bound": r.bound}
    singles = {k: v["point"] for k, v in fixed.items() if expert_of(k)}
    weak_name, strong_name = weak_and_strong(singles)
    weak, strong = singles[weak_name], singles[strong_name]
    c_max = max([r["cost_norm"] for r in rows] + [v["point"][0] for v in fixed.values()])

    def metrics_of(points: list[tuple[float, float]]) -> dict:
        return {"aiq": aiq(points, c_max), "apgr": apgr(points, weak, strong),
                "cpt50": cpt(points, weak, strong, 0.5), "cpt80": cpt(points, weak, strong, 0.8)}

    methods: dict[str, dict] = {}
    for method in SWEPT:
        methods[method] = swept_summary([r for r in rows if r["method"] == method], p.evaluate.alpha_sweep, metrics_of)
    for name, v in fixed.items():
        methods[name] = {**_rounded(metrics_of([v["point"]])), "points": [[round(x, 4) for x in v["point"]]],
                         "bound": v["bound"]}
    out = {"dataset": dataset, "metric": METRIC_LABEL[TASK_METRIC[answer_type_of(p, dataset)]],
           "test_queries": test.n_queries,
           "alpha_sweep": p.evaluate.alpha_sweep, "seeds": p.seeds, "c_max": round(c_max, 4),
           "weak": weak_name, "strong": strong_name,
           "round_robin_order": p.evaluate.round_robin_order, "methods": methods,
           "goal": goal_operating_point(p, split, der_at)}
    return out, rows


def weak_and_strong(singles: dict[str, tuple[float, float]]) -> tuple[str, str]:
    """APGR's and CPT's ends among the single experts' (cost, score) points: the cheapest and the best-scoring
    (a tie goes to the first in the pool's order)."""
    return min(singles, key=lambda k: singles[k][0]), max(singles, key=lambda k: singles[k][1])


def seed_mean_points(rows: list[dict], alphas: list[float]) -> list[tuple[float, float]]:
    """One swept method's curve: at each alpha, the mean over its rows (one per seed) of cost and score."""
    points = []
    for alpha in alphas:
        at = [r for r in rows if r["alpha"] == alpha]
        points.append((float(np.mean([r["cost_norm"] for r in at])), float(np.mean([r["accuracy"] for r in at]))))
    return points


def swept_summary(rows: list[dict], alphas: list[float], metrics_of) -> dict:
    """A swept method's frontier metrics (``metrics_of`` of its seed-mean curve) and, where it has seeds, the std
    across seeds of AIQ and APGR, each seed's own curve scored alone; with the curve's points."""
    mean_pts = seed_mean_points(rows, alphas)
    m = metrics_of(mean_pts)
    seeds = sorted({r["seed"] for r in rows if r["seed"] is not None})
    if seeds:
        per_seed = [metrics_of([(r["cost_norm"], r["accuracy"]) for r in rows if r["seed"] == s]) for s in seeds]
        for key in ("aiq", "apgr"):
            if key in m:
                m[f"{key}_std"] = mean_std([x[key] for x in per_seed])[1]
    return {**_rounded(m), "points": [[round(c, 4), round(q, 4)] for c, q in mean_pts]}


OUT_OF_FOLD_KEYS = ("score", "cost_gflops", "two_calls", "constant_folds")  # CrossValidation.out_of_fold


def goal_operating_point(p: Params, split, der_at: dict[float, list]) -> dict | None:
    """The alpha of the sweep at which to hold DER to the routing goal, chosen on the train split, and the
    test split's verdict there.

    The choice: the strongest expert is the one with the best mean train score (s, at mean cost c_s). At
    each alpha, DER's out-of-fold operating point (score, cost) is the mean over seeds of its folds'
    policies on their held-out folds (``CrossValidation.out_of_fold``, with the share of those policies that
    route every held-out query the same way). Among the alphas whose out-of-fold
    cost is at most evaluate.goal_cost_share x c_s, the one with the highest out-of-fold score is kept (a tie, to 4
    decimals, goes to the lower cost). None where a policy was not cross-validated (``ppo.selection_folds`` < 2);
    no alpha (``alpha`` None) where none keeps the cost within the budget. The verdict: DER's test score (per query,
    the mean over seeds) against the same expert's, with the paired bootstrap of the difference, and DER's
    mean test cost as a share of that expert's."""
    train, test = split.train, split.test
    strong = int(np.argmax(train.task1.mean(axis=0)))
    s_score, s_cost = float(train.task1[:, strong].mean()), float(train.cost1[:, strong].mean())
    oof = {}
    for alpha, routers in der_at.items():
        points = [r.out_of_fold for r in routers]
        if any(pt is None for pt in points):
            return None
        oof[alpha] = {k: float(np.mean([pt[k] for pt in points])) for k in OUT_OF_FOLD_KEYS}
    out = {"strongest": train.experts[strong], "share": p.evaluate.goal_cost_share,
           "train": {"strongest_score": round(s_score, 4), "strongest_cost_gflops": round(s_cost, 2),
                     "der_out_of_fold": {str(a): {k: round(v, 4) for k, v in pt.items()} for a, pt in oof.items()}},
           "alpha": None}
    within = [a for a, pt in oof.items() if pt["cost_gflops"] <= p.evaluate.goal_cost_share * s_cost]
    if not within:
        return out
    alpha = max(within, key=lambda a: (round(oof[a]["score"], 4), -oof[a]["cost_gflops"]))  # as reported
    task, cost = test.path_matrix("task"), test.path_matrix("cost")
    weights = [r.route(test) for r in der_at[alpha]]
    der_q = np.mean([(w * task).sum(axis=1) for w in weights], axis=0)
    der_cost = float(np.mean([(w * cost).sum(axis=1).mean() for w in weights]))
    strong_q, strong_cost = test.task1[:, strong], float(test.cost1[:, strong].mean())
    test_ = paired_bootstrap(der_q, strong_q, p.evaluate.bootstrap, p.data.seed)
    share = der_cost / strong_cost
    out.update(alpha=alpha, test={
        "der_score": round(float(der_q.mean()), 4), "der_cost_gflops": round(der_cost, 2),
        "strongest_score": round(float(strong_q.mean()), 4), "strongest_cost_gflops": round(strong_cost, 2),
        "cost_share": round(share, 4), **{k: round(v, 4) if isinstance(v, float) else v for k, v in test_.items()},
        "met": bool(der_q.mean() >= strong_q.mean() and share <= p.evaluate.goal_cost_share)})
    return out


def _rounded(m: dict) -> dict:
    return {k: (None if v is None or (isinstance(v, float) and np.isnan(v)) else round(float(v), 4) + 0.0)
            for k, v in m.items()}


def render_frontier(out: dict) -> str:
    def f(v, pct=False):
        if v is None:
            return "not reached" if pct else "n/a"
        return f"{v:.0%}" if pct else f"{v:.3f}"

    lines = ["| Method | AIQ | APGR | CPT(50%) | CPT(80%) |", "|---|---|---|---|---|"]
    for name, m in out["methods"].items():
        aiq_s = f(m["aiq"]) + (f" ± {m['aiq_std']:.3f}" if "aiq_std" in m else "")
        apgr_s = f(m["apgr"]) + (f" ± {m['apgr_std']:.3f}" if "apgr_std" in m and m["apgr"] is not None else "")
        label = "DER" if name == "der" else method_label(name, out)
        shown = f"*{label}*" if m.get("bound") else (f"**{label}**" if name == "der" else label)
        lines.append(f"| {shown} | {aiq_s} | {apgr_s} | {f(m['cpt50'], True)} | {f(m['cpt80'], True)} |")
    lines += ["", f"Costs normalised (priciest expert's mean call = 1); AIQ over cost 0..{out['c_max']:.3f}. "
              f"APGR and CPT run from the cheapest single expert ({method_label(out['weak'])}) to the strongest "
              f"({method_label(out['strong'])}); "
              f"CPT is the share of the strongest expert's cost. Swept methods: mean over seeds {out['seeds']} at "
              f"each alpha in {out['alpha_sweep']}; ± is the std of the metric across seeds."]
    return "\n".join(lines)


def plot_frontier(out: dict, rows: list[dict], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.2))
    for name, m in out["methods"].items():
        if name in SWEPT or name == "self_correction_best":  # the latter repeats one expert's point
            continue
        c, q = m["points"][0]
        ax.scatter(c, q, marker="*" if m.get("bound") else "o", s=90 if m.get("bound") else 25, color="grey"
                   if not m.get("bound") else "gold", edgecolors="k", linewidths=0.4, zorder=3)
        ax.annotate(method_label(name, out), (c, q), fontsize=6, xytext=(3, 3), textcoords="offset points")
    strong = out["methods"][out["strong"]]["points"][0]
    oracle = next((m["points"][0] for m in out["methods"].values() if m.get("bound")), None)
    if strong:
        ax.axhline(strong[1], ls=":", color="tab:green", lw=1, label=f"best single expert ({expert_of(out['strong'])})")
    if oracle:
        ax.axhline(oracle[1], ls=":", color="goldenrod", lw=1, label="oracle (upper bound)")
    for method, style in zip(SWEPT, ("-D", "-o", ":v", "--s", "-.^")):
        mine = [r for r in rows if r["method"] == method]
        xs, ys, es = [], [], []
        for alpha in out["alpha_sweep"]:
            at = [r for r in mine if r["alpha"] == alpha]
            xs.append(np.mean([r["cost_norm"] for r in at]))
            ys.append(np.mean([r["accuracy"] for r in at]))
            es.append(np.std([r["accuracy"] for r in at], ddof=1) if len(at) > 1 else 0.0)
        order = np.argsort(xs)
        m = out["methods"][method]
        ax.errorbar(np.array(xs)[order], np.array(ys)[order], yerr=np.array(es)[order], fmt=style, ms=4, capsize=2,
                    alpha=0.8, label=(f"{_swept_label(method)}: AIQ {m['aiq']:.3f}" if m["aiq"] is not None
                                      else _swept_label(method)))
    ax.set_xlabel("average cost per query (normalised: priciest expert's mean call = 1)")
    ax.set_ylabel(out["metric"])
    ax.set_title(f"{out['dataset']}: quality against cost, {out['test_queries']} test queries "
                 f"(alpha sweep, mean ± std over {len(out['seeds'])} seeds)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _swept_label(method_id: str) -> str:
    return "DER" if method_id == "der" else method_label(method_id)


def csv_bytes(rows: list[dict]) -> bytes:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return buf.getvalue().encode()


def curves(p: Params, datasets: list[str]) -> dict[str, str]:
    tables, all_rows = {}, []
    for ds in datasets:
        out, rows = curves_dataset(p, ds)
        folder = results_dir(p, "curves", ds)
        md = render_frontier(out)
        write_json(out, folder / "frontier.json")
        atomic_write_bytes(folder / "frontier.md", (md + "\n").encode())
        atomic_write_bytes(folder / "curve.csv", csv_bytes(rows))
        plot_frontier(out, rows, folder / "cost_accuracy.png")
        tables[ds] = md
        # dvc plots: the seed-mean point of each swept method at each alpha
        for method in SWEPT:
            for (c, q), alpha in zip(out["methods"][method]["points"], p.evaluate.alpha_sweep):
                all_rows.append({"dataset": ds, "method": method, "alpha": alpha, "cost_norm": c, "accuracy": q})
    merge_aggregate_csv(p, p.path("metrics") / "curves.csv", all_rows)
    return tables
