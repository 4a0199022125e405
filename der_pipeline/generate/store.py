"""The trajectory-tree store: a folder of Parquet shards per dataset.

Shards are written whole through a temp file and a rename, so a crash leaves
either a complete shard or a ``.tmp`` file that the next run discards. Reads
concatenate every shard and keep the newest row per (qid, path), so a crash
between writing a compacted shard and deleting its sources never duplicates a
node.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from der_pipeline.io import SchemaError, check_schema, write_table
from der_pipeline.schemas import TREE

log = logging.getLogger(__name__)


class TreeStore:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._discard_partial()

    def _discard_partial(self) -> None:
        for tmp in self.folder.glob(".*.tmp"):
            log.warning("discarding half-written shard %s", tmp.name)
            tmp.unlink(missing_ok=True)

    def shards(self) -> list[Path]:
        return sorted(self.folder.glob("shard-*.parquet"))

    def _read_shard(self, path: Path) -> pa.Table | None:
        try:
            return check_schema(pq.read_table(path), TREE, str(path))
        except SchemaError:
            raise
        except Exception as exc:  # unreadable file: a shard that did not survive
            log.warning("discarding unreadable shard %s (%s)", path.name, exc)
            path.rename(path.with_suffix(".corrupt"))
            return None

    def read(self) -> pa.Table:
        tables = [t for t in (self._read_shard(s) for s in self.shards()) if t is not None]
        if not tables:
            return TREE.empty_table()
        table = pa.concat_tables(tables)
        return _keep_last(table)

    def append(self, rows: list[dict]) -> Path | None:
        if not rows:
            return None
        name = f"shard-{time.time_ns():020d}.parquet"
        return write_table(pa.Table.from_pylist(rows, schema=TREE), self.folder / name, TREE)

    def compact(self) -> Path | None:
        """Merge every shard into one (sorted by qid, hop, path), then delete the sources."""
        old = self.shards()
        if len(old) <= 1:
            return old[0] if old else None
        table = self.read()
        table = table.sort_by([("qid", "ascending"), ("hop", "ascending"), ("path", "ascending")])
        name = f"shard-{time.time_ns():020d}.parquet"
        out = write_table(table, self.folder / name, TREE)
        for s in old:
            s.unlink(missing_ok=True)
        return out


def _keep_last(table: pa.Table) -> pa.Table:
    """Newest row per (qid, path); shards are concatenated oldest first."""
    if table.num_rows == 0:
        return table
    keys = pc.binary_join_element_wise(table["qid"], table["path"], "\x1f")
    idx = pa.array(range(table.num_rows), pa.int64())
    last = pa.table({"k": keys, "i": idx}).group_by("k", use_threads=False).aggregate([("i", "max")])
    keep = last["i_max"].combine_chunks()
    return table.take(keep.take(pc.sort_indices(keep)))
