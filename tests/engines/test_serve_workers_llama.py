"""`der-pipeline serve --workers 2` in front of a real engine: the pool's GGUF files behind one llama.cpp
`llama-server` in router mode (a model per request id, loaded at its first request), reached through the
`openai` backend with the committed BoolQ policy. Both workers answer, the same questions get the same
answers whichever worker takes them, and each answer is the one llama-server gives when asked directly with
the same request. The fake-expert twin is tests/integration/test_serve_workers.py. Tier: its folder
(engines: it needs `make llama-server`)."""
import subprocess

import httpx2 as httpx
import openai
import pytest
import yaml
from conftest import (
    REPO,
    PortTaken,
    on_free_port,
    require_path_or_skip,
    serve_process,
    stop_process,
    wait_for_start,
    wait_until,
)

from der_pipeline.config import load_params
from der_pipeline.experts.models import expert_model_path
from der_pipeline.experts.prompts import build_prompt

pytestmark = pytest.mark.timeout(900)
LLAMA_SERVER = REPO / ".engines" / "bin" / "llama-server"
QUESTIONS = ["Is Paris the capital of France?", "Is the sun a planet?", "Do fish live in water?",
             "Is ice colder than boiling water?"]


def start_llama_router(models_dir, log_path):
    """llama-server serving every GGUF of ``models_dir`` under its file name, on a probed port (the binary must
    be told one; started again on another when it was taken); (process, base URL) once /health answers."""

    def attempt(port):
        proc = subprocess.Popen([str(LLAMA_SERVER), "--models-dir", str(models_dir), "--models-max", "1",
                                 "--host", "127.0.0.1", "--port", str(port), "-c", "2048", "-t", "2", "--seed", "0",
                                 "--no-webui"], stdout=log_path.open("wb"), stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"

        def state():
            if proc.poll() is not None:
                return "exited"
            try:
                return "up" if httpx.get(f"{base}/health", timeout=2).status_code == 200 else None
            except httpx.TransportError:
                return None

        if wait_for_start(proc, state, 120, f"llama-server answering {base}/health") == "exited":
            if "bind" in log_path.read_text().lower():
                raise PortTaken(f"port {port}")
            raise AssertionError(f"llama-server exited {proc.returncode}:\n{log_path.read_text()[-2000:]}")
        return proc, base

    return on_free_port(attempt)


def test_two_workers_in_front_of_llama_server_answer_as_the_server_does(tmp_path):
    require_path_or_skip(LLAMA_SERVER, "make llama-server")
    p = load_params(REPO / "params.yaml")
    models = tmp_path / "models-dir"
    models.mkdir()
    for e in p.experts:  # served under the expert's own name: the model id the openai backend asks for
        (models / f"{e.name}.gguf").symlink_to(expert_model_path(e))
    server, url = start_llama_router(models, tmp_path / "llama-server.log")
    proc = None
    try:
        cfg = yaml.safe_load((REPO / "params.yaml").read_text())
        cfg["paths"] = {k: str((REPO / v).resolve()) for k, v in cfg["paths"].items()}
        cfg["generation"]["backend"] = "openai"
        cfg["generation"]["openai"].update(base_url=f"{url}/v1", max_retries=0, concurrency=2, timeout_s=120,
                                           top_logprobs=20)
        params = tmp_path / "params.yaml"
        params.write_text(yaml.safe_dump(cfg, sort_keys=False))
        proc, base = serve_process(params, ("boolq",), ["--workers", "2"], timeout=300)
        workers = set()

        def both_answered():
            workers.add(httpx.get(f"{base}/health", timeout=5).json()["worker"])
            return len(workers) == 2

        wait_until(both_answered, 60, "/health answered by two worker processes", interval=0.02)
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=300)
        rounds = [[client.chat.completions.create(model="der", messages=[{"role": "user", "content": q}])
                   for q in QUESTIONS] for _ in range(2)]
        got = [[(r.choices[0].message.content, r.model_extra["der"]["path"]) for r in rnd] for rnd in rounds]
        assert got[0] == got[1]
        # the committed BoolQ policy answers with one expert call: its answer is llama-server's own, asked directly
        direct = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=300)
        g = p.generation
        for (answer, path), r, q in zip(got[0], rounds[0], QUESTIONS):
            steps = r.model_extra["der"]["steps"]
            assert len(steps) == 1 and path == steps[0]["expert"]
            expert = next(e for e in p.experts if e.name == path)
            prompt = build_prompt(expert.chat, q, "", "yes_no", g.max_tokens["yes_no"])
            body = {"model": expert.name, "max_tokens": prompt.max_tokens, "temperature": g.temperature,
                    "seed": g.seed, **({"stop": list(prompt.stop)} if prompt.stop else {})}
            if prompt.kind == "chat":
                raw = direct.chat.completions.create(messages=list(prompt.messages), **body).choices[0].message.content
            else:
                raw = direct.completions.create(prompt=prompt.text, **body).choices[0].text
            assert steps[0]["answer"] == raw.strip() or answer in raw, (q, steps[0]["answer"], raw)
    finally:
        if proc is not None:
            out = stop_process(proc)
            assert "Traceback" not in out, out[-3000:]
        server.terminate()
        server.wait(30)
