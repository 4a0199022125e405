"""What the results say, as sentences computed from the results JSON (never typed by hand).

The README's status line and its reading of the tables come from here, so that when the tree grows
(more queries, another dataset) a claim that stops being true disappears with the next `report`.
"""
from __future__ import annotations

from der_pipeline.evaluate.run import KNN, MLP, ORACLE, round_robin_name

SIGNIFICANCE = 0.05  # a paired-bootstrap p-value under this is called "significant"


def _verdict(c: dict) -> str:
    if c["p_value"] < SIGNIFICANCE:
        return "significantly " + ("above" if c["diff"] > 0 else "below")
    return "not significantly different from"


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p {p:.3f}"


def _vs(c: dict) -> str:
    return f"{c['diff']:+.3f}, 95% CI {c['ci_low']:+.3f} to {c['ci_high']:+.3f}, {_p(c['p_value'])}"


def status_line(out: dict) -> str:
    n = len(out["experts"])
    return (f"**{out['dataset']}**: {out['train_queries'] + out['test_queries']} queries with complete "
            f"{n + n * n}-node trees ({out['train_queries']} train, {out['test_queries']} test, data seed "
            f"{out['data_seed']}); score: {out['metric']}; DER and MLP numbers are means over seeds {out['seeds']}.")


def dataset_findings(out: dict, ablations: dict | None = None) -> list[str]:
    """One sentence per claim, each with the numbers that back it."""
    m = out["methods"]
    der_name = out["der_method"]
    der, best = m[der_name], m[out["best_single"]]
    rr_name = round_robin_name(m)
    rr = m[rr_name]
    comp = {c["b"]: c for c in out["comparisons"]}
    best_label = out["best_single"].removeprefix("single: ")
    cheaper = [k.removeprefix("single: ") for k, v in m.items() if k.startswith("single: ")
               and v["cost_gflops"] < best["cost_gflops"] and v["accuracy"] >= best["accuracy"] - 0.02]
    lines = [f"The strongest single expert is {best_label} ({best['accuracy']:.3f} at "
             f"{best['cost_gflops']:.0f} GFLOPs per query); "
             + (f"{', '.join(cheaper)} come within 0.02 of it for less." if cheaper
                else "no cheaper expert comes within 0.02 of it.")]
    c = comp[rr_name]
    cost_ratio = der["cost_gflops"] / rr["cost_gflops"]
    aim = der["accuracy"] >= rr["accuracy"] and der["cost_gflops"] < rr["cost_gflops"]
    lines.append(f"{der_name} scores {der['accuracy']:.3f} ± {der['accuracy_std']:.3f} at {der['calls']:.2f} calls "
                 f"and {cost_ratio:.2f}x round-robin's cost; it is {_verdict(c)} round-robin ({_vs(c)}). "
                 f"The proposal's aim, round-robin's accuracy at a lower cost, is "
                 + ("met on the point estimates" + ("." if c["p_value"] < SIGNIFICANCE
                                                    else ", but not significantly.") if aim else "not met."))
    c = comp[out["best_single"]]
    lines.append(f"DER is {_verdict(c)} {best_label} alone ({_vs(c)}) at "
                 f"{der['cost_gflops'] / best['cost_gflops']:.2f}x its cost.")
    sup = [f"{_verdict(comp[name])} the {name} ({_vs(comp[name])})"
           for name in (MLP, KNN) if name in comp]
    if sup:
        lines.append("DER is " + ", and ".join(sup) + ".")
    stop_right = der.get("stop_if_right")
    lines.append(f"STOP: DER refines {der['refine_rate']:.0%} of the test queries"
                 + (f"; it stops on {stop_right:.0%} of its right first answers and refines "
                    f"{der['refine_if_wrong']:.0%} of its wrong ones." if stop_right is not None else "."))
    oracle = m.get(ORACLE)
    if oracle:
        lines.append(f"The oracle reaches {oracle['accuracy']:.3f}: {oracle['accuracy'] - der['accuracy']:+.3f} over "
                     "DER, the room that a perfect router would have on this tree.")
    if ablations:
        lines += _ablation_findings(ablations)
    return lines


def _ablation_findings(ablations: dict) -> list[str]:
    rows = {(table, r["setting"]): r for table, rs in ablations["tables"].items() for r in rs}
    lines = []
    step, term = rows.get(("reward", "per_step")), rows.get(("reward", "terminal"))
    if step and term:
        lines.append(f"Reward form: the per-step form refines {step['refine_rate']:.0%} of queries "
                     f"({step['accuracy']:.3f}); the terminal form, paid once for the final answer, refines "
                     f"{term['refine_rate']:.0%} ({term['accuracy']:.3f} at {term['calls']:.2f} calls).")
    with_answer, query_only = rows.get(("state", "query_answer, per_step")), rows.get(("state", "query, per_step"))
    if with_answer and query_only:
        lines.append(f"State: without the answer in its state DER refines {query_only['refine_rate']:.0%} of "
                     f"queries ({query_only['accuracy']:.3f}), against {with_answer['refine_rate']:.0%} "
                     f"({with_answer['accuracy']:.3f}) with it.")
    ev = ablations.get("bertscore_evidence") or {}
    cuts = [k.removeprefix("wrong_at_or_above_") for k in ev if k.startswith("wrong_at_or_above_")]
    if cuts:
        shares = "; ".join(f"{ev['wrong_at_or_above_' + t]:.0%} of wrong and {ev['right_at_or_above_' + t]:.0%} of "
                           f"right answers reach {t}" for t in cuts)
        lines.append(f"BERTScore as P (all {ev['nodes']} train nodes): {shares}.")
    return lines


def cross_task_finding(cross: dict) -> str:
    by = cross["methods"]
    one, per = by["DER, one policy for all tasks"]["all"], by["DER, one policy per task"]["all"]
    singles = {k.removeprefix("single: "): v["all"]["accuracy"] for k, v in by.items() if k.startswith("single: ")}
    top = max(singles, key=singles.get)
    return (f"Across tasks: one policy for all tasks scores {one['accuracy']:.3f} overall, one policy per task "
            f"{per['accuracy']:.3f}; the best single expert over both test splits is {top} ({singles[top]:.3f}).")


def render_findings(outs: list[dict], ablations: dict[str, dict], cross: dict | None = None) -> list[str]:
    lines = ["#### Status and findings", "", "Computed by `der-pipeline report` from the JSON files below.", ""]
    lines += [f"- {status_line(o)}" for o in outs] + [""]
    for o in outs:
        lines += [f"What the {o['dataset']} tables say:", ""]
        lines += [f"- {s}" for s in dataset_findings(o, ablations.get(o["dataset"]))] + [""]
    if cross and "skipped" not in cross:
        lines += [cross_task_finding(cross), ""]
    return lines
