"""The whole chain through real DVC, with real packaged experts on tiny samples of every dataset.

One session-scoped project is built with `dvc repro` (prepare -> generate -> embed -> score ->
train -> evaluate, curves, ablate, cross_task); the tests then check each stage's artifacts.
Its pool is three of the four packaged experts (a 12-node tree a query): the 1.5B made over half
of the generation time, which is most of this suite's. The repository's own four-expert pool and
its 20-node tree run end to end too, in test_demo_rerun_runs_the_chain_with_real_experts_and_ends_with_a_table.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
import yaml
from conftest import REPO, SHARED_DATA, make_project

from der_pipeline.artifacts import expected_paths
from der_pipeline.config import load_params
from der_pipeline.generate.tree import read_tree
from der_pipeline.io import read_table
from der_pipeline.router.dataset import build_arrays
from der_pipeline.schemas import CONFIDENCE, EMBEDDINGS, SCORES
from der_pipeline.tree_store import TreeStore

pytestmark = pytest.mark.timeout(3000)  # the tier (slow) is set by the folder: tests/conftest.py
# Generation is most of this suite's time, so every dataset has the fewest queries that
# give it a train and a test query: under data seed 121 the first two of each dataset's seeded order split
# one and one (the split is a hash of the seed and the id; most seeds need 3 to 5 queries for some dataset).
DATA_SEED = 121
N_QUERIES = 2
N_HOTPOT = 2
N_SST2 = 2
N_GSM8K = 2
N_XSUM = 2
SEEDS = [1, 2]
EXPERTS = ["smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b"]  # the pool's order; the 1.5B left out
NODES = len(EXPERTS) + len(EXPERTS) ** 2  # a query's tree: every single answer and every two-call path
# a custom dataset (any JSON-lines file): ids 1 and 2 fall in train and test under DATA_SEED
CUSTOM = [{"id": 1, "question": "What colour is the sky on a clear day?", "context": "On a clear day the sky is blue.",
           "reference": "blue"},
          {"id": 2, "question": "Which city is the capital of France?", "context": "Paris is the capital of France.",
           "reference": "Paris", "aliases": ["Paris, France"]}]


def small_params(raw):
    raw["data"]["datasets"] = {"boolq": {"sample": N_QUERIES}, "hotpotqa": {"sample": N_HOTPOT},
                               "gsm8k": {"sample": N_GSM8K}, "xsum": {"sample": N_XSUM}, "sst2": {"sample": N_SST2},
                               "squad": {"sample": 0},  # the same span chain as HotpotQA and `mine`; its
                               # reader and the official SQuAD metric are unit-tested (test_prepare, test_metrics)
                               "mine": {"sample": 2, "source": "mine.jsonl", "answer_type": "span"}}
    raw["data"]["test_fraction"] = 0.5
    raw["evaluate"]["cross_task"] = ["boolq", "hotpotqa", "sst2", "gsm8k", "xsum"]
    raw["experts"] = [e for e in raw["experts"] if e["name"] in EXPERTS]
    raw["evaluate"]["round_robin_order"] = ["gemma3-270m", "qwen2.5-coder-0.5b"]
    raw["data"]["seed"] = DATA_SEED
    # SST-2's specialist on a one-step recipe: the chain, not the adapter, is under test (test_specialist_real)
    raw["specialists"]["sst2"].update(train_examples=8, rank=4, lora_alpha=8, learning_rate=0.01, batch_size=8)
    # shorter prompts and answers keep the suite under its budget: the chain, not the answers, is under test
    raw["data"]["max_context_chars"] = 200
    raw["generation"]["max_tokens"].update(number=8, summary=12)  # GSM8K's worked answers are cut short here
    # every dataset on the in-process engine: llama-server is built by `make setup-engines`, after this suite
    raw["generation"]["backend_by_dataset"] = {}
    raw["ppo"]["total_timesteps"] = 4096  # two PPO iterations of 256 envs x 8 steps
    raw["ppo"]["eval_every"] = 1
    raw["seeds"] = SEEDS
    raw["evaluate"]["alpha_sweep"] = [0.0, 0.4]
    raw["evaluate"]["bootstrap"] = 100
    raw["evaluate"]["mlp_epochs"] = 50
    raw["budget"].update(shares=[0.5], steps=1)  # the budgets stage: one budget, a short search
    raw["compute"]["workers"] = 1  # two-query trees train in well under a worker process's start-up
    # one reward form and one preset, two states: every kind of ablation row, fewer PPO runs
    raw["evaluate"]["ablations"].update(reward=["terminal", "der-paper"],
                                        state=["query_answer_confidence", "confidence"])
    raw["evaluate"]["tune"] = {"state": ["query_answer_confidence", "confidence"], "form": ["per_step"],
                               "actions": ["ktp_and_fresh"], "learning_rate": [0.00025, 0.001],
                               "gamma": [0.5]}


def venv_env():
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


@pytest.fixture(scope="session")
def project(tmp_path_factory):
    root = make_project(tmp_path_factory.mktemp("proj"), small_params)
    (root / "mine.jsonl").write_text("".join(json.dumps(r) + "\n" for r in CUSTOM))
    # every stage records the params keys it reads (der_pipeline/params_trace.py), for the dvc.yaml check below
    env = {**venv_env(), "DER_TRACE_PARAMS": str(root / "params-read")}
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return root


# Keys a stage reads that decide none of its outputs, so dvc.yaml need not list them (with the reason).
NOT_A_DEPENDENCY = {
    "paths.data": "where artifacts live: DVC tracks the artifacts themselves as deps and outs",
    "paths.models": "likewise", "paths.results": "likewise", "paths.metrics": "likewise",
    "compute.workers": "how many processes train PPO seeds side by side: every result is the same for any count "
                       "(tests/test_parallel.py)",
    "evaluate.round_robin_order": "dataset_params renames the specialist in it for every reader of a tree; only "
                                  "the stages that evaluate round-robin (evaluate, curves) use the order",
}


def test_every_stage_lists_every_params_key_it_reads(project):
    """dvc.yaml's `params:` of each stage covers every key its code read in the real repro above (a key is
    covered by itself or a section above it), so a change to any of them marks the stage changed."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    traced: dict[str, set] = {}
    for f in (project / "params-read").glob("*.json"):  # <stage>.json, and <stage>.<pid>.json of its workers
        traced.setdefault(f.name.split(".")[0], set()).update(json.loads(f.read_text()))
    assert set(traced) == set(stages)  # every stage ran and recorded its reads
    missing = {}
    for stage, keys in traced.items():
        listed = set(stages[stage].get("params", []))
        for key in keys:
            parts = key.split(".")
            covered = any(".".join(parts[:i]) in listed for i in range(1, len(parts) + 1))
            if not covered and key not in NOT_A_DEPENDENCY:
                missing.setdefault(stage, []).append(key)
    assert not missing, f"dvc.yaml stages read params keys they do not list: {missing}"


