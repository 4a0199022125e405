"""`serve` as a gateway in front of served experts: concurrency per backend, the API key, back-pressure,
deadlines, disconnects, degradation with a circuit breaker, hardened input, and /metrics.

Each test runs the real app on a real uvicorn server on 127.0.0.1 (port 0), driven by the official `openai`
client (or httpx where the raw response matters), with the experts behind the `openai` backend pointed at a
fake OpenAI-compatible server on 127.0.0.1 (``FakeExperts``, http.server in a thread) that records what it
saw: the requests per model and how many were in flight together. The policy is an untrained network over the
confidence state (no embedder), so these run in seconds. Every wait is bounded.
"""
import json
import logging
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx2 as httpx
import openai
import pytest
import torch
from conftest import REPO, uvicorn_in_thread, wait_until
from fakes import FakeBackend, FakeExperts
from prometheus_client.parser import text_string_to_metric_families

from der_pipeline.router.arrays import CONF_FEATURES
from der_pipeline.router.env import obs_dim
from der_pipeline.router.live import LiveRouter, Policy
from der_pipeline.router.methods import FixedPath
from der_pipeline.router.ppo import Agent
from der_pipeline.serve.app import ServeOptions, bind_warning, create_app
from der_pipeline.serve.service import RouterService, Services

HOLD_S = 5  # the longest the fake server holds a request (a failing test ends, never hangs)


def untrained(n: int, alpha: float, path) -> Policy:
    torch.manual_seed(0)
    agent = Agent(obs_dim("confidence", 384, len(CONF_FEATURES), n), 2 * n + 1)
    agent.eval()
    return Policy(path=path, agent=agent, state="confidence", ktp_only=False, alpha=alpha, seed=1)


class Gateway:
    def __init__(self, base, client, fake, service):
        self.base, self.client, self.fake, self.service = base, client, fake, service
        self.live, self.names = service.live, service.live.names

    def ask(self, model="fixed", question="Is the sky blue?", **kw):
        return self.client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                                   **kw)

    def post(self, body, headers=None, timeout=30):
        return httpx.post(f"{self.base}/v1/chat/completions", json=body, headers=headers, timeout=timeout)


@pytest.fixture()
def gateway(repo_params, tmp_path):
    """A factory: ``gateway(concurrency=8, options=ServeOptions(...), breaker=(failures, cooldown_s),
    backend=None)`` -> a Gateway on a fresh fake expert server. Routers: ``fixed`` (the first expert, refined by
    the second), ``single`` (the first expert alone); ``der`` the untrained policy, saved at an absolute path."""
    made = []
    stack = []

    def make(concurrency=8, options=None, breaker=(2, 60.0), backend=None, top_logprobs=0, expert_timeout_s=None,
             extra=(), more_datasets=()):
        fake = FakeExperts()
        made.append(fake)
        p = repo_params.override("generation", backend="openai",
                                 openai={"base_url": fake.url, "timeout_s": 10, "max_retries": 0,
                                         "concurrency": concurrency, "top_logprobs": top_logprobs})
        live = LiveRouter(p, "yes_no", backend=backend, breaker_failures=breaker[0], breaker_cooldown_s=breaker[1],
                          expert_timeout_s=expert_timeout_s)
        names = live.names
        policy_file = tmp_path / f"models-{len(made)}" / "policy.pt"
        policy_file.parent.mkdir()
        policy_file.write_bytes(b"not a real checkpoint")
        routers = {"fixed": FixedPath("fixed", names, [names[0], names[1]]),
                   "single": FixedPath("single", names, [names[0]])}
        service = RouterService(live, "boolq", untrained(len(names), 0.5, policy_file),
                                [untrained(len(names), 0.25, tmp_path / "elsewhere.pt"), *extra], routers=routers)
        served = service
        if more_datasets:  # (dataset, answer type) each: a RouterService over the same pool
            more = [RouterService(LiveRouter(p, kind, share=live), ds, untrained(len(names), 0.5, policy_file),
                                  routers={"fixed": FixedPath("fixed", names, [names[0], names[1]])})
                    for ds, kind in more_datasets]
            served = Services([service, *more])
        ctx = uvicorn_in_thread(create_app(served, options))
        port = ctx.__enter__()
        stack.append(ctx)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=30)
        return Gateway(f"http://127.0.0.1:{port}", client, fake, service)

    yield make
    for ctx in reversed(stack):
        ctx.__exit__(None, None, None)
    for fake in made:
        fake.close()


