"""A store of node tables: a folder of Parquet shards per dataset (the tree; the confidence table).

Reads are pure: they never delete, rename or rewrite a file, so ``embed`` can
read while ``generate`` writes. Only the writer (``generate``) cleans up:
``discard_partial`` removes half-written ``.tmp`` files, ``quarantine`` moves an
unreadable shard aside as ``.corrupt`` so its nodes are generated again.

Shards are written whole through a temp file and a rename. A node is identified
by (qid, path, node_key): two nodes of one path under different settings are
different nodes and both stay; a reader keeps the one whose key is current.
Duplicates of the same node (a crash between writing a compacted shard and
deleting its sources) keep the newest copy. Compaction merges the small shards
into shards of at most ``SHARD_ROWS`` nodes, so one damaged file costs at most
that many nodes, never the whole tree.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from der_pipeline.io import SchemaError, check_schema, write_table
from der_pipeline.schemas import TREE

log = logging.getLogger(__name__)

SHARD_ROWS = 2000  # nodes per compacted shard: 100 queries of a 20-node tree


class CorruptShardError(RuntimeError):
    """A shard cannot be read; the message names it and says how to recover."""


@dataclass
class ShardRead:
    table: pa.Table
    corrupt: list[Path]  # unreadable shards and shards of another schema, which the writer quarantines alike
    why: dict[Path, str] = field(default_factory=dict)  # corrupt shard -> what is wrong with it


def shown(path: Path) -> str:
    """``path`` relative to the working folder when it lies inside it (what a user types), else absolute."""
    rel = os.path.relpath(Path(path).absolute())
    return rel if not rel.startswith("..") else str(Path(path).absolute())


class TreeStore:
    """Shards of one table whose rows are nodes keyed by (qid, path, node_key); ``schema`` is checked on read.

    ``stage``: the command that writes the store (``generate`` for a tree, ``confidence`` for the confidence
    table; by default from the schema), named in the advice on a damaged shard."""

    def __init__(self, folder: Path, schema: pa.Schema = TREE, stage: str | None = None):
        self.folder = Path(folder)
        self.schema = schema
        self.stage = stage or ("generate" if schema is TREE else "confidence")

    @property
    def what(self) -> str:
        return "tree" if self.stage == "generate" else f"{self.stage} table"

    def restore_command(self) -> str:
        """The command that puts the committed shards back exactly (and removes quarantined and new ones)."""
        folder = shown(self.folder)
        return f"git checkout -- {folder} && git clean -fd -- {folder}"

    def shards(self) -> list[Path]:
        return sorted(self.folder.glob("shard-*.parquet"))

    # reading (pure) ---------------------------------------------------
    def read(self) -> pa.Table:
        """Every node, newest copy per (qid, path, node_key). An unreadable shard is an error naming it."""
        result = self.read_tolerant()
        if result.corrupt:
            names = ", ".join(f"{c} ({result.why[c]})" if c in result.why else str(c) for c in result.corrupt)
            raise CorruptShardError(
                f"unreadable {self.what} shard(s): {names}. Get the committed shards back with "
                f"`{self.restore_command()}`, or run `der-pipeline {self.stage} -d {self.folder.name}`, which moves "
                f"the shard aside and makes its nodes again")
        return result.table

    def read_tolerant(self) -> ShardRead:
        """Like ``read``, but skips unreadable shards and lists them (for the writer to quarantine)."""
        for _ in range(5):  # a concurrent compaction may delete a listed shard: list again
            tables, corrupt, why, vanished = [], [], {}, False
            for s in self.shards():
                try:
                    tables.append(check_schema(pq.read_table(s), self.schema, str(s)))
                except FileNotFoundError:
                    vanished = True
                    break
                except SchemaError as exc:  # another table's shard, or a damaged one: set aside like one
                    log.debug("shard %s of the wrong schema: %s", s, exc)
                    corrupt.append(s)
                    why[s] = f"wrong schema: {str(exc).removeprefix(f'{s}: ')}"
                except Exception as exc:  # noqa: BLE001 - any unreadable file is a damaged shard
                    log.debug("unreadable shard %s: %s", s, exc)
                    corrupt.append(s)
            if not vanished:
                break
        table = _keep_newest(pa.concat_tables(tables)) if tables else self.schema.empty_table()
        return ShardRead(table, corrupt, why)

    # writing (generate only) -------------------------------------------
    def discard_partial(self) -> None:
        for tmp in self.folder.glob(".*.tmp"):
            log.warning("discarding half-written shard %s", tmp.name)
            tmp.unlink(missing_ok=True)

    def quarantine(self, shard: Path) -> Path:
        dest = shard.with_suffix(".corrupt")
        log.warning("%s shard %s is unreadable: moved to %s; its nodes will be made again. To get the committed "
                    "shards back instead (they and nothing else: the .corrupt file and new shards go), run `%s`",
                    self.what, shard, dest.name, self.restore_command())
        shard.rename(dest)
        return dest

    def append(self, rows: list[dict]) -> Path | None:
        if not rows:
            return None
        self.folder.mkdir(parents=True, exist_ok=True)
        return write_table(pa.Table.from_pylist(rows, schema=self.schema), self.folder / new_shard_name(), self.schema)

    def compact(self, shard_rows: int | None = None) -> list[Path]:
        """Merge the shards holding fewer than ``shard_rows`` nodes into shards of at most that size
        (sorted by qid, hop, path); full shards are left as they are."""
        shard_rows = SHARD_ROWS if shard_rows is None else shard_rows
        small = [s for s in self.shards() if pq.read_metadata(s).num_rows < shard_rows]
        if len(small) <= 1:
            return small
        table = _keep_newest(pa.concat_tables([check_schema(pq.read_table(s), self.schema, str(s)) for s in small]))
        order = [c for c in ("qid", "hop", "path") if c in self.schema.names]
        table = table.sort_by([(c, "ascending") for c in order])
        written = [write_table(table.slice(i, shard_rows), self.folder / new_shard_name(), self.schema)
                   for i in range(0, table.num_rows, shard_rows)]
        for s in small:
            s.unlink(missing_ok=True)
        return written


def new_shard_name() -> str:
    return f"shard-{time.time_ns():020d}.parquet"


def _keep_newest(table: pa.Table) -> pa.Table:
    """The newest row per (qid, path, node_key); shards are concatenated oldest first."""
    if table.num_rows == 0:
        return table
    keys = pc.binary_join_element_wise(table["qid"], table["path"], table["node_key"], "\x1f")
    idx = pa.array(range(table.num_rows), pa.int64())
    last = pa.table({"k": keys, "i": idx}).group_by("k", use_threads=False).aggregate([("i", "max")])
    keep = last["i_max"].combine_chunks()
    return table.take(keep.take(pc.sort_indices(keep)))
