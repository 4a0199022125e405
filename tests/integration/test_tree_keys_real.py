"""The node-key invalidations of test_tree_keys.py, each once with a real engine: in-process llama.cpp and the
two smallest packaged experts, on one BoolQ and one HotpotQA query (a 6-node tree each). The fakes there check
every count on many queries in seconds; these check that the real engine's prompts and keys behave the same."""
import pytest
from conftest import edited_params, small_source_project

from der_pipeline import artifacts
from der_pipeline.data.prepare import prepare
from der_pipeline.experts import prompts as prompts_module
from der_pipeline.experts.backends import LlamaCppBackend
from der_pipeline.generate import tree as tree_reading
from der_pipeline.generate.run import generate_dataset
from der_pipeline.tree_store import CorruptShardError, TreeStore

pytestmark = pytest.mark.timeout(900)  # the tier (slow) is set by the folder: tests/conftest.py
SMALLEST = ["smollm2-135m", "gemma3-270m"]
NODES = 2 + 2 * 2  # a query's tree with two experts


def two_experts(raw):
    raw["experts"] = [e for e in raw["experts"] if e["name"] in SMALLEST]
    raw["specialists"] = {}
    raw["evaluate"]["round_robin_order"] = SMALLEST
    raw["generation"]["backend_by_dataset"] = {}
    raw["generation"]["max_tokens"].update(span=8)


@pytest.fixture(scope="module")
def engine(repo_params):
    backend = LlamaCppBackend(repo_params.generation)  # each model loads once, for every test of the module
    yield backend
    backend.close()


@pytest.fixture()
def project(tmp_path):
    return small_source_project(tmp_path, {"boolq/dev.jsonl": "boolq", "hotpotqa/dev_distractor.jsonl": "hotpotqa"}, 1)


def params(project, edit=None):
    def both(raw):
        two_experts(raw)
        if edit:
            edit(raw)
    return edited_params(project, both)


def answers(p, dataset):
    """path -> answer of the one query's current nodes."""
    return {r["path"]: r["answer"] for r in tree_reading.read_tree(p, dataset).nodes.to_pylist()}


def run(p, dataset, engine):
    return generate_dataset(p, dataset, engine, progress=False)


def test_a_rerun_reuses_every_node_and_another_data_seed_remakes_hotpotqas(project, engine):
    p = params(project)
    prepare(p)
    assert run(p, "hotpotqa", engine)["nodes_generated"] == NODES
    assert run(p, "hotpotqa", engine)["nodes_generated"] == 0
    old = artifacts.load_prepared(p, "hotpotqa").to_pylist()[0]["context"]
    seed = p.data.seed
    while True:  # the next data seed that orders this query's paragraphs otherwise
        seed += 1
        q = params(project, lambda raw, s=seed: raw["data"].update(seed=s))
        prepare(q)
        if artifacts.load_prepared(q, "hotpotqa").to_pylist()[0]["context"] != old or seed > p.data.seed + 20:
            break
    assert artifacts.load_prepared(q, "hotpotqa").to_pylist()[0]["context"] != old
    assert tree_reading.read_tree(q, "hotpotqa").incomplete == 1
    stats = run(q, "hotpotqa", engine)
    assert stats["nodes_generated"] == NODES and stats["nodes_stale"] == NODES
    assert tree_reading.read_tree(q, "hotpotqa").prepared.num_rows == 1


def test_another_chat_flag_remakes_that_experts_nodes(project, engine):
    p = params(project)
    prepare(p)
    run(p, "boolq", engine)

    def flip(raw):
        for e in raw["experts"]:
            if e["name"] == "gemma3-270m":
                e["chat"] = True
    before = answers(p, "boolq")
    q = params(project, flip)
    with pytest.raises(ValueError, match="no query has a complete current"):
        tree_reading.load_tree(q, "boolq")
    made = run(q, "boolq", engine)["nodes_generated"]
    # gemma's answer and both of its refinements; smollm's refinement of gemma's answer only if that answer moved
    assert made == 3 + (answers(q, "boolq")["gemma3-270m"] != before["gemma3-270m"])


def test_an_edited_prompt_remakes_the_nodes(project, engine, monkeypatch):
    p = params(project)
    prepare(p)
    run(p, "boolq", engine)
    before = answers(p, "boolq")
    monkeypatch.setitem(prompts_module.INSTRUCTIONS, "yes_no", prompts_module.INSTRUCTIONS["yes_no"] + " Be brief.")
    assert tree_reading.read_tree(p, "boolq").prepared.num_rows == 0
    made = run(p, "boolq", engine)["nodes_generated"]
    # the chat expert's answer and both of its refinements (its prompt holds the instruction; the completion
    # expert's does not); the completion expert's refinement of it only if its answer moved
    assert made == 3 + (answers(p, "boolq")["smollm2-135m"] != before["smollm2-135m"])


def test_a_corrupt_shard_is_reported_and_remade(project, engine):
    p = params(project)
    prepare(p)
    run(p, "boolq", engine)
    store = TreeStore(artifacts.tree_dir(p, "boolq"))
    store.compact()
    (shard,) = store.shards()
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(CorruptShardError, match=shard.name):
        tree_reading.read_tree(p, "boolq")
    stats = run(p, "boolq", engine)
    assert stats["corrupt_shards"] == 1 and stats["nodes_generated"] == NODES
    assert tree_reading.read_tree(p, "boolq").nodes.num_rows == NODES
