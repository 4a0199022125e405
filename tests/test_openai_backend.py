"""The OpenAI-compatible backend against real HTTP servers on 127.0.0.1 that misbehave on purpose.

The server is a small real one (http.server in a thread) that answers like an OpenAI endpoint, so the
client's retries and error paths run for real; the llama.cpp server test in test_generate_real.py
covers the same backend against a real model server, killed mid-run.
"""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from der_pipeline.experts.backends import BackendError, make_backend
from der_pipeline.experts.prompts import build_prompt


class Script:
    """What the server answers, in order: an int is an HTTP error status, a dict a 200 body."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.requests = 0


def completion(usage=True):
    body = {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Yes, it is."},
                         "finish_reason": "stop"}]}
    if usage:
        body["usage"] = {"prompt_tokens": 31, "completion_tokens": 4, "total_tokens": 35}
    return body


@pytest.fixture()
def server():
    script = Script([])

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers["Content-Length"]))
            script.requests += 1
            answer = script.answers.pop(0) if script.answers else completion()
            if isinstance(answer, int):
                self.send_response(answer)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(json.dumps({"error": {"message": "busy", "type": "server_error"}}).encode())
                return
            data = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield script, f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def backend_for(repo_params, url, retries=3):
    p = repo_params.override("generation", backend="openai",
                             openai={"base_url": url, "timeout_s": 10, "max_retries": retries})
    return make_backend(p.generation), p.experts[0]


PROMPT = build_prompt(True, "Is it?", "", "yes_no", 4)


def test_503_twice_then_success_is_retried(server, repo_params):
    script, url = server
    script.answers = [503, 503, completion()]
    backend, expert = backend_for(repo_params, url)
    [out] = list(backend.generate(expert, [PROMPT]))
    assert script.requests == 3
    assert out.text == "Yes, it is." and out.prompt_tokens == 31 and out.completion_tokens == 4


def test_errors_past_the_retries_name_the_status(server, repo_params):
    script, url = server
    script.answers = [503, 503, 503]
    backend, expert = backend_for(repo_params, url, retries=2)
    with pytest.raises(BackendError, match="HTTP 503"):
        list(backend.generate(expert, [PROMPT]))
    assert script.requests == 3


def test_a_response_without_usage_is_an_error_not_a_free_call(server, repo_params):
    script, url = server
    script.answers = [completion(usage=False)]
    backend, expert = backend_for(repo_params, url)
    with pytest.raises(BackendError, match="no token usage"):
        list(backend.generate(expert, [PROMPT]))
