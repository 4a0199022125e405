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
    # the demo's step 2 is exactly this rerun (evaluate into <workdir>/committed/), so one run checks both
    proc = run_cli(["demo", "--rerun", "--steps", "2", "--workdir", str(out / "demo"), "--params",
                    str(out / "params.yaml")], cwd=out, timeout=900)
    (out / "demo-step-2.txt").write_text(proc.stdout)
    return out / "demo" / "committed"


def _datasets():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    return [d for d, s in raw["data"]["datasets"].items() if s["sample"] > 0]


def _close(a, b, where, tol=0.0):
    """Equal structure and values; numbers within ``tol`` (0: exactly, as evaluate is deterministic here)."""
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


def test_the_demos_step_2_prints_the_readmes_headline_rows(rerun):
    printed = (rerun.parent.parent / "demo-step-2.txt").read_text()
    assert "== step 2 of 3" in printed and "== step 1 of 3" not in printed and "step 3 of 3" not in printed
    rows = [line for line in printed.splitlines() if line.startswith("| ") and "GFLOPs" in line]
    readme = (REPO / "README.md").read_text()
    assert len(rows) == len(_datasets()) and all(row in readme for row in rows), rows


def test_the_readme_results_section_is_up_to_date():
    proc = run_cli(["report", "--check"], cwd=REPO, check=False, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "up to date" in proc.stdout


def test_training_on_a_committed_tree_cross_validates_and_decides_the_fallback_on_real_numbers(tmp_path):
    """The production path of `train` on real data: SST-2's committed tree (615 train queries) gives three
    non-empty folds; every checked iteration is validated on all three, the fold ensemble of three policies
    is kept, and the fallback is decided by the one-standard-error rule on the out-of-fold utilities."""
    from der_pipeline.router.checkpoint import load_checkpoint

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["paths"].update(source_data=str(SHARED_DATA), data=str(REPO / raw["paths"]["data"]),
                        models=str(tmp_path / "models"), results=str(tmp_path / "results"),
                        metrics=str(tmp_path / "metrics"))
    raw["ppo"]["total_timesteps"] = 8192  # four iterations: the path, not the policy, is under test
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    run_cli(["train", "--params", str(tmp_path / "params.yaml"), "-d", "sst2", "--seed", "1", "--out",
             str(tmp_path / "out")], cwd=tmp_path, timeout=600)
    folder = tmp_path / "out" / "sst2" / "seed-1"
    rows = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    kept = rows[-1]["kept"]
    checked = [r for r in rows[:-1] if "val_return" in r]
    assert checked and all(len(r["val_return_folds"]) == 3 for r in checked)
    assert all(math.isclose(r["val_return"], sum(r["val_return_folds"]) / 3, abs_tol=1e-3) for r in checked)
    assert kept["selected_iteration"] in {r["iteration"] for r in checked}
    check = kept["fixed_path_check"]
    assert check["se"] > 0 and check["beats_fixed_path"] == (check["gain"] > check["se"])
    assert kept["policy"] == ("learned" if check["beats_fixed_path"] else "best_fixed_path")
    ckpt = load_checkpoint(folder / "policy.pt")
    assert ckpt["members"] == 3 and (ckpt["fixed_path"] is None) == check["beats_fixed_path"]
    oof = kept["out_of_fold"]
    assert 0 < oof["score"] <= 1 and oof["cost_gflops"] > 0
