"""dvc.yaml's code deps are the package files each stage really runs (scripts/stage_deps.py derives them from
the imports, lazy ones included), so `dvc status` marks exactly the stages a code change can affect."""
import sys

import pytest
import yaml
from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
from stage_deps import stage_deps  # noqa: E402

STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_each_stage_lists_exactly_the_package_files_it_runs(stage):
    listed = sorted(d for d in STAGES[stage]["deps"] if d.startswith("der_pipeline"))
    assert "der_pipeline" not in listed  # never the whole package: that reran everything on any edit
    assert listed == stage_deps(stage), "rerun `python scripts/stage_deps.py --write`"


def test_the_report_and_the_findings_rerun_no_stage():
    """They render the results; only `der-pipeline report` runs them, which is no DVC stage."""
    for spec in STAGES.values():
        deps = set(spec["deps"])
        assert "der_pipeline/evaluate/findings.py" not in deps and "der_pipeline/evaluate/report.py" not in deps
    assert "der_pipeline/evaluate/run.py" in STAGES["evaluate"]["deps"]


def test_the_derivation_follows_lazy_imports(tmp_path):
    """router/train.py imports the checkpoint module inside a function in places: a lazy import is a dependency."""
    assert "der_pipeline/router/ppo.py" in stage_deps("train")  # reached only through selection and checkpoint
    assert "der_pipeline/serve/app.py" not in stage_deps("train")
