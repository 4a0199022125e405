"""The `generate` stage: every expert path up to 2 hops for every prepared query.

Work order (to load each model once and reuse llama.cpp's prefix cache):
queries are taken in chunks; within a chunk, hop 1 runs expert by expert, then
hop 2 runs expert by expert, and for each query one expert's N refinements run
back to back (their prompts differ only after the shared question and context).

Resumable: finished nodes are flushed to shards every few seconds and at every
expert switch; a rerun skips every node already stored under its current key
(experts/keys.py: the rendered prompt, decoding settings, model and backend), so a
node made under other settings is made again, never reused.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

from tqdm import tqdm

from der_pipeline.artifacts import dataset_params, expected_paths, load_prepared, tree_dir
from der_pipeline.config import ExpertSpec, Params
from der_pipeline.experts.backends import Backend, EngineOnFirstUse, make_backend
from der_pipeline.experts.confidence import AnswerConfidence
from der_pipeline.experts.keys import NodeKeys
from der_pipeline.generate.tree import current_nodes
from der_pipeline.resumable import BufferedWriter
from der_pipeline.schemas import join_path
from der_pipeline.tree_store import TreeStore
from der_pipeline.writer_lock import exclusive_writer

log = logging.getLogger(__name__)

EMPTY_CONFIDENCE = AnswerConfidence(None, None, None, None, None)  # an engine that gives no probabilities
FLUSH_EVERY_S = 20.0
MAX_SMALL_SHARDS = 24  # compact the small shards past this many, so the folder stays small enough to commit


@dataclass
class Job:
    query: dict
    expert: ExpertSpec
    parent: ExpertSpec | None
    parent_answer: str | None

    @property
    def path(self) -> str:
        return join_path([self.parent.name, self.expert.name] if self.parent else [self.expert.name])


def dataset_queries(p: Params, dataset: str, limit: int | None = None) -> list[dict]:
    queries = load_prepared(p, dataset).to_pylist()
    return queries if limit is None else queries[:limit]


def prepare_store(p: Params, dataset: str) -> tuple[TreeStore, int]:
    """The owner's clean-up before writing: half-written shards removed, unreadable ones moved aside
    (their nodes count as missing and are generated again). Workers sharing the store never do this."""
    store = TreeStore(tree_dir(p, dataset))
    store.folder.mkdir(parents=True, exist_ok=True)
    store.discard_partial()  # only the writer cleans up; readers never touch a file
    corrupt = store.read_tolerant().corrupt
    for shard in corrupt:
        store.quarantine(shard)
    return store, len(corrupt)


def generate_dataset(p: Params, dataset: str, backend: Backend, limit: int | None = None,
                     progress: bool = True, qids: list[str] | None = None, owner: bool = True) -> dict:
    """Generate the missing nodes of a dataset's queries (or of ``qids`` only).

    ``owner``: this process is the store's only writer (it holds the tree's writer lock, so a second
    `generate` of the same dataset stops at once), so it cleans up first and compacts the shards at the end;
    a Ray worker (generate/distributed.py) is not: it only appends shards of its own under its driver's lock."""
    if not owner:
        return _generate_dataset(p, dataset, backend, limit, progress, qids, owner)
    with exclusive_writer(tree_dir(dataset_params(p, dataset), dataset), f"the {dataset} tree"):
        return _generate_dataset(p, dataset, backend, limit, progress, qids, owner)


