"""The README's "Your own data" recipe, run as written on a clone of the repository with the real experts.

It must work, and it must leave every tracked benchmark artifact byte-identical: the only tracked change is
the recipe's own edit of params.yaml, and everything it makes is the new dataset's own (untracked) files.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, SHARED_DATA

pytestmark = pytest.mark.timeout(1800)  # the tier (slow) is set by the folder: tests/conftest.py


def readme_recipe(title: str) -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index(title):]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


def test_the_custom_data_recipe_runs_and_touches_no_tracked_benchmark_artifact(tmp_path):
    clone = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    # the clone reads the shared data where the repository does (../shared/data beside it)
    (tmp_path / "shared").symlink_to(SHARED_DATA.parent)
    script = readme_recipe("### Your own data").replace("source .venv/bin/activate\n", "")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=clone, env=env, capture_output=True,
                          text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=clone,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    changed = sorted(line[3:] for line in status if not line.startswith("??"))
    assert changed == ["params.yaml"], changed  # the recipe's own edit; no tracked artifact moved
    new = sorted(line[3:] for line in status if line.startswith("??"))
    own = re.compile(r"(mine\.jsonl|data/prepared/mine\.parquet|data/(tree|confidence|embeddings|scores)/mine/.*"
                     r"|models/mine/.*|results/evaluate/mine/.*)$")
    assert [f for f in new if not own.match(f)] == []
    assert (clone / "results" / "evaluate" / "mine" / "table.md").exists()
    assert "answer" in proc.stdout.lower()  # `ask` printed its routed answer
