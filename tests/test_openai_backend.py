"""The OpenAI-compatible backend against real HTTP servers on 127.0.0.1 that misbehave on purpose.

The server is a small real one (http.server in a thread) that answers like an OpenAI endpoint, so the
client's retries and error paths run for real; the llama.cpp server test in test_generate_real.py
covers the same backend against a real model server, killed mid-run.
"""
import json
import math
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from der_pipeline.experts.backends import BackendError, make_backend
from der_pipeline.experts.prompts import build_prompt


class Script:
    """What the server answers, in order: an int is an HTTP error status, a dict a 200 body."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.requests = 0
        self.bodies = []
        self.echo_delay = None  # set: answer each request with its own question after this many seconds
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()


def completion(usage=True):
    body = {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Yes, it is."},
                         "finish_reason": "stop"}]}
    if usage:
        body["usage"] = {"prompt_tokens": 31, "completion_tokens": 4, "total_tokens": 35}
    return body


def echo(body):
    """A chat completion whose answer is the request's question, with llama-server-style logprobs if asked."""
    answer = body["messages"][-1]["content"].split("Question: ")[-1].split("\n")[0]
    out = completion()
    out["choices"][0]["message"]["content"] = answer
    if body.get("logprobs"):
        top = [{"token": " Yes", "logprob": math.log(0.6)}, {"token": "No", "logprob": math.log(0.2)},
               {"token": "Maybe", "logprob": math.log(0.1)}]
        out["choices"][0]["logprobs"] = {"content": [
            {"token": " ", "logprob": -0.01, "top_logprobs": []},
            {"token": " Yes", "logprob": math.log(0.6), "top_logprobs": top},
            {"token": ",", "logprob": math.log(0.5), "top_logprobs": []}]}
    return out


@pytest.fixture()
def server():
    script = Script([])

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with script.lock:
                script.requests += 1
                script.bodies.append(body)
                script.in_flight += 1
                script.max_in_flight = max(script.max_in_flight, script.in_flight)
            if script.echo_delay is not None:
                time.sleep(script.echo_delay)
                answer = echo(body)
            else:
                answer = script.answers.pop(0) if script.answers else completion()
            with script.lock:
                script.in_flight -= 1
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


def backend_for(repo_params, url, retries=3, **openai):
    p = repo_params.override("generation", backend="openai",
                             openai={"base_url": url, "timeout_s": 10, "max_retries": retries, **openai})
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


def test_concurrent_requests_come_back_in_order_with_n_in_flight(server, repo_params):
    script, url = server
    script.echo_delay = 0.3
    backend, expert = backend_for(repo_params, url, concurrency=4)
    prompts = [build_prompt(True, f"question {i}?", "", "yes_no", 4) for i in range(8)]
    t0 = time.perf_counter()
    outs = list(backend.generate(expert, prompts))
    assert [o.text for o in outs] == [f"question {i}?" for i in range(8)]
    assert script.max_in_flight == 4
    assert time.perf_counter() - t0 < 8 * 0.3  # overlapped, not one after another
    assert all("logprobs" not in b for b in script.bodies)  # top_logprobs 0: not asked


def test_a_stop_mid_batch_ends_each_stream_after_its_request_in_flight(server, repo_params):
    """SIGTERM during a batch (a signal handler raising in the waiting thread, as resumable.py's does): the
    queued prompts are not sent. They used to be: the pool's exit waited for every block to finish."""
    class Stopped(Exception):
        pass

    def raise_stopped(*_):
        raise Stopped

    script, url = server
    script.echo_delay = 0.3
    backend, expert = backend_for(repo_params, url, concurrency=2)
    prompts = [build_prompt(True, f"question {i}?", "", "yes_no", 4) for i in range(20)]
    old = signal.signal(signal.SIGALRM, raise_stopped)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.45)  # during each stream's second request
        t0 = time.perf_counter()
        with pytest.raises(Stopped):
            list(backend.generate(expert, prompts))
        stopped_after = time.perf_counter() - t0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert stopped_after < 1.5  # the requests in flight finish; the 16 queued ones (2.4 s per stream) are dropped
    time.sleep(0.5)
    assert script.requests <= 6


def test_server_logprobs_give_the_confidence_features(server, repo_params):
    script, url = server
    script.echo_delay = 0.0
    backend, expert = backend_for(repo_params, url, top_logprobs=5)
    [out] = list(backend.generate(expert, [PROMPT]))
    assert script.bodies[0]["logprobs"] is True and script.bodies[0]["top_logprobs"] == 5
    c = out.confidence
    # the whitespace-only first token is skipped; yes_prob = 0.6 / (0.6 + 0.2) over the top alternatives
    assert c.answer_tokens == 2 and c.first_prob == pytest.approx(0.6)
    assert c.yes_prob == pytest.approx(0.75)
    assert c.mean_logprob == pytest.approx((math.log(0.6) + math.log(0.5)) / 2)
    assert c.min_logprob == pytest.approx(math.log(0.5))


def test_legacy_completion_logprobs_are_read_too():
    from der_pipeline.experts.backends import token_logprobs
    from der_pipeline.experts.confidence import from_token_logprobs

    legacy = {"tokens": ["No", "."], "token_logprobs": [math.log(0.9), -0.1],
              "top_logprobs": [{"No": math.log(0.9), " yes": math.log(0.05)}, {".": -0.1}]}
    rows = token_logprobs(legacy)
    assert rows[0] == ("No", pytest.approx(math.log(0.9)), {"No": pytest.approx(math.log(0.9)),
                                                            " yes": pytest.approx(math.log(0.05))})
    c = from_token_logprobs(rows, "yes_no")
    assert c.yes_prob == pytest.approx(0.05 / 0.95) and c.answer_tokens == 2
    assert from_token_logprobs([(" ", -0.1, {})], "yes_no").answer_tokens == 0  # only whitespace: empty
    assert from_token_logprobs(rows, "span").yes_prob is None
    assert token_logprobs(None) is None