def test_dvc_repro_builds_the_full_tree_with_real_experts(project):
    p = load_params(project / "params.yaml")
    tree = read_tree(p, "boolq").nodes
    assert tree.num_rows == TreeStore(project / "data" / "tree" / "boolq").read().num_rows  # all nodes current
    names = p.expert_names()
    assert names == EXPERTS
    assert tree.num_rows == N_QUERIES * NODES
    for qid in set(tree["qid"].to_pylist()):
        paths = tree.filter(pc.equal(tree["qid"], qid))["path"].to_pylist()
        assert sorted(paths) == sorted(expected_paths(names))
    assert min(tree["prompt_tokens"].to_pylist()) > 20
    assert set(tree["backend"].to_pylist()) == {"llamacpp"}
    assert all(fp.startswith("sha256:") for fp in tree["model_fingerprint"].to_pylist())
    arrays, _ = build_arrays(p, "boolq")  # costs are computed from tokens when read
    assert arrays.cost1.min() > 0 and arrays.cost2.min() > 0
    assert names[int(np.argmax(arrays.cost1.mean(axis=0)))] == "qwen2.5-coder-0.5b"  # the priciest per call
    hotpot = TreeStore(project / "data" / "tree" / "hotpotqa").read()
    assert hotpot.num_rows == N_HOTPOT * NODES
    assert all(0 < t <= 24 for t in hotpot["completion_tokens"].to_pylist())  # generation.max_tokens.span


