"""The tree store: pure reads, newest copy per node, bounded shards, corrupt shards reported."""
import os
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
