"""The tree's cache key: a node is reused only when what went into it is unchanged, and readers take only
current nodes. Fast: the fake backend stands in for the engine; the real-model paths are in test_generate_real."""
import json

import pytest
from conftest import edited_params, small_source_project
from fakes import FakeBackend

from der_pipeline import artifacts
from der_pipeline.data.prepare import prepare
from der_pipeline.experts import prompts as prompts_module
from der_pipeline.generate import tree as tree_reading
from der_pipeline.generate.run import generate_dataset
from der_pipeline.tree_store import CorruptShardError, TreeStore

N = 3  # queries per dataset: every node of 3 x 20 is checked


@pytest.fixture()
def project(tmp_path):
    """Three BoolQ and three HotpotQA records as the whole source (so every seed samples the same queries)."""
    return small_source_project(tmp_path, {"boolq/dev.jsonl": "boolq",
                                           "hotpotqa/dev_distractor.jsonl": "hotpotqa"}, N)


params = edited_params


def run(p, dataset, **kw):
    return generate_dataset(p, dataset, FakeBackend(p.generation, **kw), progress=False)


def test_a_rerun_reuses_every_current_node(project):
    p = params(project)
    prepare(p)
    assert run(p, "boolq")["nodes_generated"] == N * 20
    again = run(p, "boolq")
    assert again["nodes_generated"] == 0 and again["nodes_skipped"] == N * 20
    read = tree_reading.read_tree(p, "boolq")
    assert read.prepared.num_rows == N and read.nodes.num_rows == N * 20 and read.stale == {}


def test_another_data_seed_regenerates_the_hotpotqa_nodes_and_readers_skip_the_old(project):
    p = params(project)
    prepare(p)
    run(p, "hotpotqa")
    old = {r["qid"]: r["context"] for r in artifacts.load_prepared(p, "hotpotqa").to_pylist()}
    q = params(project, lambda raw: raw["data"].update(seed=raw["data"]["seed"] + 1))
    prepare(q)  # same queries (all three), distractors picked and ordered by the new seed
    changed = [r["qid"] for r in artifacts.load_prepared(q, "hotpotqa").to_pylist() if old[r["qid"]] != r["context"]]
    assert changed, "the new seed should reorder some context"
    read = tree_reading.read_tree(q, "hotpotqa")  # before regenerating: the old nodes are not read
    assert read.incomplete == len(changed) and sum(read.stale.values()) == 20 * len(changed)
    stats = run(q, "hotpotqa")
    assert stats["nodes_generated"] == 20 * len(changed) and stats["nodes_stale"] == 20 * len(changed)
    assert tree_reading.read_tree(q, "hotpotqa").prepared.num_rows == N


def test_another_chat_flag_regenerates_that_experts_nodes(project):
    p = params(project)
    prepare(p)
    run(p, "boolq")

    def flip(raw):
        for e in raw["experts"]:
            if e["name"] == "gemma3-270m":
                e["chat"] = True
    q = params(project, flip)
    with pytest.raises(ValueError, match="no query has a complete current"):
        tree_reading.load_tree(q, "boolq")
    stats = run(q, "boolq")
    # gemma's own 4 nodes per query (1 answer + 3 refinements of others... ) and every refinement of its answer
    n = 4
    gemma_nodes = 1 + (n - 1) + n  # its answer, its refinements of the 3 others, every refinement of its answer
    assert stats["nodes_generated"] == N * gemma_nodes


def test_an_edited_prompt_regenerates_without_a_version_bump(project, monkeypatch):
    p = params(project)
    prepare(p)
    run(p, "boolq")
    monkeypatch.setitem(prompts_module.INSTRUCTIONS, "yes_no", prompts_module.INSTRUCTIONS["yes_no"] + " Be brief.")
    assert tree_reading.read_tree(p, "boolq").prepared.num_rows < N
    chat_experts = sum(e.chat for e in p.experts)
    # every chat expert's hop-1 node changes, and so does every node refining a changed answer
    assert run(p, "boolq")["nodes_generated"] >= N * chat_experts


def test_a_foreign_backends_nodes_never_replace_stored_ones(project):
    p = params(project)
    prepare(p)
    run(p, "boolq")
    mine = {(r["qid"], r["path"]): r["answer"] for r in tree_reading.read_tree(p, "boolq").nodes.to_pylist()}
    assert run(p, "boolq", name="openai")["nodes_generated"] == N * 20  # an openai server's nodes: other keys
    read = tree_reading.read_tree(p, "boolq")  # params still say llamacpp
    assert {(r["qid"], r["path"]): r["answer"] for r in read.nodes.to_pylist()} == mine
    assert {r["backend"] for r in read.nodes.to_pylist()} == {"llamacpp"}
    assert sum(read.stale.values()) == N * 20  # the other backend's nodes: kept beside, skipped by readers
    assert TreeStore(artifacts.tree_dir(p, "boolq")).read().num_rows == 2 * N * 20


def test_a_corrupt_shard_is_reported_by_readers_and_redone_by_generate(project, monkeypatch):
    import der_pipeline.tree_store as ts

    monkeypatch.setattr(ts, "SHARD_ROWS", 20)  # one query per shard
    p = params(project)
    prepare(p)
    run(p, "boolq")
    store = TreeStore(artifacts.tree_dir(p, "boolq"))
    store.compact()
    shards = store.shards()
    assert len(shards) == N
    shards[0].write_bytes(shards[0].read_bytes()[:100])  # truncated, as in the issue
    before = sorted(x.name for x in store.folder.iterdir())
    with pytest.raises(CorruptShardError, match=shards[0].name):
        tree_reading.read_tree(p, "boolq")
    assert sorted(x.name for x in store.folder.iterdir()) == before
    stats = run(p, "boolq")
    assert stats["corrupt_shards"] == 1 and stats["nodes_generated"] == 20  # one query lost, not the tree
    assert tree_reading.read_tree(p, "boolq").prepared.num_rows == N
    assert list(store.folder.glob("*.corrupt"))


