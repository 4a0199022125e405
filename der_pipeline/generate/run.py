"""The `generate` stage: every expert path up to 2 hops for every prepared query.

Work order (to load each model once and reuse llama.cpp's prefix cache):
queries are taken in chunks; within a chunk, hop 1 runs expert by expert, then
hop 2 runs expert by expert, and for each query one expert's N refinements run
back to back (their prompts differ only after the shared question and context).

Resumable: finished nodes are flushed to shards every few seconds and at every
expert switch; a rerun skips every node already stored with the same settings.
"""
from __future__ import annotations

import hashlib
import json
import logging
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from der_pipeline.config import ExpertSpec, Params
from der_pipeline.data.prepare import load_prepared
from der_pipeline.experts.backends import Backend, make_backend
from der_pipeline.data.sources import ANSWER_TYPE
from der_pipeline.experts.prompts import PROMPT_VERSIONS, build_prompt
from der_pipeline.generate.store import TreeStore
from der_pipeline.schemas import join_path

log = logging.getLogger(__name__)

FLUSH_EVERY_S = 20.0
MAX_SHARDS = 24


def tree_dir(p: Params, dataset: str) -> Path:
    return p.path("data") / "tree" / dataset


def call_cost(expert: ExpertSpec, prompt_tokens: int, completion_tokens: int) -> float:
    """GFLOPs of one call: 2 x parameters x tokens processed, unless params fix a cost per call."""
    if expert.cost_per_call is not None:
        return float(expert.cost_per_call)
    return 2.0 * expert.params_b * (prompt_tokens + completion_tokens)


def settings_hash(p: Params, answer_type: str, fingerprints: list[str]) -> str:
    """Everything that decides a node's text: prompts, decoding settings, and every model on its path."""
    g = p.generation
    blob = json.dumps({"prompt": PROMPT_VERSIONS[answer_type], "temperature": g.temperature, "seed": g.seed,
                       "max_tokens": g.max_tokens[answer_type], "context": [p.data.max_context_chars, p.data.hotpot_distractors],
                       "models": fingerprints}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Job:
    query: dict
    expert: ExpertSpec
    parent: ExpertSpec | None
    parent_answer: str | None

    @property
    def path(self) -> str:
        return join_path([self.parent.name, self.expert.name] if self.parent else [self.expert.name])


class _Stop(KeyboardInterrupt):
    pass


def _raise_stop(signum, frame):  # SIGTERM behaves like Ctrl-C: flush what is done, then leave
    raise _Stop(f"signal {signum}")


def expected_paths(names: list[str]) -> list[str]:
    return [join_path([a]) for a in names] + [join_path([a, b]) for a in names for b in names]


def generate_dataset(p: Params, dataset: str, backend: Backend, limit: int | None = None,
                     progress: bool = True) -> dict:
    store = TreeStore(tree_dir(p, dataset))
    queries = load_prepared(p, dataset).to_pylist()
    if limit is not None:
        queries = queries[:limit]
    experts = p.experts
    fps = {e.name: backend.fingerprint(e) for e in experts}
    kind = ANSWER_TYPE[dataset]
    hashes = {join_path([a.name]): settings_hash(p, kind, [fps[a.name]]) for a in experts}
    hashes.update({join_path([a.name, b.name]): settings_hash(p, kind, [fps[a.name], fps[b.name]])
                   for a in experts for b in experts})

    existing = store.read()
    done: dict[tuple[str, str], str] = {}
    for qid, path, h, ans in zip(existing["qid"].to_pylist(), existing["path"].to_pylist(),
                                 existing["settings_hash"].to_pylist(), existing["answer"].to_pylist()):
        if hashes.get(path) == h:
            done[(qid, path)] = ans
    total_nodes = len(queries) * len(expected_paths([e.name for e in experts]))
    todo = total_nodes - sum(1 for q in queries for path in hashes if (q["qid"], path) in done)
    stats = {"dataset": dataset, "queries": len(queries), "nodes_total": total_nodes,
             "nodes_skipped": total_nodes - todo, "nodes_generated": 0, "tokens": 0}
    if todo == 0:
        store.compact()
        return stats

    buffer: list[dict] = []
    last_flush = time.monotonic()
    bar = tqdm(total=todo, desc=f"generate {dataset}", unit="node", disable=not progress, dynamic_ncols=True)
    t_start = time.perf_counter()
    old_handler = signal.signal(signal.SIGTERM, _raise_stop)

    def flush() -> None:
        nonlocal last_flush
        store.append(buffer)
        buffer.clear()
        last_flush = time.monotonic()

    try:
        chunk = p.generation.chunk_queries
        for start in range(0, len(queries), chunk):
            batch = queries[start:start + chunk]
            for hop in (1, 2):
                for expert in experts:
                    jobs = list(_jobs(batch, expert, hop, experts, done))
                    if not jobs:
                        continue
                    prompts = [build_prompt(expert.chat, j.query["question"], j.query["context"],
                                            j.query["answer_type"], p.generation.max_tokens[j.query["answer_type"]],
                                            j.parent_answer) for j in jobs]
                    for job, out in zip(jobs, backend.generate(expert, prompts)):
                        row = dict(qid=job.query["qid"], path=job.path, hop=hop, expert=expert.name,
                                   parent_path=job.parent.name if job.parent else "",
                                   prompt_tokens=out.prompt_tokens, completion_tokens=out.completion_tokens,
                                   latency_s=out.latency_s,
                                   cost=call_cost(expert, out.prompt_tokens, out.completion_tokens),
                                   answer=out.text, finish_reason=out.finish_reason, backend=backend.name,
                                   model_fingerprint=fps[expert.name], settings_hash=hashes[job.path])
                        buffer.append(row)
                        done[(job.query["qid"], job.path)] = out.text
                        stats["nodes_generated"] += 1
                        stats["tokens"] += out.prompt_tokens + out.completion_tokens
                        elapsed = time.perf_counter() - t_start
                        bar.set_postfix(tok_s=f"{stats['tokens'] / max(elapsed, 1e-9):.0f}", expert=expert.name,
                                        hop=hop, refresh=False)
                        bar.update(1)
                        if time.monotonic() - last_flush > FLUSH_EVERY_S:
                            flush()
                    flush()
            if len(store.shards()) > MAX_SHARDS:  # keep the folder small enough to commit as we go
                store.compact()
    except (KeyboardInterrupt, _Stop):
        flush()
        bar.close()
        log.warning("generation interrupted: %d nodes of %s kept; rerun to continue", stats["nodes_generated"], dataset)
        raise
    finally:
        signal.signal(signal.SIGTERM, old_handler)
        if buffer:
            flush()
    bar.close()
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


def generate(p: Params, datasets: list[str] | None = None, limit: int | None = None, progress: bool = True) -> list[dict]:
    backend = make_backend(p.generation)
    try:
        return [generate_dataset(p, ds, backend, limit=limit, progress=progress) for ds in (datasets or p.data.active())]
    finally:
        backend.close()
