"""Every router by its id: one name-to-class table (after RouteLLM's ``ROUTER_CLS``), used by evaluate, curves,
ablate, cross-task and serve alike, so a router evaluated under an id is served under the same id.

Ids (evaluate/names.py gives their display names): the fitted baselines below by name;
``single:<expert>``, ``self_correction:<expert>`` and ``round_robin`` (fixed paths of the pool); ``der``
is the trained PPO policy, loaded from its checkpoint rather than fitted (evaluate/common.py, serve).
"""
from __future__ import annotations

from der_pipeline.config import Params
from der_pipeline.router.methods import (
    BestFixedPath,
    ConfidenceCascade,
    FixedPath,
    KNNRouter,
    MLPRouter,
    Oracle,
    RandomRouter,
    Router,
    SelfCorrectionBest,
)

# id -> class of the routers fitted on the train split; each takes ``alpha`` (its price of cost; the
# reward's alpha when None) where it has one
ROUTERS: dict[str, type[Router]] = {
    "best_fixed": BestFixedPath,
    "cascade": ConfidenceCascade,
    "knn": KNNRouter,
    "mlp": MLPRouter,
    "random": RandomRouter,
    "self_correction_best": SelfCorrectionBest,
    "oracle": Oracle,
}
PRICED = ("best_fixed", "cascade", "knn", "mlp")  # the routers that trade quality against cost (alpha)


class UnknownRouterError(LookupError):
    pass


def router_ids(p: Params) -> list[str]:
    """Every baseline id evaluate compares DER with, in its table's order."""
    names = p.expert_names()
    return ([f"single:{e}" for e in names] + ["round_robin"] + [f"self_correction:{e}" for e in names]
            + ["self_correction_best", "random", "best_fixed", "cascade", "knn", "oracle"])


def make_router(router_id: str, p: Params, alpha: float | None = None, seed: int | None = None) -> Router:
    """An unfitted router of ``router_id``; ``alpha``: the price of cost of a PRICED router; ``seed``: the MLP's."""
    names = p.expert_names()
    if router_id.startswith("single:") and router_id.removeprefix("single:") in names:
        return FixedPath(router_id, names, [router_id.removeprefix("single:")])
    if router_id.startswith("self_correction:") and router_id.removeprefix("self_correction:") in names:
        e = router_id.removeprefix("self_correction:")
        return FixedPath(router_id, names, [e, e])
    if router_id == "round_robin":
        return FixedPath(router_id, names, p.evaluate.round_robin_order)
    cls = ROUTERS.get(router_id)
    if cls is None:
        raise UnknownRouterError(f"no router {router_id!r}; known: {sorted(ROUTERS)}, single:<expert>, "
                                 f"self_correction:<expert>, round_robin, der")
    if router_id == "mlp":
        return MLPRouter(alpha=alpha, seed=p.seeds[0] if seed is None else seed)
    if router_id in PRICED:
        return cls(alpha=alpha)
    return cls()


def baseline_routers(p: Params) -> list[Router]:
    """The unfitted baselines of evaluate's table (``router_ids``)."""
    return [make_router(i, p) for i in router_ids(p)]


def servable_ids(p: Params) -> list[str]:
    """The ids `serve` can route live besides ``der``: every router that needs only what a request has."""
    return [i for i in [*router_ids(p), "mlp"] if make_router(i, p).live and not i.startswith("single:")]


def fit_live_routers(p: Params, dataset: str, ids: list[str] | None = None) -> dict[str, Router]:
    """The live routers of ``ids`` (default: ``servable_ids``), fitted on the dataset's train split exactly as
    evaluate fits them (its test split is not read), so each routes live as it was evaluated."""
    from der_pipeline.artifacts import dataset_params
    from der_pipeline.router.arrays import split_arrays
    from der_pipeline.router.dataset import build_arrays

    p = dataset_params(p, dataset)
    ids = servable_ids(p) if ids is None else ids
    arrays, splits = build_arrays(p, dataset)
    train, _ = split_arrays(arrays, splits)
    routers = {}
    for router_id in ids:
        router = make_router(router_id, p)
        if not router.live:
            raise UnknownRouterError(f"router {router_id!r} cannot route live (it reads the reference answer)")
        routers[router_id] = router.fit(train, p)
    return routers
