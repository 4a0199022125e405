"""The `evaluate` stage: every method on the held-out test split of the same cached tree, averaged over seeds.

Writes results/evaluate/<dataset>/{metrics.json, table.md} and metrics/metrics.json
(for `dvc metrics show`). DER is the `train` stage's policies (one per seed);
the supervised MLP router is trained here per seed; the rest are deterministic.
Claims are checked with a paired bootstrap over the same test queries.
"""
from __future__ import annotations

import numpy as np

from der_pipeline.artifacts import dataset_params, load_train_summary, results_dir
from der_pipeline.config import Params
from der_pipeline.data.sources import answer_type_of
from der_pipeline.evaluate.aggregate import merge_aggregate_json
from der_pipeline.evaluate.common import load_split, public, saved_policies, summarize
from der_pipeline.evaluate.names import expert_of, method_label
from der_pipeline.evaluate.results import EvaluateResults, check_results
from der_pipeline.evaluate.stats import auroc, paired_bootstrap
from der_pipeline.io import atomic_write_bytes, write_json
from der_pipeline.router.methods import CASCADE_SIGNALS, Router, cascade_bound
from der_pipeline.router.registry import baseline_routers, make_router
from der_pipeline.signals.metrics import TASK_METRIC

METRIC_LABEL = {"accuracy": "Accuracy", "f1": "F1", "numeric_match": "Accuracy", "rougeL": "ROUGE-L"}
SECONDARY_LABEL = {"exact_match": "EM", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2"}


def evaluate_dataset(p: Params, dataset: str) -> tuple[EvaluateResults, str]:
    p = dataset_params(p, dataset)
    split = load_split(p, dataset)
    train, test = split.train, split.test
    methods: dict[str, dict] = {}
    roles: dict[str, str] = {}

    def add(method_id: str, routers: list[Router], role: str) -> None:
        methods[method_id] = summarize([r.route(test) for r in routers], test, split.scale, p)
        roles[method_id] = role

    baselines = [r.fit(train, p) for r in baseline_routers(p)]
    for r in baselines:
        if not r.bound:
            add(r.id, [r], "baseline")
    add("mlp", [make_router("mlp", p, seed=s).fit(train, p) for s in p.seeds], "baseline")
    add("der", saved_policies(p, split), "der")
    oracle = next(r for r in baselines if r.bound)
    add(oracle.id, [oracle], "bound")
    for r in baselines:
        if hasattr(r, "chosen"):  # what a fitted baseline settled on (an expert, a path, a cascade)
            methods[r.id]["chosen"] = r.chosen

    best_single = best_single_expert(methods)
    comparisons = []
    for other, why in (("round_robin", ""), (best_single, "the best single expert on the test split"),
                       ("best_fixed", "the best constant path on the train split"),
                       ("cascade", "fitted on the train split"),
                       ("mlp", ""), ("knn", "")):
        test_ = paired_bootstrap(methods["der"]["_per_query"], methods[other]["_per_query"],
                                 p.evaluate.bootstrap, p.data.seed)
        comparisons.append({"a": "der", "b": other, "b_is": why, **{k: round(v, 4) if isinstance(v, float) else v
                                                                    for k, v in test_.items()}})
    out = {"dataset": dataset, "metric": TASK_METRIC[answer_type_of(p, dataset)], "split": "test",
           "test_queries": test.n_queries, "train_queries": train.n_queries, "data_seed": p.data.seed,
           "seeds": p.seeds, "experts": train.experts, "cost_scale_gflops": round(split.scale, 3),
           "round_robin_order": p.evaluate.round_robin_order,
           "der_settings": {"form": p.reward.form, "alpha": p.reward.alpha},
           "best_single": best_single,
           "methods": {k: public(v) for k, v in methods.items()}, "roles": roles, "comparisons": comparisons,
           "signal_auroc": signal_auroc(train), "goal_bound": cascade_bound(train, p.evaluate.goal_cost_share),
           "training": training_summary(p, dataset)}
    out = check_results(out, f"the evaluate stage's results for {dataset}")  # the writer keeps the definition too
    return out, render_table(out) + "\n\n" + render_comparisons(out)


def best_single_expert(methods: dict[str, dict]) -> str:
    """The id of the single expert (``single:<expert>``) with the best test accuracy; a tie goes to the one that
    comes first (the pool's order). Other methods, self-correction included, are not candidates."""
    singles = {k: v for k, v in methods.items() if expert_of(k)}
    if not singles:
        raise ValueError(f"no single-expert method among {sorted(methods)}")
    return max(singles, key=lambda k: singles[k]["accuracy"])


def signal_auroc(train) -> dict:
    """Per expert: how well each confidence signal of its hop-1 answers predicts that the answer is right
    (task score >= 0.5), as AUROC over the train split; and how often it is right. None where the signal is
    constant over the queries or one class is absent. Under 0.5 the signal reads backwards (high where the
    answer is wrong): the budgeted cascade can threshold it that way (budget.cascade_directions)."""
    out = {}
    for i, e in enumerate(train.experts):
        right = train.task1[:, i] >= 0.5
        row = {"right_share": round(float(right.mean()), 4)}
        for name, signal in CASCADE_SIGNALS.items():
            values = signal(train.conf1[:, i])
            # a signal that never varies (the yes/no margin of an answer that is not yes/no) tells nothing
            a = None if np.ptp(values) == 0 else auroc(values, right)
            row[name] = None if a is None else round(a, 4)
        out[e] = row
    return out


def training_summary(p: Params, dataset: str) -> list[dict]:
    """Per seed: the iteration PPO kept by cross-validation, its cross-validated return, and the untrained
    policy's (iteration 0), and which policy was kept (learned, or the best fixed path in its place, with
    the out-of-fold check that decided it), from the train stage's summary."""
    p = dataset_params(p, dataset)
    return [{k: s.get(k) for k in ("seed", "iterations", "selected_iteration", "best_val_return",
                                   "untrained_val_return", "policy", "fixed_path_check")}
            for s in load_train_summary(p, dataset)["seeds"]]


def _fmt_std(m: dict) -> str:
    return f"± {m['accuracy_std']:.3f}" if m["seeds"] > 1 else "(deterministic)"


def render_table(out: dict) -> str:
    label = METRIC_LABEL[out["metric"]]
    methods = list(out["methods"].values())
    extra = [k for k in SECONDARY_LABEL if all(k in m for m in methods)]  # EM for spans, ROUGE-1/2 for summaries
    lines = [f"| Method | {label} (95% CI over queries) | std over {len(out['seeds'])} seeds | "
             + "".join(f"{SECONDARY_LABEL[k]} | " for k in extra)
             + "Avg Calls | Avg Cost (GFLOPs) | Cost (norm.) | BERTScore F1 |",
             "|---|---|---|" + "---|" * len(extra) + "---|---|---|---|"]
    for name, m in out["methods"].items():
        role = out["roles"][name]
        label = method_label(name, out)
        shown = f"*{label}*" if role == "bound" else (f"**{label}**" if role == "der" else label)
        lines.append(f"| {shown} | {m['accuracy']:.3f} ({m['ci_low']:.3f}-{m['ci_high']:.3f}) | {_fmt_std(m)} | "
                     + "".join(f"{m[k]:.3f} | " for k in extra)
                     + f"{m['calls']:.2f} | {m['cost_gflops']:.1f} | {m['cost_norm']:.3f} | {m['bertscore_f1']:.3f} |")
    lines += ["", f"{out['test_queries']} test queries; every router was fitted on the {out['train_queries']} train "
              f"queries only (data seed {out['data_seed']}; PPO / MLP seeds {out['seeds']}). Cost (norm.) divides by "
              f"the priciest expert's mean call ({out['cost_scale_gflops']} GFLOPs)."]
    return "\n".join(lines)


def render_comparisons(out: dict) -> str:
    lines = ["| Claim: DER against | Difference (DER - other) | 95% CI (paired bootstrap) | p-value |",
             "|---|---|---|---|"]
    for c in out["comparisons"]:
        who = method_label(c["b"], out) + (f" ({c['b_is']})" if c["b_is"] else "")
        lines.append(f"| {who} | {c['diff']:+.3f} | {c['ci_low']:+.3f} to {c['ci_high']:+.3f} | "
                     f"{c['p_value']:.3f} |")
    return "\n".join(lines)


def evaluate(p: Params, datasets: list[str]) -> dict[str, str]:
    tables, summary = {}, {}
    for ds in datasets:
        out, md = evaluate_dataset(p, ds)
        folder = results_dir(p, "evaluate", ds)
        write_json(out, folder / "metrics.json")
        atomic_write_bytes(folder / "table.md", (md + "\n").encode())
        tables[ds] = md
        m = out["methods"]
        der = m["der"]
        rr = m["round_robin"]
        summary[ds] = {"test_queries": out["test_queries"], "der_accuracy": der["accuracy"],
                       "der_accuracy_std": der["accuracy_std"], "der_calls": der["calls"],
                       "der_cost_norm": der["cost_norm"], "round_robin_accuracy": rr["accuracy"],
                       "round_robin_cost_norm": rr["cost_norm"],
                       "best_single_accuracy": m[out["best_single"]]["accuracy"],
                       "mlp_accuracy": m["mlp"]["accuracy"], "knn_accuracy": m["knn"]["accuracy"],
                       "oracle_accuracy": m["oracle"]["accuracy"]}
    merge_aggregate_json(p, p.path("metrics") / "metrics.json", summary)
    return tables
