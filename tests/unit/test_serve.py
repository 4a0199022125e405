"""`serve`'s HTTP layer on a real uvicorn server on 127.0.0.1, driven by the official `openai` client.

The experts are the fake backend (tests/fakes.py) and the policy an untrained network, so these run in
seconds; the embedder and the router are the real ones. test_serve_real.py runs the same paths with the
real packaged experts and the committed BoolQ policy.
"""
import json
from concurrent.futures import ThreadPoolExecutor

import httpx2 as httpx
import openai
import pytest
import torch
from conftest import uvicorn_in_thread
from fakes import FakeBackend

from der_pipeline.router.arrays import CONF_FEATURES
from der_pipeline.router.env import obs_dim
from der_pipeline.router.live import LiveRouter, Policy
from der_pipeline.router.ppo import Agent
from der_pipeline.serve.app import create_app
from der_pipeline.serve.service import RouterService


def untrained_policy(n: int, alpha: float, state="query_answer_confidence") -> Policy:
    torch.manual_seed(0)
    agent = Agent(obs_dim(state, 384, len(CONF_FEATURES), n), 2 * n + 1)
    agent.eval()
    return Policy(path=f"untrained-{alpha}", agent=agent, state=state, ktp_only=False, alpha=alpha, seed=1)


SERVED_ROUTERS = {}  # the served fixture's routers, so a test can set a threshold on the live object


def hand_fitted_routers(names):
    """A cascade (the first expert, escalating to the last afresh when its first-token probability is under
    the threshold) and a fixed path (the second expert refining the first), set by hand as fit would."""
    from der_pipeline.router.arrays import path_index
    from der_pipeline.router.methods import BestFixedPath, ConfidenceCascade

    cascade = ConfidenceCascade()
    cascade.cheap, cascade.strong, cascade.signal, cascade.threshold = 0, len(names) - 1, "first_prob", 0.5
    cascade.chosen = {"first": names[0], "then": names[-1], "signal": "first_prob", "threshold": 0.5}
    fixed = BestFixedPath()
    fixed.idx, fixed.chosen = path_index(len(names), 0, 1), f"{names[0]}>{names[1]}"
    return {"best_fixed": fixed, "cascade": cascade}


@pytest.fixture(scope="module")
def served(repo_params):
    backend = FakeBackend(repo_params.generation)
    live = LiveRouter(repo_params, "yes_no", backend=backend)
    n = len(live.names)
    service = RouterService(live, "boolq", untrained_policy(n, 0.5), [untrained_policy(n, 0.25)],
                            routers=SERVED_ROUTERS.setdefault("routers", hand_fitted_routers(live.names)))
    with uvicorn_in_thread(create_app(service)) as port:  # port 0: the port the server bound, no probe race
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        yield client, backend, f"http://127.0.0.1:{port}", live.names


def ask(client, model="der", question="Is the sky blue?", **kw):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}], **kw)


def test_models_and_health(served):
    client, _, base, names = served
    ids = [m.id for m in client.models.list().data]
    assert ids == ["der", "der:0.25", "der:0.5", "best_fixed", "cascade", *names]
    assert httpx.get(f"{base}/health").json()["status"] == "ok"


def test_a_routed_answer_is_a_chat_completion_with_the_steps(served):
    client, backend, _, names = served
    before = backend.calls
    r = ask(client, extra_body={"context": "The sky is blue on a clear day."})
    der = r.model_extra["der"]
    assert r.object == "chat.completion" and r.choices[0].message.content == der["steps"][-1]["answer"]
    assert 1 <= len(der["steps"]) <= 2 and backend.calls - before == len(der["steps"])
    assert der["steps"][0]["action"] == "answer" and der["steps"][0]["expert"] in names
    assert abs(sum(der["steps"][0]["probabilities"].values()) - 1) < 1e-3
    assert set(der["steps"][0]["probabilities"]) == {f"answer:{e}" for e in names}  # t = 0: a first answer only
    assert r.usage.prompt_tokens == sum(s["prompt_tokens"] for s in der["steps"])
    assert der["cost_gflops"] == pytest.approx(sum(s["cost_gflops"] for s in der["steps"]), abs=0.01)
    assert der["path"].split(">")[0] == der["steps"][0]["expert"]


def test_the_context_comes_from_the_field_or_a_system_message(served):
    client, _, _, names = served
    via_field = ask(client, model=names[0], extra_body={"context": "Paris is in France."})
    via_system = client.chat.completions.create(model=names[0], messages=[
        {"role": "system", "content": "Paris is in France."}, {"role": "user", "content": "Is the sky blue?"}])
    no_context = ask(client, model=names[0])
    assert via_field.choices[0].message.content == via_system.choices[0].message.content
    assert via_field.choices[0].message.content != no_context.choices[0].message.content  # the fake hashes the prompt


def test_der_alpha_picks_the_policy_and_an_expert_name_calls_it_alone(served):
    client, _, _, names = served
    assert ask(client, model="der:0.25").model_extra["der"]["policy"]["alpha"] == 0.25
    assert ask(client, model="der:0.250").model_extra["der"]["policy"]["alpha"] == 0.25
    direct = ask(client, model=names[1]).model_extra["der"]
    assert direct["policy"] is None and [s["expert"] for s in direct["steps"]] == [names[1]]
    assert direct["path"] == names[1]


