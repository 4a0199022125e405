"""Tree generation per engine, side by side in one run: wall seconds per 20-node tree and output tokens/s.

On the same queries of one dataset (BoolQ unless --dataset) and the same expert pool (params.yaml's), each engine
runs `generate` into a fresh folder, in its own process, one after the other:

  (a) llamacpp     today's sequential path: in-process llama.cpp, one sequence at a time
  (b) llamaserver  llama.cpp's llama-server with parallel slots (continuous batching), N requests in flight
  (c) vllm         vLLM's CPU build (.venv-vllm; `make setup-vllm`), one batch per expert and hop
  (d) ray          the sequential path on a local Ray cluster of 2 workers (1 llama.cpp thread each)

Each engine first makes query 0's tree (a warm-up: model loads, vLLM's compilation, Ray's start-up), then
the timed run makes the trees of queries 1..K. Output tokens are the tokens the experts generated
(prompt tokens, reused or not, are not counted). The reference limit is each expert's raw llama.cpp
decode speed (one sequence, tokens/s), and the pool's decode-only time for the same output tokens.

    python benchmarks/tree_engines.py [--queries 4] [--engines llamacpp,llamaserver,vllm,ray] [--dataset gsm8k]

Batching speeds up decoding, not prompt evaluation, so the gain depends on the dataset: BoolQ's short
answers are mostly prompt; GSM8K's worked answers are mostly decoding (`generation.backend_by_dataset`
gives one dataset its own engine).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
ENGINES = ("llamacpp", "llamaserver", "vllm", "ray")


def write_params(folder: Path, queries: int, engine: str, chunk: int, dataset: str) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["paths"].update(source_data=str((REPO / raw["paths"]["source_data"]).resolve()), data=str(folder / "data"))
    raw["data"]["datasets"] = {dataset: {"sample": queries + 1}}
    raw["generation"]["backend_by_dataset"] = {}
    raw["evaluate"]["cross_task"] = [dataset]
    raw["generation"]["chunk_queries"] = chunk
    raw["generation"]["backend"] = "llamacpp" if engine == "ray" else engine
    raw["generation"]["llamaserver"]["binary"] = str(REPO / raw["generation"]["llamaserver"]["binary"])
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_one(params: str, engine: str) -> dict:
    """In the engine's own process: warm-up on query 0, then the timed trees of queries 1..K."""
    from der_pipeline.config import load_params

    p = load_params(params)
    ds = next(iter(p.data.datasets))
    n = p.data.datasets[ds].sample
    if engine == "ray":
        from der_pipeline.generate.distributed import generate_on_ray, start_workers

        t0 = time.perf_counter()
        ray, actors = start_workers(p)
        generate_on_ray(p, [ds], limit=1, progress=False, actors=actors)
        warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        (stats,) = generate_on_ray(p, [ds], limit=n, progress=False, actors=actors)
        secs = time.perf_counter() - t0
        ray.shutdown()
    else:
        from der_pipeline.experts.backends import make_backend
        from der_pipeline.generate.run import generate_dataset

        t0 = time.perf_counter()
        backend = make_backend(p.generation)
        generate_dataset(p, ds, backend, limit=1, progress=False)
        warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        stats = generate_dataset(p, ds, backend, limit=n, progress=False)
        secs = time.perf_counter() - t0
        backend.close()
    from der_pipeline.artifacts import load_prepared, tree_dir
    from der_pipeline.tree_store import TreeStore

    warm_qid = load_prepared(p, ds)["qid"][0].as_py()
    by_expert: dict[str, int] = {}
    for r in TreeStore(tree_dir(p, ds)).read().to_pylist():
        if r["qid"] != warm_qid:
            by_expert[r["expert"]] = by_expert.get(r["expert"], 0) + r["completion_tokens"]
    return {"engine": engine, "warmup_s": round(warm, 1), "seconds": round(secs, 2), "trees": n - 1,
            "nodes": stats["nodes_generated"], "output_tokens": stats["output_tokens"],
            "prompt_and_output_tokens": stats["tokens"], "output_tokens_by_expert": by_expert}