def dvc_status(project):
    proc = subprocess.run([sys.executable, "-m", "dvc", "status"], cwd=project, env=venv_env(),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_dvc_status_is_clean_after_repro_and_after_rerunning_a_stage(project):
    assert "up to date" in dvc_status(project).lower()
    m = json.loads((project / "results" / "evaluate" / "boolq" / "metrics.json").read_text())
    assert "seconds" not in m  # no timings in tracked outputs
    subprocess.run([sys.executable, "-m", "der_pipeline.cli", "evaluate"], cwd=project, check=True,
                   capture_output=True)
    assert "up to date" in dvc_status(project).lower()


def test_editing_the_evaluation_marks_only_the_stages_that_run_it(project):
    """Real DVC on the repro'd project: a one-line edit of evaluate/stats.py changes the stages whose code deps
    hold it (evaluate onwards), and leaves generation, the signals and training up to date (an edit of
    evaluate/findings.py, which only `report` runs, changes no stage at all: tests/unit/test_stage_deps.py)."""
    path = project / "der_pipeline" / "evaluate" / "stats.py"
    original = path.read_text()
    path.write_text(original + "\n# an edit\n")
    try:
        status = dvc_status(project)
    finally:
        path.write_text(original)
    changed = {line.rstrip(":").strip() for line in status.splitlines() if line.endswith(":") and line[0] != "\t"}
    assert {"evaluate", "curves"} <= changed, status
    assert not changed & {"prepare", "generate", "confidence", "embed", "score", "train"}, status
    assert "up to date" in dvc_status(project).lower()


@pytest.mark.parametrize("dataset, n, metric", [("sst2", N_SST2, "accuracy"),
                                                ("gsm8k", N_GSM8K, "numeric_match"), ("xsum", N_XSUM, "rougeL"),
                                                ("mine", 2, "f1")])
def test_the_new_tasks_and_a_custom_dataset_run_the_whole_chain(project, dataset, n, metric):
    p = load_params(project / "params.yaml")
    assert read_tree(p, dataset).nodes.num_rows == n * NODES
    m = json.loads((project / "results" / "evaluate" / dataset / "metrics.json").read_text())
    assert m["metric"] == metric and m["test_queries"] + m["train_queries"] == n
    assert m["test_queries"] >= 1 and m["train_queries"] >= 1
    sc = read_table(project / "data" / "scores" / dataset / "scores.parquet", SCORES)
    assert sc.num_rows == n * NODES and set(sc["task_metric"].to_pylist()) == {metric}
    if dataset == "sst2":  # its specialist (the `finetune` stage's adapter) answered in smollm2-135m's slot
        paths = set(read_tree(p, dataset).nodes["path"].to_pylist())
        assert "smollm2-135m-sst2-lora" in paths and "smollm2-135m" not in paths
        assert (project / "data" / "specialists" / "sst2" / "smollm2-135m.lora.gguf").stat().st_size > 1000
    if dataset == "sst2":  # the answer is a label: parsed as positive / negative, with its label mass
        assert set(sc["parsed_answer"].to_pylist()) <= {"positive", "negative", ""}
        conf = TreeStore(project / "data" / "confidence" / "sst2", CONFIDENCE).read()
        assert conf.num_rows >= n * len(EXPERTS) and all(y is not None for y in conf["yes_prob"].to_pylist())
    # secondary metrics: EM for spans, ROUGE-1/2 for summaries, in the scores and in the evaluation table
    secondary = {"f1": ["exact_match"], "rougeL": ["rouge1", "rouge2"]}.get(metric, [])
    for col in ("exact_match", "rouge1", "rouge2"):
        values = sc[col].to_pylist()
        assert all(v is not None for v in values) if col in secondary else all(v is None for v in values)
    assert all(col in m["methods"]["der"] for col in secondary)
    if metric == "rougeL":
        table = (project / "results" / "evaluate" / dataset / "table.md").read_text()
        assert "| ROUGE-1 | ROUGE-2 |" in table and "ROUGE-L (95% CI" in table
    proc = subprocess.run([sys.executable, "-m", "der_pipeline.cli", "inspect", "-d", dataset], cwd=project,
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "parse" in proc.stdout.lower(), proc.stderr


def test_embeddings_and_scores_have_a_row_per_node(project):
    emb = read_table(project / "data" / "embeddings" / "boolq" / "embeddings.parquet", EMBEDDINGS)
    assert emb.num_rows == N_QUERIES * (NODES + 1)  # every answer and the query
    assert {len(v) for v in emb["embedding"].to_pylist()} == {384}
    sc = read_table(project / "data" / "scores" / "boolq" / "scores.parquet", SCORES)
    assert sc.num_rows == N_QUERIES * NODES
    assert set(sc["task_score"].to_pylist()) <= {0.0, 1.0}
    b = sc["bertscore_f1"].to_numpy()
    assert np.isfinite(b).all() and (b > 0).all() and (b <= 1.0).all()


def test_train_and_evaluate_outputs(project):
    for seed in SEEDS:
        log = [json.loads(x) for x in
               (project / "models" / "boolq" / f"seed-{seed}" / "train_log.jsonl").read_text().splitlines()]
        assert len([r for r in log if "iteration" in r]) == 2
        assert {"mean_return", "entropy", "approx_kl", "clipfrac"} <= set(log[0])
        validated = any("val_return" in r for r in log)  # a train split this small may leave no fold
        assert ("kept" in log[-1]) == validated
        if validated:
            assert set(log[-1]["kept"]) == {"selected_iteration", "best_val_return", "untrained_val_return",
                                            "final_policy", "out_of_fold", "fixed_path_check", "policy"}
        assert (project / "models" / "boolq" / f"seed-{seed}" / "training_curve.png").stat().st_size > 1000
    m = json.loads((project / "results" / "evaluate" / "boolq" / "metrics.json").read_text())
    assert m["test_queries"] + m["train_queries"] == N_QUERIES and m["seeds"] == SEEDS
    for name, row in m["methods"].items():
        assert 0.0 <= row["accuracy"] <= 1.0 and 1.0 <= row["calls"] <= 2.0, name
        assert row["ci_low"] <= row["accuracy"] + 1e-9 and row["accuracy"] <= row["ci_high"] + 1e-9, name
    assert m["methods"]["der"]["seeds"] == 2 and m["methods"]["mlp"]["seeds"] == 2
    assert {"best_fixed", "cascade"} <= set(m["methods"]) and m["methods"]["cascade"]["chosen"]["first"]
    assert set(m["signal_auroc"]) == set(load_params(project / "params.yaml").expert_names())
    assert [t["seed"] for t in m["training"]] == SEEDS
    assert m["methods"]["oracle"]["accuracy"] >= max(
        r["accuracy"] for n, r in m["methods"].items() if "oracle" not in n) - 1e-9
    assert {c["b"] for c in m["comparisons"]} >= {"round_robin", "best_fixed", "cascade", "mlp", "knn"}
    assert all(0 < c["p_value"] <= 1 for c in m["comparisons"])
    assert json.loads((project / "metrics" / "metrics.json").read_text())["boolq"]["test_queries"] == m["test_queries"]
    proc = subprocess.run([sys.executable, "-m", "dvc", "metrics", "show"], cwd=project, env=venv_env(),
                          capture_output=True, text=True)
    assert "der_accuracy" in proc.stdout


def test_curves_ablations_and_cross_task_outputs(project):
    f = json.loads((project / "results" / "curves" / "boolq" / "frontier.json").read_text())
    der = f["methods"]["der"]
    assert len(der["points"]) == 2 and 0.0 <= der["aiq"] <= 1.0 and "aiq_std" in der
    assert f["strong"].startswith("single:") and f["weak"].startswith("single:")
    assert (project / "results" / "curves" / "boolq" / "cost_accuracy.png").stat().st_size > 5000
    a = json.loads((project / "results" / "ablate" / "hotpotqa" / "ablations.json").read_text())
    assert [r["setting"] for r in a["tables"]["reward"]] == ["terminal", "der-paper"]
    states = ["query_answer_confidence", "confidence"]
    forms = load_params(project / "params.yaml").evaluate.ablations.state_forms
    assert [r["setting"] for r in a["tables"]["state"]] == [s if len(forms) == 1 else f"{s}, {f}"
                                                            for f in forms for s in states]
    t = json.loads((project / "results" / "tune" / "boolq" / "tune.json").read_text())
    if "skipped" in t:  # 2 train queries leave a fold empty (the tune unit test covers the rest)
        assert "no cross-validation" in t["skipped"]
    else:
        assert len(t["rows"]) == 2 * 2 and t["best"]["state"] in ("query_answer_confidence", "confidence")
        assert all(np.isfinite(r["val_utility"]) for r in t["rows"])
    assert sum(r["is_default"] for r in a["tables"]["signal"]) == 1
    c = json.loads((project / "results" / "cross_task" / "metrics.json").read_text())
    pooled = load_params(project / "params.yaml").evaluate.cross_task
    assert c["datasets"] == pooled and {"boolq", "hotpotqa", "sst2"} <= set(pooled)
    mixed = c["methods"]["der_cross_task"]
    assert set(mixed) == {*pooled, "all"} and mixed["boolq"]["seeds"] == 2
    assert abs(sum(mixed["hotpotqa"]["first_expert_share"]) - 1.0) < 1e-2
    assert {"task_aware", "cascade", "knn", "mlp"} <= set(c["methods"])
    # the task-aware baseline is one single expert per dataset: exactly one expert answers, one call
    assert all(c["methods"]["task_aware"][d]["calls"] == 1.0 for d in pooled)


def test_cli_train_with_the_der_paper_preset(project, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "der_pipeline.cli", "train", "--preset", "der-paper", "--seed", "3",
                           "--dataset", "boolq", "--total-timesteps", "4096", "--out", str(tmp_path)],
                          cwd=project, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    import torch

    ckpt = torch.load(tmp_path / "boolq" / "seed-3" / "policy.pt", weights_only=False)
    assert ckpt["seed"] == 3
    assert (ckpt["reward"]["signal"], ckpt["reward"]["beta"], ckpt["reward"]["p0"]) == ("bertscore", 5.0, 0.73)
    assert not (tmp_path / "boolq" / "seed-1").exists()


def test_cli_train_without_out_never_touches_the_dvc_tracked_models(project):
    before = {p: p.stat().st_mtime_ns for p in (project / "models").rglob("*") if p.is_file()}
    proc = subprocess.run([sys.executable, "-m", "der_pipeline.cli", "train", "--dataset", "boolq", "--seed", "7",
                           "--total-timesteps", "2048"], cwd=project, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (project / "runs" / "train" / "boolq" / "seed-7" / "policy.pt").exists()
    assert {p: p.stat().st_mtime_ns for p in (project / "models").rglob("*") if p.is_file()} == before


def test_changing_params_b_changes_the_reported_cost_without_regenerating(project):
    raw = yaml.safe_load((project / "params.yaml").read_text())
    for e in raw["experts"]:
        if e["name"] == "qwen2.5-coder-0.5b":
            e["params_b"] *= 2
    raw["paths"].update(results="results-cost", metrics="metrics-cost")
    (project / "params-cost.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    shards = sorted(p.name for p in (project / "data" / "tree" / "boolq").iterdir())
    proc = subprocess.run([sys.executable, "-m", "der_pipeline.cli", "evaluate", "--params", "params-cost.yaml",
                           "--dataset", "boolq"], cwd=project, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (project / "data" / "tree" / "boolq").iterdir()) == shards
    old = json.loads((project / "results" / "evaluate" / "boolq" / "metrics.json").read_text())["methods"]
    new = json.loads((project / "results-cost" / "evaluate" / "boolq" / "metrics.json").read_text())["methods"]
    big, small = "single:qwen2.5-coder-0.5b", "single:smollm2-135m"
    assert new[big]["cost_gflops"] == pytest.approx(2 * old[big]["cost_gflops"], rel=1e-3)
    assert new[small]["cost_gflops"] == pytest.approx(old[small]["cost_gflops"], rel=1e-6)


def test_a_bad_value_exits_2_from_the_file_and_from_a_flag(project, tmp_path):
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["reward"]["alpha"] = -1
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(raw))
    from_file = subprocess.run([sys.executable, "-m", "der_pipeline.cli", "train", "--params",
                                str(tmp_path / "bad.yaml")],
                               cwd=project, capture_output=True, text=True)
    from_flag = subprocess.run([sys.executable, "-m", "der_pipeline.cli", "train", "--alpha", "-1"],
                               cwd=project, capture_output=True, text=True)
    backend_flag = subprocess.run([sys.executable, "-m", "der_pipeline.cli", "generate", "--backend", "nope"],
                                  cwd=project, capture_output=True, text=True)
    assert from_file.returncode == from_flag.returncode == backend_flag.returncode == 2
    assert "reward.alpha" in from_file.stderr and "reward.alpha" in from_flag.stderr
    assert "generation.backend" in backend_flag.stderr


def test_cli_train_alpha_override_writes_a_checkpoint(project, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "der_pipeline.cli", "train", "--alpha", "0.3",
                           "--total-timesteps", "4096", "--out", str(tmp_path)],
                          cwd=project, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    import torch

    for ds in ("boolq", "hotpotqa"):
        for seed in SEEDS:
            ckpt = torch.load(tmp_path / ds / f"seed-{seed}" / "policy.pt", weights_only=False)
            assert ckpt["reward"]["alpha"] == 0.3 and ckpt["seed"] == seed


def test_dvc_dag_shows_stages_in_order(project):
    proc = subprocess.run([sys.executable, "-m", "dvc", "dag", "--dot"], cwd=project, capture_output=True, text=True)
    edges = set(re.findall(r'"(\w+)" -> "(\w+)"', proc.stdout))
    chain = ["prepare", "generate", "embed", "train", "evaluate"]
    assert set(zip(chain, chain[1:])) <= edges, proc.stdout
    assert {("generate", "score"), ("score", "train"), ("train", "curves"), ("train", "ablate"),
            ("train", "cross_task")} <= edges


def test_ask_runs_the_trained_policy_live(project):
    proc = subprocess.run([sys.executable, "-m", "der_pipeline.cli", "ask", "Is the Eiffel Tower in Paris?",
                           "--context",
                           "Eiffel Tower: The Eiffel Tower is a wrought-iron lattice tower in Paris, France."],
                          cwd=project, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.splitlines()[0].startswith("policy: ")  # the learned policy, or the fixed path in its place
    step0 = next(line for line in out.splitlines() if line.startswith("step 0: P(action)"))
    assert "STOP" not in step0  # STOP masked at t = 0
    assert "confidence: P(yes)" in out  # the expert's own confidence, computed live
    assert "final answer" in out and "GFLOPs" in out


def test_ask_runs_the_best_fixed_path_kept_in_place_of_a_policy(project, tmp_path):
    """Where ``ppo.fallback`` keeps the best fixed path, ask takes it through the real experts: here the first
    expert answers, then the second answers afresh, whatever the policy's weights would have done."""
    import shutil

    import torch

    from der_pipeline.router.arrays import path_index

    path = project / "models" / "boolq" / f"seed-{SEEDS[0]}" / "policy.pt"
    shutil.copy(path, tmp_path / "policy.pt")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    first, second = ckpt["experts"][:2]
    ckpt["fixed_path"] = path_index(len(ckpt["experts"]), 0, 1, fresh=True)
    ckpt["fixed_path_check"] = {"gain": 0.001, "se": 0.01, "beats_fixed_path": False,
                                "path_name": f"{first}>fresh:{second}"}
    torch.save(ckpt, path)
    try:
        proc = subprocess.run([sys.executable, "-m", "der_pipeline.cli", "ask", "Is the Eiffel Tower in Paris?"],
                              cwd=project, capture_output=True, text=True, timeout=600)
    finally:
        shutil.copy(tmp_path / "policy.pt", path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"the best fixed path, {first}>fresh:{second}, for every query" in out.splitlines()[0]
    assert f"-> {first} answers (" in out and f"-> {second} answers afresh (" in out
    assert f"path {first}>fresh:{second}]" in out


def test_ask_refuses_an_empty_question_and_trims_a_long_context(project):
    proc = subprocess.run([sys.executable, "-m", "der_pipeline.cli", "ask", "   "], cwd=project, capture_output=True,
                          text=True)
    assert proc.returncode == 1 and "question is empty" in proc.stderr and "Traceback" not in proc.stderr
    from der_pipeline.router.live import clean_input

    p = load_params(project / "params.yaml")
    long = " ".join(f"Sentence number {i} is here." for i in range(400))
    q, ctx, trimmed_from = clean_input(p, " Is it? ", long)
    assert q == "Is it?" and len(ctx) <= p.data.max_context_chars and ctx.endswith(".")
    assert trimmed_from == len(long)


def test_report_writes_the_readme_section_from_metrics(project):
    readme = project / "README.md"
    readme.write_text("# x\n\n<!-- results:start (written by `der-pipeline report`; do not edit by hand) -->\n"
                      "STALE-PLACEHOLDER\n"
                      "<!-- results:end -->\n\ntail\n")
    check = subprocess.run([sys.executable, "-m", "der_pipeline.cli", "report", "--check"], cwd=project,
                           capture_output=True, text=True)
    assert check.returncode == 1
    subprocess.run([sys.executable, "-m", "der_pipeline.cli", "report"], cwd=project, check=True, capture_output=True)
    text = readme.read_text()
    page = (project / "docs" / "results.md").read_text()  # the full results: the README keeps the headline
    m = json.loads((project / "results" / "evaluate" / "boolq" / "metrics.json").read_text())
    der = m["methods"]["der"]
    assert f"{der['accuracy']:.3f}" in text and "STALE-PLACEHOLDER" not in text and text.endswith("tail\n")
    assert f"{der['accuracy']:.3f}" in page
    assert "89.6%" in page  # the proposal's table beside ours
    assert "| Method | AIQ | APGR | CPT(50%) | CPT(80%) |" in page and "P signal" in page
    assert "One router across tasks" in page and "hotpotqa" in page
    check = subprocess.run([sys.executable, "-m", "der_pipeline.cli", "report", "--check"], cwd=project,
                           capture_output=True, text=True)
    assert check.returncode == 0


def test_demo_rerun_runs_the_chain_with_real_experts_and_ends_with_a_table(tmp_path):
    """The repository's own params and pool (all four experts, 20-node trees), contexts trimmed as above: the
    labelled steps, step 1 printing what each stage made and no verdict, step 2 the headline table from
    the committed trees (equal to the README's; in test_committed_results.py), step 3 one live answer; no tracked
    file changes."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["paths"] = {k: str((REPO / v).resolve()) for k, v in raw["paths"].items()}  # the committed trees
    raw["paths"]["source_data"] = str(SHARED_DATA)
    raw["data"]["max_context_chars"] = 200
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    status = lambda: subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True,  # noqa: E731
                                    text=True).stdout
    before = status()
    # step 2 (evaluate on the committed trees) runs in tests/unit/test_committed_results.py, where its one
    # rerun is also the regression test
    proc = subprocess.run([sys.executable, "-m", "der_pipeline.cli", "demo", "--rerun", "--sample", "2", "--steps",
                           "1,3", "--params", str(tmp_path / "params.yaml"), "--workdir", str(tmp_path / "demo")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tree = TreeStore(tmp_path / "demo" / "data" / "tree" / "boolq").read()
    assert tree.num_rows == 2 * 20 and len(set(tree["path"].to_pylist())) == 20
    step1, step3 = proc.stdout.split("== step 3 of 3", 1)
    assert "== step 1 of 3" in step1 and "step 2 of 3" not in proc.stdout
    assert "generate:   40 tree nodes for 2 queries" in step1 and "score:      40 answers scored" in step1
    assert "| Method |" not in step1 and "p-value" not in step1 and "DER -" not in step1  # no verdict
    assert "final answer" in step3 and "GFLOPs" in step3 and "-> qwen2.5-coder" in step3
    assert status() == before
