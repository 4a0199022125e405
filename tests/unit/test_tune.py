"""The tune stage on a synthetic tree: every candidate scored out of fold on the whole train split, the best
named; a train split too small for its folds is skipped with its reason."""
import pytest
from conftest import synthetic_tree

from der_pipeline.evaluate import tune as tune_module
from der_pipeline.evaluate.common import DatasetSplit
from der_pipeline.router.arrays import cost_scale


def fake_split(n):
    t = synthetic_tree(n_queries=n, n_experts=3, good=0)
    return DatasetSplit("toy", t, t, cost_scale(t))


@pytest.fixture()
def small(repo_params):
    p = repo_params.override("evaluate", tune={"state": ["confidence", "query_answer"], "form": ["terminal"],
                                               "actions": ["ktp_and_fresh"], "learning_rate": [0.001],
                                               "gamma": [0.0]})
    return p.override("ppo", total_timesteps=4096, num_envs=128).override("seeds", seeds=[1, 2])


def test_tune_scores_every_candidate_out_of_fold(small, monkeypatch):
    monkeypatch.setattr(tune_module, "load_split", lambda p, ds: fake_split(80))
    out = tune_module.tune_dataset(small, "toy")
    assert [r["state"] for r in out["rows"]] == ["confidence", "query_answer"]
    assert out["train_queries"] == 80 and out["folds"] == small.ppo.selection_folds
    best = max(out["rows"], key=lambda r: r["val_utility"])
    assert out["best"] == {k: best[k] for k in tune_module.SETTINGS}
    # expert 0 is always right and the cheapest: the best fixed path on every fold's fit part is it alone
    assert out["best_fixed_path"]["val_score"] == 1.0
    assert out["best_fixed_path"]["val_cost_norm"] == pytest.approx(float(fake_split(80).train.cost1[:, 0].mean())
                                                                    / fake_split(80).scale, abs=1e-4)
    md = tune_module.render_tune(out, tune_module.current_settings(small))
    assert md.count("\n| ") == 2 and "test split is not used" in md  # one row per candidate


def test_tune_skips_a_train_split_too_small_for_its_folds(small, monkeypatch):
    monkeypatch.setattr(tune_module, "load_split", lambda p, ds: fake_split(1))
    out = tune_module.tune_dataset(small, "toy")
    assert "no cross-validation" in out["skipped"]
    assert tune_module.render_tune(out, {}).startswith("Tune: skipped")


def _row(state, gamma, util):
    return {"state": state, "form": "terminal", "actions": "ktp_and_fresh", "learning_rate": 0.003, "gamma": gamma,
            "val_utility": util}


def test_pooled_ranks_candidates_by_their_mean_utility_over_datasets():
    tuned = {"a": {"rows": [_row("confidence", 0.0, 0.70), _row("confidence", 0.5, 0.60)]},
             "b": {"rows": [_row("confidence", 0.5, 0.30), _row("confidence", 0.0, 0.28)]},
             "c": {"skipped": "no cross-validation"}}
    out = tune_module.pooled(tuned)
    assert out["datasets"] == ["a", "b"]  # the skipped one is left out
    by_gamma = {r["gamma"]: r for r in out["rows"]}
    assert by_gamma[0.0]["mean_val_utility"] == pytest.approx(0.49)  # (0.70 + 0.28) / 2
    assert by_gamma[0.5]["mean_val_utility"] == pytest.approx(0.45)
    assert (by_gamma[0.0]["worst_shortfall"], by_gamma[0.0]["worst_dataset"]) == (pytest.approx(0.02), "b")
    assert (by_gamma[0.5]["worst_shortfall"], by_gamma[0.5]["worst_dataset"]) == (pytest.approx(0.10), "a")
    assert out["best"]["gamma"] == 0.0
    current = {k: out["best"][k] for k in tune_module.SETTINGS}
    md = tune_module.render_pooled(out, current)
    assert "are its best row" in md and md.count("**(params.yaml)**") == 1
    assert "NOT its best row" in tune_module.render_pooled(out, {**current, "gamma": 0.5})


def test_pooled_breaks_a_tie_by_the_grid_order_and_refuses_mismatched_grids():
    tied = {"a": {"rows": [_row("query_answer_confidence", 0.0, 0.5), _row("confidence", 0.0, 0.5)]}}
    assert tune_module.pooled(tied)["best"]["state"] == "query_answer_confidence"
    assert tune_module.pooled({"a": {"skipped": "x"}}) is None
    with pytest.raises(ValueError, match="b's candidates differ"):
        tune_module.pooled({"a": {"rows": [_row("confidence", 0.0, 0.5)]},
                            "b": {"rows": [_row("confidence", 0.5, 0.5)]}})
