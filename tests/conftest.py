import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from der_pipeline.config import load_params
from der_pipeline.router.arrays import TreeArrays

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def repo_params():
    return load_params(REPO / "params.yaml")


def synthetic_tree(n_queries=40, n_experts=3, dim=4, seed=0, good=1):
    """A tree where expert ``good`` is always right at hop 1, everything else wrong unless refined by ``good``."""
    rng = np.random.default_rng(seed)
    q, n = n_queries, n_experts
    task1 = np.zeros((q, n))
    task1[:, good] = 1.0
    task2 = np.zeros((q, n, n))
    task2[:, :, good] = 1.0
    cost1 = np.tile(np.arange(1, n + 1, dtype=float), (q, 1))
    cost2 = np.tile(np.arange(1, n + 1, dtype=float), (q, n, 1))
    return TreeArrays(
        qids=[f"q{i}" for i in range(q)], experts=[f"e{i}" for i in range(n)],
        q_emb=rng.normal(size=(q, dim)).astype(np.float32),
        a1_emb=rng.normal(size=(q, n, dim)).astype(np.float32),
        a2_emb=rng.normal(size=(q, n, n, dim)).astype(np.float32),
        task1=task1, task2=task2, bert1=task1 * 0.5 + 0.4, bert2=task2 * 0.5 + 0.4,
        cost1=cost1, cost2=cost2, lat1=cost1 / 10, lat2=cost2 / 10,
        conf1=rng.uniform(size=(q, n, 5)).astype(np.float32),
        sec1=np.full((q, n, 3), np.nan), sec2=np.full((q, n, n, 3), np.nan))


def run_cli(args, cwd, env=None, check=True, timeout=1800):
    cmd = [sys.executable, "-m", "der_pipeline.cli", *args]
    proc = subprocess.run(cmd, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def make_project(dst: Path, params_patch) -> Path:
    """A copy of the repository's pipeline files in ``dst`` (git + DVC initialised), params patched."""
    import yaml

    dst.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", "stages"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst / name)
    shutil.copytree(REPO / "der_pipeline", dst / "der_pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["paths"]["source_data"] = str(SHARED_DATA)
    params_patch(raw)
    (dst / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    # dvc.yaml names the shared data by its path relative to the repository: point it at the real folder
    dvc = (dst / "dvc.yaml").read_text().replace("../shared/data", str(SHARED_DATA))
    (dst / "dvc.yaml").write_text(dvc)
    subprocess.run(["git", "init", "-q"], cwd=dst, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=dst, check=True)
    return dst


def small_source_project(root: Path, files: dict[str, str], n: int) -> Path:
    """``root`` with params.yaml reading only the first ``n`` records of each shared-data file in ``files``
    (file -> dataset), copied under ``root/src``; its data folder is ``root/data``."""
    import yaml

    src = root / "src"
    for rel in files:
        lines = (SHARED_DATA / rel).read_text().splitlines()[:n]
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text("\n".join(lines) + "\n")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["paths"].update(source_data=str(src), data=str(root / "data"))
    raw["data"]["datasets"] = {ds: {"sample": n} for ds in dict.fromkeys(d for d in files.values() if d)}
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return root


def edited_params(project: Path, edit=None):
    """``project``'s params.yaml with ``edit(raw)`` applied, validated as a user's file would be."""
    import yaml

    raw = yaml.safe_load((project / "params.yaml").read_text())
    if edit:
        edit(raw)
    path = project / "params-edited.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_params(path)


def reward_cfg(**values):
    """params.yaml's reward settings with some replaced (validated, as every override is)."""
    return load_params(REPO / "params.yaml").override("reward", **values).reward


def ppo_cfg(**values):
    """params.yaml's PPO settings with some replaced (validated)."""
    return load_params(REPO / "params.yaml").override("ppo", **values).ppo
