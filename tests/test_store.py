from der_pipeline.generate.store import TreeStore


def row(qid, path, answer="a"):
    return dict(qid=qid, path=path, hop=path.count(">") + 1, expert=path.split(">")[-1],
                parent_path=path.split(">")[0] if ">" in path else "", prompt_tokens=10, completion_tokens=2,
                latency_s=0.1, cost=1.0, answer=answer, finish_reason="stop", backend="test",
                model_fingerprint="x", settings_hash="h")


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


def test_half_written_and_corrupt_shards_are_discarded(tmp_path):
    store = TreeStore(tmp_path)
    store.append([row("q1", "a")])
    (tmp_path / ".shard-999.parquet.abc.tmp").write_bytes(b"PAR1 half")
    (tmp_path / "shard-99999999999999999999.parquet").write_bytes(b"not parquet")
    store = TreeStore(tmp_path)
    assert not list(tmp_path.glob("*.tmp"))
    assert store.read().num_rows == 1
    assert list(tmp_path.glob("*.corrupt"))
