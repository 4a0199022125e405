"""`der-pipeline serve` under load: requests per second and latency percentiles for 1 and 4 concurrent
clients on the same BoolQ test questions, in one run, through the official `openai` client.

Starts the server itself (the committed BoolQ policy and the real experts, as `der-pipeline serve -d boolq`)
unless --base-url points at a running one. On 2 cores the experts' calls are serialised per model, so
4 clients mostly queue: the ratio shows how much of a request is spent waiting.

    python benchmarks/serve_speed.py [--questions 8] [--model der]
"""
from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx2 as httpx
import numpy as np
import openai

from der_pipeline.artifacts import load_prepared
from der_pipeline.config import load_params


def start_server(params: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "der_pipeline.cli", "serve", "-d", "boolq", "--port", str(port),
                             "--params", params], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"serve exited with {proc.returncode}")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return proc, base
        except httpx.TransportError:
            time.sleep(1)
    raise SystemExit("serve did not come up in 10 minutes")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--questions", type=int, default=8, help="BoolQ test questions per concurrency level")
    ap.add_argument("--model", default="der", help="der, der:<alpha> or an expert's name")
    ap.add_argument("--base-url", default=None, help="a running server (default: start one)")
    args = ap.parse_args()
    p = load_params(args.params)
    rows = [r for r in load_prepared(p, "boolq").to_pylist() if r["split"] == "test"][: args.questions]
    proc, base = (None, args.base_url.rstrip("/").removesuffix("/v1")) if args.base_url else start_server(args.params)
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=900)

    def one(row) -> tuple[float, int, float]:
        t0 = time.perf_counter()
        r = client.chat.completions.create(model=args.model, messages=[{"role": "user", "content": row["question"]}],
                                           extra_body={"context": row["context"]})
        return time.perf_counter() - t0, len(r.model_extra["der"]["steps"]), r.model_extra["der"]["cost_gflops"]

    try:
        one(rows[0])  # warm-up: the first call of each model pays its page-in
        print(f"model={args.model} questions={len(rows)} (BoolQ test split), server {base}")
        print(f"{'clients':>7} {'req/s':>7} {'p50 s':>7} {'p90 s':>7} {'max s':>7} {'calls/req':>9} {'GFLOPs/req':>10}")
        results = {}
        for clients in (1, 4):
            t0 = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                out = list(pool.map(one, rows))
            wall = time.perf_counter() - t0
            lat = np.array([o[0] for o in out])
            results[clients] = len(rows) / wall
            print(f"{clients:>7} {len(rows) / wall:>7.3f} {np.percentile(lat, 50):>7.2f} "
                  f"{np.percentile(lat, 90):>7.2f} "
                  f"{lat.max():>7.2f} {np.mean([o[1] for o in out]):>9.2f} {np.mean([o[2] for o in out]):>10.1f}")
        print(f"throughput ratio, 4 clients / 1 client: {results[4] / results[1]:.2f}x")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
