import re

import pytest
import yaml
from conftest import REPO

from der_pipeline.config import ConfigError, load_params, params_from_dict


def raw():
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_repo_params_load_and_validate():
    p = load_params(REPO / "params.yaml")
    assert len(p.experts) == 4
    assert (set(p.data.datasets) == {"boolq", "hotpotqa", "gsm8k", "xsum", "sst2", "squad"}
            and "boolq" in p.data.active())


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


def _params_text_with(tmp_path, edit):
    """The repository's params.yaml as text, with ``edit(lines)`` applied, written to tmp_path (keys as written)."""
    lines = (REPO / "params.yaml").read_text().splitlines()
    edit(lines)
    path = tmp_path / "params.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _line_of(lines, start):
    return next(i for i, ln in enumerate(lines) if ln.startswith(start))


@pytest.mark.parametrize("where, start, dup, dotted", [
    ("reward", "  alpha:", "  alpha: 5.0", "reward.alpha"),  # the case: the last value silently won
    ("ppo", "  gamma:", "  gamma: 0.5", "ppo.gamma"),
    ("data", "    boolq:", "    boolq: {sample: 3}", "data.datasets.boolq"),
    ("top", "seeds:", "seeds: [7]", "seeds"),
])
def test_a_key_written_twice_is_refused_with_both_lines(tmp_path, where, start, dup, dotted):
    def edit(lines):
        section = 0 if where == "top" else _line_of(lines, f"{where}:")
        first = section + _line_of(lines[section:], start)
        lines.insert(first + 2, dup)
        edit.lines = (first + 1, first + 3)

    path = _params_text_with(tmp_path, edit)
    with pytest.raises(ConfigError) as err:
        load_params(path)
    msg = str(err.value)
    assert msg.startswith("params: duplicate key") and f"'{dotted}'" in msg
    assert f"line {edit.lines[0]}" in msg and f"line {edit.lines[1]}" in msg


def test_a_key_written_twice_inside_a_list_item_names_its_index(tmp_path):
    def edit(lines):
        i = _line_of(lines, "  - {name: gemma3-270m")
        lines[i] = lines[i].replace("chat: false}", "chat: false, params_b: 9.0}")
        edit.line = i + 1

    with pytest.raises(ConfigError, match=re.escape("duplicate key 'experts[1].params_b'")) as err:
        load_params(_params_text_with(tmp_path, edit))
    assert f"line {edit.line}" in str(err.value)


def test_the_repositorys_params_have_no_duplicate_key():
    load_params(REPO / "params.yaml")  # the stricter loader still reads the real file


@pytest.mark.parametrize("text", [".inf", "-.inf", ".nan", ".NaN", "1.0e+999"])
def test_non_finite_numbers_are_refused_in_the_file(tmp_path, text):
    def edit(lines):
        i = _line_of(lines[_line_of(lines, "reward:"):], "  alpha:") + _line_of(lines, "reward:")
        lines[i] = f"  alpha: {text}"

    with pytest.raises(ConfigError, match=re.escape("bad value for 'reward.alpha': expected a finite number")):
        load_params(_params_text_with(tmp_path, edit))


@pytest.mark.parametrize("mutate, key", [
    (lambda r: r["reward"].update(alpha=float("inf")), "reward.alpha"),
    (lambda r: r["ppo"].update(learning_rate=float("nan")), "ppo.learning_rate"),
    (lambda r: r["experts"][2].update(params_b=float("inf")), "experts[2].params_b"),
    (lambda r: r["evaluate"].update(alpha_sweep=[0.1, float("-inf")]), "evaluate.alpha_sweep[1]"),
    (lambda r: r["presets"]["der-paper"]["reward"].update(p0=float("nan")), "presets.der-paper.reward.p0"),
    (lambda r: r["reward"].update(beta=10 ** 400), "reward.beta"),  # an integer no float holds
])
def test_non_finite_numbers_are_refused_anywhere_a_float_is_read(mutate, key):
    r = raw()
    mutate(r)
    with pytest.raises(ConfigError, match=re.escape(f"'{key}': expected a finite number")):
        params_from_dict(r)


def test_a_non_finite_flag_is_refused_like_the_file():
    p = load_params(REPO / "params.yaml")
    with pytest.raises(ConfigError, match=re.escape("'reward.alpha': expected a finite number")):
        p.override("reward", alpha=float("inf"))  # `train --alpha inf`
