"""The evaluate stage's results JSON has one definition (evaluate/results.py), checked on write and on read."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from der_pipeline.evaluate.results import ResultsError, check_results, read_results

COMMITTED = sorted((Path(__file__).resolve().parents[2] / "results" / "evaluate").glob("*/metrics.json"))


@pytest.fixture(scope="module")
def boolq() -> dict:
    return json.loads(next(p for p in COMMITTED if p.parent.name == "boolq").read_text())


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.parent.name)
def test_every_committed_results_file_matches_the_definition(path):
    out = read_results(path)
    assert out["dataset"] == path.parent.name
    assert out["methods"]["der"]["accuracy"] == json.loads(path.read_text())["methods"]["der"]["accuracy"]


def test_committed_results_cover_every_dataset():
    assert {p.parent.name for p in COMMITTED} >= {"boolq", "hotpotqa", "squad", "gsm8k", "sst2", "xsum"}


def test_a_renamed_key_fails_with_its_dotted_path(boolq):
    bad = copy.deepcopy(boolq)
    bad["methods"]["der"]["cost"] = bad["methods"]["der"].pop("cost_gflops")
    with pytest.raises(ResultsError, match=r"x\.json: methods\.der\.cost_gflops: Field required"):
        check_results(bad, "x.json")


def test_an_unknown_key_is_refused(boolq):
    bad = copy.deepcopy(boolq)
    bad["comparisons"][0]["p"] = 0.5
    with pytest.raises(ResultsError, match=r"comparisons\.0\.p: Extra inputs are not permitted"):
        check_results(bad, "x.json")


def test_a_wrong_type_is_refused(boolq):
    bad = copy.deepcopy(boolq)
    bad["test_queries"] = "many"
    with pytest.raises(ResultsError, match=r"test_queries: Input should be a valid integer"):
        check_results(bad, "x.json")


def test_a_method_named_but_absent_is_refused(boolq):
    bad = copy.deepcopy(boolq)
    del bad["methods"][bad["best_single"]]
    del bad["roles"][bad["best_single"]]
    with pytest.raises(ResultsError, match=r"methods: no entry for \['single:qwen2.5-coder-1.5b'\]"):
        check_results(bad, "x.json")


def test_a_truncated_file_names_itself(tmp_path, boolq):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(boolq)[:200])
    with pytest.raises(ResultsError, match=r"metrics\.json: not JSON"):
        read_results(path)


@pytest.fixture(scope="module")
def gsm8k_budgets(tmp_path_factory, repo_params):
    """The budgets stage for real on the committed GSM8K tree, one budget and a one-step search (seconds)."""
    from der_pipeline.evaluate.budgets import budgets

    results = tmp_path_factory.mktemp("budgets") / "results"
    p = repo_params.override("paths", results=str(results)).override("budget", shares=[0.5], steps=1)
    budgets(p, ["gsm8k"])
    return p, results / "budgets" / "gsm8k" / "budgets.json"


def test_the_budgets_stage_writes_what_its_definition_reads_and_the_headline_shows_it(gsm8k_budgets):
    from der_pipeline.evaluate.report import budget_lines
    from der_pipeline.evaluate.results import read_budgets

    p, path = gsm8k_budgets
    b = read_budgets(path)
    row = b["rows"][0]
    assert row["share"] == 0.5 and set(row["methods"]) == {"der", "cascade", "random_mix"}
    lines = budget_lines(p, ["gsm8k", "boolq"])
    m = row["methods"]
    cells = " | ".join(f"{m[k]['score']:.3f} at {m[k]['cost_share']:.2f}" for k in ("der", "cascade", "random_mix"))
    shown = next(line for line in lines if line.startswith("| gsm8k"))
    assert shown.startswith(f"| gsm8k | {b['reference']} ({b['reference_score']:.3f}) | {cells} | ")
    c = row["der_vs_reference"]
    assert ("DER is the reference's own policy" in shown) if c["same"] else (f"lower bound {c['lower']:+.3f}" in shown)
    assert "| boolq | | not run |" in "\n".join(lines)  # a dataset the stage has not run says so


def test_a_budgets_file_that_lost_a_field_is_refused_by_its_dotted_path(gsm8k_budgets, tmp_path):
    from der_pipeline.evaluate.results import read_budgets

    bad = json.loads(gsm8k_budgets[1].read_text())
    del bad["rows"][0]["der_vs_cascade"]["same"]
    (tmp_path / "budgets.json").write_text(json.dumps(bad))
    with pytest.raises(ResultsError, match=r"rows\.0\.der_vs_cascade\.same: Field required"):
        read_budgets(tmp_path / "budgets.json")


def test_no_budgets_yet_is_a_sentence_not_an_empty_table(repo_params, tmp_path):
    from der_pipeline.evaluate.report import budget_lines

    lines = budget_lines(repo_params.override("paths", results=str(tmp_path)), ["boolq"])
    assert lines == [next(iter(lines))] and "not in these results yet" in lines[0]