def test_a_failing_backend_keeps_every_finished_node(project):
    p = params(project)
    prepare(p)
    with pytest.raises(RuntimeError, match="on purpose"):
        run(p, "boolq", fail_after=7)
    assert TreeStore(artifacts.tree_dir(p, "boolq")).read().num_rows == 7
    assert run(p, "boolq")["nodes_generated"] == N * 20 - 7


def test_generate_stats_are_json(project):
    """The summary `generate` prints: JSON, and its numbers are the stored nodes' own (the fake backend gives
    every call some prompt tokens and 6 completion tokens)."""
    p = params(project)
    prepare(p)
    stats = json.loads(json.dumps(run(p, "boolq")))
    nodes = tree_reading.read_tree(p, "boolq").nodes.to_pylist()
    prompt_tokens = sum(r["prompt_tokens"] for r in nodes)
    assert len(nodes) == N * 20 and prompt_tokens > 0
    assert {k: v for k, v in stats.items() if k != "seconds"} == {
        "dataset": "boolq", "queries": N, "nodes_total": N * 20, "nodes_skipped": 0, "nodes_stale": 0,
        "corrupt_shards": 0, "nodes_generated": N * 20, "tokens": prompt_tokens + 6 * N * 20,
        "output_tokens": 6 * N * 20}
    assert isinstance(stats["seconds"], float) and stats["seconds"] >= 0
    again = json.loads(json.dumps(run(p, "boolq")))  # a rerun: every node reused, none made
    assert (again["nodes_generated"], again["nodes_skipped"], again["tokens"], again["output_tokens"]) == \
        (0, N * 20, 0, 0)


def test_a_dataset_with_its_own_engine_is_made_and_read_under_that_engine(project, monkeypatch):
    """generation.backend_by_dataset: `generate` starts each engine once and gives each dataset its own; readers
    take a dataset's nodes only under the engine params name for it."""
    from der_pipeline.generate import run as run_module

    started = []

    def fake_engine(cfg, name=None):
        started.append(name)
        return FakeBackend(cfg, name=name)

    monkeypatch.setattr(run_module, "make_backend", fake_engine)
    p = params(project, lambda r: r["generation"].update(backend_by_dataset={"hotpotqa": "llamaserver"}))
    prepare(p)
    stats = run_module.generate(p, ["boolq", "hotpotqa", "boolq"], progress=False)
    assert started == ["llamacpp", "llamaserver"] and [s["nodes_generated"] for s in stats] == [N * 20, N * 20, 0]
    assert {r["backend"] for r in tree_reading.read_tree(p, "hotpotqa").nodes.to_pylist()} == {"llamaserver"}
    assert {r["backend"] for r in tree_reading.read_tree(p, "boolq").nodes.to_pylist()} == {"llamacpp"}
    plain = params(project)  # without the override, hotpotqa's llama-server nodes are not current
    read = tree_reading.read_tree(plain, "hotpotqa")
    assert read.nodes.num_rows == 0 and sum(read.stale.values()) == N * 20


def test_backend_by_dataset_names_a_bad_dataset_or_engine(project):
    from der_pipeline.config import ConfigError

    with pytest.raises(ConfigError, match=r"generation.backend_by_dataset.mnist"):
        params(project, lambda r: r["generation"].update(backend_by_dataset={"mnist": "vllm"}))
    with pytest.raises(ConfigError, match=r"generation.backend_by_dataset.gsm8k"):
        params(project, lambda r: r["generation"].update(backend_by_dataset={"gsm8k": "ollama"}))


def test_a_complete_tree_never_starts_its_engine(project, monkeypatch, tmp_path):
    """`dvc repro` from committed trees: `generate` finds nothing to make, so an engine that is not installed here
    (GSM8K's llama-server) is never started; a node to make starts it, and its missing binary is a clear error."""
    from der_pipeline.experts.backends import BackendError
    from der_pipeline.generate import run as run_module

    def missing_server(r):
        r["generation"].update(backend_by_dataset={"hotpotqa": "llamaserver"})
        r["generation"]["llamaserver"]["binary"] = str(tmp_path / "no-llama-server")

    p = params(project, missing_server)
    prepare(p)
    with monkeypatch.context() as m:  # the tree made by a stand-in engine under the name 'llamaserver'
        m.setattr(run_module, "make_backend", lambda cfg, name=None: FakeBackend(cfg, name=name))
        run_module.generate(p, ["hotpotqa"], progress=False)
    (stats,) = run_module.generate(p, ["hotpotqa"], progress=False)  # the real make_backend: no binary here
    assert stats["nodes_generated"] == 0 and stats["nodes_skipped"] == N * 20
    store = TreeStore(artifacts.tree_dir(p, "hotpotqa"))
    rows = store.read().to_pylist()
    for shard in store.shards():
        shard.unlink()
    store.append(rows[1:])  # one node gone
    with pytest.raises(BackendError, match="make llama-server"):
        run_module.generate(p, ["hotpotqa"], progress=False)
