"""DER fitted to a cost budget: the highest score whose mean cost is at most a share of a reference expert's.

A practitioner names a budget ("at most half the strong model's cost"), not an alpha. The budget is a
constraint, so its Lagrangian, score - alpha x cost, is the reward DER already maximises, and alpha is the
multiplier: the smallest alpha whose policy's cost meets the budget spends the most of it (the mean cost of
the optimum only falls as alpha rises). The cost that must meet it is the out-of-fold cost of the policy
that would be kept (the folds' policies, or the best fixed path where the fallback keeps it), measured by
the same K-fold cross-validation on the train split that chooses the iteration, so the test split is never
read, and the bisection stops on the train split's own estimate. Why bisection and not a sweep: the cost
is a step function of alpha (the policy switches paths), and bisection finds the switch that spends the
budget in ``steps`` cross-validations, halving [alpha_low, alpha_high] geometrically (an alpha that
binds can sit anywhere from 1e-3, a tie broken by a hair, to 1).

The reference is fixed before anything is fitted: ``budget.reference``, or with ``auto`` the strongest
single expert on the train split that is not the task's own specialist (a specialist is what a budget is
meant to buy a way to, not the yardstick).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from der_pipeline.config import Params
from der_pipeline.router.arrays import TreeArrays, cost_scale
from der_pipeline.router.selection import cross_validate, fixed_path_check, keeps_learned


def reference_index(train: TreeArrays, p: Params, dataset: str) -> int:
    """The reference expert's index in ``train.experts`` (``budget.reference``; see the module docstring)."""
    if p.budget.reference != "auto":
        names = train.experts
        for i, name in enumerate(names):  # a specialist's slot keeps its base expert's name as a prefix
            if name == p.budget.reference:
                return i
        raise ValueError(f"budget.reference {p.budget.reference!r} is not in the pool {names}")
    candidates = [i for i, name in enumerate(train.experts) if not name.endswith(f"-{dataset}-lora")]
    return max(candidates, key=lambda i: (train.task1[:, i].mean(), -train.cost1[:, i].mean()))


def budget_gflops(train: TreeArrays, reference: int, share: float) -> float:
    return float(share * train.cost1[:, reference].mean())


def kept_point(train: TreeArrays, p: Params, alpha: float, seed: int, scale: float, budget: float) -> dict:
    """The out-of-fold operating point (score, cost_gflops, two_calls) of the policy train_ppo would keep at
    ``alpha`` under ``budget``: the folds' policies, or the best fixed path where the fallback keeps it
    (``selection.keeps_learned``)."""
    reward = dataclasses.replace(p.reward, alpha=alpha)
    cv = cross_validate(train, reward, p.ppo, seed, scale)
    if cv is None:
        raise ValueError(f"a budget needs {p.ppo.selection_folds}-fold cross-validation on the train split "
                         f"({train.n_queries} queries are too few; ppo.selection_folds)")
    check = fixed_path_check(cv, train, reward, scale, p.ppo.state)
    learned = cv.out_of_fold(reward, scale, p.ppo.state)
    if p.ppo.fallback == "best_fixed_path" and not keeps_learned(check, learned, budget):
        return {**check["fixed_out_of_fold"], "policy": "best_fixed_path", "path": check["path_name"]}
    return {**learned, "policy": "learned"}


@dataclass
class BudgetFit:
    share: float
    reference: str
    reference_gflops: float  # the reference's mean cost per query on the train split
    budget_gflops: float
    alpha: float  # the multiplier found: the reward's alpha the policies are trained with
    feasible: bool  # whether some alpha in [0, alpha_high] meets the budget out of fold
    out_of_fold: dict  # the kept policy's out-of-fold operating point at ``alpha``
    searched: list[dict] = field(default_factory=list)  # every alpha tried, with its out-of-fold point

    def row(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in dataclasses.asdict(self).items()}


def fit_budget(train: TreeArrays, p: Params, dataset: str, share: float, seed: int,
               scale: float | None = None) -> BudgetFit:
    """The smallest alpha (0, or in [budget.alpha_low, budget.alpha_high]) whose kept policy's out-of-fold
    mean cost is at most ``share`` of the reference's (``bisect_alpha``), with the first seed's folds."""
    scale = cost_scale(train) if scale is None else scale
    ref = reference_index(train, p, dataset)
    ref_cost = float(train.cost1[:, ref].mean())
    budget = share * ref_cost
    searched: list[dict] = []

    def at(alpha: float) -> dict:
        point = kept_point(train, p, alpha, seed, scale, budget)
        searched.append({"alpha": round(alpha, 6), **{k: (round(v, 4) if isinstance(v, float) else v)
                                                      for k, v in point.items()}})
        return point

    alpha, point, feasible = bisect_alpha(at, budget, p.budget.alpha_low, p.budget.alpha_high, p.budget.steps)
    return BudgetFit(share, train.experts[ref], ref_cost, budget, alpha, feasible, point, searched)


def bisect_alpha(point_at, budget: float, low: float, high: float, steps: int) -> tuple[float, dict, bool]:
    """(alpha, its point, feasible): the smallest alpha whose ``point_at(alpha)["cost_gflops"]`` is within
    ``budget``: 0 where the budget does not bind, else found between ``low`` and ``high`` by ``steps``
    geometric halvings (the point's cost must not rise with alpha). ``high`` itself when nothing fits."""
    free = point_at(0.0)
    if free["cost_gflops"] <= budget:  # the budget does not bind: the best score is within it
        return 0.0, free, True
    best = point_at(high)
    if best["cost_gflops"] > budget:
        return high, best, False
    lo_point = point_at(low)
    if lo_point["cost_gflops"] <= budget:
        return low, lo_point, True
    lo, hi = low, high
    for _ in range(steps):
        mid = float(np.sqrt(lo * hi))  # geometric: a budget's alpha can sit anywhere from 1e-3 to 1
        point = point_at(mid)
        if point["cost_gflops"] <= budget:
            hi, best = mid, point
        else:
            lo = mid
    return hi, best, True
