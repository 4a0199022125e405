import importlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from der_pipeline.config import load_params
from der_pipeline.router.arrays import TreeArrays

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()
TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))  # `from conftest import ...` and `from fakes import ...` from every tier's folder

# A test's tier is where it lives, so a new test cannot land in the wrong one by forgetting a marker:
#   tests/unit/         fast: no real model (fakes, hand-built trees, the committed artifacts)   make test-default
#   tests/integration/  slow: the real packaged models through llama.cpp, tiny samples            make test-default
#   tests/recipes/      the README's recipes, run as written on a clone of the repository         make test-recipes
#   tests/engines/      the other generation engines for real (Ray, llama-server, vLLM's CPU build) make test-engines
TIERS = {"unit": (), "integration": ("slow",), "recipes": ("slow", "recipes"), "engines": ("slow", "engines")}


def pytest_collection_modifyitems(config, items):
    for item in items:
        rel = Path(str(item.fspath)).resolve().relative_to(TESTS)
        tier = rel.parts[0] if len(rel.parts) > 1 else "unit"
        if tier not in TIERS:
            raise pytest.UsageError(f"{rel}: a test lives in one of tests/{{{','.join(TIERS)}}}/ (its tier)")
        for marker in TIERS[tier]:
            item.add_marker(marker)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ENGINES_REQUIRED_ENV = "DER_REQUIRE_ENGINES"  # "1" (CI, `make test-engines`): a missing engine fails, never skips


def engines_required() -> bool:
    return os.environ.get(ENGINES_REQUIRED_ENV) == "1"


def require_or_skip(module: str, how: str):
    """``module`` imported, or the test skipped (``how``: how to install it); with DER_REQUIRE_ENGINES=1 a
    failure instead, so CI cannot pass by skipping the engine it is meant to test."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if engines_required():
            pytest.fail(f"{module} cannot be imported ({exc}) and {ENGINES_REQUIRED_ENV}=1: {how}", pytrace=False)
        pytest.skip(f"{module} cannot be imported: {how}")


def require_path_or_skip(path: Path, how: str) -> Path:
    """``path`` (an engine's binary or venv), or the test skipped; a failure with DER_REQUIRE_ENGINES=1."""
    if path.exists():
        return path
    if engines_required():
        pytest.fail(f"{path} is missing ({how}) and {ENGINES_REQUIRED_ENV}=1", pytrace=False)
    pytest.skip(f"{path} is missing: {how}")


# ---- the model cache: one per test session, never the user's ----------------------------------------------

CACHE_ENV = "DER_PIPELINE_CACHE"  # what experts/models.py cache_dir() reads (else ~/.cache/der-pipeline)
_USER_CACHE = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "der-pipeline")
_session_cache: dict[str, object] = {}


def seed_session_cache(root: Path, user: Path) -> Path:
    """``root`` as a model cache seeded from ``user``'s without writing to it: the assembled GGUFs and the
    converted Hugging Face folders as symlinks (read-only use; removing a link never removes its target), the
    fingerprint memo and llama.cpp's converter source as copies (they are written to). The trained LoRA
    adapters (peft/) and vLLM's compile cache are not seeded: the tests that make them make their own."""
    models = root / "models"
    models.mkdir(parents=True, exist_ok=True)
    if (user / "models").is_dir():
        for f in sorted((user / "models").iterdir()):
            if f.name == "fingerprints.json":
                shutil.copy2(f, models / f.name)
            elif f.is_file() and not f.name.startswith("."):  # not a half-assembled temp file
                (models / f.name).symlink_to(f.resolve())
    if (user / "hf").is_dir():
        (root / "hf").mkdir(exist_ok=True)
        for folder in sorted((user / "hf").iterdir()):
            if folder.is_dir() and not folder.name.startswith("."):
                (root / "hf" / folder.name).symlink_to(folder.resolve(), target_is_directory=True)
    if (user / "src").is_dir():
        shutil.copytree(user / "src", root / "src", symlinks=True,
                        ignore=lambda d, names: [n for n in names if n.startswith(".") and n.endswith(".tmp")])
    return root