def raw_decode(p) -> dict[str, float]:
    """Each expert's raw llama.cpp decode speed: one sequence, 64 tokens after a short prompt, no sampling
    work beyond greedy argmax (the limit a sequential engine can reach on this machine)."""
    import numpy as np
    from llama_cpp import Llama

    from der_pipeline.experts.models import expert_model_path

    out = {}
    for e in p.experts:
        llm = Llama(model_path=str(expert_model_path(e)), n_ctx=512, n_threads=p.generation.n_threads, verbose=False)
        toks = llm.tokenize(b"The history of the river begins", add_bos=True)
        llm.eval(toks)
        t0 = time.perf_counter()
        for _ in range(64):
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            llm.eval([nxt])
        out[e.name] = 64 / (time.perf_counter() - t0)
        llm.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=4, help="timed trees (after one warm-up tree)")
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--dataset", default="boolq", help="whose queries the trees are made of (prepared first)")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one engine in this process
    ap.add_argument("--params", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(args.params, args.one)), flush=True)
        return

    engines = [e for e in args.engines.split(",") if e]
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        raise SystemExit(f"unknown engine(s) {unknown}; choose from {list(ENGINES)}")
    from der_pipeline.config import load_params

    p = load_params(REPO / "params.yaml")
    results = []
    for engine in engines:
        folder = Path(tempfile.mkdtemp(prefix=f"tree-{engine}-"))
        chunk = max(1, args.queries // 2) if engine == "ray" else args.queries
        params = write_params(folder, args.queries, engine, chunk, args.dataset)
        python = str(VLLM_PYTHON) if engine == "vllm" else sys.executable
        if engine == "vllm" and not VLLM_PYTHON.exists():
            print(f"skip vllm: {VLLM_PYTHON} missing (make setup-vllm)")
            continue
        env = {**os.environ, "HF_HUB_OFFLINE": "1",
               "VLLM_CACHE_ROOT": str(Path.home() / ".cache" / "der-pipeline" / "vllm")}
        subprocess.run([python, "-m", "der_pipeline.cli", "prepare", "--params", str(params)], cwd=REPO, env=env,
                       check=True, capture_output=True)
        t0 = time.perf_counter()
        proc = subprocess.run([python, __file__, "--one", engine, "--params", str(params)], cwd=REPO, env=env,
                              capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            log = Path(tempfile.gettempdir()) / f"tree-engines-{engine}.log"
            log.write_text(proc.stdout + "\n" + proc.stderr)
            print(f"{engine}: failed ({proc.returncode}) after {time.perf_counter() - t0:.0f} s; its output: {log}\n"
                  f"{proc.stderr[-1500:]}")
            continue
        results.append(json.loads(line.removeprefix("RESULT ")))
        print(json.dumps(results[-1]), flush=True)
        shutil.rmtree(folder, ignore_errors=True)

    decode = raw_decode(p)
    print()
    print(f"BoolQ, pool {', '.join(e.name for e in p.experts)}; {args.queries} timed trees of 20 nodes each "
          f"after one warm-up tree; {os.cpu_count()} CPU cores")
    print(f"{'engine':<12} {'s/tree':>8} {'out tok/s':>10} {'x (a)':>7} {'warm-up s':>10}")
    base = next((r for r in results if r["engine"] == "llamacpp"), None)
    for r in results:
        per_tree = r["seconds"] / r["trees"]
        ratio = (base["seconds"] / r["seconds"]) if base else float("nan")
        print(f"{r['engine']:<12} {per_tree:8.1f} {r['output_tokens'] / r['seconds']:10.1f} {ratio:7.2f} "
              f"{r['warmup_s']:10.1f}")
    print("raw llama.cpp decode, one sequence (tok/s): "
          + ", ".join(f"{k} {v:.1f}" for k, v in decode.items()))
    if base:
        floor = sum(t / decode[e] for e, t in base["output_tokens_by_expert"].items())
        print(f"decode-only time of (a)'s {base['output_tokens']} output tokens at those speeds: {floor:.1f} s "
              f"of its {base['seconds']:.1f} s ({floor / base['seconds']:.0%}); the rest is prompt evaluation")


if __name__ == "__main__":
    main()
