"""The results JSON of the `evaluate` and `budgets` stages (results/evaluate/<dataset>/metrics.json,
results/budgets/<dataset>/budgets.json), written down once.

The stages write them, and findings, the report and the regression test read them. As with the Parquet tables
(schemas.py), the definition is checked where the file is written and again where it is read, so a reader
never works from a key that the writer renamed, and a hand-edited or truncated file fails with the file's
name and the dotted path of the first bad field instead of a KeyError three modules later.

TypedDicts keep the readers' plain dict access; pydantic checks them (extra keys are refused, so a field
added to the writer must be added here too).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, NotRequired, Required, Union

from pydantic import ConfigDict, TypeAdapter, ValidationError
from typing_extensions import TypedDict

_STRICT = ConfigDict(extra="forbid")


class CascadeChoice(TypedDict):
    """What the confidence cascade settled on, on the train split (router/methods.py)."""
    __pydantic_config__ = _STRICT
    first: str
    then: Union[str, None]
    signal: Union[str, None]
    threshold: Union[float, None]


class MethodMetrics(TypedDict):
    """One method's test-split numbers (evaluate/common.py `summarize`, less the private per-query vector)."""
    __pydantic_config__ = _STRICT
    accuracy: float  # the task score, whatever the metric is called (see EvaluateResults.metric)
    accuracy_std: float
    ci_low: float
    ci_high: float
    bertscore_f1: float
    calls: float
    cost_gflops: float
    cost_gflops_std: float
    cost_norm: float
    latency_s: float
    first_expert_share: list[float]
    refine_rate: float
    escalate_rate: float
    stop_if_right: Union[float, None]
    refine_if_wrong: Union[float, None]
    seeds: int
    exact_match: NotRequired[float]  # schemas.SECONDARY_METRICS, where every test answer has it
    rouge1: NotRequired[float]
    rouge2: NotRequired[float]
    chosen: NotRequired[Union[str, CascadeChoice]]  # what a fitted baseline settled on


class Comparison(TypedDict):
    """A paired bootstrap of DER against another method over the same test queries (evaluate/stats.py)."""
    __pydantic_config__ = _STRICT
    a: str
    b: str
    b_is: str
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    n_queries: int


class FixedPathCheck(TypedDict):
    """The out-of-fold check that decides between the learned policy and the best fixed path."""
    __pydantic_config__ = _STRICT
    gain: float
    se: float
    beats_fixed_path: bool
    path_name: str


class SeedTraining(TypedDict):
    """One PPO seed's model selection, from the train stage's summary."""
    __pydantic_config__ = _STRICT
    seed: int
    iterations: int
    selected_iteration: Union[int, None]
    best_val_return: Union[float, None]
    untrained_val_return: Union[float, None]
    policy: str
    fixed_path_check: Union[FixedPathCheck, None]


class CascadeAtBudget(TypedDict):
    __pydantic_config__ = _STRICT
    first: str
    signal: str
    escalated_share: float
    score: float
    cost_share: float


class GoalBound(TypedDict):
    """The best two-expert cascade under the goal's cost share, found on the train split (an upper bound)."""
    __pydantic_config__ = _STRICT
    strong: str
    strong_score: float
    budget_share: float
    best: Union[CascadeAtBudget, None]


class DerSettings(TypedDict):
    __pydantic_config__ = _STRICT
    form: str
    alpha: float


class EvaluateResults(TypedDict):
    """results/evaluate/<dataset>/metrics.json."""
    __pydantic_config__ = _STRICT
    dataset: str
    metric: Literal["accuracy", "f1", "numeric_match", "rougeL"]
    split: Literal["test"]
    test_queries: int
    train_queries: int
    data_seed: int
    seeds: list[int]
    experts: list[str]
    cost_scale_gflops: float
    round_robin_order: list[str]
    der_settings: DerSettings
    best_single: str
    methods: dict[str, MethodMetrics]
    roles: dict[str, Literal["baseline", "der", "bound"]]
    comparisons: list[Comparison]
    signal_auroc: dict[str, dict[str, Union[float, None]]]
    goal_bound: GoalBound
    training: list[SeedTraining]


