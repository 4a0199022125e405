import re

import pytest
import yaml

from der_pipeline.config import ConfigError, load_params, params_from_dict

from conftest import REPO


def raw():
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_repo_params_load_and_validate():
    p = load_params(REPO / "params.yaml")
    assert len(p.experts) == 4
    assert set(p.data.datasets) == {"boolq", "hotpotqa", "gsm8k", "xsum", "sst2", "squad"} and "boolq" in p.data.active()


@pytest.mark.parametrize("mutate, key", [
    (lambda r: r["reward"].update(alpah=0.1), "reward.alpah"),
    (lambda r: r["reward"].update(signal="rouge"), "reward.signal"),
    (lambda r: r["ppo"].update(num_envs="many"), "ppo.num_envs"),
    (lambda r: r["data"].update(test_fraction=1.5), "data.test_fraction"),
    (lambda r: r["data"]["datasets"].update(mmlu={"sample": 3}), "data.datasets.mmlu"),
    (lambda r: r["experts"][0].pop("params_b"), "experts[0].params_b"),
    (lambda r: r["generation"].update(hops=2), "generation.hops"),  # removed: the tree's depth is fixed
    (lambda r: r["reward"].update(t_max=2), "reward.t_max"),
    (lambda r: r["ppo"].update(gamma=1.5), "ppo.gamma"),
    (lambda r: r["ppo"].update(update_epochs=0), "ppo.update_epochs"),
    (lambda r: r["reward"].update(p0=2.0), "reward.p0"),
    (lambda r: r["evaluate"].update(bootstrap=0), "evaluate.bootstrap"),
    (lambda r: r["generation"]["openai"].update(max_retries=-1), "generation.openai.max_retries"),
    (lambda r: r["generation"]["openai"].update(concurrency=0), "generation.openai.concurrency"),
    (lambda r: r["generation"]["llamaserver"].update(slots=0), "generation.llamaserver.slots"),
    (lambda r: r["generation"]["llamaserver"].pop("binary"), "generation.llamaserver.binary"),
    (lambda r: r["generation"]["vllm"].update(device="tpu"), "generation.vllm.device"),
    (lambda r: r["generation"]["ray"].update(workers=0), "generation.ray.workers"),
    (lambda r: r["generation"].update(backend="ollama"), "generation.backend"),
    (lambda r: r["signals"].update(embed_batch_size=0), "signals.embed_batch_size"),
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


# every key that params.yaml holds is required: dropping it fails with its name (no code default stands in)
REQUIRED = ["generation.max_tokens", "ppo.total_timesteps", "ppo.selection_folds", "reward.alpha", "data.seed",
            "signals.embedder", "evaluate.bootstrap", "generation.openai.timeout_s", "experts[1].chat", "seeds",
            "paths.models"]


@pytest.mark.parametrize("key", REQUIRED)
def test_a_missing_required_key_fails_with_its_name(key):
    r = raw()
    *parents, last = key.replace("[1]", ".1").split(".")
    node = r
    for k in parents:
        node = node[int(k)] if k.isdigit() else node[k]
    del node[last]
    with pytest.raises(ConfigError, match=re.escape(f"missing key '{key}'")):
        params_from_dict(r)


def test_overrides_are_validated_like_the_file():
    p = load_params(REPO / "params.yaml")
    assert p.override("reward", alpha=0.3).reward.alpha == 0.3
    with pytest.raises(ConfigError, match="reward.form"):
        p.override("reward", form="sometimes")
    with pytest.raises(ConfigError, match="'ppo.gamma'"):
        p.override("ppo", gamma=2.0)
    with pytest.raises(ConfigError, match="unknown key 'reward.t_max'"):
        p.override("reward", t_max=3)
    with pytest.raises(ConfigError, match="'seeds'"):
        p.override("seeds", seeds=[])
    q = p.override("generation", openai={"base_url": "http://127.0.0.1:9/v1"})
    assert q.generation.openai.base_url == "http://127.0.0.1:9/v1"
    assert q.generation.openai.timeout_s == p.generation.openai.timeout_s  # nested keys merge


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
