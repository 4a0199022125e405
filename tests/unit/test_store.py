"""The tree store: pure reads, newest copy per node, bounded shards, corrupt shards reported."""
import os
import re
import stat

import pyarrow.parquet as pq
import pytest

from der_pipeline.tree_store import CorruptShardError, TreeStore


def row(qid, path, answer="a", key="k"):
    return dict(qid=qid, path=path, hop=path.count(">") + 1, expert=path.split(">")[-1],
                parent_path=path.split(">")[0] if ">" in path else "", prompt_tokens=10, completion_tokens=2,
                latency_s=0.1, answer=answer, finish_reason="stop", backend="test",
                model_fingerprint="x", node_key=key)


def listing(folder):
    return sorted((p.name, p.stat().st_size) for p in folder.iterdir())


def test_shards_append_dedupe_and_compact(tmp_path):
    store = TreeStore(tmp_path)
    store.append([row("q1", "a"), row("q1", "b")])
    store.append([row("q1", "a>b"), row("q1", "a", answer="newer")])
    t = store.read()
    assert t.num_rows == 3
    assert dict(zip(t["path"].to_pylist(), t["answer"].to_pylist()))["a"] == "newer"
    store.compact()
    assert len(store.shards()) == 1
    assert store.read().num_rows == 3


def test_nodes_under_another_key_are_kept_beside_not_replaced(tmp_path):
    store = TreeStore(tmp_path)
    store.append([row("q1", "a", answer="mine", key="k1")])
    store.append([row("q1", "a", answer="foreign", key="k2")])  # e.g. another backend's node, written later
    t = store.read()
    assert sorted(zip(t["node_key"].to_pylist(), t["answer"].to_pylist())) == [("k1", "mine"), ("k2", "foreign")]
    store.compact()
    assert store.read().num_rows == 2


def test_compaction_bounds_the_shard_size_and_keeps_full_shards(tmp_path):
    store = TreeStore(tmp_path)
    for i in range(7):
        store.append([row(f"q{i}", "a"), row(f"q{i}", "b")])
    written = store.compact(shard_rows=4)
    assert [pq.read_metadata(s).num_rows for s in written] == [4, 4, 4, 2]
    full = [s for s in store.shards() if pq.read_metadata(s).num_rows == 4]
    store.append([row("q9", "a")])
    store.compact(shard_rows=4)
    assert all(s.exists() for s in full)  # full shards are never rewritten
    assert store.read().num_rows == 15


def test_reading_is_pure_and_a_corrupt_shard_is_named(tmp_path):
    store = TreeStore(tmp_path)
    store.append([row("q1", "a")])
    (tmp_path / ".shard-999.parquet.abc.tmp").write_bytes(b"PAR1 half")  # a writer's temp file, mid-write
    bad = tmp_path / "shard-99999999999999999999.parquet"
    bad.write_bytes(b"not parquet")
    before = listing(tmp_path)
    with pytest.raises(CorruptShardError, match=f"{bad.name}.*git checkout"):
        TreeStore(tmp_path).read()
    assert listing(tmp_path) == before  # nothing deleted or renamed by a reader
    tolerant = store.read_tolerant()
    assert tolerant.table.num_rows == 1 and tolerant.corrupt == [bad]
    assert listing(tmp_path) == before


def test_the_writer_cleans_up(tmp_path):
    store = TreeStore(tmp_path)
    store.append([row("q1", "a")])
    (tmp_path / ".shard-999.parquet.abc.tmp").write_bytes(b"PAR1 half")
    bad = tmp_path / "shard-99999999999999999999.parquet"
    bad.write_bytes(b"not parquet")
    store.discard_partial()
    store.quarantine(bad)
    assert not list(tmp_path.glob("*.tmp")) and list(tmp_path.glob("*.corrupt"))
    assert store.read().num_rows == 1


def test_shards_are_written_with_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = TreeStore(tmp_path).append([row("q1", "a")])
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_shard_of_the_wrong_schema_is_quarantined_like_a_truncated_one(tmp_path):
    import pyarrow as pa

    store = TreeStore(tmp_path)
    store.append([row("q1", "a")])
    other = tmp_path / "shard-99999999999999999998.parquet"
    pq.write_table(pa.table({"qid": ["q9"], "score": [1.0]}), other)  # e.g. another table's shard copied here
    before = listing(tmp_path)
    with pytest.raises(CorruptShardError, match=f"{other.name} \\(wrong schema: missing column"):
        store.read()
    tolerant = store.read_tolerant()  # the writer's view: set aside, not a crash
    assert tolerant.corrupt == [other] and tolerant.table.num_rows == 1
    assert listing(tmp_path) == before
    store.quarantine(other)
    assert (tmp_path / (other.stem + ".corrupt")).exists() and store.read().num_rows == 1