def metric_samples(base, headers=None):
    text = httpx.get(f"{base}/metrics", headers=headers).text
    return [s for fam in text_string_to_metric_families(text) for s in fam.samples]


def sample(samples, name, **labels):
    found = [s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    return sum(found)


# ---- 1. concurrency follows the backend ----------------------------------------------------------------------


@pytest.mark.parametrize("concurrency", [8, 1])
def test_calls_to_a_served_expert_overlap_up_to_its_concurrency(gateway, concurrency):
    """Eight clients ask the same served expert at once. The fake server holds each request until four are in
    flight together (at most a few seconds), so it sees the overlap itself; with concurrency 1 the calls queue
    one by one (the server never sees two)."""
    gw = gateway(concurrency=concurrency)
    gw.fake.hold = lambda n, model: gw.fake.wait_in_flight(4, HOLD_S if concurrency > 1 else 0.2)
    questions = [f"Is {i} even?" for i in range(8 if concurrency > 1 else 4)]
    with ThreadPoolExecutor(len(questions)) as pool:
        answers = list(pool.map(lambda q: gw.ask(gw.names[0], q).choices[0].message.content, questions))
    assert answers == questions  # each its own answer (the fake echoes the question)
    if concurrency > 1:
        assert 4 <= gw.fake.max_in_flight <= concurrency
    else:
        assert gw.fake.max_in_flight == 1


def test_in_process_experts_keep_one_call_at_a_time(repo_params):
    """backend llamacpp (the fake in-process engine): one expert's calls never overlap, whatever the clients."""

    class Slow(FakeBackend):
        in_flight = peak = 0

        def generate(self, expert, prompts):
            Slow.in_flight += 1
            Slow.peak = max(Slow.peak, Slow.in_flight)
            time.sleep(0.05)
            try:
                yield from super().generate(expert, prompts)
            finally:
                Slow.in_flight -= 1

    live = LiveRouter(repo_params, "yes_no", backend=Slow(repo_params.generation))
    assert not live.served and live.capacity == 1
    service = RouterService(live, "boolq", untrained(len(live.names), 0.5, "untrained"))
    with uvicorn_in_thread(create_app(service)) as port:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: client.chat.completions.create(
                model=live.names[0], messages=[{"role": "user", "content": f"Is {i} odd?"}]), range(4)))
    assert Slow.peak == 1


# ---- 2. the API key -----------------------------------------------------------------------------------------


