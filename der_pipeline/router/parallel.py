"""Independent PPO trainings (one per seed) side by side in worker processes.

Each training is seeded and runs on one thread (router/ppo.py), so a worker process computes exactly what
the parent would: the policies, logs and every result are the same for any number of workers
(tests/test_parallel.py checks it). The pool is started once per process, with the ``spawn`` method (a
forked torch can deadlock on its thread pool), and reused by every stage call.
"""
from __future__ import annotations

import atexit
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

_POOL: ProcessPoolExecutor | None = None
_POOL_WORKERS = 0


def _pool(workers: int) -> ProcessPoolExecutor:
    global _POOL, _POOL_WORKERS
    if _POOL is None or _POOL_WORKERS != workers:
        if _POOL is not None:
            _POOL.shutdown()
        _POOL, _POOL_WORKERS = ProcessPoolExecutor(workers, mp_context=get_context("spawn")), workers
        atexit.register(_POOL.shutdown)
    return _POOL


def _train(job: dict):
    from der_pipeline import params_trace
    from der_pipeline.router.selection import train_ppo

    params_trace.trace_from_env(worker=True)  # a no-op unless a test traces the params keys a stage reads
    try:
        return train_ppo(**job)
    finally:
        params_trace.dump()


def train_many(jobs: list[dict], workers: int) -> list[tuple]:
    """``train_ppo(**job)`` for every job, in order: in ``workers`` processes where there is more than one job."""
    if workers <= 1 or len(jobs) <= 1:
        return [_train(job) for job in jobs]
    return list(_pool(min(workers, len(jobs))).map(_train, jobs))
