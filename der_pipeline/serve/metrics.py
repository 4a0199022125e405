"""`GET /metrics`: the server's counters in Prometheus' text format (the `prometheus-client` package).

der_requests_total{model,status}           chat-completion requests by model id (``unknown`` for a model this
                                           server does not have, ``none`` where the request was refused before
                                           its body was read: 401, 413, 429) and HTTP status
der_request_duration_seconds{model}        their latency (histogram)
der_request_cost_gflops{model}             the cost of each answered request, summed over its expert calls
der_degraded_requests_total{model,expert}  answers given without an expert that failed or was skipped
der_expert_calls_total{expert,outcome}     expert calls made, by outcome (ok, error, timeout)
der_expert_failures_total{expert,reason}   failed calls (error, timeout) and calls not made (circuit_open)
der_expert_call_duration_seconds{expert}   expert call latency (histogram)
der_requests_in_flight                     chat completions being answered now
der_breaker_open{expert}                   1 while the expert's circuit breaker is open

Each app has its own registry (so several servers in one process count apart). Under `serve --workers N`
(``PROMETHEUS_MULTIPROC_DIR`` set by `serve` before the workers start) every worker writes its values to
that folder and /metrics, whichever worker answers it, sums them (prometheus-client's multiprocess mode):
the gauges count live workers only.
"""
from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
COST_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 100000)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, experts: list[str]):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("der_requests", "chat-completion requests by model and HTTP status",
                                ["model", "status"], registry=r)
        self.latency = Histogram("der_request_duration_seconds", "chat-completion latency", ["model"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.cost = Histogram("der_request_cost_gflops", "cost of an answered request (GFLOPs, all its expert calls)",
                              ["model"], buckets=COST_BUCKETS, registry=r)
        self.degraded = Counter("der_degraded_requests", "answers given without an expert that failed or was skipped",
                                ["model", "expert"], registry=r)
        self.expert_calls = Counter("der_expert_calls", "expert calls made, by outcome", ["expert", "outcome"],
                                    registry=r)
        self.expert_failures = Counter("der_expert_failures", "failed expert calls (error, timeout) and calls not "
                                       "made (circuit_open)", ["expert", "reason"], registry=r)
        self.expert_latency = Histogram("der_expert_call_duration_seconds", "expert call latency", ["expert"],
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("der_requests_in_flight", "chat completions being answered now", registry=r,
                               multiprocess_mode="livesum")
        self.breaker = Gauge("der_breaker_open", "1 while the expert's circuit breaker is open", ["expert"],
                             registry=r, multiprocess_mode="livemax")
        self.experts = list(experts)
        for e in self.experts:
            self.breaker.labels(e).set(0)

    def request(self, model: str, status: int, seconds: float) -> None:
        self.requests.labels(model, str(status)).inc()
        self.latency.labels(model).observe(seconds)

    def answered(self, model: str, cost_gflops: float, degraded_experts: list[str]) -> None:
        self.cost.labels(model).observe(cost_gflops)
        for e in dict.fromkeys(degraded_experts):
            self.degraded.labels(model, e).inc()

    def expert_call(self, expert: str, outcome: str, seconds: float) -> None:
        """LiveRouter.on_call."""
        if outcome != "circuit_open":
            self.expert_calls.labels(expert, outcome).inc()
            self.expert_latency.labels(expert).observe(seconds)
        if outcome != "ok":
            self.expert_failures.labels(expert, outcome).inc()

    def render(self, open_breakers: dict) -> bytes:
        for e in self.experts:
            self.breaker.labels(e).set(1 if e in open_breakers else 0)
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # several workers: the sum of every worker's values
            merged = CollectorRegistry()
            MultiProcessCollector(merged)
            return generate_latest(merged)
        return generate_latest(self.registry)