def test_the_api_key_is_required_except_on_health(gateway):
    gw = gateway(options=ServeOptions(api_key="s3cret"))
    for key in ("none", "wrong"):
        client = gw.client.with_options(api_key=key)
        with pytest.raises(openai.AuthenticationError) as info:
            client.chat.completions.create(model="fixed", messages=[{"role": "user", "content": "Is it?"}])
        assert info.value.status_code == 401
    r = gw.post({"model": "fixed", "messages": [{"role": "user", "content": "Is it?"}]})
    assert r.status_code == 401 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert r.json()["error"]["code"] == "invalid_api_key" and "s3cret" not in r.text
    assert httpx.get(f"{gw.base}/v1/models").status_code == 401
    assert httpx.get(f"{gw.base}/metrics").status_code == 401
    assert httpx.get(f"{gw.base}/health").status_code == 200
    assert gw.fake.requests == []  # nothing reached an expert
    good = gw.client.with_options(api_key="s3cret")
    assert good.chat.completions.create(model="fixed", messages=[{"role": "user", "content": "Is it?"}]).choices
    assert httpx.get(f"{gw.base}/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_listening_beyond_loopback_without_a_key_warns():
    assert "no API key" in bind_warning("0.0.0.0", None) and "--api-key" in bind_warning("192.0.2.1", "")
    assert bind_warning("0.0.0.0", "key") is None
    assert bind_warning("127.0.0.1", None) is None and bind_warning("::1", None) is None
    assert bind_warning("localhost", None) is None


# ---- 3. back-pressure, deadlines, disconnects ---------------------------------------------------------------


def test_past_the_in_flight_bound_requests_get_429_with_retry_after(gateway):
    gw = gateway(options=ServeOptions(max_in_flight=2))
    release = threading.Event()
    gw.fake.hold = lambda n, model: release.wait(HOLD_S)
    with ThreadPoolExecutor(2) as pool:
        held = [pool.submit(gw.ask, "single", f"Is {i} odd?") for i in range(2)]
        try:
            wait_until(lambda: len(gw.fake.requests) == 2, HOLD_S, "two requests held at the expert")
            r = gw.post({"model": "single", "messages": [{"role": "user", "content": "One more?"}]})
            assert r.status_code == 429 and r.headers["retry-after"] == "1"
            err = r.json()["error"]
            assert err["code"] == "rate_limit_exceeded" and "--max-in-flight" in err["message"]
            with pytest.raises(openai.RateLimitError):
                gw.ask("single", "And one more?")
        finally:
            release.set()
        assert [f.result().choices[0].message.content for f in held] == ["Is 0 odd?", "Is 1 odd?"]
    assert len(gw.fake.requests) == 2  # the refused ones never reached an expert
    assert gw.ask("single", "Now?").choices[0].message.content == "Now?"  # room again


def test_a_deadline_gives_504_naming_the_steps_done(gateway):
    """The fixed path's second call (the refinement) is held past the request's deadline of 1.5 s."""
    gw = gateway(options=ServeOptions(timeout_s=1.5))
    gw.fake.hold = lambda n, model: time.sleep(4) if n == 2 else None
    r = gw.post({"model": "fixed", "messages": [{"role": "user", "content": "Is it late?"}]})
    assert r.status_code == 504, r.text
    msg = r.json()["error"]["message"]
    assert "deadline of 1.5 s" in msg and f"1 step(s) finished: answer by {gw.names[0]}" in msg
    assert f"in progress and cancelled: refine by {gw.names[1]}" in msg
    assert r.json()["error"]["code"] == "deadline_exceeded"


def test_a_client_disconnect_starts_no_further_expert_call(gateway):
    """The client hangs up while the first of the fixed path's two calls is held at the expert: the router cancels
    the request, and the fake server never sees the second call. Unheld, the same request makes both calls."""
    gw = gateway()
    gw.ask("fixed", "Warm?")
    assert gw.fake.requests == gw.names[:2]
    gw.fake.requests.clear()
    release, released = threading.Event(), threading.Event()

    def hold(n, model):
        if n == 1:
            release.wait(HOLD_S)
            released.set()

    gw.fake.hold = hold
    body = json.dumps({"model": "fixed", "messages": [{"role": "user", "content": "Still there?"}]}).encode()
    port = int(gw.base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=HOLD_S) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        wait_until(lambda: gw.fake.requests, HOLD_S, "the first call at the expert")
    # hung up; the disconnect reaches the router, which counts the request (status 499) once it has seen it
    wait_until(lambda: sample(metric_samples(gw.base), "der_requests_total", status="499") == 1, HOLD_S,
               "the disconnected request counted")
    release.set()
    assert released.wait(HOLD_S)
    time.sleep(0.5)  # time for a second call to arrive, had the router gone on
    assert gw.fake.requests == [gw.names[0]]


# ---- 4. degradation and the circuit breaker -----------------------------------------------------------------


def test_a_killed_expert_gives_a_degraded_answer_and_its_breaker_opens(gateway):
    gw = gateway(breaker=(2, 60.0))
    first, second = gw.names[:2]
    gw.fake.dead.add(first)
    for _ in range(2):  # the fixed path's first expert is gone: the pool's next expert answers instead
        der = gw.ask("fixed").model_extra["der"]
        assert der["degraded"]["expert"] == first and "cannot reach" in der["degraded"]["reason"]
        assert der["degraded"]["fallback"] == f"answer:{second}"
        assert [(s["expert"], s["action"]) for s in der["steps"]] == [(second, "answer"), (second, "refine")]
    health = httpx.get(f"{gw.base}/health").json()
    assert health["status"] == "degraded" and list(health["open_breakers"]) == [first]
    assert health["open_breakers"][first]["failures_in_a_row"] == 2
    calls = len(gw.fake.requests)
    der = gw.ask("fixed").model_extra["der"]  # the breaker is open: skipped without a call
    assert gw.fake.requests[calls:] == [second, second]
    assert der["degraded"]["expert"] == first and "circuit breaker" in der["degraded"]["reason"]
    with pytest.raises(openai.APIStatusError) as info:  # the expert asked by name: nothing to fall back on
        gw.ask(first)
    assert info.value.status_code == 503 and first in info.value.message
    assert int(info.value.response.headers["retry-after"]) > 0
    samples = metric_samples(gw.base)
    assert sample(samples, "der_expert_failures_total", expert=first, reason="error") == 2
    assert sample(samples, "der_expert_failures_total", expert=first, reason="circuit_open") == 2
    assert sample(samples, "der_breaker_open", expert=first) == 1
    assert sample(samples, "der_degraded_requests_total", model="fixed", expert=first) == 3


def test_a_failed_second_call_stops_with_the_first_answer(gateway):
    gw = gateway()
    first, second = gw.names[:2]
    gw.fake.dead.add(second)
    r = gw.ask("fixed", "Is it over?")
    der = r.model_extra["der"]
    assert [s["expert"] for s in der["steps"]] == [first] and r.choices[0].message.content == "Is it over?"
    assert der["degraded"] == {"expert": second, "reason": der["degraded"]["reason"], "fallback": "the last answer"}
    with pytest.raises(openai.InternalServerError) as info:  # asked by name, a failing expert is a 502 naming it
        gw.ask(second)
    assert info.value.status_code == 502 and second in info.value.message


def test_the_policy_takes_its_next_most_probable_action_without_a_failed_expert(gateway):
    gw = gateway()
    der = gw.ask("der").model_extra["der"]
    assert der["degraded"] is None
    top = der["steps"][0]["expert"]
    probs = der["steps"][0]["probabilities"]
    gw.fake.dead.add(top)
    der = gw.ask("der").model_extra["der"]
    others = {a: p for a, p in probs.items() if a != f"answer:{top}"}
    assert der["steps"][0]["expert"] == max(others, key=others.get).split(":")[1]
    assert der["steps"][0]["probabilities"] == probs  # what the policy said, unchanged
    assert der["degraded"]["expert"] == top and der["degraded"]["fallback"] == max(others, key=others.get)


def test_a_served_call_past_the_expert_timeout_degrades(gateway):
    gw = gateway(expert_timeout_s=1.0)
    first = gw.names[0]
    gw.fake.hold = lambda n, model: time.sleep(3) if model == first else None
    der = gw.ask("fixed").model_extra["der"]
    assert der["degraded"]["expert"] == first and "timed out after 1 s" in der["degraded"]["reason"]
    assert sample(metric_samples(gw.base), "der_expert_failures_total", expert=first, reason="timeout") == 1


# ---- 5. hardened input --------------------------------------------------------------------------------------


def test_a_20_mb_body_is_refused_at_once_and_a_normal_request_still_answers(gateway):
    gw = gateway()
    big = json.dumps({"model": "fixed", "messages": [{"role": "user", "content": "x" * 20_000_000}]}).encode()
    release = threading.Event()
    gw.fake.hold = lambda n, model: release.wait(HOLD_S)  # the normal request is in flight meanwhile
    with ThreadPoolExecutor(1) as pool:
        normal = pool.submit(gw.ask, "single", "Am I answered?")
        wait_until(lambda: gw.fake.requests, HOLD_S, "the normal request at the expert")
        t0 = time.perf_counter()
        r = httpx.post(f"{gw.base}/v1/chat/completions", content=big, headers={"Content-Type": "application/json"},
                       timeout=10)
        refused_s = time.perf_counter() - t0
        release.set()
        assert normal.result(timeout=HOLD_S).choices[0].message.content == "Am I answered?"
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert "1000000 bytes" in r.json()["error"]["message"]
    assert refused_s < 1.0
    assert gw.fake.requests == [gw.names[0]]  # the big one reached no expert


def test_a_body_without_a_length_is_counted_as_it_arrives(gateway):
    gw = gateway(options=ServeOptions(max_body_bytes=10_000))

    def chunks():
        for _ in range(100):
            yield b"x" * 1000

    r = httpx.post(f"{gw.base}/v1/chat/completions", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "10000 bytes" in r.json()["error"]["message"]


def test_the_question_and_context_length_is_bounded_before_tokenisation(gateway):
    gw = gateway(options=ServeOptions(max_input_chars=1000))
    r = gw.post({"model": "fixed", "context": "c" * 900, "messages": [{"role": "user", "content": "q" * 200}]})
    assert r.status_code == 400 and "1100 characters" in r.json()["error"]["message"]
    assert "limit of 1000" in r.json()["error"]["message"] and r.json()["error"]["code"] == "input_too_long"
    assert gw.fake.requests == []


@pytest.mark.parametrize("extra,param", [({"n": 5}, "n"), ({"n": 0}, "n"), ({"max_tokens": -1}, "max_tokens"),
                                         ({"max_tokens": 0}, "max_tokens"),
                                         ({"max_completion_tokens": -3}, "max_completion_tokens")])
def test_fields_the_router_cannot_honour_are_refused(gateway, extra, param):
    gw = gateway()
    with pytest.raises(openai.BadRequestError) as info:
        gw.ask("fixed", **extra)
    err = info.value.body
    assert info.value.status_code == 400 and err["param"] == param and err["type"] == "invalid_request_error"
    assert gw.fake.requests == []
    assert gw.ask("fixed", n=1, max_tokens=5, temperature=0.7).choices  # these are accepted (and ignored)


def test_every_error_has_openais_shape_404_and_405_included(gateway):
    gw = gateway()
    responses = [httpx.get(f"{gw.base}/v1/chat/completions"), httpx.get(f"{gw.base}/nope"),
                 httpx.delete(f"{gw.base}/v1/models"), httpx.post(f"{gw.base}/v1/chat/completions", content=b"{bad")]
    assert [r.status_code for r in responses] == [405, 404, 405, 400]
    for r in responses:
        assert set(r.json()) == {"error"} and set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert responses[0].headers["allow"] == "POST"


def test_an_internal_error_is_openais_500_and_the_server_goes_on(gateway):
    gw = gateway()
    router = gw.service.routers["single"]
    router.act = lambda state: 1 / 0
    r = gw.post({"model": "single", "messages": [{"role": "user", "content": "Is it?"}]})
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error" and "division" not in r.text
    del router.act
    assert gw.ask("single").choices


def test_a_newline_in_model_leaves_one_log_line_per_request(gateway):
    gw = gateway()
    lines = []

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(self.format(record))

    logger = logging.getLogger("der_pipeline.serve")
    keep, level = Keep(), logger.level
    logger.addHandler(keep)
    logger.setLevel(logging.INFO)
    forged = "fixed\n2026-01-01 der_pipeline.serve INFO POST /v1/chat/completions 200 0.1s model=forged"
    try:
        gw.post({"model": forged, "messages": [{"role": "user", "content": "Is it?"}]})
        gw.post({"model": "x\r\u2028y\x1b[31m", "messages": [{"role": "user", "content": "Is it?\nReally?"}]})
        gw.ask("fixed")
        httpx.get(f"{gw.base}/v1/models%0Aforged")
        # a request's line is written once its response has gone, so the last may come after the client has it
        wait_until(lambda: len(lines) >= 4, 10, "a log line for each of the four requests")
    finally:
        logger.removeHandler(keep)
        logger.setLevel(level)
    assert len(lines) == 4 and all(len(line.splitlines()) == 1 for line in lines), lines
    assert not any(c in line for line in lines for c in "\n\r\u2028\x1b")
    assert "model=fixed\\x0a2026" in lines[0]


ABSOLUTE = re.compile(r"(?<![\w:/.])/(?:home|tmp|work|root|usr|var|srv|opt|mnt|data)/")


def test_no_response_names_a_path_of_the_servers(gateway, tmp_path):
    gw = gateway(top_logprobs=5)
    gw.fake.broken.add(gw.names[2])  # its server's error names a model file
    gw.fake.dead.add(gw.names[3])
    bodies = [gw.post({"model": m, "messages": [{"role": "user", "content": "Is it?"}]}).text
              for m in ("der", "der:0.25", "fixed", "single", *gw.names, "nosuch")]
    bodies += [httpx.get(f"{gw.base}{path}").text for path in ("/health", "/v1/models", "/metrics", "/nope")]
    bodies += [gw.post({"model": "der", "messages": [{"role": "user", "content": "Is it?"}], "stream": True}).text]
    der = json.loads(bodies[0])["der"]
    assert der["policy"]["id"] == "der:0.5" and re.fullmatch(r"[0-9a-f]{12}", der["policy"]["sha256"])
    assert "path" not in der["policy"]
    assert "cannot load <path>" in bodies[6]  # the expert's own message, scrubbed
    for text in bodies:
        assert str(tmp_path) not in text and str(REPO) not in text and not ABSOLUTE.search(text), text[:500]


# ---- 6. metrics ---------------------------------------------------------------------------------------------


def test_metrics_count_the_requests_sent(gateway):
    gw = gateway()
    costs = [gw.ask("fixed").model_extra["der"]["cost_gflops"] for _ in range(3)]
    for _ in range(2):
        gw.ask(gw.names[0])
    with pytest.raises(openai.NotFoundError):
        gw.ask("nosuch")
    with pytest.raises(openai.BadRequestError):
        gw.ask("fixed", n=2)
    s = metric_samples(gw.base)
    assert sample(s, "der_requests_total", model="fixed", status="200") == 3
    assert sample(s, "der_requests_total", model="fixed", status="400") == 1
    assert sample(s, "der_requests_total", model=gw.names[0], status="200") == 2
    assert sample(s, "der_requests_total", model="unknown", status="404") == 1
    assert sample(s, "der_requests_total") == 7
    assert sample(s, "der_request_duration_seconds_count", model="fixed") == 4
    assert sample(s, "der_request_cost_gflops_count", model="fixed") == 3
    assert sample(s, "der_request_cost_gflops_sum", model="fixed") == pytest.approx(sum(costs), abs=0.01)
    assert sample(s, "der_expert_calls_total", expert=gw.names[0], outcome="ok") == 5
    assert sample(s, "der_expert_calls_total", expert=gw.names[1], outcome="ok") == 3
    assert sample(s, "der_expert_calls_total") == len(gw.fake.requests) == 8
    assert sample(s, "der_expert_failures_total") == 0
    assert sample(s, "der_requests_in_flight") == 0


def test_the_live_action_mask_is_the_environments():
    from der_pipeline.router.env import allowed_actions
    from der_pipeline.router.live import allowed_list

    for n in (1, 3, 4):
        for ktp_only in (False, True):
            for t, last in [(0, -1), *((1, j) for j in range(n))]:
                expected = allowed_actions(torch.tensor([t]), torch.tensor([last]), n, ktp_only)[0].tolist()
                assert allowed_list(t, last, n, ktp_only) == expected, (n, ktp_only, t, last)


# ---- budgets per request, several datasets in one server, worker processes -----------------------------------


def budget_policy(n: int, share: float, path) -> Policy:
    pol = untrained(n, 0.01, path)
    pol.cost_share = share
    return pol


def test_der_at_a_share_routes_with_the_policy_fitted_to_that_budget(gateway, tmp_path):
    """A policy fitted to a budget (its checkpoint's cost_share) is served as der@<share>, listed with its
    budget, and answers naming it; an unserved share is a 404 that lists what is served."""
    gw = gateway(extra=[budget_policy(4, 0.5, tmp_path / "budget.pt")])
    listed = {m["id"]: m for m in httpx.get(f"{gw.base}/v1/models").json()["data"]}
    assert listed["der@0.5"]["cost_share"] == 0.5 and listed["der@0.5"]["alpha"] == 0.01
    assert listed["der:0.25"]["cost_share"] is None and listed["der:0.25"]["dataset"] == "boolq"
    assert "der:0.01" not in listed  # served by its budget, the number its user chose
    for model in ("der@0.5", "der@0.50"):
        policy = gw.ask(model=model).model_extra["der"]["policy"]
        assert (policy["id"], policy["cost_share"], policy["alpha"]) == ("der@0.5", 0.5, 0.01)
    with pytest.raises(openai.NotFoundError, match="der@0.5"):
        gw.ask(model="der@0.3")


def test_two_policies_fitted_to_one_budget_are_refused(repo_params, tmp_path):
    p = repo_params.override("generation", backend="openai", openai={"base_url": "http://127.0.0.1:9/v1"})
    live = LiveRouter(p, "yes_no")
    n = len(live.names)
    with pytest.raises(ValueError, match="two policies share cost share 0.5"):
        RouterService(live, "boolq", untrained(n, 0.5, tmp_path / "a.pt"),
                      [budget_policy(n, 0.5, tmp_path / "b.pt"), budget_policy(n, 0.5, tmp_path / "c.pt")])


def test_several_datasets_share_one_pool_and_each_picks_its_prompt_and_parser(gateway):
    """`serve -d boolq -d sst2`: sst2's ids are qualified (der/sst2, fixed/sst2, <expert>/sst2), its requests
    get sst2's prompt (the sentiment instruction) and parser, and both datasets call the same expert servers
    through the same gates (one pool: shared locks, slots and breakers)."""
    gw = gateway(more_datasets=[("sst2", "sentiment")])
    ids = [m["id"] for m in httpx.get(f"{gw.base}/v1/models").json()["data"]]
    assert {"der", "der:0.5", "fixed", "der/boolq", "fixed/boolq", "der/sst2", "der/sst2:0.5", "fixed/sst2",
            f"{gw.names[0]}/sst2"} <= set(ids)
    assert httpx.get(f"{gw.base}/health").json()["datasets"] == ["boolq", "sst2"]
    seen = []
    gw.fake.hold = lambda n, model: None
    for model, dataset in (("fixed", "boolq"), ("fixed/sst2", "sst2"), ("fixed/boolq", "boolq"),
                           (f"{gw.names[0]}/sst2", "sst2")):
        before = len(gw.fake.requests)
        der = gw.ask(model=model, question="a gripping, funny film").model_extra["der"]
        assert der["dataset"] == dataset and der["answer_type"] == ("sentiment" if dataset == "sst2" else "yes_no")
        seen.append(gw.fake.requests[before:])
    assert seen[1] == [gw.names[0], gw.names[1]] and seen[3] == [gw.names[0]]
    with pytest.raises(openai.NotFoundError, match="der/nosuch"):
        gw.ask(model="der/nosuch")


def test_a_dataset_router_over_a_shared_pool_shares_its_models_locks_and_breakers(repo_params):
    p = repo_params.override("generation", backend="openai", openai={"base_url": "http://127.0.0.1:9/v1"})
    first = LiveRouter(p, "yes_no")
    second = LiveRouter(p, "sentiment", share=first)
    assert second.backend is first.backend and second._locks is first._locks and second.breakers is first.breakers
    assert not second.owns_backend and first.owns_backend
    other_engine = p.override("generation", backend="openai", openai={"base_url": "http://127.0.0.1:10/v1"})
    alone = LiveRouter(other_engine, "yes_no", share=first)  # another engine: nothing to share
    assert alone.backend is not first.backend and alone.owns_backend
