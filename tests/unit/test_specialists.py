"""Specialists (params.yaml ``specialists``): validated by name, given their base expert's slot on their dataset
only, keyed by their adapter's hash, and named apart from their base model everywhere the tree is read.
Fast: an adapter file's bytes stand in for a trained one and the fake backend for llama.cpp; the real
fine-tuning, conversion and llama.cpp generation are in test_specialist_real.py."""
import numpy as np
import pytest
from conftest import edited_params, small_source_project
from fakes import FakeBackend

from der_pipeline import artifacts
from der_pipeline.config import ConfigError
from der_pipeline.data.prepare import prepare
from der_pipeline.experts.keys import gguf_fingerprint
from der_pipeline.generate import tree as tree_reading
from der_pipeline.generate.run import generate_dataset
from der_pipeline.router.arrays import TreeArrays, concat_arrays

N = 3
SPECIALIST = "smollm2-135m-sst2-lora"


@pytest.fixture()
def project(tmp_path):
    """Three SST-2 and three BoolQ records as the whole source (SST-2's train file feeds its specialist)."""
    return small_source_project(tmp_path, {"boolq/dev.jsonl": "boolq", "sst2/dev.jsonl": "sst2",
                                           "sst2/train.jsonl": None}, N)


params = edited_params


def write_adapter(p, content: bytes = b"lora" * 1000):
    path = artifacts.adapter_path(p, "sst2")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("edit, key", [
    (lambda r: r["specialists"].update(boolq=r["specialists"]["sst2"]), r"specialists\.boolq"),  # no training file
    (lambda r: r["specialists"]["sst2"].update(expert="llama-3b"), r"specialists\.sst2\.expert"),
    (lambda r: r["specialists"]["sst2"].update(rank=0), r"specialists\.sst2\.rank"),
    (lambda r: r["specialists"]["sst2"].update(epochs=2), r"specialists\.sst2\.epochs"),
    (lambda r: r["specialists"]["sst2"].pop("seed"), r"specialists\.sst2\.seed"),
    (lambda r: r["experts"][0].update(adapter="lora.bin"), r"experts\[0\]\.adapter"),
])
def test_bad_specialist_settings_name_the_key(project, edit, key):
    with pytest.raises(ConfigError, match=key):
        params(project, edit)


def test_the_specialist_takes_its_base_experts_slot_on_its_dataset_only(project):
    p = params(project)
    with pytest.raises(FileNotFoundError, match="der-pipeline finetune"):
        artifacts.dataset_params(p, "sst2")
    adapter = write_adapter(p)
    q = artifacts.dataset_params(p, "sst2")
    assert q.expert_names() == [SPECIALIST, "gemma3-270m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]
    spec, base = q.experts[0], p.experts[0]
    assert spec.adapter == str(adapter) and spec.source == base.source and spec.chat == base.chat
    assert spec.params_b == pytest.approx(base.params_b + 4000 / 2 / 1e9)  # the adapter's f16 parameters
    assert q.evaluate.round_robin_order == [SPECIALIST if n == base.name else n
                                            for n in p.evaluate.round_robin_order]
    assert artifacts.dataset_params(q, "sst2") == q  # idempotent
    assert q.override("reward", alpha=0.2).expert_names()[0] == SPECIALIST  # overrides validate (tune, ablate)
    assert q.with_preset("der-paper").experts == q.experts
    assert artifacts.dataset_params(p, "boolq") is p


def test_the_adapters_hash_is_part_of_the_model_fingerprint(project):
    p = params(project)
    write_adapter(p, b"a" * 100)
    first = artifacts.dataset_params(p, "sst2").experts[0]
    base = gguf_fingerprint(p.experts[0])
    assert gguf_fingerprint(first).startswith(base + "+lora:")
    write_adapter(p, b"b" * 200)
    assert gguf_fingerprint(artifacts.dataset_params(p, "sst2").experts[0]) not in (gguf_fingerprint(first), base)


def test_specialist_nodes_are_made_under_its_name_and_remade_when_the_adapter_changes(project):
    p = params(project)
    prepare(p)
    write_adapter(p, b"a" * 100)
    made = generate_dataset(p, "sst2", FakeBackend(p.generation), progress=False)
    assert made["nodes_generated"] == N * 20
    read = tree_reading.read_tree(p, "sst2")
    paths = set(read.nodes["path"].to_pylist())
    assert SPECIALIST in paths and f"{SPECIALIST}>qwen2.5-coder-1.5b" in paths and "smollm2-135m" not in paths
    # BoolQ keeps the plain base model
    generate_dataset(p, "boolq", FakeBackend(p.generation), progress=False)
    assert "smollm2-135m" in set(tree_reading.read_tree(p, "boolq").nodes["path"].to_pylist())
    # a retrained adapter: only the nodes the specialist answered or refined are made again
    write_adapter(p, b"b" * 200)
    assert tree_reading.read_tree(p, "sst2").prepared.num_rows == 0
    again = generate_dataset(p, "sst2", FakeBackend(p.generation), progress=False)
    # its answer (1), its refinements of every first answer (4) and every refinement of its answer by others (3)
    assert again["nodes_generated"] == N * 8 and again["nodes_skipped"] == N * 12


def toy_arrays(experts):
    q, n, d = 2, len(experts), 3
    z1, z2 = np.zeros((q, n)), np.zeros((q, n, n))
    return TreeArrays(qids=[f"{experts[0]}-{i}" for i in range(q)], experts=experts, q_emb=np.zeros((q, d)),
                      a1_emb=np.zeros((q, n, d)), a2_emb=np.zeros((q, n, n, d)), task1=z1, task2=z2, bert1=z1,
                      bert2=z2, cost1=z1, cost2=z2, lat1=z1, lat2=z2, conf1=np.zeros((q, n, 5)),
                      sec1=np.zeros((q, n, 3)), sec2=np.zeros((q, n, n, 3)))


def test_the_cross_task_mixture_names_a_specialists_slot_by_both():
    mixed = concat_arrays([toy_arrays(["small", "big"]), toy_arrays(["small-sst2-lora", "big"]),
                           toy_arrays(["small", "big"])])
    assert mixed.experts == ["small/small-sst2-lora", "big"] and mixed.n_queries == 6
    with pytest.raises(ValueError, match="same number of experts"):
        concat_arrays([toy_arrays(["small", "big"]), toy_arrays(["a", "b", "c"])])
