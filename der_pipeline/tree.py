"""Reading the generated tree for the later stages: complete trees of the current pool only."""
from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.compute as pc

from der_pipeline.config import Params
from der_pipeline.data.prepare import load_prepared
from der_pipeline.generate.run import expected_paths, tree_dir
from der_pipeline.generate.store import TreeStore

log = logging.getLogger(__name__)


def load_tree(p: Params, dataset: str) -> tuple[pa.Table, pa.Table]:
    """(prepared queries with a complete tree, their tree rows), both sorted by qid then path.

    A query whose tree misses a node (generation still running, or stopped) is
    left out with a warning, so the later stages work on a partial run.
    """
    folder = tree_dir(p, dataset)
    if not folder.exists() or not list(folder.glob("shard-*.parquet")):
        raise FileNotFoundError(f"{folder}: no generated tree; run `der-pipeline generate` first")
    prepared = load_prepared(p, dataset)
    tree = TreeStore(folder).read()
    paths = expected_paths(p.expert_names())
    tree = tree.filter(pc.is_in(tree["path"], pa.array(paths)))
    tree = tree.filter(pc.is_in(tree["qid"], prepared["qid"]))
    counts = tree.group_by("qid").aggregate([("path", "count")])
    complete = counts.filter(pc.equal(counts["path_count"], len(paths)))["qid"]
    missing = prepared.num_rows - len(complete)
    if missing:
        log.warning("%s: %d of %d prepared queries have no complete tree yet; using the %d that do",
                    dataset, missing, prepared.num_rows, len(complete))
    if len(complete) == 0:
        raise ValueError(f"{dataset}: no query has a complete {len(paths)}-node tree; run `der-pipeline generate`")
    prepared = prepared.filter(pc.is_in(prepared["qid"], complete)).sort_by("qid")
    tree = tree.filter(pc.is_in(tree["qid"], complete)).sort_by([("qid", "ascending"), ("path", "ascending")])
    return prepared, tree
