"""`generate --ray`: the same resumable generation, its chunks of queries spread over Ray actors.

Each actor (``TreeWorker``) loads the expert pool once, at its first node to make (llama.cpp with
``generation.ray.threads_per_worker`` threads, or whichever backend params name)
and runs ``generate_dataset`` on one chunk of query ids at a time, appending its
own shards to the same tree store. Ray does the scheduling and the recovery:

- ``ActorPool.map_unordered`` hands the next chunk to whichever actor is free;
- an actor whose process dies is restarted (``max_restarts=-1``: it loads the
  models again at its next node to make) and the chunk it was running is retried
  (``max_task_retries=-1``); the retry reads the store first, so the nodes the dead
  actor had already flushed are skipped and none is generated twice, and the ones it
  had not flushed are made again, so none is lost;
- chunks are disjoint, so two actors never make the same node.

Only this driver cleans up and compacts the store (before and after the run), since
a worker cannot tell another worker's half-written shard from a dead one's.

On a multi-node cluster every node must see the repository (code, params and the
data folder) at the same path, e.g. on a shared filesystem: the workers read
``data/prepared`` and write ``data/tree`` where the driver does.
"""
from __future__ import annotations

import logging
import os
import time

from tqdm import tqdm

from der_pipeline.artifacts import dataset_params, tree_dir
from der_pipeline.config import Params
from der_pipeline.experts.backends import BackendError
from der_pipeline.writer_lock import exclusive_writer

log = logging.getLogger(__name__)


class TreeWorker:
    """One model load per worker process; ``run`` generates one chunk of queries into the shared store."""

    def __init__(self, p: Params):
        threads = p.generation.ray.threads_per_worker
        self.p = p.override("generation", n_threads=threads)
        self.engines: dict = {}

    def pid(self) -> int:
        return os.getpid()

    def run(self, dataset: str, qids: list[str]) -> dict:
        from der_pipeline.experts.backends import EngineOnFirstUse, make_backend
        from der_pipeline.generate.run import generate_dataset

        name = self.p.backend_for(dataset)  # a dataset with its own engine (generation.backend_by_dataset)
        if name not in self.engines:  # started at its first node to make: a complete chunk needs none
            g = self.p.generation
            self.engines[name] = EngineOnFirstUse(g, name, lambda: make_backend(g, name))
        return generate_dataset(self.p, dataset, self.engines[name], progress=False, qids=qids, owner=False)


def _ray():
    try:
        import ray
        from ray.util import ActorPool
    except ImportError:
        raise BackendError("`generate --ray` needs Ray: pip install -e '.[ray]'") from None
    return ray, ActorPool


def start_workers(p: Params):
    """Join (or start) the cluster and create the actors. Returns (ray, actors)."""
    ray, _ = _ray()
    r = p.generation.ray
    if not ray.is_initialized():
        if r.address:
            ray.init(address=r.address, log_to_driver=False)
        else:  # a local cluster on loopback, sized to the workers; no dashboard, a small object store
            ray.init(num_cpus=r.workers * r.threads_per_worker, include_dashboard=False, _node_ip_address="127.0.0.1",
                     object_store_memory=256 * 1024 * 1024, log_to_driver=False)
    worker_cls = ray.remote(num_cpus=r.threads_per_worker, max_restarts=-1, max_task_retries=-1)(TreeWorker)
    actors = [worker_cls.remote(p) for _ in range(r.workers)]
    return ray, actors


def generate_on_ray(p: Params, datasets: list[str], limit: int | None = None, progress: bool = True,
                    actors: list | None = None) -> list[dict]:
    """Generate every dataset's missing nodes on Ray actors (started here unless ``actors`` are given)."""
    ray, ActorPool = _ray()
    if actors is None:
        ray, actors = start_workers(p)
    pool = ActorPool(actors)
    results = []
    for ds in datasets:
        with exclusive_writer(tree_dir(dataset_params(p, ds), ds), f"the {ds} tree"):  # the workers write under it
            results.append(_generate_on_pool(p, ds, pool, len(actors), limit, progress))
    return results


def _generate_on_pool(p: Params, ds: str, pool, n_actors: int, limit: int | None, progress: bool) -> dict:
    from der_pipeline.generate.run import dataset_queries, prepare_store

    store, corrupt = prepare_store(p, ds)
    qids = [q["qid"] for q in dataset_queries(p, ds, limit)]
    size = p.generation.chunk_queries
    chunks = [qids[i:i + size] for i in range(0, len(qids), size)]
    t0 = time.perf_counter()
    total = {"dataset": ds, "queries": len(qids), "nodes_total": 0, "nodes_skipped": 0, "nodes_stale": 0,
             "corrupt_shards": corrupt, "nodes_generated": 0, "tokens": 0, "output_tokens": 0,
             "workers": n_actors, "chunks": len(chunks)}
    bar = tqdm(total=len(chunks), desc=f"generate {ds} on {n_actors} Ray workers", unit="chunk",
               disable=not progress, dynamic_ncols=True)
    for stats in pool.map_unordered(lambda a, chunk: a.run.remote(ds, chunk), chunks):
        for k in ("nodes_total", "nodes_skipped", "nodes_stale", "nodes_generated", "tokens", "output_tokens"):
            total[k] += stats[k]
        bar.update(1)
    bar.close()
    store.discard_partial()  # a killed worker's half-written shard (its nodes were made again)
    store.compact()
    total["seconds"] = round(time.perf_counter() - t0, 2)
    return total
