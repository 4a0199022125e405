import pytest
import yaml

from der_pipeline.config import ConfigError, load_params, params_from_dict

from conftest import REPO


def raw():
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_repo_params_load_and_validate():
    p = load_params(REPO / "params.yaml")
    assert len(p.experts) == 4
    assert p.generation.hops == 2
    assert p.reward.t_max == 2
    assert set(p.data.datasets) == {"boolq", "hotpotqa", "gsm8k", "xsum"} and "boolq" in p.data.active()


@pytest.mark.parametrize("mutate, key", [
    (lambda r: r["reward"].update(alpah=0.1), "reward.alpah"),
    (lambda r: r["reward"].update(signal="rouge"), "reward.signal"),
    (lambda r: r["ppo"].update(num_envs="many"), "ppo.num_envs"),
    (lambda r: r["data"].update(test_fraction=1.5), "data.test_fraction"),
    (lambda r: r["data"]["datasets"].update(mmlu={"sample": 3}), "data.datasets.mmlu"),
    (lambda r: r["experts"][0].pop("params_b"), "experts[0].params_b"),
    (lambda r: r["generation"].update(hops=3), "generation.hops"),
    (lambda r: r["evaluate"].update(round_robin_order=["nobody", "gemma3-270m"]), "evaluate.round_robin_order"),
    (lambda r: r.pop("ppo"), "ppo"),
    (lambda r: r.update(seeds=[1, 1]), "seeds"),
    (lambda r: r["presets"]["der-paper"]["reward"].update(beta="five"), "presets.der-paper.reward.beta"),
    (lambda r: r["presets"]["der-paper"]["reward"].update(tau=1), "presets.der-paper.reward.tau"),
    (lambda r: r["evaluate"]["ablations"].update(reward=["per_step", "nope"]), "evaluate.ablations.reward"),
    (lambda r: r["ppo"].update(state="answer"), "ppo.state"),
])
def test_bad_params_name_the_key(mutate, key):
    r = raw()
    mutate(r)
    with pytest.raises(ConfigError) as err:
        params_from_dict(r)
    assert f"'{key}'" in str(err.value)


def test_overrides_are_validated():
    p = load_params(REPO / "params.yaml")
    assert p.with_overrides("reward", alpha=0.3).reward.alpha == 0.3
    with pytest.raises(ConfigError, match="reward.form"):
        p.with_overrides("reward", form="sometimes")


def test_missing_params_file(tmp_path):
    with pytest.raises(ConfigError, match="no params file"):
        load_params(tmp_path / "nope.yaml")


def test_der_paper_preset_loads_with_the_public_code_settings():
    p = load_params(REPO / "params.yaml")
    d = p.with_preset("der-paper")
    r = d.reward
    assert (r.signal, r.form, r.beta, r.gamma, r.p0, r.cost, r.alpha) == ("bertscore", "per_step", 5.0, 2.0, 0.73,
                                                                          "params", 1.0)
    assert d.ppo == p.ppo and d.experts == p.experts  # only the reward changes
    with pytest.raises(ConfigError, match="no preset 'nope'"):
        p.with_preset("nope")
