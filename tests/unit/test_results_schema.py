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
