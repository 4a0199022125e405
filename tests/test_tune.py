"""The tune stage on a synthetic tree: every candidate scored on the validation fold, the best named; a train
split too small for a fold is skipped with its reason."""
import pytest

from der_pipeline.evaluate import tune as tune_module
from der_pipeline.evaluate.common import DatasetSplit
from der_pipeline.router.arrays import cost_scale

from conftest import synthetic_tree


def fake_split(n):
    t = synthetic_tree(n_queries=n, n_experts=3, good=0)
    return DatasetSplit("toy", t, t, cost_scale(t))


@pytest.fixture()
def small(repo_params):
    p = repo_params.override("evaluate", tune={"state": ["confidence", "query_answer"], "form": ["terminal"],
                                               "actions": ["ktp_and_fresh"], "learning_rate": [0.001]})
    return p.override("ppo", total_timesteps=4096, num_envs=128).override("seeds", seeds=[1, 2])


def test_tune_scores_every_candidate_on_the_validation_fold(small, monkeypatch):
    monkeypatch.setattr(tune_module, "load_split", lambda p, ds: fake_split(80))
    out = tune_module.tune_dataset(small, "toy")
    assert [r["state"] for r in out["rows"]] == ["confidence", "query_answer"]
    assert out["fit_queries"] + out["val_queries"] == 80 and out["val_queries"] > 5
    best = max(out["rows"], key=lambda r: r["val_utility"])
    assert out["best"] == {k: best[k] for k in tune_module.SETTINGS}
    # expert 0 is always right and the cheapest: the best fixed path on the fit part is it alone
    assert out["best_fixed_path"]["path"] == "e0" and out["best_fixed_path"]["val_score"] == 1.0
    md = tune_module.render_tune(out, tune_module.current_settings(small))
    assert md.count("\n| ") == 2 and "test split is not used" in md  # one row per candidate


def test_tune_skips_a_train_split_too_small_for_a_fold(small, monkeypatch):
    monkeypatch.setattr(tune_module, "load_split", lambda p, ds: fake_split(1))
    out = tune_module.tune_dataset(small, "toy")
    assert "no validation fold" in out["skipped"]
    assert tune_module.render_tune(out, {}).startswith("Tune: skipped")