def test_generate_moves_a_wrong_schema_shard_aside(repo_params, tmp_path):
    import pyarrow as pa

    from der_pipeline.artifacts import tree_dir
    from der_pipeline.generate.run import prepare_store

    p = repo_params.override("paths", data=str(tmp_path / "data"))
    folder = tree_dir(p, "boolq")
    TreeStore(folder).append([row("q1", "a")])
    pq.write_table(pa.table({"qid": ["q9"]}), folder / "shard-99999999999999999998.parquet")
    store, corrupt = prepare_store(p, "boolq")
    assert corrupt == 1 and [c.name for c in folder.glob("*.corrupt")] == ["shard-99999999999999999998.corrupt"]
    assert store.read().num_rows == 1


def _git(cwd, *args):
    import subprocess

    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def test_the_quarantine_advice_gets_exactly_the_committed_shards_back(tmp_path, caplog):
    """After a quarantine and new shards, the advised command leaves the folder as committed: no .corrupt file,
    no new shard (`git checkout` alone left both, and `dvc status` then marked every stage)."""
    import logging
    import subprocess

    repo = tmp_path / "repo"
    folder = repo / "data" / "tree" / "boolq"
    store = TreeStore(folder)
    store.append([row("q1", "a")])
    store.append([row("q2", "a")])
    _git(repo, "init", "-q")
    _git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "add", ".")
    _git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "tree")
    committed = listing(folder)
    bad = store.shards()[0]
    bad.write_bytes(b"PAR1 truncated")
    with pytest.raises(CorruptShardError) as err:
        store.read()
    advice = str(err.value).split("`")[1]
    assert advice.startswith("git checkout -- ") and " && git clean -fd -- " in advice
    assert "der-pipeline generate -d boolq" in str(err.value)
    with caplog.at_level(logging.WARNING, logger="der_pipeline.tree_store"):
        store.quarantine(bad)
    assert advice in caplog.text
    store.append([row("q1", "a", answer="made again")])
    assert listing(folder) != committed
    subprocess.run(advice, shell=True, cwd=repo, check=True, capture_output=True)
    assert listing(folder) == committed


def test_a_damaged_confidence_shard_names_the_confidence_stage(tmp_path):
    from der_pipeline.schemas import CONFIDENCE

    folder = tmp_path / "confidence" / "sst2"
    folder.mkdir(parents=True)
    (folder / "shard-00000000000000000001.parquet").write_bytes(b"not parquet")
    with pytest.raises(CorruptShardError, match=r"unreadable confidence table shard.*"
                                                r"der-pipeline confidence -d sst2"):
        TreeStore(folder, CONFIDENCE).read()


@pytest.mark.parametrize("loader, stage", [("load_scores", "score"), ("load_embeddings", "embed"),
                                           ("load_prepared", "prepare")])
def test_a_damaged_table_names_the_command_that_remakes_it(repo_params, tmp_path, loader, stage):
    import pyarrow as pa

    from der_pipeline import artifacts
    from der_pipeline.io import CorruptTableError, SchemaError

    p = repo_params.override("paths", data=str(tmp_path / "data"))
    path = {"load_scores": artifacts.scores_path, "load_embeddings": artifacts.embeddings_path,
            "load_prepared": artifacts.prepared_path}[loader](p, "boolq")
    load = getattr(artifacts, loader)
    command = f"`der-pipeline {stage} -d boolq` (or `dvc repro {stage}`)"
    with pytest.raises(FileNotFoundError, match=re.escape(command)):
        load(p, "boolq")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"PAR1 cut short")
    with pytest.raises(CorruptTableError) as err:
        load(p, "boolq")
    assert str(err.value).startswith(f"{path}: unreadable table") and command in str(err.value)
    assert f"git checkout -- {path}" in str(err.value)
    pq.write_table(pa.table({"x": [1]}), path)
    with pytest.raises(SchemaError, match=re.escape(command)):
        load(p, "boolq")


def test_an_empty_table_never_replaces_a_full_one(tmp_path):
    from der_pipeline.io import EmptyTableError, write_rows
    from der_pipeline.schemas import TREE

    path = tmp_path / "t.parquet"
    write_rows([row("q1", "a"), row("q2", "a")], path, TREE)
    before = path.read_bytes()
    with pytest.raises(EmptyTableError, match=r"t\.parquet: refusing to replace its 2 rows with an empty table"):
        write_rows([], path, TREE)
    assert path.read_bytes() == before and not list(tmp_path.glob("*.tmp"))
    write_rows([], tmp_path / "new.parquet", TREE)  # nothing replaced: allowed
    write_rows([], path, TREE, allow_empty=True)  # the explicit opt-in
    assert pq.read_metadata(path).num_rows == 0