def _generate_dataset(p: Params, dataset: str, backend: Backend, limit: int | None, progress: bool,
                      qids: list[str] | None, owner: bool) -> dict:
    p = dataset_params(p, dataset)
    queries = dataset_queries(p, dataset, limit)
    if qids is not None:
        wanted = set(qids)
        queries = [q for q in queries if q["qid"] in wanted]
    store, corrupt = prepare_store(p, dataset) if owner else (TreeStore(tree_dir(p, dataset)), 0)
    experts = p.experts
    keys = NodeKeys(p, backend.name)
    existing = store.read_tolerant().table
    cur = current_nodes(p, queries, existing, backend.name)
    answers = existing["answer"].to_pylist()
    done: dict[tuple[str, str], str] = {node: answers[i] for node, i in cur.rows.items()}
    total_nodes = len(queries) * len(expected_paths([e.name for e in experts]))
    todo = total_nodes - len(done)
    stats = {"dataset": dataset, "queries": len(queries), "nodes_total": total_nodes,
             "nodes_skipped": len(done), "nodes_stale": cur.stale_total, "corrupt_shards": corrupt,
             "nodes_generated": 0, "tokens": 0, "output_tokens": 0}
    if cur.stale_total:
        log.warning("%s: %d stored node(s) were made under other settings (prompt, data seed, model, backend or "
                    "decoding): they are kept but not reused, and made again now", dataset, cur.stale_total)
    if todo == 0:
        if owner:
            store.compact()
        return stats

    bar = tqdm(total=todo, desc=f"generate {dataset}", unit="node", disable=not progress, dynamic_ncols=True)
    t_start = time.perf_counter()
    try:
        with BufferedWriter(store, FLUSH_EVERY_S) as writer:  # any failure keeps every finished node
            chunk = p.generation.chunk_queries
            for start in range(0, len(queries), chunk):
                batch = queries[start:start + chunk]
                for hop in (1, 2):
                    for expert in experts:
                        jobs = list(_jobs(batch, expert, hop, experts, done))
                        if not jobs:
                            continue
                        made = [keys.prompt_and_key(expert, j.query, j.parent_answer) for j in jobs]
                        for job, (_, key), out in zip(jobs, made, backend.generate(expert, [m[0] for m in made])):
                            writer.add(dict(
                                qid=job.query["qid"], path=job.path, hop=hop, expert=expert.name,
                                parent_path=job.parent.name if job.parent else "", prompt_tokens=out.prompt_tokens,
                                completion_tokens=out.completion_tokens, latency_s=out.latency_s, answer=out.text,
                                finish_reason=out.finish_reason, backend=backend.name,
                                model_fingerprint=keys.fingerprints[expert.name], node_key=key,
                                **(out.confidence or EMPTY_CONFIDENCE).row()))
                            done[(job.query["qid"], job.path)] = out.text
                            stats["nodes_generated"] += 1
                            stats["tokens"] += out.prompt_tokens + out.completion_tokens
                            stats["output_tokens"] += out.completion_tokens
                            elapsed = time.perf_counter() - t_start
                            bar.set_postfix(tok_s=f"{stats['tokens'] / max(elapsed, 1e-9):.0f}", expert=expert.name,
                                            hop=hop, refresh=False)
                            bar.update(1)
                        writer.flush()  # at every expert switch
                if owner and len(store.shards()) > MAX_SMALL_SHARDS:
                    store.compact()
    except KeyboardInterrupt:
        bar.close()
        log.warning("generation interrupted: %d nodes of %s kept; rerun to continue", stats["nodes_generated"], dataset)
        raise
    bar.close()
    if owner:
        store.compact()
    stats["seconds"] = round(time.perf_counter() - t_start, 2)
    return stats


def _jobs(batch: list[dict], expert: ExpertSpec, hop: int, experts: list[ExpertSpec],
          done: dict[tuple[str, str], str]) -> Iterator[Job]:
    for q in batch:
        if hop == 1:
            if (q["qid"], expert.name) not in done:
                yield Job(q, expert, None, None)
            continue
        for parent in experts:  # one expert's N refinements of this query, back to back
            path = join_path([parent.name, expert.name])
            if (q["qid"], path) in done:
                continue
            parent_answer = done.get((q["qid"], parent.name))
            if parent_answer is None:
                raise RuntimeError(f"{q['qid']}: hop-1 answer of {parent.name} missing before hop 2")
            yield Job(q, expert, parent, parent_answer)


def generate(p: Params, datasets: list[str] | None = None, limit: int | None = None,
             progress: bool = True) -> list[dict]:
    """Every dataset with its own engine (``Params.backend_for``): each engine started once, at the first node
    it has to make (none for a complete tree), and closed at the end."""
    engines: dict[str, Backend] = {}
    try:
        results = []
        for ds in datasets or p.data.active():
            name = p.backend_for(ds)
            if name not in engines:
                engines[name] = EngineOnFirstUse(p.generation, name,
                                                 lambda name=name: make_backend(p.generation, name))
            results.append(generate_dataset(p, ds, engines[name], limit=limit, progress=progress))
        return results
    finally:
        for engine in engines.values():
            engine.close()
