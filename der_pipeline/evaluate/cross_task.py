"""The `cross_task` stage: one DER policy trained on the mixture of several datasets' train splits.

The proposal's claim is that routing pays because no single small model is best
on every task. Here one policy (per seed) learns from the pooled train splits
of ``evaluate.cross_task`` and is evaluated on each dataset's test split and on
all of them pooled, beside each dataset's own policy (the `train` stage's) and
each single expert, the best single expert per task chosen on that task's train
split (``task_aware``: a router that knows the task but not the query), and the
cascade and the supervised routers (kNN, MLP) fitted on the same pooled train
split as the one policy. Each dataset's score is its own task metric (accuracy
for BoolQ, F1 for HotpotQA); "all" is the mean over the pooled test queries.
Writes results/cross_task/{metrics.json, table.md}.
"""
from __future__ import annotations

import logging

import numpy as np

from der_pipeline.artifacts import results_dir
from der_pipeline.config import Params
from der_pipeline.evaluate.common import load_split, public, saved_policies, summarize
from der_pipeline.evaluate.names import method_label, single_id
from der_pipeline.io import atomic_write_bytes, write_json
from der_pipeline.router.arrays import concat_arrays, cost_scale
from der_pipeline.router.methods import BestFixedPath, FixedPath, PolicyRouter
from der_pipeline.router.parallel import train_many
from der_pipeline.router.registry import make_router

log = logging.getLogger(__name__)


def cross_task(p: Params) -> str:
    chosen = [d for d in p.evaluate.cross_task if d in p.data.active()]
    folder = results_dir(p, "cross_task")
    if len(chosen) < 2:
        out = {"datasets": chosen, "skipped": "needs at least two prepared datasets in evaluate.cross_task"}
        write_json(out, folder / "metrics.json")
        md = f"Cross-task: skipped ({out['skipped']})."
        atomic_write_bytes(folder / "table.md", (md + "\n").encode())
        return md
    splits = {d: load_split(p, d) for d in chosen}
    mixed_train = concat_arrays([s.train for s in splits.values()])
    scale = cost_scale(mixed_train)
    seeing = p.override("ppo", state=p.evaluate.cross_task_query_state)  # the one that sees what the query is
    jobs = [dict(arrays=mixed_train, reward=q.reward, cfg=q.ppo, seed=s, scale=scale) for q in (p, seeing)
            for s in p.seeds]
    agents = [agent for agent, _ in train_many(jobs, p.compute.workers)]
    mixed, mixed_query = agents[:len(p.seeds)], agents[len(p.seeds):]

    names = p.expert_names()
    rows: dict[str, dict[str, dict]] = {}  # method -> dataset (or "all") -> metrics
    per_query: dict[str, list[np.ndarray]] = {}
    methods = {"der_cross_task": lambda split: [PolicyRouter(a, scale, p.reward, "der_cross_task", state=p.ppo.state)
                                                for a in mixed],
               "der_cross_task_query": lambda split: [PolicyRouter(a, scale, p.reward, "der_cross_task_query",
                                                                   state=seeing.ppo.state) for a in mixed_query],
               "der_per_task": lambda split: saved_policies(p, split)}
    methods.update({single_id(e): (lambda split, e=e: [FixedPath(single_id(e), names, [e])]) for e in names})
    pooled_cascade = make_router("cascade", p).fit(mixed_train, p)
    pooled_knn = make_router("knn", p).fit(mixed_train, p)
    pooled_mlp = [make_router("mlp", p, seed=s).fit(mixed_train, p) for s in p.seeds]
    methods.update({
        "task_aware": lambda split: [BestFixedPath(singles_only=True).fit(split.train, p)],
        "cascade": lambda split: [pooled_cascade], "knn": lambda split: [pooled_knn], "mlp": lambda split: pooled_mlp})
    for method, make in methods.items():
        rows[method], pooled = {}, []
        for d, split in splits.items():
            m = summarize([r.route(split.test) for r in make(split)], split.test, split.scale, p)
            pooled.append(m["_per_query"])
            rows[method][d] = public(m)
        per_query[method] = pooled
        rows[method]["all"] = pooled_over_tasks(rows[method], dict(zip(splits, pooled)))
    out = {"datasets": chosen, "seeds": p.seeds, "experts": names,
           "train_queries": {d: s.train.n_queries for d, s in splits.items()},
           "test_queries": {d: s.test.n_queries for d, s in splits.items()}, "methods": rows}
    md = render(out)
    write_json(out, folder / "metrics.json")
    atomic_write_bytes(folder / "table.md", (md + "\n").encode())
    return md


def pooled_over_tasks(by_dataset: dict[str, dict], per_query: dict[str, np.ndarray]) -> dict:
    """A method's "all" column: every test query of every dataset counts once, whatever its dataset's size. The
    score is the mean of the pooled per-query scores; calls and cost are the datasets' means weighted by their
    numbers of test queries (``by_dataset``: each dataset's summary; ``per_query``: its per-query scores)."""
    sizes = {d: len(per_query[d]) for d in per_query}
    n = sum(sizes.values())
    return {
        "accuracy": round(float(np.concatenate(list(per_query.values())).mean()), 4),
        "calls": round(sum(by_dataset[d]["calls"] * k for d, k in sizes.items()) / n, 3),
        "cost_gflops": round(sum(by_dataset[d]["cost_gflops"] * k for d, k in sizes.items()) / n, 2),
    }


def render(out: dict) -> str:
    ds = out["datasets"]
    head = "| Method | " + " | ".join(f"{d} score (calls, GFLOPs)" for d in ds) + " | all (calls, GFLOPs) |"
    lines = [head, "|---|" + "---|" * (len(ds) + 1)]
    for method, by in out["methods"].items():
        cells = []
        for d in [*ds, "all"]:
            m = by[d]
            std = f" ± {m['accuracy_std']:.3f}" if m.get("seeds", 1) > 1 else ""
            cells.append(f"{m['accuracy']:.3f}{std} ({m['calls']:.2f}, {m['cost_gflops']:.0f})")
        shown = f"**{method_label(method)}**" if method.startswith("der") else method_label(method)
        lines.append(f"| {shown} | " + " | ".join(cells) + " |")
    lines += ["", "Where the one policy for all tasks goes first, and how often it refines (KTP) or escalates "
              "(a fresh answer), per dataset:", "",
              "| Dataset | " + " | ".join(f"first: {e}" for e in out["experts"]) + " | refines | escalates |",
              "|---|" + "---|" * (len(out["experts"]) + 2)]
    for d in ds:
        m = out["methods"]["der_cross_task"][d]
        lines.append(f"| {d} | " + " | ".join(f"{s:.0%}" for s in m["first_expert_share"]) +
                     f" | {m['refine_rate']:.0%} | {m.get('escalate_rate', 0.0):.0%} |")
    lines += ["", f"One policy per seed {out['seeds']} trained on the pooled train splits "
              f"({', '.join(f'{d} {n}' for d, n in out['train_queries'].items())} queries); evaluated on each test "
              f"split ({', '.join(f'{d} {n}' for d, n in out['test_queries'].items())} queries). Scores are each "
              "dataset's task metric; ± is the std over seeds. The cascade and the supervised routers are fitted "
              "on the same pooled train split; the best expert per task on each task's own train split."]
    return "\n".join(lines)