class PairedClaim(TypedDict, total=False):
    """DER against another method by the paired bootstrap; only ``same`` where both are one policy."""
    __pydantic_config__ = _STRICT
    same: Required[bool]
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    n_queries: int


class NonInferiority(TypedDict, total=False):
    """DER against the reference: the one-sided lower bound against -margin, and the minimal detectable
    difference at the stated power (evaluate/stats.py ``non_inferiority``); only ``same`` where DER is the
    reference's own policy."""
    __pydantic_config__ = _STRICT
    same: Required[bool]
    diff: float
    margin: float
    n_queries: int
    power: float
    lower: Union[float, None]
    non_inferior: Union[bool, None]
    mdd: Union[float, None]


class BudgetMethod(TypedDict):
    __pydantic_config__ = _STRICT
    score: float
    score_std: float
    ci_low: float
    ci_high: float
    cost_gflops: float
    cost_share: float  # of the reference expert's mean cost on the test split
    calls: float


class BudgetRow(TypedDict):
    """DER, the cascade and the random mix fitted to one budget on the train split, judged on the test split."""
    __pydantic_config__ = _STRICT
    share: float
    alpha: float
    feasible_on_train: bool
    budget_gflops_train: float
    der_out_of_fold: Union[dict[str, Any], None]
    cascade_chosen: dict[str, Any]
    random_mix_chosen: dict[str, Any]
    methods: dict[Literal["der", "cascade", "random_mix"], BudgetMethod]
    der_vs_reference: NonInferiority
    der_vs_cascade: PairedClaim
    der_vs_random_mix: PairedClaim


class SingleAtBudget(TypedDict):
    __pydantic_config__ = _STRICT
    score: float
    cost_share: float


class BudgetResults(TypedDict):
    """results/budgets/<dataset>/budgets.json."""
    __pydantic_config__ = _STRICT
    dataset: str
    reference: str
    reference_score: float
    reference_cost_gflops: float
    test_queries: int
    train_queries: int
    seeds: list[int]
    margin: float
    power: float
    skipped: NotRequired[str]  # why no budget was fitted (a train split too small for its folds)
    singles: dict[str, SingleAtBudget]
    rows: list[BudgetRow]


_ADAPTER = TypeAdapter(EvaluateResults)
_BUDGETS = TypeAdapter(BudgetResults)


class ResultsError(ValueError):
    """A results file that does not match its definition."""


def _dotted(loc: tuple) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def _checked(adapter: TypeAdapter, obj: Any, source: str, stage: str):
    try:
        return adapter.validate_python(obj, strict=False)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ResultsError(f"{source}: {_dotted(first['loc'])}: {first['msg']} "
                           f"({exc.error_count()} problem(s); the file does not match "
                           f"der_pipeline/evaluate/results.py: rerun `der-pipeline {stage}`)") from None


def _json(path: Path, stage: str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{path}: not JSON ({exc}); rerun `der-pipeline {stage}`") from None


def check_results(obj: Any, source: str) -> EvaluateResults:
    """``obj`` checked against EvaluateResults (and that every method in ``roles``, ``best_single`` and the
    comparisons exists); ``source`` names the file in the error."""
    out = _checked(_ADAPTER, obj, source, "evaluate")
    methods = set(out["methods"])
    named = {out["best_single"], *out["roles"], *(c[k] for c in out["comparisons"] for k in ("a", "b"))}
    if missing := sorted(named - methods):
        raise ResultsError(f"{source}: methods: no entry for {missing}, which roles, best_single or the "
                           f"comparisons name")
    return out


def read_results(path: Path) -> EvaluateResults:
    """One results/evaluate/<dataset>/metrics.json, checked."""
    return check_results(_json(path, "evaluate"), str(path))


def check_budgets(obj: Any, source: str) -> BudgetResults:
    """``obj`` checked against BudgetResults; ``source`` names the file in the error."""
    return _checked(_BUDGETS, obj, source, "budgets")


def read_budgets(path: Path) -> BudgetResults:
    """One results/budgets/<dataset>/budgets.json, checked."""
    return check_budgets(_json(path, "budgets"), str(path))
