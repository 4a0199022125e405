"""Reading a dataset's tree: which stored nodes are current under the params, and the complete trees.

A node is current when its key is the one the current params give it (experts/keys.py), so every reader
of a tree (the confidence pass, embed, score, the router's arrays) agrees on which nodes count, and a
node made under other settings is never read as this one. Reads are pure: no file changes.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from der_pipeline.artifacts import dataset_params, expected_paths, load_prepared, tree_dir
from der_pipeline.config import Params
from der_pipeline.experts.keys import NodeKeys
from der_pipeline.schemas import join_path
from der_pipeline.tree_store import TreeStore

log = logging.getLogger(__name__)


@dataclass
class CurrentNodes:
    """The stored nodes whose key matches the current settings, by (qid, path) -> row index."""

    rows: dict[tuple[str, str], int]
    stale: dict[str, int] = field(default_factory=dict)  # path -> stored nodes skipped (made under other settings)

    @property
    def stale_total(self) -> int:
        return sum(self.stale.values())


def current_nodes(p: Params, queries: list[dict], table: pa.Table, backend: str | None = None) -> CurrentNodes:
    """Match stored nodes against the keys the current params give them (experts/keys.py).

    A hop-2 node's key depends on its parent's answer, so it is current only when its
    parent is current. Nodes of queries or experts outside ``queries`` / the pool are ignored.
    """
    keys = NodeKeys(p, backend)
    by_node: dict[tuple[str, str], list[tuple[str, int]]] = defaultdict(list)
    for i, (qid, path, key) in enumerate(zip(table["qid"].to_pylist(), table["path"].to_pylist(),
                                             table["node_key"].to_pylist())):
        by_node[(qid, path)].append((key, i))
    answers = table["answer"].to_pylist()
    rows: dict[tuple[str, str], int] = {}
    stale: dict[str, int] = defaultdict(int)

    def take(qid: str, path: str, want: str) -> int | None:
        found = None
        for key, i in by_node.get((qid, path), ()):
            if key == want:
                found = i
            else:
                stale[path] += 1
        if found is not None:
            rows[(qid, path)] = found
        return found

    for q in queries:
        qid = q["qid"]
        if not any((qid, e.name) in by_node for e in p.experts):
            continue
        for a in p.experts:
            i = take(qid, a.name, keys.key(a, q))
            for b in p.experts:
                path = join_path([a.name, b.name])
                if i is None:
                    stale[path] += len(by_node.get((qid, path), ()))
                    continue
                take(qid, path, keys.key(b, q, answers[i]))
    return CurrentNodes(rows, {k: v for k, v in stale.items() if v})


@dataclass
class TreeRead:
    prepared: pa.Table  # the prepared queries whose tree is complete, sorted by qid
    nodes: pa.Table  # their current nodes, sorted by qid then path
    stale: dict[str, int]  # path -> stored nodes skipped because their key is not current
    incomplete: int  # prepared queries left out (a node missing or stale)


def read_tree(p: Params, dataset: str) -> TreeRead:
    """The current nodes of every prepared query whose 20-node tree is complete. Pure: changes no file."""
    p = dataset_params(p, dataset)
    folder = tree_dir(p, dataset)
    store = TreeStore(folder)
    if not store.shards():
        raise FileNotFoundError(f"{folder}: no generated tree; run `der-pipeline generate` first")
    prepared = load_prepared(p, dataset)
    table = store.read()
    cur = current_nodes(p, prepared.to_pylist(), table, p.backend_for(dataset))
    paths = expected_paths(p.expert_names())
    complete = [q for q in prepared["qid"].to_pylist() if all((q, path) in cur.rows for path in paths)]
    if cur.stale_total:
        log.warning("%s: skipped %d stored node(s) made under other settings (prompt, data seed, model, backend or "
                    "decoding); `der-pipeline generate` makes them again under the current ones",
                    dataset, cur.stale_total)
    missing = prepared.num_rows - len(complete)
    if missing:
        log.warning("%s: %d of %d prepared queries have no complete current tree yet; using the %d that do",
                    dataset, missing, prepared.num_rows, len(complete))
    idx = [cur.rows[(q, path)] for q in sorted(complete) for path in sorted(paths)]
    nodes = table.take(pa.array(idx, pa.int64())) if idx else table.slice(0, 0)
    prepared = prepared.filter(pc.is_in(prepared["qid"], pa.array(complete, pa.string()))).sort_by("qid")
    return TreeRead(prepared, nodes, cur.stale, missing)


def load_tree(p: Params, dataset: str) -> tuple[pa.Table, pa.Table]:
    """(prepared queries with a complete current tree, their nodes), both sorted by qid then path."""
    p = dataset_params(p, dataset)
    read = read_tree(p, dataset)
    if read.prepared.num_rows == 0:
        raise ValueError(f"{dataset}: no query has a complete current {len(expected_paths(p.expert_names()))}-node "
                         f"tree ({sum(read.stale.values())} stale node(s) skipped); run `der-pipeline generate`")
    return read.prepared, read.nodes