def test_streaming_sends_the_same_answer(served):
    client, _, _, names = served
    whole = ask(client, model=names[2]).choices[0].message.content
    chunks = list(ask(client, model=names[2], stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    assert chunks[-2].choices[0].finish_reason == "stop" and chunks[-2].model_extra["der"]["path"] == names[2]
    assert chunks[-1].usage.completion_tokens > 0


def test_concurrent_requests_get_their_own_answers(served):
    client, _, _, names = served
    questions = [f"Is {x} a colour?" for x in ("red", "green", "blue", "seven")]
    alone = [ask(client, model=names[0], question=q).choices[0].message.content for q in questions]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda q: ask(client, model=names[0], question=q).choices[0].message.content,
                                 questions))
    assert together == alone and len(set(alone)) == 4


@pytest.mark.parametrize("body,status,words", [
    (b"{not json", 400, "invalid request body"),
    (json.dumps({"model": "der"}).encode(), 400, "messages"),
    (json.dumps({"model": "der", "messages": []}).encode(), 400, "messages"),
    (json.dumps({"model": "der", "messages": [{"role": "system", "content": "x"}]}).encode(), 400, "no user message"),
    (json.dumps({"model": "der", "messages": [{"role": "user", "content": "  "}]}).encode(), 400, "empty"),
    (json.dumps({"model": "gpt-9", "messages": [{"role": "user", "content": "hi?"}]}).encode(), 404, "gpt-9"),
    (json.dumps({"model": "der:0.9", "messages": [{"role": "user", "content": "hi?"}]}).encode(), 404, "der:0.9"),
])
def test_bad_requests_get_openai_style_errors(served, body, status, words):
    _, _, base, _ = served
    r = httpx.post(f"{base}/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert words in err["message"] and err["type"] == "invalid_request_error"
    assert httpx.get(f"{base}/health").status_code == 200


def test_unknown_model_raises_the_clients_not_found(served):
    client = served[0]
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        ask(client, model="gpt-9")


def test_a_failing_expert_gives_502_naming_it_and_the_server_goes_on(served):
    client, backend, _, names = served
    backend.fail_after = backend.calls
    try:
        with pytest.raises(openai.InternalServerError) as info:
            ask(client, model=names[3])
        assert info.value.status_code == 502 and names[3] in info.value.message
    finally:
        backend.fail_after = None
    assert ask(client, model=names[3]).choices[0].message.content


def test_the_cascade_and_a_fixed_path_are_served_by_their_ids(served):
    """`model="cascade"`: its first expert answers; the fake backend gives no token probabilities (confidence
    features 0), so under a threshold of 0.5 it escalates to the last expert afresh, and under 0 it stops."""
    client, backend, _, names = served
    cascade = SERVED_ROUTERS["routers"]["cascade"]
    before = backend.calls
    r = ask(client, model="cascade")
    der = r.model_extra["der"]
    assert [s["expert"] for s in der["steps"]] == [names[0], names[-1]]
    assert [s["action"] for s in der["steps"]] == ["answer", "answer"]
    assert der["path"] == f"{names[0]}>fresh:{names[-1]}" and backend.calls - before == 2
    assert der["policy"] == {"router": "cascade", "chosen": cascade.chosen}
    cascade.threshold = 0.0
    try:
        der = ask(client, model="cascade").model_extra["der"]
    finally:
        cascade.threshold = 0.5
    assert der["path"] == names[0] and der["stopped"]
    der = ask(client, model="best_fixed").model_extra["der"]
    assert [(s["expert"], s["action"]) for s in der["steps"]] == [(names[0], "answer"), (names[1], "refine")]
    assert der["path"] == f"{names[0]}>{names[1]}"



def test_serve_finds_the_budget_stages_policies_and_gives_policy_files_to_their_dataset(repo_params, tmp_path):
    """`serve` offers results/budgets/<dataset>/policy-<share>.pt as der@<share> (the budgets stage writes them)
    beside the default policy; --policy DATASET=PATH goes to that dataset, a bare path to the first."""
    import yaml
    from conftest import REPO

    from der_pipeline.artifacts import budget_policy_path, dataset_params
    from der_pipeline.config import load_params
    from der_pipeline.router.checkpoint import save_policy
    from der_pipeline.serve.build import ServeConfig, load_policies

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["paths"] = {k: str((REPO / v).resolve()) for k, v in raw["paths"].items()}
    raw["paths"]["results"] = str(tmp_path / "results")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    p = load_params(tmp_path / "params.yaml")
    made = {}
    for ds, share in (("boolq", 0.5), ("sst2", 0.3), ("sst2", 0.7)):
        q = dataset_params(p, ds)
        n = len(q.expert_names())
        agent = untrained_policy(n, 0.1, state=q.ppo.state).agent
        path = budget_policy_path(q, ds, share) if share != 0.7 else tmp_path / "given.pt"
        save_policy(agent, path, experts=q.expert_names(), scale=1.0, p=q.override("reward", alpha=0.02),
                    obs_dim=obs_dim(q.ppo.state, 384, len(CONF_FEATURES), n), seed=1, cost_share=share)
        made[(ds, share)] = path
    cfg = ServeConfig(params=str(tmp_path / "params.yaml"), datasets=["boolq", "sst2"],
                      policies=[f"sst2={made[('sst2', 0.7)]}"])
    loaded = load_policies(cfg)
    shares = {ds: sorted(pol.cost_share for pol in extra) for ds, (_, _, extra) in loaded.items()}
    assert shares == {"boolq": [0.5], "sst2": [0.3, 0.7]}
    assert all(pol.alpha == 0.02 for _, _, extra in loaded.values() for pol in extra)
    with pytest.raises(ValueError, match="trained for experts"):  # a bare path is the first dataset's: its pool
        load_policies(ServeConfig(params=cfg.params, datasets=["boolq"], policies=[str(made[("sst2", 0.7)])]))
