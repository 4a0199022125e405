"""What the results say, as sentences computed from the results JSON (never typed by hand).

The README's status line and its reading of the tables come from here, so that when the tree grows
(more queries, another dataset) a claim that stops being true disappears with the next `report`.
"""
from __future__ import annotations

from der_pipeline.evaluate.names import expert_of, method_label

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




def goal_findings(out: dict, frontier: dict | None = None) -> list[str]:
    """The routing goals, each checked against the numbers: the best fixed path, learning on the validation
    fold, the strongest expert at a fraction of its cost, and AIQ against the cascade and supervised routers."""
    m = out["methods"]
    der = m["der"]
    comp = {c["b"]: c for c in out["comparisons"]}
    lines = []
    fixed = m.get("best_fixed")
    if fixed:
        ok = der["accuracy"] >= fixed["accuracy"] - 0.01 and der["cost_gflops"] <= fixed["cost_gflops"] * 1.0001
        lines.append(f"Best fixed path ({fixed.get('chosen', '?')}, chosen on the train split): "
                     f"{fixed['accuracy']:.3f} at {fixed['cost_gflops']:.0f} GFLOPs; DER "
                     f"{der['accuracy']:.3f} at {der['cost_gflops']:.0f} GFLOPs: "
                     + ("DER matches it (within 0.01) at no more cost." if ok else
                        f"DER misses it (score {der['accuracy'] - fixed['accuracy']:+.3f}, cost "
                        f"{der['cost_gflops'] / fixed['cost_gflops']:.2f}x).")
                     + (f" Paired test: {_vs(comp['best_fixed'])}." if "best_fixed" in comp else "")
                     + (_utility(out, der, fixed) if not ok and der["accuracy"] > fixed["accuracy"] else ""))
    training = [t for t in out.get("training", []) if t.get("untrained_val_return") is not None]
    if training:
        kept = sum(t["best_val_return"] for t in training) / len(training)
        untrained = sum(t["untrained_val_return"] for t in training) / len(training)
        iters = ", ".join(str(t["selected_iteration"]) for t in training)
        lines.append(f"Learning: the kept PPO iterations ({iters} of {training[0]['iterations']}) reach a mean "
                     f"cross-validated return of {kept:.3f}, against {untrained:.3f} for the untrained policy "
                     f"({kept - untrained:+.3f}).")
        fell_back = [t for t in training if t.get("policy") == "best_fixed_path"]
        if fell_back:
            c = fell_back[0]["fixed_path_check"]
            lines.append(f"Fallback: in {len(fell_back)} of {len(training)} seeds the learned policy's out-of-fold "
                         f"utility did not beat the best fixed path's by more than its standard error, so DER "
                         f"uses that path there ({c['path_name']}); the `no-fallback` row of the reward "
                         "ablation is the learned policies alone.")
    best = m[out["best_single"]]
    share = der["cost_gflops"] / best["cost_gflops"]
    c = comp[out["best_single"]]
    goal_share = out["goal_bound"]["budget_share"]  # evaluate.goal_cost_share, as evaluate recorded it
    met = der["accuracy"] >= best["accuracy"] and share <= goal_share
    lines.append(f"Goal (the strongest expert's score at <= {goal_share:.0%} of its cost): "
                 + ("met" if met else "not met") + f": DER {der['accuracy']:.3f} against "
                 f"{best['accuracy']:.3f} for {expert_of(out['best_single'])} ({_vs(c)}), at {share:.0%} of its cost"
                 + ("." if met else _shortfall(der, best, share, goal_share)))
    if frontier and frontier.get("goal"):
        lines.append(_goal_at_price(frontier["goal"]))
    if frontier:
        fm = frontier["methods"]
        aiq = {k: fm[k]["aiq"] for k in ("der", "cascade", "mlp", "knn") if k in fm and fm[k]["aiq"] is not None}
        if "der" in aiq:
            others = {k: v for k, v in aiq.items() if k != "der"}
            beaten = [method_label(k) for k, v in others.items() if aiq["der"] >= v]
            lost = [f"{method_label(k)} {v:.3f}" for k, v in others.items() if aiq["der"] < v]
            lines.append(f"AIQ: DER {aiq['der']:.3f}; " + (f"at least {', '.join(beaten)}" if beaten else "")
                         + ("; " if beaten and lost else "") + (f"below {', '.join(lost)}" if lost else "") + ".")
    auroc = out.get("signal_auroc")
    if auroc and not met:
        def best_auroc(e: str) -> str:
            v = max((v for k, v in auroc[e].items() if k != "right_share" and v is not None), default=None)
            return "n/a (one class only)" if v is None else f"{v:.2f}"

        strong = expert_of(out["best_single"])
        cheaper = [e for e in out["experts"] if m[f"single:{e}"]["cost_gflops"] < best["cost_gflops"]]
        shown = ", ".join(f"{e} {best_auroc(e)}" for e in cheaper) or "none (no cheaper expert)"
        lines.append(f"Signals: the cheaper experts' best confidence AUROC for their own correctness (train split) "
                     f"is {shown}; {strong}'s is {best_auroc(strong)}. "
                     "A cheap answer can only be trusted as far as its confidence separates right from wrong.")
    bound = out.get("goal_bound")
    if bound and not met:
        lines.append(_goal_bound(bound))
    return lines


