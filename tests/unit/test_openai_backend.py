"""The OpenAI-compatible backend against real HTTP servers on 127.0.0.1 that misbehave on purpose.

The server is a small real one (http.server in a thread, bound to port 0) that answers like an OpenAI
endpoint, so the client's retries and error paths run for real; the llama.cpp server test in
test_generate_real.py covers the same backend against a real model server, killed mid-run. What the
server saw (requests, bodies, how many were in flight at once) is recorded server-side, and the tests
check that, never the wall clock. A stand-in llama-server binary checks how the llamaserver engine
starts its servers: a port taken before the bind, a server that never gets ready.
"""
import json
import math
import os
import signal
import sys
import threading

import pytest
from fakes import JsonHandler, serve_in_thread

from der_pipeline.config import ExpertSpec
from der_pipeline.experts import backends
from der_pipeline.experts.backends import BackendError, make_backend
from der_pipeline.experts.prompts import build_prompt

HOLD_S = 5  # the longest a request is held by the server waiting for others (a failing test ends, never hangs)


class Script:
    """What the server answers, in order: an int is an HTTP error status, a dict a 200 body.

    ``echo``: answer each request with its own question instead. ``hold(n)``, if set, runs in the request's
    handler thread (``n``: its number, from 1) before it answers: a test holds requests there on an event or a
    barrier, so the server itself observes what was in flight together."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.requests = 0
        self.bodies = []
        self.echo = False
        self.hold = None
        self.in_flight = self.max_in_flight = 0
        self.answered = 0
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

    class Handler(JsonHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with script.lock:
                script.requests += 1
                n = script.requests
                script.bodies.append(body)
                script.in_flight += 1
                script.max_in_flight = max(script.max_in_flight, script.in_flight)
            if script.hold is not None:
                script.hold(n)
            if script.echo:
                answer = echo(body)
            else:
                answer = script.answers.pop(0) if script.answers else completion()
            with script.lock:
                script.in_flight -= 1
                script.answered += 1
            if isinstance(answer, int):
                self.reply(answer, {"error": {"message": "busy", "type": "server_error"}})
                return
            self.reply(200, answer)

    httpd, url = serve_in_thread(Handler)
    yield script, url
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
    """Four streams of two prompts: the server holds every request until four are in flight together (a barrier
    of four, reset for the second round), so it sees the overlap itself; a client sending one at a time breaks
    the barrier, which the server records."""
    script, url = server
    script.echo = True
    together = threading.Barrier(4, timeout=HOLD_S)
    broken = []

    def hold(n):
        try:
            together.wait()
        except threading.BrokenBarrierError:
            broken.append(n)

    script.hold = hold
    backend, expert = backend_for(repo_params, url, concurrency=4)
    prompts = [build_prompt(True, f"question {i}?", "", "yes_no", 4) for i in range(8)]
    outs = list(backend.generate(expert, prompts))
    assert [o.text for o in outs] == [f"question {i}?" for i in range(8)]
    assert broken == [] and script.requests == 8  # two rounds of four in flight at once: overlapped
    assert script.max_in_flight == 4  # and never more than the setting
    assert all("logprobs" not in b for b in script.bodies)  # top_logprobs 0: not asked


def test_a_stop_mid_batch_ends_each_stream_after_its_request_in_flight(server, repo_params):
    """SIGTERM during a batch (a signal handler raising in the waiting thread, as resumable.py's does): the
    queued prompts are not sent. They used to be: the pool's exit waited for every block to finish."""
    class Stopped(Exception):
        pass

    script, url = server
    script.echo = True
    main = threading.main_thread().ident
    second_round = threading.Barrier(2, timeout=HOLD_S)  # requests 3 and 4: each stream's second, both in flight
    signalled, handled = threading.Event(), threading.Event()
    seen = {}

    def raise_stopped(*_):
        handled.set()
        raise Stopped

    def hold(n):
        if n not in (3, 4):
            return
        try:
            if second_round.wait() == 0:  # one of the two sends the stop, while both are held here
                seen["in_flight_at_stop"] = script.in_flight
                signal.pthread_kill(main, signal.SIGALRM)
                signalled.set()
        except threading.BrokenBarrierError:
            seen.setdefault("broken", n)
        signalled.wait(HOLD_S)
        handled.wait(HOLD_S)  # answer only once the stop has reached the generating thread

    script.hold = hold
    backend, expert = backend_for(repo_params, url, concurrency=2)
    prompts = [build_prompt(True, f"question {i}?", "", "yes_no", 4) for i in range(20)]
    old = signal.signal(signal.SIGALRM, raise_stopped)
    try:
        with pytest.raises(Stopped):
            list(backend.generate(expert, prompts))
    finally:
        signal.signal(signal.SIGALRM, old)
    # `generate` has returned, so its streams have ended: nothing more can reach the server
    assert "broken" not in seen and seen["in_flight_at_stop"] == 2 and handled.is_set()
    assert script.answered == script.requests  # the requests in flight were answered, not cut off
    assert script.requests <= 6  # the 16 queued prompts were dropped (at most one more per stream got out first)


def test_server_logprobs_give_the_confidence_features(server, repo_params):
    script, url = server
    script.echo = True
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


FAKE_LLAMA_SERVER = """\
import http.server, json, os, sys, time
from pathlib import Path

args = sys.argv[1:]
port, alias = int(args[args.index("--port") + 1]), args[args.index("-a") + 1]
state = Path(os.environ["FAKE_LLAMA_STATE"])
if not os.environ.get("FAKE_LLAMA_OTHER"):
    with (state / "starts").open("a") as f:
        f.write(f"{port}\\n")
starts = len((state / "starts").read_text().split())
mode = "serve" if os.environ.get("FAKE_LLAMA_OTHER") else (state / "mode").read_text()
if mode == "bind-fails-always" or (mode == "bind-fails-once" and starts == 1):
    print(f"main: couldn't bind HTTP server socket, hostname: 127.0.0.1, port: {port}", flush=True)
    sys.exit(1)
if mode == "never-ready":
    time.sleep(600)
if mode == "taken-by-another" and starts == 1:  # another server holds the port; this one fails to bind, late
    import subprocess
    other = subprocess.Popen([sys.executable, __file__, "--port", str(port), "-a", "another-model"],
                             env={**os.environ, "FAKE_LLAMA_OTHER": "1"})
    (state / "other.pid").write_text(str(other.pid))
    time.sleep(2)  # loading: the engine probes the port meanwhile, and finds the other server there
    print(f"main: couldn't bind HTTP server socket, hostname: 127.0.0.1, port: {port}", flush=True)
    sys.exit(1)


class Models(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        data = json.dumps({"object": "list", "data": [{"id": alias, "object": "model"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass


http.server.HTTPServer(("127.0.0.1", port), Models).serve_forever()
"""


@pytest.fixture()
def fake_llama_server(tmp_path, monkeypatch, repo_params):
    """A stand-in llama-server (its --port, -a and /v1/models only), in a mode the test picks, and the
    llamaserver engine pointed at it with one local 'model'. Returns (set_mode, make_backend, expert, starts)."""
    binary = tmp_path / "llama-server"
    binary.write_text(f"#!{sys.executable}\n" + FAKE_LLAMA_SERVER)
    binary.chmod(0o755)
    state = tmp_path / "state"
    state.mkdir()
    (state / "starts").write_text("")
    monkeypatch.setenv("FAKE_LLAMA_STATE", str(state))
    model = tmp_path / "tiny.gguf"
    model.write_bytes(b"GGUF" + bytes(16))
    expert = ExpertSpec(name="tiny", source=str(model), params_b=0.1, chat=True)
    made = []

    def make(start_timeout_s=30.0):
        g = repo_params.override("generation", backend="llamaserver",
                                 llamaserver={"binary": str(binary), "slots": 1,
                                              "start_timeout_s": start_timeout_s}).generation
        made.append(make_backend(g))
        return made[-1]

    yield (lambda mode: (state / "mode").write_text(mode)), make, expert, \
        (lambda: [int(x) for x in (state / "starts").read_text().split()])
    for b in made:
        b.close()
    if (state / "other.pid").exists():
        os.kill(int((state / "other.pid").read_text()), signal.SIGKILL)


def test_llama_server_whose_port_was_taken_before_it_bound_is_started_again_on_another(fake_llama_server):
    set_mode, make, expert, starts = fake_llama_server
    set_mode("bind-fails-once")
    backend = make()
    backend._client_for(expert)  # starts the expert's server
    first, second = starts()  # two starts: the first lost its port, the second came up on a fresh one
    assert first != second
    proc, client, _ = backend._servers["tiny"]
    assert proc.poll() is None and str(client.base_url) == f"http://127.0.0.1:{second}/v1/"


def test_llama_server_never_mistakes_another_server_on_its_port_for_itself(fake_llama_server):
    """The probe's race the other way round: another server took the port and answers there while this one
    loads (and then fails to bind). The engine waits for its own model alias, then starts again elsewhere."""
    set_mode, make, expert, starts = fake_llama_server
    set_mode("taken-by-another")
    backend = make()
    backend._client_for(expert)
    first, second = starts()
    proc, client, _ = backend._servers["tiny"]
    assert str(client.base_url) == f"http://127.0.0.1:{second}/v1/" and second != first
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_llama_server_that_cannot_bind_any_port_is_a_clear_error_after_bounded_tries(fake_llama_server):
    set_mode, make, expert, starts = fake_llama_server
    set_mode("bind-fails-always")
    with pytest.raises(BackendError, match=r"(?s)exited with code 1.*couldn't bind"):
        make()._client_for(expert)
    assert len(starts()) == backends.PORT_ATTEMPTS == 3  # bounded: three starts, then the error


def test_llama_server_not_ready_by_its_deadline_is_an_error_naming_the_deadline(fake_llama_server):
    set_mode, make, expert, starts = fake_llama_server
    set_mode("never-ready")
    backend = make(start_timeout_s=1.0)
    with pytest.raises(BackendError, match=r"not ready after 1\.0 s \(generation\.llamaserver\.start_timeout_s\)"):
        backend._client_for(expert)
    assert len(starts()) == 1 and "tiny" not in backend._servers  # killed, not retried, not kept
