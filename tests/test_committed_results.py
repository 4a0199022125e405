"""The committed results are a regression test: evaluate, rerun on the committed trees and policies (no LLM),
reproduces every committed table and number, and the README's generated section is up to date.

A refactor that moves a number fails here in about a minute, instead of going unnoticed until a full
`dvc repro`. Nothing is written into the repository: the rerun writes into a temporary folder.
"""
import json
import math

import pytest
import yaml

from conftest import REPO, SHARED_DATA, run_cli

COMMITTED = REPO / "results" / "evaluate"


@pytest.fixture(scope="module")
def rerun(tmp_path_factory):
    out = tmp_path_factory.mktemp("rerun")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["paths"].update(source_data=str(SHARED_DATA), data=str(REPO / raw["paths"]["data"]),
                        models=str(REPO / raw["paths"]["models"]), results=str(out / "results"),
                        metrics=str(out / "metrics"))
    (out / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    run_cli(["evaluate", "--params", str(out / "params.yaml")], cwd=out, timeout=900)
    return out


def _datasets():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    return [d for d, s in raw["data"]["datasets"].items() if s["sample"] > 0]


def _close(a, b, where, tol=5e-4):
    """Equal structure; numbers equal within ``tol`` (below every printed precision), everything else equal."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), f"{where}: keys {list(a)} != {list(b)}"
        for k in a:
            _close(a[k], b[k], f"{where}.{k}", tol)
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{where}[{i}]", tol)
    elif isinstance(a, float) or isinstance(b, float):
        assert isinstance(b, (int, float)) and math.isclose(a, b, abs_tol=tol), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.parametrize("dataset", _datasets())
def test_evaluate_reproduces_the_committed_results(rerun, dataset):
    new = rerun / "results" / "evaluate" / dataset
    assert (new / "table.md").read_text() == (COMMITTED / dataset / "table.md").read_text()
    _close(json.loads((new / "metrics.json").read_text()),
           json.loads((COMMITTED / dataset / "metrics.json").read_text()), dataset)


def test_the_aggregate_metrics_match_the_committed_ones(rerun):
    _close(json.loads((rerun / "metrics" / "metrics.json").read_text()),
           json.loads((REPO / "metrics" / "metrics.json").read_text()), "metrics.json")


def test_the_readme_results_section_is_up_to_date():
    proc = run_cli(["report", "--check"], cwd=REPO, check=False, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "up to date" in proc.stdout
