"""Display names of the routing methods, for the renderers only.

Results files key every method by a stable id; only tables, plots and the README
show names. Ids:

    single:<expert>            one expert answers           self_correction:<expert>   it refines itself
    round_robin                the evaluate.round_robin_order path
    self_correction_best       the self-refinement best on the train split
    random, knn, mlp, oracle   baselines and the upper bound
    best_fixed, cascade        the best constant path, and a FrugalGPT / AutoMix-style confidence cascade
    der                        the trained DER policy (params' reward)
    der_cross_task, der_per_task   one policy for all tasks / one per task (the cross-task table)
    der_cross_task_query       the one policy for all tasks that also sees the query's answer type
    task_aware                 the cross-task table's best single expert per task, chosen on its train split
"""
from __future__ import annotations

FIXED = {
    "self_correction_best": "self-correction (best on train)",
    "random": "random",
    "best_fixed": "best fixed path (on train)",
    "cascade": "confidence cascade",
    "knn": "supervised router (kNN)",
    "mlp": "supervised router (MLP)",
    "oracle": "oracle (upper bound)",
    "task_aware": "best expert per task (on its train split)",
    "der_cross_task": "DER, one policy for all tasks",
    "der_cross_task_query": "DER, one policy for all tasks, seeing the answer type",
    "der_per_task": "DER, one policy per task",
}


def single_id(expert: str) -> str:
    return f"single:{expert}"


def expert_of(method_id: str) -> str | None:
    """The expert of a ``single:<expert>`` id, else None."""
    return method_id.removeprefix("single:") if method_id.startswith("single:") else None


def method_label(method_id: str, out: dict | None = None) -> str:
    """The name a reader sees. ``out`` (a results file) supplies the round-robin order and DER's settings."""
    out = out or {}
    if method_id in FIXED:
        return FIXED[method_id]
    if method_id.startswith("single:"):
        return f"single: {expert_of(method_id)}"
    if method_id.startswith("self_correction:"):
        return f"self-correction: {method_id.removeprefix('self_correction:')}"
    if method_id == "round_robin":
        order = out.get("round_robin_order")
        return f"round-robin ({' > '.join(order)})" if order else "round-robin"
    if method_id == "der":
        s = out.get("der_settings")
        return f"DER (agent, {s['form']}, alpha={s['alpha']:g})" if s else "DER"
    return method_id