def _goal_at_price(goal: dict) -> str:
    """The goal at the price the train split chose (curves.py's ``goal_operating_point``), as a sentence."""
    tr, strong = goal["train"], goal["strongest"]
    head = "Goal at a price chosen on the train split"
    if goal["alpha"] is None:
        return (f"{head}: at no alpha of the sweep do DER's folds' policies keep their out-of-fold cost within "
                f"{goal['share']:.0%} of {strong}'s ({tr['strongest_cost_gflops']:.1f} GFLOPs on the train split).")
    pt, t = tr["der_out_of_fold"][str(goal["alpha"])], goal["test"]
    verdict = "met" if t["met"] else "not met"
    gaps = []
    if t["der_score"] < t["strongest_score"]:
        gaps.append(f"{t['strongest_score'] - t['der_score']:.3f} of score short")
    if t["cost_share"] > goal["share"]:
        gaps.append(f"{t['cost_share'] - goal['share']:.0%} of the cost over")
    return (f"{head} (alpha {goal['alpha']:g}: of the prices whose out-of-fold DER cost is within {goal['share']:.0%} "
            f"of {strong}'s, the one with the best out-of-fold score, {pt['score']:.3f} against its "
            f"{tr['strongest_score']:.3f} at {pt['cost_gflops'] / tr['strongest_cost_gflops']:.0%} of its cost, "
            f"{pt['two_calls']:.0%} of queries on two calls, {pt['constant_folds']:.0%} of the folds' policies "
            f"sending every held-out query down one path): {verdict}: on the test split DER {t['der_score']:.3f} "
            f"against {t['strongest_score']:.3f} ({_vs(t)}), at {t['cost_share']:.0%} of its cost"
            + (f" ({' and '.join(gaps)})." if gaps else ".")
            + (" Most of the folds' policies are constant, so that out-of-fold point is a mix of fixed paths, not "
               "a rule that reads the state." if pt["constant_folds"] > 0.5 else ""))


def _goal_bound(bound: dict) -> str:
    """The train-split bound of router/methods.py's ``cascade_bound``, as a sentence."""
    head = (f"Within reach of one signal? On the train split, the best confidence cascade at <= "
            f"{bound['budget_share']:.0%} of {bound['strong']}'s cost ")
    b = bound["best"]
    if b is None:
        return head + "does not exist (no cheaper expert)."
    gap = b["score"] - bound["strong_score"]
    how = (f"({b['first']} first, {b['escalated_share']:.0%} of queries escalated on its {b['signal']}) scores "
           f"{b['score']:.3f} against its {bound['strong_score']:.3f} at {b['cost_share']:.0%} of its cost")
    if gap >= 0:
        return head + how + (": the goal is within the signals' reach on the queries it is fitted on "
                             "(an optimistic bound).")
    return head + how + (f": {-gap:.3f} short even when fitted on the queries it is scored on, "
                         "so the confidence signals alone cannot reach the goal here.")


def _utility(out: dict, der: dict, fixed: dict) -> str:
    """Where DER buys a higher score with more cost, the reward's own trade-off: score - alpha x cost (the cost
    normalised as the reward normalises it), at DER's alpha."""
    alpha = (out.get("der_settings") or {}).get("alpha")
    if alpha is None or "cost_norm" not in der or "cost_norm" not in fixed:
        return ""
    u_der, u_fixed = der["accuracy"] - alpha * der["cost_norm"], fixed["accuracy"] - alpha * fixed["cost_norm"]
    return (f" It pays more for a higher score: score - {alpha:g} x normalised cost is {u_der:.3f} for DER against "
            f"{u_fixed:.3f} for the fixed path.")


def _share(v: float | None) -> str:
    """A share as a percentage; 'n/a' where there was nothing to count (no right, or no wrong, answers)."""
    return "n/a" if v is None else f"{v:.0%}"


def _shortfall(der: dict, best: dict, share: float, goal_share: float) -> str:
    gaps = []
    if der["accuracy"] < best["accuracy"]:
        gaps.append(f"{best['accuracy'] - der['accuracy']:.3f} of score short")
    if share > goal_share:
        gaps.append(f"{share - goal_share:.0%} of the cost over")
    return " (" + " and ".join(gaps) + ")."


