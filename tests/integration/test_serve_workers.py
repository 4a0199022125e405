"""`der-pipeline serve --workers 2` as a subprocess in front of served experts (the `openai` backend pointed at
FakeExperts on 127.0.0.1): both workers answer, the same
requests get the same answers whichever worker takes them, and /metrics sums every worker's counts.

Slow tier: each worker loads the real embedder, as a deployment does."""
import httpx2 as httpx
import openai
import pytest
import yaml
from conftest import REPO, serve_process, stop_process, wait_until
from fakes import FakeExperts
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.timeout(600)


def served_params(tmp_path, fake) -> object:
    cfg = yaml.safe_load((REPO / "params.yaml").read_text())
    cfg["paths"] = {k: str((REPO / v).resolve()) for k, v in cfg["paths"].items()}
    cfg["generation"]["backend"] = "openai"
    cfg["generation"]["openai"].update(base_url=fake.url, max_retries=0, concurrency=4, timeout_s=10)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_two_workers_serve_the_same_requests_with_the_same_answers(tmp_path):
    fake = FakeExperts()
    proc = None
    try:
        proc, base = serve_process(served_params(tmp_path, fake), ("boolq",), ["--workers", "2"], timeout=300)
        workers = set()

        def both_answered():  # each GET is a new connection; the kernel hands connections to either worker
            workers.add(httpx.get(f"{base}/health", timeout=5).json()["worker"])
            return len(workers) == 2

        wait_until(both_answered, 60, "/health answered by two worker processes", interval=0.02)
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=30)
        questions = [f"Is question {i} answered the same by every worker?" for i in range(6)]
        rounds = [[client.chat.completions.create(model=model, messages=[{"role": "user", "content": q}])
                   for q in questions] for model in ("der", "der", "der")]
        answers = [[(r.choices[0].message.content, r.model_extra["der"]["path"]) for r in rnd] for rnd in rounds]
        assert answers[0] == answers[1] == answers[2]
        assert [a for a, _ in answers[0]] == questions  # the fake expert echoes the question
        text = httpx.get(f"{base}/metrics", timeout=5).text
        counted = sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
                      if s.name == "der_requests_total" and s.labels.get("model") == "der"
                      and s.labels.get("status") == "200")
        assert counted == len(questions) * len(rounds)  # every worker's requests, whichever answered /metrics
    finally:
        if proc is not None:
            out = stop_process(proc)
            assert "Traceback" not in out, out[-3000:]
        fake.close()
