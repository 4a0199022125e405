"""The `evaluate` stage: every method on the held-out test split of the same cached tree.

Writes, per dataset, results/<dataset>/{metrics.json, table.md, curve.csv,
cost_accuracy.png}, and metrics/metrics.json (for `dvc metrics show`) and
metrics/curves.csv (for `dvc plots show`) over all datasets.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import time
from pathlib import Path

import numpy as np

from der_pipeline.config import Params
from der_pipeline.data.sources import ANSWER_TYPE
from der_pipeline.io import atomic_write_bytes, write_json
from der_pipeline.router.arrays import TreeArrays, build_arrays, cost_scale, split_arrays
from der_pipeline.router.methods import KNNRouter, PolicyRouter, Router, baseline_routers
from der_pipeline.router.ppo import train_ppo
from der_pipeline.router.train import load_policy, model_dir
from der_pipeline.signals.metrics import TASK_METRIC

METRIC_LABEL = {"accuracy": "Accuracy", "f1": "F1", "numeric_match": "Accuracy", "rougeL": "ROUGE-L"}


def bootstrap_ci(values: np.ndarray, n: int, seed: int) -> tuple[float, float]:
    """Percentile 95% interval of the mean over queries (resampled with replacement)."""
    if n <= 0 or len(values) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n, len(values)))
    means = values[idx].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def method_metrics(w: np.ndarray, test: TreeArrays, scale: float, p: Params) -> dict:
    per_query = (w * test.path_matrix("task")).sum(axis=1)
    lo, hi = bootstrap_ci(per_query, p.evaluate.bootstrap, p.data.seed)
    cost = float((w * test.path_matrix("cost")).sum(axis=1).mean())
    return {
        "accuracy": round(float(per_query.mean()), 4), "ci_low": round(lo, 4), "ci_high": round(hi, 4),
        "bertscore_f1": round(float((w * test.path_matrix("bert")).sum(axis=1).mean()), 4),
        "calls": round(float((w * test.path_matrix("calls")).sum(axis=1).mean()), 3),
        "cost_gflops": round(cost, 2), "cost_norm": round(cost / scale, 4),
        "latency_s": round(float((w * test.path_matrix("latency")).sum(axis=1).mean()), 3),
        "first_expert_share": [round(float(x), 3) for x in _first_expert_share(w, test.n_experts)],
    }


def _first_expert_share(w: np.ndarray, n: int) -> np.ndarray:
    hop1 = w[:, :n]
    hop2 = w[:, n:].reshape(-1, n, n).sum(axis=2)
    return (hop1 + hop2).mean(axis=0)


def _train_variant(train: TreeArrays, p: Params, scale: float, **reward) -> object:
    rp = dataclasses.replace(p.reward, **reward)
    agent, _ = train_ppo(train, rp, p.ppo, scale=scale)
    return agent


def evaluate_dataset(p: Params, dataset: str) -> tuple[dict, str, list[dict]]:
    t0 = time.perf_counter()
    arrays, splits = build_arrays(p, dataset)
    train, test = split_arrays(arrays, splits)
    scale = cost_scale(train)
    results: dict[str, dict] = {}
    roles: dict[str, str] = {}

    routers: list[Router] = baseline_routers(p)
    agent, ckpt = load_policy(model_dir(p, dataset) / "policy.pt")
    if ckpt["experts"] != arrays.experts:
        raise ValueError(f"models/{dataset}/policy.pt was trained for experts {ckpt['experts']}, the tree has "
                         f"{arrays.experts}; rerun `der-pipeline train`")
    der_name = f"DER (agent, {p.reward.form}, alpha={p.reward.alpha:g})"
    routers.append(PolicyRouter(agent, scale, der_name))
    for form in p.evaluate.compare_forms:
        if form != p.reward.form:
            routers.append(PolicyRouter(_train_variant(train, p, scale, form=form), scale,
                                        f"DER (agent, {form}, alpha={p.reward.alpha:g})"))
    for r in routers:
        r.fit(train, p)
        results[r.name] = method_metrics(r.route(test), test, scale, p)
        roles[r.name] = "bound" if r.bound else ("der" if r.name.startswith("DER") else "baseline")
    sc = next(r for r in routers if r.name.startswith("self-correction (best"))
    results[sc.name]["chosen_expert"] = sc.chosen

    curve: list[dict] = []
    for alpha in p.evaluate.alpha_sweep:
        der = PolicyRouter(_train_variant(train, p, scale, alpha=alpha), scale).fit(train, p)
        knn = KNNRouter(alpha).fit(train, p)
        for method, router in (("DER", der), ("supervised kNN", knn)):
            m = method_metrics(router.route(test), test, scale, p)
            curve.append({"dataset": dataset, "method": method, "alpha": alpha, "cost_norm": m["cost_norm"],
                          "cost_gflops": m["cost_gflops"], "accuracy": m["accuracy"], "calls": m["calls"]})
    metric = TASK_METRIC[ANSWER_TYPE[dataset]]
    out = {"dataset": dataset, "metric": metric, "split": "test", "test_queries": test.n_queries,
           "train_queries": train.n_queries, "seed": p.data.seed, "ppo_seed": p.ppo.seed,
           "experts": arrays.experts, "cost_scale_gflops": round(scale, 3), "der_method": der_name,
           "methods": results, "roles": roles, "seconds": round(time.perf_counter() - t0, 2)}
    return out, render_table(out), curve


def render_table(out: dict) -> str:
    label = METRIC_LABEL[out["metric"]]
    lines = [f"| Method | {label} (95% CI) | Avg Calls | Avg Cost (GFLOPs) | Cost (norm.) | BERTScore F1 | Latency (s) |",
             "|---|---|---|---|---|---|---|"]
    for name, m in out["methods"].items():
        shown = f"*{name}*" if out["roles"][name] == "bound" else (f"**{name}**" if out["roles"][name] == "der" else name)
        lines.append(f"| {shown} | {m['accuracy']:.3f} ({m['ci_low']:.3f}-{m['ci_high']:.3f}) | {m['calls']:.2f} | "
                     f"{m['cost_gflops']:.1f} | {m['cost_norm']:.3f} | {m['bertscore_f1']:.3f} | {m['latency_s']:.2f} |")
    lines.append("")
    lines.append(f"{out['test_queries']} test queries (policy trained on {out['train_queries']} train queries), "
                 f"data seed {out['seed']}, PPO seed {out['ppo_seed']}. Cost (norm.) divides by the priciest "
                 f"expert's mean call ({out['cost_scale_gflops']} GFLOPs).")
    return "\n".join(lines)


def plot_curve(out: dict, curve: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for name, m in out["methods"].items():
        role = out["roles"][name]
        marker = {"bound": "*", "der": "D"}.get(role, "o")
        ax.scatter(m["cost_norm"], m["accuracy"], marker=marker, s=60 if role != "baseline" else 30)
        ax.annotate(name, (m["cost_norm"], m["accuracy"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    for method, style in (("DER", "-D"), ("supervised kNN", "--s")):
        pts = sorted((c["cost_norm"], c["accuracy"]) for c in curve if c["method"] == method)
        if pts:
            ax.plot(*zip(*pts), style, label=f"{method} (alpha sweep)", alpha=0.7)
    ax.set_xlabel("average cost per query (normalised: priciest expert's mean call = 1)")
    ax.set_ylabel(METRIC_LABEL[out["metric"]])
    ax.set_title(f"{out['dataset']}: quality against cost, {out['test_queries']} test queries")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _csv(rows: list[dict]) -> bytes:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return buf.getvalue().encode()


def evaluate(p: Params, datasets: list[str]) -> dict[str, str]:
    results_dir = p.path("results")
    tables, summary, curves = {}, {}, []
    for ds in datasets:
        out, md, curve = evaluate_dataset(p, ds)
        folder = results_dir / ds
        write_json(out, folder / "metrics.json")
        atomic_write_bytes(folder / "table.md", (md + "\n").encode())
        atomic_write_bytes(folder / "curve.csv", _csv(curve))
        plot_curve(out, curve, folder / "cost_accuracy.png")
        tables[ds] = md
        curves += curve
        m = out["methods"]
        der = m[out["der_method"]]
        rr = next(v for k, v in m.items() if k.startswith("round-robin"))
        summary[ds] = {"test_queries": out["test_queries"], "der_accuracy": der["accuracy"], "der_calls": der["calls"],
                       "der_cost_norm": der["cost_norm"], "round_robin_accuracy": rr["accuracy"],
                       "round_robin_cost_norm": rr["cost_norm"],
                       "knn_accuracy": m["supervised router (kNN)"]["accuracy"],
                       "oracle_accuracy": m["oracle (upper bound)"]["accuracy"]}
    write_json(summary, p.path("metrics") / "metrics.json")
    atomic_write_bytes(p.path("metrics") / "curves.csv", _csv(curves))
    return tables