def dataset_findings(out: dict, ablations: dict | None = None, frontier: dict | None = None) -> list[str]:
    """One sentence per claim, each with the numbers that back it."""
    m = out["methods"]
    der_name = method_label("der", out)
    der, best = m["der"], m[out["best_single"]]
    rr = m["round_robin"]
    comp = {c["b"]: c for c in out["comparisons"]}
    best_label = expert_of(out["best_single"])
    cheaper = [expert_of(k) for k, v in m.items() if expert_of(k)
               and v["cost_gflops"] < best["cost_gflops"] and v["accuracy"] >= best["accuracy"] - 0.02]
    lines = [f"The strongest single expert is {best_label} ({best['accuracy']:.3f} at "
             f"{best['cost_gflops']:.0f} GFLOPs per query); "
             + (f"{', '.join(cheaper)} come within 0.02 of it for less." if cheaper
                else "no cheaper expert comes within 0.02 of it.")]
    c = comp["round_robin"]
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
    sup = [f"{_verdict(comp[mid])} the {method_label(mid)} ({_vs(comp[mid])})"
           for mid in ("mlp", "knn") if mid in comp]
    if sup:
        lines.append("DER is " + ", and ".join(sup) + ".")
    stop_right, again_wrong = der.get("stop_if_right"), der.get("refine_if_wrong")
    when = [f"it stops on {stop_right:.0%} of its right first answers"] if stop_right is not None else []
    when += [f"makes a second call on {again_wrong:.0%} of its wrong ones"] if again_wrong is not None else []
    lines.append(f"STOP: DER refines {der['refine_rate']:.0%} of the test queries and escalates "
                 f"{der.get('escalate_rate', 0.0):.0%} to a fresh answer"
                 + ("; " + " and ".join(when) + "." if when else "."))  # either is n/a without such answers
    oracle = m.get("oracle")
    if oracle:
        lines.append(f"The oracle reaches {oracle['accuracy']:.3f}: {oracle['accuracy'] - der['accuracy']:+.3f} over "
                     "DER, the room that a perfect router would have on this tree.")
    lines += goal_findings(out, frontier)
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
    states = [(k[1], r) for k, r in rows.items() if k[0] == "state"]
    if states:
        lines.append("State: " + "; ".join(f"{name} {r['accuracy']:.3f} at {r['cost_norm']:.3f} cost"
                                           for name, r in states)
                     + ".")
    ev = ablations.get("bertscore_evidence") or {}
    cuts = [k.removeprefix("wrong_at_or_above_") for k in ev if k.startswith("wrong_at_or_above_")]
    if cuts:
        shares = "; ".join(f"{_share(ev['wrong_at_or_above_' + t])} of wrong and "
                           f"{_share(ev['right_at_or_above_' + t])} "
                           f"of right answers reach {t}" for t in cuts)
        rho = ev.get("spearman_with_task")
        lines.append(f"BERTScore as P (all {ev['nodes']} train nodes): {shares}"
                     + ("." if rho is None else f"; its rank correlation with the task score is {rho:.2f}."))
    return lines


def cross_task_finding(cross: dict) -> str:
    by = cross["methods"]
    one, per = by["der_cross_task"]["all"], by["der_per_task"]["all"]
    singles = {expert_of(k): v["all"]["accuracy"] for k, v in by.items() if expert_of(k)}
    top = max(singles, key=singles.get)
    text = (f"Across tasks: one policy for all tasks scores {one['accuracy']:.3f} overall at {one['cost_gflops']:.0f} "
            f"GFLOPs a query, one policy per task {per['accuracy']:.3f}; the best single expert over all "
            f"{len(cross['datasets'])} test splits is {top} ({singles[top]:.3f}).")
    if "task_aware" in by:
        aware = by["task_aware"]["all"]
        text += (f" The best expert per task, chosen on each train split, scores {aware['accuracy']:.3f} at "
                 f"{aware['cost_gflops']:.0f} GFLOPs: routing by query "
                 f"{'pays' if one['accuracy'] > aware['accuracy'] else 'does not pay'} over routing by task here.")
    return text


def render_findings(outs: list[dict], ablations: dict[str, dict], cross: dict | None = None,
                    frontiers: dict[str, dict] | None = None) -> list[str]:
    lines = ["#### Status and findings", "", "Computed by `der-pipeline report` from the JSON files below.", ""]
    lines += [f"- {status_line(o)}" for o in outs] + [""]
    for o in outs:
        lines += [f"What the {o['dataset']} tables say:", ""]
        lines += [f"- {s}" for s in dataset_findings(o, ablations.get(o["dataset"]),
                                                      (frontiers or {}).get(o["dataset"]))] + [""]
    if cross and "skipped" not in cross:
        lines += [cross_task_finding(cross), ""]
    return lines
