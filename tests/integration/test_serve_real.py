"""`der-pipeline serve` as a subprocess on 127.0.0.1 with the real packaged experts and the committed
BoolQ policy, driven by the official `openai` client: the committed tree's path and answer come back
for a test question, streaming, four requests at once, and every bad request with its status."""
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx
import openai
import pytest
import yaml
from conftest import free_port, serve_process, stop_process

from der_pipeline.evaluate.common import load_split, saved_policies
from der_pipeline.generate.tree import load_tree
from der_pipeline.router.methods import greedy_paths

REPO = Path(__file__).resolve().parents[2]
# the module's server loads the real experts before it listens (up to `start`'s 600 s), then answers for real
pytestmark = pytest.mark.timeout(1200)  # the tier (slow) is set by the folder: tests/conftest.py


def start(params: Path, timeout=600, extra=()):
    return serve_process(params, ("boolq",), extra, timeout)


stop = stop_process


@pytest.fixture(scope="module")
def tree_answers(repo_params):
    """For every BoolQ test query: (question, context, the path the committed seed-1 policy takes in the
    committed tree, the answer text that path ends on)."""
    p = repo_params
    split = load_split(p, "boolq")
    router = saved_policies(p, split)[0]  # seed p.seeds[0], the one `ask` and `serve` load
    idx = greedy_paths(router.agent, split.test, split.scale, p.reward, p.ppo.state)
    names = split.test.path_names()
    prepared, nodes = load_tree(p, "boolq")
    text = dict(zip(zip(nodes["qid"].to_pylist(), nodes["path"].to_pylist()), nodes["answer"].to_pylist()))
    queries = {r["qid"]: r for r in prepared.to_pylist()}
    out = []
    for qid, i in zip(split.test.qids, idx):
        path = names[int(i)]
        last_node = path.split(">fresh:")[1] if ">fresh:" in path else path
        out.append((queries[qid]["question"], queries[qid]["context"], path, text[(qid, last_node)]))
    return out


LEARNED_ALPHA = 0.3  # with the query-reading state, BoolQ's learned policy routes test queries five ways here


@pytest.fixture(scope="module")
def learned(tmp_path_factory, repo_params):
    """A policy that really routes: trained here on the committed BoolQ tree with the fallback off
    (`ppo.fallback: none`; every committed policy is the fixed-path fallback, which routes a constant), at an
    alpha of its own so the server serves it as der:<alpha>; and, for every test query, the path its greedy
    routing takes in the committed tree."""
    from der_pipeline.router.live import Policy

    root = tmp_path_factory.mktemp("learned")
    cfg = yaml.safe_load((REPO / "params.yaml").read_text())
    cfg["paths"] = {k: str((REPO / v).resolve()) for k, v in cfg["paths"].items()}
    cfg["ppo"]["fallback"] = "none"
    (root / "params.yaml").write_text(yaml.safe_dump(cfg))
    subprocess.run([sys.executable, "-m", "der_pipeline.cli", "train", "-d", "boolq", "--params",
                    str(root / "params.yaml"), "--alpha", str(LEARNED_ALPHA), "--state", "query_answer_confidence",
                    "--seed", "1", "--out", str(root)],
                   cwd=REPO, check=True, capture_output=True, timeout=900)
    path = root / "boolq" / "seed-1" / "policy.pt"
    p = repo_params.override("reward", alpha=LEARNED_ALPHA)
    split = load_split(p, "boolq")
    policy = Policy.load(path, split.test.experts)
    idx = greedy_paths(policy.agent, split.test, split.scale, p.reward, policy.state)
    names = split.test.path_names()
    margin = decision_margins(policy, split, p)
    return path, {qid: names[int(i)] for qid, i, m in zip(split.test.qids, idx, margin) if m > 0.02}


def decision_margins(policy, split, p):
    """Per test query, the smaller of the greedy policy's two decisions' margins (top probability minus the
    next): a live embedding differs from the embed stage's in the last bits, which may flip a near-tie, so
    the test asks only questions the policy decides clearly."""
    import torch

    from der_pipeline.router.env import VectorTreeEnv

    env = VectorTreeEnv(split.test, p.reward, num_envs=split.test.n_queries, scale=split.scale, autoreset=False,
                        state=policy.state)
    obs, mask = env.reset(torch.arange(split.test.n_queries))
    margins = []
    for _ in range(2):
        with torch.no_grad():
            probs = torch.softmax(policy.agent.masked_logits(obs, mask), dim=1)
        top = probs.topk(2, dim=1).values
        margins.append(top[:, 0] - top[:, 1])
        obs, mask, _, _, _ = env.step(probs.argmax(dim=1))
    return torch.minimum(*margins).numpy()


@pytest.fixture(scope="module")
def server(learned):
    proc, base = start(REPO / "params.yaml", extra=["--policy", str(learned[0])])
    yield openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=600), base
    log = stop(proc)
    assert "POST /v1/chat/completions 200" in log and "path=" in log  # one line per request


