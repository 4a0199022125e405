"""`der-pipeline gc`: remove a tree's stale nodes (made under settings that are no longer current).

A node made under other settings (an older adapter, another prompt, another data seed) is kept by
`generate` (reads are pure, and going back to the old settings would find it again), so a tree can hold
many nodes nobody reads. `gc` keeps exactly the nodes ``generate.tree.current_nodes`` reads as current for
the prepared queries and removes the rest, under the tree's writer lock. The kept nodes are written into
new shards before any old shard is deleted, so a crash in between leaves duplicates (which readers fold
into one), never a lost node.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pyarrow as pa

from der_pipeline.artifacts import dataset_params, load_prepared, tree_dir
from der_pipeline.config import Params
from der_pipeline.generate.tree import current_nodes
from der_pipeline.io import write_table
from der_pipeline.tree_store import SHARD_ROWS, TreeStore, new_shard_name
from der_pipeline.writer_lock import exclusive_writer


@dataclass
class Collected:
    dataset: str
    nodes: int  # stored nodes before
    kept: int
    removed_by_path: dict[str, int]
    dry_run: bool

    @property
    def removed(self) -> int:
        return self.nodes - self.kept

    def summary(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        lines = [f"{self.dataset}: {verb} {self.removed} stale node(s) of {self.nodes}; {self.kept} current kept"]
        lines += [f"  {path}: {n}" for path, n in sorted(self.removed_by_path.items())]
        return "\n".join(lines)


def collect(p: Params, dataset: str, dry_run: bool = True) -> Collected:
    p = dataset_params(p, dataset)
    folder = tree_dir(p, dataset)
    with exclusive_writer(folder, f"the {dataset} tree"):
        store = TreeStore(folder)
        shards = store.shards()
        if not shards:
            raise FileNotFoundError(f"{folder}: no generated tree; nothing to collect")
        table = store.read()  # an unreadable shard stops here, naming it, before anything is removed
        cur = current_nodes(p, load_prepared(p, dataset).to_pylist(), table, p.backend_for(dataset))
        keep = sorted(cur.rows.values())
        kept_rows = set(keep)
        removed = Counter(path for i, path in enumerate(table["path"].to_pylist()) if i not in kept_rows)
        result = Collected(dataset, table.num_rows, len(keep), dict(removed), dry_run)
        if dry_run or result.removed == 0:
            return result
        kept = table.take(pa.array(keep, pa.int64())).sort_by([("qid", "ascending"), ("hop", "ascending"),
                                                               ("path", "ascending")])
        for start in range(0, kept.num_rows, SHARD_ROWS):
            write_table(kept.slice(start, SHARD_ROWS), folder / new_shard_name(), store.schema)
        for shard in shards:
            shard.unlink()
        return result