def pytest_configure(config):
    """Point the model cache at a session folder before any test (or subprocess it starts) reads it, so no test
    deletes or writes a file of the user's ~/.cache/der-pipeline (the specialist test deletes its recipe's
    adapter to train afresh; a corrupt cached model is removed by the size check)."""
    if _session_cache:
        return
    root = Path(tempfile.mkdtemp(prefix="der-pipeline-test-cache-"))
    _session_cache.update(root=root, previous=os.environ.get(CACHE_ENV))
    seed_session_cache(root, _USER_CACHE)
    os.environ[CACHE_ENV] = str(root)


def pytest_unconfigure(config):
    if not _session_cache:
        return
    previous = _session_cache.pop("previous")
    if previous is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = previous
    shutil.rmtree(_session_cache.pop("root"), ignore_errors=True)  # removes the links, never what they point to


# ---- waiting and ports -----------------------------------------------------------------------------------


def wait_until(condition, timeout_s: float, what: str, interval: float = 0.1):
    """Poll ``condition()`` until it returns something true and return that; a TimeoutError naming ``what`` and
    the deadline once ``timeout_s`` seconds have passed (a wait never falls through silently)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not within the {timeout_s:g} s deadline")
        time.sleep(interval)


def free_port() -> int:
    """A port free at the time of asking. Only for a program that must be told its port (an external binary,
    a CLI); a server of ours binds port 0 and reports the port it got. Wrap its start in ``on_free_port``."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def uvicorn_in_thread(app, start_s: float = 60):
    """``app`` served by uvicorn in a daemon thread on 127.0.0.1, bound to port 0 (the kernel picks a free port
    at bind time: no probe-then-bind race); yields the port it got. A TimeoutError if it is not listening within
    ``start_s``, a RuntimeError if it stops first (a failed startup: its log says why)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), start_s, "uvicorn listening", interval=0.05)
        if not server.started:
            raise RuntimeError("uvicorn stopped before it listened (its log above says why)")
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)


class PortTaken(Exception):
    """A server could not bind the port it was given (someone took it between the probe and the bind)."""


def on_free_port(start, attempts: int = 3):
    """``start(port)`` on a freshly probed port, tried again on another when it raises PortTaken (the probe's
    time-of-check race), at most ``attempts`` times."""
    for attempt in range(1, attempts + 1):
        port = free_port()
        try:
            return start(port)
        except PortTaken as exc:
            if attempt == attempts:
                raise RuntimeError(f"no port could be bound in {attempts} tries; the last: {exc}") from exc


def wait_for_start(proc, state, timeout_s: float, what: str, interval: float = 0.5):
    """``wait_until(state)`` for a child process starting: what ``state`` returned ("up", or "exited" when the
    process ended first); past ``timeout_s`` the process is killed and reaped, then the TimeoutError raised."""
    try:
        return wait_until(state, timeout_s, what, interval=interval)
    except TimeoutError:
        proc.kill()
        proc.wait()
        raise


def serve_process(params: Path, datasets=("boolq",), extra=(), timeout: float = 600, env=None):
    """`der-pipeline serve` as a subprocess on a probed port (its --port cannot be 0), started again on another
    when the port turns out to be taken (``on_free_port``); returns (process, base URL) once /health answers
    naming the first dataset. A TimeoutError when it does not within ``timeout``; an AssertionError with its
    output when it exits first."""
    import httpx2 as httpx

    def attempt(port):
        ds = [a for d in datasets for a in ("-d", d)]
        proc = subprocess.Popen([sys.executable, "-m", "der_pipeline.cli", "serve", *ds, "--port", str(port),
                                 "--params", str(params), *extra], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
        base = f"http://127.0.0.1:{port}"

        def state():
            if proc.poll() is not None:
                return "exited"
            try:
                r = httpx.get(f"{base}/health", timeout=2)
            except httpx.TransportError:
                return None
            # ours, not whatever else took the port after the probe: its health names the dataset it serves
            return "up" if r.status_code == 200 and r.json().get("dataset") == datasets[0] else None

        got = wait_for_start(proc, state, timeout, f"der-pipeline serve answering {base}/health")
        if got == "exited":
            out = proc.stdout.read()
            if "address already in use" in out.lower():  # at serve's own check, or at uvicorn's bind
                raise PortTaken(f"port {port}: {out[-500:]}")
            raise AssertionError(f"serve exited {proc.returncode}:\n{out}")
        return proc, base

    return on_free_port(attempt)


def stop_process(proc) -> str:
    """Terminate ``proc`` (then kill it after 30 s); its output."""
    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out or ""


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