def ask(client, question, context, **kw):
    return client.chat.completions.create(model="der", messages=[{"role": "user", "content": question}],
                                          extra_body={"context": context}, **kw)


def test_models_are_listed(server, repo_params):
    ids = [m.id for m in server[0].models.list().data]
    assert ids[0] == "der" and f"der:{repo_params.reward.alpha:g}" in ids
    assert ids[-len(repo_params.experts):] == repo_params.expert_names()


def test_a_test_question_takes_the_committed_trees_path(server, tree_answers):
    client = server[0]
    two_calls = [t for t in tree_answers if ">" in t[2]]
    question, context, path, answer = (two_calls or tree_answers)[0]
    r = ask(client, question, context)
    der = r.model_extra["der"]
    assert (der["path"], r.choices[0].message.content) == (path, answer)
    assert r.usage.completion_tokens == sum(s["completion_tokens"] for s in der["steps"]) > 0
    assert der["cost_gflops"] > 0 and der["steps"][0]["confidence"]["yes_prob"] is not None
    streamed = list(ask(client, question, context, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == answer


def test_four_requests_at_once_get_their_own_answers(server, tree_answers):
    client = server[0]
    chosen, seen = [], set()
    for t in tree_answers:  # four test questions whose tree answers differ
        if t[3] not in seen and ">" not in t[2]:
            chosen.append(t)
            seen.add(t[3])
        if len(chosen) == 4:
            break
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda t: ask(client, t[0], t[1]), chosen))
    assert [(g.model_extra["der"]["path"], g.choices[0].message.content) for g in got] == [(t[2], t[3]) for t in chosen]


def test_bad_requests_get_their_status_and_the_server_goes_on(server):
    client, base = server
    post = lambda body: httpx.post(f"{base}/v1/chat/completions", content=body,  # noqa: E731
                                   headers={"Content-Type": "application/json"}, timeout=120)
    assert post(b'{"model": "der", "messages": [').status_code == 400
    assert "messages" in post(json.dumps({"model": "der"}).encode()).json()["error"]["message"]
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="llama-70b", messages=[{"role": "user", "content": "Is it?"}])
    with pytest.raises(openai.BadRequestError, match="context window") as info:
        ask(client, "Is this sentence repeated? " * 800, "")
    assert info.value.code == "context_length_exceeded"
    assert httpx.get(f"{base}/health").status_code == 200


def test_an_unreachable_expert_gives_502_naming_it(tmp_path, repo_params):
    """The experts behind the openai backend, at an address where nothing listens."""
    cfg = yaml.safe_load((REPO / "params.yaml").read_text())
    cfg["generation"]["backend"] = "openai"
    cfg["generation"]["openai"].update(base_url=f"http://127.0.0.1:{free_port()}/v1", max_retries=0)
    cfg["paths"] = {k: str((REPO / v).resolve()) for k, v in cfg["paths"].items()}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(cfg))
    proc, base = start(tmp_path / "params.yaml")
    try:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0)
        first = repo_params.expert_names()[0]
        with pytest.raises(openai.InternalServerError) as info:
            client.chat.completions.create(model=first, messages=[{"role": "user", "content": "Is it?"}])
        assert info.value.status_code == 502 and first in info.value.message and "cannot reach" in info.value.message
        assert httpx.get(f"{base}/health").status_code == 200
    finally:
        stop(proc)


def test_a_learned_policy_routes_live_as_it_routes_in_the_tree(server, learned, repo_params):
    """The learned policy's live path, through the real experts, is its greedy path in the committed tree, for
    test questions that it routes differently (a two-call path among them, where the tree has one)."""
    client = server[0]
    paths = learned[1]
    prepared, _ = load_tree(repo_params, "boolq")
    queries = {r["qid"]: r for r in prepared.to_pylist()}
    chosen, seen = [], set()
    for qid, path in sorted(paths.items(), key=lambda kv: (">" not in kv[1], kv[0])):  # two-call paths first
        if path not in seen:
            chosen.append((qid, path))
            seen.add(path)
        if len(chosen) == 3:
            break
    assert len(set(paths.values())) > 1, "the learned policy routes every test query alike"

    def route(qid):
        q = queries[qid]
        r = client.chat.completions.create(model=f"der:{LEARNED_ALPHA:g}", messages=[{"role": "user",
                                           "content": q["question"]}], extra_body={"context": q["context"]})
        return r.model_extra["der"]["path"]

    assert [route(qid) for qid, _ in chosen] == [path for _, path in chosen]
    with ThreadPoolExecutor(len(chosen)) as pool:  # the same questions at once: each its own distinct path
        assert list(pool.map(route, [qid for qid, _ in chosen])) == [path for _, path in chosen]
