"""The `confidence` stage: every current node's confidence signals (experts/confidence.py) in one table.

A node generated with them recorded (llama.cpp records them at generation) is copied
from the tree. Any other node of the hops in ``signals.confidence_hops`` is scored
by llama.cpp: its stored prompt and answer are evaluated, nothing is generated and
the tree's text is never touched. Work goes expert by expert (each model loaded
once), query by query. Resumable like `generate`: rows are flushed every 20 s into
shards under data/confidence/<dataset>/, keyed by node key, and a rerun skips every
node already scored under its current key.
"""
from __future__ import annotations

import logging
import time

from tqdm import tqdm

from der_pipeline.artifacts import confidence_dir, dataset_params
from der_pipeline.config import Params
from der_pipeline.experts.backends import LlamaCppBackend
from der_pipeline.experts.keys import render_prompt
from der_pipeline.generate.tree import read_tree
from der_pipeline.resumable import BufferedWriter
from der_pipeline.schemas import CONFIDENCE
from der_pipeline.tree_store import TreeStore
from der_pipeline.writer_lock import exclusive_writer

log = logging.getLogger(__name__)

FLUSH_EVERY_S = 20.0


def confidence_dataset(p: Params, dataset: str, progress: bool = True) -> dict:
    """Every current node's confidence, under the confidence table's writer lock (one writer at a time)."""
    with exclusive_writer(confidence_dir(dataset_params(p, dataset), dataset), f"the {dataset} confidence table"):
        return _confidence_dataset(p, dataset, progress)


def _confidence_dataset(p: Params, dataset: str, progress: bool) -> dict:
    p = dataset_params(p, dataset)
    tree = read_tree(p, dataset)
    store = TreeStore(confidence_dir(p, dataset), CONFIDENCE)
    store.folder.mkdir(parents=True, exist_ok=True)
    store.discard_partial()
    stored = store.read_tolerant()
    for shard in stored.corrupt:
        store.quarantine(shard)
    done = set(stored.table["node_key"].to_pylist())
    queries = {q["qid"]: q for q in tree.prepared.to_pylist()}
    nodes = tree.nodes.to_pylist()
    answers = {(n["qid"], n["path"]): n["answer"] for n in nodes}
    wanted = [n for n in nodes if n["hop"] in p.signals.confidence_hops]
    recorded = [n for n in wanted if n["node_key"] not in done and n["answer_tokens"] is not None]
    to_score = [n for n in wanted if n["node_key"] not in done and n["answer_tokens"] is None]
    stats = {"dataset": dataset, "nodes": len(wanted), "already_stored": len(wanted) - len(recorded) - len(to_score),
             "copied_from_tree": len(recorded), "scored": 0}
    t0 = time.perf_counter()
    with BufferedWriter(store, FLUSH_EVERY_S) as writer:
        for n in recorded:
            writer.add({k: n[k] for k in CONFIDENCE.names})
        writer.flush()
        if to_score:
            backend = LlamaCppBackend(p.generation)
            bar = tqdm(total=len(to_score), desc=f"confidence {dataset}", unit="node", disable=not progress,
                       dynamic_ncols=True)
            try:
                for expert in p.experts:
                    mine = sorted((n for n in to_score if n["expert"] == expert.name),
                                  key=lambda n: (n["qid"], n["path"]))
                    prompts = [render_prompt(p, expert, queries[n["qid"]],
                                             answers[(n["qid"], n["parent_path"])] if n["hop"] == 2 else None)
                               for n in mine]
                    for n, conf in zip(mine, backend.score(expert, prompts, [n["answer"] for n in mine])):
                        writer.add({"qid": n["qid"], "path": n["path"], "node_key": n["node_key"], **conf.row()})
                        stats["scored"] += 1
                        bar.update(1)
                    writer.flush()
            finally:
                bar.close()
                backend.close()
    store.compact()
    stats["seconds"] = round(time.perf_counter() - t0, 2)
    return stats
