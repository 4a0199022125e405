"""Fakes for fast tests, each beside a real test of the same path.

``FakeBackend``: deterministic text from the prompt, for the resume and invalidation tests. It stands in for
the engine named in params (its ``name``), so the nodes it writes are keyed as that engine's would be; the
real-model tests in test_generate_real.py run the same paths with llama.cpp.

``FakeExperts``: an OpenAI-compatible expert server on 127.0.0.1 that records what it saw, for the gateway
tests (the real-engine twins are in tests/engines/ and tests/integration/test_serve_real.py).
"""
from __future__ import annotations

import hashlib
import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from der_pipeline.experts.backends import Backend, Completion


class FakeBackend(Backend):
    def __init__(self, cfg, name: str | None = None, fail_after: int | None = None):
        super().__init__(cfg)
        self.name = name or cfg.backend
        self.calls = 0
        self.fail_after = fail_after

    def generate(self, expert, prompts):
        for p in prompts:
            if self.fail_after is not None and self.calls >= self.fail_after:
                raise RuntimeError("fake backend: failing on purpose")
            self.calls += 1
            blob = json.dumps([expert.name, p.kind, list(p.messages), p.text], sort_keys=True)
            h = hashlib.sha256(blob.encode()).hexdigest()
            text = ("Yes" if int(h[0], 16) % 2 else "No") + f", because {h[:8]}."
            yield Completion(text=text, prompt_tokens=len(blob) // 4, completion_tokens=6, latency_s=0.0,
                             finish_reason="stop")


class JsonHandler(BaseHTTPRequestHandler):
    """An HTTP handler that answers JSON and logs nothing: the base of every fake server of the suite."""

    def reply(self, status: int, obj) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client that went away mid-request (the disconnect tests): not an error here


def serve_in_thread(handler: type[BaseHTTPRequestHandler]) -> tuple[QuietServer, str]:
    """``handler`` served on 127.0.0.1 (port 0: the kernel picks it) in a daemon thread; the server and its
    OpenAI-style base URL. Stop it with ``shutdown()`` and ``server_close()``."""
    httpd = QuietServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/v1"


HOLD_S = 5  # the longest FakeExperts holds a request (a failing test ends, never hangs)


class FakeExperts:
    """An OpenAI-compatible server for every expert (the model id is the expert's name): each answer echoes the
    question, with token logprobs when asked. ``dead``: model ids whose requests get the connection dropped
    (an expert server that was killed); ``broken``: model ids answered HTTP 500 with a message naming a file;
    ``hold(n, model)``, if set, runs in the request's thread before it answers."""

    def __init__(self):
        self.requests: list[str] = []  # the model id of each request, in arrival order
        self.in_flight = self.max_in_flight = 0
        self.dead: set[str] = set()
        self.broken: set[str] = set()
        self.hold = None
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        fake = self

        class Handler(JsonHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                model = body["model"]
                with fake.changed:
                    fake.requests.append(model)
                    n = len(fake.requests)
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                    fake.changed.notify_all()
                try:
                    if fake.hold is not None:
                        fake.hold(n, model)
                    if model in fake.dead:
                        self.close_connection = True  # no response at all: the client sees the server gone
                        return
                    if model in fake.broken:
                        self.reply(500, {"error": {"message": "cannot load /srv/models/secret.gguf", "type": "x"}})
                        return
                    self.reply(200, answer(body, chat=self.path.endswith("/chat/completions")))
                finally:
                    with fake.changed:
                        fake.in_flight -= 1
                        fake.changed.notify_all()

        self.httpd, self.url = serve_in_thread(Handler)

    def wait_in_flight(self, n: int, timeout_s: float) -> None:
        """Block (a request's thread) until ``n`` requests are in flight together, at most ``timeout_s``."""
        with self.changed:
            self.changed.wait_for(lambda: self.in_flight >= n, timeout_s)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def answer(body: dict, chat: bool) -> dict:
    text = (body["messages"][-1]["content"] if chat else body["prompt"]).split("Question: ")[-1].split("\n")[0]
    logprobs = None
    if body.get("logprobs"):
        top = [{"token": " Yes", "logprob": math.log(0.7)}, {"token": " No", "logprob": math.log(0.2)}]
        logprobs = {"content": [{"token": " Yes", "logprob": math.log(0.7), "top_logprobs": top}]}
    choice = ({"index": 0, "message": {"role": "assistant", "content": text}} if chat else
              {"index": 0, "text": text})
    return {"id": "x", "object": "chat.completion" if chat else "text_completion", "created": 0, "model": body["model"],
            "choices": [{**choice, "finish_reason": "stop", "logprobs": logprobs}],
            "usage": {"prompt_tokens": 40, "completion_tokens": 3, "total_tokens": 43}}
