"""`der-pipeline ask`: run a trained DER policy live through the real experts, step by step (router/live.py)."""
from __future__ import annotations

from collections.abc import Callable

from der_pipeline.artifacts import dataset_params, policy_path
from der_pipeline.config import Params
from der_pipeline.data.sources import answer_type_of
from der_pipeline.router.live import LiveRouter, Policy, Step
from der_pipeline.signals.metrics import TASK_METRIC


def ask(p: Params, dataset: str, question: str, context: str, echo: Callable[[str], None] = print) -> dict:
    p = dataset_params(p, dataset)
    policy = Policy.load(policy_path(p, dataset), p.expert_names())
    live = LiveRouter(p, answer_type_of(p, dataset))
    echo(policy.describe())
    cost = 0.0

    def show(t: int, probs: dict[str, float], step: Step | None) -> None:
        nonlocal cost
        echo(f"step {t}: P(action) " + ", ".join(f"{a}={pr:.2f}" for a, pr in probs.items()))
        if step is None:
            echo("  -> STOP")
            return
        cost += step.cost_gflops
        how = "refines" if step.action == "refine" else ("answers afresh" if t > 0 else "answers")
        echo(f"  -> {step.expert} {how} ({step.latency_s:.1f} s): {step.answer!r}")
        echo(f"     confidence: {show_confidence(step.confidence)}")
        echo(f"     cost so far {cost:.1f} GFLOPs")

    try:
        routed = live.route(policy, question, context, on_step=show)
    finally:
        live.close()
    if routed.context_trimmed_from is not None:
        echo(f"note: context trimmed from {routed.context_trimmed_from} to {len(routed.context)} characters at a "
             f"sentence boundary (data.max_context_chars = {p.data.max_context_chars}), as `prepare` trims passages")
    final = live.parse(routed.answer)
    echo(f"final answer ({TASK_METRIC[live.answer_type]} parser): {final!r}   "
         f"[{len(routed.steps)} calls, {routed.cost_gflops:.1f} GFLOPs, path {routed.path}]")
    return {"steps": [s.__dict__ for s in routed.steps], "final": final, "raw": routed.answer,
            "cost_gflops": routed.cost_gflops, "path": routed.path}


def show_confidence(row: dict | None) -> str:
    if not row or row.get("answer_tokens") is None:
        return "n/a (this backend gives no token probabilities)"
    parts = [f"P(yes) {row['yes_prob']:.2f}"] if row.get("yes_prob") is not None else []
    if row.get("mean_logprob") is not None:
        parts += [f"first token p {row['first_prob']:.2f}", f"mean log-prob {row['mean_logprob']:.2f}",
                  f"min log-prob {row['min_logprob']:.2f}"]
    parts.append(f"{row['answer_tokens']} tokens")
    return ", ".join(parts)
